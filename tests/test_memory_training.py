"""Training the memagent step: no evaluation item leaks into the data, training learns, the adapter loads in both
engines and changes what they say, and memagent reads with the base model when the adapter is missing."""

from __future__ import annotations

import random
import re

import pytest

from engines.base import SamplingParams
from engines.types import Document, Task
from evals.corpus import EVAL_DOCS, TRAINING_CORPUS, read_doc, training_documents
from evals.memagent_data import PROSE, TEST_WORDS, TRAIN_SEED_START, StepMaker, make_examples, reworded
from evals.tasks import EVAL_SEEDS, generate
from memory.memagent import ADAPTER_NAME, ADAPTERS, SMOLLM2_ADAPTER, MemAgent, MemAgentConfig

pytestmark = pytest.mark.skipif(not TRAINING_CORPUS.is_dir(), reason=f"the training corpus {TRAINING_CORPUS} is absent")

ADAPTER = SMOLLM2_ADAPTER
PLANTED_FACT = "The lighthouse keeper's dog was called Biscuit Magnolia."  # tests/test_memory.py's FACT


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if len(s) >= 40]


def test_training_data_never_uses_evaluation_documents_or_seeds(native_engine):
    docs = training_documents(TRAINING_CORPUS)
    assert docs and not {d.name for d in docs} & set(EVAL_DOCS)
    with pytest.raises(ValueError):
        make_examples(native_engine.count_tokens, 1, first_seed=EVAL_SEEDS.stop - 1)
    examples = make_examples(native_engine.count_tokens, 40, segment_tokens=(128, 256))
    assert TRAIN_SEED_START >= EVAL_SEEDS.stop and all(e.seed >= EVAL_SEEDS.stop for e in examples)
    assert {e.kind for e in examples} == {"update", "answer"}
    held_out = "\n".join(read_doc(name) for name in EVAL_DOCS)
    training_text = "\n".join(m["content"] + "\n" + e.target for e in examples for m in e.messages)
    sentences = _sentences(training_text)
    assert len(sentences) > 200  # real text was read, so the check below means something
    leaked = [s for s in sentences if s in held_out and not s.startswith(("Copy word for word", "You copy"))]
    assert not leaked, leaked[:3]
    # Every copied line of an update target is in its prompt, verbatim; prose facts are in the mix.
    for e in examples:
        if e.kind == "update" and e.target != "NONE":
            assert all(line in e.messages[1]["content"] for line in e.target.splitlines()), (e.family, e.seed)
    assert {"prose", "niah_multikey"} <= {e.family for e in examples}
    # The tests' own planted fact (tests/test_memory.py) is never trained on.
    assert PLANTED_FACT not in training_text and "Biscuit Magnolia" not in training_text
    # The evaluation's own items (their needles, keys and values) never occur in training text.
    # (bAbI facts are left out: like bAbI's own splits, train and test share its few names and places.)
    for task in ("niah_single", "niah_multikey", "vt"):
        for seed in range(3):
            for item in generate(task, native_engine, 2048, seed).unique:
                assert item not in training_text, (task, seed, item)


