"""Needle-in-a-haystack tasks as RULER defines them: single, multi-key, multi-value and multi-query."""

from __future__ import annotations

import random

from engines.types import Task
from evals.tasks import haystack
from evals.tasks.sample import (
    VALUE_KINDS,
    Sample,
    Tokenizer,
    depth_for,
    document_budget,
    finish,
    rng_for,
    value_of,
    with_unique_values,
    word_key,
)

NEEDLE = "One of the special magic {kind}s for {key} is: {value}."
ANSWER_TOKENS = {"number": 32, "word": 32, "uuid": 48}  # a UUID alone is 32 SmolLM2 tokens
MANY_KINDS = ("number", "word")  # four UUIDs would need a 150-token answer: RULER's multi-value uses numbers too
MANY = 4  # needles per multi-needle sample, as RULER's defaults


def _needle(kind: str, key: str, value: str) -> str:
    return NEEDLE.format(kind=kind, key=key, value=value)


def _ask_one(kind: str, key: str) -> Task:
    return Task(
        f"What is the special magic {kind} for {key} mentioned in the text?", max_answer_tokens=ANSWER_TOKENS[kind]
    )


def _place(queried_depth: float, others: int, rng: random.Random) -> list[float]:
    """Depth of the queried needle first, then random depths for the rest."""
    return [queried_depth] + [rng.random() for _ in range(others)]


def _build(tok: Tokenizer, words: tuple[str, ...], needles: list[tuple[float, str]], budget: int) -> str:
    return haystack.build(tok, words, sorted(needles, key=lambda n: n[0]), budget)


def niah_single(tok: Tokenizer, length: int, seed: int) -> Sample:
    """One needle in noise (even seeds) or real text (odd seeds); number, word or UUID value."""
    rng = rng_for("niah_single", length, seed)
    hay = ("noise", "text")[seed % 2]
    kind = VALUE_KINDS[seed % len(VALUE_KINDS)]
    depth = depth_for(seed)
    words = haystack.haystack_words_for(hay, rng)
    state: dict[str, str] = {}

    def make(r: random.Random) -> tuple[str, tuple[str, ...]]:
        key, value = word_key(r), value_of(kind, r)
        state.update(key=key, value=value)
        budget = document_budget(tok, length, _ask_one(kind, key))
        return _build(tok, words, [(depth, _needle(kind, key, value))], budget), (value, key)

    text, unique = with_unique_values(make, rng, "niah_single")
    info = {"haystack": hay, "value_kind": kind}
    return finish(
        "niah_single",
        length,
        seed,
        tok,
        _ask_one(kind, state["key"]),
        text,
        (state["value"],),
        "all",
        depth=depth,
        unique=unique,
        info=info,
    )


def niah_multikey(tok: Tokenizer, length: int, seed: int) -> Sample:
    """Real text with four needles of different keys; the question asks for one of them."""
    rng = rng_for("niah_multikey", length, seed)
    kind = VALUE_KINDS[seed % len(VALUE_KINDS)]
    depth = depth_for(seed)
    words = haystack.text_words(rng)
    state: dict[str, str] = {}

    def make(r: random.Random) -> tuple[str, tuple[str, ...]]:
        keys = [word_key(r) for _ in range(MANY)]
        values = [value_of(kind, r) for _ in range(MANY)]
        state.update(key=keys[0], value=values[0])
        depths = _place(depth, MANY - 1, r)
        question = _ask_one(kind, keys[0])
        needles = [(d, _needle(kind, k, v)) for d, k, v in zip(depths, keys, values, strict=True)]
        text = _build(tok, words, needles, document_budget(tok, length, question))
        return text, tuple(values) + tuple(keys)

    text, unique = with_unique_values(make, rng, "niah_multikey")
    return finish(
        "niah_multikey",
        length,
        seed,
        tok,
        _ask_one(kind, state["key"]),
        text,
        (state["value"],),
        "all",
        depth=depth,
        unique=unique,
        info={"haystack": "text", "value_kind": kind},
    )


def niah_multivalue(tok: Tokenizer, length: int, seed: int) -> Sample:
    """Real text with four needles of the same key; the answer is all four values."""
    rng = rng_for("niah_multivalue", length, seed)
    kind = MANY_KINDS[seed % len(MANY_KINDS)]
    depth = depth_for(seed)
    words = haystack.text_words(rng)
    key = word_key(rng)
    question = Task(f"What are all the special magic {kind}s for {key} mentioned in the text?", max_answer_tokens=64)
    budget = document_budget(tok, length, question)

    def make(r: random.Random) -> tuple[str, tuple[str, ...]]:
        values = [value_of(kind, r) for _ in range(MANY)]
        needles = [(d, _needle(kind, key, v)) for d, v in zip(_place(depth, MANY - 1, r), values, strict=True)]
        return _build(tok, words, needles, budget), tuple(values)

    text, values = with_unique_values(make, rng, "niah_multivalue")
    return finish(
        "niah_multivalue",
        length,
        seed,
        tok,
        question,
        text,
        values,
        "all",
        depth=depth,
        unique=values,
        info={"haystack": "text", "value_kind": kind},
    )


def niah_multiquery(tok: Tokenizer, length: int, seed: int) -> Sample:
    """Real text with four needles of different keys; the question asks for all four values."""
    rng = rng_for("niah_multiquery", length, seed)
    kind = MANY_KINDS[seed % len(MANY_KINDS)]
    depth = depth_for(seed)
    words = haystack.text_words(rng)
    keys = [word_key(rng) for _ in range(MANY)]
    asked = ", ".join(keys[:-1]) + f" and {keys[-1]}"
    question = Task(f"What are the special magic {kind}s for {asked} mentioned in the text?", max_answer_tokens=64)
    budget = document_budget(tok, length, question)

    def make(r: random.Random) -> tuple[str, tuple[str, ...]]:
        values = [value_of(kind, r) for _ in range(MANY)]
        depths = _place(depth, MANY - 1, r)
        needles = [(d, _needle(kind, k, v)) for d, k, v in zip(depths, keys, values, strict=True)]
        return _build(tok, words, needles, budget), tuple(values)

    text, values = with_unique_values(make, rng, "niah_multiquery")
    return finish(
        "niah_multiquery",
        length,
        seed,
        tok,
        question,
        text,
        values,
        "all",
        depth=depth,
        unique=values,
        info={"haystack": "text", "value_kind": kind},
    )
