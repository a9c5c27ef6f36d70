"""How often `rag` puts the needle in front of the model: retrieval recall by passage size and read budget.

No generation, only the embedder and Qdrant (local mode), so it runs on a CPU at 128K tokens. The samples are
bench/memory_needles.py's; `recall` is the fraction of asked needles inside the units the model would read.

    python bench/rag_retrieval.py --lengths 32768 131072 --n 4 2
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results  # noqa: E402
from bench.memory_needles import make_sample, needle  # noqa: E402
from engines import EngineConfig, create_engine  # noqa: E402
from evals.corpus import CORPUS_DIR  # noqa: E402
from memory.rag import Rag, RagConfig  # noqa: E402

CONFIGS = {  # name: (passage word pieces, unit tokens, read tokens; None = all the context)
    "p256-u2048-all": (256, 2048, None),
    "p256-u1024-r3072": (256, 1024, 3072),
    "p128-u1024-r3072": (128, 1024, 3072),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lengths", type=int, nargs="+", default=[32768, 131072])
    p.add_argument("--tasks", nargs="+", default=["niah_single", "niah_multikey"])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS))
    p.add_argument("--n", type=int, nargs="+", default=[4, 2], help="samples per length (one number, or one each)")
    p.add_argument("--haystack", default=str(CORPUS_DIR / "thoreau_walden_and_civil_disobedience.txt"))
    p.add_argument("--name", default="rag_retrieval")
    args = p.parse_args()

    engine = create_engine(EngineConfig(kind="native"))
    haystack_ids = engine.tokenize(Path(args.haystack).read_text())
    store = Path(tempfile.mkdtemp(prefix="rag-bench-"))  # one store per passage size: configs share its indexes
    rows = []
    for length, n in zip(args.lengths, args.n * len(args.lengths) if len(args.n) == 1 else args.n, strict=False):
        for task in args.tasks:
            rng = random.Random(f"0-{length}-{task}")  # the same samples as memory_needles.py
            samples = [make_sample(engine, haystack_ids, length, task, rng) for _ in range(n)]
            for name in args.configs:
                passage, unit, read = CONFIGS[name]
                where = store / f"p{passage}"
                rag = Rag(RagConfig(passage_tokens=passage, unit_tokens=unit, read_tokens=read, qdrant_path=where))
                found = asked = 0
                seconds = read_tokens = 0.0
                for doc, tasks, values in samples:
                    start = time.perf_counter()
                    retrieved = rag.retrieve(doc, tasks, engine, lambda d, t, m: None)
                    seconds += time.perf_counter() - start
                    for r, t, v in zip(retrieved, tasks, values, strict=True):
                        key = t.question.removeprefix("What is the special magic number for the ").rstrip("?")
                        at = doc.text.index(needle(key, v))
                        found += any(s <= at < e for s, e in r.units)
                        asked += 1
                        read_tokens += sum(engine.count_tokens(doc.text[s:e]) for s, e in r.units)
                row = {
                    "strategy": "rag", "config": name, "task": task, "length": length, "n": asked,
                    "recall": found / asked, "tokens_read": read_tokens / asked, "seconds": seconds / len(samples),
                }  # fmt: skip
                print(json.dumps(row), flush=True)
                rows.append(row)
                write_results(args.name, "rag_retrieval", "all-MiniLM-L6-v2 + " + engine.model_name, rows)


if __name__ == "__main__":
    main()
