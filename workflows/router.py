"""Choosing a strategy for a request, saying why, and lining up the fallbacks.

The choice is data: a policy of measured accuracy and cost per strategy x task kind x length (workflows/policy.py,
fitted from eval results by `tome router fit`). The request's budget filters; what fits and is best measured wins;
the rest, in rank order, are the fallbacks the verify step may use.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from engines.base import Engine
from engines.types import Task
from workflows import registry
from workflows.analysis import task_kind
from workflows.full import FullContext
from workflows.policy import Entry, Policy


class NoStrategyError(ValueError):
    """Nothing registered can run this request; the message carries the token counts."""


@dataclass(frozen=True)
class Budget:
    """Limits a request may set; the router only picks strategies measured within them."""

    max_tokens_read: int | None = None
    max_fallbacks: int = 1
    # A fallback is lined up only if it reads at most this many tokens (measured for this kind near this length;
    # unmeasured: the whole document). A retrieval answer found unsupported on a book is not worth a whole
    # reading of it: 100K tokens are many minutes for a CPU reader. None: no limit.
    max_fallback_tokens: int | None = 32768


@dataclass(frozen=True)
class Route:
    strategy: str
    reason: str
    kind: str
    fallbacks: list[str] = field(default_factory=list)


def request_kind(tasks: Sequence[Task]) -> str:
    kinds = Counter(task_kind(t) for t in tasks)
    return kinds.most_common(1)[0][0]


def choose_strategy(
    requested: str,
    document_tokens: int,
    tasks: Sequence[Task],
    engine: Engine,
    policy: Policy | None = None,
    budget: Budget | None = None,
    *,
    strategies: registry.Strategies,
) -> Route:
    budget = budget or Budget()
    kind = request_kind(tasks)
    needed = FullContext().needed_tokens(document_tokens, tasks, engine)
    context = engine.max_context
    sizes = (
        f"the document is {document_tokens} tokens ({needed} with the question and answer budget), context {context}"
    )
    if requested != "auto":
        if not registry.get_strategy(strategies, requested).fits(document_tokens, tasks, engine):
            raise NoStrategyError(f"strategy {requested!r} cannot run this request: {sizes}")
        return Route(requested, f"requested by the caller; {sizes}", kind)
    order = registry.default_order(kind, strategies)
    candidates = [n for n in order if strategies[n].fits(document_tokens, tasks, engine)]
    if not candidates:
        raise NoStrategyError(f"no strategy can run this request: {sizes}")
    policy = policy or Policy.for_model(engine.model_name)
    ranked = policy.rank(candidates, kind, document_tokens, budget.max_tokens_read)
    if not ranked:
        raise NoStrategyError(
            f"no strategy was measured within the budget of {budget.max_tokens_read} tokens read for this request; "
            f"{sizes}; candidates: {', '.join(candidates)}"
        )
    name, entry = ranked[0]
    which = (
        f"policy {policy.model} ({len(policy.entries)} measurements)"
        if policy.entries
        else f"no measured policy for {engine.model_name}: the default order"
    )
    limit = budget.max_fallback_tokens if budget.max_fallback_tokens is not None else float("inf")
    if entry is None:
        why = f"no measurements for a {kind} task at this length; first that fits in the default order"
    elif policy.estimate(name, kind, document_tokens) is None:
        why = (
            f"nothing measured within 2x of this length for {kind} tasks; best at the nearest shorter lengths: "
            f"{measured(entry)} at {entry.length} (n={entry.n})"
        )
    else:
        why = f"best measured for {kind} tasks near {entry.length} tokens: {measured(entry)} (n={entry.n})"
    affordable = [n for n, _ in ranked[1:] if fallback_reads(policy, n, kind, document_tokens) <= limit]
    fallbacks = affordable[: budget.max_fallbacks]
    if len(affordable) < len(ranked) - 1 and len(fallbacks) < budget.max_fallbacks:
        why += f"; no fallback reads more than {limit} tokens"
    return Route(name, f"{why}; {sizes}; {which}", kind, fallbacks)


def measured(entry: Entry) -> str:
    recall = "" if entry.evidence_recall is None else f", evidence recall {entry.evidence_recall:.2f}"
    return f"accuracy {entry.accuracy:.2f}{recall} reading {entry.tokens_read:.0f} tokens"


def fallback_reads(policy: Policy, strategy: str, kind: str, document_tokens: int) -> float:
    """Tokens a fallback is expected to read: measured near this length, else the whole document."""
    entry = policy.estimate(strategy, kind, document_tokens)
    return entry.tokens_read if entry is not None else document_tokens
