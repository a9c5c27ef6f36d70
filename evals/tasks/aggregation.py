"""Aggregation tasks from RULER: common-words extraction (`cwe`) and frequent-words extraction (`fwe`)."""

from __future__ import annotations

import random
import string
from collections import Counter

import numpy as np

from engines.types import Task
from evals.corpus import vocabulary
from evals.tasks.fitting import fit
from evals.tasks.sample import Sample, Tokenizer, document_budget, finish, rng_for

COMMON_WORDS = 10  # RULER cwe: 10 common words repeated 30 times among words repeated 3 times
COMMON_MAX, RARE_FREQ = 30, 3
FWE_TOP, FWE_ALPHA, FWE_VOCAB, DOTS = 3, 2.0, 1000, "...."  # RULER fwe: zeta(2) over coded 6-letter words


def cwe(tok: Tokenizer, length: int, seed: int) -> Sample:
    rng = rng_for("cwe", length, seed)
    words = list(vocabulary())
    rng.shuffle(words)
    common, rare = words[:COMMON_WORDS], words[COMMON_WORDS:]
    question = Task(f"What are the {COMMON_WORDS} most common words in the numbered list?", max_answer_tokens=64)
    budget = document_budget(tok, length, question)
    # At 2K thirty copies of ten words would fill the whole list; fewer copies still stand far above three.
    common_freq = max(2 * RARE_FREQ, min(COMMON_MAX, budget // 120))
    order = rng.getrandbits(64)

    def build(k: int) -> str:
        items = common * common_freq + rare[:k] * RARE_FREQ
        random.Random(order).shuffle(items)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(items))

    text = fit(build, tok.count_tokens, budget, guess=budget // (7 * RARE_FREQ), most=len(rare))
    info = {"common_freq": common_freq, "rare_freq": RARE_FREQ}
    return finish("cwe", length, seed, tok, question, text, tuple(common), "all", info=info)


def fwe(tok: Tokenizer, length: int, seed: int) -> Sample:
    rng = rng_for("fwe", length, seed)
    coded: list[str] = [DOTS]
    while len(coded) < FWE_VOCAB:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(6))
        if word not in coded:
            coded.append(word)
    question = Task(
        f"What are the {FWE_TOP} most frequently appearing coded words in the text? Ignore the dots '{DOTS}'.",
        max_answer_tokens=32,
    )
    budget = document_budget(tok, length, question)
    draws = np.random.default_rng(rng.getrandbits(64))
    for _ in range(20):  # a tie at the cut would make the answer ambiguous: draw again
        ranks = draws.zipf(FWE_ALPHA, size=4 * budget)
        stream = [coded[r - 1] for r in ranks if r <= FWE_VOCAB]
        text = fit(lambda k, s=stream: " ".join(s[:k]), tok.count_tokens, budget, guess=budget // 2, most=len(stream))
        counts = Counter(w for w in text.split(" ") if w != DOTS).most_common(FWE_TOP + 1)
        if counts[FWE_TOP - 1][1] > counts[FWE_TOP][1]:
            break
    else:
        raise RuntimeError(f"fwe {length}/{seed}: no clear top {FWE_TOP} in 20 draws")
    answers = tuple(w for w, _ in counts[:FWE_TOP])
    return finish("fwe", length, seed, tok, question, text, answers, "all", info={"alpha": FWE_ALPHA})
