"""`compllm` soft compression on the real SmolLM2: cache round trip, exact rates, the trained adapter."""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from compressors.soft.cache import RedisSegmentCache, SegmentCache, segment_key
from compressors.soft.data import REPEAT, ExampleMaker
from compressors.soft.model import (
    EARLY,
    SHIPPED,
    CompressorConfig,
    CompressorMismatchError,
    SegmentCompressor,
    adapter_config,
    load_compressor,
    read_config,
    save_adapter,
)
from compressors.soft.selection import raw_segments
from compressors.soft.strategy import (
    CompLLM,
    CompLLMConfig,
    build_prompts,
    cache_for,
    compress,
    compressed_length,
    compressor_for,
    prompt_embeddings,
)
from compressors.soft.train import answer_logits, held_out_reconstruction, reconstruction_step
from engines import EngineConfig, create_engine
from engines.base import Engine, SamplingParams
from engines.prompting import prompt_around
from engines.text import plant, words_of
from engines.types import Document, Task
from workflows.graph import run_job
from workflows.registry import Strategies

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.skipif(not SHIPPED.exists(), reason="no trained adapter: run `tome train compllm`")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    home = tmp_path_factory.mktemp("tome-home")  # a private segment cache; the models are the real ones
    (home / "models").symlink_to(EngineConfig().home / "models")
    return create_engine(EngineConfig(kind="native", device="cpu", home=home))


@pytest.fixture(scope="module")
def text() -> str:
    return (EXAMPLES / "heart_of_darkness_opening.txt").read_text(encoding="utf-8")


def test_cached_segment_round_trips_bit_identical(engine: Engine, text: str, tmp_path: Path) -> None:
    compressor = load_compressor(engine.hf_model)
    ids = engine.tokenize(text)[:32]
    with torch.inference_mode():
        vectors = compressor([ids], 2)[0]
    cache = SegmentCache(tmp_path)
    key = segment_key("adapter", 2, ids)
    assert cache.get(key) is None
    cache.put(key, vectors)
    back = cache.get(key)
    assert back is not None and back.dtype == vectors.dtype and torch.equal(back, vectors)
    assert segment_key("adapter", 4, ids) != key and segment_key("other", 2, ids) != key

    # Through the strategy's path: a second pass over the same text computes nothing and gives the same bytes.
    first = compress(engine, text[:3000], CompLLMConfig(rate=2, segment_rate=2))
    second = compress(engine, text[:3000], CompLLMConfig(rate=2, segment_rate=2))
    assert first.cached == 0 and second.cached == second.segments == first.segments
    assert second.passes == 0 and torch.equal(first.vectors, second.vectors)