def test_prose_facts_are_varied_asked_in_other_words_and_never_the_tests_own(native_engine):
    maker = StepMaker(native_engine.count_tokens)
    facts = [maker.prose(random.Random(f"test:prose:{i}")) for i in range(400)]
    planted = [next(iter(f.relevant)) for f in facts]
    assert len(set(planted)) > 390 and len({f.question.question for f in facts}) > 350
    # Many relations and phrasings: nearly every fact template of every relation is used.
    templates = [t for facts_of, _ in PROSE.values() for t in facts_of]
    shape = lambda t: re.compile(re.sub(r"\\\{[a-z]\\\}", ".+", re.escape(t)), re.IGNORECASE)  # noqa: E731
    used = [t for t in templates if any(shape(t).fullmatch(p) for p in planted)]
    assert len(used) >= 0.9 * len(templates), sorted(set(templates) - set(used))
    for f, fact in zip(facts, planted, strict=True):
        assert reworded(f.question.question, fact), (f.question.question, fact)  # asked in other words
        assert f.answer.removeprefix("under the ").lower() in fact.lower() and fact in f.story
        assert not (fact in f.notes and fact in f.segment)  # read before, in this segment, or still to come
    # No word of the tests' own planted facts builds a training fact.
    text = "\n".join(s + "\n" + f.question.question for f in facts for s in f.story).lower()
    assert not [w for w in TEST_WORDS if re.search(rf"\b{w}\b", text)]


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(native_engine):
    import torch

    from engines.settings import Settings
    from memory.training import encode_all, load_base, mean_loss, train, with_lora

    torch.manual_seed(0)
    base, tokenizer = load_base("smollm2", Settings().home)
    batch = encode_all(tokenizer, make_examples(native_engine.count_tokens, 3, segment_tokens=(160, 200)), 512)
    model = with_lora(base, rank=8, alpha=16)
    before = mean_loss(model, batch)
    train(model, batch, steps=9, lr=1e-3, warmup=1)
    after = mean_loss(model, batch)
    assert after < 0.7 * before, (before, after)


def _update_probe(engine) -> list[list[dict[str, str]]]:
    """A multikey update step (training-style seeds above the held-out ones): copy only the asked needle."""
    example = next(
        e
        for e in make_examples(engine.count_tokens, 30, first_seed=TRAIN_SEED_START + 900_000, segment_tokens=(96, 160))
        if e.kind == "update" and e.family == "niah_multikey" and e.target != "NONE"
    )
    return [example.messages]


@pytest.mark.skipif(not (ADAPTER / "adapter_model.safetensors").exists(), reason="no trained adapter shipped")
@pytest.mark.parametrize("kind", ["native", "vllm"])
def test_adapter_loads_in_both_engines_and_changes_the_output(kind, request):
    engine = request.getfixturevalue(f"{kind}_engine")
    probe = _update_probe(engine)
    params = MemAgent().update_params()
    base = engine.chat(probe, params)[0].text
    engine.load_adapter(ADAPTER_NAME, ADAPTER)
    engine.load_adapter(ADAPTER_NAME, ADAPTER)  # loading again is a no-op
    tuned = engine.chat(probe, MemAgent().update_params(ADAPTER_NAME))[0].text
    assert tuned != base
    assert engine.chat(probe, params)[0].text == base  # calls without the adapter still get the base model


def test_memagent_reads_with_the_base_model_when_the_adapter_is_missing(native_engine, tmp_path, monkeypatch):
    monkeypatch.setitem(ADAPTERS, "smollm2", tmp_path / "no-adapter")
    agent = MemAgent(MemAgentConfig(segment_tokens=300))
    assert agent.adapter(native_engine) is None
    assert MemAgent(MemAgentConfig(adapter=str(tmp_path / "missing"))).adapter(native_engine) is None
    assert MemAgent(MemAgentConfig(adapter="none")).adapter(native_engine) is None
    fact = "The harbour master's cat was called Pepper Willow."
    filler = " ".join(["The tide came in slowly over the grey stones of the quay."] * 12)
    document = Document(f"{filler}\n\n{fact}\n\n{filler}")
    [answer] = agent.run(document, [Task("What was the harbour master's cat called?")], native_engine, lambda *a: None)
    # It read every segment and answered, all with the base model (the answer's quality is the evals' business).
    assert answer.details["adapter"] is None and answer.details["segments"] >= 2
    assert answer.cost.calls == answer.details["segments"] + 1 and answer.text
    if (ADAPTER / "adapter_model.safetensors").exists():  # a listed adapter is picked by default
        monkeypatch.setitem(ADAPTERS, "smollm2", ADAPTER)
        assert MemAgent().adapter(native_engine) == ADAPTER_NAME
        native_engine.chat([[{"role": "user", "content": "Hi"}]], SamplingParams(max_tokens=2, adapter=ADAPTER_NAME))
