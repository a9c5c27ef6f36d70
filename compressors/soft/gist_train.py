"""`tome train gist`: train gist tokens (LoRA + gist embeddings) by distillation on corpus text, CPU or GPU.

Teacher: the frozen model reading [prompt; full context; question; answer]. Student: the same model reading the
context in gist form (compressors/soft/gist.py: gists after every chunk, the gist mask), LoRA on chunks and
gists only. The objective is KL(teacher || student) over the answer tokens' next-token distributions
(`--loss kl`, the default), or the student's cross-entropy on the answer (`--loss ce`); both are logged either
way. The rate alternates per step over the adapter's rates.

With `--model-dir` it loads the model straight from an HF folder (a GPU host); without it the model comes from
the settings. matplotlib, where missing, only skips the loss-curve PNG (`--report-only` draws it and the card later
from the log).

    tome train gist --model-dir DIR --device cuda --corpus DIR --output FILE --minutes N
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from compressors.soft.data import Example, ExampleMaker
from compressors.soft.gist import SHIPPED, GistConfig, GistModel, layout
from compressors.soft.train import ReadTexts, answer_logits, engine_config, mean, plot_losses
from engines import create_engine
from engines.adapters import LOG, PLOT, Card, write_card
from engines.base import Engine
from engines.prompting import prompt_around
from engines.settings import Settings
from engines.types import Task


def gist_step(
    engine: Engine, gist: GistModel, examples: Sequence[Example], rate: int, loss: str = "kl"
) -> tuple[torch.Tensor, dict[str, float]]:
    """The objective on a batch and its measures: `loss` (KL, whatever is optimised), student and teacher CE."""
    model = engine.hf_model  # type: ignore[attr-defined]
    embed = model.get_input_embeddings()
    device = gist.device
    layouts, teacher_rows, starts, lengths = [], [], [], []
    for ex in examples:
        before, after = prompt_around(engine, Task(ex.question))
        layouts.append(layout(before, ex.context, after + ex.answer, gist.config, rate))
        teacher_rows.append(embed(torch.tensor(before + ex.context + after + ex.answer, device=device)))
        starts.append(len(before) + len(ex.context) + len(after))
        lengths.append(len(ex.answer))
    with torch.no_grad():
        teacher = answer_logits(model, teacher_rows, starts, lengths)
    student = gist.answer_logits(layouts, lengths)
    kl = F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True, reduction="batchmean")
    gold = torch.tensor([t for ex in examples for t in ex.answer], device=device)
    ce = F.cross_entropy(student, gold)
    stats = {"loss": kl.item(), "student_ce": ce.item(), "teacher_ce": F.cross_entropy(teacher, gold).item()}
    return (kl if loss == "kl" else ce), stats


@torch.no_grad()
def held_out(engine: Engine, gist: GistModel, examples: Sequence[Example], batch: int) -> dict[str, float]:
    """Mean KL and student CE per rate on a fixed set of examples the training never sees."""
    out: dict[str, float] = {}
    gist.eval()
    for rate in gist.config.rates:
        parts = [gist_step(engine, gist, examples[i : i + batch], rate)[1] for i in range(0, len(examples), batch)]
        out[f"heldout_kl@{rate}"] = round(sum(p["loss"] for p in parts) / len(parts), 4)
        out[f"heldout_ce@{rate}"] = round(sum(p["student_ce"] for p in parts) / len(parts), 4)
    gist.train()
    return out


def card(output: Path, run: dict, log: list[dict], evals: list[dict]) -> Card:
    """The gist adapter's card from the run's settings (the log's first row), its steps and held-out rows."""
    k = max(1, len(log) // 10)
    first, last = log[:k], log[-k:]
    c = run["config"]
    held = ""
    if evals:
        a, b = evals[0], evals[-1]
        held = "; held-out ({} examples, step {} -> {}): ".format(run["heldout"], a["step"], b["step"]) + ", ".join(
            f"{r}x KL {a[f'heldout_kl@{r}']:.3f} -> {b[f'heldout_kl@{r}']:.3f}, "
            f"CE {a[f'heldout_ce@{r}']:.3f} -> {b[f'heldout_ce@{r}']:.3f}"
            for r in c["rates"]
        )
    dtype = f", frozen model in {run['dtype']}" if "dtype" in run else ""  # logs before the dtype was recorded lack it
    modules = ", ".join(c["target_modules"])
    facts = f"""- Adapter: `{output.name}` (LoRA rank {c["lora_rank"]}, alpha {c["lora_alpha"]} on {modules},
  acting on chunks and gists only; {math.ceil(c["chunk_tokens"] / min(c["rates"]))} gist embeddings), bf16 safetensors,
  config in the file's metadata. Gists after every {c["chunk_tokens"]} tokens, rates
  {", ".join(f"{r}x" for r in c["rates"])} (chunk tokens / gists per chunk), alternating per step.
- Data: the compllm generator (compressors/soft/data.py) on `{run["corpus"]}` minus the evaluation documents,
  seed {run["seed"]}: planted facts 60%, quoted-sentence continuation 25%, next sentence 15%; contexts of up to
  {run["context_tokens"]} tokens, answers of up to {run["answer_tokens"]}, batches of {run["batch"]}.
- Objective: {"KL(teacher || student)" if run["loss"] == "kl" else "the student's cross-entropy"} on the answer
  tokens; teacher = the frozen model on the full context, student = the model reading through gists.
- Run: {len(log)} steps in {run["minutes"]:.1f} min on {run["device"]}{dtype}, AdamW lr {run["lr"]}.
- Training batches (mean of the first / last {k} steps): KL {mean(first, "loss"):.3f} -> {mean(last, "loss"):.3f};
  student CE {mean(first, "student_ce"):.3f} -> {mean(last, "student_ce"):.3f} (teacher on the full context:
  {mean(log, "teacher_ce"):.3f}){held}."""
    return Card(
        title=f"Gist tokens for {c['base_model']}",
        about=f"Written by `tome train gist` (compressors/soft/gist_train.py) from its log (`{LOG}`).",
        body=[("", facts)],
    )


def report(output: Path) -> None:
    """Loss curve and card from the log in the adapter's folder (no curve without matplotlib: a bare GPU host)."""
    rows = [json.loads(line) for line in (output.parent / LOG).read_text().splitlines()]
    run = next(r for r in rows if "config" in r)
    log = [r for r in rows if "step" in r and "loss" in r]
    evals = [r for r in rows if "step" in r and any(k.startswith("heldout_") for k in r)]
    try:
        plot_losses(log, output.parent / PLOT)
    except ImportError:
        print("matplotlib missing: no loss curve (run --report-only where it is installed)", flush=True)
    write_card(output.parent, card(output, run, log, evals))


def build_parser(corpus: Path) -> argparse.ArgumentParser:
    """`tome train gist`'s options; the corpus defaults to the one `tome train` passes."""
    parser = argparse.ArgumentParser(prog="tome train gist", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="an HF model folder, not the settings' model")
    parser.add_argument("--model", default=None, help="without --model-dir: a model alias (default TOME_MODEL)")
    parser.add_argument("--device", default=None, help="cpu, cuda or auto (default: TOME_DEVICE, or auto)")
    parser.add_argument(
        "--dtype", default="auto", help="the frozen model's dtype; auto: bfloat16 on CUDA, float32 on CPU"
    )
    parser.add_argument("--corpus", type=Path, default=corpus)
    parser.add_argument("--output", type=Path, default=SHIPPED, help="the weights file; its folder gets the rest")
    parser.add_argument("--steps", type=int, default=400, help="cosine schedule length; --minutes may stop earlier")
    parser.add_argument("--minutes", type=float, default=20.0, help="wall-clock limit; stops with a saved adapter")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--context-tokens", type=int, default=160)
    parser.add_argument("--answer-tokens", type=int, default=16)
    parser.add_argument("--chunk-tokens", type=int, default=GistConfig.chunk_tokens)
    parser.add_argument("--loss", choices=("kl", "ce"), default="kl")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: a shared CPU)")
    parser.add_argument("--save-every", type=int, default=25)
    parser.add_argument("--eval-every", type=int, default=50, help="held-out measure every N steps (and at the end)")
    parser.add_argument("--heldout", type=int, default=8, help="held-out examples (seed + 10000)")
    parser.add_argument("--report-only", action="store_true", help="draw the curve and card from --output's log")
    return parser


def gist_to_train(args: argparse.Namespace, settings: Settings) -> tuple[Engine, GistModel]:
    """The frozen model on its engine (in --dtype) and a fresh gist model over it."""
    torch.manual_seed(args.seed)
    config = engine_config(args, settings)  # compllm's
    if args.dtype == "auto":
        # On the 2-core CPU a bf16 training step (204 tokens) took 12 s forward and 65 s backward against 1.7 and
        # 1.6 s in float32: bf16 matmuls there are slow, their backward above all.
        from engines.native import pick_device  # here: importing the native engine brings in triton, which must
        # not happen before a test session sets TRITON_INTERPRET (tests/test_kernels_gpu_paths.py)

        args.dtype = "bfloat16" if pick_device(config.device) == "cuda" else "float32"
    engine = create_engine(replace(config, dtype=args.dtype))
    model = engine.hf_model  # type: ignore[attr-defined]
    for p in model.parameters():
        p.requires_grad_(False)
    gist_config = GistConfig(chunk_tokens=args.chunk_tokens, base_model=Path(str(engine.path)).name)  # type: ignore[attr-defined]
    return engine, GistModel(model, gist_config, seed=args.seed).to(model.device)


def run_record(args: argparse.Namespace, gist: GistModel) -> dict[str, Any]:
    """The run's settings, the log's first row (the card reads it; the total time goes in at the end)."""
    device = f"{gist.device.type}" + (f" ({torch.cuda.get_device_name()})" if gist.device.type == "cuda" else "")
    if gist.device.type == "cpu":
        device += f", {torch.get_num_threads()} thread(s)"
    return {
        "config": {k: v for k, v in vars(gist.config).items() if k != "extra"},
        "corpus": str(args.corpus),
        "seed": args.seed,
        "context_tokens": args.context_tokens,
        "answer_tokens": args.answer_tokens,
        "batch": args.batch,
        "loss": args.loss,
        "lr": args.lr,
        "dtype": args.dtype,
        "device": device,
        "heldout": args.heldout,
        "minutes": 0.0,
    }


def train(
    args: argparse.Namespace, engine: Engine, gist: GistModel, texts: list[str], log_path: Path, start: float
) -> int:
    """Steps until --steps or the wall-clock limit (with room for two more), every row into the log as it comes,
    held-out measures and checkpoints on schedule; the number of steps run."""
    gist_config = gist.config
    tokenizer = engine.hf_tokenizer  # type: ignore[attr-defined]
    maker = ExampleMaker(texts, tokenizer, args.context_tokens, args.answer_tokens, args.seed)
    heldout_maker = ExampleMaker(texts, tokenizer, args.context_tokens, args.answer_tokens, args.seed + 10_000)
    heldout = [heldout_maker() for _ in range(args.heldout)]
    trainable = [p for p in gist.parameters() if p.requires_grad]
    print(f"trainable parameters: {sum(p.numel() for p in trainable):,} on {gist.device}", flush=True)
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)),
    )
    run = run_record(args, gist)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    gist.train()
    step = 0
    with log_path.open("w", encoding="utf-8") as out:

        def write(row: dict) -> None:
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(json.dumps(row), flush=True)

        write(run)
        write({"step": 0, **held_out(engine, gist, heldout, args.batch)})
        for step in range(1, args.steps + 1):
            t0 = time.perf_counter()
            rate = gist_config.rates[step % len(gist_config.rates)]
            loss, stats = gist_step(engine, gist, [maker() for _ in range(args.batch)], rate, args.loss)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            seconds = time.perf_counter() - t0
            write(
                {"step": step, "rate": rate, **{k: round(v, 4) for k, v in stats.items()}, "seconds": round(seconds, 2)}
            )
            done = step == args.steps or time.perf_counter() - start + 2 * seconds > args.minutes * 60
            if step % args.eval_every == 0 or done:
                write({"step": step, **held_out(engine, gist, heldout, args.batch)})
            if step % args.save_every == 0 or done:
                minutes = (time.perf_counter() - start) / 60
                gist.config = replace(
                    gist_config, extra={"steps": step, "minutes": round(minutes, 1), "seed": args.seed}
                )
                gist.save(args.output)
            if done:
                break
    return step


def trained(args: argparse.Namespace, read_texts: ReadTexts, settings: Settings) -> str:
    """Train, then put the run's total time into the log's first row (the card reads it); the line to end on."""
    start = time.perf_counter()
    engine, gist = gist_to_train(args, settings)
    log_path = args.output.parent / LOG
    step = train(args, engine, gist, read_texts(args.corpus), log_path, start)
    minutes = (time.perf_counter() - start) / 60
    rows = log_path.read_text(encoding="utf-8").splitlines()
    run = {**json.loads(rows[0]), "minutes": minutes}
    log_path.write_text("\n".join([json.dumps(run), *rows[1:]]) + "\n", encoding="utf-8")
    return f"saved {args.output} after {step} steps, {minutes:.1f} min"


def main(argv: Sequence[str] | None, read_texts: ReadTexts, corpus: Path, settings: Settings) -> int:
    """`tome train gist`: `read_texts(corpus)` gives the training texts (the evaluation documents left out); with
    --report-only it only draws the curve and card again."""
    args = build_parser(corpus).parse_args(argv)
    ending = None if args.report_only else trained(args, read_texts, settings)
    report(args.output)
    if ending:
        print(ending, flush=True)
    return 0
