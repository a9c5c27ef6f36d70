"""Recall of the sparse patterns on real attention: q/k from SmolLM2 reading real corpus text (CPU).

One dense prefill captures each sampled layer's post-RoPE q and k; each pattern's index is then built from them as
in prefill, and `recall` is the share of the dense causal attention mass inside the pattern, averaged over heads and
sampled query rows (`recall_min` is the worst head). `exact` is the pattern itself; `triton` is what the Triton
kernel computes (slash lines widened to whole key chunks, a superset). Speed is not measured here (no GPU).

Results: bench/results/kernel-recall-smollm2.json and .md.   Run: python -m bench.kernel_recall_smollm2 --tokens 8000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.common import write_results
from engines import EngineConfig, create_engine
from engines.sparse_attention import capture_qk
from kernels.attention import SHARED_BLOCK_M
from kernels.index import block_sparse_index, grouped_scores, vertical_slash_index
from kernels.patterns import AShape, BlockSparse, VerticalSlash
from kernels.reference import a_shape_mask, block_sparse_mask, causal_mask, vertical_slash_mask
from kernels.triton_vertical_slash import layout_mask, vertical_slash_layout

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpus"
PATTERNS = {
    "vertical_slash": VerticalSlash(),  # MInference's default budget
    "vertical_slash_m95": VerticalSlash(mass=0.95),  # the same budget cut at 95% of the estimated mass
    "vertical_slash_m90": VerticalSlash(mass=0.9),
    "vertical_slash_shared": VerticalSlash(shared=True),  # one index per KV group
    "vertical_slash_small": VerticalSlash(vertical=64, slash=384),  # the default's density at 128K, scaled to 8K
    "a_shape": AShape(sink=64, window=1024),
    "block_sparse": BlockSparse(block=128, top=8),
}


def head_recall(q: torch.Tensor, k: torch.Tensor, mask, rows: torch.Tensor, scale: float) -> tuple[torch.Tensor, float]:
    """Kept attention mass per query head [H] over `rows`, and the kept share of the causal triangle."""
    length = k.shape[2]
    kept, dens = [], []
    for r in rows.split(16):
        s = grouped_scores(q[:, :, r], k, scale).masked_fill(~causal_mask(length)(r), float("-inf"))
        m = mask(r)
        kept.append((torch.softmax(s, -1) * m).sum(-1))
        dens.append(m.float().sum() / (causal_mask(length)(r).float().sum() * q.shape[1]))
    return torch.cat(kept, -1).mean(dim=(0, 2)), torch.stack(dens).mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8000)
    ap.add_argument("--text", default=str(CORPUS / "darwin_origin_of_species_1st_ed.txt"))
    ap.add_argument("--layers", type=int, nargs="+", default=[0, 5, 10, 15, 20, 25, 29])
    ap.add_argument("--name", default="kernel-recall-smollm2")
    args = ap.parse_args()
    engine = create_engine(EngineConfig(kind="native", device="cpu"))
    text = Path(args.text).read_text()
    ids = torch.tensor([engine.tokenize(text[len(text) // 5 :])[: args.tokens]])
    length = ids.shape[1]
    qk = capture_qk(engine.model, ids, args.layers)
    rows = torch.linspace(length // 4, length - 1, 64).long()
    out = []
    for name, pattern in PATTERNS.items():
        for impl in ("exact", "triton") if isinstance(pattern, VerticalSlash) else ("exact",):
            recalls, densities = [], []
            for q, k in qk.values():
                scale = q.shape[-1] ** -0.5
                if isinstance(pattern, VerticalSlash):
                    vertical, slash = vertical_slash_index(q, k, pattern, scale)
                    mask = vertical_slash_mask(length, vertical, slash)
                    if impl == "triton":
                        block_m = SHARED_BLOCK_M if pattern.shared else 64
                        lay = vertical_slash_layout(vertical, slash, length, block_m=block_m)
                        mask = layout_mask(lay, 1, q.shape[1], length)
                elif isinstance(pattern, AShape):
                    mask = a_shape_mask(length, pattern)
                else:
                    mask = block_sparse_mask(length, block_sparse_index(q, k, pattern, scale), pattern.block)
                per_head, dens = head_recall(q, k, mask, rows, scale)
                recalls.append(per_head)
                densities.append(dens)
            r = torch.stack(recalls)
            out.append(
                {
                    "kernel": name.split("_")[0] + "_" + name.split("_")[1],
                    "impl": impl,
                    "length": length,
                    "ms": None,
                    "baseline": "dense",
                    "baseline_ms": None,
                    "speedup": None,
                    "recall": round(r.mean().item(), 4),
                    "recall_min_head": round(r.min().item(), 4),
                    "density": round(sum(densities) / len(densities), 4),
                    "pattern": str(pattern),
                }
            )
            print(out[-1], flush=True)
    write_results(
        args.name,
        "sparse attention recall on real attention",
        engine.model_name,
        out,
        text=Path(args.text).name,
        layers=args.layers,
    )


if __name__ == "__main__":
    main()
