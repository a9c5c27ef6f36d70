"""`gemfilter`: pick the context tokens an early layer attends to, then answer from those alone.

GemFilter (arXiv 2409.17422): run only the first r layers over context + question, score every context
token by the attention the last prompt position pays it (summed over heads, smoothed), keep the top k
in document order and run the full model on that short text. With SmolLM2 the last position alone
finds planted needles poorly; averaging the attention of every prompt position after the context
(the question and the answer cue) finds them far more often (bench/results/gemfilter-queries.md), so
that is the default (`queries="question"`); `queries="last"` is the paper's rule.
Documents longer than the model's context are scored chunk by chunk (each chunk with the question, in
the same prompt the answer uses); while the survivors of a round exceed k they are scored again as a new,
shorter document, so any length works at linear cost. The kept text is returned as evidence spans a
person can read.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from compressors.attention import num_layers, probe_attention
from compressors.layer_store import model_key, stored_layer
from engines.base import Engine, SupportsLayers, engine_home
from engines.prompting import answer_from_context, prompt_around
from engines.types import Answer, Cost, Document, Evidence, Progress, Task, no_progress


class NoLayerAccessError(TypeError):
    """The engine does not expose its model's layers (only the native engine does)."""


@dataclass(frozen=True)
class GemFilterConfig:
    layer: int | None = None  # layers to run (r); None: the calibrated value stored for the model
    top_k: int = 1024  # context tokens kept
    smoothing: int = 5  # width of the moving average over token scores (odd); 1 turns it off
    queries: str = "question"  # whose attention scores the context: "question" (all positions after it) or "last"
    chunk_tokens: int | None = None  # context tokens per scoring pass; None: all that fit beside the prompt
    home: Path | None = None  # where calibrations live; None: the engine's TOME_HOME


@dataclass
class Selection:
    text: str  # the kept spans in document order, one per line
    spans: list[Evidence]
    positions: list[int]  # kept token indices into the document's tokens
    document_tokens: int
    layer: int
    passes: int  # scoring forward passes (chunks over all rounds)
    tokens_scanned: int  # tokens those passes read, prompt included
    seconds: float


def layer_model(engine: Engine) -> Any:
    if not isinstance(engine, SupportsLayers):
        raise NoLayerAccessError(
            f"gemfilter needs the model's layers, which the {getattr(engine, 'name', type(engine).__name__)!r} "
            "engine does not expose; use the native engine (TOME_ENGINE=native)"
        )
    return engine.hf_model


def smooth(scores: torch.Tensor, width: int) -> torch.Tensor:
    if width <= 1:
        return scores
    return F.avg_pool1d(scores[None, None], kernel_size=width, stride=1, padding=width // 2, count_include_pad=False)[
        0, 0
    ][: scores.shape[0]]


def query_rows(total: int, after: int, queries: str) -> torch.Tensor:
    """Prompt positions whose attention scores the context: the last one, or all after the context."""
    if queries == "last":
        return torch.tensor([total - 1])
    if queries == "question":
        return torch.arange(total - after, total)
    raise ValueError(f"queries must be 'question' or 'last', got {queries!r}")


@torch.inference_mode()
def score_context(
    model: Any,
    before: Sequence[int],
    context: Sequence[int],
    after: Sequence[int],
    layer: int,
    smoothing: int,
    queries: str = "question",
) -> torch.Tensor:
    """Smoothed attention of the query rows over the context tokens, from layer `layer` (1-based)."""
    ids = torch.tensor([[*before, *context, *after]], device=model.device)
    rows = query_rows(ids.shape[1], len(after), queries)
    with probe_attention(model, [layer - 1], rows, stop=True) as scores:
        model.base_model(input_ids=ids, use_cache=False)
    return smooth(scores[layer - 1][len(before) : len(before) + len(context)], smoothing)


def resolve_layer(engine: Engine, config: GemFilterConfig) -> int:
    model = layer_model(engine)
    total = num_layers(model)
    layer = config.layer or stored_layer(model_key(model), total, config.home or engine_home(engine))
    if not 1 <= layer <= total:
        raise ValueError(f"gemfilter layer must be in 1..{total} for this model, got {layer}")
    return layer


