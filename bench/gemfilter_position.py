"""Where in a scoring chunk GemFilter loses a needle: per-head attention dumps for offline scoring variants.

For each sample (a harness `niah_single` question whose document is one scoring chunk, or the slow test's 32K
Walden document cut to its first chunk), one forward pass to layer r with the question's prompt and one with a
neutral prompt (no question), keeping layer r's attention input; then per-head attention of every row after the
context over the context tokens, saved with the sentence units, the voting mask and the needle's unit, so that
scoring rules can be compared offline (`--analyse`) without more forward passes.

    PYTHONPATH=. python bench/gemfilter_position.py --seeds 101,103 --length 8K --dump /tmp/gfpos
    PYTHONPATH=. python bench/gemfilter_position.py --analyse /tmp/gfpos  # bench/results/gemfilter-position-8k.md
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

import torch

from compressors.attention import decoder_layers
from compressors.gemfilter import GemFilterConfig, pack, prompt_around, resolve_layer, units_of
from engines import EngineConfig, create_engine
from engines.types import Task


class _Stop(Exception):
    pass


@torch.inference_mode()
def all_layer_attention(model: Any, ids: list[int], rows: torch.Tensor) -> torch.Tensor:
    """Per-layer, per-head attention of `rows` over all positions of `ids`: [layers, heads, rows, T] (float16)."""
    blocks = decoder_layers(model)
    out: list[torch.Tensor] = [torch.empty(0)] * len(blocks)

    def hook_for(index: int) -> Any:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            h = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])[0]
            cos, sin = (t[0] for t in kwargs["position_embeddings"])
            out[index] = head_attention(module, h, cos, sin, rows.to(h.device)).half().cpu()

        return hook

    handles = [b.self_attn.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        model.base_model(input_ids=torch.tensor([ids], device=model.device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(out)


def _rot(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@torch.inference_mode()
def head_attention(
    attn: Any, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rows: torch.Tensor
) -> torch.Tensor:
    """Per-head softmax attention of `rows` over all positions: [heads, rows, T]."""
    d = attn.head_dim
    q = attn.q_proj(h[rows]).view(len(rows), -1, d).transpose(0, 1).float()
    k = attn.k_proj(h).view(h.shape[0], -1, d).transpose(0, 1).float()
    cos, sin = cos.float(), sin.float()
    q = q * cos[rows] + _rot(q) * sin[rows]
    k = k * cos + _rot(k) * sin
    k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
    logits = torch.einsum("hrd,htd->hrt", q, k) * attn.scaling
    causal = torch.arange(h.shape[0], device=h.device)[None, :] > rows[:, None]
    return logits.masked_fill(causal[None], float("-inf")).softmax(dim=-1)


def dump_one(engine: Any, text: str, question: str, answer: str, layer: int, out: Path, name: str) -> None:
    model, tokenizer = engine.hf_model, engine.hf_tokenizer
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    start = text.index(answer)
    before, after = prompt_around(engine, Task(question))
    room = engine.max_context - len(before) - len(after)
    units = units_of(offsets, text, "sentence", 128)
    chunk = pack(units, room)[0]
    ctx = [p for u in chunk for p in u]
    needle = [i for i, u in enumerate(chunk) if any(offsets[p][0] <= start < offsets[p][1] for p in u)]
    if not needle:
        print(f"{name}: needle not in the first chunk", file=sys.stderr)
        return
    result: dict[str, Any] = {
        "sizes": [len(u) for u in chunk],
        "votes": [any(ch.isalnum() for ch in text[offsets[p][0] : offsets[p][1]]) for p in ctx],
        "needle": needle[0],
        "name": name,
        "layer": layer,
    }
    prompts = {"question": after, "neutral": prompt_around(engine, Task(""))[1]}
    for key, tail in prompts.items():
        seq = [*before, *[ids[p] for p in ctx], *tail]
        rows = torch.arange(len(seq) - len(tail), len(seq))
        a = all_layer_attention(model, seq, rows)
        if key == "neutral":
            a = a.float().mean(2, keepdim=True).half()  # one mean row: the baseline
        result[key] = a[..., len(before) : len(before) + len(ctx)].clone()
        result[key + "_sink"] = a[..., : len(before)].float().sum(-1).half()
    torch.save(result, out / f"{name}.pt")
    print(f"{name}: {len(ctx)} tokens, needle unit {needle[0]} of {len(chunk)}", file=sys.stderr, flush=True)


def needle_rank(d: dict[str, Any], token_scores: torch.Tensor, top: int = 3, budget: int = 1024) -> tuple[int, int]:
    """The needle sentence's rank (1 = best) by the sentence rule, and how many sentences best first fit in budget."""
    from compressors.gemfilter import unit_scores

    sizes = d["sizes"]
    ranked = unit_scores(sizes, token_scores.float(), torch.tensor(d["votes"]), top)
    order = ranked.argsort(descending=True, stable=True).tolist()
    used = fit = 0
    for i in order:
        if used + sizes[i] <= budget:
            used += sizes[i]
            fit += 1
    return order.index(d["needle"]) + 1, fit


