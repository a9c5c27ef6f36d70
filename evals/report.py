"""Results of a run: rows per (strategy, task, length) in DESIGN.md's format, a markdown table and PNG plots."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from statistics import mean
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

MEAN_FIELDS = ("calls", "tokens_read", "tokens_generated", "seconds", "model_seconds")


def _k(length: int) -> str:
    if length == 0:
        return "doc"  # docqa: the whole document at its natural length
    return f"{length // 1024}K" if length % 1024 == 0 else str(length)


def aggregate(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (strategy, task, length): accuracy and per-question costs over the questions that ran."""
    groups: dict[tuple[str, str, int, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:  # docqa's rows are per kind and split as well
        groups[(r["strategy"], r["task"], r["length"], r.get("kind") or "", r.get("split") or "")].append(r)
    rows = []
    task_order = list(dict.fromkeys(r["task"] for r in records))  # the plan's order (DESIGN.md's task list)
    kind_order = ["", "lookup", "multihop", "aggregation", "unanswerable"]
    for (strategy, task, length, kind, split), rs in sorted(
        groups.items(),
        key=lambda kv: (kv[0][0], task_order.index(kv[0][1]), kv[0][2], kind_order.index(kv[0][3]), kv[0][4]),
    ):
        ran = [r for r in rs if r["status"] == "ok"]
        statuses = {r["status"] for r in rs}
        row: dict[str, Any] = {
            "strategy": strategy,
            "task": task,
            "length": length,
            **({"kind": kind, "split": split} if kind else {}),
            "n": len(rs),
            "n_ran": len(ran),
            "accuracy": round(mean(r["accuracy"] for r in ran), 4) if ran else None,
            "status": statuses.pop() if len(statuses) == 1 else "mixed",
            "metric": "string_match_" + rs[0]["metric"],
            "document_tokens": round(mean(r["document_tokens"] for r in rs)),
        }
        for name in MEAN_FIELDS:
            row[name] = round(mean(r[name] for r in ran), 3) if ran else None
        recalls = [r["evidence_recall"] for r in ran if r.get("evidence_recall") is not None]  # older logs lack it
        row["evidence_recall"] = round(mean(recalls), 4) if recalls else None
        # `supported` is the product's own claim that its answer is backed by what it read: how often it makes the
        # claim, and how often a supported answer is right (its precision).
        claims = [r for r in ran if r.get("supported") is not None]
        backed = [r for r in claims if r["supported"]]
        row["supported"] = round(len(backed) / len(claims), 4) if claims else None
        row["supported_precision"] = round(mean(r["accuracy"] for r in backed), 4) if backed else None
        row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ran) if ran else None
        row["does_not_fit"] = sum(r["status"] == "does_not_fit" for r in rs)
        row["errors"] = sum(r["status"] == "error" for r in rs)
        rows.append(row)
    return rows


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return head + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, {cpu}"


def results(name: str, rows: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "benchmark": "eval",
        "title": f"eval-{name}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **meta,
        "rows": rows,
    }


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    return str(value)


def markdown(doc: dict[str, Any]) -> str:
    head = ["strategy", "task", "length", "n", "accuracy", "calls", "tokens_read", "seconds", "peak_rss_mb", "status"]
    if any(r.get("evidence_recall") is not None for r in doc["rows"]):
        head.insert(head.index("accuracy") + 1, "evidence_recall")
    if any(r.get("kind") for r in doc["rows"]):  # docqa
        head[head.index("length") + 1 : head.index("length") + 1] = ["kind", "split"]
        head[head.index("accuracy") + 1 : head.index("accuracy") + 1] = ["supported", "supported_precision"]
    lines = [
        f"# {doc['title']}",
        "",
        f"{doc['date']} · commit {doc['commit']} · {doc['machine']}",
        f"model {doc['model']} on the {doc['engine']} engine (context {doc['max_context']}) · preset {doc['preset']} · "
        f"{doc['questions_answered']} of {doc['questions_planned']} planned questions answered",
        "",
        "Accuracy is RULER's string-match (all for needles/vt/cwe/fwe/babilong, part for qa) over the questions "
        "that ran; calls, tokens_read and seconds are per question. `does_not_fit`: the strategy cannot take "
        "a document this long on this engine, so nothing ran (no truncation). `evidence_recall`, where a "
        "strategy returns evidence: the same score over the text the answer was read from (did the reference "
        "reach the answering model). docqa (length `doc`: the whole document) scores evidence recall as the share "
        "of the gold evidence spans that the text read covers (half a span's characters or more), and "
        "`supported_precision` is the accuracy of the answers the product called supported.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in doc["rows"]:
        cells = [_k(r["length"]) if h == "length" else _cell(r.get(h)) for h in head]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_accuracy(doc: dict[str, Any], path: Path) -> None:
    """Accuracy vs length, one panel per task plus the mean, one line per strategy; crosses mark does-not-fit."""
    rows = doc["rows"]
    tasks = sorted({r["task"] for r in rows}, key=[r["task"] for r in rows].index)
    strategies = sorted({r["strategy"] for r in rows})
    panels = [*tasks, "mean over tasks"]
    cols = min(5, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.9 * nrows), squeeze=False, sharey=True)
    lengths = sorted({r["length"] for r in rows})
    for ax, panel in zip(axes.flat, panels, strict=False):
        for i, strategy in enumerate(strategies):
            color = f"C{i}"
            if panel == "mean over tasks":
                by_len: dict[int, list[float]] = defaultdict(list)
                for r in rows:
                    if r["strategy"] == strategy and r["accuracy"] is not None:
                        by_len[r["length"]].append(r["accuracy"])
                # Only lengths where every task ran, so the mean compares like with like.
                pts = [(n, mean(v)) for n, v in sorted(by_len.items()) if len(v) == len(tasks)]
                dnf = [n for n in lengths if n not in by_len]
            else:
                mine = [r for r in rows if r["strategy"] == strategy and r["task"] == panel]
                pts = [(r["length"], r["accuracy"]) for r in mine if r["accuracy"] is not None]
                dnf = [r["length"] for r in mine if r["accuracy"] is None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", color=color, label=strategy)
            if dnf:
                ax.scatter(dnf, [-0.06] * len(dnf), marker="x", color=color, alpha=0.6)
        ax.set_title(panel, fontsize=10)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [_k(n) for n in lengths], fontsize=7)
        ax.set_ylim(-0.12, 1.05)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=8)
    title = f"{doc['title']}: accuracy vs length ({doc['model']}, {doc['engine']}); x at the bottom: does not fit"
    fig.suptitle(title, fontsize=10)
    fig.supxlabel("length (tokens)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_depth(records: Sequence[dict[str, Any]], strategy: str, path: Path, title: str) -> bool:
    """Length x depth heatmaps of one strategy, a panel per task whose questions have a needle depth."""
    mine = [r for r in records if r["strategy"] == strategy and r.get("depth") is not None]
    tasks = sorted({r["task"] for r in mine}, key=[r["task"] for r in mine].index)
    if not tasks:
        return False
    depths = sorted({r["depth"] for r in mine})
    lengths = sorted({r["length"] for r in mine})
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="lightgrey")
    cols = min(3, len(tasks))
    rows_n = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.2 * rows_n), squeeze=False, layout="constrained")
    for ax, task in zip(axes.flat, tasks, strict=False):
        grid = [[math.nan] * len(lengths) for _ in depths]
        notes = [[""] * len(lengths) for _ in depths]
        for di, d in enumerate(depths):
            for li, n in enumerate(lengths):
                cell = [r for r in mine if r["task"] == task and r["depth"] == d and r["length"] == n]
                ran = [r["accuracy"] for r in cell if r["status"] == "ok"]
                if ran:
                    grid[di][li] = mean(ran)
                    notes[di][li] = f"{mean(ran):.2f}\n({len(ran)})"
                elif cell:
                    notes[di][li] = "n/f" if cell[0]["status"] == "does_not_fit" else "err"
        image = ax.imshow(grid, cmap=cmap, vmin=0, vmax=1, aspect="auto")
        for di in range(len(depths)):
            for li in range(len(lengths)):
                ax.text(li, di, notes[di][li], ha="center", va="center", fontsize=6)
        ax.set_xticks(range(len(lengths)), [_k(n) for n in lengths], fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=7)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("length", fontsize=8)
        ax.set_ylabel("depth", fontsize=8)
    for ax in axes.flat[len(tasks) :]:
        ax.axis("off")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="accuracy")
    fig.suptitle(
        f"{title}: {strategy}\naccuracy by length and needle depth (questions per cell; n/f: does not fit)", fontsize=9
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def write(name: str, records: Sequence[dict[str, Any]], meta: dict[str, Any], out_dir: Path) -> list[Path]:
    """bench/results/eval-<name>.json, .md and the plots; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = results(name, aggregate(records), meta)
    base = out_dir / f"eval-{name}"
    paths = [base.with_suffix(".json"), base.with_suffix(".md")]
    paths[0].write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths[1].write_text(markdown(doc), encoding="utf-8")
    sized = [r for r in doc["rows"] if r["length"] and not r.get("kind")]  # docqa's rows are read in the table
    if sized:
        paths.append(out_dir / f"eval-{name}-accuracy.png")
        plot_accuracy({**doc, "rows": sized}, paths[-1])
    for strategy in sorted({r["strategy"] for r in records}):
        path = out_dir / f"eval-{name}-depth-{strategy}.png"
        if plot_depth(records, strategy, path, doc["title"]):
            paths.append(path)
    return paths
