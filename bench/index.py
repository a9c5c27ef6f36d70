"""The index of bench/results: one line per benchmark for its latest run, then every other current run.

    PYTHONPATH=. python -m bench.index            # writes bench/results/README.md (make results-index)
    PYTHONPATH=. python -m bench.index --archive  # first moves superseded runs to bench/results/archive/ (git mv)

A run is a `<name>.json` in DESIGN.md's format; its `benchmark` names the script that wrote it (`eval` for
`tome eval`). A run is superseded when a later run of the same benchmark exists and nothing names it: no tracked file
outside bench/results (README, package READMEs, docstrings, policies, model cards) and no other run's header (the
eval logs a comparison read). What is still quoted stays where the quote points. An archived run takes its companions
along (`.md`, `.questions.jsonl`, plots).
`tests/test_results_index.py` checks that the committed README.md is what `render()` writes.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
ARCHIVE = RESULTS / "archive"
COMPANION = re.compile(r"\.(json|md|questions\.jsonl)$|-accuracy\.png$|-depth-\w+\.png$")
METRICS = ("accuracy", "evidence_recall", "recall", "needle_recall", "recall_exact", "prefill_tok_s", "rate")
BRACES = re.compile(r"([\w.-]*)\{([^{}]*)\}([\w.-]*)")


def runs(folder: Path = RESULTS) -> list[dict[str, Any]]:
    """Every result file with rows in `folder`, as {file, benchmark, date, ...}; files of other kinds are skipped."""
    found = []
    for path in sorted(folder.glob("*.json")):
        doc = json.loads(path.read_text())
        if isinstance(doc, dict) and "benchmark" in doc and "rows" in doc:
            found.append({"file": path.name, "stem": path.stem, **doc})
    return found


def script(benchmark: str) -> str:
    """The committed code that writes a benchmark's results."""
    return "evals/runner.py" if benchmark == "eval" else f"bench/{benchmark}.py"


def command(run: dict[str, Any]) -> str:
    if run.get("command"):
        return run["command"]
    if run["benchmark"] == "eval":
        return f"tome eval --name {run['stem'].removeprefix('eval-')} (other flags not recorded)"
    return ""


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    """Mean of `key` over the rows, weighted by their `n` where they have one."""
    pairs = [(r[key], r.get("n") or 1) for r in rows if isinstance(r.get(key), int | float)]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def headline(run: dict[str, Any]) -> str:
    """A one-line summary read from the rows, by the fields DESIGN.md gives each kind of benchmark."""
    rows = [r for r in run["rows"] if isinstance(r, dict)]
    if not rows:
        return "no rows"
    first = rows[0]
    timed = [r for r in rows if isinstance(r.get("speedup"), int | float)]
    if timed and "kernel" in first:
        best = max(timed, key=lambda r: r["speedup"])
        recall = f", recall {best['recall']:.3f}" if isinstance(best.get("recall"), float) else ""
        return f"best speedup {best['speedup']:.2f}x ({best['kernel']}, {best['length']} tokens{recall})"
    if timed and "model_shape" in first and "ttft_ms" in first:  # vLLM prefill: each shape's longest one-chunk prompt
        one = [r for r in timed if not r.get("chunk_tokens")] or timed
        parts = []
        for shape in dict.fromkeys(r["model_shape"] for r in one):
            rs = [r for r in one if r["model_shape"] == shape]
            longest = max(r["length"] for r in rs)
            speedups = ", ".join(f"{r['backend']} {r['speedup']:.2f}x" for r in rs if r["length"] == longest)
            parts.append(f"{shape} {longest // 1024}K TTFT vs {rs[0]['baseline_backend']}: {speedups}")
        return "; ".join(parts)
    if "p99_ms" in first:
        return "; ".join(f"{r['scenario']}: p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms" for r in rows[:3])
    if "seconds_to_resume" in first:
        return "; ".join(f"{r['scenario']}: lost {r['lost']}, duplicated {r['duplicated']}" for r in rows[:4])
    if "probes" in first and "passed" in first:  # service_probes: groups, then the total
        t = rows[-1]
        return f"{t['passed']}/{t['probes']} probes passed, {t['server_errors']} 5xx, {t['stored_something']} stored"
    if "baseline_seconds" in first and "parser" in first:
        r = max(rows, key=lambda r: (r["pages"], r.get("speedup") or 0))
        base = f"{r['baseline_parser']} {r['baseline_seconds']:.2f} s"
        return f"{r['scenario']}: {r['parser']} {r['seconds']:.2f} s vs {base}"
    if "config" in first and "evidence_recall" in first:
        by = defaultdict(list)
        for r in rows:
            by[r["config"]].append(r)
        return "; ".join(f"{c}: evidence recall {_num(_mean(rs, 'evidence_recall'), 2)}" for c, rs in by.items())
    if "baseline_accuracy" in first and "accuracy" in first:
        label = first.get("compressor") or run.get("measured") or run["benchmark"]
        rows = [r for r in rows if r.get("task") == "all"] or rows  # eval_pair's totals, where it wrote them
        a, b = _num(_mean(rows, "accuracy")), _num(_mean(rows, "baseline_accuracy"))
        return f"{label}: accuracy {a} vs baseline {b} over {sum(r.get('n') or 1 for r in rows)} answers"
    if "strategy" in first and "accuracy" in first:
        by = defaultdict(list)
        for r in rows:
            if r.get("status", "ok") == "ok":
                by[r["strategy"]].append(r)
        parts = []
        for strategy, rs in by.items():
            recall = _mean(rs, "evidence_recall")
            extra = f" (evidence recall {recall:.2f})" if recall is not None else ""
            parts.append(f"{strategy} {_num(_mean(rs, 'accuracy'))}{extra}")
        return "accuracy " + ", ".join(parts)
    metric = next((m for m in METRICS if isinstance(first.get(m), int | float)), None)
    key = next((k for k, v in first.items() if isinstance(v, str)), None)
    if metric and key:
        by = defaultdict(list)
        for r in rows:
            by[r.get(key)].append(r)
        return f"{metric} by {key}: " + ", ".join(f"{k} {_num(_mean(rs, metric))}" for k, rs in list(by.items())[:5])
    return f"{len(rows)} rows of {', '.join(list(first)[:4])}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(folder: Path = RESULTS) -> str:
    """bench/results/README.md as it should read for the results in `folder`."""
    by_benchmark: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs(folder):
        by_benchmark[run["benchmark"]].append(run)
    out = [
        "# Benchmark results",
        "",
        "Generated by `make results-index` (`bench/index.py`) from the JSON files here; do not edit.",
        "Each benchmark's latest run, then the other runs still quoted elsewhere; superseded runs are in `archive/`.",
        "",
        "| benchmark | latest run | date | commit | machine | headline |",
        "|---|---|---|---|---|---|",
    ]
    latest = {}
    for name in sorted(by_benchmark):
        ordered = sorted(by_benchmark[name], key=lambda r: (str(r.get("date")), r["file"]))
        latest[name] = ordered[-1]
        run = ordered[-1]
        out.append(
            f"| [`{name}`](../../{script(name)}) | [{run['stem']}]({run['stem']}.md) | {str(run.get('date'))[:10]} "
            f"| {str(run.get('commit'))[:8]} | {_cell(str(run.get('machine')))} | {_cell(headline(run))} |"
        )
    out += ["", "## Commands of the latest runs", ""]
    for name, run in latest.items():
        out.append(f"- `{name}`: `{command(run)}`" if command(run) else f"- `{name}`: not recorded")
    out += ["", "## Other current runs", "", "| benchmark | run | date | commit | headline |", "|---|---|---|---|---|"]
    for name in sorted(by_benchmark):
        for run in sorted(by_benchmark[name], key=lambda r: (str(r.get("date")), r["file"]), reverse=True):
            if run is latest[name]:
                continue
            out.append(
                f"| `{name}` | [{run['stem']}]({run['stem']}.md) | {str(run.get('date'))[:10]} "
                f"| {str(run.get('commit'))[:8]} | {_cell(headline(run))} |"
            )
    return "\n".join(out) + "\n"


