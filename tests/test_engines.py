from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from engines import EngineConfig, SamplingParams, create_engine
from engines.base import ContextOverflowError, Engine, SupportsInputEmbeddings, SupportsLayers
from engines.config import resolve_dtype
from engines.copying import CopyTargets, vocabulary_strings
from engines.grounding import NOT_STATED
from engines.models import ModelNotFoundError
from engines.prompting import READER, READERS, answer_from_context
from engines.settings import Settings
from engines.types import Task
from tests.conftest import EXAMPLES

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(params=["native_engine", "vllm_engine"])
def engine(request: pytest.FixtureRequest) -> Engine:
    return request.getfixturevalue(request.param)


def test_protocol_and_tokenizer_round_trip(engine: Engine) -> None:
    assert isinstance(engine, Engine)
    text = "The Nellie, a cruising yawl, swung to her anchor."
    ids = engine.tokenize(text)
    assert engine.count_tokens(text) == len(ids) > 5
    assert engine.detokenize(ids) == text
    assert engine.count_chat_tokens(QUESTION) > engine.count_tokens(QUESTION[0]["content"])


def test_batch_generation_is_greedy_and_ordered(engine: Engine) -> None:
    other = [{"role": "user", "content": "Say the word 'banana' and nothing else."}]
    gens = engine.chat([QUESTION, other, QUESTION], SamplingParams(max_tokens=8))
    assert len(gens) == 3
    assert "paris" in gens[0].text.lower()
    assert "banana" in gens[1].text.lower()
    assert gens[0].text == gens[2].text  # temperature 0: same prompt, same answer, whatever the batch order
    assert all(0 < g.completion_tokens <= 8 and g.prompt_tokens > 10 for g in gens)


def test_stop_strings_cut_the_answer(engine: Engine) -> None:
    msg = [{"role": "user", "content": "Count from 1 to 10 separated by commas."}]
    gen = engine.chat([msg], SamplingParams(max_tokens=40, stop=("5",)))[0]
    assert "4" in gen.text and "5" not in gen.text and "6" not in gen.text


def test_context_overflow_gives_both_numbers(engine: Engine) -> None:
    long = [{"role": "user", "content": "word " * (engine.max_context + 10)}]
    with pytest.raises(ContextOverflowError) as err:
        engine.chat([long], SamplingParams(max_tokens=8))
    assert err.value.needed > engine.max_context == err.value.available
    assert str(engine.max_context) in str(err.value)


def test_capabilities_are_discovered(native_engine: Engine, vllm_engine: Engine) -> None:
    assert isinstance(native_engine, SupportsLayers)
    assert native_engine.hf_model.config.num_hidden_layers == 30
    assert not isinstance(vllm_engine, SupportsLayers)
    assert isinstance(vllm_engine, SupportsInputEmbeddings) and isinstance(native_engine, SupportsInputEmbeddings)
    assert vllm_engine.max_context == 4096 and native_engine.max_context == 8192


def test_settings_override_model_and_context(monkeypatch: pytest.MonkeyPatch, native_engine: Engine) -> None:
    folder = Path(native_engine.path)  # type: ignore[attr-defined]
    monkeypatch.setenv("TOME_MODEL", str(folder))
    monkeypatch.setenv("TOME_MAX_CONTEXT", "2048")
    monkeypatch.setenv("TOME_DTYPE", "float32")
    config = Settings().engine_config()
    assert config.model == str(folder) and config.max_context == 2048
    engine = create_engine(config)
    assert engine.max_context == 2048 and engine.model_name == str(folder)
    assert str(engine.hf_model.dtype) == "torch.float32"  # type: ignore[attr-defined]


def test_auto_dtype_is_bf16_only_where_the_hardware_has_it(native_engine: Engine) -> None:
    assert resolve_dtype("float16", "cpu") == "float16" and resolve_dtype("auto", "cuda") == "bfloat16"
    flags = open("/proc/cpuinfo").read()
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert resolve_dtype("auto", "cpu") == ("bfloat16" if native else "float32")
    expected = resolve_dtype(native_engine.config.dtype, native_engine.device)  # type: ignore[attr-defined]
    assert str(native_engine.hf_model.dtype) == f"torch.{expected}"  # type: ignore[attr-defined]


