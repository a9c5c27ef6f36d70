"""`gemfilter`: pick the context an early layer attends to, then answer from that alone.

GemFilter (arXiv 2409.17422): run only the first r layers over context + question, score the context by the
attention the question pays it, keep the best k tokens and run the full model on that short text. Here:

- Scoring rows: every prompt position after the context (`queries="question"`: the question and the answer cue);
  the paper's last position alone (`queries="last"`) finds planted facts far less often with a small model.
- Units: whole sentences (`unit="sentence"`), each scored by the mean of its `unit_top` best word tokens, taken best
  first while they fit in k. Early layers park much of their attention on line breaks and full stops whatever the
  question, so punctuation does not vote; whole sentences keep an identifier complete and stay readable, where the
  paper's single tokens (`unit="token"`) leave fragments.
- Contrast (`contrast=True`): the question's attention is scored relative to the same prompt without a question, so
  recency and punctuation cancel; one shared pass over the chunk serves both prompts (compressors/attention.py).
- Any length at linear cost: a long document is scored chunk by chunk, each chunk with the question in the prompt
  the answer uses; while the survivors exceed k they are laid out best last (`survivor_order="score"`) and scored
  again as a shorter document. In document order a survivor from the document's start would sit farthest from the
  question among the other chunks' winners.
- Reading: the kept spans are given best last (`order="best_last"`), next to the question, where a small model copies
  most reliably; they are the answer's evidence, and a copied word with a piece dropped is completed from them
  (engines.grounding.complete_fragments), as `rag` does.

The layer r matters most; it is calibrated per model at a scoring chunk's length (compressors/calibration.py).
Why each choice: compressors/README.md.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from compressors.attention import num_layers, probe_attention, suffix_attention
from compressors.layer_store import model_key, stored_layer
from engines.base import Engine, SupportsLayers, engine_home
from engines.grounding import complete_fragments
from engines.internals import can_select, selection_engine
from engines.prompting import answer_from_context, prompt_around
from engines.segmenting import sentence_spans
from engines.types import Answer, Cost, Document, Evidence, Progress, Task, TaskKind, no_progress


class NoLayerAccessError(TypeError):
    """The engine does not expose its model's layers (only the native engine does)."""


@dataclass(frozen=True)
class GemFilterConfig:
    layer: int | None = None  # layers to run (r); None: the calibrated value stored for the model
    top_k: int = 1024  # context tokens kept
    unit: str = "sentence"  # what is kept or dropped whole: "sentence" or "token" (the paper)
    unit_tokens: int = 128  # a longer sentence is cut into pieces of at most this many tokens
    unit_top: int = 3  # a sentence scores the mean of its best unit_top word tokens; 0: of all of them
    smoothing: int = 5  # unit="token": width of the moving average over token scores (odd); 1 turns it off
    queries: str = "question"  # whose attention scores the context: "question" (all positions after it) or "last"
    contrast: bool = True  # score relative to a prompt without the question (all rows after the context, both)
    order: str = "best_last"  # how the answering model reads the kept spans: "best_last" or "document"
    read_tokens: int | None = None  # the answering model reads only the best-scored spans that fit; None: all kept
    survivor_order: str = "score"  # how a round's survivors are laid out for the next: "score" or "document"
    chunk_tokens: int | None = None  # context tokens per scoring pass; None: all that fit beside the prompt
    home: Path | None = None  # where calibrations live; None: the engine's TOME_HOME

    def __post_init__(self) -> None:  # before any scoring pass, not after minutes of it
        if self.order not in ("document", "best_last"):
            raise ValueError(f"order must be 'document' or 'best_last', got {self.order!r}")
        if self.survivor_order not in ("score", "document"):
            raise ValueError(f"survivor_order must be 'score' or 'document', got {self.survivor_order!r}")


@dataclass
class Selection:
    text: str  # the kept spans in document order, one per line
    spans: list[Evidence]
    span_scores: list[float]  # each span's best unit score in the last round that scored it (0 if none did)
    span_tokens: list[int]
    positions: list[int]  # kept token indices into the document's tokens
    document_tokens: int
    layer: int
    rounds: int
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


