"""How the answering model reads gemfilter's kept text: the same selection read in three orders or sizes.

At 128K with layer 19 the needle's sentence reaches the answering model in 39 of 40 held-out questions, but 9 are
misread (bench/results/gemfilter-layer-128k.md); in one of them, reproduced on a CPU, the needle was the 4th of 78
kept spans and the model answered a noise sentence, and with the needle's sentence moved last it answered right.
This script tests reading orders on `niah_single` questions short enough for one scoring chunk (8K: one pass per
question, so it runs on a CPU): the sentences kept in 1024 tokens read in document order (the default), best last
(nearest the question), or only the best 256 tokens in document order. Writes bench/results/<name>.json + .md.

    PYTHONPATH=. python bench/gemfilter_reading.py --seeds 0-19 --layer 19
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results  # noqa: E402
from compressors.gemfilter import best_units, pack, score_context, spans_of, unit_scores, units_of  # noqa: E402
from engines import EngineConfig, create_engine  # noqa: E402
from engines.grounding import complete_fragments  # noqa: E402
from engines.prompting import answer_from_context, prompt_around  # noqa: E402
from evals.cli import parse_length  # noqa: E402
from evals.metrics import score  # noqa: E402
from evals.tasks import generate  # noqa: E402


def readings(engine: Any, text: str, question: Any, layer: int, top_k: int, small: int) -> dict[str, str]:
    tokenizer = engine.hf_tokenizer
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    before, after = prompt_around(engine, question)
    pieces = pack(units_of(offsets, text, "sentence", 128), engine.max_context - len(before) - len(after))
    if len(pieces) != 1:
        raise ValueError("the document needs more than one scoring chunk: use a shorter --length")
    piece = pieces[0]
    scores = score_context(engine.hf_model, before, [ids[p] for u in piece for p in u], after, layer, 1)
    votes = torch.tensor([any(ch.isalnum() for ch in text[offsets[p][0] : offsets[p][1]]) for u in piece for p in u])
    ranked = unit_scores([len(u) for u in piece], scores, votes, 3)
    kept = best_units(piece, ranked, top_k)  # best first

    def read(units: list[range]) -> str:
        return "\n".join(s.text for s in spans_of([p for u in units for p in u], offsets, text))

    return {
        "document": read(sorted(kept, key=lambda u: u.start)),
        "best_last": "\n".join(read([u]) for u in reversed(kept)),
        f"best_{small}": read(sorted(best_units(piece, ranked, small), key=lambda u: u.start)),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0-19")
    p.add_argument("--length", default="8K")
    p.add_argument("--layer", type=int, default=19)
    p.add_argument("--top-k", type=int, default=1024)
    p.add_argument("--small", type=int, default=256)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--name", default="gemfilter-reading-8k")
    args = p.parse_args()
    first, last = (int(x) for x in args.seeds.split("-"))
    engine = create_engine(EngineConfig(kind="native", device="cpu", dtype=args.dtype))
    per_question: list[dict[str, Any]] = []
    for seed in range(first, last + 1):
        sample = generate("niah_single", engine, parse_length(args.length), seed)
        record: dict[str, Any] = {"seed": seed, "haystack": sample.info["haystack"], "depth": sample.depth}
        for name, text in readings(
            engine, sample.document.text, sample.question, args.layer, args.top_k, args.small
        ).items():
            answer = answer_from_context(engine, text, [sample.question], "gemfilter", [])[0]
            fixed, _ = complete_fragments(answer.text, text, sample.question.question)
            record[name] = score(sample.metric, fixed, sample.answers)
            record[name + "_kept"] = score(sample.metric, text, sample.answers)
        per_question.append(record)
        print(record, flush=True)
    rows = []
    for name in [k for k in per_question[0] if k not in ("seed", "haystack", "depth") and not k.endswith("_kept")]:
        rows.append(
            {
                "strategy": "gemfilter",
                "reading": name,
                "task": "niah_single",
                "length": parse_length(args.length),
                "n": len(per_question),
                "accuracy": round(sum(r[name] for r in per_question) / len(per_question), 4),
                "evidence_recall": round(sum(r[name + "_kept"] for r in per_question) / len(per_question), 4),
                "layer": args.layer,
                "seeds": args.seeds,
            }
        )
    write_results(
        args.name,
        f"{args.name}: one gemfilter selection, read in three ways",
        "smollm2",
        rows,
        dtype=args.dtype,
        questions=per_question,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
