"""Every strategy the graph can run, by name. The harness and the router read this; adding one is one line."""

from __future__ import annotations

from compressors.gemfilter import GemFilter
from compressors.hard import HardCompression
from compressors.soft.gist_strategy import Gist
from compressors.soft.strategy import CompLLM
from engines.strategy import Strategy
from memory.memagent import MemAgent
from memory.rag import Rag
from workflows.full import FullContext
from workflows.mapreduce import MapReduce


class UnknownStrategyError(ValueError):
    pass


def _build() -> dict[str, Strategy]:
    strategies: list[Strategy] = [FullContext(), MapReduce(), Rag(), MemAgent(), GemFilter(), HardCompression()]
    strategies += [CompLLM(), Gist()]
    return {s.name: s for s in strategies}


STRATEGIES: dict[str, Strategy] = _build()

# The order where the policy has no measurement: cheaper and more faithful first.
PREFERENCE = ["full", "rag", "mapreduce", "memagent", "gemfilter", "hard"]
# Tasks that need the whole document (summaries, extraction, counting) read every segment before retrieving.
WHOLE_DOCUMENT_KINDS = ("summary", "extraction", "aggregation")
WHOLE_DOCUMENT_PREFERENCE = ["full", "mapreduce", "memagent", "rag", "gemfilter", "hard"]


def default_order(kind: str) -> list[str]:
    first = WHOLE_DOCUMENT_PREFERENCE if kind in WHOLE_DOCUMENT_KINDS else PREFERENCE
    return [*first, *(n for n in STRATEGIES if n not in first)]


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UnknownStrategyError(
            f"unknown strategy {name!r}; available: auto, {', '.join(sorted(STRATEGIES))}"
        ) from None
