"""The Engine protocol: what every strategy may ask of a model, and the optional capabilities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from engines.copying import Copied

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    adapter: str | None = None  # a LoRA adapter loaded under this name (SupportsAdapters); None: the base model


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class ContextOverflowError(ValueError):
    """A prompt does not fit the engine's context; carries both numbers so the message is actionable."""

    def __init__(self, needed: int, available: int, what: str = "prompt") -> None:
        super().__init__(f"{what} needs {needed} tokens but the engine's context is {available} tokens")
        self.needed = needed
        self.available = available


@runtime_checkable
class Engine(Protocol):
    name: str
    model_name: str

    @property
    def max_context(self) -> int: ...

    def count_tokens(self, text: str) -> int: ...

    def tokenize(self, text: str) -> list[int]: ...

    def detokenize(self, ids: Sequence[int]) -> str: ...

    def chat(self, conversations: Sequence[Sequence[Message]], params: SamplingParams) -> list[Generation]:
        """Generate one reply per conversation; engines batch them."""
        ...

    def count_chat_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens of a conversation after the chat template, generation prompt included."""
        ...


@runtime_checkable
class SupportsLayers(Protocol):
    """Model internals for GemFilter, soft compression and kernel work (the native engine has them)."""

    @property
    def hf_model(self) -> Any: ...

    @property
    def hf_tokenizer(self) -> Any: ...


@runtime_checkable
class SupportsAdapters(Protocol):
    """LoRA adapters over the base model, chosen per call by `SamplingParams.adapter` (the base model otherwise)."""

    def load_adapter(self, name: str, path: Path) -> None:
        """Load the adapter folder (PEFT format) under `name`; loading a name again is a no-op."""
        ...


@runtime_checkable
class SupportsInputEmbeddings(Protocol):
    """Generation from input embeddings instead of token ids (soft compression)."""

    def chat_from_embeddings(self, embeddings: Sequence[Any], params: SamplingParams) -> list[Generation]: ...


def check_embedding_prompts(embeddings: Sequence[Any], params: SamplingParams, max_context: int) -> None:
    """Raise ContextOverflowError where a prompt of [length, hidden] embeddings leaves no room for the answer."""
    for e in embeddings:
        if e.shape[0] + params.max_tokens > max_context:
            raise ContextOverflowError(e.shape[0] + params.max_tokens, max_context, "prompt + answer")


def reply_end_ids(tokenizer: Any, eos: int | list[int] | None) -> list[int]:
    """Token ids that end a chat reply: the end-of-sequence ids, and the start of a new sequence or turn (BOS; in
    ChatML, SmolLM2's template, that is `<|im_start|>`). A reply that opens another turn is over, and stopping there
    keeps the next turn's invented text out of the answer (an adapter trained with another end token does this)."""
    ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id, tokenizer.bos_token_id}
    return sorted(i for i in ids if i is not None)


@runtime_checkable
class SupportsKVCache(Protocol):
    """Generation that continues a KV cache built outside the engine (gist tokens: a document compressed into KV).

    RoPE positions start at `first_position`, which may exceed the cache's length (a compressed cache stands for
    more positions than it holds); the cache is left as it was given, so one cache serves many prompts.
    """

    def chat_from_cache(
        self, cache: Any, prompt: Sequence[int], first_position: int, params: SamplingParams
    ) -> Generation: ...


@runtime_checkable
class SupportsCopying(Protocol):
    """The probability of a given refusal reply and, below `threshold`, the reply most likely copied from `context`
    instead (engines/copying.py): a reader's unconvinced "not stated" turned into the span it would pick."""

    def copy_answer(
        self, messages: Sequence[Message], params: SamplingParams, context: str, refusal: str, threshold: float
    ) -> Copied: ...


def engine_home(engine: Engine) -> Path | None:
    """The TOME_HOME an in-process engine was configured with (caches, calibration), if it has one."""
    return getattr(getattr(engine, "config", None), "home", None)
