"""Shipped adapters, one folder each: `engines/adapters/<name>/`.

A folder holds the adapter's weights (`weights.safetensors`, or PEFT's `adapter_model.safetensors` and
`adapter_config.json` for a plain LoRA), the trainer's log (`train_log.jsonl`), the loss curve drawn from it
(`loss.png`) and `MODEL_CARD.md`. Every trainer writes its card through `write_card`, from a `Card` it builds out of
its run's summary and log, so the cards share one shape; what a person adds below the `NOTES` line survives a
rerun. The strategies that use an adapter name its folder; the engines load LoRA adapters by path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engines.base import Engine

log = logging.getLogger(__name__)

ADAPTER_HOME = Path(__file__).parent
WEIGHTS = "weights.safetensors"  # a single-file adapter (trainable tensors, config in the metadata)
LOG = "train_log.jsonl"
PLOT = "loss.png"
CARD = "MODEL_CARD.md"
NOTES = "<!-- Notes written by hand below this line stay when the card is written again. -->"

Section = tuple[str, str]  # (heading, markdown); an empty heading continues the section before it


@dataclass(frozen=True)
class Card:
    """What a model card says: the trainer fills it in from its summary, `render_card` lays it out."""

    title: str
    about: str  # what the adapter is and which command wrote the card
    body: Sequence[Section]  # before the loss curve
    after: Sequence[Section] = ()  # after it


def render_card(card: Card, notes: str = "") -> str:
    """The card as markdown: title, about, the body, the loss curve, what follows it, then the hand-written notes."""

    def sections(parts: Sequence[Section]) -> list[str]:
        return [f"## {heading}\n\n{text.strip()}" if heading else text.strip() for heading, text in parts]

    parts = [f"# {card.title}", card.about.strip(), *sections(card.body), f"![loss]({PLOT})", *sections(card.after)]
    return "\n\n".join(parts) + "\n" + (f"\n{notes.strip()}\n" if notes.strip() else "")


def write_card(folder: Path, card: Card) -> Path:
    """`folder`/MODEL_CARD.md rendered from `card`, keeping the notes of the card it replaces."""
    path = folder / CARD
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    path.write_text(render_card(card, old[old.index(NOTES) :] if NOTES in old else ""), encoding="utf-8")
    return path


def use_adapter(engine: Engine, name: str, setting: str, listed: Mapping[str, Path]) -> str | None:
    """The LoRA adapter to call `engine` with under `name` (loaded on first use), or None for the base model.

    setting: "auto" (the folder `listed` names for the engine's model, if shipped), "none", or a folder. A broken or
    missing adapter, or an engine without adapters, must not stop the work: the base model does it instead."""
    from engines.base import SupportsAdapters

    if setting == "none":
        return None
    path = listed.get(engine.model_name) if setting == "auto" else Path(setting)
    shipped = path is not None and (path / "adapter_model.safetensors").exists()
    if not shipped or not isinstance(engine, SupportsAdapters):
        if setting != "auto":
            log.warning("%s adapter %s not usable on this engine: the base model reads", name, setting)
        return None
    try:
        engine.load_adapter(name, path)  # type: ignore[arg-type]
    except Exception:
        log.exception("could not load the %s adapter %s: the base model reads", name, path)
        return None
    return name