def _expand(text: str) -> str:
    """`eval-x{,-old}.md` becomes `eval-x.md eval-x-old.md`, so brace-shortened names count as named."""
    return BRACES.sub(lambda m: " ".join(m[1] + part + m[3] for part in m[2].split(",")), text)


def named_elsewhere(folder: Path = RESULTS) -> set[str]:
    """The words (runs of letters, digits, `_` and `-`) of every tracked file outside bench/results, braces
    expanded, and of every run's header: a run is named where its file name's stem is one of them."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    texts = []
    for name in files:
        path = ROOT / name
        if name.startswith("bench/results/") or path.suffix not in {".md", ".py", ".json", ".toml"}:
            continue
        texts.append(_expand(path.read_text(errors="replace")))
    texts += [json.dumps({k: v for k, v in run.items() if k not in ("rows", "file", "stem")}) for run in runs(folder)]
    return set(re.findall(r"[\w-]+", "\n".join(texts)))


def superseded(folder: Path = RESULTS) -> list[str]:
    """Stems of runs that a later run of their benchmark replaces and that nothing outside bench/results names."""
    named = named_elsewhere(folder)
    by_benchmark: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs(folder):
        by_benchmark[run["benchmark"]].append(run)
    old = []
    for group in by_benchmark.values():
        group.sort(key=lambda r: (str(r.get("date")), r["file"]))
        for run in group[:-1]:
            # comparisons name an eval run by tome eval's --name, without the file's `eval-`
            if run["stem"] not in named and run["stem"].removeprefix("eval-") not in named:
                old.append(run["stem"])
    return old


def archive(folder: Path = RESULTS) -> list[str]:
    """git mv each superseded run and its companions into archive/; returns the files moved."""
    moved = []
    (folder / "archive").mkdir(exist_ok=True)
    for stem in superseded(folder):
        for path in sorted(folder.iterdir()):
            if path.name.startswith(stem) and COMPANION.fullmatch(path.name[len(stem) :]):
                subprocess.run(["git", "mv", str(path), str(folder / "archive" / path.name)], cwd=ROOT, check=True)
                moved.append(path.name)
    return moved


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archive", action="store_true", help="first git mv superseded runs into bench/results/archive/")
    args = p.parse_args(argv)
    if args.archive:
        for name in archive():
            print("archived", name)
    (RESULTS / "README.md").write_text(render())
    print(RESULTS / "README.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
