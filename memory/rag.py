"""`rag`: retrieve what a question needs from a document longer than the context, then answer from it.

Passages of at most 128 embedder word pieces, cut at sentence boundaries, score their cosine to the question plus
a weighted lexical score (engines/lexical.py: stemmed BM25 by default), so paraphrased words and rare names both
count. By default only the best lexical passages get a dense score (`dense_candidates`), embedded when a question
first needs them; with `dense_candidates=None` the whole document is embedded and indexed once (Qdrant) and searched.
What rag derives from a document (passages, BM25 index, embeddings, tokens per character) is kept per process
(`prepared`), so a later question pays only for itself.

The model reads windows: about 256 tokens around each of the best passages, joined where they meet and put back in
document order. A second round asks again with the rarest words of the sentence that best matched the question (the
name of what the question only describes), and adds windows around what that finds: a multi-hop question's second
fact rarely shares the question's words.

A clear match (`clear_margin`), and every question with `windows=0`, is read as units instead (LongRAG-style): a few
thousand tokens of consecutive passages scored by their best passage, a clear match read alone and cut to
`focus_tokens` around it, the question's rare keys covered (`cover_df`), and, where the memory agent's trained
extractor is available (`notes`), read through it: it copies the sentences that answer and the answer comes from
those (its evidence).

The answer is then checked against what was read: a small model copying a long rare word often drops a piece
of it (`solvent-musing` for `insolvent-musing`), so an answer word that is one word of the read text with one
piece left out is completed to that word (engines.grounding.complete_fragments).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Engine
from engines.config import DEFAULT_EMBEDDER, DEFAULT_HOME
from engines.embedder import Embedder, get_embedder
from engines.grounding import complete_fragments
from engines.lexical import BM25Scorer, LexicalScorer, words
from engines.prompting import answer_each, answer_overhead
from engines.types import Answer, Cost, Document, Evidence, Progress, Task, TaskKind, no_progress
from memory.index import IndexSpec, PassageIndex, open_client
from memory.memagent import MemAgent, MemAgentConfig
from memory.spans import Span, pack, split_sentences


@dataclass(frozen=True)
class RagConfig:
    # Filled from Settings by workflows.registry.build_strategies (embedder, qdrant_url, home/qdrant).
    embedder: str = DEFAULT_EMBEDDER
    qdrant_url: str | None = None
    qdrant_path: Path = DEFAULT_HOME / "qdrant"  # local mode, used when there is no URL
    passage_tokens: int = 128  # embedder word pieces per passage: a short fact dominates a short passage
    unit_tokens: int = 1024  # engine tokens per retrieval unit
    # Retrieved tokens read per question; None: all the engine's context. SmolLM2-135M finds a fact in 1-4K
    # tokens but not in 7K (bench/results/memory_needles_h100.md), so the default reads three units.
    read_tokens: int | None = 3072
    search_passages: int = 64  # passages fetched per question by each score; units are scored from these
    # A passage scores cosine + lexical_weight * its lexical score in [0, 1] (engines/lexical.py): a rare key the
    # embedding blurs still lifts its passage clear of the rest, and a paraphrased question still shares stems with
    # its evidence. 0: dense only. The lexical score: "bm25" (BM25Scorer: stemmed Okapi BM25, normalised to the
    # question's best passage) or "coverage" (LexicalScorer: the IDF-weighted share of the question's words held).
    # bm25 at weight 1 reached more of docqa's dev evidence than coverage at 0.3 (bench/results/docqa-retrieval-dev*).
    lexical_weight: float = 1.0
    lexical: str = "bm25"
    # A unit is read only if its score is within this (cosine) of the best unit's; None: fill the read budget.
    focus_margin: float | None = 0.1
    # A unit read alone is cut to about this many tokens of passages around its best one (0: the whole unit): the
    # small model copies a rare value more faithfully from a few hundred tokens than from a thousand. 256 scored
    # best of 256/384/512 on dev seeds at 128K (bench/results/rag-hybrid-niah-128k-dev.md).
    focus_tokens: int = 256
    margin_tokens: int = 64
    # A question naming several rare things (words held by at most `cover_df` passages, e.g. four keys) that no
    # chosen unit holds gets, for each such word still missing, the window of `focus_tokens` around the best
    # passage that holds it, while the budget lasts: the best units alone hold one or two keys, and the rest of
    # the budget went to units near them in score, not to the other keys. 0: off.
    cover_df: int = 2
    # Read the retrieved units (not windows) through the memory agent's trained extractor (memory/memagent.py)
    # when its adapter is available: it copies the sentences that answer, and the answer comes from those alone.
    # SmolLM2-135M answers more often from a few copied sentences than from the text around them
    # (bench/results/eval-rag-notes-qa-8k.md vs eval-rag-notes-qa-8k-old.md, the same questions). If it keeps
    # nothing, the model reads the text itself.
    notes: bool = True
    # Read windows of about `window_tokens` around the `windows` best passages instead of whole units (0: units,
    # chosen by the unit fields above). People's questions rarely have one clear match: eight windows of 256 tokens
    # hold more of docqa's dev evidence than three 1K units, in fewer tokens, and a question whose facts sit in
    # several places gets a window at each.
    windows: int = 8
    window_tokens: int = 256
    # Windows added by a second round (0: none), asked with the question and the `second_round_terms` rarest words
    # of the sentence of the first round's best passage that shares most words with the question (a multi-hop
    # question describes what the first fact names).
    second_round: int = 2
    second_round_terms: int = 4
    # With `windows`, a question whose best passage scores more than this above the next (a clear match) is read
    # the unit way instead: its best unit, focused or through the extractor. A templated question naming a rare key
    # has one, and the small reader copies its value from that far more often than from eight windows; people's
    # questions rarely have one (0.6: every niah_single and 6 of 8 niah_multikey questions at 32K, about one docqa
    # dev question in six). None: windows for every question.
    clear_margin: float | None = 0.6
    # Dense scores for the `dense_candidates` best lexical passages only, embedded when a question first needs them
    # and kept per process (None: the whole document is embedded and indexed before the first question). Needs a
    # lexical score. A 100K-token book is ~900 passages: embedding them all is minutes on one CPU thread, the
    # candidates of one question seconds, and the dense score only reorders what BM25 found.
    dense_candidates: int | None = 32
    # Of the windows found, read only the `sentences` best sentences (cosine + BM25 over the windows' sentences),
    # each with `sentence_context` neighbours on each side, in document order (0: the whole windows). A small
    # reader copies an answer out of a few hundred tokens far more often than out of two thousand.
    sentences: int = 0
    sentence_context: int = 1
    min_context_tokens: int = 256  # below this the question leaves no room for retrieved text

    def reading(self, tokens: int) -> RagConfig:
        """This config reading about `tokens` retrieved tokens a question: as many windows as fill them, from three
        lexical candidates a window. The defaults read ~2K tokens, what the 135M reader copies from best; a reader
        with more context reads more of the evidence (docqa dev, bench/results/docqa-retrieval-dev-budget.md:
        lookups 0.86 at 1.8K tokens, 0.94 at 4.3K; multi-hop with both facts 0.53 and 0.72)."""
        windows = max(self.windows, tokens // self.window_tokens)
        candidates = None if self.dense_candidates is None else max(self.dense_candidates, 3 * windows)
        return replace(self, read_tokens=tokens, windows=windows, dense_candidates=candidates)


def read_tokens_for(max_context: int) -> int | None:
    """The retrieved tokens rag reads by default with an engine of this context: a quarter of it, up to 8K (recall
    was measured to ~7.4K and had stopped rising on lookups), where that is more than the defaults read (SmolLM2's
    8K context keeps them); None: the defaults."""
    tokens = min(max_context // 4, 8192)
    return tokens if tokens > RagConfig.windows * RagConfig.window_tokens else None


# rag before docqa, tuned on the needle tasks: units for every question, coverage at weight 0.3, the whole document
# embedded and indexed first (the baseline of bench/docqa_*.py).
UNITS = {
    "windows": 0,
    "second_round": 0,
    "lexical": "coverage",
    "lexical_weight": 0.3,
    "dense_candidates": None,
    "clear_margin": None,
}


@dataclass(frozen=True)
class Retrieved:
    units: list[Span]  # what the model reads, in document order
    scores: list[float]  # each unit's best passage score
    ranked: list[tuple[Span, float]]  # the best scoring units, read or not, best first (what a trace shows)
    index: str  # "built", "reused" or "rebuilt (why)"
    passages: int
    windows: bool = False  # read as windows (the model reads them itself), else as units


class RagInputError(ValueError):
    """The request cannot be answered this way (empty document, question too long for the budget)."""


def passages(text: str, embedder: Embedder, tokens: int) -> list[Span]:
    """Consecutive sentence-aligned spans of at most `tokens` word pieces (and never past the embedder's window)."""
    sentences = split_sentences(text)
    sizes = embedder.model.tokenizer([text[s:e] for s, e in sentences], add_special_tokens=False)["input_ids"]
    size_of = {span: len(ids) for span, ids in zip(sentences, sizes, strict=True)}
    return pack(sentences, lambda s: size_of[s], min(tokens, embedder.max_tokens))


class Prepared:
    """What rag derives from one document once and reuses for every later question in this process: its passages,
    the engine tokens per character, and the lexical scorers. (A 100K-token book takes seconds to cut into
    sentences, tokenize and index lexically; a second question should not pay that again.)"""

    def __init__(self, text: str, spans: list[Span]) -> None:
        self.text = text
        self.spans = spans
        self._per_char: dict[str, float] = {}
        self._lexical: dict[str, LexicalScorer | BM25Scorer] = {}
        self._vectors: dict[tuple[str, Span], np.ndarray] = {}  # (embedder, span) -> its embedding

    def embedded(self, spans: Sequence[Span], embedder: Embedder) -> np.ndarray:
        """The embeddings of these spans of the text (passages, sentences), in the order asked; those not yet
        embedded are embedded now and kept."""
        missing = [x for x in dict.fromkeys(spans) if (embedder.name, x) not in self._vectors]
        if missing:
            got = embedder.embed([self.text[s:e] for s, e in missing])
            self._vectors.update(((embedder.name, x), v) for x, v in zip(missing, got, strict=True))
        vectors = [self._vectors[embedder.name, x] for x in spans]
        return np.asarray(vectors, dtype=np.float32).reshape(len(spans), embedder.dim)

    def per_char(self, engine: Engine) -> float:
        if engine.model_name not in self._per_char:
            self._per_char[engine.model_name] = engine.count_tokens(self.text) / len(self.text)
        return self._per_char[engine.model_name]

    def lexical(self, kind: str) -> LexicalScorer | BM25Scorer:
        if kind not in self._lexical:
            texts = [self.text[s:e] for s, e in self.spans]
            if kind == "coverage":
                self._lexical[kind] = LexicalScorer(texts)
            elif kind == "bm25":
                self._lexical[kind] = BM25Scorer(texts)
            else:
                raise ValueError(f"unknown lexical score {kind!r}: coverage or bm25")
        return self._lexical[kind]


PREPARED_DOCUMENTS = 8  # documents whose preparation this process keeps (least recently used goes first)
_prepared: OrderedDict[tuple[str, str, int], Prepared] = OrderedDict()


def prepared(document: Document, embedder: Embedder, passage_tokens: int) -> Prepared:
    key = (document.content_hash, embedder.name, passage_tokens)
    if key in _prepared:
        _prepared.move_to_end(key)
    else:
        _prepared[key] = Prepared(document.text, passages(document.text, embedder, passage_tokens))
        while len(_prepared) > PREPARED_DOCUMENTS:
            _prepared.popitem(last=False)
    return _prepared[key]


def window(spans: Sequence[Span], center: int, unit: Span, tokens: int, per_char: float) -> Span:
    """Passage `center` grown by its neighbours inside `unit`, alternately before and after, to about `tokens`."""
    size = lambda i: (spans[i][1] - spans[i][0]) * per_char  # noqa: E731
    lo = hi = center
    used = size(center)
    grew = True
    while grew:
        grew = False
        for i in (lo - 1, hi + 1):
            if 0 <= i < len(spans) and unit[0] <= spans[i][0] and spans[i][1] <= unit[1] and used + size(i) <= tokens:
                lo, hi, used, grew = min(lo, i), max(hi, i), used + size(i), True
    return spans[lo][0], spans[hi][1]


def terms_within(read: Sequence[Span], spans: Sequence[Span], lexical: LexicalScorer | BM25Scorer) -> set[str]:
    """The words of every passage that lies inside one of the `read` spans."""
    inside = (p for p, (s, e) in enumerate(spans) if any(a <= s and e <= b for a, b in read))
    return set().union(*(lexical.terms[p] for p in inside))


def owning_units(spans: Sequence[Span], units: Sequence[Span]) -> list[int]:
    """The index of the unit holding each passage (both in document order)."""
    out, u = [], 0
    for s, _ in spans:
        while s >= units[u][1]:
            u += 1
        out.append(u)
    return out


def merged(spans: Sequence[Span]) -> list[Span]:
    """Spans in document order, overlapping ones joined (so no text is read twice)."""
    out: list[Span] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


class Rag:
    name = "rag"

    def __init__(self, config: RagConfig | None = None) -> None:
        self.config = config or RagConfig()

    def context_budget(self, tasks: Sequence[Task], engine: Engine) -> int:
        room = engine.max_context - max(answer_overhead(engine, t) for t in tasks) - self.config.margin_tokens
        return min(room, self.config.read_tokens or room)

    def fits(self, document_tokens: int, tasks: Sequence[Task], engine: Engine) -> bool:
        # Retrieval answers questions and extractions; a summary needs the whole text, not its best matches.
        return (
            document_tokens > 0
            and all(t.kind != TaskKind.SUMMARY for t in tasks)
            and self.context_budget(tasks, engine) >= self.config.min_context_tokens
        )

    def index(self, document: Document, embedder: Embedder, progress: Progress) -> tuple[PassageIndex, list[Span], str]:
        """The document's passage index, built now if missing or built by another embedder."""
        c = self.config
        size = min(c.passage_tokens, embedder.max_tokens)
        spans = prepared(document, embedder, size).spans
        url = c.qdrant_url or None
        client = open_client(None if url else c.qdrant_path, url)
        index = PassageIndex(client, document.content_hash, IndexSpec(embedder.name, embedder.dim, size))
        status = index.status()
        if status == "ready":
            return index, spans, "reused"
        progress(0, 2, f"indexing {len(spans)} passages")
        vectors = embedder.embed([document.text[s:e] for s, e in spans])
        index.build(spans, vectors)
        return index, spans, "built" if status == "missing" else f"rebuilt ({status})"

    def _check(self, document: Document, tasks: Sequence[Task], engine: Engine) -> int:
        c = self.config
        if not tasks:
            raise RagInputError("rag needs at least one task")
        if not document.text.strip():
            raise RagInputError("the document is empty: there is nothing to retrieve from")
        budget = self.context_budget(tasks, engine)
        if budget < c.min_context_tokens:
            longest = max(engine.count_tokens(t.question) for t in tasks)
            raise RagInputError(
                f"the question ({longest} tokens) leaves {max(budget, 0)} tokens for retrieved text in the engine's "
                f"{engine.max_context}-token context; at least {c.min_context_tokens} are needed: shorten the question"
            )
        return budget

    def retrieve(
        self, document: Document, tasks: Sequence[Task], engine: Engine, progress: Progress, focus: bool = True
    ) -> list[Retrieved]:
        """Per task: the units to read (document order), their scores, and how the index was obtained.

        focus: a unit read alone is cut to `focus_tokens` around its best passage (for the model reading it
        directly; the extractor reads whole units, as it reads a memagent segment)."""
        c = self.config
        budget = self._check(document, tasks, engine)
        embedder = get_embedder(c.embedder)
        ready = prepared(document, embedder, min(c.passage_tokens, embedder.max_tokens))
        if c.dense_candidates is None:
            index, spans, built = self.index(document, embedder, progress)
            dense: PassageIndex | Prepared = index
        else:
            if not c.lexical_weight:
                raise ValueError("dense_candidates needs a lexical score (lexical_weight > 0)")
            spans, dense, built = ready.spans, ready, "none (dense scores for the lexical candidates)"
        progress(1, 2, f"retrieving ({built} index)")
        text = document.text
        per_char = ready.per_char(engine)
        units = pack(spans, lambda s: int((s[1] - s[0]) * per_char) + 1, min(c.unit_tokens, budget))
        unit_of = owning_units(spans, units)
        lexical = ready.lexical(c.lexical) if c.lexical_weight else None
        retrieved = []
        for q, task in zip(embedder.embed([t.question for t in tasks]), tasks, strict=True):
            passage_scores = self.passage_scores(q, task.question, dense, lexical, embedder, len(spans))
            top = sorted(passage_scores.values(), reverse=True)[:2]
            clear = c.clear_margin is not None and (len(top) == 1 or top[0] - top[1] > c.clear_margin)
            if c.windows and not clear:  # short windows around the best passages, not whole units
                read = self.best_windows(passage_scores, spans, len(text), per_char, budget)
                if c.second_round and lexical is not None:
                    room = budget - sum(int((e - s) * per_char) + 2 for s, e in read)
                    again = self.second_round(task.question, passage_scores, read, ready, dense, lexical, embedder)
                    read = merged(read + self.best_windows(again, spans, len(text), per_char, room, c.second_round))
                if c.sentences:
                    read = self.best_sentences(task.question, q, read, ready, embedder)
                top = sorted(passage_scores.values(), reverse=True)[: len(read)]
                retrieved.append(Retrieved(read, [round(x, 4) for x in top], [], built, len(spans), windows=True))
                continue
            scores: dict[int, float] = {}  # a unit scores as its best passage
            best_passage: dict[int, int] = {}
            for pid, score in passage_scores.items():
                if score > scores.get(unit_of[pid], -1.0):
                    scores[unit_of[pid]], best_passage[unit_of[pid]] = score, pid
            ranked = sorted(scores, key=scores.__getitem__, reverse=True)
            floor = -1.0 if c.focus_margin is None else scores[ranked[0]] - c.focus_margin
            chosen: list[int] = []
            used = 0
            for unit in ranked:
                if scores[unit] < floor:
                    break
                n = engine.count_tokens(text[units[unit][0] : units[unit][1]]) + 2
                if used + n <= budget:
                    chosen.append(unit)
                    used += n
            read = [units[u] for u in sorted(chosen)]  # document order: the model reads the units as the text runs
            if focus and len(chosen) == 1 and c.focus_tokens:
                read = [window(spans, best_passage[chosen[0]], units[chosen[0]], c.focus_tokens, per_char)]
            if lexical is not None and c.cover_df:
                room = budget - sum(int((e - s) * per_char) + 2 for s, e in read)
                added = self.cover(task.question, read, spans, unit_of, units, lexical, room, per_char)
                read = merged(read + added)
            retrieved.append(
                Retrieved(
                    read,
                    [round(scores[u], 4) for u in sorted(chosen)],
                    [(units[u], round(scores[u], 4)) for u in ranked[:8]],
                    built,
                    len(spans),
                )
            )
        return retrieved

    def second_round(
        self,
        question: str,
        passage_scores: dict[int, float],
        read: Sequence[Span],
        ready: Prepared,
        dense: PassageIndex | Prepared,
        lexical: LexicalScorer | BM25Scorer,
        embedder: Embedder,
    ) -> dict[int, float]:
        """Passage scores outside `read` for the question asked again with the rarest words of the sentence of the
        best passage that shares most words with it. What the first round found names what the question only
        describes ("the woman who later helped Darcy"): asked with that name, the passage of the other fact ranks."""
        text, spans = ready.text, ready.spans
        first = max(passage_scores, key=passage_scores.__getitem__)
        asked = words(question)
        said = max(split_sentences(text, *spans[first]), key=lambda x: len(words(text[x[0] : x[1]]) & asked))
        found = sorted(words(text[said[0] : said[1]]) - asked, key=lambda t: (lexical.df[t], t))
        again = " ".join([question, *found[: self.config.second_round_terms]])
        scores = self.passage_scores(embedder.embed([again])[0], again, dense, lexical, embedder, len(spans))
        return {p: x for p, x in scores.items() if not any(a <= spans[p][0] < b for a, b in read)}

    def passage_scores(
        self,
        q: Any,
        question: str,
        dense: PassageIndex | Prepared,
        lexical: LexicalScorer | BM25Scorer | None,
        embedder: Embedder,
        n: int,
    ) -> dict[int, float]:
        """Cosine to the question for the best dense and the best lexical matches, plus the weighted lexical score.
        With `dense` a Prepared document (dense_candidates mode), only the best lexical matches are scored."""
        c = self.config
        if isinstance(dense, Prepared):
            assert lexical is not None and c.dense_candidates is not None
            overlap = lexical.scores(question)
            best = sorted(range(n), key=overlap.__getitem__, reverse=True)[: c.dense_candidates]
            cosines = (dense.embedded([dense.spans[p] for p in best], embedder) @ q).tolist()
            return {p: x + c.lexical_weight * overlap[p] for p, x in zip(best, cosines, strict=True)}
        index = dense
        limit = min(c.search_passages, n)
        scores = dict(index.search(q, limit))
        if lexical is not None:
            overlap = lexical.scores(question)
            best = sorted(range(n), key=overlap.__getitem__, reverse=True)[:limit]
            missing = [p for p in best if p not in scores]  # lexical matches the dense search missed
            scores.update(zip(missing, (index.vectors(missing) @ q).tolist(), strict=True))
            scores = {p: s + c.lexical_weight * overlap[p] for p, s in scores.items()}
        return scores

    def best_windows(
        self,
        passage_scores: dict[int, float],
        spans: Sequence[Span],
        length: int,
        per_char: float,
        budget: int,
        count: int | None = None,
    ) -> list[Span]:
        """Windows of about `window_tokens` around the `count` (default `windows`) best passages, best first while
        the budget lasts, then in document order (overlapping windows joined)."""
        c = self.config
        read: list[Span] = []
        used = 0
        for p in sorted(passage_scores, key=passage_scores.__getitem__, reverse=True)[: count or c.windows]:
            span = window(spans, p, (0, length), c.window_tokens, per_char)
            cost = int((span[1] - span[0]) * per_char) + 2
            if used + cost > budget:
                break
            read.append(span)
            used += cost
        return merged(read)

    def best_sentences(
        self, question: str, q: Any, read: Sequence[Span], ready: Prepared, embedder: Embedder
    ) -> list[Span]:
        """The `sentences` sentences of `read` nearest the question (cosine + weighted BM25 among them), each with
        `sentence_context` neighbours from its own window, merged, in document order."""
        c = self.config
        per_window = [split_sentences(ready.text, s, e) for s, e in read]
        flat = [(w, i) for w, spans in enumerate(per_window) for i in range(len(spans))]
        if len(flat) <= c.sentences:
            return list(read)
        sentences = [per_window[w][i] for w, i in flat]
        texts = [ready.text[s:e] for s, e in sentences]
        scores = ready.embedded(sentences, embedder) @ q
        if c.lexical_weight:
            scores = scores + c.lexical_weight * np.asarray(BM25Scorer(texts).scores(question))
        chosen = []
        for k in np.argsort(-scores, kind="stable")[: c.sentences]:
            w, i = flat[int(k)]
            lo, hi = max(0, i - c.sentence_context), min(len(per_window[w]) - 1, i + c.sentence_context)
            chosen.append((per_window[w][lo][0], per_window[w][hi][1]))
        return merged(chosen)

    def cover(
        self,
        question: str,
        read: list[Span],
        spans: Sequence[Span],
        unit_of: Sequence[int],
        units: Sequence[Span],
        lexical: LexicalScorer | BM25Scorer,
        room: int,
        per_char: float,
    ) -> list[Span]:
        """Windows around passages holding the question's rare words that `read` misses, rarest first, in `room`."""
        c = self.config
        inside = lambda p: any(s <= spans[p][0] and spans[p][1] <= e for s, e in read)  # noqa: E731
        held = terms_within(read, spans, lexical)
        rare = [t for t in words(question) if 0 < lexical.df[t] <= c.cover_df and t not in held]
        added: list[Span] = []
        for term in sorted(rare, key=lambda t: (lexical.df[t], t)):
            if term in held:
                continue
            holders = [p for p in range(len(spans)) if term in lexical.terms[p] and not inside(p)]
            if not holders:
                continue
            # the holder that also holds most of the other missing words (a key's parts sit together)
            best = max(holders, key=lambda p: (len(lexical.terms[p] & set(rare)), -p))
            span = window(spans, best, units[unit_of[best]], c.focus_tokens or c.unit_tokens, per_char)
            cost = int((span[1] - span[0]) * per_char) + 2
            if cost > room:
                break
            added.append(span)
            room -= cost
            held |= terms_within([span], spans, lexical)
        return added

    def run(self, document: Document, tasks: Sequence[Task], engine: Engine, progress: Progress) -> list[Answer]:
        start = time.perf_counter()
        reader = MemAgent(MemAgentConfig(mode="extractive"))
        # Units go through the memory agent's extractor where its adapter is present; windows, already the few
        # hundred tokens around each match, the model reads itself.
        extract = self.config.notes and reader.adapter(engine) is not None
        retrieved = self.retrieve(document, tasks, engine, progress, focus=not extract)
        text = document.text
        contexts = ["\n\n".join(text[s:e] for s, e in r.units) for r in retrieved]
        evidences = [[Evidence(s, e, text[s:e]) for s, e in r.units] for r in retrieved]
        retrieval = Cost(seconds=(time.perf_counter() - start) / len(tasks))
        answers: list[Answer | None] = [None] * len(tasks)
        spent = [retrieval] * len(tasks)
        notes: list[list[dict[str, Any]]] = [[] for _ in tasks]
        if extract:
            for i, (r, task) in enumerate(zip(retrieved, tasks, strict=True)):
                longest = max(engine.count_tokens(text[s:e]) for s, e in r.units)
                if r.windows or task.kind != TaskKind.QA or longest > reader.segment_budget([task], engine):
                    continue  # windows are read as they are; extractions answer in JSON from the text; a unit too
                    # long for one reading step
                a = reader.run(document, [task], engine, no_progress, segments=r.units)[0]
                notes[i] = a.details["trace"]
                if a.evidence:  # the answer came from the sentences the reader kept
                    a.strategy, a.cost = self.name, a.cost.add(retrieval)
                    answers[i] = a
                else:  # nothing kept: the model answers from the retrieved text itself (the reading still cost)
                    spent[i] = a.cost.add(retrieval)
        direct = [i for i, a in enumerate(answers) if a is None]
        if direct:
            picked = lambda items: [items[i] for i in direct]  # noqa: E731
            got = answer_each(engine, picked(contexts), picked(tasks), self.name, picked(evidences), picked(spent))
            for i, a in zip(direct, got, strict=True):
                answers[i] = a
        done = [a for a in answers if a is not None]
        for a, r, context, task, trace in zip(done, retrieved, contexts, tasks, notes, strict=True):
            completed: list[tuple[str, str]] = []
            if task.kind == TaskKind.QA:  # extractions are JSON the schema check reads as written
                a.text, completed = complete_fragments(a.text, context, task.question)
            a.details = {
                **a.details,
                "index": r.index,
                "scores": r.scores,
                "passages": r.passages,
                "read": [list(u) for u in r.units],
                "ranked": [[*u, s] for u, s in r.ranked],
                "completed": completed,
                "notes": trace,
            }
        progress(2, 2, "answered")
        return done
