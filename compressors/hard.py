"""`hard`: DSPC-style two-stage prompt compression to a token budget, then an answer from the result.

Coarse (any engine): rank sentences by TF-IDF similarity to the question (plus a little similarity to
the whole document, so instructions without content words still keep central sentences) and keep the
best in document order until the coarse budget is reached.
Fine (engines exposing their layers): score every remaining token by
- attention contribution: attention the question, placed after the text, pays it in the last layer;
- loss difference: its loss without the question minus its loss with the question in front
  (LongLLMLingua's contrastive perplexity: the question makes relevant tokens predictable);
- information: its loss given the question (LLMLingua's self-information: surprising tokens carry content);
- position: a U-shaped prior (models and readers use the ends of a text best);
and keep the best whole words. Digits, words of the question and structure markers (line breaks,
headings, bullets) are kept first. The budget is met on the engine's own count: within `tolerance`.
"""

from __future__ import annotations

import bisect
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer

from compressors.attention import num_layers, probe_attention
from engines.base import Engine
from engines.internals import can_select, selection_engine
from engines.prompting import answer_from_context, answer_overhead
from engines.segmenting import sentence_spans
from engines.types import Answer, Cost, Document, Evidence, Progress, Task, no_progress

_WORD = re.compile(r"\s*\S+")
_STRUCTURE = re.compile(r"^\s*(?:\n|#+|[-*\u2022|>]|\d+[.)])")


@dataclass(frozen=True)
class HardConfig:
    rate: float = 1 / 3  # kept share of the tokens (the strategy counts the prompt's too: HardCompression.budget)
    target_tokens: int | None = None  # an absolute budget instead of the rate
    tolerance: float = 0.05  # the result's token count lands within this share of the target
    coarse_slack: float = 1.5  # the coarse stage keeps this multiple of the target; the fine stage cuts the rest
    fine: bool = True  # token pruning on engines with layer access; False: coarse only everywhere
    fine_chunk: int = 2048  # tokens per fine scoring pass
    attention_weight: float = 0.35
    difference_weight: float = 0.3
    information_weight: float = 0.25
    position_weight: float = 0.1


@dataclass
class Compressed:
    text: str
    spans: list[Evidence]  # the sentences the coarse stage kept, as document spans
    target_tokens: int
    tokens: int  # the engine's count of `text`
    document_tokens: int
    stages: str  # "none" (already within budget), "coarse" or "coarse+fine"
    passes: int  # model forward passes of the fine stage
    tokens_scanned: int  # tokens those passes read
    seconds: float
    scoring: dict[str, str] = field(default_factory=dict)  # who scored the fine stage (Scorer.details); empty: none


def relevance(sentences: Sequence[str], question: str) -> list[float]:
    """TF-IDF cosine similarity to the question, plus a tenth of the similarity to the document's centroid."""
    vectorizer = TfidfVectorizer(stop_words="english", sublinear_tf=True)
    try:
        matrix = vectorizer.fit_transform([*sentences, question])
    except ValueError:  # nothing but stop words and punctuation
        return [0.0] * len(sentences)
    docs, query = matrix[:-1], matrix[-1]
    to_question = (docs @ query.T).toarray().ravel()
    centroid = docs.mean(axis=0)
    to_document = (docs @ centroid.T).A.ravel() / max(float(math.sqrt((centroid @ centroid.T).item())), 1e-9)
    return (to_question + 0.1 * to_document).tolist()


def coarse_select(
    engine: Engine, text: str, question: str, budget: int, exact: bool
) -> tuple[str, list[tuple[int, int]]]:
    """Most question-relevant sentences in document order, about `budget` tokens.

    exact=False stops at the first sentence that reaches the budget (the fine stage cuts the excess);
    exact=True cuts the last sentence so that the budget is not exceeded.
    """
    spans = sentence_spans(text)
    pieces = [text[s:e] for s, e in spans]
    sizes = [engine.count_tokens(p) for p in pieces]
    scores = relevance(pieces, question)
    order = sorted(range(len(spans)), key=lambda i: (-scores[i], i))
    chosen: dict[int, tuple[int, int]] = {}
    total = 0
    for i in order:
        if total >= budget:
            break
        s, e = spans[i]
        size = sizes[i]
        if exact and total + size > budget:
            ids = engine.tokenize(pieces[i])[: budget - total]
            e, size = s + len(engine.detokenize(ids)), len(ids)
            if e <= s:
                continue
        chosen[i] = (s, e)
        total += size
    kept = [chosen[i] for i in sorted(chosen)]
    return "".join(text[s:e] for s, e in kept), kept


