"""Variable tracking (RULER `vt`): one chain of assignments hidden in noise; name every variable holding a value."""

from __future__ import annotations

import random
import string

from engines.types import Task
from evals.tasks import haystack
from evals.tasks.sample import Sample, Tokenizer, depth_for, document_budget, finish, rng_for, with_unique_values

HOPS = 4  # RULER's default: one chain, four hops, five variables


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_uppercase) for _ in range(5))


def vt(tok: Tokenizer, length: int, seed: int) -> Sample:
    rng = rng_for("vt", length, seed)
    value = str(rng.randint(10_000, 99_999))
    question = Task(
        f"Find all variables that are assigned the value {value} in the text, directly or through other variables.",
        max_answer_tokens=48,
    )
    budget = document_budget(tok, length, question)
    # The chain starts at the depth grid point and the later links follow at random depths after it.
    start = depth_for(seed)
    state: dict[str, list[str]] = {}

    def make(r: random.Random) -> tuple[str, tuple[str, ...]]:
        names: list[str] = []
        while len(names) < HOPS + 1:
            name = _name(r)
            if name not in names:
                names.append(name)
        state["names"] = names
        links = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i + 1]} = VAR {names[i]}." for i in range(HOPS)]
        depths = [start] + sorted(start + (1 - start) * r.random() for _ in range(HOPS))
        text = haystack.build(tok, haystack.noise_words(), list(zip(depths, links, strict=True)), budget)
        return text, (value, f"VAR {names[0]} =")

    text, unique = with_unique_values(make, rng, "vt")
    return finish(
        "vt",
        length,
        seed,
        tok,
        question,
        text,
        tuple(state["names"]),
        "all",
        depth=start,
        unique=unique,
        info={"haystack": "noise", "hops": HOPS},
    )
