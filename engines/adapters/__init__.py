"""Shipped adapters, one folder each: `engines/adapters/<name>/`.

A folder holds the adapter's weights (`weights.safetensors`, or PEFT's `adapter_model.safetensors` and
`adapter_config.json` for a plain LoRA), the trainer's log (`train_log.jsonl`), the loss curve drawn from it
(`loss.png`) and `MODEL_CARD.md`. Every trainer writes its card through `write_card`, from a `Card` it builds out of
its run's summary and log, so the cards share one shape; what a person adds below the `NOTES` line survives a
rerun. The strategies that use an adapter name its folder; the engines load LoRA adapters by path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
