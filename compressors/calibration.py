"""Choosing GemFilter's layer r per model, on synthetic needle data, and remembering the choice.

The GemFilter paper fixes r by hand per model (13 of 32 layers for Llama-3.1-8B) and leaves open how to
choose it. Here one forward pass per sample over a haystack with a planted "magic number" probes every
layer at once; a layer's recall is the share of the number's tokens inside its selection of `keep` of
the context (1024 of an 8K chunk by default, GemFilter's setting). The
cheapest layer whose recall is within `tolerance` of the best wins (fewer layers = faster selection).
compressors/layer_store.py keeps the result per model.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from typing import Any

import torch

from compressors.attention import num_layers, probe_attention
from compressors.gemfilter import layer_model, query_rows, smooth
from compressors.layer_store import model_key
from engines.prompting import prompt_around
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


def sentence_starts(text: str) -> list[int]:
    return [0] + [m.end() for m in re.finditer(r"[.!?][\"')\]]*\s+", text)]


def plant_needle(haystack: str, depth: float, rng: random.Random, key: str | None = None) -> Needle:
    """Insert a RULER-style magic-number sentence at the sentence boundary nearest to `depth` (0..1)."""
    key = key or f"{rng.choice(_KEY_WORDS)}-{rng.choice(_KEY_WORDS)}"
    value = str(rng.randrange(1_000_000, 10_000_000))
    sentence = f"One of the special magic numbers for {key} is: {value}. "
    starts = sentence_starts(haystack)
    at = min(starts, key=lambda s: abs(s - depth * len(haystack)))
    text = haystack[:at] + sentence + haystack[at:]
    start = at + sentence.index(value)
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
    tolerance: float
    seconds: float
    date: str


def calibrate(
    engine: Any,
    haystack: str,
    samples: int = 10,
    length: int = 4000,
    keep: float = 0.125,
    queries: str = "question",
    tolerance: float = 0.05,
    seed: int = 0,
    progress: Progress = no_progress,
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
        answer_positions = [p for p, (s, e) in enumerate(offsets) if s < needle.end and e > needle.start]
        ids = torch.tensor([[*before, *context, *after]], device=model.device)
        rows = query_rows(ids.shape[1], len(after), queries)
        with torch.inference_mode(), probe_attention(model, range(total), rows) as scores:
            model.base_model(input_ids=ids, use_cache=False)
        for layer in range(total):
            ranked = smooth(scores[layer][len(before) : len(before) + len(context)], 5)
            kept = set(ranked.topk(max(1, round(keep * len(context)))).indices.tolist())
            hits[layer] += sum(p in kept for p in answer_positions) / len(answer_positions)
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
        tolerance=tolerance,
        seconds=round(time.perf_counter() - start, 1),
        date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
