"""SmolLM2 through the native engine with sparse prefill answers a planted-fact question as dense attention does."""

import torch

from engines import EngineConfig, create_engine
from engines.prompting import answer_messages
from engines.sparse_attention import register_sparse_attention
from engines.types import Task
from kernels.patterns import VerticalSlash
from tests.conftest import EXAMPLES, planted_document

FACT = "The special magic number for the harbour is 7341."
QUESTION = "What is the special magic number for the harbour?"
# Budgets scaled to a 2K prompt (MInference's 1000/6096 would cover all of it): about a fifth of the causal triangle.
SMALL = VerticalSlash(vertical=64, slash=160, window=64)


def test_vertical_slash_prefill_answers_like_dense() -> None:
    name = register_sparse_attention("vs_2k", SMALL)
    engine = create_engine(EngineConfig(kind="native", device="cpu", attention=name))
    messages = answer_messages(planted_document(engine, FACT), Task(question=QUESTION))
    ids = torch.tensor([engine._template(messages)])
    assert 1800 < ids.shape[1] < 2600
    runs = {}
    for impl in ("vs_2k", "sdpa"):  # the same weights, sparse prefill then dense
        engine.model.set_attn_implementation(impl)
        with torch.inference_mode():
            out = engine.model.generate(
                ids, max_new_tokens=16, do_sample=False, output_scores=True, return_dict_in_generate=True
            )
        runs[impl] = (engine.detokenize(out.sequences[0, ids.shape[1] :]), out.scores[0][0].float())
    (sparse_text, sparse_first), (dense_text, dense_first) = runs["vs_2k"], runs["sdpa"]
    assert "7341" in dense_text and "7341" in sparse_text, runs
    # the sparse path really ran: the prefill's next-token logits differ from dense, yet pick the same token
    assert not torch.equal(sparse_first, dense_first)
    assert sparse_first.argmax() == dense_first.argmax()


def test_per_head_setting_loads_the_searched_config() -> None:
    engine = create_engine(EngineConfig(kind="native", device="cpu", attention="per_head"))
    assert engine.model.config._attn_implementation == "per_head_smollm2"
    ids = torch.tensor([engine.tokenize((EXAMPLES / "heart_of_darkness_opening.txt").read_text())[:600]])
    with torch.inference_mode():
        sparse = engine.model(ids, logits_to_keep=1).logits[0, -1].float()
        engine.model.set_attn_implementation("sdpa")
        dense = engine.model(ids, logits_to_keep=1).logits[0, -1].float()
    assert not torch.equal(sparse, dense)  # some heads were searched down to sinks + local window
    assert torch.nn.functional.cosine_similarity(sparse, dense, dim=0) > 0.9
