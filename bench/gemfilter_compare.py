"""Gemfilter variants answered on the same questions (bench/eval_bare.py logs), split into dev and held-out seeds.

Reads `eval-<name>.questions.jsonl` for each variant and writes bench/results/<out>.json + .md: one row per
variant and seed set (dev, held out, and held out by haystack), with accuracy, how often the needle reached the
answering model (`evidence_recall`), `misread` (kept but answered wrong), `repaired` (right only through the
answer repair) and the cost fields. The protocol text (which variant the rule picked and why) is passed in, so
that the report says what was fixed before the held-out seeds were read.

    PYTHONPATH=. python bench/gemfilter_compare.py --out gemfilter-layer-128k \
        --variants l22=gemfilter-s6-l22,cal=gemfilter-s6-cal --dev 0-9 --held-out 10-49 --machine "..."
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, write_results  # noqa: E402


def seeds(spec: str) -> range:
    first, last = (int(x) for x in spec.split("-"))
    return range(first, last + 1)


def summary(variant: str, label: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(records)

    def mean(key: str) -> float:
        return round(sum(float(r[key]) for r in records) / n, 4) if n else 0.0

    first = records[0] if records else {}
    return {
        "strategy": "gemfilter",
        "variant": variant,
        "seeds": label,
        "task": first.get("task"),
        "length": first.get("length"),
        "n": n,
        "accuracy": mean("accuracy"),
        "evidence_recall": mean("evidence_recall"),
        "misread": sum(r["evidence_recall"] == 1 and r["accuracy"] < 1 for r in records),
        "repaired": sum(r["accuracy"] == 1 and bool(r["details"].get("completed")) for r in records),
        "layer": first.get("details", {}).get("layer"),
        "contrast": first.get("details", {}).get("contrast", False),
        "kept_tokens": round(sum(r["details"]["kept_tokens"] for r in records) / n) if n else 0,
        "calls": mean("calls"),
        "tokens_read": round(mean("tokens_read")),
        "seconds": round(mean("seconds"), 2),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", required=True, help="label=log-name pairs, comma-separated (first: the baseline)")
    p.add_argument("--dev", default="0-9")
    p.add_argument("--held-out", default="10-49")
    p.add_argument("--out", required=True)
    p.add_argument("--machine", required=True, help="where the questions ran")
    p.add_argument("--protocol", default="", help="the selection rule and its outcome, for the report")
    p.add_argument("--logs", type=Path, default=RESULTS)
    args = p.parse_args()
    rows: list[dict[str, Any]] = []
    sets = {f"{args.dev} (dev)": seeds(args.dev)} if args.dev else {}  # --dev "": a confirmation run, no choice
    sets[f"{args.held_out} (held out)"] = seeds(args.held_out)
    for pair in args.variants.split(","):
        label, name = pair.split("=")
        log = args.logs / f"eval-{name}.questions.jsonl"
        records = [json.loads(line) for line in log.read_text().splitlines()]
        for set_label, wanted in sets.items():
            rows.append(summary(label, set_label, [r for r in records if r["seed"] in wanted]))
        held = [r for r in records if r["seed"] in sets[f"{args.held_out} (held out)"]]
        for haystack in sorted({r["haystack"] for r in held}):
            subset = [r for r in held if r["haystack"] == haystack]
            rows.append(summary(label, f"{args.held_out} (held out), {haystack} haystack", subset))
    model = json.loads(
        (args.logs / f"eval-{args.variants.split(',')[0].split('=')[1]}.questions.jsonl").open().readline()
    )
    path = write_results(
        args.out,
        f"{args.out}: gemfilter variants on the same questions",
        model["model"],
        rows,
        machine=args.machine,
        protocol=args.protocol,
        questions_logs=[f"eval-{pair.split('=')[1]}.questions.jsonl" for pair in args.variants.split(",")],
    )
    if args.protocol:
        md = path.with_suffix(".md")
        md.write_text(md.read_text() + "\n" + args.protocol + "\n")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
