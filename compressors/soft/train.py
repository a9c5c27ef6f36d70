"""`tome train compllm`: distil the segment compressor on corpus text (CPU-sized by default).

The frozen model reading [prompt; compressed context; question; answer] should predict the answer tokens
as it does when it reads the full context: the loss is KL(teacher || student) over the answer tokens'
next-token distributions, the teacher being the same frozen model (no LoRA) on the uncompressed context.
Only the LoRA, the slot embeddings and the head learn. A wall-clock limit stops the run early with a
usable adapter (checkpoints are written as it goes); the log, a loss-curve PNG and MODEL_CARD.md are
written beside the adapter.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from compressors.soft.data import Example, ExampleMaker, training_texts
from compressors.soft.model import SHIPPED, CompressorConfig, SegmentCompressor
from engines import EngineConfig, create_engine
from engines.prompting import prompt_around
from engines.types import Task

CORPUS = Path("/work/shared/data/corpus")


def segments_of(ids: Sequence[int], size: int) -> list[list[int]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


def answer_logits(
    model: torch.nn.Module, rows: list[torch.Tensor], starts: list[int], lengths: list[int]
) -> torch.Tensor:
    """Next-token logits for every answer token of every row, concatenated: rows are embedding sequences."""
    width = max(r.shape[0] for r in rows)
    batch = torch.stack([torch.cat([r, r.new_zeros(width - r.shape[0], r.shape[1])]) for r in rows])
    mask = torch.stack([torch.arange(width) < r.shape[0] for r in rows]).long().to(batch.device)
    hidden = model.model(inputs_embeds=batch, attention_mask=mask).last_hidden_state
    picked = torch.cat([hidden[i, s - 1 : s - 1 + n] for i, (s, n) in enumerate(zip(starts, lengths, strict=True))])
    return model.lm_head(picked).float()


def distillation_step(
    engine, compressor: SegmentCompressor, examples: list[Example], rate: int
) -> tuple[torch.Tensor, dict[str, float]]:
    model = engine.hf_model
    embed = model.get_input_embeddings()
    device = compressor.device
    size = compressor.config.segment_tokens
    prompts = [prompt_around(engine, Task(ex.question)) for ex in examples]
    pieces = [segments_of(ex.context, size) for ex in examples]
    compressed = compressor([s for p in pieces for s in p], rate)
    teacher_rows, student_rows, t_starts, s_starts, lengths = [], [], [], [], []
    for ex, (before, after), segs in zip(examples, prompts, pieces, strict=True):
        ctx = torch.cat(compressed[: len(segs)])
        compressed = compressed[len(segs) :]
        head = embed(torch.tensor(before, device=device))
        tail = embed(torch.tensor(after + ex.answer, device=device))
        student_rows.append(torch.cat([head, ctx, tail]))
        teacher_rows.append(embed(torch.tensor(before + ex.context + after + ex.answer, device=device)))
        s_starts.append(len(before) + ctx.shape[0] + len(after))
        t_starts.append(len(before) + len(ex.context) + len(after))
        lengths.append(len(ex.answer))
    with torch.no_grad():
        teacher = answer_logits(model, teacher_rows, t_starts, lengths)
    student = answer_logits(model, student_rows, s_starts, lengths)
    loss = F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True, reduction="batchmean")
    gold = torch.tensor([t for ex in examples for t in ex.answer], device=device)
    stats = {
        "student_ce": F.cross_entropy(student.detach(), gold).item(),
        "teacher_ce": F.cross_entropy(teacher, gold).item(),
    }
    return loss, stats


def plot_losses(log: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in log]
    window = max(1, len(log) // 20)

    def smooth(key: str) -> list[float]:
        vals = [r[key] for r in log]
        return [
            sum(vals[max(0, i - window + 1) : i + 1]) / len(vals[max(0, i - window + 1) : i + 1])
            for i in range(len(vals))
        ]

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, smooth("loss"), label="KL(teacher || student), answer tokens")
    ax.plot(steps, smooth("student_ce"), label="student CE on the answer")
    ax.plot(steps, smooth("teacher_ce"), label="teacher CE (full context)")
    ax.set_xlabel("step")
    ax.set_ylabel(f"nats/token (moving mean of {window})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_card(
    path: Path,
    args: argparse.Namespace,
    config: CompressorConfig,
    log: list[dict],
    seconds: float,
    device: torch.device,
) -> None:
    def mean(rows: list[dict], key: str) -> float:
        return sum(r[key] for r in rows) / max(1, len(rows))

    k = max(1, len(log) // 10)
    hardware = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} CPU thread(s)"
    first, last = log[:k], log[-k:]
    kinds = "planted facts 60%, quoted-sentence continuation 25%, next sentence 15%"
    text = f"""# CompLLM segment compressor for {config.base_model}

Written by `tome train compllm` (compressors/soft/train.py); the numbers below come from its log
(`{args.output.stem}.log.jsonl`) and the curve from the same log (`{args.output.stem}-loss.png`).

- Adapter: `{args.output.name}` (LoRA rank {config.lora_rank}, alpha {config.lora_alpha} on
  {", ".join(config.target_modules)}; {config.max_slots} slot embeddings;
  a square linear head added to mean-pooled token embeddings),
  bf16 safetensors, config in the file's metadata. Rates {", ".join(f"{r}x" for r in config.rates)},
  segments of {config.segment_tokens} tokens.
