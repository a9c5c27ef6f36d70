"""The remote vLLM engine against a real `vllm serve` process over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engines import EngineConfig, SamplingParams, create_engine
from engines.models import resolve_model
from engines.settings import Settings
from engines.vllm import RemoteVllmEngine


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
    # The `vllm` console script looks up the distribution "vllm", which vllm-cpu is not; the module entry point works.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    cmd += ["--served-model-name", "smollm2", "--port", str(port)]
    cmd += ["--host", "127.0.0.1", "--max-model-len", "2048", "--enforce-eager", "--dtype", "float32"]
    cmd += ["--enable-prompt-embeds"]
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
