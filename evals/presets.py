"""How many questions a run asks: `smoke` for tests (minutes), `full` for a baseline (about an hour a strategy)."""

from __future__ import annotations

from dataclasses import dataclass

from evals.tasks import LENGTHS, TASKS, WHOLE


@dataclass(frozen=True)
class Preset:
    name: str
    lengths: tuple[int, ...]
    samples: dict[int, int]  # questions per task at each length; fewer where one question costs more
    tasks: tuple[str, ...] = tuple(t for t in TASKS if t != "docqa")  # docqa is asked by name (--tasks docqa)


PRESETS: dict[str, Preset] = {
    # Every task at 2K, and 16K once to show what a strategy does beyond an 8K context.
    "smoke": Preset("smoke", (2048, 16384), {2048: 1, 16384: 1}),
    # Seeds 0..4 at 2K put every needle task at every depth of the grid once. A strategy that reads every
    # token (about 2.4M tokens over the grid, most of them at 32K-128K) takes about an hour on 2 cores.
    "full": Preset(
        "full",
        LENGTHS,
        {2048: 5, 4096: 3, 8192: 2, 16384: 2, 32768: 1, 65536: 1, 131072: 1},
    ),
    # Natural questions over real documents: whole documents and cuts of 8K and 32K tokens around the evidence;
    # every item of the split (--split) at each length unless --samples says fewer.
    "docqa": Preset("docqa", (WHOLE, 8192, 32768), {}, ("docqa",)),
    # What `tome router measure` asks to fit a policy for the model in use: every generated task and docqa's dev
    # questions at three lengths, a question or two each (minutes a strategy on a GPU; hours on a 2-core CPU).
    "policy": Preset(
        "policy", (4096, 16384, 32768), {4096: 2, 16384: 1, 32768: 1}, (*(t for t in TASKS if t != "docqa"), "docqa")
    ),
}
