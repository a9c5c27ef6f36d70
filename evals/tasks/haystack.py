"""Haystacks: RULER's repeated noise sentences, or held-out real text from a random sentence on."""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import cache

from engines.text import ends_sentence, plant, words_of
from evals.corpus import haystack_words
from evals.tasks.fitting import fit
from evals.tasks.sample import Tokenizer

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


@cache
def noise_words() -> tuple[str, ...]:
    return words_of(NOISE * 8000)  # about 190K tokens: more than the longest length


def text_words(rng: random.Random) -> tuple[str, ...]:
    """The held-out word stream from a random sentence start, wrapping around at the end."""
    words = haystack_words()
    start = rng.randrange(len(words))
    while not ends_sentence(words[start - 1]):
        start = (start + 1) % len(words)
    return words[start:] + words[:start]


def haystack_words_for(kind: str, rng: random.Random) -> tuple[str, ...]:
    if kind == "noise":
        return noise_words()
    if kind == "text":
        return text_words(rng)
    raise ValueError(f"unknown haystack {kind!r}: use 'noise' or 'text'")


def build(tok: Tokenizer, words: Sequence[str], needles: Sequence[tuple[float, str]], budget: int) -> str:
    """Filler words plus needles at sentence boundaries, as long as possible within `budget` tokens."""
    return fit(
        lambda k: plant(words[:k], needles),
        tok.count_tokens,
        budget,
        guess=int(budget * 0.7),  # about 1.3 tokens per English word in a BPE vocabulary
        most=len(words),
    )
