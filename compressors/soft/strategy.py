"""`compllm`: answer from the document compressed segment by segment into input embeddings (CompLLM).

The document's tokens are cut into fixed segments of the adapter's size (as in training, so the rate is exact:
a segment of n tokens becomes ceil(n / rate) vectors), each segment is compressed on its own or read back from
the content-hash cache under TOME_HOME, and the engine answers from [prompt; document vectors; question]
given as input embeddings. A second question, or another job over the same text, compresses nothing again.

The prompt holds the document in the vectors of `rate` (2x by default). With `segment_rate` above it, the
segments nearest each question are read as their own tokens and the others compressed at `segment_rate`,
filling the same budget (compressors/soft/selection.py: at 2x with the rest at 4x, a third of the document
stays raw); with `segment_rate == rate` every segment is compressed and nothing depends on the question (the
paper's CompLLM). Needs an engine that generates from input embeddings (native, or vLLM through prompt
embeddings) and a trained adapter; the compressor runs on the engine's layers, or on a native engine over the
same model where the engine has none (vLLM: `engines.internals`).
"""

from __future__ import annotations

import functools
import math
import time
import weakref
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from compressors.soft.cache import FOLDER, RedisSegmentCache, SegmentCache, file_digest, segment_key
from compressors.soft.model import EARLY, SegmentCompressor, load_compressor, read_config, segments_of
from compressors.soft.selection import raw_segments, segment_scores
from engines.base import Engine, SamplingParams, SupportsInputEmbeddings, engine_home
from engines.config import DEFAULT_EMBEDDER
from engines.internals import has_layers, layers_engine
from engines.prompting import answer_overhead, prompt_around
from engines.types import Answer, Cost, Document, Evidence, Progress, Task, no_progress


@dataclass(frozen=True)
class CompLLMConfig:
    rate: int = 2  # the document takes the vectors of every segment compressed at this rate
    # Rate of the compressed segments; above `rate`, the segments nearest the question fill the rest of the budget
    # as raw tokens. Equal to `rate`: every segment compressed, the prompt independent of the question.
    segment_rate: int = 4
    # The compressor on the first 8 decoder layers: a cold request's compression costs about a quarter of the 30-layer
    # one's (SHIPPED), and the answers come out the same (bench/results/compress-soft-early-*.md)
    adapter: Path = EARLY
    batch_segments: int = 64  # segments compressed per forward pass
    cache: bool = True
    cache_url: str | None = None  # Redis for the segment cache (Settings.compllm_cache_url); unset: files in home
    embedder: str = DEFAULT_EMBEDDER  # scores segments against the question (Settings.embedder, as rag)
    lexical_weight: float = 0.3  # rag's: a rare key the embedding blurs still lifts its segment

    def __post_init__(self) -> None:
        if not 1 <= self.rate <= self.segment_rate:
            raise ValueError(f"compllm needs 1 <= rate <= segment_rate, got rate {self.rate}, {self.segment_rate}")

    @property
    def question_aware(self) -> bool:
        return self.segment_rate > self.rate


@dataclass
class Compressed:
    ids: list[list[int]]  # the document's token ids, segment by segment
    pieces: list[torch.Tensor | None]  # per segment [ceil(n / segment_rate), hidden], model dtype; None: raw, not run
    cached: int  # segments read from the cache
    passes: int  # compressor forward passes
    tokens_scanned: int  # tokens + slots those passes read
    seconds: float

    @property
    def document_tokens(self) -> int:
        return sum(len(s) for s in self.ids)

    @property
    def segments(self) -> int:
        return len(self.ids)

    @property
    def computed(self) -> int:
        """Segments compressed by this call (neither cached nor skipped)."""
        return sum(p is not None for p in self.pieces) - self.cached

    @property
    def vectors(self) -> torch.Tensor:
        """Every segment compressed, in order (the question-agnostic prompt)."""
        if any(p is None for p in self.pieces):
            raise ValueError("some segments were left raw and not compressed")
        return torch.cat(self.pieces) if self.pieces else torch.empty(0, 0)  # type: ignore[arg-type]


_loaded: weakref.WeakKeyDictionary[torch.nn.Module, dict[Path, tuple[SegmentCompressor, str]]] = (
    weakref.WeakKeyDictionary()
)