- Data: `{args.corpus}` minus the evaluation documents (`evals.corpus.EVAL_DOCS`), unwrapped; examples generated
  with the trainer's own seeds (`compllm-train:{args.seed}`): {kinds}. Contexts of up to {args.context_tokens}
  tokens, answers of up to {args.answer_tokens} tokens, batches of {args.batch}; the rate alternates per step.
- Objective: KL(teacher || student) over the answer tokens' next-token distributions; teacher = the frozen model
  on the full context, student = the same frozen model on the compressed context. Only LoRA, slots and head learn.
- Run: {len(log)} steps in {seconds / 60:.1f} min on {hardware}, AdamW lr {args.lr}
  (head: {args.lr * args.head_lr_scale:g}).
- Loss (mean of the first / last {k} steps): KL {mean(first, "loss"):.3f} -> {mean(last, "loss"):.3f};
  student CE on the answer {mean(first, "student_ce"):.3f} -> {mean(last, "student_ce"):.3f}
  (teacher on the full context: {mean(log, "teacher_ce"):.3f}).

![loss]({args.output.stem}-loss.png)

Limits: trained for minutes with short contexts; how well it answers from long compressed documents is
measured in bench/results/compress-soft*.md, not assumed from the loss.
"""
    # The card is shared: sections of other adapters (gist's, from its "## " heading on) stay as they are.
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    others = old[old.index("\n## ") :] if "\n## " in old else ""
    path.write_text(text + others, encoding="utf-8")


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """The native engine to train on: an explicit folder needs no service settings (and none of their packages),
    which is how a GPU host with only torch, transformers and peft runs the trainer."""
    if args.model_dir is not None:
        return EngineConfig(
            kind="native", model=str(args.model_dir), device=args.device or "auto", threads=args.threads
        )
    from service.settings import Settings

    device = {"device": args.device} if args.device else {}
    return Settings().engine_config(kind="native", threads=args.threads, model=args.model, **device)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tome train compllm", description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--output", type=Path, default=SHIPPED)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument(
        "--minutes", type=float, default=35.0, help="wall-clock limit; stops early with a saved adapter"
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--context-tokens", type=int, default=128)
    parser.add_argument("--answer-tokens", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--head-lr-scale", type=float, default=0.02, help="the head's learning rate, as a share of --lr"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save-every", type=int, default=25)
    parser.add_argument("--model", default=None, help="default: TOME_MODEL or smollm2")
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="an HF model folder; skips the service settings (GPU hosts)"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or auto (default: TOME_DEVICE)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    engine = create_engine(engine_config(args))
    model = engine.hf_model
    for p in model.parameters():
        p.requires_grad_(False)
    config = CompressorConfig(base_model=Path(str(engine.path)).name)
    compressor = SegmentCompressor(model, config).to(model.device)
    maker = ExampleMaker(
        training_texts(args.corpus), engine.hf_tokenizer, args.context_tokens, args.answer_tokens, args.seed
    )
    trainable = [p for p in compressor.parameters() if p.requires_grad]
    print(f"trainable parameters: {sum(p.numel() for p in trainable):,}", flush=True)
    # The head's outputs add to embeddings about 15x smaller than the hidden states it reads: at the LoRA's rate
    # its noise buried the pooled embeddings in a first run (loss flat for 80 steps), so it learns far slower.
    head = list(compressor.head.parameters())
    rest = [p for p in trainable if all(p is not h for h in head)]
    optimizer = torch.optim.AdamW(
        [{"params": rest, "lr": args.lr}, {"params": head, "lr": args.lr * args.head_lr_scale}], weight_decay=0.0
    )
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)),
    )
    log_path = args.output.with_name(args.output.stem + ".log.jsonl")
    log: list[dict] = []
    compressor.train()
    with log_path.open("w", encoding="utf-8") as out:
        for step in range(1, args.steps + 1):
            t0 = time.perf_counter()
            rate = config.rates[step % len(config.rates)]
            loss, stats = distillation_step(engine, compressor, [maker() for _ in range(args.batch)], rate)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            row = {
                "step": step,
                "rate": rate,
                "loss": round(loss.item(), 4),
                **{k: round(v, 4) for k, v in stats.items()},
            }
            row["seconds"] = round(time.perf_counter() - t0, 2)
            log.append(row)
            out.write(json.dumps(row) + "\n")
            out.flush()
            elapsed = time.perf_counter() - start
            print(json.dumps({**row, "elapsed_min": round(elapsed / 60, 1)}), flush=True)
            done = step == args.steps or elapsed + 2 * row["seconds"] > args.minutes * 60
            if step % args.save_every == 0 or done:
                compressor.config = replace(
                    config, extra={"steps": step, "minutes": round(elapsed / 60, 1), "seed": args.seed}
                )
                compressor.save(args.output)
                plot_losses(log, args.output.with_name(args.output.stem + "-loss.png"))
                write_card(args.output.with_name("MODEL_CARD.md"), args, config, log, elapsed, compressor.device)
            if done:
                break
    print(f"saved {args.output} after {len(log)} steps, {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
