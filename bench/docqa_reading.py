"""Does the reader answer people's questions from what retrieval found? docqa answers per rag configuration.

`rag` runs alone (no router, no verify step), each configuration on the same questions of one split, one process:
accuracy beside evidence recall (the share of gold spans in the text the model read), tokens read and seconds. The
configurations are bench/docqa_retrieval.py's. Dev for every choice, test for claims. `--task` runs a generated
task instead (at `--length`, seeds 0..limit-1): what a configuration chosen on docqa does to the needles.

    python bench/docqa_reading.py --split dev --kinds lookup --limit 24 --configs cand64 cand64-s6
    python bench/docqa_reading.py --task niah_single --length 32768 --limit 8 --configs units-coverage cand64-s6
    python bench/docqa_reading.py --configs shipped --readers none auto   # the reader adapter against the base model

`--abstain-at 0 0.3 0.5` compares thresholds of the reader's refusal (engines/copying.py) from one run.
`verified_accuracy` scores what the job graph would say without a fallback: an answer the verify step does not back
becomes "The document does not say.".
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from statistics import mean, median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results  # noqa: E402
from bench.docqa_retrieval import CONFIGS  # noqa: E402
from engines import EngineConfig, create_engine  # noqa: E402
from engines.grounding import NOT_STATED  # noqa: E402
from engines.types import Answer, no_progress  # noqa: E402
from evals.tasks import TASKS, generate  # noqa: E402
from evals.tasks.docqa import WHOLE, asked, docqa  # noqa: E402
from evals.tasks.sample import Sample  # noqa: E402
from memory.rag import Rag, RagConfig  # noqa: E402
from workflows.verify import answer_supported  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--split", default="dev", choices=["dev", "test"])
    p.add_argument("--task", default="docqa", choices=list(TASKS))
    p.add_argument("--length", type=int, default=WHOLE, help="generated tasks: document tokens")
    p.add_argument("--configs", nargs="+", required=True)
    p.add_argument("--kinds", nargs="+", default=["lookup", "multihop", "aggregation", "unanswerable"])
    p.add_argument("--limit", type=int, default=0, help="first N questions of the chosen kinds (0: all)")
    p.add_argument("--ids", nargs="+", default=None, help="docqa: only these questions")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="docqa-reading-dev")
    p.add_argument("--store", type=Path, default=None, help="index store (configs without dense_candidates)")
    p.add_argument("--readers", nargs="+", default=["auto"], help="reader_adapter settings: none, auto, a folder")
    p.add_argument(
        "--abstain-at",
        nargs="+",
        type=float,
        default=[EngineConfig.reader_abstain_at],
        help="reader_abstain_at values (0: every refusal stands); one run at the largest, the rest replayed from it",
    )
    args = p.parse_args()

    engine = create_engine(EngineConfig(kind="native", threads=args.threads))
    if args.task == "docqa":
        samples = [docqa(engine, WHOLE, seed, args.split) for seed in range(len(asked(args.split, WHOLE)))]
        samples = [s for s in samples if s.info["kind"] in args.kinds and (not args.ids or s.info["id"] in args.ids)]
        samples = samples[: args.limit or None]
    else:
        samples = [generate(args.task, engine, args.length, seed) for seed in range(args.limit or 8)]
    rows: list[dict[str, Any]] = []
    answers: list[dict[str, Any]] = []
    # One run per config and reader, answering with reader_abstain_at = the largest threshold asked; every smaller
    # threshold is that run replayed (abstain_at): a refusal given at least its probability stands, else the copy.
    runs = [(name, reader) for name in args.configs for reader in args.readers]
    for name, reader in runs:
        engine.config = replace(  # type: ignore[attr-defined]
            engine.config, reader_adapter=reader, reader_abstain_at=max(args.abstain_at)
        )
        base = RagConfig(qdrant_path=args.store) if args.store else RagConfig()
        rag = Rag(replace(base, **CONFIGS[name]))
        per_kind: dict[tuple[float, str], list[dict[str, Any]]] = defaultdict(list)
        for s in samples:
            start = time.perf_counter()
            answer = rag.run(s.document, [s.question], engine, no_progress)[0]
            seconds = time.perf_counter() - start
            for threshold in args.abstain_at:
                replayed = at_threshold(answer, threshold)
                got = {
                    **s.scored(replayed),
                    "seconds": seconds,
                    "verified_accuracy": verified_accuracy(s, replayed),
                }
                per_kind[threshold, s.info.get("kind", args.task)].append(got)
                answers.append(
                    {
                        "config": name,
                        "reader": reader,
                        "abstain_at": threshold,
                        "id": s.info.get("id", s.seed),
                        "kind": s.info.get("kind", args.task),
                        "answer": replayed.text,
                        "accuracy": got["accuracy"],
                        "verified_accuracy": got["verified_accuracy"],
                        "refusal_probability": answer.details.get("refusal_probability"),
                    }
                )
            print(
                name,
                reader,
                s.info.get("id", s.seed),
                answer.details.get("refusal_probability"),
                repr(answer.text[:80]),
            )
        for (threshold, kind), got_rows in sorted(per_kind.items()):
            recalls = [r["evidence_recall"] for r in got_rows if r["evidence_recall"] is not None]
            rows.append(
                {
                    "config": name,
                    "reader": reader,
                    "abstain_at": threshold,
                    "strategy": "rag",
                    "task": args.task,
                    "split": args.split if args.task == "docqa" else None,
                    "kind": kind,
                    "length": args.length,
                    "n": len(got_rows),
                    "accuracy": round(mean(r["accuracy"] for r in got_rows), 4),
                    "evidence_recall": round(mean(recalls), 4) if recalls else None,
                    "verified_accuracy": round(mean(r["verified_accuracy"] for r in got_rows), 4),
                    "tokens_read": round(mean(r["tokens_read"] for r in got_rows)),
                    "calls": round(mean(r["calls"] for r in got_rows), 2),
                    "seconds": round(mean(r["seconds"] for r in got_rows), 2),
                    "median_seconds": round(median(r["seconds"] for r in got_rows), 2),
                }
            )
            print(rows[-1], flush=True)
    write_results(
        args.name,
        "docqa_reading",
        engine.model_name,
        rows,
        split=args.split,
        threads=args.threads,
        configs={k: CONFIGS[k] for k in args.configs},
        readers=args.readers,
        abstain_at=args.abstain_at,
        answers=answers,
        questions=[s.info.get("id", s.seed) for s in samples],
        note="rag alone (no router or verify step); seconds per question include retrieval (a document's first "
        "question pays for its preparation); evidence_recall over the gold spans of answerable questions",
    )


def at_threshold(answer: Answer, threshold: float) -> Answer:
    """The answer rag would give with reader_abstain_at = `threshold` (at most the run's): a copy made from a refusal
    whose probability reaches the threshold goes back to the refusal."""
    refused, p = answer.details.get("refused"), answer.details.get("refusal_probability")
    if refused is None or p is None or p < threshold:
        return answer
    return replace(answer, text=refused)


def verified_accuracy(sample: Sample, answer: Answer) -> float:
    """The answer's score after the verify step: one the text read does not back says the document does not say."""
    supported = answer_supported(answer, sample.question, sample.document.text)
    return sample.scored(answer if supported else replace(answer, text=NOT_STATED))["accuracy"]


if __name__ == "__main__":
    main()