def compressor_for(engine: Engine, adapter: Path) -> tuple[SegmentCompressor, str]:
    """The engine model's compressor for an adapter file (loaded once per model) and the adapter's digest."""
    model = engine.hf_model  # type: ignore[attr-defined]
    per_model = _loaded.setdefault(model, {})
    if adapter not in per_model:
        per_model[adapter] = (load_compressor(model, adapter), file_digest(adapter))
    return per_model[adapter]


@functools.lru_cache(maxsize=4)
def _redis_cache(url: str) -> RedisSegmentCache:  # one connection pool per URL and process
    return RedisSegmentCache(url)


def cache_for(engine: Engine, url: str | None = None) -> SegmentCache | RedisSegmentCache | None:
    if url:
        return _redis_cache(url)
    home = engine_home(engine)
    return SegmentCache(Path(home) / FOLDER) if home else None


def segment_ids(engine: Engine, text: str, config: CompLLMConfig) -> list[list[int]]:
    """The document's token ids in the adapter's segments."""
    size = compressor_for(engine, config.adapter)[0].config.segment_tokens
    return segments_of(engine.tokenize(text), size)


def compress(
    engine: Engine,
    text: str,
    config: CompLLMConfig = CompLLMConfig(),
    progress: Progress = no_progress,
    skip: Collection[int] = (),
) -> Compressed:
    """The document as ceil(n / segment_rate) vectors per segment, from the cache where it has them; the segments
    in `skip` (read raw by every question at hand) are not compressed unless the cache has them."""
    return compress_segments(engine, segment_ids(engine, text, config), config, progress, skip)


@torch.inference_mode()
def compress_segments(
    engine: Engine,
    segments: list[list[int]],
    config: CompLLMConfig,
    progress: Progress = no_progress,
    skip: Collection[int] = (),
) -> Compressed:
    """`compress` on a document already cut into segments."""
    start = time.perf_counter()
    compressor, digest = compressor_for(engine, config.adapter)
    rate = config.segment_rate
    keys = [segment_key(digest, rate, s) for s in segments]
    cache = cache_for(engine, config.cache_url) if config.cache else None
    found: list[torch.Tensor | None] = cache.get_many(keys) if cache else [None] * len(keys)
    cached = sum(v is not None for v in found)
    todo = [i for i, v in enumerate(found) if v is None and i not in skip]
    passes = scanned = 0
    for b in range(0, len(todo), config.batch_segments):
        progress(b, len(todo), f"compllm: compressing segments {b + 1}-{min(b + config.batch_segments, len(todo))}")
        batch = todo[b : b + config.batch_segments]
        for i, vectors in zip(batch, compressor([segments[i] for i in batch], rate), strict=True):
            found[i] = vectors.cpu()
            if cache:
                cache.put(keys[i], found[i])
            scanned += len(segments[i]) + vectors.shape[0]
        passes += 1
    return Compressed(segments, found, cached, passes, scanned, time.perf_counter() - start)


def choose_raw(
    engine: Engine, segments: Sequence[Sequence[int]], tasks: Sequence[Task], config: CompLLMConfig
) -> list[set[int]]:
    """Per question, the segments it reads raw (none where the config is question-agnostic)."""
    if not config.question_aware or not segments:
        return [set() for _ in tasks]
    embedder = config.embedder
    texts = [engine.detokenize(s) for s in segments]
    scores = segment_scores(texts, [t.question for t in tasks], embedder, config.lexical_weight)
    sizes = [len(s) for s in segments]
    return [raw_segments(row, sizes, config.rate, config.segment_rate) for row in scores]


def context_vectors(engine: Engine, compressed: Compressed, raw: Collection[int] = ()) -> torch.Tensor:
    """The document in order: the segments in `raw` as their token embeddings, the others compressed."""
    embed = engine.hf_model.get_input_embeddings()  # type: ignore[attr-defined]
    rows = []
    with torch.inference_mode():
        for i, (ids, piece) in enumerate(zip(compressed.ids, compressed.pieces, strict=True)):
            if i in raw:
                rows.append(embed(torch.tensor(ids, device=embed.weight.device)).cpu())
            elif piece is None:
                raise ValueError(f"segment {i} is neither raw nor compressed")
            else:
                rows.append(piece)
    return torch.cat(rows) if rows else torch.empty(0, embed.weight.shape[1])


