"""Where does the evidence that rag's retrieval missed sit? For each docqa question of a split (dev by default) whose
gold spans a configuration does not all reach: per missed span, the rank of the passage holding it under BM25 alone,
dense (cosine over the whole document) alone, their sum over the whole document and over the `dense_candidates`
lexical candidates (what rag scores), under the second round's question, and whether it was a candidate at all.

Whole-document embeddings are cached on disk (--cache) so that a sweep of retrieval variants (--sweep) runs in
seconds a configuration: the sweep reports recall and tokens read only (its seconds are not rag's cost).

    python bench/docqa_misses.py --split dev --config shipped
    python bench/docqa_misses.py --split dev --sweep shipped win10 win12
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from statistics import mean

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.docqa_retrieval import CONFIGS  # noqa: E402
from engines import EngineConfig, create_engine  # noqa: E402
from engines.embedder import get_embedder  # noqa: E402
from engines.types import Task, no_progress  # noqa: E402
from evals.metrics import span_recall  # noqa: E402
from evals.tasks.docqa import WHOLE, asked, docqa  # noqa: E402
from memory import rag as ragmod  # noqa: E402
from memory.rag import Rag, RagConfig, prepared  # noqa: E402


def cached_embeddings(cache: Path) -> None:
    """Prepared.embedded served from (and saved to) one .npy per document and embedder: every passage and sentence
    a run embeds is kept, so later runs embed only what is new."""
    original = ragmod.Prepared.embedded
    loaded: set[int] = set()

    def key(self: ragmod.Prepared, embedder) -> Path:  # type: ignore[no-untyped-def]
        h = hashlib.sha1(self.text.encode()).hexdigest()[:16]
        return cache / f"{h}-{embedder.name.replace('/', '_')}.npz"

    def embedded(self, spans, embedder):  # type: ignore[no-untyped-def]
        path = key(self, embedder)
        if id(self) not in loaded and path.exists():
            data = np.load(path)
            for (s, e), v in zip(data["spans"].tolist(), data["vectors"], strict=True):
                self._vectors[embedder.name, (s, e)] = v
            loaded.add(id(self))
        before = len(self._vectors)
        out = original(self, spans, embedder)
        if len(self._vectors) > before:
            mine = [(k[1], v) for k, v in self._vectors.items() if k[0] == embedder.name]
            cache.mkdir(parents=True, exist_ok=True)
            np.savez(path, spans=np.array([s for s, _ in mine]), vectors=np.array([v for _, v in mine]))
            loaded.add(id(self))
        return out

    ragmod.Prepared.embedded = embedded  # type: ignore[method-assign]


def rank_of(scores: np.ndarray, p: int) -> int:
    return int((scores > scores[p]).sum()) + 1


def holder(spans, gs: int, ge: int) -> int:  # type: ignore[no-untyped-def]
    """The passage holding most of the gold span."""
    return max(range(len(spans)), key=lambda i: max(0, min(ge, spans[i][1]) - max(gs, spans[i][0])))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--split", default="dev", choices=["dev", "test"])
    p.add_argument("--config", default="shipped")
    p.add_argument("--sweep", nargs="*", default=None, help="configs: recall and tokens only, embeddings cached")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--cache", type=Path, default=Path("/tmp/tome-docqa-embeddings"))
    args = p.parse_args()
    if args.split == "test" and args.sweep is None:
        raise SystemExit("diagnose dev only")
    cached_embeddings(args.cache)
    engine = create_engine(EngineConfig(kind="native"))
    items = asked(args.split, WHOLE)
    n = args.limit or len(items)
    samples = [docqa(engine, WHOLE, seed, args.split) for seed in range(n)]
    samples = [s for s in samples if s.info["gold_spans"]]
    if args.sweep is not None:
        for name in args.sweep:
            rag = Rag(replace(RagConfig(), **CONFIGS[name]))
            per_kind: dict[str, list[tuple[float, int]]] = defaultdict(list)
            missed = []
            for s in samples:
                got = rag.retrieve(s.document, [Task(s.question.question)], engine, no_progress, focus=False)[0]
                read = sum(engine.count_tokens(s.document.text[a:b]) for a, b in got.units)
                recall = span_recall(s.info["gold_spans"], got.units)
                per_kind[s.info["kind"]].append((recall, read))
                if recall < 1 and s.info["kind"] in ("lookup", "multihop"):
                    missed.append(s.info["id"] + ("" if got.windows else "(u)"))
            print(
                f"{name:28s} "
                + "  ".join(
                    f"{k[:4]} {mean(r for r, _ in v):.3f}/{mean(r == 1 for r, _ in v):.3f} {mean(t for _, t in v):5.0f}"
                    for k, v in sorted(per_kind.items())
                ),
                flush=True,
            )
            print("   missed:", " ".join(sorted(missed)), flush=True)
        return
    c = replace(RagConfig(), **CONFIGS[args.config])
    rag = Rag(c)
    embedder = get_embedder(c.embedder)
    for s in samples:
        text = s.document.text
        got = rag.retrieve(s.document, [Task(s.question.question)], engine, no_progress, focus=False)[0]
        gold = s.info["gold_spans"]
        if span_recall(gold, got.units) == 1.0:
            continue
        ready = prepared(s.document, embedder, min(c.passage_tokens, embedder.max_tokens))
        spans = ready.spans
        bm = np.asarray(ready.lexical("bm25").scores(s.question.question))
        q = embedder.embed([s.question.question])[0]
        cos = ready.embedded(spans, embedder) @ q
        fused = cos + bm
        cands = set(np.argsort(-bm, kind="stable")[: c.dense_candidates or len(spans)].tolist())
        print(f"\n[{s.info['kind']}] {s.info['id']} ({len(spans)} passages): {s.question.question}")
        best = text[slice(*spans[int(np.argmax(fused))])][:100]
        print(f"  read {len(got.units)} spans; best fused passage: {best!r}")
        for gs, ge in gold:
            hit = span_recall([[gs, ge]], got.units) == 1.0
            h = holder(spans, gs, ge)
            fused_c = np.where(np.isin(np.arange(len(spans)), list(cands)), fused, -9)
            print(
                f"  {'HIT ' if hit else 'MISS'} p{h}: bm25 #{rank_of(bm, h)} ({bm[h]:.2f}) dense #{rank_of(cos, h)} "
                f"({cos[h]:.2f}) fused-all #{rank_of(fused, h)} fused-cand "
                f"{'#' + str(rank_of(fused_c, h)) if h in cands else 'not a candidate'}  "
                f"{text[gs:ge][:90]!r}"
            )


if __name__ == "__main__":
    main()