def test_redis_segment_cache_round_trips_and_serves_the_strategy(engine: Engine, text: str) -> None:
    """The stack's cache (real Redis on 127.0.0.1): same bytes back, one MGET for a document, shared by any worker."""
    url = os.environ.get("TOME_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"tome-test:{uuid.uuid4().hex}:"
    cache = RedisSegmentCache(url, prefix=prefix, ttl=600)
    try:
        compressor = load_compressor(engine.hf_model)
        ids = engine.tokenize(text)[:32]
        with torch.inference_mode():
            vectors = compressor([ids], 4)[0]
        key = segment_key("adapter", 4, ids)
        assert cache.get_many([key, "absent"]) == [None, None]
        cache.put(key, vectors)
        back = cache.get(key)
        assert back is not None and back.dtype == vectors.dtype and torch.equal(back, vectors)
        assert 0 < cache.client.ttl(prefix + key) <= 600

        # The strategy with a Redis URL: the second pass over a document reads every segment from Redis.
        config = CompLLMConfig(rate=4, cache_url=url)
        document = text[9000:10500]
        strategy_cache = cache_for(engine, url)
        assert isinstance(strategy_cache, RedisSegmentCache)
        digest = compressor_for(engine, config.adapter)[1]
        ids, size = engine.tokenize(document), compressor.config.segment_tokens
        keys = [strategy_cache.prefix + segment_key(digest, 4, ids[i : i + size]) for i in range(0, len(ids), size)]
        strategy_cache.client.delete(*keys)  # cold, whatever ran before
        first = compress(engine, document, config)
        second = compress(engine, document, config)
        assert first.cached == 0 and second.cached == second.segments == first.segments == len(keys)
        assert second.passes == 0 and torch.equal(first.vectors, second.vectors)
        assert strategy_cache.client.exists(*keys) == len(keys)
        strategy_cache.client.delete(*keys)
    finally:
        for k in cache.client.scan_iter(prefix + "*"):
            cache.client.delete(k)


@pytest.mark.parametrize("rate", [2, 4])
def test_compressed_input_is_rate_times_shorter(engine: Engine, text: str, rate: int) -> None:
    size = read_config(SHIPPED).segment_tokens
    ids = engine.tokenize(text)
    exact = engine.detokenize(ids[: 8 * size])
    n = engine.count_tokens(exact)
    got = compress(engine, exact, CompLLMConfig(rate=rate, segment_rate=rate, cache=False))
    assert got.document_tokens == n
    assert got.vectors.shape == (compressed_length(n, size, rate), engine.hf_model.config.hidden_size)
    if n % size == 0:
        assert got.vectors.shape[0] * rate == n
    task = Task("Who is speaking?")
    before, after = prompt_around(engine, task)
    prompt = prompt_embeddings(engine, got.vectors, task)
    assert prompt.shape[0] == len(before) + got.vectors.shape[0] + len(after)
    generation = engine.chat_from_embeddings([prompt], SamplingParams(max_tokens=4))[0]
    assert generation.prompt_tokens == prompt.shape[0] and generation.completion_tokens >= 1


def test_fits_needs_input_embeddings_and_room(engine: Engine) -> None:
    from tests.test_compressors import TextOnlyEngine

    task = [Task("What is it?")]
    assert CompLLM().fits(12_000, task, engine)  # 2x: 6K vectors, where `full` could not take 12K tokens
    assert not CompLLM().fits(20_000, task, engine)
    assert CompLLM(CompLLMConfig(rate=4)).fits(20_000, task, engine)
    assert not CompLLM().fits(1000, task, TextOnlyEngine(engine))
    assert not CompLLM(CompLLMConfig(adapter=Path("/nonexistent.safetensors"))).fits(1000, task, engine)


def test_job_answers_and_second_question_reuses_segments(engine: Engine, text: str, strategies: Strategies) -> None:
    """The default is question-aware: the first question compresses every segment it does not read raw, the second
    reads those back and compresses only the ones the first left raw and it does not."""
    document = Document(text[4000:6500])  # text no earlier test compressed: this job starts with a cold cache
    first = run_job(
        document, [Task("Where is the ship?", max_answer_tokens=8)], engine, strategy="compllm", strategies=strategies
    )
    second = run_job(
        document, [Task("Who tells the story?", max_answer_tokens=8)], engine, strategy="compllm", strategies=strategies
    )
    a, b = first.answers[0], second.answers[0]
    assert first.strategy == second.strategy == "compllm" and a.text and b.text
    assert 0 < a.details["raw_segments"] < a.details["segments"]
    assert a.details["cached_segments"] == 0
    assert a.details["compressed_segments"] == a.details["segments"] - a.details["raw_segments"]
    assert b.details["cached_segments"] == a.details["compressed_segments"]
    assert b.details["compressed_segments"] <= a.details["raw_segments"] < a.details["compressed_segments"]


def test_raw_segments_fill_the_budget_best_first() -> None:
    sizes = [32] * 10 + [5]  # 2x budget: 16 a segment (3 for the last); at 4x a segment costs 8 (2), raw 32 (5)
    scores = [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.0, 0.0, 0.0, 0.0, 0.5]
    raw = raw_segments(scores, sizes, rate=2, segment_rate=4)
    assert raw == {1, 3, 5, 10}  # three best full segments (3 x 24 of 81 spare), then only the short one still fits
    vectors = sum(n if i in raw else -(-n // 4) for i, n in enumerate(sizes))
    assert vectors <= sum(-(-n // 2) for n in sizes)
    assert raw_segments(scores, sizes, rate=4, segment_rate=4) == set()
    with pytest.raises(ValueError, match="rate <= segment_rate"):
        CompLLMConfig(rate=4, segment_rate=2)  # the budget cannot be tighter than the compressor's rate


def test_question_aware_prompt_reads_the_fact_raw_within_the_budget(engine: Engine, text: str) -> None:
    """At 2x with the rest at 4x the segments holding a planted fact are read as tokens and the answer is right; the
    prompt is no longer than the document compressed at 2x, and only the other segments ran the compressor."""
    body = text  # about 2.4K tokens
    cut = body.index(". ", len(body) // 2) + 2
    fact = "The special magic number for harbour-gate is: 4821376. "
    document = body[:cut] + fact + body[cut:]
    task = Task(
        "What is the special magic number for harbour-gate mentioned in the provided text?", max_answer_tokens=24
    )
    built = build_prompts(engine, document, [task], CompLLMConfig(cache=False))
    compressed, raw = built.compressed, built.raw[0]
    size, n = read_config(SHIPPED).segment_tokens, built.compressed.document_tokens
    before, after = prompt_around(engine, task)
    context = built.embeddings[0].shape[0] - len(before) - len(after)
    assert compressed_length(n, size, 4) < context <= compressed_length(n, size, 2)
    ends = [len(engine.detokenize([t for s in compressed.ids[: i + 1] for t in s])) for i in range(len(compressed.ids))]
    holding = {i for i, end in enumerate(ends) if end > cut and (i == 0 or ends[i - 1] < cut + len(fact))}
    assert holding and holding <= raw
    assert all((p is None) == (i in raw) for i, p in enumerate(compressed.pieces))  # raw ones never compressed
    answer = engine.chat_from_embeddings(built.embeddings, SamplingParams(max_tokens=24))[0].text  # type: ignore[attr-defined]
    assert "4821376" in answer, answer

    agnostic = build_prompts(engine, document, [task], CompLLMConfig(rate=2, segment_rate=2, cache=False))
    assert agnostic.raw == [set()]
    assert agnostic.embeddings[0].shape[0] - len(before) - len(after) == compressed_length(n, size, 2)


def test_compllm_on_vllm_compresses_natively_and_answers_from_prompt_embeddings(
    engine: Engine, vllm_engine: Engine, text: str
) -> None:
    """vLLM has no layers: the segments are compressed by a native engine over the same weights, and vLLM reads the
    vectors as prompt embeddings: the same prompt, vector for vector, as the native engine would build."""
    from engines.base import SupportsLayers

    assert not isinstance(vllm_engine, SupportsLayers)
    document, task = Document(text[6500:8000]), Task("Who is on the deck?", max_answer_tokens=8)
    assert CompLLM().fits(1000, [task], vllm_engine)
    answer = CompLLM().run(document, [task], vllm_engine, lambda *a: None)[0]
    prompt = build_prompts(engine, document.text, [task], CompLLMConfig()).embeddings[0]
    assert answer.details["input_vectors"] == prompt.shape[0]  # 2x: the document half as many vectors as tokens
    assert answer.details["input_vectors"] < engine.count_tokens(document.text)
    again = vllm_engine.chat_from_embeddings([prompt], SamplingParams(max_tokens=8))[0]  # type: ignore[attr-defined]
    assert answer.text and answer.text == again.text


def planted(engine: Engine, text: str, rng: random.Random) -> tuple[list[int], Task, list[int]]:
    """About 150 tokens of held-out text (an evaluation document) with a fact of the test's own making."""
    words = [w for w in text.split() if w.isalpha() and w.islower() and len(w) > 4]
    key, value = f"{rng.choice(words)} {rng.choice(words)}", str(rng.randint(1000, 99999))
    start = rng.randrange(0, len(text) - 2000)
    body = plant(words_of(text[start : start + 700]), [(1 / 3, f"The {key} code is {value}.")])
    context = engine.tokenize(body)
    return context, Task(f"What is the {key} code?"), engine.tokenize(value)


@torch.no_grad()
def answer_nll(engine: Engine, compressor: SegmentCompressor, needles: list, rate: int) -> float:
    model, size = engine.hf_model, compressor.config.segment_tokens
    embed = model.get_input_embeddings()
    total = count = 0.0
    for context, task, answer in needles:
        vectors = torch.cat(compressor([context[i : i + size] for i in range(0, len(context), size)], rate))
        before, after = prompt_around(engine, task)
        row = torch.cat([embed(torch.tensor(before)), vectors, embed(torch.tensor(after + answer))])
        logits = answer_logits(model, [row], [len(before) + vectors.shape[0] + len(after)], [len(answer)])
        total += F.cross_entropy(logits, torch.tensor(answer), reduction="sum").item()
        count += len(answer)
    return total / count


@pytest.mark.parametrize("adapter", [SHIPPED, EARLY], ids=["all-layers", "first-8-layers"])
def test_trained_adapter_beats_untrained_on_held_out_needles(engine: Engine, text: str, adapter: Path) -> None:
    rng = random.Random("held-out-needles")
    needles = [planted(engine, text, rng) for _ in range(8)]
    trained = load_compressor(engine.hf_model, adapter)
    untrained = SegmentCompressor(engine.hf_model, read_config(adapter)).eval()  # same shape, LoRA and head at init
    layers = read_config(adapter).layers or len(engine.hf_model.model.layers)
    assert len(trained.lm.model.layers) == layers and len(engine.hf_model.model.layers) == 30  # the engine keeps all
    for rate in (2, 4):
        better, worse = answer_nll(engine, trained, needles, rate), answer_nll(engine, untrained, needles, rate)
        assert better < worse, (rate, better, worse)


def test_a_compressor_trained_for_another_model_is_refused(engine: Engine, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    config = adapter_config(SHIPPED)
    assert config["base_model"] == Path(engine.hf_model.config.name_or_path).name  # the shipped one fits
    other = tmp_path / "other.safetensors"
    save_adapter(other, load_file(str(SHIPPED)), {**config, "base_model": "Llama-3.1-8B-Instruct"})
    with pytest.raises(CompressorMismatchError, match="trained for Llama-3.1-8B-Instruct, not SmolLM2-135M-Instruct"):
        load_compressor(engine.hf_model, other)


def test_compressor_layers_out_of_range_are_refused(engine: Engine) -> None:
    for layers in (-1, len(engine.hf_model.model.layers) + 1):
        with pytest.raises(ValueError, match="decoder layers"):
            SegmentCompressor(engine.hf_model, CompressorConfig(layers=layers))


def test_reconstruction_objective_learns_to_repeat_a_batch(engine: Engine, text: str) -> None:
    """The reconstruction objective: every context token is a target, and a few steps on one batch lower its CE
    while the frozen model reading the text itself repeats it far better than from the untrained slots."""
    maker = ExampleMaker([text], engine.hf_tokenizer, 32, 16, seed=0)
    examples = [maker.reconstruction(32) for _ in range(4)]
    assert all(ex.answer == ex.context and 0 < len(ex.context) <= 32 and ex.question == REPEAT for ex in examples)
    torch.manual_seed(0)
    compressor = SegmentCompressor(engine.hf_model, read_config(SHIPPED))  # LoRA and head at init
    before = held_out_reconstruction(engine, compressor, examples, (2,), batch=4)
    assert before["recon_acc_full"] > before["recon_acc@2"] + 0.3
    head = list(compressor.head.parameters())  # as the trainer does: the head learns 50x slower than the rest
    rest = [p for p in compressor.parameters() if p.requires_grad and all(p is not h for h in head)]
    optimizer = torch.optim.AdamW([{"params": rest, "lr": 1e-3}, {"params": head, "lr": 2e-5}])
    for _ in range(6):
        loss, stats = reconstruction_step(engine, compressor, examples, 2)
        assert 0 <= stats["recon_acc"] <= 1
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = held_out_reconstruction(engine, compressor, examples, (2,), batch=4)
    assert after["recon_ce@2"] < before["recon_ce@2"] - 1.0 and after["recon_acc@2"] > before["recon_acc@2"], (
        before,
        after,
    )
