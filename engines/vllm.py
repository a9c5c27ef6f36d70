"""vLLM, the production engine: in-process (`vllm.LLM`) or a remote `vllm serve` over its OpenAI API.

Both answer from prompt embeddings too (soft compression): in-process as `EmbedsPrompt`s, remotely through
/v1/completions' `prompt_embeds` (the server needs `--enable-prompt-embeds`). The vectors themselves come from an
in-process transformers model over the same weights (`engines.internals`): vLLM exposes no layers.
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from engines.base import (
    ContextOverflowError,
    Generation,
    Message,
    SamplingParams,
    check_embedding_prompts,
    reply_end_ids,
)
from engines.config import EngineConfig, resolve_dtype
from engines.models import ALIASES, resolve_model

# vLLM logs to stdout by default, which would corrupt `tome ask --json`; its import reads these.
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


class VllmEngine:
    """In-process vLLM. Entry points that build one need the `if __name__ == "__main__"` guard: vLLM spawns."""

    name = "vllm"

    def __init__(self, config: EngineConfig) -> None:
        # vLLM cuts torch to one thread unless told otherwise; bind its OpenMP threads to this machine's cores.
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{(os.cpu_count() or 1) - 1}")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        from vllm import LLM

        self.config = config
        self.model_name = config.model
        path = resolve_model(config.model, config.home)
        self.llm = LLM(
            model=str(path),
            dtype=resolve_dtype(config.dtype, "cuda" if _cuda() else "cpu"),
            max_model_len=config.max_context,
            gpu_memory_utilization=config.vllm_memory_fraction,
            enforce_eager=config.vllm_enforce_eager,
            enable_prefix_caching=True,
            enable_prompt_embeds=True,  # compllm's compressed documents (chat_from_embeddings)
            enable_lora=config.vllm_max_lora_rank > 0,
            max_lora_rank=config.vllm_max_lora_rank or 16,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self._max_context = config.max_context
        self.adapters: dict[str, Any] = {}  # name -> vllm LoRARequest

    def load_adapter(self, name: str, path: Path) -> None:
        if name in self.adapters:
            return
        if self.config.vllm_max_lora_rank <= 0:
            raise ValueError("this vLLM engine was started without LoRA (vllm_max_lora_rank=0)")
        from vllm.lora.request import LoRARequest

        # vLLM reads the adapter from disk when a request first names it.
        self.adapters[name] = LoRARequest(name, len(self.adapters) + 1, str(path))

    @property
    def max_context(self) -> int:
        return self._max_context

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def count_chat_tokens(self, messages: Sequence[Message]) -> int:
        out = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        return len(out["input_ids"] if hasattr(out, "keys") else out)

    def _sampling(self, params: SamplingParams) -> Any:
        from vllm import SamplingParams as VllmSampling

        return VllmSampling(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            stop=list(params.stop) or None,
            stop_token_ids=reply_end_ids(self.tokenizer, self.tokenizer.eos_token_id),
        )

    def chat(self, conversations: Sequence[Sequence[Message]], params: SamplingParams) -> list[Generation]:
        for c in conversations:
            needed = self.count_chat_tokens(c) + params.max_tokens
            if needed > self.max_context:
                raise ContextOverflowError(needed, self.max_context, "prompt + answer")
        start = time.perf_counter()
        lora = self.adapters[params.adapter] if params.adapter else None
        outputs = self.llm.chat(
            [list(c) for c in conversations], self._sampling(params), use_tqdm=False, lora_request=lora
        )
        per = (time.perf_counter() - start) / max(1, len(conversations))
        return [
            Generation(o.outputs[0].text.strip(), len(o.prompt_token_ids), len(o.outputs[0].token_ids), per)
            for o in outputs
        ]

    def chat_from_embeddings(self, embeddings: Sequence[Any], params: SamplingParams) -> list[Generation]:
        """Generate from whole prompts given as [length, hidden] input embeddings (template already inside)."""
        check_embedding_prompts(embeddings, params, self.max_context)
        dtype = self.llm.llm_engine.model_config.dtype
        prompts = [{"prompt_embeds": e.detach().to("cpu", dtype)} for e in embeddings]
        start = time.perf_counter()
        lora = self.adapters[params.adapter] if params.adapter else None
        outputs = self.llm.generate(prompts, self._sampling(params), use_tqdm=False, lora_request=lora)
        per = (time.perf_counter() - start) / max(1, len(embeddings))
        return [
            Generation(o.outputs[0].text.strip(), e.shape[0], len(o.outputs[0].token_ids), per)
            for o, e in zip(outputs, embeddings, strict=True)
        ]


def _cuda() -> bool:
    import torch  # vLLM brings torch; imported here so the remote engine needs neither

    return torch.cuda.is_available()


class RemoteVllmEngine:
    """A `vllm serve` endpoint: chat through /v1/chat/completions, counting through /tokenize.

    LoRA adapters (a server started with `--enable-lora`): a request names the adapter as its model. The server
    serves ours as `tome-<name>`, either from its start (`--lora-modules tome-memagent=/path`) or loaded at first use
    through /v1/load_lora_adapter (the server needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=true and the folder on its disk).
    """

    name = "vllm"

    def __init__(self, config: EngineConfig, client: httpx.Client | None = None) -> None:
        assert config.vllm_url, "RemoteVllmEngine needs vllm_url"
        self.config = config
        self.client = client or httpx.Client(base_url=config.vllm_url.rstrip("/"), timeout=600)
        models = self.client.get("/v1/models").raise_for_status().json()["data"]
        served = {m["id"]: m for m in models}
        config_model = config.model
        if config_model not in served:
            # A local alias (the default) names no served model; a server with one model serves it.
            if config_model not in ALIASES or len(served) != 1:
                raise ValueError(f"model {config_model!r} is not served at {config.vllm_url}: {sorted(served)}")
            config_model = next(iter(served))
        self.model_name = config_model
        self._max_context = int(served[config_model].get("max_model_len") or config.max_context)
        self._served = set(served)
        self.adapters: dict[str, str] = {}  # our adapter name -> the server's model name for it
        self._refused: dict[str, str] = {}  # adapters the server would not load -> why (asked once per engine)

    def load_adapter(self, name: str, path: Path) -> None:
        if name in self.adapters:
            return
        lora = f"tome-{name}"
        if lora in self._refused:
            raise RuntimeError(self._refused[lora])
        if lora not in self._served:
            body = {"lora_name": lora, "lora_path": str(Path(path).resolve())}
            response = self.client.post("/v1/load_lora_adapter", json=body)
            if response.is_error:  # no --enable-lora, runtime loading off, or the folder is not on the server
                self._refused[lora] = f"vLLM at {self.config.vllm_url} could not load {lora}: {response.text[:300]}"
                raise RuntimeError(self._refused[lora])
            self._served.add(lora)
        self.adapters[name] = lora

    @property
    def max_context(self) -> int:
        return self._max_context

    def _post(self, path: str, body: dict[str, Any], model: str | None = None) -> dict[str, Any]:
        response = self.client.post(path, json={"model": model or self.model_name, **body})
        if response.is_error:  # the server says what was wrong (a missing flag, a bad shape): pass it on
            detail = f"vLLM at {self.config.vllm_url} answered {response.status_code} to {path}: {response.text[:500]}"
            raise httpx.HTTPStatusError(detail, request=response.request, response=response)
        return response.json()

    def tokenize(self, text: str) -> list[int]:
        return self._post("/tokenize", {"prompt": text, "add_special_tokens": False})["tokens"]

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._post("/detokenize", {"tokens": list(ids)})["prompt"]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def count_chat_tokens(self, messages: Sequence[Message]) -> int:
        body = {"messages": list(messages), "add_generation_prompt": True}
        return int(self._post("/tokenize", body)["count"])

    def _generate(self, path: str, prompt: dict[str, Any], params: SamplingParams) -> Generation:
        """One request to /v1/chat/completions (`messages`) or /v1/completions (`prompt_embeds`)."""
        start = time.perf_counter()
        body = {**prompt, "max_tokens": params.max_tokens, "temperature": params.temperature}
        model = self.adapters[params.adapter] if params.adapter else None
        reply = self._post(path, {**body, "stop": list(params.stop) or None}, model)
        usage, choice = reply.get("usage") or {}, reply["choices"][0]
        return Generation(
            (choice["message"]["content"] if "message" in choice else choice["text"]).strip(),
            int(usage.get("prompt_tokens", 0)),
            int(usage.get("completion_tokens", 0)),
            time.perf_counter() - start,
        )

    def _map(self, fn: Any, items: Sequence[Any]) -> list[Generation]:
        # The server batches concurrent requests itself (continuous batching).
        with ThreadPoolExecutor(max_workers=min(16, max(1, len(items)))) as pool:
            return list(pool.map(fn, items))

    def chat(self, conversations: Sequence[Sequence[Message]], params: SamplingParams) -> list[Generation]:
        return self._map(lambda c: self._generate("/v1/chat/completions", {"messages": list(c)}, params), conversations)

    def _embedded(self, embeddings: Any, params: SamplingParams) -> Generation:
        import torch  # the caller made the embeddings with torch, so it is there

        buffer = io.BytesIO()
        torch.save(embeddings.detach().cpu().contiguous(), buffer)  # the server casts to its own dtype
        prompt = {"prompt_embeds": base64.b64encode(buffer.getvalue()).decode()}
        return self._generate("/v1/completions", prompt, params)

    def chat_from_embeddings(self, embeddings: Sequence[Any], params: SamplingParams) -> list[Generation]:
        """As VllmEngine's, through /v1/completions' `prompt_embeds` (a base64 `torch.save` of each prompt)."""
        check_embedding_prompts(embeddings, params, self.max_context)
        return self._map(lambda e: self._embedded(e, params), embeddings)
