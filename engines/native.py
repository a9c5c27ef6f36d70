"""transformers in-process: the embedded default, and the engine that exposes model internals."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from engines.base import (
    ContextOverflowError,
    Generation,
    Message,
    SamplingParams,
    check_embedding_prompts,
    reply_end_ids,
)
from engines.config import EngineConfig, resolve_dtype
from engines.copying import Copied, CopyTargets, copy_reply, vocabulary_strings
from engines.models import resolve_model
from engines.sparse_attention import attention_implementation

hf_logging.disable_progress_bar()  # a weight-loading bar on every start is noise in the CLI

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@contextmanager
def _transformers_quiet() -> Iterator[None]:
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class NativeEngine:
    name = "native"

    def __init__(self, config: EngineConfig) -> None:
        if config.dtype not in DTYPES and config.dtype != "auto":
            raise ValueError(f"dtype {config.dtype!r} is not one of auto, {', '.join(DTYPES)}")
        if config.threads:
            torch.set_num_threads(config.threads)
        self.config = config
        self.model_name = config.model
        self.path = resolve_model(config.model, config.home)
        self.device = pick_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.tokenizer.padding_side = "left"  # batched generation continues every row from its end
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            self.path,
            dtype=DTYPES[self.dtype],
            attn_implementation=attention_implementation(config.attention, config.model),
        ).to(self.device)
        self.model.eval()
        model_context = getattr(self.model.config, "max_position_embeddings", config.max_context)
        self._max_context = min(config.max_context, model_context)
        self.adapters: dict[str, Path] = {}  # name -> the folder loaded under it

    @property
    def max_context(self) -> int:
        return self._max_context

    @property
    def hf_model(self) -> Any:
        return self.model

    @property
    def hf_tokenizer(self) -> Any:
        return self.tokenizer

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def _template(self, messages: Sequence[Message]) -> list[int]:
        out = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)

    def count_chat_tokens(self, messages: Sequence[Message]) -> int:
        return len(self._template(messages))

    def load_adapter(self, name: str, path: Path) -> None:
        if self.adapters.get(name) == path:
            return
        if name in self.adapters:  # another folder under the same name (a bench comparing checkpoints)
            self.model.delete_adapter(name)
        # transformers' PEFT integration. Beside another adapter, PEFT warns that the model has one already and the
        # load report lists the other adapter's weights as missing from this folder: both expected (the other
        # adapter's weights stay as they were), and noise on a user's terminal.
        with warnings.catch_warnings(), _transformers_quiet():
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            self.model.load_adapter(str(path), adapter_name=name)
        self.model.disable_adapters()  # adapters act only inside the calls that ask for them (`using`)
        self.adapters[name] = path

    @contextmanager
    def using(self, adapter: str | None) -> Iterator[None]:
        if adapter is None:
            yield
            return
        if adapter not in self.adapters:
            raise KeyError(f"adapter {adapter!r} is not loaded; loaded: {sorted(self.adapters)}")
        self.model.set_adapter(adapter)
        self.model.enable_adapters()
        try:
            yield
        finally:
            self.model.disable_adapters()

    @torch.inference_mode()
    def chat(self, conversations: Sequence[Sequence[Message]], params: SamplingParams) -> list[Generation]:
        prompts = [self._template(c) for c in conversations]
        for ids in prompts:
            if len(ids) + params.max_tokens > self.max_context:
                raise ContextOverflowError(len(ids) + params.max_tokens, self.max_context, "prompt + answer")
        # Rows of similar length batch well; very different lengths would waste compute on padding.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        batch: list[int] = []
        for i in order:
            if batch and (len(prompts[i]) > 1.25 * len(prompts[batch[0]]) + 64 or len(batch) >= 16):
                self._generate_batch(batch, prompts, params, results)
                batch = []
            batch.append(i)
        if batch:
            self._generate_batch(batch, prompts, params, results)
        return [r for r in results if r is not None]

    def _generate_batch(
        self,
        batch: list[int],
        prompts: list[list[int]],
        params: SamplingParams,
        results: list[Generation | None],
    ) -> None:
        start = time.perf_counter()
        enc = self.tokenizer.pad({"input_ids": [prompts[i] for i in batch]}, return_tensors="pt").to(self.device)
        with self.using(params.adapter):
            out = self.model.generate(**enc, **self._generation_kwargs(params))
        seconds = time.perf_counter() - start
        width = enc["input_ids"].shape[1]
        for row, i in enumerate(batch):
            results[i] = self._generation(out[row, width:], params, len(prompts[i]), seconds / len(batch))

    def _generation_kwargs(self, params: SamplingParams) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": reply_end_ids(self.tokenizer, self.model.generation_config.eos_token_id),
        }
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        return kwargs

    def _generation(self, new: torch.Tensor, params: SamplingParams, prompt_tokens: int, seconds: float) -> Generation:
        new = new[new != self.tokenizer.pad_token_id]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        for s in params.stop:  # stop strings are matched on tokens; cut the text at the string itself
            if s in text:
                text = text[: text.index(s)]
        return Generation(text.strip(), prompt_tokens, int(new.numel()), seconds)

    @torch.inference_mode()
    def chat_from_embeddings(self, embeddings: Sequence[torch.Tensor], params: SamplingParams) -> list[Generation]:
        """Generate from whole prompts given as [length, hidden] input embeddings (template already inside).

        Rows are left-padded into one batch, as token prompts are; `prompt_tokens` counts the vectors read.
        """
        check_embedding_prompts(embeddings, params, self.max_context)
        start = time.perf_counter()
        width = max(e.shape[0] for e in embeddings)
        dtype = self.model.get_input_embeddings().weight.dtype
        rows = [torch.cat([e.new_zeros(width - e.shape[0], e.shape[1]), e]).to(self.device, dtype) for e in embeddings]
        mask = torch.stack([torch.arange(width) >= width - e.shape[0] for e in embeddings]).long().to(self.device)
        # With embeddings and no ids, generate returns the new tokens only.
        with self.using(params.adapter):
            out = self.model.generate(
                inputs_embeds=torch.stack(rows), attention_mask=mask, **self._generation_kwargs(params)
            )
        seconds = (time.perf_counter() - start) / len(embeddings)
        return [self._generation(out[i], params, e.shape[0], seconds) for i, e in enumerate(embeddings)]

    @torch.inference_mode()
    def chat_from_cache(
        self, cache: Any, prompt: Sequence[int], first_position: int, params: SamplingParams
    ) -> Generation:
        """Continue `cache` (a transformers Cache) with the prompt's token ids and decode (SupportsKVCache).

        `prompt_tokens` counts what the answer reads: the cache's entries and the prompt.
        """
        if first_position + len(prompt) + params.max_tokens > self.max_context:
            needed = first_position + len(prompt) + params.max_tokens
            raise ContextOverflowError(needed, self.max_context, "prompt + answer")
        start = time.perf_counter()
        kept = cache.get_seq_length()
        stops = set(reply_end_ids(self.tokenizer, self.model.generation_config.eos_token_id))
        ids, position, new = list(prompt), first_position, []
        try:
            with self.using(params.adapter):
                while len(new) < params.max_tokens:
                    step = torch.tensor([ids], device=self.device)
                    positions = torch.arange(position, position + len(ids), device=self.device)[None]
                    logits = self.model(input_ids=step, position_ids=positions, past_key_values=cache).logits[0, -1]
                    position += len(ids)
                    token = self._pick(logits.float(), params.temperature)
                    if token in stops:
                        break
                    new.append(token)
                    ids = [token]
                    if params.stop and any(s in self.tokenizer.decode(new) for s in params.stop):
                        break
        finally:
            if cache.get_seq_length() > kept:  # drop the prompt and answer: the cache is the caller's, as it came
                cache.crop(kept - cache.get_seq_length())  # negative: tokens to remove (transformers 5.x)
        generation = self._generation(torch.tensor(new, dtype=torch.long), params, kept + len(prompt), 0.0)
        generation.seconds = time.perf_counter() - start
        return generation

    @torch.inference_mode()
    def copy_answer(
        self, messages: Sequence[Message], params: SamplingParams, context: str, refusal: str, threshold: float
    ) -> Copied:
        """SupportsCopying: one prefill of the prompt; the refusal teacher-forced after it, and, if its probability
        is below `threshold`, the constrained decode of engines/copying.py on the same cache."""
        ids = self._template(messages)
        n = len(ids)
        with self.using(params.adapter):
            out = self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True)
            cache = out.past_key_values
            first = out.logits[0, -1].float().log_softmax(-1)

            def forward(tokens: list[int], position: int) -> torch.Tensor:
                positions = torch.arange(position, position + len(tokens), device=self.device)[None]
                x = torch.tensor([tokens], device=self.device)
                return self.model(input_ids=x, position_ids=positions, past_key_values=cache).logits[0].float()

            def rewind() -> None:
                if cache.get_seq_length() > n:
                    cache.crop(n - cache.get_seq_length())  # negative: tokens to remove (transformers 5.x)

            refused = [*self.tokenizer(refusal, add_special_tokens=False)["input_ids"], self.tokenizer.eos_token_id]
            forced = torch.cat([first[None], forward(refused[:-1], n).log_softmax(-1)])
            p_refusal = math.exp(sum(float(forced[i, t]) for i, t in enumerate(refused)))
            rewind()
            if p_refusal >= threshold:
                return Copied(p_refusal, "")

            def step(token: int) -> torch.Tensor:
                return forward([token], cache.get_seq_length())[-1].log_softmax(-1)

            text, logprob, candidates = copy_reply(
                first,
                step,
                rewind,
                lambda reply: self.tokenizer.decode(reply, skip_special_tokens=True),
                CopyTargets(context, vocabulary_strings(self.tokenizer)),
                refusal,
                max_tokens=params.max_tokens,
                stops=reply_end_ids(self.tokenizer, self.model.generation_config.eos_token_id),
            )
        return Copied(p_refusal, text, logprob, candidates)

    @staticmethod
    def _pick(logits: torch.Tensor, temperature: float) -> int:
        if temperature <= 0:
            return int(logits.argmax())
        return int(torch.multinomial(torch.softmax(logits / temperature, -1), 1))
