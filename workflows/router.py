"""Choosing a strategy for a request, and saying why."""

from __future__ import annotations

from collections.abc import Sequence

from engines.base import Engine
from engines.types import Task
from workflows.full import FullContext
from workflows.registry import PREFERENCE, STRATEGIES, get_strategy


class NoStrategyError(ValueError):
    """Nothing registered can run this request; the message carries the token counts."""


def choose_strategy(requested: str, document_tokens: int, tasks: Sequence[Task], engine: Engine) -> tuple[str, str]:
    full = FullContext()
    needed = full.needed_tokens(document_tokens, tasks, engine)
    context = engine.max_context
    if requested != "auto":
        strategy = get_strategy(requested)
        if not strategy.fits(document_tokens, tasks, engine):
            raise NoStrategyError(
                f"strategy {requested!r} cannot run this request: the document is {document_tokens} tokens "
                f"({needed} with the question and answer budget) and the engine's context is {context} tokens"
            )
        return requested, f"requested by the caller ({document_tokens} document tokens, context {context})"
    if needed <= context:
        return "full", f"the whole document fits: {needed} of {context} tokens with the question and answer"
    for name in PREFERENCE:
        if name != "full" and STRATEGIES[name].fits(document_tokens, tasks, engine):
            return name, f"the document needs {needed} tokens, more than the {context}-token context; {name} fits"
    raise NoStrategyError(
        f"the document needs {needed} tokens with the question and answer budget but the engine's context is "
        f"{context} tokens, and no strategy for longer documents is available"
    )
