"""Prefill and decode speed of each engine at 1K-8K tokens, with load time. Results: bench/results/engine-speed.*

Prefill tok/s = prompt tokens / time of a 1-token generation; decode tok/s = extra tokens / extra time of a longer
generation on a different prompt of the same length (different text, so vLLM's prefix cache does not help).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from bench.common import write_results  # noqa: E402
from engines import EngineConfig, SamplingParams, create_engine  # noqa: E402
from engines.base import Engine  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpus"


def prompt_of(engine: Engine, text: str, tokens: int) -> list[dict[str, str]]:
    ids = engine.tokenize(text)[: tokens - 40]
    return [{"role": "user", "content": "Continue this text:\n" + engine.detokenize(ids)}]


def measure(
    kind: str, lengths: list[int], decode_tokens: int, dtype: str, threads: int | None
) -> list[dict[str, object]]:
    start = time.perf_counter()
    engine = create_engine(EngineConfig(kind=kind, dtype=dtype, threads=threads))  # type: ignore[arg-type]
    load_s = time.perf_counter() - start
    text = (CORPUS / "darwin_origin_of_species_1st_ed.txt").read_text()
    rows: list[dict[str, object]] = []
    engine.chat([prompt_of(engine, text[:20000], 256)], SamplingParams(max_tokens=4))  # warm-up
    for i, n in enumerate(lengths):
        # distinct slices: no prefix is shared between the two measurements
        a = prompt_of(engine, text[100000 * (2 * i + 1) :], n)
        b = prompt_of(engine, text[100000 * (2 * i + 2) :], n)
        t0 = time.perf_counter()
        g1 = engine.chat([a], SamplingParams(max_tokens=1))[0]
        prefill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        g2 = engine.chat([b], SamplingParams(max_tokens=decode_tokens))[0]
        total_s = time.perf_counter() - t0
        decode = max(1, g2.completion_tokens - 1) / max(1e-6, total_s - prefill_s)
        rows.append(
            {
                "engine": kind,
                "dtype": dtype,
                "length": g1.prompt_tokens,
                "prefill_tok_s": round(g1.prompt_tokens / prefill_s, 1),
                "decode_tok_s": round(decode, 1),
                "decoded_tokens": g2.completion_tokens,
                "prefill_s": round(prefill_s, 3),
                "load_s": round(load_s, 1),
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engines", default="native,vllm")
    parser.add_argument("--lengths", default="1024,2048,4096,8000")
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--dtypes", default="bfloat16", help="comma list: auto, bfloat16, float32 (one run each)")
    parser.add_argument("--name", default="engine-speed")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    rows = []
    for kind in args.engines.split(","):
        for dtype in args.dtypes.split(","):
            rows += measure(kind, lengths, args.decode_tokens, dtype, args.threads)
    # This host is often shared: the load average says how far to trust absolute numbers (ratios hold better).
    load = [round(x, 1) for x in os.getloadavg()]
    path = write_results(
        args.name,
        "engine prefill/decode speed",
        f"SmolLM2-135M-Instruct {args.dtypes}",
        rows,
        load_average=load,
        threads=args.threads,
    )
    print(path)


if __name__ == "__main__":
    main()