def contrast_scores(
    model: Any, before: Sequence[int], context: Sequence[int], after: Sequence[int], neutral: Sequence[int], layer: int
) -> torch.Tensor:
    """The question's attention over the context relative to a neutral prompt's, from layer `layer` (1-based).

    Both endings share one pass over the context (compressors.attention.suffix_attention). What every prompt
    attends to whatever it asks (recent tokens, line breaks) cancels; what the question adds stands out. The
    ratio is damped by a tenth of the neutral mean so that near-zero baselines do not explode.
    """
    asked, plain = (
        r[layer - 1][len(before) : len(before) + len(context)]
        for r in suffix_attention(model, [*before, *context], [after, neutral], [layer - 1])
    )
    damp = 0.1 * plain.mean()
    return (asked + damp) / (plain + damp)


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
    neutral = prompt_around(engine, Task(""))[1] if config.contrast else []  # "Question: \nAnswer:"
    room = engine.max_context - len(before) - len(after)
    chunk = min(config.chunk_tokens or room, room)
    units = units_of(offsets, document, config.unit, config.unit_tokens)
    # Whole units need no moving average (their own mean is one), and their punctuation does not vote.
    by_token = config.unit == "token"
    smoothing = config.smoothing if by_token else 1
    votes = [by_token or any(ch.isalnum() for ch in document[s:e]) for s, e in offsets]
    longest = max((len(u) for u in units), default=0)
    if chunk < config.top_k + longest:
        raise ValueError(
            f"a scoring chunk holds {chunk} context tokens (context {engine.max_context} minus the prompt), "
            f"less than top_k={config.top_k} plus a whole unit ({longest} tokens): lower top_k"
        )
    passes = scanned = 0
    round_no = 0
    score_of: dict[int, float] = {}  # unit start -> its score in the last round that scored it
    while sum(len(u) for u in units) > config.top_k:
        round_no += 1
        pieces = pack(units, chunk)
        survivors: list[range] = []
        for n, piece in enumerate(pieces):
            progress(n, len(pieces), f"gemfilter round {round_no}: scoring chunk {n + 1}/{len(pieces)}")
            context = [doc_ids[p] for u in piece for p in u]
            if config.contrast:
                scores = smooth(contrast_scores(model, before, context, after, neutral, layer), smoothing)
            else:
                scores = score_context(model, before, context, after, layer, smoothing, config.queries)
            voting = torch.tensor([votes[p] for u in piece for p in u], device=scores.device)
            ranked = unit_scores([len(u) for u in piece], scores, voting, config.unit_top)
            kept = best_units(piece, ranked, config.top_k)
            survivors.extend(kept)
            score_of.update(zip((u.start for u in piece), ranked.tolist(), strict=True))
            passes += 1
            scanned += len(before) + len(context) + len(after)
        progress(len(pieces), len(pieces), f"gemfilter round {round_no}: {len(survivors)} units kept")
        if config.survivor_order == "score":  # a bag of sentences: the likeliest nearest the question
            units = sorted(survivors, key=lambda u: (score_of[u.start], u.start))
        else:
            units = sorted(survivors, key=lambda u: u.start)
    units = sorted(units, key=lambda u: u.start)
    positions = [p for u in units for p in u]
    unit_score = {p: score_of.get(u.start, 0.0) for u in units for p in u}
    runs = runs_of(positions)
    spans = [span_of(r, offsets, document) for r in runs]
    return Selection(
        text="\n".join(s.text for s in spans),
        spans=spans,
        span_scores=[max(unit_score[p] for p in r) for r in runs],
        span_tokens=[len(r) for r in runs],
        positions=positions,
        document_tokens=len(doc_ids),
        layer=layer,
        rounds=round_no,
        passes=passes,
        tokens_scanned=scanned,
        seconds=time.perf_counter() - start,
    )


