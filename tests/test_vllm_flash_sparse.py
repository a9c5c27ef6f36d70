"""The GPU sparse-prefill backend's logic on the CPU build: routing, the metadata split and the per-sequence kernel
call, through the real `SparsePrefillFlashImpl.forward` with FlashAttention replaced by a paged torch reference."""

from __future__ import annotations

import math

import pytest
import torch

from engines.settings import Settings
from engines.sparse_prefill import (
    SparseConfig,
    config_from_settings,
    layer_index,
    rest_query_start_loc,
    rest_rows,
    route_batch,
    sparse_prefill,
)
from kernels.patterns import AShape, VerticalSlash
from kernels.reference import masked_attention, pattern_mask

HQ, HKV, D, BLOCK = 4, 2, 16, 16


def test_route_batch_sends_only_fresh_prefills_sparse() -> None:
    # decode over 40 cached tokens, a fresh 30-token prefill, a 20-token chunk over 50 cached, a fresh 1-token prompt
    qsl, seq_lens = [0, 1, 31, 51, 52], [41, 30, 70, 1]
    route = route_batch(qsl, seq_lens)
    assert route.sparse == [(1, 1, 31)]
    assert route.rest == [0, 2, 3]
    assert rest_rows(qsl, route.rest).tolist() == [0, *range(31, 52)]
    assert rest_query_start_loc(qsl, route.rest) == [0, 1, 21, 22]
    assert route_batch(qsl, seq_lens, min_tokens=31).sparse == []


def test_config_and_layer_names() -> None:
    assert isinstance(config_from_settings(Settings()).pattern, VerticalSlash)
    assert isinstance(config_from_settings(Settings(vllm_sparse="a_shape")).pattern, AShape)
    assert not config_from_settings(Settings(vllm_sparse="off")).enabled
    assert config_from_settings(Settings(vllm_sparse_min_tokens=8192)).min_tokens == 8192
    assert layer_index("model.layers.12.self_attn.attn") == 12


def test_sparse_prefill_is_the_kernels_attention_in_token_major_layout() -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(64, HQ, D), torch.randn(64, HKV, D), torch.randn(64, HKV, D)
    pattern = VerticalSlash(vertical=4, slash=8, last_q=8, sink=2, window=4)
    out = sparse_prefill(q, k, v, SparseConfig(pattern=pattern), D**-0.5)
    qh, kh, vh = (x.transpose(0, 1)[None] for x in (q, k, v))
    want = masked_attention(qh, kh, vh, pattern_mask(qh, kh, pattern, D**-0.5), D**-0.5)[0].transpose(0, 1)
    assert out.shape == (64, HQ, D)
    torch.testing.assert_close(out, want)


# --- the forward, with FlashAttention's varlen call replaced by a reference over the test's own per-sequence K/V ---


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal GQA attention of q [n, Hq, D] as the last n positions over k/v [L, Hkv, D]."""
    n, length = q.shape[0], k.shape[0]
    k, v = (x.repeat_interleave(HQ // HKV, dim=1) for x in (k, v))
    s = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale
    pos = torch.arange(length - n, length)[:, None]
    s = s.masked_fill(torch.arange(length)[None] > pos, -math.inf)
    return torch.einsum("hqk,khd->qhd", s.softmax(-1), v.float()).to(q.dtype)


@pytest.fixture
def impl_and_calls(monkeypatch: pytest.MonkeyPatch):
    fa = pytest.importorskip("vllm.v1.attention.backends.flash_attn")
    from engines.vllm_flash_sparse import SparsePrefillFlashImpl

    calls: list[int] = []
    seqs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # first block id -> the sequence's whole K and V

    def flash_attn_varlen_func(*, q, out, cu_seqlens_q, seqused_k, block_table, softmax_scale, causal, **_):
        assert causal is True
        calls.append(q.shape[0])
        cu = cu_seqlens_q.tolist()
        for i in range(len(cu) - 1):
            k, v = seqs[int(block_table[i, 0])]
            length = int(seqused_k[i])
            out[cu[i] : cu[i + 1]] = _attend(q[cu[i] : cu[i + 1]], k[:length], v[:length], softmax_scale)
        return out

    monkeypatch.setattr(fa, "flash_attn_varlen_func", flash_attn_varlen_func, raising=False)
    impl = SparsePrefillFlashImpl(HQ, D, D**-0.5, HKV, None, None, "auto")
    impl.vllm_flash_attn_version = 3  # no FlashAttention build on the CPU: the stub above stands in for FA3
    return impl, calls, seqs, fa


def _batch(fa, seqs):
    """decode (1 new of 41), fresh prefill (48), chunk (20 new over 30 cached): vLLM's metadata and new q/k/v."""
    torch.manual_seed(1)
    lens, new = [41, 48, 50], [1, 48, 20]
    blocks = [0, 10, 20]  # each sequence's first block id (block tables are only read as a key here)
    full = [(torch.randn(n, HKV, D), torch.randn(n, HKV, D)) for n in lens]
    seqs.update({b: kv for b, kv in zip(blocks, full, strict=True)})
    qsl = [0, 1, 49, 69]
    query = torch.randn(qsl[-1], HQ, D)
    key = torch.cat([k[-m:] for (k, _), m in zip(full, new, strict=True)])
    value = torch.cat([v[-m:] for (_, v), m in zip(full, new, strict=True)])
    meta = fa.FlashAttentionMetadata(
        num_actual_tokens=qsl[-1],
        max_query_len=48,
        query_start_loc=torch.tensor(qsl, dtype=torch.int32),
        max_seq_len=50,
        seq_lens=torch.tensor(lens, dtype=torch.int32),
        block_table=torch.tensor([[b, b + 1, b + 2, b + 3] for b in blocks], dtype=torch.int32),
        slot_mapping=torch.zeros(qsl[-1], dtype=torch.long),
        **(
            {
                "use_cascade": False,
                "common_prefix_len": 0,
                "cu_prefix_query_lens": None,
                "prefix_kv_lens": None,
                "suffix_kv_lens": None,
            }
            if "use_cascade" in fa.FlashAttentionMetadata.__dataclass_fields__
            else {}
        ),
    )
    want = torch.cat([_attend(query[qsl[i] : qsl[i + 1]], *full[i], D**-0.5) for i in range(3)])
    return query, key, value, meta, want


