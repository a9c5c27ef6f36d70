"""Offline per-head sparse pattern search for a model on calibration text; writes kernels/configs/<model>.json.

The native engine uses it with `TOME_ATTENTION=per_head` (EngineConfig(attention="per_head")).
Run: python scripts/search_sparse_patterns.py --text FILE [--model smollm2] [--tokens 4000] [--target 0.95]
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import torch

from engines import EngineConfig, create_engine
from engines.sparse_attention import CONFIGS, capture_qk
from kernels.patterns import VerticalSlash
from kernels.search import HeadPatterns, search_heads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", required=True, help="calibration text file")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tokens", type=int, default=4000)
    ap.add_argument("--target", type=float, default=0.95, help="attention mass each head must keep")
    # vertical:slash budgets, sparsest first; MInference's search used 30:800 ... 3500:100 at 100K+ tokens
    ap.add_argument("--budgets", default="30:100,64:256,128:512,256:1024,1000:6096")
    args = ap.parse_args()
    candidates = [
        VerticalSlash(vertical=int(v), slash=int(s)) for v, s in (b.split(":") for b in args.budgets.split(","))
    ]
    engine = create_engine(EngineConfig(kind="native", device="cpu", model=args.model))
    text = Path(args.text).read_text()
    ids = torch.tensor([engine.tokenize(text)[: args.tokens]])
    length = ids.shape[1]
    layers = list(range(engine.model.config.num_hidden_layers))
    rows = torch.linspace(length // 4, length - 1, 32).long()
    choice = {}
    for layer, (q, k) in sorted(capture_qk(engine.model, ids, layers).items()):
        choice[layer] = search_heads(q, k, candidates, args.target, rows, q.shape[-1] ** -0.5)
        print(layer, choice[layer], flush=True)
    CONFIGS.mkdir(parents=True, exist_ok=True)
    path = CONFIGS / f"{Path(args.model).name}.json"
    HeadPatterns(candidates, choice).save(
        path,
        model=args.model,
        text=Path(args.text).name,
        tokens=length,
        target=args.target,
        date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    print(path)


if __name__ == "__main__":
    main()
