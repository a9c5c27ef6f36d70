"""GemFilter's scoring rows on SmolLM2: the last prompt position (the paper) vs every position after the context.

Per layer, the share of a planted magic number's tokens inside the top `keep` of the context, both rules
measured on the same forward pass per sample (two probes on every layer). Writes
bench/results/gemfilter-queries.json + .md: one row per rule and layer.

    PYTHONPATH=. nice python bench/gemfilter_queries.py [--samples 8] [--length 3000]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

import torch

from bench.common import write_results
from compressors.attention import num_layers, probe_attention
from compressors.calibration import haystack_window, plant_needle
from compressors.gemfilter import prompt_around, query_rows, smooth
from engines import EngineConfig, create_engine
from engines.types import Task

HAYSTACK = Path(__file__).resolve().parents[1] / "examples" / "walden_long.txt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--length", type=int, default=3000)
    parser.add_argument("--keep", type=float, default=0.125)
    args = parser.parse_args()
    engine = create_engine(EngineConfig(kind="native", device="cpu"))
    model, tokenizer = engine.hf_model, engine.hf_tokenizer  # type: ignore[attr-defined]
    total = num_layers(model)
    haystack = HAYSTACK.read_text(encoding="utf-8")
    rng = random.Random(0)
    rules = ("last", "question")
    recall = {rule: torch.zeros(total) for rule in rules}
    for i in range(args.samples):
        needle = plant_needle(haystack_window(haystack, args.length, engine.tokenize, rng), i / (args.samples - 1), rng)
        before, after = prompt_around(engine, Task(needle.question))
        encoded = tokenizer(needle.text, add_special_tokens=False, return_offsets_mapping=True)
        context = encoded["input_ids"]
        answer = [p for p, (s, e) in enumerate(encoded["offset_mapping"]) if s < needle.end and e > needle.start]
        ids = torch.tensor([[*before, *context, *after]])
        rows = {rule: query_rows(ids.shape[1], len(after), rule) for rule in rules}
        with (
            torch.inference_mode(),
            probe_attention(model, range(total), rows["last"]) as last,
            probe_attention(model, range(total), rows["question"]) as question,
        ):
            model.base_model(input_ids=ids, use_cache=False)
        for rule, scores in (("last", last), ("question", question)):
            for layer in range(total):
                ranked = smooth(scores[layer][len(before) : len(before) + len(context)], 5)
                kept = set(ranked.topk(max(1, round(args.keep * len(context)))).indices.tolist())
                recall[rule][layer] += sum(p in kept for p in answer) / len(answer) / args.samples
        print(f"sample {i + 1}/{args.samples}", file=sys.stderr, flush=True)
    rows_out: list[dict[str, Any]] = [
        {
            "rule": rule,
            "layer": layer + 1,
            "needle_recall": round(float(recall[rule][layer]), 4),
            "keep": args.keep,
            "length": args.length,
            "n": args.samples,
        }
        for rule in rules
        for layer in range(total)
    ]
    write_results("gemfilter-queries", "gemfilter scoring rows: needle recall by layer", engine.model_name, rows_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