def analyse(folder: Path, name: str) -> None:
    """Per layer and rule (plain, contrast): the needle sentence's rank / sentences that fit, one column a sample.

    Writes bench/results/<name>.json + .md.
    """
    from bench.common import write_results

    dumps = [torch.load(f) for f in sorted(folder.glob("*.pt"))]
    rows: list[dict[str, Any]] = []
    for rule in ("plain", "contrast"):
        for layer in range(dumps[0]["question"].shape[0]):
            row: dict[str, Any] = {"rule": rule, "layer": layer + 1}
            for d in dumps:
                asked = d["question"][layer].float().sum(0).mean(0)
                plain = d["neutral"][layer].float().sum(0).mean(0)
                damp = 0.1 * plain.mean()
                scores = asked if rule == "plain" else (asked + damp) / (plain + damp)
                rank, fit = needle_rank(d, scores)
                depth = sum(d["sizes"][: d["needle"]]) / sum(d["sizes"])
                row[f"{d['name']} @{depth:.2f}"] = f"{rank}/{fit}"
            rows.append(row)
    note = (
        "Cells: the needle sentence's rank in its 8K scoring chunk by the sentence rule (3 best word tokens) / how "
        "many sentences best first fit in 1024 tokens (kept if rank <= that); @ = the needle's place in the chunk "
        "(0 = start, farthest from the question). SmolLM2-135M, float32 on a CPU; harness niah_single samples at 8K "
        "(real text, seeds outside the eval seeds) and the slow test's 32K Walden start needle (first chunk)."
    )
    write_results(name, f"{name}: needle rank by layer in one scoring chunk", "smollm2", rows, note=note)
    print(f"bench/results/{name}.md")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="101,103,105,107,109")
    p.add_argument("--length", default="8K")
    p.add_argument("--walden", action="store_true", help="also the slow test's 32K start/middle/end document")
    p.add_argument("--dump", type=Path)
    p.add_argument("--analyse", type=Path, help="rank table from an earlier --dump folder (no forward passes)")
    p.add_argument("--name", default="gemfilter-position-8k", help="--analyse: results name")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    args = p.parse_args()
    if args.analyse:
        analyse(args.analyse, args.name)
        return 0
    from evals.cli import parse_length
    from evals.tasks import generate

    engine = create_engine(EngineConfig(kind="native", device=args.device, dtype=args.dtype))
    layer = resolve_layer(engine, GemFilterConfig())
    args.dump.mkdir(parents=True, exist_ok=True)
    if args.walden:
        from compressors.calibration import plant_needle

        ids = engine.tokenize((Path(__file__).resolve().parents[1] / "examples" / "walden_long.txt").read_text())
        text = engine.detokenize(ids[:32_000])
        rng = random.Random(7)
        needles = []
        for depth in (0.02, 0.5, 0.98):
            needles.append(plant_needle(text, depth, rng))
            text = needles[-1].text
        dump_one(engine, text, needles[0].question, needles[0].answer, layer, args.dump, "walden-start")
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        sample = generate("niah_single", engine, parse_length(args.length), seed)
        name = f"{sample.info['haystack']}-{args.length}-{seed}"
        dump_one(engine, sample.document.text, sample.question.question, sample.answers[0], layer, args.dump, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
