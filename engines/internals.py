"""Model internals for engines that hide them: in-process transformers engines beside the reader.

vLLM exposes no layers. Two roles need them:
- soft compression writes vectors the reader reads, so it needs the reader's own weights (`layers_engine`): same
  weights, same tokenizer, same embedding space; vLLM answers from the vectors as prompt embeddings.
- selection (gemfilter, hard) only ranks text the reader then reads as text, so any model can score it
  (`selection_engine`): the reader's own weights where they load here, else a small selector model
  (`EngineConfig.selector_model`, default SmolLM2), as for a remote server whose model has no local copy.
Each native engine is built once per process and shared by both roles.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from engines.base import Engine, SupportsLayers
from engines.config import DEFAULT_SELECTOR, EngineConfig
from engines.models import ModelNotFoundError, resolve_model

_companions: dict[EngineConfig, Engine] = {}


def _native(config: EngineConfig, model: str) -> EngineConfig | None:
    """A native engine's config over `model` with the reader's other settings, or None where `model` has no local
    copy."""
    try:
        resolve_model(model, config.home)
    except ModelNotFoundError:
        return None
    return replace(config, kind="native", model=model, vllm_url=None)


def _native_config(engine: Engine) -> EngineConfig | None:
    """The native engine's config over `engine`'s weights, or None where they have no local copy. A remote server's
    weights are its served model's (`model_name`), whatever alias the config named."""
    config: EngineConfig | None = getattr(engine, "config", None)
    return None if config is None else _native(config, engine.model_name)


def _companion(config: EngineConfig) -> Engine:
    if config not in _companions:
        from engines.native import NativeEngine

        _companions[config] = NativeEngine(config)
    return _companions[config]


def has_layers(engine: Engine) -> bool:
    """Whether `layers_engine` can give layers for `engine` (nothing is loaded)."""
    return isinstance(engine, SupportsLayers) or _native_config(engine) is not None


def layers_engine(engine: Engine) -> Any:
    """`engine` itself where it has layers, else the native engine over its weights (built once per process)."""
    if isinstance(engine, SupportsLayers):
        return engine
    native = _native_config(engine)
    if native is None:
        raise ModelNotFoundError(f"no local copy of {engine.model_name!r} to compress with")
    return _companion(native)


@dataclass(frozen=True)
class Scorer:
    engine: Any  # SupportsLayers
    weights: Literal["reader", "selector"]  # the reader's own weights, or a selector model's

    def details(self, reader: Engine) -> dict[str, str]:
        """What a selection strategy's answer says about who scored and who answered."""
        return {
            "scored_by": self.engine.name,
            "scored_model": self.engine.model_name,
            "scored_weights": self.weights,
            "answered_by": reader.name,
            "answered_model": reader.model_name,
        }


def scoring_config(config: EngineConfig, served: str | None = None) -> EngineConfig | None:
    """The native config selection scores with for a reader of `config` (serving `served`, default `config.model`)
    that hides its layers, or None where that model has no local copy; what `tome calibrate` calibrates."""
    named = config.selector_model
    if named == "auto":
        own = _native(config, served or config.model)
        if own is not None:
            return own
        named = DEFAULT_SELECTOR
    return _native(config, named)


def _selection_config(engine: Engine) -> EngineConfig | Literal["reader"] | None:
    """The native config selection scores with: "reader" for `engine` itself, None where nothing can score."""
    config: EngineConfig | None = getattr(engine, "config", None)
    named = config.selector_model if config is not None else "auto"
    if isinstance(engine, SupportsLayers) and named in ("auto", engine.model_name):
        return "reader"
    return None if config is None else scoring_config(config, engine.model_name)


def can_select(engine: Engine) -> bool:
    """Whether `selection_engine` has a model to score with for `engine` (nothing is loaded)."""
    return _selection_config(engine) is not None


def selection_engine(engine: Engine) -> Scorer:
    """The native engine gemfilter and hard score with for the reader `engine` (see the module docstring)."""
    chosen = _selection_config(engine)
    if chosen is None:
        raise ModelNotFoundError(f"no model to score with for {engine.model_name!r}: set TOME_SELECTOR_MODEL")
    if chosen == "reader":
        return Scorer(engine, "reader")
    own = _native_config(engine)
    weights: Literal["reader", "selector"] = "reader" if own is not None and own.model == chosen.model else "selector"
    return Scorer(_companion(chosen), weights)
