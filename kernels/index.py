"""Online index builders: which keys each query head reads, estimated from q and k (plain tensor functions).

Shapes: q [B, Hq, L, D], k [B, Hkv, L, D] with Hq a multiple of Hkv (GQA); indices are per query head.
"""

from __future__ import annotations

import functools
import math

import torch

from kernels.patterns import SLASH_PEAK, BlockSparse, VerticalSlash


def grouped_scores(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """q·kᵀ for every query head against its KV head without repeating k: [B, Hq, Lq, Lk] in float32."""
    b, hq, lq, d = q.shape
    hkv = k.shape[1]
    qg = q.reshape(b, hkv, (hq // hkv) * lq, d)
    s = torch.matmul(qg, k.transpose(-1, -2)).float() * scale
    return s.reshape(b, hq, lq, k.shape[2])


def vertical_slash_index(
    q: torch.Tensor, k: torch.Tensor, cfg: VerticalSlash, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top vertical columns and slash offsets (q_pos - k_pos) per head, from the last `cfg.last_q` queries.

    q may hold only the last n of k's L positions (a chunk over cached keys): the estimate reads the last
    min(last_q, n) queries at their absolute positions, so a chunk's index is built from its own rows.

    Returns (vertical [B, Hq, NV], slash [B, Hq, NS]), both sorted ascending, int64. With `cfg.mass`, unused vertical
    slots hold L (past every column) and unused slash slots repeat offset 0.
    """
    length = k.shape[2]
    b, hq, n_q, d = q.shape
    if cfg.spread and n_q != length:
        raise ValueError("spread estimates read queries from the whole prompt: no chunk over cached keys")
    if cfg.vertical <= cfg.sink and cfg.slash <= cfg.window:  # nothing left to choose (A-shape): no estimate
        vertical = torch.arange(min(cfg.vertical, length), device=q.device).expand(b, hq, -1)
        return vertical, torch.arange(min(cfg.slash, length), device=q.device).expand(b, hq, -1)
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    r = min(cfg.last_q, n_q)
    hkv = k.shape[1]
    rows = estimate_rows(length, r, cfg.spread, q.device)
    # with `spread`, the spread rows (slashes) and then the last r (verticals: spread rows' verticals would be the
    # columns just before each of them, gathered for every later query block) in one pass
    last = torch.arange(length - r, length, device=q.device)
    positions = last if rows is None else torch.cat([rows, last])
    n = positions.numel()
    # scores in the input dtype (half the bytes of float32; they only rank columns)
    qg = ((q[:, :, -r:] if rows is None else q[:, :, positions]) * scale).reshape(b, hkv, (hq // hkv) * n, d)
    s = torch.matmul(qg, k.transpose(-1, -2)).reshape(b, hq, n, length)
    group = hq // hkv
    if q.is_cuda:  # logits in the input dtype (half the bytes); softmax, causal mask and both sums in two Triton passes
        from kernels.triton_vertical_slash import vertical_slash_scores

        vertical_score, slash_score = vertical_slash_scores(
            s, group if cfg.shared else 1, positions=positions, vertical_from=n - r, slash_to=r
        )
    else:
        # only the last r columns can lie past a last row (the r x r corner); the spread rows are masked past themselves
        s[..., n - r :, length - r :].masked_fill_(_above_diagonal(r, q.device), float("-inf"))
        if rows is not None:
            s[..., :r, :].masked_fill_(torch.arange(length, device=q.device) > rows[:, None], float("-inf"))
        p = torch.softmax(s, dim=-1, dtype=torch.float32)
        del s
        vertical_score = p[:, :, n - r :].sum(dim=2)
        slash_score = diagonal_sums(p) if rows is None else diagonal_sums(p[:, :, :r], rows)
        del p
        if cfg.shared:  # one index per KV group (scores summed over its query heads)
            vertical_score = vertical_score.reshape(b, hkv, group, length).sum(2)
            slash_score = slash_score.reshape(b, hkv, group, length).sum(2)
    vertical = top_indices(vertical_score, cfg.sink, cfg.vertical, cfg.mass, pad=length)
    if cfg.smooth > 1:
        slash_score = mixed_slash_score(slash_score, smoothed_slash_score(slash_score, cfg.smooth), cfg.mix)
    slash = top_indices(slash_score, cfg.window, cfg.slash, cfg.mass, pad=0)
    if cfg.shared:  # repeated for the group's query heads
        vertical, slash = vertical.repeat_interleave(group, 1), slash.repeat_interleave(group, 1)
    return vertical, slash


def estimate_rows(length: int, r: int, spread: bool, device: torch.device) -> torch.Tensor | None:
    """The positions of the r queries that estimate the slashes: None for the last r; with `spread`, every
    (L // r)-th position ending at the last query (ascending, int64)."""
    step = length // r
    if not spread or step <= 1:
        return None
    return torch.arange(length - 1 - step * (r - 1), length, step, device=device)


@functools.lru_cache(maxsize=8)
def _above_diagonal(r: int, device: torch.device) -> torch.Tensor:
    """[r, r] bool, True above the diagonal (built once: two launches fewer per index)."""
    return torch.ones(r, r, dtype=torch.bool, device=device).triu(1)


def smoothed_slash_score(score: torch.Tensor, width: int, peak: float = SLASH_PEAK) -> torch.Tensor:
    """Each offset's score [B, H, L] averaged over the `width` offsets around it (fewer at the ends), or its own score
    over `peak` where that is larger: a diagonal `peak` times its neighbourhood's mean keeps its rank."""
    length, half = score.shape[-1], width // 2
    # window sums as differences of one running sum over the zero-padded scores (slices, no gathers); float64, since
    # the far offsets' scores are tiny next to the running sum
    c = torch.nn.functional.pad(score.double(), (half + 1, width - half)).cumsum(-1)
    mean = (c[..., width : width + length] - c[..., :length]) / _window_count(length, width, score.device)
    return torch.maximum(mean.float(), score / peak)


def mixed_slash_score(own: torch.Tensor, smoothed: torch.Tensor, mix: float) -> torch.Tensor:
    """(1 - mix) x smoothed + mix x own [B, H, L], each as a share of its head's total (the smoothed score's total
    differs from the own one's by the peaks and the ends); mix 0 returns `smoothed` itself."""
    if mix <= 0:
        return smoothed
    tiny = torch.finfo(own.dtype).tiny
    own_share = own / own.sum(-1, keepdim=True).clamp(min=tiny)
    smoothed_share = smoothed / smoothed.sum(-1, keepdim=True).clamp(min=tiny)
    return torch.lerp(smoothed_share, own_share, mix)


@functools.lru_cache(maxsize=8)
def _window_count(length: int, width: int, device: torch.device) -> torch.Tensor:
    i = torch.arange(length, device=device)
    return ((i - width // 2 + width).clamp(max=length) - (i - width // 2).clamp(min=0)).double()


def diagonal_sums(p: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of p [B, H, r, L] (the last r query rows against all L keys) along each diagonal, by offset q_pos - k_pos:
    [B, H, L]. Read in place through a strided view: row i's entry for offset o sits at column L - r + i - o, so with a
    row stride of L + 1 each diagonal is a column of the view (MInference's sum_all_diagonal_matrix, without a copy).
    With `positions` [r] (ascending), row i is the query at positions[i] instead: gathered."""
    b, h, r, length = p.shape
    if positions is not None:
        column = positions[:, None] - torch.arange(length, device=p.device)  # [r, L]: row i's column for offset o
        taken = p.gather(-1, column.clamp(min=0).expand(b, h, r, length))
        return taken.masked_fill_(column < 0, 0).sum(dim=2)
    p = p.contiguous()
    # offsets 0 .. L - r: every row reaches them
    skew = p.as_strided((b, h, r, length - r + 1), (h * r * length, r * length, length + 1, 1))
    out = torch.zeros(b, h, length, dtype=p.dtype, device=p.device)
    out[..., : length - r + 1] = skew.sum(dim=2).flip(-1)
    if r > 1:  # offsets L - r + 1 .. L - 1 reach only the first r - 1 columns: the same trick on that small corner
        corner = torch.nn.functional.pad(p[..., : r - 1], (r - 1, 0))  # [B, H, r, 2r - 2], zeros left of column 0
        w = 2 * r - 2
        tail = corner.as_strided((b, h, r, r - 1), (h * r * w, r * w, w + 1, 1), storage_offset=0).sum(dim=2)
        out[..., length - r + 1 :] = tail.flip(-1)
    return out


def top_indices(score: torch.Tensor, forced: int, budget: int, mass: float | None, pad: int) -> torch.Tensor:
    """The first `forced` positions plus the top-scored others, `budget` in all, sorted ascending [B, H, N].

    With `mass`, each head keeps only the shortest prefix of that ranking holding `mass` of its score; the rest of
    the row is filled with `pad` (a position the caller treats as absent or as a duplicate).
    """
    n = min(budget, score.shape[-1])
    ranked = score.clone()
    ranked[..., :forced] = float("inf")
    top = ranked.topk(n, dim=-1).indices
    if mass is not None:
        taken = score.gather(-1, top).cumsum(-1)
        total = score.sum(-1, keepdim=True)
        keep = torch.cat([torch.ones_like(taken[..., :1], dtype=torch.bool), taken[..., :-1] < mass * total], -1)
        keep[..., : min(forced, n)] = True
        top = torch.where(keep, top, pad)
    return top.sort(dim=-1).values


def block_sparse_index(q: torch.Tensor, k: torch.Tensor, cfg: BlockSparse, scale: float | None = None) -> torch.Tensor:
    """Key blocks each query block reads, from mean-pooled q·k: bool [B, Hq, nQB, nKB], causal.

    The first block (sinks) and the diagonal block are always kept.
    """
    b, hq, length, d = q.shape
    scale = scale if scale is not None else 1.0 / math.sqrt(d)
    n = -(-length // cfg.block)
    pad = n * cfg.block - length
    counts = torch.full((n,), float(cfg.block), device=q.device)
    counts[-1] = cfg.block - pad

    def pool(x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.pad(x.float(), (0, 0, 0, pad))
        return x.reshape(b, x.shape[1], n, cfg.block, d).sum(dim=3) / counts[:, None]

    s = grouped_scores(pool(q), pool(k), scale)  # [B, H, n, n]
    qb = torch.arange(n, device=q.device)[:, None]
    kb = torch.arange(n, device=q.device)[None, :]
    s.masked_fill_(kb > qb, float("-inf"))
    s[..., 0] = float("inf")
    s.diagonal(dim1=-2, dim2=-1).fill_(float("inf"))
    top = min(cfg.top, n)
    picked = s.topk(top, dim=-1).indices
    mask = torch.zeros(b, hq, n, n, dtype=torch.bool, device=q.device)
    mask.scatter_(-1, picked, True)
    return mask & (kb <= qb)
