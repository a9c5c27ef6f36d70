"""Every strategy the graph can run, by name, built from the settings. Adding a strategy is one line here.

Entry points (the CLI, the worker, the evals) call `build_strategies` once and pass the mapping down to the router
and the graph; nothing is built at import time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from compressors.gemfilter import GemFilter
from compressors.hard import HardCompression
from compressors.soft.gist_strategy import Gist
from compressors.soft.strategy import CompLLM, CompLLMConfig
from engines.settings import Settings
from engines.strategy import Strategy
from memory.memagent import MemAgent, MemAgentConfig
from memory.rag import Rag, RagConfig, read_tokens_for
from workflows.full import FullContext
from workflows.mapreduce import MapReduce

Strategies = Mapping[str, Strategy]


class UnknownStrategyError(ValueError):
    pass


def build_strategies(settings: Settings) -> dict[str, Strategy]:
    rag = RagConfig(embedder=settings.embedder, qdrant_url=settings.qdrant_url, qdrant_path=settings.home / "qdrant")
    read_tokens = settings.rag_read_tokens or read_tokens_for(settings.max_context)
    if read_tokens:
        rag = rag.reading(read_tokens)
    compllm = CompLLMConfig(cache_url=settings.compllm_cache_url, embedder=settings.embedder)
    strategies: list[Strategy] = [
        FullContext(),
        MapReduce(),
        Rag(rag),
        MemAgent(MemAgentConfig(adapter=settings.memagent_adapter, mode=settings.memagent_mode)),
        GemFilter(),
        HardCompression(),
        CompLLM(compllm),
        Gist(),
    ]
    return {s.name: s for s in strategies}


# The order where the policy has no measurement: cheaper and more faithful first.
PREFERENCE = ["full", "rag", "mapreduce", "memagent", "gemfilter", "hard"]
# Tasks that need the whole document (summaries, extraction, counting) read every segment before retrieving.
WHOLE_DOCUMENT_KINDS = ("summary", "extract", "aggregation")
WHOLE_DOCUMENT_PREFERENCE = ["full", "mapreduce", "memagent", "rag", "gemfilter", "hard"]


def default_order(kind: str, names: Iterable[str]) -> list[str]:
    first = WHOLE_DOCUMENT_PREFERENCE if kind in WHOLE_DOCUMENT_KINDS else PREFERENCE
    return [*first, *(n for n in names if n not in first)]


def get_strategy(strategies: Strategies, name: str) -> Strategy:
    try:
        return strategies[name]
    except KeyError:
        raise UnknownStrategyError(
            f"unknown strategy {name!r}; available: auto, {', '.join(sorted(strategies))}"
        ) from None
