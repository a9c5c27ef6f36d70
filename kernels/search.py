"""Offline per-head pattern search (MInference's idea): on calibration q/k, give each head the cheapest candidate
that keeps enough attention mass, and save the choice as a small JSON config per model.

Every candidate is a vertical-slash budget (A-shape is vertical-slash with sinks as the verticals and the window as
the slashes), so one kernel serves a layer whose heads use different candidates.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from kernels.index import grouped_scores, vertical_slash_index
from kernels.patterns import VerticalSlash
from kernels.reference import causal_mask, vertical_slash_mask

CANDIDATES = [
    VerticalSlash(vertical=30, slash=100),  # sinks + local window only (A-shape)
    VerticalSlash(vertical=100, slash=800),
    VerticalSlash(vertical=500, slash=700),
    VerticalSlash(vertical=1000, slash=6096),  # MInference's default
    VerticalSlash(vertical=3500, slash=100),
]


def head_scores(
    q: torch.Tensor, k: torch.Tensor, pattern: VerticalSlash, rows: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query head: kept attention mass (recall) and kept share of the causal triangle (density), over `rows`."""
    length = k.shape[2]
    mask_fn = vertical_slash_mask(length, *vertical_slash_index(q, k, pattern, scale))
    kept, dens = [], []
    for r in rows.split(16):
        causal = causal_mask(length)(r)
        s = grouped_scores(q[:, :, r], k, scale).masked_fill(~causal, float("-inf"))
        m = mask_fn(r)
        kept.append((torch.softmax(s, -1) * m).sum(-1).mean(dim=(0, 2)))
        dens.append(m.float().sum(dim=(0, 2, 3)) / causal.float().sum())
    return torch.stack(kept).mean(0), torch.stack(dens).mean(0)


def search_heads(
    q: torch.Tensor, k: torch.Tensor, candidates: list[VerticalSlash], target: float, rows: torch.Tensor, scale: float
) -> list[int]:
    """For each query head, the index of the sparsest candidate whose recall reaches `target` (else the best one)."""
    scored = [head_scores(q, k, c, rows, scale) for c in candidates]
    recall = torch.stack([r for r, _ in scored])  # [C, H]
    density = torch.stack([d for _, d in scored])
    ok = recall >= target
    cost = torch.where(ok, density, float("inf"))
    best = torch.where(ok.any(0), cost.argmin(0), recall.argmax(0))
    return best.tolist()


@dataclasses.dataclass(frozen=True)
class HeadPatterns:
    """Per layer, per query head: which vertical-slash candidate to use."""

    candidates: list[VerticalSlash]
    layers: dict[int, list[int]]

    def save(self, path: Path, **meta: object) -> None:
        doc = {**meta, "candidates": [dataclasses.asdict(c) for c in self.candidates], "layers": self.layers}
        path.write_text(json.dumps(doc, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> HeadPatterns:
        doc = json.loads(path.read_text())
        return cls([VerticalSlash(**c) for c in doc["candidates"]], {int(i): h for i, h in doc["layers"].items()})


def per_head_index(
    q: torch.Tensor, k: torch.Tensor, candidates: list[VerticalSlash], choice: list[int], scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertical-slash index where head h uses candidates[choice[h]]; rows padded as the mass cut pads them
    (verticals with L, slashes with offset 0)."""
    b, hq, length, _ = q.shape
    group = hq // k.shape[1]
    heads_of = {c: [h for h, x in enumerate(choice) if x == c] for c in set(choice)}
    parts = {}
    for c, heads in heads_of.items():
        idx = torch.tensor(heads, device=q.device)
        parts[c] = (idx, *vertical_slash_index(q[:, idx], k[:, idx // group], candidates[c], scale))
    nv = max(v.shape[-1] for _, v, _ in parts.values())
    ns = max(s.shape[-1] for _, _, s in parts.values())
    vertical = torch.full((b, hq, nv), length, dtype=torch.long, device=q.device)
    slash = torch.zeros(b, hq, ns, dtype=torch.long, device=q.device)
    for idx, v, s in parts.values():
        vertical[:, idx, : v.shape[-1]] = v
        slash[:, idx, : s.shape[-1]] = s
    return vertical.sort(-1).values, slash.sort(-1).values
