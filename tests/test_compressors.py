"""The `hard` and `gemfilter` compressors on the real SmolLM2 and real corpus text."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from compressors.attention import num_layers
from compressors.calibration import calibrate, plant_needle
from compressors.gemfilter import (
    GemFilter,
    GemFilterConfig,
    NoLayerAccessError,
    best_units,
    contrast_scores,
    prompt_around,
    reading,
    score_context,
    select,
    unit_scores,
    units_of,
)
from compressors.hard import HardCompression, HardConfig, compress
from compressors.layer_store import SHIPPED, load_store, model_key, save_entry, stored_layer
from engines import create_engine
from engines.base import Engine, Generation, Message, SamplingParams
from engines.internals import selection_engine
from engines.models import resolve_model
from engines.prompting import answer_overhead
from engines.segmenting import sentence_spans
from engines.settings import Settings
from engines.types import Document, Task, no_progress
from workflows.graph import run_job
from workflows.registry import Strategies

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FACTION = "What are the two methods of curing the mischiefs of faction?"


class TextOnlyEngine:
    """A real engine seen through the base protocol alone, as the vLLM engines are: no layer access."""

    name = "text-only"

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.model_name = inner.model_name

    @property
    def max_context(self) -> int:
        return self.inner.max_context

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def tokenize(self, text: str) -> list[int]:
        return self.inner.tokenize(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.inner.detokenize(ids)

    def chat(self, conversations: Sequence[Sequence[Message]], params: SamplingParams) -> list[Generation]:
        return self.inner.chat(conversations, params)

    def count_chat_tokens(self, messages: Sequence[Message]) -> int:
        return self.inner.count_chat_tokens(messages)


@pytest.fixture(scope="module")
def engine(native_engine: Engine) -> Engine:
    return native_engine


@pytest.fixture(scope="module")
def federalist() -> str:
    return (EXAMPLES / "federalist_10.md").read_text(encoding="utf-8")


def within(actual: int, target: int, tolerance: float = 0.05) -> bool:
    return abs(actual - target) <= tolerance * target


def test_hard_meets_token_and_rate_budgets(engine: Engine, federalist: str) -> None:
    document_tokens = engine.count_tokens(federalist)
    by_tokens = compress(engine, federalist, FACTION, HardConfig(target_tokens=400))
    assert by_tokens.stages == "coarse+fine"
    assert by_tokens.tokens == engine.count_tokens(by_tokens.text)
    assert within(by_tokens.tokens, 400), by_tokens.tokens
    by_rate = compress(engine, federalist, FACTION, HardConfig(rate=0.15))
    assert within(by_rate.tokens, round(0.15 * document_tokens)), (by_rate.tokens, document_tokens)
    # The evidence is the document's own sentences, readable as they stand.
    assert by_rate.spans and all(federalist[e.start : e.end] == e.text for e in by_rate.spans)


def test_hard_strategy_rate_counts_the_whole_prompt(engine: Engine) -> None:
    """`rate=1/3` means the answering model reads at most a third of what the uncompressed prompt holds."""
    task = Task(FACTION)
    overhead = answer_overhead(engine, task)
    for document_tokens in (3000, 8000):
        budget = HardCompression().budget(document_tokens, task, engine)
        assert 0 < budget and 3 * (budget + overhead) <= document_tokens + overhead + 3


def test_hard_without_layer_access_is_coarse_only_and_meets_budget(engine: Engine, federalist: str) -> None:
    plain = TextOnlyEngine(engine)
    result = compress(plain, federalist, FACTION, HardConfig(rate=0.25))
    assert result.stages == "coarse" and result.passes == 0
    assert within(result.tokens, round(0.25 * engine.count_tokens(federalist))), result.tokens
    with pytest.raises(NoLayerAccessError, match="native engine"):
        select(plain, federalist, Task(FACTION))


def test_hard_keeps_the_relevant_number(engine: Engine, federalist: str) -> None:
    middle = federalist.index("\n\n", len(federalist) // 2)
    text = federalist[:middle] + "\n\nThe convention counted 4411 delegates at the final vote." + federalist[middle:]
    question = "How many delegates did the convention count at the final vote?"
    result = compress(engine, text, question, HardConfig(rate=0.1))
    assert "4411" in result.text
    assert within(result.tokens, round(0.1 * engine.count_tokens(text)))


def test_gemfilter_with_all_layers_equals_plain_attention_ranking(float32_engine: Engine) -> None:
    exact = float32_engine
    model = exact.hf_model  # type: ignore[attr-defined]
    text = (EXAMPLES / "heart_of_darkness_opening.txt").read_text(encoding="utf-8")[:3000]
    task = Task("What is the name of the cruising yawl?")
    layers = num_layers(model)
    before, after = prompt_around(exact, task)
    context = exact.tokenize(text)
    ids = torch.tensor([[*before, *context, *after]])
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            attentions = model(input_ids=ids, output_attentions=True, use_cache=False).attentions
    finally:
        model.set_attn_implementation("sdpa")
    # Plain attention of the last layer, summed over heads: from the last position, or averaged over the question's.
    last_layer = attentions[layers - 1][0, :, :, len(before) : len(before) + len(context)].sum(dim=0)
    for queries, rows in (("last", last_layer[-1:]), ("question", last_layer[-len(after) :])):
        plain = rows.mean(dim=0)
        smoothed = F.avg_pool1d(plain[None, None], 5, stride=1, padding=2, count_include_pad=False)[0, 0]
        config = GemFilterConfig(layer=layers, top_k=64, queries=queries, unit="token", contrast=False)
        chosen = select(exact, text, task, config)
        assert chosen.passes == 1 and len(chosen.positions) == 64
        assert chosen.positions == sorted(smoothed.topk(64).indices.tolist()), queries
    # Whole sentences, ranked by the mean of their three best word tokens' plain (unsmoothed) attention.
    offsets = exact.hf_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    units = units_of(offsets, text, "sentence", 128)
    votes = torch.tensor([any(ch.isalnum() for ch in text[s:e]) for s, e in offsets])
    ranked = unit_scores([len(u) for u in units], last_layer[-len(after) :].mean(dim=0), votes, 3)
    chosen = select(exact, text, task, GemFilterConfig(layer=layers, top_k=200, contrast=False))
    expected = best_units(units, ranked, 200)
    assert chosen.positions == [p for u in sorted(expected, key=lambda u: u.start) for p in u]
    assert 200 - 128 < len(chosen.positions) <= 200


def test_sentence_units_cover_the_document_and_keep_sentences_whole(engine: Engine, federalist: str) -> None:
    text = federalist + " One of the codes is: 7f3c9e2a-1b4d-4e8f-a0c6-5d2e8b9f1a37. And the text ends."
    offsets = engine.hf_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    units = units_of(offsets, text, "sentence", 64)
    assert [p for u in units for p in u] == list(range(len(offsets)))  # every token once, in order
    assert max(len(u) for u in units) <= 64 and len(units) > len(sentence_spans(text))  # long ones are cut
    starts = [s for s, _ in sentence_spans(text)]
    for u in units:  # no unit crosses a sentence boundary
        first, last = (max(i for i, s in enumerate(starts) if s <= offsets[p][1] - 1) for p in (u[0], u[-1]))
        assert first == last, text[offsets[u[0]][0] : offsets[u[-1]][1]]
    whole = {text[offsets[u[0]][0] : offsets[u[-1]][1]].strip() for u in units}
    assert "One of the codes is: 7f3c9e2a-1b4d-4e8f-a0c6-5d2e8b9f1a37." in whole
    assert units_of(offsets, text, "token", 40) == [range(i, i + 1) for i in range(len(offsets))]
    with pytest.raises(ValueError, match="unit"):
        units_of(offsets, text, "paragraph", 40)


def test_units_score_their_best_word_tokens_and_fill_the_budget() -> None:
    sizes = [3, 2, 4, 1]
    scores = torch.tensor([0.1, 0.9, 0.2, 0.5, 0.4, 0.3, 0.3, 0.3, 0.3, 0.8])
    votes = torch.tensor([True, False, True, True, True, True, True, True, True, False])
    best = unit_scores(sizes, scores, votes, 1)  # the 0.9 and 0.8 belong to tokens that do not vote
    assert best[:3].tolist() == pytest.approx([0.2, 0.5, 0.3]) and best[3] == float("-inf")
    assert unit_scores(sizes, scores, votes, 0)[:3].tolist() == pytest.approx([0.15, 0.45, 0.3])
    assert unit_scores(sizes, scores, votes, 2)[2].item() == pytest.approx(0.3)
    units = [range(0, 3), range(3, 5), range(5, 9), range(9, 10)]
    # Best first while they fit: 2 tokens, then the 4-token unit would overflow 5, the 3-token one fits.
    assert best_units(units, best, 5) == [range(3, 5), range(0, 3)]
    single = [range(i, i + 1) for i in range(10)]
    assert sorted(u.start for u in best_units(single, scores, 4)) == sorted(scores.topk(4).indices.tolist())


def test_gemfilter_contrast_shares_one_context_pass_and_equals_two_separate_passes(float32_engine: Engine) -> None:
    """contrast=True scores the question against a question-less prompt over one KV-cached pass of the context."""
    exact = float32_engine
    model = exact.hf_model  # type: ignore[attr-defined]
    text = (EXAMPLES / "heart_of_darkness_opening.txt").read_text(encoding="utf-8")[:1500]
    before, after = prompt_around(exact, Task("What is the name of the cruising yawl?"))
    neutral = prompt_around(exact, Task(""))[1]
    context = exact.tokenize(text)
    layer = 19
    asked, plain = (score_context(model, before, context, ending, layer, 1) for ending in (after, neutral))
    damp = 0.1 * plain.mean()
    shared = contrast_scores(model, before, context, after, neutral, layer)
    assert shared.shape == (len(context),)
    torch.testing.assert_close(shared, (asked + damp) / (plain + damp), rtol=1e-4, atol=1e-6)


def walden(engine: Engine, tokens: int) -> str:
    ids = engine.tokenize((EXAMPLES / "walden_long.txt").read_text(encoding="utf-8"))
    assert len(ids) >= tokens, "the Walden example is shorter than the test needs"
    return engine.detokenize(ids[:tokens])


@pytest.mark.slow
def test_chunked_selection_finds_facts_at_start_middle_and_end_of_32k(engine: Engine) -> None:
    # One fact per question, as in niah_single. (One question for three values of one key keeps only the last
    # value at 32K: a measured limit of single-pass selection with SmolLM2, not asserted here.)
    text = walden(engine, 32_000)
    rng = random.Random(7)
    needles = []
    for depth in (0.02, 0.5, 0.98):
        needles.append(plant_needle(text, depth, rng))
        text = needles[-1].text
    missing = []
    for where, needle in zip(("start", "middle", "end"), needles, strict=True):
        chosen = select(engine, text, Task(needle.question))  # the default: 1024 tokens kept
        assert chosen.passes >= 5  # four or five 8K chunks, then a round over their survivors
        assert 1024 - 128 < len(chosen.positions) <= 1024  # whole sentences of at most 128 tokens
        if not any(needle.answer in e.text for e in chosen.spans):
            missing.append((where, needle.answer))
    assert not missing, missing


def test_best_last_reading_puts_the_best_scored_span_nearest_the_question(engine: Engine) -> None:
    needle = plant_needle(walden(engine, 3000), 0.3, random.Random(5))
    chosen = select(engine, needle.text, Task(needle.question))
    assert chosen.rounds == 1 and len(chosen.span_scores) == len(chosen.spans) > 10
    assert reading(chosen, "document") == chosen.text == "\n".join(s.text for s in chosen.spans)
    text = reading(chosen, "best_last")
    spans, scores = [s.text for s in chosen.spans], chosen.span_scores
    assert len(text) == len(chosen.text) and all(span in text for span in spans)  # the same spans, reordered
    read_order = sorted(range(len(spans)), key=lambda i: text.index(spans[i]))
    assert [scores[i] for i in read_order] == sorted(scores)  # worst first, best last
    assert text.endswith(spans[read_order[-1]]) and needle.answer in spans[read_order[-1]]
    with pytest.raises(ValueError, match="order"):
        reading(chosen, "shuffled")


def test_calibration_measures_every_layer_and_is_stored(engine: Engine, tmp_path: Path) -> None:
    haystack = (EXAMPLES / "walden_long.txt").read_text(encoding="utf-8")
    result = calibrate(engine, haystack, samples=1, length=600)
    model = engine.hf_model  # type: ignore[attr-defined]
    assert result.model == model_key(model) == "SmolLM2-135M-Instruct"
    assert len(result.recall_by_layer) == result.num_layers == num_layers(model)
    assert 1 <= result.layer <= result.num_layers
    save_entry(result, tmp_path / "calibration" / "gemfilter.json")
    assert stored_layer(result.model, result.num_layers, tmp_path) == result.layer
    shipped = load_store(SHIPPED)[result.model]["layer"]
    assert stored_layer(result.model, result.num_layers, None) == shipped


def test_strategies_answer_a_needle_through_the_job_graph(engine: Engine, strategies: Strategies) -> None:
    needle = plant_needle(walden(engine, 3000), 0.5, random.Random(3))
    task = Task(needle.question, max_answer_tokens=32)
    result = run_job(Document(needle.text), [task], engine, strategy="gemfilter", strategies=strategies)
    answer = result.answers[0]
    assert result.strategy == "gemfilter" and 1024 - 128 < answer.details["kept_tokens"] <= 1024
    assert needle.answer in answer.text, answer.text
    assert any(needle.answer in e.text for e in answer.evidence)
    result = run_job(Document(needle.text), [task], TextOnlyEngine(engine), strategy="hard", strategies=strategies)
    answer = result.answers[0]
    assert answer.details["stages"] == "coarse"
    assert within(answer.details["compressed_tokens"], answer.details["target_tokens"])
    assert needle.answer in answer.text, answer.text


def test_selection_strategies_score_natively_and_answer_through_vllm(engine: Engine, vllm_engine: Engine) -> None:
    """vLLM hides the layers: gemfilter and hard score with a native engine over the same weights (loaded once per
    process) and answer through vLLM, the reader; the result says which engine did what."""
    needle = plant_needle(walden(engine, 3000), 0.5, random.Random(3))
    task = Task(needle.question, max_answer_tokens=32)
    assert GemFilter().fits(3000, [task], vllm_engine)
    answer = GemFilter().run(Document(needle.text), [task], vllm_engine, no_progress)[0]
    assert answer.details["scored_by"] == "native" and answer.details["answered_by"] == "vllm"
    assert answer.details["scored_weights"] == "reader"  # the reader's own weights, loaded in-process
    assert any(needle.answer in e.text for e in answer.evidence)  # the layers found it
    assert needle.answer in answer.text, answer.text  # and the reader read it
    hard = HardCompression(HardConfig(rate=0.25)).run(Document(needle.text), [task], vllm_engine, no_progress)[0]
    assert hard.details["stages"] == "coarse+fine"  # the fine stage needs layers: the native companion's


def test_a_named_selector_model_scores_and_the_reader_answers(engine: Engine) -> None:
    """TOME_SELECTOR_MODEL names the scoring model even for a reader with layers: gemfilter scores with it (a second
    native engine, built once) and the reader answers. The folder holds SmolLM2 again (the one model here), so the
    needle must come out the same; what is checked is who did what."""
    folder = str(resolve_model("smollm2", Settings().home))
    reader = create_engine(Settings(selector_model=folder).engine_config(kind="native"))
    assert selection_engine(engine).engine is engine  # the default: the reader scores itself
    scorer = selection_engine(reader)
    assert scorer.weights == "selector" and scorer.engine is not reader and scorer.engine.model_name == folder
    assert selection_engine(reader).engine is scorer.engine  # once per process
    needle = plant_needle(walden(engine, 2000), 0.5, random.Random(5))
    task = Task(needle.question, max_answer_tokens=32)
    answer = GemFilter().run(Document(needle.text), [task], reader, no_progress)[0]
    assert answer.details["scored_model"] == folder and answer.details["answered_model"] == "smollm2"
    assert needle.answer in answer.text, answer.text
