"""The held-out real text the evals read: haystacks, BABILong background, QA passages, word lists.

These documents are shipped in evals/data/corpus (copied from the project corpus) so the evals run offline
and in CI. They are reserved for evaluation: training code must skip every file named in EVAL_DOCS.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from engines.text import words_of

CORPUS_DIR = Path(__file__).parent / "data" / "corpus"

# Held out from any training: the evals' haystacks and QA questions come from these documents only.
EVAL_DOCS: tuple[str, ...] = (
    "thoreau_walden_and_civil_disobedience.txt",
    "conrad_heart_of_darkness.txt",
    "franklin_autobiography.txt",
)
# Held out from training as well: docqa's test split reads these (EVAL_DOCS and one more novel).
HELD_OUT_DOCS: tuple[str, ...] = (*EVAL_DOCS, "shelley_frankenstein_1818.txt")
# The project corpus on the machines that train (`tome train TARGET --corpus DIR` names another).
TRAINING_CORPUS = Path("/work/shared/data/corpus")


def normalize(text: str) -> str:
    """Unwrap hard-wrapped lines: one line per paragraph, paragraphs separated by a blank line."""
    paragraphs = re.split(r"\n\s*\n", text.replace("\r", ""))
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def training_documents(corpus: Path) -> list[Path]:
    """Corpus texts usable for training: every .txt file that is not held out for evaluation."""
    docs = sorted(p for p in corpus.glob("*.txt") if p.name not in HELD_OUT_DOCS)
    if not docs:
        raise FileNotFoundError(f"no training documents (non-evaluation .txt files) in {corpus}")
    return docs


def training_texts(corpus: Path) -> list[str]:
    """The training documents' text, unwrapped as the evaluation documents are."""
    return [normalize(p.read_text(encoding="utf-8", errors="replace")) for p in training_documents(corpus)]


@cache
def read_doc(name: str) -> str:
    """A held-out document, unwrapped (QA passage locations refer to this normalized text)."""
    if name not in EVAL_DOCS:
        raise ValueError(f"{name!r} is not an evaluation document: {', '.join(EVAL_DOCS)}")
    return normalize((CORPUS_DIR / name).read_text(encoding="utf-8"))


@cache
def read_text(name: str) -> str:
    """Any document shipped in evals/data/corpus, unwrapped (docqa's evidence offsets refer to this text)."""
    path = CORPUS_DIR / name
    if path.parent != CORPUS_DIR or not path.is_file():
        raise ValueError(f"{name!r} is not a document in {CORPUS_DIR}")
    return normalize(path.read_text(encoding="utf-8"))


@cache
def haystack_words() -> tuple[str, ...]:
    """All held-out documents as one word stream (about 300K tokens), the source of real-text haystacks."""
    return words_of("\n\n".join(read_doc(name) for name in EVAL_DOCS))


@cache
def vocabulary() -> tuple[str, ...]:
    """Plain lower-case English words (4-10 letters) of the held-out text, sorted."""
    words = set(re.findall(r"\b[a-z]{4,10}\b", "\n".join(read_doc(name) for name in EVAL_DOCS)))
    return tuple(sorted(words))