class _Layer(torch.nn.Module):
    layer_name = "model.layers.3.self_attn.attn"
    _q_scale = _k_scale = _v_scale = torch.ones(1)


def _empty_cache(fa) -> torch.Tensor:
    backend = fa.FlashAttentionBackend
    if hasattr(backend, "get_kv_cache_shape"):  # 0.25: [blocks, 2, block, heads, dim]
        return torch.zeros(backend.get_kv_cache_shape(32, BLOCK, HKV, D))
    return torch.zeros(32, HKV, BLOCK, 2 * D)  # 0.32: K and V side by side in the last dim, split after a transpose


def _filled_cache(fa, seqs) -> torch.Tensor:
    """The paged cache holding each test sequence's K/V in its blocks, as vLLM leaves it before the attention."""
    from engines.vllm_flash_sparse import paged_kv

    kv_cache = _empty_cache(fa)
    key_cache, value_cache = paged_kv(kv_cache, D)
    for first, (k, v) in seqs.items():
        for j in range(0, k.shape[0], BLOCK):
            key_cache[first + j // BLOCK, : k[j : j + BLOCK].shape[0]] = k[j : j + BLOCK]
            value_cache[first + j // BLOCK, : v[j : j + BLOCK].shape[0]] = v[j : j + BLOCK]
    return kv_cache


def _forward(impl, fa, query, key, value, meta, kv_cache=None):
    output = torch.full((query.shape[0], HQ, D), float("nan"))
    kv_cache = _empty_cache(fa) if kv_cache is None else kv_cache
    return impl.forward(_Layer(), query, key, value, kv_cache, meta, output)


def test_forward_serves_fresh_prefills_sparse_and_the_rest_dense(impl_and_calls, monkeypatch) -> None:
    from engines.vllm_flash_sparse import STATS, SparsePrefillFlashImpl

    impl, calls, seqs, fa = impl_and_calls
    query, key, value, meta, want = _batch(fa, seqs)

    monkeypatch.setattr(SparsePrefillFlashImpl, "config", SparseConfig())  # off: FlashAttention over everything
    torch.testing.assert_close(_forward(impl, fa, query, key, value, meta), want)
    assert calls == [69]

    calls.clear()
    before = STATS["sparse_prefills"]
    monkeypatch.setattr(SparsePrefillFlashImpl, "config", SparseConfig(pattern=VerticalSlash()))  # covers 48 tokens
    out = _forward(impl, fa, query, key, value, meta)
    torch.testing.assert_close(out, want)
    assert calls == [21]  # FlashAttention saw the decode and the chunk only: no dense pass over the fresh prefill
    assert STATS["sparse_prefills"] == before + 1

    sparse = SparseConfig(pattern=VerticalSlash(vertical=4, slash=8, last_q=8, sink=2, window=4))
    monkeypatch.setattr(SparsePrefillFlashImpl, "config", sparse)
    out = _forward(impl, fa, query, key, value, meta)
    torch.testing.assert_close(out[1:49], sparse_prefill(query[1:49], key[1:49], value[1:49], sparse, D**-0.5, 3))
    assert not torch.allclose(out[1:49], want[1:49])  # really sparse
    torch.testing.assert_close(out[:1], want[:1])
    torch.testing.assert_close(out[49:], want[49:])


def test_route_batch_sends_long_chunks_sparse_when_asked() -> None:
    qsl, seq_lens = [0, 1, 31, 51, 52], [41, 30, 70, 1]  # decode, fresh 30, a 20-token chunk over 50 cached, fresh 1
    route = route_batch(qsl, seq_lens, chunk_threshold=20)
    assert (route.sparse, route.chunks, route.rest) == ([(1, 1, 31)], [(2, 31, 51)], [0, 3])
    assert route_batch(qsl, seq_lens, chunk_threshold=21).chunks == []
    vs = VerticalSlash(vertical=4, slash=8, last_q=32)
    assert SparseConfig(pattern=vs).chunk_threshold is None  # chunks stay dense unless asked
    assert SparseConfig(pattern=vs, chunk_min_tokens=8).chunk_threshold == 32  # the estimate reads the chunk's own
    assert SparseConfig(pattern=AShape(), chunk_min_tokens=8).chunk_threshold == 8
    assert SparseConfig(pattern=VerticalSlash(spread=True), chunk_min_tokens=8).chunk_threshold is None
    assert config_from_settings(Settings(vllm_sparse_chunk_min_tokens=8192)).chunk_min_tokens == 8192


def test_forward_serves_long_chunks_sparse_from_the_paged_cache(impl_and_calls, monkeypatch) -> None:
    """A chunk over cached tokens reads the whole sequence's K/V from the paged cache and runs the sparse path;
    FlashAttention sees the decode alone. Its rows are what a one-shot sparse prefill of the sequence gives them."""
    from engines.vllm_flash_sparse import STATS, SparsePrefillFlashImpl

    impl, calls, seqs, fa = impl_and_calls
    query, key, value, meta, want = _batch(fa, seqs)
    kv_cache = _filled_cache(fa, seqs)

    covering = VerticalSlash(vertical=64, slash=64, last_q=8, sink=2, window=4)  # every key of these short sequences
    monkeypatch.setattr(SparsePrefillFlashImpl, "config", SparseConfig(pattern=covering, chunk_min_tokens=2))
    before = STATS["sparse_chunks"]
    torch.testing.assert_close(_forward(impl, fa, query, key, value, meta, kv_cache), want)
    assert calls == [1]
    assert STATS["sparse_chunks"] == before + 1

    k, v = seqs[20]  # the chunked sequence: 30 cached tokens, then the chunk (rows 49:69 of the batch)
    for pattern in (VerticalSlash(vertical=4, slash=8, last_q=8, sink=2, window=4), AShape(sink=2, window=8)):
        config = SparseConfig(pattern=pattern, chunk_min_tokens=2)
        monkeypatch.setattr(SparsePrefillFlashImpl, "config", config)
        out = _forward(impl, fa, query, key, value, meta, kv_cache)
        # the cached tokens' queries are gone; any values do, as the chunk ends the sequence (same last queries)
        one_shot = torch.cat([torch.randn(30, HQ, D), query[49:69]])
        torch.testing.assert_close(out[49:69], sparse_prefill(one_shot, k, v, config, D**-0.5, 3)[30:])
        assert not torch.allclose(out[49:69], want[49:69])  # really sparse
        torch.testing.assert_close(out[:1], want[:1])


def test_decode_only_batches_never_sync(impl_and_calls, monkeypatch) -> None:
    """max_query_len 1: FlashAttention's own path, before any .tolist() (CUDA graphs capture it unchanged) and before
    the settings are read (config None: from the settings, which a decode step must not parse)."""
    import engines.vllm_flash_sparse as backend

    impl, calls, seqs, fa = impl_and_calls
    query, key, value, meta, want = _batch(fa, seqs)
    monkeypatch.setattr(backend.SparsePrefillFlashImpl, "config", None)
    monkeypatch.setattr(backend, "_settings_config", lambda: pytest.fail("settings read on a decode batch"))
    monkeypatch.setattr(backend, "route_batch", lambda *a: pytest.fail("routed (a host sync) on a decode batch"))
    decode = meta.__class__(**{**meta.__dict__, "max_query_len": 1})
    _forward(impl, fa, query, key, value, decode)
    assert calls == [69]
