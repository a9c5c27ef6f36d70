"""Choosing GemFilter's layer r per model, on synthetic needle data, and remembering the choice.

The GemFilter paper fixes r by hand per model and leaves open how to choose it. Here one forward pass per sample
over a haystack with a planted "magic number" probes every layer at once. A layer's recall is scored by the
selection rule gemfilter uses: with sentence units (the default) whether the needle's sentence is among the units
kept in `keep` of the context, with single tokens the share of the number's tokens kept (`keep` = 1024 of an 8K
chunk by default, GemFilter's setting). The cheapest layer whose recall is within `tolerance` of the best wins
(fewer layers = faster selection). Calibrate at the length of a scoring chunk: which layer singles out a needle
depends on how far it sits from the question, so short samples pick a layer that loses needles at a chunk's start.
compressors/layer_store.py keeps the result per model.
"""

from __future__ import annotations

import bisect
import itertools
import random
import time
from dataclasses import dataclass
from typing import Any

import torch

from compressors.attention import num_layers, probe_attention
from compressors.gemfilter import GemFilterConfig, best_units, layer_model, query_rows, smooth, unit_scores, units_of
from compressors.layer_store import model_key
from engines.prompting import prompt_around
from engines.text import plant, sentence_starts, words_of
from engines.types import Progress, Task, no_progress

_KEY_WORDS = (
    "amber harbor silent meadow copper lantern frozen orchard velvet canyon hollow beacon crimson willow "
    "distant falcon marble river gentle thunder golden compass quiet ember hidden glacier rustic anchor"
).split()


@dataclass(frozen=True)
class Needle:
    text: str  # the document with the needle planted
    question: str
    answer: str
    start: int  # character offsets of the answer inside text
    end: int


def plant_needle(haystack: str, depth: float, rng: random.Random, key: str | None = None) -> Needle:
    """Plant a RULER-style magic-number sentence at the sentence boundary nearest to `depth` (0..1, in characters)."""
    key = key or f"{rng.choice(_KEY_WORDS)}-{rng.choice(_KEY_WORDS)}"
    value = str(rng.randrange(1_000_000, 10_000_000))
    sentence = f"One of the special magic numbers for {key} is: {value}."
    at = min(sentence_starts(haystack), key=lambda s: abs(s - depth * len(haystack)))  # nearest, in characters
    words = words_of(haystack)
    ends = list(itertools.accumulate(map(len, words), initial=len(haystack) - len(haystack.lstrip())))
    before = max(0, bisect.bisect_right(ends, at) - 1)  # words wholly before `at`
    text = plant(words, [(before / max(1, len(words)), sentence)])
    start = text.index(sentence) + sentence.index(value)
    return Needle(
        text,
        f"What is the special magic number for {key} mentioned in the provided text?",
        value,
        start,
        start + len(value),
    )


def haystack_window(text: str, tokens: int, tokenize: Any, rng: random.Random) -> str:
    """A stretch of `text` at most `tokens` tokens long, starting at a random sentence."""
    sample = text[:20000]
    chars = min(len(text), int(tokens * len(sample) / max(1, len(tokenize(sample)))))
    starts = [s for s in sentence_starts(text) if s <= len(text) - chars] or [0]
    begin = rng.choice(starts)
    window = text[begin : begin + chars]
    while len(tokenize(window)) > tokens:
        window = window[: int(len(window) * 0.95)]
    return window


@dataclass
class Calibration:
    model: str
    layer: int
    num_layers: int
    recall_by_layer: list[float]
    keep: float
    queries: str
    samples: int
    length: int
    unit: str
    tolerance: float
    seconds: float
    date: str


