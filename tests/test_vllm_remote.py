"""The remote vLLM engine against a real `vllm serve` process over HTTP.

The server serves SmolLM2 under a name this host has no weights for ("reader"), as a deployment serving its own
model does: what needs layers cannot load the reader's weights here and falls back to the selector model.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from compressors.calibration import plant_needle
from compressors.gemfilter import GemFilter
from compressors.hard import HardCompression, HardConfig
from engines import EngineConfig, SamplingParams, create_engine
from engines.internals import has_layers
from engines.models import resolve_model
from engines.settings import Settings
from engines.types import Document, Task, no_progress
from engines.vllm import RemoteVllmEngine
from tests.conftest import EXAMPLES

SERVED = "reader"  # no alias or local folder: the reader's weights are the server's alone


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = resolve_model("smollm2", Settings().home)
    port = free_port()
    log = Path(tmp_path_factory.mktemp("vllm")) / "serve.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": f"0-{(os.cpu_count() or 1) - 1}"}
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "true"  # adapters load at first use (/v1/load_lora_adapter)
    # The `vllm` console script looks up the distribution "vllm", which vllm-cpu is not; the module entry point works.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    cmd += ["--served-model-name", SERVED, "--port", str(port)]
    cmd += ["--host", "127.0.0.1", "--max-model-len", "2048", "--enforce-eager", "--dtype", "float32"]
    cmd += ["--enable-prompt-embeds", "--enable-lora", "--max-lora-rank", "8"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            assert proc.poll() is None, f"vllm serve exited early:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        else:
            pytest.fail(f"vllm serve did not become healthy:\n{log.read_text()[-3000:]}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_remote_engine_counts_and_chats(vllm_server: str, native_engine) -> None:
    engine = create_engine(EngineConfig(kind="vllm", vllm_url=vllm_server))
    assert isinstance(engine, RemoteVllmEngine)
    assert engine.max_context == 2048  # read from the server, not assumed
    text = "The Nellie, a cruising yawl, swung to her anchor."
    assert engine.tokenize(text) == native_engine.tokenize(text)  # /tokenize matches the local tokenizer
    assert engine.detokenize(engine.tokenize(text)) == text
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    assert engine.count_chat_tokens(msgs) == native_engine.count_chat_tokens(msgs)
    gens = engine.chat([msgs, msgs], SamplingParams(max_tokens=8))
    assert len(gens) == 2 and all("paris" in g.text.lower() for g in gens)
    assert gens[0].prompt_tokens == native_engine.count_chat_tokens(msgs)


def test_remote_engine_answers_from_prompt_embeddings(vllm_server: str, native_engine) -> None:
    """The chat prompt sent as its token embeddings (/v1/completions' prompt_embeds) answers as the tokens do."""
    import torch

    engine = create_engine(EngineConfig(kind="vllm", vllm_url=vllm_server))
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    ids = native_engine.hf_tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    embeddings = native_engine.hf_model.get_input_embeddings()(torch.tensor(ids)).detach()  # bf16: the server casts
    params = SamplingParams(max_tokens=8)
    gen = engine.chat_from_embeddings([embeddings], params)[0]
    assert gen.text == engine.chat([msgs], params)[0].text and "paris" in gen.text.lower()
    assert gen.prompt_tokens == len(ids)
    with pytest.raises(httpx.HTTPStatusError, match="hidden_size"):  # the server's reason, not a bare 400
        engine.chat_from_embeddings([embeddings[:, :100]], params)


def test_remote_engine_rejects_unknown_model(vllm_server: str) -> None:
    with pytest.raises(ValueError, match="not served"):
        RemoteVllmEngine(EngineConfig(kind="vllm", vllm_url=vllm_server, model="gpt-17"))


def test_selection_scores_with_the_selector_model_and_answers_through_a_remote_reader(
    vllm_server: str, native_engine
) -> None:
    """The selector-model path: the reader's weights cannot be loaded here, so gemfilter and hard score with the
    selector model (SmolLM2 in-process, `selector_model=auto`'s fallback) and the remote reader answers from what
    they kept.

    Two SmolLM2 configurations stand for two models (one 135M model is all this CPU has): the reader is `vllm serve`
    in float32 with a 2048-token context under a name with no local copy; the selector is transformers in-process
    with an 8192-token context. The planted document (3000 tokens) does not fit the reader, so the answer can only
    come from the selector's choice, read through the reader. What the plumbing cannot check with one model: that
    two tokenizers differ (the budget is counted with the reader's own tokenizer, checked below)."""
    reader = create_engine(Settings().engine_config(kind="vllm", vllm_url=vllm_server))
    assert reader.model_name == SERVED and not has_layers(reader)  # nothing to compress soft with
    ids = native_engine.tokenize((EXAMPLES / "walden_long.txt").read_text(encoding="utf-8"))
    needle = plant_needle(native_engine.detokenize(ids[:3000]), 0.5, random.Random(3))
    assert reader.count_tokens(needle.text) > reader.max_context == 2048
    task = Task(needle.question, max_answer_tokens=32)
    assert GemFilter().fits(3000, [task], reader)
    answer = GemFilter().run(Document(needle.text), [task], reader, no_progress)[0]
    who = {"scored_by": "native", "scored_model": "smollm2", "scored_weights": "selector"}
    who |= {"answered_by": "vllm", "answered_model": SERVED}
    assert {k: answer.details[k] for k in who} == who
    assert any(needle.answer in e.text for e in answer.evidence)  # the selector found it
    assert needle.answer in answer.text, answer.text  # and the reader read it
    hard = HardCompression(HardConfig(rate=0.25)).run(Document(needle.text), [task], reader, no_progress)[0]
    assert hard.details["stages"] == "coarse+fine" and hard.details["scored_weights"] == "selector"
    target = hard.details["target_tokens"]
    assert abs(hard.details["compressed_tokens"] - target) <= 0.05 * target  # in the reader's tokens


def test_remote_engine_serves_the_memagent_adapter_as_a_lora(vllm_server: str) -> None:
    """The shipped adapter loads into the server at first use; a request naming it reads with it (its reply changes)
    and calls without it still get the base model."""
    from memory.memagent import ADAPTER_NAME, ADAPTERS, MemAgent

    adapter = ADAPTERS["smollm2"]
    remote = create_engine(EngineConfig(kind="vllm", vllm_url=vllm_server))
    text = (EXAMPLES / "heart_of_darkness_opening.txt").read_text()[:1500]
    agent = MemAgent()
    probe = [agent.update_messages(Task("Where was the Nellie anchored?"), "", text)]
    params, tuned = agent.update_params(), agent.update_params(ADAPTER_NAME)
    base = remote.chat(probe, params)[0].text
    remote.load_adapter(ADAPTER_NAME, adapter)
    remote.load_adapter(ADAPTER_NAME, adapter)  # loading again is a no-op
    with_adapter = remote.chat(probe, tuned)[0].text
    assert with_adapter != base
    assert remote.chat(probe, params)[0].text == base
    assert remote.adapters == {ADAPTER_NAME: f"tome-{ADAPTER_NAME}"}