def units_of(offsets: Sequence[tuple[int, int]], text: str, unit: str, most: int) -> list[range]:
    """The document's tokens grouped into the units selection keeps whole, in order and covering every token.

    A sentence longer than `most` tokens is cut into equal pieces: a chunk must hold several units, and a long
    unit scored by one token would spend the budget on its neighbours.
    """
    if unit == "token":
        return [range(i, i + 1) for i in range(len(offsets))]
    if unit != "sentence":
        raise ValueError(f"unit must be 'sentence' or 'token', got {unit!r}")
    starts = [s for s, _ in sentence_spans(text)]
    # A token belongs to the sentence holding its last character: a leading space or a trailing newline
    # stays with the word it is part of.
    owner = [bisect.bisect_right(starts, max(s, e - 1)) - 1 for s, e in offsets]
    units: list[range] = []
    first = 0
    for i in range(1, len(owner) + 1):
        if i < len(owner) and owner[i] == owner[first]:
            continue
        size = i - first
        parts = -(-size // most)
        units.extend(range(first + j * size // parts, first + (j + 1) * size // parts) for j in range(parts))
        first = i
    return units


def pack(units: Sequence[range], tokens: int) -> list[list[range]]:
    """Consecutive units in chunks of at most `tokens` tokens."""
    chunks: list[list[range]] = [[]]
    used = 0
    for u in units:
        if used + len(u) > tokens:
            chunks.append([])
            used = 0
        chunks[-1].append(u)
        used += len(u)
    return chunks


def unit_scores(sizes: Sequence[int], scores: torch.Tensor, votes: torch.Tensor, top: int) -> torch.Tensor:
    """Each unit's score: the mean of its `top` best voting token scores (0: of all of them); -inf without one.

    `scores` and `votes` cover the units' tokens in order, `sizes` tokens each.
    """
    lengths = torch.tensor(sizes, device=scores.device)
    owner = torch.repeat_interleave(torch.arange(len(sizes), device=scores.device), lengths)
    slot = torch.arange(len(owner), device=scores.device) - (lengths.cumsum(0) - lengths)[owner]
    grid = torch.full((len(sizes), max(sizes)), float("-inf"), device=scores.device)
    grid[owner, slot] = scores.float().where(votes, float("-inf"))
    best = grid.sort(dim=1, descending=True).values[:, : top or None]
    counted = best > float("-inf")
    mean = best.where(counted, 0.0).sum(dim=1) / counted.sum(dim=1).clamp(min=1)
    return mean.where(counted.any(dim=1), float("-inf")).cpu()


def best_units(units: Sequence[range], ranked: torch.Tensor, budget: int) -> list[range]:
    """Units best first by their score in `ranked`, each taken while it fits in `budget` tokens.

    With one-token units this is the top `budget` tokens.
    """
    kept: list[range] = []
    used = 0
    for i in ranked.argsort(descending=True, stable=True).tolist():
        if used + len(units[i]) <= budget:
            kept.append(units[i])
            used += len(units[i])
            if used == budget:
                break
    return kept


def runs_of(positions: Sequence[int]) -> list[list[int]]:
    """Kept token positions grouped into runs of consecutive ones."""
    runs: list[list[int]] = []
    for p in positions:
        if runs and p == runs[-1][-1] + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


def span_of(run: Sequence[int], offsets: Sequence[tuple[int, int]], text: str) -> Evidence:
    """A run of consecutive token positions as a character span of the document."""
    start, end = offsets[run[0]][0], offsets[run[-1]][1]
    return Evidence(start, end, text[start:end])


def reading(selection: Selection, order: str, tokens: int | None = None) -> str:
    """The kept spans as the answering model reads them, one per line.

    "document": in document order (the paper). "best_last": the best-scored span last, nearest the question;
    a small model copies from the text it read last far more reliably than from a span lost among 150 others.
    `tokens`: only the best-scored spans that fit in that many tokens are read (the best one always).
    """
    if order not in ("document", "best_last"):
        raise ValueError(f"order must be 'document' or 'best_last', got {order!r}")
    best_first = sorted(range(len(selection.spans)), key=lambda i: -selection.span_scores[i])  # stable
    chosen, used = [], 0
    for i in best_first:
        if tokens is None or not chosen or used + selection.span_tokens[i] <= tokens:
            chosen.append(i)
            used += selection.span_tokens[i]
    chosen.sort()
    if order == "best_last":
        chosen.sort(key=selection.span_scores.__getitem__)  # stable: ties stay in document order
    return "\n".join(selection.spans[i].text for i in chosen)


class GemFilter:
    name = "gemfilter"

    def __init__(self, config: GemFilterConfig = GemFilterConfig()) -> None:
        self.config = config

    def fits(self, document_tokens: int, tasks: Sequence[Task], engine: Engine) -> bool:
        return can_select(engine)

    def run(self, document: Document, tasks: Sequence[Task], engine: Engine, progress: Progress) -> list[Answer]:
        """Selects with a model's layers (the engine's own, a native engine over its weights where it hides them, as
        vLLM does, or the selector model: engines.internals.selection_engine) and answers with `engine`, the reader."""
        scorer = selection_engine(engine)
        answers = []
        for i, task in enumerate(tasks):
            # Selection depends on the question, so every task gets its own.
            chosen = select(scorer.engine, document.text, task, self.config, progress)
            scan = Cost(calls=chosen.passes, tokens_read=chosen.tokens_scanned, seconds=chosen.seconds)
            answer = answer_from_context(
                engine,
                reading(chosen, self.config.order, self.config.read_tokens),
                [task],
                self.name,
                chosen.spans,
                scan,
            )[0]
            completed: list[tuple[str, str]] = []
            if task.kind == TaskKind.QA:  # extractions are JSON the schema check reads as written
                answer.text, completed = complete_fragments(answer.text, chosen.text, task.question)
            answer.details.update(
                layer=chosen.layer,
                unit=self.config.unit,
                unit_top=self.config.unit_top,
                contrast=self.config.contrast,
                order=self.config.order,
                read_tokens=self.config.read_tokens,
                rounds=chosen.rounds,
                **scorer.details(engine),
                kept_tokens=len(chosen.positions),
                kept_spans=len(chosen.spans),
                document_tokens=chosen.document_tokens,
                answer_prompt_tokens=answer.cost.tokens_read - chosen.tokens_scanned,
                completed=completed,
            )
            answers.append(answer)
            progress(i + 1, len(tasks), f"gemfilter: answered {i + 1}/{len(tasks)}")
        return answers