def select(
    engine: Engine,
    document: str,
    task: Task,
    config: GemFilterConfig = GemFilterConfig(),
    progress: Progress = no_progress,
) -> Selection:
    """GemFilter's selection over a document of any length; see the module docstring."""
    start = time.perf_counter()
    model = layer_model(engine)
    layer = resolve_layer(engine, config)
    tokenizer = engine.hf_tokenizer  # type: ignore[attr-defined]
    encoded = tokenizer(document, add_special_tokens=False, return_offsets_mapping=True)
    doc_ids: list[int] = encoded["input_ids"]
    offsets: list[tuple[int, int]] = encoded["offset_mapping"]
    before, after = prompt_around(engine, task)
    room = engine.max_context - len(before) - len(after)
    chunk = min(config.chunk_tokens or room, room)
    if chunk <= config.top_k:
        raise ValueError(
            f"a scoring chunk holds {chunk} context tokens (context {engine.max_context} minus the prompt), "
            f"not more than top_k={config.top_k}: lower top_k"
        )
    positions = list(range(len(doc_ids)))
    passes = scanned = 0
    round_no = 0
    while len(positions) > config.top_k:
        round_no += 1
        pieces = [positions[i : i + chunk] for i in range(0, len(positions), chunk)]
        survivors: list[int] = []
        for n, piece in enumerate(pieces):
            progress(n, len(pieces), f"gemfilter round {round_no}: scoring chunk {n + 1}/{len(pieces)}")
            context = [doc_ids[p] for p in piece]
            scores = score_context(model, before, context, after, layer, config.smoothing, config.queries)
            top = scores.topk(min(config.top_k, len(piece))).indices.tolist()
            survivors.extend(piece[i] for i in top)
            passes += 1
            scanned += len(before) + len(piece) + len(after)
        progress(len(pieces), len(pieces), f"gemfilter round {round_no}: {len(survivors)} tokens kept")
        positions = sorted(survivors)
    spans = spans_of(positions, offsets, document)
    return Selection(
        text="\n".join(s.text for s in spans),
        spans=spans,
        positions=positions,
        document_tokens=len(doc_ids),
        layer=layer,
        passes=passes,
        tokens_scanned=scanned,
        seconds=time.perf_counter() - start,
    )


def spans_of(positions: Sequence[int], offsets: Sequence[tuple[int, int]], text: str) -> list[Evidence]:
    """Runs of consecutive kept tokens as character spans of the document."""
    spans: list[Evidence] = []
    run_start = prev = None
    for p in [*positions, None]:
        if p is not None and prev is not None and p == prev + 1:
            prev = p
            continue
        if run_start is not None and prev is not None:
            s, e = offsets[run_start][0], offsets[prev][1]
            spans.append(Evidence(s, e, text[s:e]))
        run_start = prev = p
    return spans


class GemFilter:
    name = "gemfilter"

    def __init__(self, config: GemFilterConfig = GemFilterConfig()) -> None:
        self.config = config

    def fits(self, document_tokens: int, tasks: Sequence[Task], engine: Engine) -> bool:
        return isinstance(engine, SupportsLayers)

    def run(self, document: Document, tasks: Sequence[Task], engine: Engine, progress: Progress) -> list[Answer]:
        answers = []
        for i, task in enumerate(tasks):
            # Selection depends on the question, so every task gets its own.
            chosen = select(engine, document.text, task, self.config, progress)
            scan = Cost(calls=chosen.passes, tokens_read=chosen.tokens_scanned, seconds=chosen.seconds)
            answer = answer_from_context(engine, chosen.text, [task], self.name, chosen.spans, scan)[0]
            answer.details.update(
                layer=chosen.layer,
                kept_tokens=len(chosen.positions),
                document_tokens=chosen.document_tokens,
                answer_prompt_tokens=answer.cost.tokens_read - chosen.tokens_scanned,
            )
            answers.append(answer)
            progress(i + 1, len(tasks), f"gemfilter: answered {i + 1}/{len(tasks)}")
        return answers
