"""`gist` soft compression on the real SmolLM2: the mask, gist-only KV, the strategy's answer and cost, training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compressors.soft.data import Example
from compressors.soft.gist import GIST, PREFIX, RAW, SHIPPED, TAIL, GistConfig, GistModel, gist_mask, layout
from compressors.soft.gist_strategy import Gist, GistStrategyConfig
from compressors.soft.gist_train import gist_step
from engines.base import Engine
from engines.prompting import prompt_around
from engines.types import Document, Task
from workflows.graph import run_job
from workflows.registry import Strategies

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def engine(float32_engine: Engine) -> Engine:
    # float32: bf16 matmuls are several times slower on CPUs without bf16 units, and the equivalence check is exact.
    return float32_engine


@pytest.fixture(scope="module")
def text() -> str:
    return (EXAMPLES / "heart_of_darkness_opening.txt").read_text(encoding="utf-8")


def test_gist_mask_visibility() -> None:
    # prefix p0 p1 | chunk 0: a b, gist | chunk 1: c d, gist | chunk 2: e, gist | tail q r
    x = layout([10, 11], [1, 2, 3, 4, 5], [20, 21], GistConfig(chunk_tokens=2, rates=(2,)), rate=2)
    assert x.kinds == [PREFIX] * 2 + [RAW, RAW, GIST] * 2 + [RAW, GIST] + [TAIL] * 2
    # Positions of the uncompressed prompt; gists sit on their chunk's last token.
    assert x.positions == [0, 1, 2, 3, 3, 4, 5, 5, 6, 6, 7, 8]
    see = gist_mask(torch.tensor(x.kinds), torch.tensor(x.chunks))
    p0, a, b, g0, c, d, g1, e, g2, q, r = 0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
    assert not see[a, b] and see[b, a] and see[a, p0]  # causal inside a chunk, the prefix for all
    assert see[c, g0] and not see[c, a] and not see[c, b]  # a later chunk reads an earlier one through its gists
    assert see[g1, c] and see[g1, d] and see[g1, g0] and not see[g1, a]  # gists: own chunk and earlier gists
    assert see[e, g1] and see[e, g0] and not see[e, d]
    for tail in (q, r):
        assert see[tail, p0] and all(see[tail, g] for g in (g0, g1, g2))
        assert not any(see[tail, t] for t in (a, b, c, d, e))  # the question and answer see only gists
    assert see[r, q] and not see[q, r]
    assert GistConfig().total_gists(100, 2) == 16 * 3 + 2 and GistConfig().total_gists(100, 4) == 8 * 3 + 1


@pytest.mark.parametrize("rate", [2, 4])
def test_inference_keeps_only_gist_kv(engine: Engine, text: str, rate: int) -> None:
    model = engine.hf_model
    gist = GistModel(model, GistConfig()).eval()
    with torch.no_grad():  # a LoRA that is not zero, so the check covers the adapter's part too
        for name, p in gist.lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(rate))
    context = engine.tokenize(text)[:100]
    before, after = prompt_around(engine, Task("Who is speaking?"))
    answer = engine.tokenize(" Marlow tells the story")
    compressed = gist.compress(model, before, context, rate)
    gists = gist.config.total_gists(100, rate)
    assert compressed.gists == gists and compressed.chunks == 4
    for layer in compressed.cache.layers:  # prefix and gists, not one raw token
        assert layer.keys.shape[-2] == layer.values.shape[-2] == len(before) + gists
    # The answer read from that cache is the one the training pass computes under the gist mask.
    with torch.no_grad():
        ids = torch.tensor([after + answer])
        positions = torch.arange(compressed.next_position, compressed.next_position + ids.shape[1])[None]
        logits = model(input_ids=ids, position_ids=positions, past_key_values=compressed.cache).logits[0]
        reference = gist.answer_logits([layout(before, context, after + answer, gist.config, rate)], [len(answer)])
    assert torch.allclose(logits[-len(answer) - 1 : -1].float(), reference, atol=1e-3)


@pytest.mark.skipif(not SHIPPED.exists(), reason="no trained adapter: run `tome train gist`")
def test_strategy_answers_and_reports_cost(engine: Engine, text: str, strategies: Strategies) -> None:
    from tests.test_compressors import TextOnlyEngine

    document = Document(text[:700])
    tasks = [Task("Where is the ship?", max_answer_tokens=4), Task("Who tells the story?", max_answer_tokens=4)]
    result = run_job(document, tasks, engine, strategy="gist", strategies=strategies)
    first, second = result.answers
    assert result.strategy == "gist" and first.text and second.text
    d = first.details
    n = engine.count_tokens(document.text)
    assert d["document_tokens"] == n and d["gists"] == GistConfig().total_gists(n, 2)
    assert d["kv_positions"] == d["baseline_kv_positions"] - n + d["gists"]
    assert d["kv_bytes"] * d["baseline_kv_positions"] == d["baseline_kv_bytes"] * d["kv_positions"]
    assert d["kv_positions"] < 0.6 * d["baseline_kv_positions"]  # 2x: about half (the prompt prefix is kept whole)
    assert first.cost.calls == d["chunks"] + 2 and second.cost.calls == 1  # the compression is paid once
    assert first.cost.tokens_read > n > second.cost.tokens_read > 0 and first.cost.seconds > 0
    assert Gist().fits(n, tasks, engine) and not Gist().fits(engine.max_context, tasks, engine)
    assert not Gist().fits(n, tasks, TextOnlyEngine(engine))
    assert not Gist(GistStrategyConfig(adapter=Path("/nonexistent.safetensors"))).fits(n, tasks, engine)


def test_training_steps_lower_the_loss(engine: Engine, text: str) -> None:
    torch.manual_seed(0)
    gist = GistModel(engine.hf_model, GistConfig()).train()
    ids = engine.tokenize(text)
    batch = [
        Example(ids[:30] + engine.tokenize(" The ship code is 48213.") + ids[30:40], "What is the ship code?",
                engine.tokenize("48213"), "fact"),
    ]  # fmt: skip
    optimizer = torch.optim.AdamW([p for p in gist.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(5):
        loss, _ = gist_step(engine, gist, batch, rate=4)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_under_a_vllm_reader_gist_runs_on_the_native_engine_over_its_weights(vllm_engine: Engine, text: str) -> None:
    """vLLM cannot take a KV cache in: gist compresses and answers on the reader's weights loaded natively."""
    document = Document(text[:700])
    tasks = [Task("Where is the ship?", max_answer_tokens=4)]
    n = vllm_engine.count_tokens(document.text)
    assert Gist().fits(n, tasks, vllm_engine)
    [answer] = Gist().run(document, tasks, vllm_engine, lambda *a: None)
    assert answer.details["answered_by"] == "native" and answer.text
    assert answer.details["document_tokens"] == n and answer.details["gists"] == GistConfig().total_gists(n, 2)
