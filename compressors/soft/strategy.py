"""`compllm`: answer from the document compressed segment by segment into input embeddings (CompLLM).

The document's tokens are cut into fixed segments of the adapter's size (as in training, so the rate is exact:
a segment of n tokens becomes ceil(n / rate) vectors), each segment is compressed on its own or read back from
the content-hash cache under TOME_HOME, and the engine answers from [prompt; compressed document; question]
given as input embeddings. A second question, or another job over the same text, compresses nothing again.
Needs an engine that generates from input embeddings (native, or vLLM through prompt embeddings) and a trained
adapter; the compressor runs on the engine's layers, or on a native engine over the same model where the engine has
none (vLLM: `engines.internals`).
"""

from __future__ import annotations

import functools
import math
import os
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from compressors.soft.cache import FOLDER, RedisSegmentCache, SegmentCache, file_digest, segment_key
from compressors.soft.model import SHIPPED, SegmentCompressor, load_compressor, read_config
from engines.base import Engine, SamplingParams, SupportsInputEmbeddings, engine_home
from engines.internals import has_layers, layers_engine
from engines.prompting import answer_overhead, prompt_around
from engines.types import Answer, Cost, Document, Evidence, Progress, Task, no_progress


@dataclass(frozen=True)
class CompLLMConfig:
    rate: int = 2
    adapter: Path = SHIPPED
    batch_segments: int = 64  # segments compressed per forward pass
    cache: bool = True
    cache_url: str | None = None  # Redis for the segment cache; unset: TOME_COMPLLM_CACHE_URL, else TOME_HOME on disk


@dataclass
class Compressed:
    vectors: torch.Tensor  # [ceil-per-segment total, hidden], the model's dtype
    document_tokens: int
    segments: int
    cached: int  # segments read from the cache
    passes: int  # compressor forward passes
    tokens_scanned: int  # tokens + slots those passes read
    seconds: float


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
    url = url or os.environ.get("TOME_COMPLLM_CACHE_URL") or None
    if url:
        return _redis_cache(url)
    home = engine_home(engine)
    return SegmentCache(Path(home) / FOLDER) if home else None


@torch.inference_mode()
def compress(
    engine: Engine, text: str, config: CompLLMConfig = CompLLMConfig(), progress: Progress = no_progress
) -> Compressed:
    """The document as ceil(n / rate) vectors per segment, from the cache where it has them."""
    start = time.perf_counter()
    compressor, digest = compressor_for(engine, config.adapter)
    size = compressor.config.segment_tokens
    ids = engine.tokenize(text)
    segments = [ids[i : i + size] for i in range(0, len(ids), size)]
    keys = [segment_key(digest, config.rate, s) for s in segments]
    cache = cache_for(engine, config.cache_url) if config.cache else None
    found: list[torch.Tensor | None] = cache.get_many(keys) if cache else [None] * len(keys)
    todo = [i for i, v in enumerate(found) if v is None]
    passes = scanned = 0
    for b in range(0, len(todo), config.batch_segments):
        progress(b, len(todo), f"compllm: compressing segments {b + 1}-{min(b + config.batch_segments, len(todo))}")
        batch = todo[b : b + config.batch_segments]
        for i, vectors in zip(batch, compressor([segments[i] for i in batch], config.rate), strict=True):
            found[i] = vectors.cpu()
            if cache:
                cache.put(keys[i], found[i])
            scanned += len(segments[i]) + vectors.shape[0]
        passes += 1
    vectors = torch.cat([v for v in found if v is not None]) if segments else torch.empty(0, 0)
    return Compressed(
        vectors=vectors,
        document_tokens=len(ids),
        segments=len(segments),
        cached=len(segments) - len(todo),
        passes=passes,
        tokens_scanned=scanned,
        seconds=time.perf_counter() - start,
    )


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


class CompLLM:
    name = "compllm"

    def __init__(self, config: CompLLMConfig = CompLLMConfig()) -> None:
        self.config = config

    def fits(self, document_tokens: int, tasks: Sequence[Task], engine: Engine) -> bool:
        if not (isinstance(engine, SupportsInputEmbeddings) and has_layers(engine) and self.config.adapter.exists()):
            return False
        trained = read_config(self.config.adapter)
        if self.config.rate not in trained.rates:
            return False
        vectors = compressed_length(document_tokens, trained.segment_tokens, self.config.rate)
        return vectors + max(answer_overhead(engine, t) for t in tasks) <= engine.max_context

    def run(self, document: Document, tasks: Sequence[Task], engine: Engine, progress: Progress) -> list[Answer]:
        layers = layers_engine(engine)
        compressed = compress(layers, document.text, self.config, progress)
        prompts = [prompt_embeddings(layers, compressed.vectors, t) for t in tasks]
        params = SamplingParams(max_tokens=max(t.max_answer_tokens for t in tasks))
        generations = engine.chat_from_embeddings(prompts, params)  # type: ignore[attr-defined]
        share = Cost(
            calls=compressed.passes,
            tokens_read=compressed.tokens_scanned,
            seconds=compressed.seconds,
        )
        answers = []
        for i, g in enumerate(generations):
            cost = Cost(1, g.prompt_tokens, g.completion_tokens, g.seconds)
            if i == 0:  # the compression is paid once for every question of the request
                cost = cost.add(share)
            answer = Answer(g.text, self.name, [Evidence(0, len(document.text), "")], cost)
            answer.details.update(
                rate=self.config.rate,
                document_tokens=compressed.document_tokens,
                input_vectors=g.prompt_tokens,
                segments=compressed.segments,
                cached_segments=compressed.cached,
            )
            answers.append(answer)
        progress(len(tasks), len(tasks), "compllm: answered")
        return answers