def test_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="neither an alias"):
        create_engine(EngineConfig(model=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="unknown engine kind"):
        create_engine(EngineConfig(kind="tpu"))  # type: ignore[arg-type]


def test_prompt_embeddings_answer_as_the_token_prompt(engine: Engine, native_engine: Engine) -> None:
    """The chat prompt given as its token embeddings (soft compression's input path) answers as the tokens do."""
    ids = native_engine.hf_tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    embeddings = native_engine.hf_model.get_input_embeddings()(torch.tensor(ids)).detach()
    params = SamplingParams(max_tokens=8)
    from_embeddings = engine.chat_from_embeddings([embeddings, embeddings], params)  # type: ignore[attr-defined]
    from_tokens = engine.chat([QUESTION], params)[0]
    assert [g.text for g in from_embeddings] == [from_tokens.text] * 2 and "paris" in from_tokens.text.lower()
    assert from_embeddings[0].prompt_tokens == len(ids) == from_tokens.prompt_tokens
    long = embeddings[:1].expand(engine.max_context, -1)
    with pytest.raises(ContextOverflowError):
        engine.chat_from_embeddings([long], params)  # type: ignore[attr-defined]


def test_the_shipped_reader_copies_a_stated_answer_and_says_when_the_text_does_not(native_engine: Engine) -> None:
    """The reader adapter over a passage it never trained on: the answer copied as written, and for a fact the
    passage lacks, the abstention it was trained to give (where the base model makes something up). Every refusal
    stands here (reader_abstain_at 0); the next test lets an unconvinced one become a copy."""
    assert (READERS["smollm2"] / "adapter_model.safetensors").exists()
    text = (EXAMPLES / "heart_of_darkness_opening.txt").read_text(encoding="utf-8")[:3000]
    tasks = [Task("What was the name of the cruising yawl?"), Task("What colour was Marlow's aunt's cat?")]
    config = native_engine.config  # type: ignore[attr-defined]
    replies = {}
    try:
        for setting in ("auto", "none"):
            native_engine.config = replace(config, reader_adapter=setting, reader_abstain_at=0.0)  # type: ignore[attr-defined]
            replies[setting] = [answer_from_context(native_engine, text, [t], "rag", [])[0].text for t in tasks]
    finally:
        native_engine.config = config  # type: ignore[attr-defined]
    assert READER in native_engine.adapters  # type: ignore[attr-defined]
    assert "Nellie" in replies["auto"][0]
    assert replies["auto"][1] == NOT_STATED != replies["none"][1]


def test_copy_targets_keep_a_reply_a_word_aligned_piece_of_the_text(native_engine: Engine) -> None:
    vocabulary = vocabulary_strings(native_engine.hf_tokenizer)  # type: ignore[attr-defined]
    text = "The Nellie, a cruising yawl, swung to her anchor. NELLIE waited."
    targets = CopyTargets(text, vocabulary)
    assert targets.occurrences("nellie") == [4, 50] and targets.occurrences("ellie") == []  # not mid-word
    allowed = targets.next("a cruising ya")
    assert allowed and all(("a cruising ya" + vocabulary.strings[t].lower()) in text.lower() for t in allowed)
    assert targets.ends_word("a cruising yawl") and not targets.ends_word("a cruising ya")
    assert targets.next("a sailing") == set()


def test_an_unconvinced_refusal_becomes_the_span_the_reader_would_copy(native_engine: Engine) -> None:
    """The reader refuses a question its passage does not answer; with reader_abstain_at above the refusal's
    probability the answer is a word-aligned copy of the passage instead (the refusal kept in its details), at 0
    the refusal stands."""
    text = (EXAMPLES / "heart_of_darkness_opening.txt").read_text(encoding="utf-8")[:3000]
    task = Task("What colour was Marlow's aunt's cat?")
    config = native_engine.config  # type: ignore[attr-defined]
    answers = {}
    try:
        for threshold in (0.0, 1.0):
            native_engine.config = replace(config, reader_abstain_at=threshold)  # type: ignore[attr-defined]
            answers[threshold] = answer_from_context(native_engine, text, [task], "rag", [])[0]
    finally:
        native_engine.config = config  # type: ignore[attr-defined]
    kept, copied = answers[0.0], answers[1.0]
    assert kept.text == NOT_STATED and "refused" not in kept.details and kept.cost.calls == 1
    assert copied.details["refused"] == NOT_STATED and 0 < copied.details["refusal_probability"] < 1
    assert copied.text and copied.text != NOT_STATED and copied.cost.calls == 2
    assert CopyTargets(text, vocabulary_strings(native_engine.hf_tokenizer)).occurrences(copied.text.lower())  # type: ignore[attr-defined]
