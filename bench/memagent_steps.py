"""memagent one update at a time: why its accuracy holds or falls with document length.

A needle question over L tokens is right when (1) the update on the needle's segment copies the needle,
(2) every later update keeps it, and (3) the final answer reads it from memory. (1) and (2) are properties
of a single update, measured here on 2K-token segments of real text (batched, so this runs on a CPU):
- recall: the needle (and, for multikey, three other keys' needles) in the segment, empty notes;
- recall_multikey: as recall, with three distractor needles in the same segment;
- retention: the needle in the notes, a segment without needles;
- noise: empty notes, a segment without needles: sentences the update keeps anyway (false positives).
From recall r and retention k, a needle at a uniform depth of S segments survives with
r * (1 - k**S) / (S * (1 - k)); the projection rows give that for 8K, 32K and 128K.

    python bench/memagent_steps.py --n 4
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results  # noqa: E402
from bench.memory_needles import KEYS, needle, question  # noqa: E402
from engines import EngineConfig, create_engine  # noqa: E402
from engines.types import Task  # noqa: E402
from evals.corpus import CORPUS_DIR  # noqa: E402
from memory.memagent import MemAgent  # noqa: E402
from memory.spans import split_sentences  # noqa: E402


def probe(kind: str, rng: random.Random, engine, haystack_ids: list[int], segment_tokens: int):
    """(text, notes spans, segment span, task, the needle's span or None)."""
    start = rng.randint(0, len(haystack_ids) - segment_tokens)
    body = engine.detokenize(haystack_ids[start : start + segment_tokens - 60])
    keys = rng.sample(KEYS, 4)
    value = str(rng.randint(1_000_000, 9_999_999))
    asked = needle(keys[0], value)
    task = Task(question(keys[0]))
    if kind == "retention":
        text = asked + "\n\n" + body
        return text, [(0, len(asked))], (len(asked) + 2, len(text)), task, (0, len(asked))
    paragraphs = body.split("\n\n")
    planted = [] if kind == "noise" else [asked]
    if kind == "recall_multikey":
        planted += [needle(k, str(rng.randint(1_000_000, 9_999_999))) for k in keys[1:]]
    for n in planted:
        paragraphs.insert(rng.randint(1, max(1, len(paragraphs) - 1)), n)
    text = "\n\n".join(paragraphs)
    span = (text.index(asked), text.index(asked) + len(asked)) if planted else None
    return text, [], (0, len(text)), task, span


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=8, help="updates per probe kind")
    p.add_argument("--kinds", nargs="+", default=["retention", "recall", "noise", "recall_multikey"])
    p.add_argument("--haystack", default=str(CORPUS_DIR / "thoreau_walden_and_civil_disobedience.txt"))
    p.add_argument("--name", default="memagent_steps")
    args = p.parse_args()

    engine = create_engine(EngineConfig(kind="native"))
    agent = MemAgent()
    segment_tokens = agent.segment_budget([Task(question(KEYS[0]))], engine)
    haystack_ids = engine.tokenize(Path(args.haystack).read_text())
    rows, rates = [], {}
    traces = open(Path(__file__).parent / "results" / f"{args.name}.traces.jsonl", "w")
    for kind in args.kinds:
        rng = random.Random(f"steps-{kind}")
        probes = [probe(kind, rng, engine, haystack_ids, segment_tokens) for _ in range(args.n)]
        conversations = [
            agent.update_messages(task, "\n".join(text[s:e] for s, e in notes), text[seg[0] : seg[1]])
            for text, notes, seg, task, _ in probes
        ]
        gens = engine.chat(conversations, agent.update_params())
        good = kept = 0
        for (text, notes, seg, task, span), g in zip(probes, gens, strict=True):
            memory, action = agent.apply_update(text, notes, split_sentences(text, *seg), g.text, task.question, engine)
            ok = span in memory if span else not memory
            good += ok
            kept += len(memory)
            traces.write(json.dumps({"probe": kind, "ok": ok, "action": action, "output": g.text[:400]}) + "\n")
        rates[kind] = good / args.n
        rows.append(
            {"strategy": "memagent", "probe": kind, "n": args.n, "rate": rates[kind], "kept_sentences": kept / args.n,
             "seconds": sum(g.seconds for g in gens) / args.n, "segment_tokens": segment_tokens}
        )  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
        write_results(args.name, "memagent_steps", engine.model_name, rows + projection(rates, segment_tokens))


def projection(rates: dict[str, float], segment_tokens: int) -> list[dict]:
    if not {"recall", "retention"} <= rates.keys():
        return []
    r, k = rates["recall"], rates["retention"]
    rows = []
    for length in (8192, 32768, 131072):
        s = max(1, round(length / segment_tokens))
        survive = 1.0 if k == 1 else (1 - k**s) / (s * (1 - k))
        rows.append({"strategy": "memagent", "probe": "projected", "length": length, "rate": r * survive})
    return rows


if __name__ == "__main__":
    main()
