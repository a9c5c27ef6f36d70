"""How long a person waits: the first question on a long document (its index built on the way) and the next ones,
through `tome ask`'s path (workflows.graph.run_job), one thread, a fresh index store per configuration.

The questions are docqa's on one document (dev split by default); each configuration is a RagConfig change, the
shipped default first, measured in the same process one after the other.

    python bench/docqa_latency.py --doc austen_pride_and_prejudice.txt --questions 6 --name docqa-latency
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results  # noqa: E402
from engines import EngineConfig, create_engine  # noqa: E402
from engines.types import Document, Task  # noqa: E402
from evals.corpus import read_text  # noqa: E402
from evals.tasks.docqa import docqa_items  # noqa: E402
from memory import rag as rag_module  # noqa: E402
from memory.rag import Rag, RagConfig  # noqa: E402
from workflows import registry  # noqa: E402
from workflows.graph import run_job  # noqa: E402

CONFIGS: dict[str, dict[str, Any]] = {"current": {}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--doc", default="austen_pride_and_prejudice.txt")
    p.add_argument("--questions", type=int, default=6)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS))
    p.add_argument("--name", default="docqa-latency")
    args = p.parse_args()

    engine = create_engine(EngineConfig(kind="native", threads=1))
    text = read_text(args.doc)
    document = Document(text, source=args.doc)
    tokens = engine.count_tokens(text)
    questions = [i.question for i in docqa_items() if i.doc == args.doc and i.kind != "aggregation"]
    questions = questions[: args.questions]
    rows = []
    for name in args.configs:
        store = Path(tempfile.mkdtemp(prefix="docqa-latency-"))
        registry.STRATEGIES["rag"] = Rag(replace(RagConfig(qdrant_path=store), **CONFIGS[name]))
        rag_module._prepared.clear()  # a new document to this process: nothing derived from it yet
        seconds = []
        for q in questions:
            start = time.perf_counter()
            run_job(document, [Task(q, max_answer_tokens=32)], engine, strategy="rag")
            seconds.append(round(time.perf_counter() - start, 2))
            print(name, seconds[-1], flush=True)
        rows.append(
            {
                "config": name,
                "doc": args.doc,
                "document_tokens": tokens,
                "first_seconds": seconds[0],
                "later_median_seconds": median(seconds[1:]),
                "seconds": seconds,
            }
        )
    write_results(args.name, "docqa_latency", engine.model_name, rows, threads=1, configs=CONFIGS)


if __name__ == "__main__":
    main()
