"""The sparse-prefill vLLM backend (CUSTOM slot, CPU build): selected on request, serving fresh prefills and, when
asked, the chunks of a chunked prefill over their cached prefix."""

import os
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in this process: the counter is visible

from vllm import LLM, SamplingParams  # noqa: E402

from engines.models import resolve_model  # noqa: E402
from engines.sparse_prefill import SparseConfig  # noqa: E402
from engines.vllm_cpu_sparse import SPARSE_PREFILLS, SparsePrefillImpl  # noqa: E402
from engines.vllm_sparse import register  # noqa: E402
from kernels.patterns import AShape, VerticalSlash  # noqa: E402

TEXT = Path(__file__).resolve().parents[1] / "examples" / "heart_of_darkness_opening.txt"


def test_custom_backend_matches_default_and_runs_sparse_prefill() -> None:
    register()
    llm = LLM(
        model=str(resolve_model("smollm2", Path.home() / ".cache" / "tome")),
        dtype="float32",  # bf16 is emulated on AVX2-only CPUs, where the two backends round apart (token 4 flipped)
        max_model_len=2048,
        gpu_memory_utilization=0.2,
        enforce_eager=True,
        enable_prefix_caching=False,  # every generate is a fresh prefill
        max_num_batched_tokens=256,  # chunked prefill: prompts of 256 tokens or more take several steps
        attention_backend="CUSTOM",
    )
    prompt = TEXT.read_text()[:1500] + "\n\nThe name of the cruising yawl is"
    params = SamplingParams(max_tokens=10, temperature=0, logprobs=3)

    def generate(text: str = prompt):
        out = llm.generate([text], params, use_tqdm=False)[0].outputs[0]
        return out.token_ids, out.logprobs[0]

    SparsePrefillImpl.config = SparseConfig()  # off: CPU_ATTN as it ships, the default backend
    dense_tokens, dense_first = generate()
    before = SPARSE_PREFILLS["count"]
    # MInference's budget covers a short prompt entirely
    SparsePrefillImpl.config = SparseConfig(pattern=VerticalSlash())
    tokens, _ = generate()
    assert SPARSE_PREFILLS["count"] - before == llm.llm_engine.model_config.hf_config.num_hidden_layers
    assert list(tokens) == list(dense_tokens)

    sparse = VerticalSlash(vertical=8, slash=16, sink=4, window=16)
    SparsePrefillImpl.config = SparseConfig(pattern=sparse)  # a truly sparse prefill
    _, sparse_first = generate()
    top = lambda lp: {t: round(x.logprob, 4) for t, x in lp.items()}  # noqa: E731
    assert top(sparse_first) != top(dense_first)  # the sparse prefill really replaced the dense one

    # A prompt of three chunks: the first is a fresh prefill, the next two run over their cached prefix, as their
    # queries against the sequence's keys read back from CPU_ATTN's paged cache (sparse_chunk).
    long_prompt = TEXT.read_text()[:2800] + "\n\nThe name of the cruising yawl is"
    assert 512 + 128 < len(llm.get_tokenizer()(long_prompt).input_ids) < 768  # chunks of 256, 256 and >= 128
    SparsePrefillImpl.config = SparseConfig()
    dense_tokens, dense_first = generate(long_prompt)
    layers = llm.llm_engine.model_config.hf_config.num_hidden_layers
    SparsePrefillImpl.config = SparseConfig(pattern=VerticalSlash(), chunk_min_tokens=128)  # covers every key
    before = dict(SPARSE_PREFILLS)
    tokens, _ = generate(long_prompt)
    assert SPARSE_PREFILLS["chunks"] - before["chunks"] == 2 * layers  # both later chunks went sparse
    assert list(tokens) == list(dense_tokens)  # the cache was read back right: same keys, same answer
    for pattern in (sparse, AShape(sink=4, window=64)):  # truly sparse chunks
        SparsePrefillImpl.config = SparseConfig(pattern=pattern, chunk_min_tokens=128)
        _, sparse_first = generate(long_prompt)
        assert top(sparse_first) != top(dense_first)
