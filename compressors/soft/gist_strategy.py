"""`gist`: answer from the document compressed into gist KV (compressors/soft/gist.py).

The document is read chunk by chunk through the trained gist adapter; after each chunk only its gists' KV is kept,
so the answer reads [prompt prefix; gists] instead of the whole text: rate-times fewer KV entries (and bytes) for
the document. One compressed cache serves every question of the request (it is question-independent), each
answered by the engine's own model continuing it (SupportsKVCache). Gists keep the uncompressed prompt's RoPE
positions, so the document must fit the context as for `full`: gist saves memory and attention, not positions.
Needs an engine with layer access and cache continuation (the native engine) and a trained adapter.

Under a vLLM reader it compresses and answers on the native engine over the reader's weights
(`engines.internals.layers_engine`; `details.answered_by` says so), not through vLLM, whose only way in besides
tokens is `prompt_embeds` (vLLM's `EmbedsPrompt`: `prompt_embeds`, `prompt`, `prompt_token_ids`,
`prompt_is_token_ids`; no positions, no KV). compllm fits it: its vectors are inputs to layer 0 at consecutive
positions. Gist does not, twice over: (1) the document survives only as the gists' KV at every layer, made while the
gists attended to raw tokens that are then dropped; as inputs the gists are the same learned vectors for every
chunk, so a prompt of them carries nothing of the document; (2) the answer continues at the uncompressed document's
positions (`next_position`), while vLLM numbers a prompt's positions 0..n-1. The route would be a vLLM KV connector
(`KVConnectorBase_V1`) handing it the gist KV, with gists trained on compressed positions.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from compressors.soft.gist import SHIPPED, GistCache, GistModel, kv_bytes, load_gist, read_config
from engines.base import Engine, SamplingParams, SupportsKVCache, SupportsLayers
from engines.internals import has_layers, layers_engine
from engines.prompting import answer_overhead, prompt_around
from engines.types import Answer, Cost, Document, Evidence, Progress, Task, no_progress


@dataclass(frozen=True)
class GistStrategyConfig:
    rate: int = 2
    adapter: Path = SHIPPED


_loaded: weakref.WeakKeyDictionary[torch.nn.Module, dict[Path, GistModel]] = weakref.WeakKeyDictionary()


def gist_model_for(engine: Engine, adapter: Path) -> GistModel:
    """The engine model's gist model for an adapter file, loaded once per model."""
    model = engine.hf_model  # type: ignore[attr-defined]
    per_model = _loaded.setdefault(model, {})
    if adapter not in per_model:
        per_model[adapter] = load_gist(model, adapter)
    return per_model[adapter]


def compress(
    engine: Engine, text: str, config: GistStrategyConfig = GistStrategyConfig(), progress: Progress = no_progress
) -> GistCache:
    """The document as the KV of [answer prompt prefix; gists]."""
    gist = gist_model_for(engine, config.adapter)
    before, _ = prompt_around(engine, Task(""))  # the part before the context does not depend on the task
    model = engine.hf_model  # type: ignore[attr-defined]
    return gist.compress(model, before, engine.tokenize(text), config.rate, progress)


def _continues_caches(engine: Engine) -> bool:
    return isinstance(engine, SupportsKVCache) and isinstance(engine, SupportsLayers)


class Gist:
    name = "gist"

    def __init__(self, config: GistStrategyConfig = GistStrategyConfig()) -> None:
        self.config = config

    def fits(self, document_tokens: int, tasks: Sequence[Task], engine: Engine) -> bool:
        if not (self.config.adapter.exists() and (_continues_caches(engine) or has_layers(engine))):
            return False
        if self.config.rate not in read_config(self.config.adapter).rates:
            return False
        return document_tokens + max(answer_overhead(engine, t) for t in tasks) <= engine.max_context

    def run(self, document: Document, tasks: Sequence[Task], engine: Engine, progress: Progress) -> list[Answer]:
        engine = engine if _continues_caches(engine) else layers_engine(engine)  # a KV cache cannot go into vLLM
        compressed = compress(engine, document.text, self.config, progress)
        model = engine.hf_model  # type: ignore[attr-defined]
        width = next(model.parameters()).element_size()  # bytes per cached value: the engine's dtype
        baseline = compressed.prefix_tokens + compressed.document_tokens
        # Compression: one pass for the prefix and one per chunk, each reading the chunk and its gists.
        share = Cost(
            calls=compressed.chunks + 1,
            tokens_read=compressed.prefix_tokens + compressed.document_tokens + compressed.gists,
            seconds=compressed.seconds,
        )
        answers = []
        for i, task in enumerate(tasks):
            _, after = prompt_around(engine, task)
            params = SamplingParams(max_tokens=task.max_answer_tokens)
            g = engine.chat_from_cache(compressed.cache, after, compressed.next_position, params)  # type: ignore[attr-defined]
            # The answer reads the kept KV and its own prompt; the cost counts the prompt tokens it computes.
            cost = Cost(1, len(after), g.completion_tokens, g.seconds)
            if i == 0:  # the compression is paid once for every question of the request
                cost = cost.add(share)
            answer = Answer(g.text, self.name, [Evidence(0, len(document.text), "")], cost)
            answer.details.update(
                answered_by=engine.name,
                rate=self.config.rate,
                document_tokens=compressed.document_tokens,
                input_vectors=g.prompt_tokens,  # what the answer reads: the kept KV and its prompt
                gists=compressed.gists,
                chunks=compressed.chunks,
                kv_positions=compressed.kept,
                baseline_kv_positions=baseline,
                kv_bytes=kv_bytes(model.config, compressed.kept, width),
                baseline_kv_bytes=kv_bytes(model.config, baseline, width),
            )
            answers.append(answer)
            progress(i + 1, len(tasks), "gist: answered")
        return answers
