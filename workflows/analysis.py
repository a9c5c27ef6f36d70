"""Cheap features of a request that the router reads: sizes, task kind, what is already prepared."""

from __future__ import annotations

import re
from dataclasses import dataclass

from engines.types import Task, TaskKind

# Harness task names -> the kind the router reads from their questions (`task_kind`); `tome router fit` files eval
# rows under it, so that a policy's rows were measured on questions the router reads as that kind. ("What are all
# the special magic numbers for X?" asks for every occurrence: the router reads aggregation.)
KIND_OF_EVAL_TASK = {
    "niah_single": "lookup",
    "niah_multikey": "lookup",
    "niah_multivalue": "aggregation",
    "niah_multiquery": "lookup",
    "qa": "lookup",
    "vt": "multihop",
    "babilong": "multihop",
    "cwe": "aggregation",
    "fwe": "aggregation",
}
KINDS = ("lookup", "multihop", "aggregation", "summary", "extract")  # summary and extract: TaskKind's names

# Whole words only, and not inside a hyphenated name: "quietest-relative" is a key, not a question of relations.
# Each word is written out with its own endings: a bare stem would find "count" in "country" and "every" in
# "everything". A list asked in plain words names its items in the plural ("Which poets do they cite?", "What
# names did Huck give?", "the three men from Wapping").
_AGGREGATION = re.compile(
    r"(?<![-\w])(most (common|frequent|often|used)|how many (times|of)|list (all|every)|all (the|of the)|every|each|"
    r"counts?|counted|counting|frequen\w*|recurr\w*|throughout|anywhere|by (name|number)|"
    r"(which|what) (other )?(\w+ ){0,2}(\w+[^s\W']s) (are|were|do|does|did|have|has)|"
    r"(two|three|four|five|six|seven|eight|nine|ten) (\w+ )?(\w+[^s\W']s))(?![-\w])",
    re.I,
)
# "Where is X?" in the present tense asks for X's latest place in a story that moves it (bAbI's tasks 1-3): the
# answer is the last of several facts, and which facts matter may only show later (who carried it, where they
# went), so it reads as multi-hop. A read of every segment handles a plain lookup too, only at more tokens.
_MULTIHOP = re.compile(
    r"(?<![-\w])(variables?|assigned|chain|which .* (same|also)|where (is|are)\b|where (was|were) .* before|"
    r"where (was|were) the .* (now|then)|who (has|holds|is holding|carries)|both|combin|relat)\w*(?![-\w])",
    re.I,
)
# A bare "before"/"after" is not one: "who was Walden Pond named after?", "the school he was sent to after the
# grammar school" are lookups, and reading a whole book in segments for them took many minutes on a CPU reader
# (nine of docqa's questions read as multi-hop that way). Only bAbI's "where was X before Y" keeps it.
# People's multi-hop phrasing ("the woman who later helped Darcy") is left to read as a lookup: the policy's
# multi-hop rows are synthetic chains, where memagent wins, and on docqa memagent keeps none of the evidence that
# rag's second round reaches (bench/results/docqa-kinds-*.md, eval-docqa-dev-8k-memagent-rag.md).


def task_kind(task: Task) -> str:
    if task.kind in (TaskKind.SUMMARY, TaskKind.EXTRACT):
        return TaskKind(task.kind).value  # a Task may carry the plain string
    if _AGGREGATION.search(task.question):
        return "aggregation"
    if _MULTIHOP.search(task.question):
        return "multihop"
    return "lookup"


@dataclass(frozen=True)
class Features:
    document_tokens: int
    context: int
    kind: str
    fits_whole: bool
    indexed: bool = False

    def describe(self) -> str:
        prepared = ", already indexed" if self.indexed else ""
        return f"{self.kind} task, {self.document_tokens} document tokens, context {self.context}{prepared}"
