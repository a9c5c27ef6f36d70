"""How long does a person wait? Seconds to answer the first question on a long document (its preparation and any
index built included) and the later ones, one CPU thread, per rag configuration, in one process.

The engine and the embedder are loaded before the clock starts (a worker keeps them); each configuration starts
with nothing prepared for the document (a fresh index store, rag's per-process cache cleared). The questions are
docqa dev questions of one document of about 100K tokens or more (dev, never test, for a choice).

    python bench/docqa_latency.py --configs units-coverage cand32-s6 --questions 6
    python bench/docqa_latency.py --configs shipped --readers none auto --questions 8   # base model vs reader adapter
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results  # noqa: E402
from bench.docqa_retrieval import CONFIGS  # noqa: E402
from engines import EngineConfig, create_engine  # noqa: E402
from engines.embedder import get_embedder  # noqa: E402
from engines.prompting import reader_adapter  # noqa: E402
from engines.types import Document, Task, no_progress  # noqa: E402
from evals.corpus import read_text  # noqa: E402
from evals.tasks.docqa import docqa_items  # noqa: E402
from memory import rag as rag_module  # noqa: E402
from memory.rag import Rag, RagConfig  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--doc", default="defoe_journal_of_the_plague_year.txt")
    p.add_argument("--configs", nargs="+", required=True)
    p.add_argument("--questions", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="docqa-latency")
    p.add_argument("--readers", nargs="+", default=["auto"], help="reader_adapter settings: none, auto, a folder")
    args = p.parse_args()

    engine = create_engine(EngineConfig(kind="native", threads=args.threads))
    get_embedder(RagConfig().embedder)  # loaded before the clock, as a worker holds it
    text = read_text(args.doc)
    document = Document(text)
    tokens = engine.count_tokens(text)
    items = [i for i in docqa_items() if i.doc == args.doc and i.split == "dev" and i.kind != "unanswerable"]
    questions = [Task(i.question, max_answer_tokens=32) for i in items[: args.questions]]
    rows = []
    for name, reader in [(name, reader) for name in args.configs for reader in args.readers]:
        engine.config = replace(engine.config, reader_adapter=reader)  # type: ignore[attr-defined]
        reader_adapter(engine, questions)  # loaded before the clock too, as a worker holds it after its first job
        rag_module._prepared.clear()  # nothing of this document prepared yet in this process
        store = Path(tempfile.mkdtemp(prefix="docqa-latency-"))
        rag = Rag(replace(RagConfig(qdrant_path=store), **CONFIGS[name]))
        seconds, read = [], []
        for task in questions:
            start = time.perf_counter()
            answer = rag.run(document, [task], engine, no_progress)[0]
            seconds.append(time.perf_counter() - start)
            read.append(answer.cost.tokens_read)
            print(name, reader, round(seconds[-1], 1), answer.cost.tokens_read, repr(answer.text[:60]), flush=True)
        rows.append(
            {
                "config": name,
                "reader": reader,
                "strategy": "rag",
                "document_tokens": tokens,
                "questions": len(questions),
                "first_seconds": round(seconds[0], 1),
                "later_median_seconds": round(median(seconds[1:]), 1),
                "later_max_seconds": round(max(seconds[1:]), 1),
                "tokens_read": round(sum(read) / len(read)),
                "threads": args.threads,
            }
        )
        print(rows[-1], flush=True)
    write_results(
        args.name,
        "docqa_latency",
        engine.model_name,
        rows,
        doc=args.doc,
        configs={k: CONFIGS[k] for k in args.configs},
        readers=args.readers,
        note="seconds of rag alone per question, one process, engine and embedder loaded first; the first question "
        "of each configuration pays for the document's preparation (passages, lexical index, embeddings or index)",
    )


if __name__ == "__main__":
    main()
