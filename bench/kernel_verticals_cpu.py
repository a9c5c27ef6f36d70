"""Are the verticals where the 256K recall is? Vertical choices under the same slashes, on the CPU.

The slashes are the index's (`smooth=1024, spread=True, mix=0.2`, the best non-oracle ranking at 256K in
kernel-mix-h200); only the 1000 vertical columns change:
- `index`: the index's own (column sums of the last 64 queries' attention; the baseline);
- `residual-*`: column sums of the attention the chosen slashes leave (what a vertical could add), from the last 64
  queries, from 64 queries spread over the prompt, or from both;
- `oracle`: the recall rows' own best columns outside the slashes (no index can do better).
Recall as in bench.kernel_bench (48 rows from L/4 to the end, averaged over heads): `exact` is the mask itself,
`chunks` what the Triton kernel computes (slashes widened to whole 64x64 key chunks). `topical` inputs drawn on the
CPU (other draws than the GPU's). No timing: the slashes, and so the kernel's chunks, are the same in every row.

Run: python -m bench.kernel_verticals_cpu [--length 262144]   Results: bench/results/kernel-verticals-cpu.{json,md}
"""

from __future__ import annotations

import argparse
import math

import torch

from bench.common import write_results
from bench.kernel_bench import HQ, D, structured_qkv
from kernels.index import estimate_rows, grouped_scores, top_indices, vertical_slash_index
from kernels.patterns import VerticalSlash
from kernels.reference import attention_recall, causal_mask, vertical_slash_mask
from kernels.triton_vertical_slash import layout_mask, vertical_slash_layout

PATTERN = VerticalSlash(smooth=1024, spread=True, mix=0.2)


def column_mass_outside(q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, slash: torch.Tensor) -> torch.Tensor:
    """Per head, each column's attention mass over the query `rows`, leaving out what the slashes already cover."""
    length = k.shape[2]
    kept_offsets = torch.zeros(HQ, length + 1, dtype=torch.bool)
    kept_offsets.scatter_(-1, slash[0].clamp(max=length), True)
    cols = torch.arange(length)
    score = torch.zeros(1, HQ, length)
    for r in rows.split(8):
        s = grouped_scores(q[:, :, r], k, 1.0 / math.sqrt(D)).masked_fill(~causal_mask(length)(r), float("-inf"))
        offset = (r[:, None] - cols[None, :]).clamp(min=0)
        score += (torch.softmax(s, -1) * ~kept_offsets[:, offset]).sum(2)
    return score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=262144)
    ap.add_argument("--name", default="kernel-verticals-cpu")
    args = ap.parse_args()
    length = args.length
    q, k, _ = structured_qkv(length, "cpu", family="topical")
    vertical, slash = vertical_slash_index(q, k, PATTERN)
    recall_rows = torch.linspace(length // 4, length - 1, 48).long()
    last = torch.arange(length - PATTERN.last_q, length)
    spread = estimate_rows(length, PATTERN.last_q, True, q.device)
    assert spread is not None

    def pick(rows: torch.Tensor) -> torch.Tensor:
        return top_indices(column_mass_outside(q, k, rows, slash), PATTERN.sink, PATTERN.vertical, None, length)

    choices = {
        "index": vertical,
        "residual-last": pick(last),
        "residual-spread": pick(spread),
        "residual-spread+last": pick(torch.cat([spread, last])),
        "oracle": pick(recall_rows),
    }
    out = []
    for name, columns in choices.items():
        lay = vertical_slash_layout(columns, slash, length, 64, 64, scan="torch")
        exact = attention_recall(q, k, vertical_slash_mask(length, columns, slash), recall_rows, chunk=8)
        chunks = attention_recall(q, k, layout_mask(lay, 1, HQ, length), recall_rows, chunk=8)
        out.append(
            {
                "kernel": "vertical_slash",
                "verticals": name,
                "baseline": "index",
                "length": length,
                "recall_exact": round(exact, 4),
                "recall_chunks": round(chunks, 4),
                "chunks_per_head": round(lay.chunk_count.float().mean().item(), 1),
                "pattern": str(PATTERN),
            }
        )
        print(out[-1], flush=True)
    for row in out:
        row["gain_exact"] = round(row["recall_exact"] - out[0]["recall_exact"], 4)
        row["gain_chunks"] = round(row["recall_chunks"] - out[0]["recall_chunks"], 4)
    write_results(args.name, "vertical choices under fixed slashes (CPU, exact recall)", "synthetic topical q/k", out)


if __name__ == "__main__":
    main()