def calibrate(
    engine: Any,
    haystack: str,
    samples: int = 10,
    length: int = 8000,
    keep: float = 0.125,
    queries: str = "question",
    tolerance: float = 0.05,
    seed: int = 0,
    progress: Progress = no_progress,
    unit: str = GemFilterConfig.unit,
) -> Calibration:
    """Measure every layer's needle recall and pick the cheapest good one (see the module docstring)."""
    if samples < 1 or not 0 < keep < 1 or length * keep < 1:
        raise ValueError("calibration needs at least one sample and 0 < keep < 1 of `length` tokens")
    start = time.perf_counter()
    model = layer_model(engine)
    tokenizer = engine.hf_tokenizer
    total = num_layers(model)
    rng = random.Random(seed)
    hits = torch.zeros(total)
    for i in range(samples):
        progress(i, samples, f"calibrating gemfilter: sample {i + 1}/{samples}")
        needle = plant_needle(haystack_window(haystack, length, engine.tokenize, rng), i / max(1, samples - 1), rng)
        before, after = prompt_around(engine, Task(needle.question))
        encoded = tokenizer(needle.text, add_special_tokens=False, return_offsets_mapping=True)
        context = encoded["input_ids"]
        offsets = encoded["offset_mapping"]
        ids = torch.tensor([[*before, *context, *after]], device=model.device)
        rows = query_rows(ids.shape[1], len(after), queries)
        with torch.inference_mode(), probe_attention(model, range(total), rows) as scores:
            model.base_model(input_ids=ids, use_cache=False)
        budget = max(1, round(keep * len(context)))
        for layer in range(total):
            found = scores[layer][len(before) : len(before) + len(context)]
            hits[layer] += needle_recall(found, offsets, needle, budget, unit)
    progress(samples, samples, "calibrated")
    recall = (hits / samples).tolist()
    best = max(recall)
    layer = next(i + 1 for i, r in enumerate(recall) if r >= best - tolerance)
    return Calibration(
        model=model_key(model),
        layer=layer,
        num_layers=total,
        recall_by_layer=[round(r, 4) for r in recall],
        keep=keep,
        queries=queries,
        samples=samples,
        length=length,
        unit=unit,
        tolerance=tolerance,
        seconds=round(time.perf_counter() - start, 1),
        date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def needle_recall(
    scores: torch.Tensor, offsets: list[tuple[int, int]], needle: Needle, budget: int, unit: str
) -> float:
    """How much of the needle one layer's context scores keep in `budget` tokens, by gemfilter's own rule.

    Sentence units: 1 if the sentence holding the number is kept whole, else 0. Single tokens: the share of the
    number's tokens among the `budget` best smoothed scores.
    """
    if unit == "token":
        answer = [p for p, (s, e) in enumerate(offsets) if s < needle.end and e > needle.start]
        kept = set(smooth(scores, GemFilterConfig.smoothing).topk(budget).indices.tolist())
        return sum(p in kept for p in answer) / len(answer)
    config = GemFilterConfig()
    units = units_of(offsets, needle.text, unit, config.unit_tokens)
    votes = torch.tensor([any(ch.isalnum() for ch in needle.text[s:e]) for s, e in offsets], device=scores.device)
    ranked = unit_scores([len(u) for u in units], scores, votes, config.unit_top)
    return float(
        any(offsets[u.start][0] <= needle.start < offsets[u.stop - 1][1] for u in best_units(units, ranked, budget))
    )


def main() -> None:
    """`python -m compressors.calibration`: calibrate on a host without the service stack (a GPU box)."""
    import argparse
    from pathlib import Path

    from compressors.layer_store import save_entry
    from engines import EngineConfig, create_engine

    p = argparse.ArgumentParser(description="choose gemfilter's layer for a model (tome calibrate --only gemfilter)")
    p.add_argument("--model", default="smollm2", help="a model alias or HF folder")
    p.add_argument("--haystack", type=Path, default=Path(__file__).resolve().parents[1] / "examples/walden_long.txt")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--length", type=int, default=8000, help="tokens per sample (a scoring chunk)")
    p.add_argument("--unit", default=GemFilterConfig.unit)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args()
    engine = create_engine(EngineConfig(kind="native", model=args.model, device=args.device, dtype=args.dtype))
    result = calibrate(engine, args.haystack.read_text(encoding="utf-8"), args.samples, args.length, unit=args.unit)
    save_entry(result, args.output)
    curve = " ".join(f"{i}:{r:.2f}" for i, r in enumerate(result.recall_by_layer, start=1))
    print(f"{result.model}: layer {result.layer} of {result.num_layers} ({curve}) -> {args.output}")


if __name__ == "__main__":
    main()