def compressed_length(document_tokens: int, segment_tokens: int, rate: int) -> int:
    full, rest = divmod(document_tokens, segment_tokens)
    return full * math.ceil(segment_tokens / rate) + math.ceil(rest / rate)


def prompt_embeddings(engine: Engine, vectors: torch.Tensor, task: Task) -> torch.Tensor:
    """[answer prompt before the context; compressed context; question and answer cue] as input embeddings."""
    embed = engine.hf_model.get_input_embeddings()  # type: ignore[attr-defined]
    before, after = prompt_around(engine, task)
    device = embed.weight.device
    with torch.inference_mode():
        head = embed(torch.tensor(before, device=device))
        tail = embed(torch.tensor(after, device=device))
    return torch.cat([head, vectors.to(device, head.dtype), tail])


@dataclass
class Prompts:
    embeddings: list[torch.Tensor]  # one input-embedding prompt per question
    compressed: Compressed
    raw: list[set[int]]  # per question, the segments it reads raw
    seconds: float  # choosing the raw segments and compressing the rest


def build_prompts(
    engine: Engine, text: str, tasks: Sequence[Task], config: CompLLMConfig, progress: Progress = no_progress
) -> Prompts:
    """Each question's prompt over the document: the segments it reads raw, the others compressed (or cached)."""
    start = time.perf_counter()
    if config.question_aware:
        progress(0, len(tasks), "compllm: choosing the segments each question reads raw")
    segments = segment_ids(engine, text, config)
    raw = choose_raw(engine, segments, tasks, config)
    compressed = compress_segments(engine, segments, config, progress, skip=set.intersection(*raw) if raw else set())
    contexts = [context_vectors(engine, compressed, r) for r in raw]
    prompts = [prompt_embeddings(engine, c, t) for c, t in zip(contexts, tasks, strict=True)]
    return Prompts(prompts, compressed, raw, time.perf_counter() - start)


class CompLLM:
    name = "compllm"

    def __init__(self, config: CompLLMConfig = CompLLMConfig()) -> None:
        self.config = config

    def fits(self, document_tokens: int, tasks: Sequence[Task], engine: Engine) -> bool:
        if not (isinstance(engine, SupportsInputEmbeddings) and has_layers(engine) and self.config.adapter.exists()):
            return False
        trained = read_config(self.config.adapter)
        if self.config.segment_rate not in trained.rates:
            return False
        vectors = compressed_length(document_tokens, trained.segment_tokens, self.config.rate)
        return vectors + max(answer_overhead(engine, t) for t in tasks) <= engine.max_context

    def run(self, document: Document, tasks: Sequence[Task], engine: Engine, progress: Progress) -> list[Answer]:
        layers = layers_engine(engine)
        built = build_prompts(layers, document.text, tasks, self.config, progress)
        compressed, raw, prompts = built.compressed, built.raw, built.embeddings
        params = SamplingParams(max_tokens=max(t.max_answer_tokens for t in tasks))
        generations = engine.chat_from_embeddings(prompts, params)  # type: ignore[attr-defined]
        share = Cost(
            calls=compressed.passes,
            tokens_read=compressed.tokens_scanned,
            seconds=built.seconds,
        )
        answers = []
        for i, g in enumerate(generations):
            cost = Cost(1, g.prompt_tokens, g.completion_tokens, g.seconds)
            if i == 0:  # the compression is paid once for every question of the request
                cost = cost.add(share)
            answer = Answer(g.text, self.name, [Evidence(0, len(document.text), "")], cost)
            answer.details.update(
                rate=self.config.rate,
                segment_rate=self.config.segment_rate,
                document_tokens=compressed.document_tokens,
                input_vectors=g.prompt_tokens,
                segments=compressed.segments,
                raw_segments=len(raw[i]),
                cached_segments=compressed.cached,
                compressed_segments=compressed.computed,
            )
            answers.append(answer)
        progress(len(tasks), len(tasks), "compllm: answered")
        return answers