def _percentile(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().float() / max(1, x.numel() - 1)


@torch.inference_mode()
def _token_losses(model: torch.nn.Module, ids: torch.Tensor, targets: slice) -> torch.Tensor:
    """Loss of each token in ids[targets] given everything before it (targets.start >= 1)."""
    hidden = model.base_model(input_ids=ids[None], use_cache=False).last_hidden_state[0]
    losses = []
    for s in range(targets.start, targets.stop, 512):  # the vocabulary is wide: project a block at a time
        e = min(s + 512, targets.stop)
        logits = model.lm_head(hidden[s - 1 : e - 1]).float()
        losses.append(F.cross_entropy(logits, ids[s:e], reduction="none"))
    return torch.cat(losses)


@torch.inference_mode()
def fine_scores(
    engine: Engine, token_ids: list[int], question: str, config: HardConfig
) -> tuple[torch.Tensor, int, int]:
    """A score per token (higher = keep), with the number of passes and tokens they read."""
    model = engine.hf_model  # type: ignore[attr-defined]
    device = model.device
    q = engine.tokenize(f"Question: {question}\n")
    last = num_layers(model) - 1
    n = len(token_ids)
    attention = torch.zeros(n)
    difference = torch.zeros(n)
    information = torch.zeros(n)
    passes = scanned = 0
    for start in range(0, n, config.fine_chunk):
        piece = token_ids[start : start + config.fine_chunk]
        m = len(piece)
        alone = torch.tensor(piece, device=device)
        framed = torch.tensor([*q, *piece, *q], device=device)
        rows = torch.arange(len(q) + m, framed.numel())
        with probe_attention(model, [last], rows) as seen:
            with_question = _token_losses(model, framed, slice(len(q), len(q) + m)).cpu()
        without = _token_losses(model, alone, slice(1, m)).cpu() if m > 1 else torch.zeros(0)
        without = torch.cat([with_question[:1], without])  # the first token has no context of its own
        attention[start : start + m] = seen[last][len(q) : len(q) + m].cpu()
        difference[start : start + m] = without - with_question
        information[start : start + m] = with_question
        passes += 2
        scanned += framed.numel() + m
    position = (torch.linspace(-1, 1, n).abs() if n > 1 else torch.ones(n)).float()
    score = (
        config.attention_weight * _percentile(attention)
        + config.difference_weight * _percentile(difference)
        + config.information_weight * _percentile(information)
        + config.position_weight * position
    )
    return score, passes, scanned


def _protected(word: str, question_terms: set[str]) -> bool:
    bare = re.sub(r"\W", "", word).lower()
    return any(c.isdigit() for c in word) or bool(_STRUCTURE.match(word)) or bare in question_terms


def fine_select(
    engine: Engine, text: str, question: str, target: int, config: HardConfig, reader: Engine
) -> tuple[str, int, int]:
    """Prune `text` to about `target` tokens, whole words at a time, scoring with `engine`'s layers. The budget is
    counted with `reader`, which may be another model with another tokenizer (a selector model scores)."""
    tokenizer = engine.hf_tokenizer  # type: ignore[attr-defined]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = encoded["input_ids"]
    token_scores, passes, scanned = fine_scores(engine, ids, question, config)
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    word_starts = [s for s, _ in words]
    word_tokens = [0] * len(words)
    word_score = torch.zeros(len(words))
    for t, (s, _) in enumerate(encoded["offset_mapping"]):
        w = max(0, bisect.bisect_right(word_starts, s) - 1)
        word_tokens[w] += 1
        word_score[w] += token_scores[t]
    terms = {w.lower() for w in re.findall(r"\w+", question)} - set(ENGLISH_STOP_WORDS)
    for w, (s, e) in enumerate(words):
        word_score[w] /= max(1, word_tokens[w])
        if _protected(text[s:e], terms):
            word_score[w] += 1.0  # above every unprotected word; the budget still holds
    order = word_score.argsort(descending=True).tolist()
    budget = target
    compressed = text
    for _ in range(4):  # re-tokenising joined words shifts the count a little: correct the budget and retry
        kept: list[int] = []
        total = 0
        for w in order:
            if total >= budget:
                break
            kept.append(w)
            total += word_tokens[w]
        compressed = "".join(text[words[w][0] : words[w][1]] for w in sorted(kept)).strip()
        actual = reader.count_tokens(compressed)
        if abs(actual - target) <= config.tolerance * target:
            break
        budget = max(1, round(budget * target / max(1, actual)))
    return compressed, passes, scanned


def target_for(document_tokens: int, config: HardConfig) -> int:
    if config.target_tokens is not None:
        return config.target_tokens
    if not 0 < config.rate <= 1:
        raise ValueError(f"rate must be in (0, 1], got {config.rate}")
    return max(1, round(document_tokens * config.rate))


def compress(
    engine: Engine,
    text: str,
    question: str,
    config: HardConfig = HardConfig(),
    progress: Progress = no_progress,
) -> Compressed:
    """Compress `text` for `question` to the configured budget (see the module docstring)."""
    start = time.perf_counter()
    document_tokens = engine.count_tokens(text)
    target = target_for(document_tokens, config)
    if target < 1:
        raise ValueError(f"the token budget must be positive, got {target}")
    if document_tokens <= target:
        spans = [Evidence(0, len(text), text)]
        return Compressed(text, spans, target, document_tokens, document_tokens, "none", 0, 0, 0.0)
    fine = config.fine and can_select(engine)  # engines.internals: a native scorer where `engine` hides its layers
    progress(0, 2, "hard: selecting sentences")
    coarse_budget = min(document_tokens, math.ceil(target * config.coarse_slack)) if fine else target
    coarse, kept = coarse_select(engine, text, question, coarse_budget, exact=not fine)
    spans = [Evidence(s, e, text[s:e]) for s, e in kept]
    passes = scanned = 0
    scoring: dict[str, str] = {}
    if fine:
        progress(1, 2, "hard: pruning tokens")
        scorer = selection_engine(engine)
        coarse, passes, scanned = fine_select(scorer.engine, coarse, question, target, config, engine)
        scoring = scorer.details(engine)
    progress(2, 2, "hard: compressed")
    stages = "coarse+fine" if fine else "coarse"
    tokens = engine.count_tokens(coarse)
    return Compressed(
        coarse, spans, target, tokens, document_tokens, stages, passes, scanned, time.perf_counter() - start, scoring
    )


class HardCompression:
    name = "hard"

    def __init__(self, config: HardConfig = HardConfig()) -> None:
        self.config = config

    def budget(self, document_tokens: int, task: Task, engine: Engine) -> int:
        """The compressed text's budget, capped so that it fits the engine beside the prompt.

        The rate applies to everything the answering model reads, the prompt's own tokens included: `rate=1/3`
        sends 3x fewer tokens than the uncompressed prompt, not 3x fewer document tokens plus the prompt."""
        overhead = answer_overhead(engine, task)
        if self.config.target_tokens is None:
            wanted = target_for(document_tokens + overhead, self.config) - overhead
        else:
            wanted = self.config.target_tokens
        return min(wanted, engine.max_context - overhead)

    def fits(self, document_tokens: int, tasks: Sequence[Task], engine: Engine) -> bool:
        return all(self.budget(document_tokens, t, engine) > 0 for t in tasks)

    def run(self, document: Document, tasks: Sequence[Task], engine: Engine, progress: Progress) -> list[Answer]:
        document_tokens = engine.count_tokens(document.text)
        answers = []
        for task in tasks:  # compression is question-aware, so every task gets its own
            config = replace(self.config, target_tokens=self.budget(document_tokens, task, engine))
            done = compress(engine, document.text, task.question, config, progress)
            cost = Cost(calls=done.passes, tokens_read=done.tokens_scanned, seconds=done.seconds)
            answer = answer_from_context(engine, done.text, [task], self.name, done.spans, cost)[0]
            answer.details.update(
                stages=done.stages,
                target_tokens=done.target_tokens,
                compressed_tokens=done.tokens,
                document_tokens=done.document_tokens,
                **done.scoring,
            )
            answers.append(answer)
        return answers
