"""`tome train compllm`: distil the segment compressor on corpus text (CPU-sized by default).

The frozen model reading [prompt; compressed context; question; answer] should predict the answer tokens
as it does when it reads the full context: the loss is KL(teacher || student) over the answer tokens'
next-token distributions, the teacher being the same frozen model (no LoRA) on the uncompressed context.
With `--reconstruct-share S` the first S of the run is reconstruction (ICAE-style autoencoding) instead: the
frozen model reading [prompt; compressed text; "Repeat the text above word for word."] must give the text back,
cross-entropy on every token, a target per context token where distillation has a handful per example.
Only the LoRA, the slot embeddings and the head learn. A wall-clock limit stops the run early with a
usable adapter (checkpoints are written as it goes); the log, a loss-curve PNG and MODEL_CARD.md are
written into the adapter's folder (engines/adapters/<name>/).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import multiprocessing as mp
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from compressors.soft.data import ANSWER_FORMAT, REPEAT, Example, ExampleMaker
from compressors.soft.model import SHIPPED, CompressorConfig, SegmentCompressor, segments_of
from engines import EngineConfig, create_engine
from engines.adapters import LOG, PLOT, Card, write_card
from engines.base import Engine
from engines.prompting import prompt_around
from engines.settings import Settings
from engines.types import Task

ReadTexts = Callable[[Path], list[str]]  # a corpus folder -> its training texts

ANSWERED = ("fact", "location")  # kinds with one right answer: the held-out "answers right" counts these


def answer_positions(starts: Sequence[int], lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of the hidden state that predicts each answer token, every row's answer in turn."""
    rows = [i for i, n in enumerate(lengths) for _ in range(n)]
    cols = [s - 1 + j for s, n in zip(starts, lengths, strict=True) for j in range(n)]
    return torch.tensor(rows), torch.tensor(cols)


def logits_at(
    model: torch.nn.Module, batch: torch.Tensor, widths: Sequence[int], starts: Sequence[int], lengths: Sequence[int]
) -> torch.Tensor:
    """Next-token logits for every answer token of a right-padded [rows, width, hidden] batch, concatenated."""
    device = batch.device
    mask = (torch.arange(batch.shape[1])[None, :] < torch.tensor(widths)[:, None]).long().to(device)
    hidden = model.model(inputs_embeds=batch, attention_mask=mask).last_hidden_state
    rows, cols = answer_positions(starts, lengths)
    return model.lm_head(hidden[rows.to(device), cols.to(device)]).float()


def answer_logits(
    model: torch.nn.Module, rows: list[torch.Tensor], starts: list[int], lengths: list[int]
) -> torch.Tensor:
    """Next-token logits for every answer token of every row, concatenated: rows are embedding sequences."""
    batch = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    return logits_at(model, batch, [r.shape[0] for r in rows], starts, lengths)


def padded(rows: list[list[int]], fill: int = 0) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([[*r, *[fill] * (width - len(r))] for r in rows])


def step_logits(
    engine, compressor: SegmentCompressor, examples: list[Example], rate: int, teacher: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(student, teacher, gold): next-token logits for every answer token of the batch, and the answer tokens
    (no teacher pass, and None for it, with `teacher=False`).

    Each side is one padded batch built from ids laid out here and sent in one copy (a copy and an embedding
    call per example, and a slice per row, were hundreds of small GPU calls a step); the student's rows take the
    compressed vectors by one gather where its ids say "slot"."""
    model = engine.hf_model
    embed = model.get_input_embeddings()
    device = compressor.device
    size = compressor.config.segment_tokens
    prompts = [prompt_around(engine, Task(ex.question)) for ex in examples]
    pieces = [segments_of(ex.context, size) for ex in examples]
    compressed = compressor([s for p in pieces for s in p], rate)
    slots = [sum(compressor.config.slots(len(seg), rate) for seg in p) for p in pieces]
    teacher_ids, student_ids, t_starts, s_starts, lengths = [], [], [], [], []
    for ex, (before, after), k in zip(examples, prompts, slots, strict=True):
        teacher_ids.append(before + ex.context + after + ex.answer)
        student_ids.append(before + [-1] * k + after + ex.answer)  # -1: the next compressed vector
        t_starts.append(len(before) + len(ex.context) + len(after))
        s_starts.append(len(before) + k + len(after))
        lengths.append(len(ex.answer))
    teacher_logits = None
    if teacher:
        with torch.no_grad():
            ids = padded(teacher_ids).to(device)
            teacher_logits = logits_at(model, embed(ids), [len(r) for r in teacher_ids], t_starts, lengths)
    ids = padded(student_ids).to(device)
    is_slot = ids == -1
    rows = embed(ids.clamp(min=0)).index_put((is_slot,), torch.cat(compressed))  # row-major: the slots in order
    student = logits_at(model, rows, [len(r) for r in student_ids], s_starts, lengths)
    gold = torch.tensor([t for ex in examples for t in ex.answer]).to(device)
    return student, teacher_logits, gold


def distillation_step(
    engine, compressor: SegmentCompressor, examples: list[Example], rate: int, ce_weight: float = 0.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """KL(teacher || student) per answer token (plus `ce_weight` times the student's cross-entropy on the gold answer,
    where the small teacher misreads a fact), and the two cross-entropies on the answer for the log."""
    student, teacher, gold = step_logits(engine, compressor, examples, rate)
    assert teacher is not None
    loss = F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True, reduction="batchmean")
    student_ce = F.cross_entropy(student, gold)
    stats = {"student_ce": student_ce.item(), "teacher_ce": F.cross_entropy(teacher, gold).item()}
    if ce_weight:
        stats["kl"] = loss.item()
        loss = loss + ce_weight * student_ce
    return loss, stats


def reconstruction_step(
    engine, compressor: SegmentCompressor, examples: list[Example], rate: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """The student's cross-entropy on every token of the text it is asked to repeat (no teacher pass), and its
    token accuracy (argmax given the gold prefix) for the log."""
    student, _, gold = step_logits(engine, compressor, examples, rate, teacher=False)
    loss = F.cross_entropy(student, gold)
    return loss, {"recon_acc": (student.argmax(-1) == gold).float().mean().item()}


@torch.no_grad()
def held_out_reconstruction(
    engine, compressor: SegmentCompressor, examples: list[Example], rates: Sequence[int], batch: int
) -> dict[str, float]:
    """Per rate on a fixed held-out set of texts to repeat: CE per token and token accuracy (argmax given the gold
    prefix), and the frozen model's token accuracy when it reads the text itself (`recon_acc_full`)."""
    was_training = compressor.training
    compressor.eval()
    out: dict[str, float] = {}
    for rate in rates:
        ce = right = full = tokens = 0.0
        for i in range(0, len(examples), batch):
            student, teacher, gold = step_logits(engine, compressor, examples[i : i + batch], rate)
            assert teacher is not None
            ce += F.cross_entropy(student, gold, reduction="sum").item()
            right += (student.argmax(-1) == gold).sum().item()
            full += (teacher.argmax(-1) == gold).sum().item()
            tokens += gold.numel()
        out |= {f"recon_ce@{rate}": round(ce / tokens, 4), f"recon_acc@{rate}": round(right / tokens, 4)}
        out["recon_acc_full"] = round(full / tokens, 4)
    compressor.train(was_training)
    return out


@torch.no_grad()
def held_out(
    engine, compressor: SegmentCompressor, examples: list[Example], rates: Sequence[int], batch: int
) -> dict[str, float]:
    """Per rate on a fixed held-out set: KL, student CE, and how many of its fact and location answers the student
    and the teacher get right token for token when each answer token is predicted from the gold prefix (argmax)."""
    was_training = compressor.training
    compressor.eval()
    out: dict[str, float] = {}
    for rate in rates:
        kl = ce = tokens = 0.0
        right = teacher_right = 0
        for i in range(0, len(examples), batch):
            part = examples[i : i + batch]
            student, teacher, gold = step_logits(engine, compressor, part, rate)
            assert teacher is not None
            kl += F.kl_div(
                F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True, reduction="sum"
            ).item()
            ce += F.cross_entropy(student, gold, reduction="sum").item()
            tokens += gold.numel()
            at = 0
            for ex in part:
                n = len(ex.answer)
                if ex.kind in ANSWERED:
                    right += bool((student[at : at + n].argmax(-1) == gold[at : at + n]).all())
                    teacher_right += bool((teacher[at : at + n].argmax(-1) == gold[at : at + n]).all())
                at += n
        answered = max(1, sum(ex.kind in ANSWERED for ex in examples))
        out |= {
            f"kl@{rate}": round(kl / tokens, 4),
            f"student_ce@{rate}": round(ce / tokens, 4),
            f"answers@{rate}": round(right / answered, 4),
            "teacher_answers": round(teacher_right / answered, 4),
        }
    compressor.train(was_training)
    return out


def plot_losses(log: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = [r for r in log if "loss" in r]  # training rows (held-out rows are drawn apart)
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


def logged_rates(row: dict, measure: str) -> list[int]:
    """The rates a held-out log row has `measure` for (its keys are `measure@rate`)."""
    return sorted(int(key.split("@")[1]) for key in row if key.startswith(f"{measure}@"))


def plot_run(log: list[dict], path: Path) -> None:
    """The training curve, and beside it the held-out measures per rate when the log has them: distillation's
    (KL, answers right) and reconstruction's (CE, token accuracy) each in a panel of its own."""
    heldout = [r for r in log if r.get("heldout")]
    train = [r for r in log if "loss" in r]
    repeat = [r for r in train if r.get("objective") == "reconstruct"]
    if not heldout and not repeat:
        plot_losses(log, path)
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    distill = [r for r in train if "teacher_ce" in r]
    scored = [r for r in heldout if any(k.startswith("kl@") for k in r)]
    repeated = [r for r in heldout if any(k.startswith("recon_acc@") for k in r)]
    panels = 1 + bool(scored) + bool(repeated)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    left, rest = axes[0][0], list(axes[0][1:])
    window = max(1, len(train) // 25)

    def curve(rows: list[dict], key: str, label: str) -> None:
        vals = [r[key] for r in rows]
        smooth = [sum(vals[max(0, i - window + 1) : i + 1]) / min(i + 1, window) for i in range(len(vals))]
        left.plot([r["step"] for r in rows], smooth, label=label)

    kl = "kl" if distill and "kl" in distill[0] else "loss"  # with --ce-weight the loss is more than the KL
    if distill:
        for key, label in ((kl, "KL(teacher || student)"), ("student_ce", "student CE"), ("teacher_ce", "teacher CE")):
            curve(distill, key, label)
    if repeat:
        curve(repeat, "loss", "reconstruction CE (every token)")
    left.set_title(f"training batches (moving mean of {window})")
    left.set_xlabel("step")
    left.set_ylabel("nats per target token")
    left.legend()
    if scored:
        right = rest.pop(0)
        steps = [r["step"] for r in scored]
        rates = logged_rates(scored[0], "kl")
        for rate in rates:
            right.plot(steps, [r[f"kl@{rate}"] for r in scored], marker="o", label=f"KL, {rate}x")
        twin = right.twinx()
        for rate in rates:
            answers = [r[f"answers@{rate}"] for r in scored]
            twin.plot(steps, answers, ls="--", marker="x", label=f"answers right, {rate}x")
        twin.plot(steps, [r["teacher_answers"] for r in scored], ls=":", color="k", label="answers right, full context")
        twin.set_ylim(0, 1)
        right.set_title(f"held-out set ({scored[0].get('examples', '?')} examples)")
        right.set_xlabel("step")
        right.set_ylabel("KL, nats per answer token")
        twin.set_ylabel("share of answers right (teacher-forced argmax)")
        lines = right.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        right.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="center right")
    if repeated:
        right = rest.pop(0)
        steps = [r["step"] for r in repeated]
        rates = logged_rates(repeated[0], "recon_acc")
        for rate in rates:
            right.plot(steps, [r[f"recon_acc@{rate}"] for r in repeated], marker="o", label=f"token accuracy, {rate}x")
        if "recon_acc_full" in repeated[0]:
            full = [r["recon_acc_full"] for r in repeated]
            right.plot(steps, full, ls=":", color="k", label="token accuracy, reading the text itself")
        right.set_ylim(0, 1)
        right.set_title(f"held-out reconstruction ({repeated[0].get('repeat_examples', '?')} texts)")
        right.set_xlabel("step")
        right.set_ylabel("tokens repeated right (teacher-forced argmax)")
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


KINDS = (
    "planted facts 50% (numbers, words, word pairs, hex codes; a third with 1-3 distractor facts of other keys), "
    "where a person went last 15%, quoted-sentence continuation 20%, next sentence 15%"
)


def mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / max(1, len(rows))


def batches_and_contexts(run: dict[str, Any]) -> tuple[str, str]:
    """How the run sized its batches and its contexts, in words."""
    if run.get("batch_tokens"):
        batches = f"batches of about {run['batch_tokens']} context tokens (so fewer examples when contexts are long)"
    else:
        batches = f"batches of {run['batch']}"
    if run.get("min_context_tokens") and run["min_context_tokens"] < run["context_tokens"]:
        contexts = (
            f"contexts of {run['min_context_tokens']} to {run['context_tokens']} tokens, one length per batch drawn "
            f"log-uniformly up to a cap that grows from the shortest to the longest over the first "
            f"{round(100 * run['ramp'])}% of the run"
        )
    else:
        contexts = f"contexts of up to {run['context_tokens']} tokens"
    return batches, contexts


def heldout_lines(run: dict[str, Any], log: list[dict]) -> str:
    """The held-out measures, first against last, for distillation and for reconstruction (each if logged)."""
    heldout = [r for r in log if any(key.startswith("kl@") for key in r)]
    repeated = [r for r in log if any(key.startswith("recon_acc@") for key in r)]
    text = ""
    if heldout:
        a, b = heldout[0], heldout[-1]
        per = "; ".join(
            f"{r}x KL {a[f'kl@{r}']:.3f} -> {b[f'kl@{r}']:.3f}, student CE {a[f'student_ce@{r}']:.3f} -> "
            f"{b[f'student_ce@{r}']:.3f}, answers right {a[f'answers@{r}']:.2f} -> {b[f'answers@{r}']:.2f}"
            for r in logged_rates(a, "kl")
        )
        counted = "the fact and location answers" if "answers" in run else "all answers"
        text += (
            f"\n- Held-out set ({a.get('examples')} examples of the same kinds from seed {run['seed'] + 10_000}, "
            f"contexts of {run.get('heldout_tokens')} tokens; step {a['step']} -> {b['step']}): {per} (full "
            f"context: {b['teacher_answers']:.2f}; {counted} count, and one is right when every answer token is the "
            "argmax given the gold prefix)."
        )
    if repeated:
        a, b = repeated[0], repeated[-1]
        per = "; ".join(
            f"{r}x CE {a[f'recon_ce@{r}']:.3f} -> {b[f'recon_ce@{r}']:.3f}, token accuracy "
            f"{a[f'recon_acc@{r}']:.3f} -> {b[f'recon_acc@{r}']:.3f}"
            for r in logged_rates(a, "recon_acc")
        )
        if "recon_acc_full" in b:
            per += f"; the frozen model reading the text itself: {b['recon_acc_full']:.3f}"
        text += (
            f"\n- Held-out reconstruction ({a.get('repeat_examples')} texts of {run['reconstruct_tokens']} tokens "
            f"from seed {run['seed'] + 10_000}; step {a['step']} -> {b['step']}): {per} (a token is right when it is "
            "the argmax given the gold prefix)."
        )
    return text


def objective_and_losses(run: dict[str, Any], log: list[dict]) -> tuple[str, str]:
    """What the run optimised (reconstruction first, then distillation, as logged) and its training losses."""
    train = [r for r in log if "teacher_ce" in r]  # distillation steps
    repeat = [r for r in log if r.get("objective") == "reconstruct"]
    k, kr = max(1, len(train) // 10), max(1, len(repeat) // 10)
    ce = f", plus {run['ce_weight']} x the student's CE on the gold answer" if run.get("ce_weight") else ""
    objective = (
        f"KL(teacher || student) over the answer tokens' next-token distributions{ce}; teacher = the frozen\n"
        "  model on the full context, student = the same frozen model on the compressed context."
    )
    if repeat:
        objective = (
            f"reconstruction first ({len(repeat)} steps, {round(100 * run['reconstruct_share'])}% of the run): the "
            f'frozen model reads\n  [prompt; compressed text; "{REPEAT}"] and gives back the text '
            f"({run['reconstruct_tokens']} tokens of corpus text, half with a planted fact), CE on every token"
            + (f"; then {objective}" if train else ".")
        )
    if run.get("init"):
        objective += f" Started from `{Path(run['init']).name}`."
    if not train:
        return objective, (
            f"Reconstruction CE on training batches (mean of the first / last {kr} steps): "
            f"{mean(repeat[:kr], 'loss'):.3f} -> {mean(repeat[-kr:], 'loss'):.3f}."
        )
    first, last = train[:k], train[-k:]
    kl = "kl" if "kl" in train[0] else "loss"  # with --ce-weight the loss is more than the KL
    return objective, (
        f"Training batches (mean of the first / last {k} distillation steps): KL {mean(first, kl):.3f} -> "
        f"{mean(last, kl):.3f};\n  student CE on the answer {mean(first, 'student_ce'):.3f} -> "
        f"{mean(last, 'student_ce'):.3f}\n  (teacher on the full context: {mean(last, 'teacher_ce'):.3f}; later "
        "batches have longer contexts)."
    )


def card(output: Path, run: dict[str, Any], log: list[dict]) -> Card:
    """The compllm adapter's card from the run's settings (the log's first row) and its log."""
    config = run["config"]
    batches, contexts = batches_and_contexts(run)
    objective, losses = objective_and_losses(run, log)
    layers = f"; the compressor runs the first {config['layers']} decoder layers" if config.get("layers") else ""
    steps = sum("loss" in r for r in log)
    facts = f"""- Adapter: `{output.name}` (LoRA rank {config["lora_rank"]}, alpha {config["lora_alpha"]} on
  {", ".join(config["target_modules"])}; {math.ceil(config["segment_tokens"] / min(config["rates"]))} slot embeddings;
  a square linear head added to mean-pooled token embeddings{layers}),
  bf16 safetensors, config in the file's metadata. Rates {", ".join(f"{r}x" for r in config["rates"])},
  segments of {config["segment_tokens"]} tokens.
- Data: `{run["corpus"]}` minus the evaluation documents (`evals.corpus.EVAL_DOCS`), unwrapped; examples generated
  with the trainer's own seeds (`compllm-train:{run["seed"]}`): {KINDS}. {contexts[0].upper() + contexts[1:]};
  fact and location answers: {run.get("answers", "bare values (the value or place alone)")}; sentence answers of up
  to {run["answer_tokens"]} tokens; {batches}; the rate alternates per step.
- Objective: {objective} Only LoRA, slots and head learn.
- Run: {steps} steps in {run["minutes"]:.1f} min on {run["device"]} ({run["dtype"]}), AdamW lr {run["lr"]}
  (head: {run["lr"] * run["head_lr_scale"]:g}), warmup then cosine to a tenth, scheduled on the larger of the
  step and the wall-clock share of the run.
- {losses}{heldout_lines(run, log)}"""
    return Card(
        title=f"CompLLM segment compressor for {config['base_model']}",
        about="Written by `tome train compllm` (compressors/soft/train.py); the numbers below come from its log\n"
        f"(`{LOG}`) and the curve from the same log (`{PLOT}`).",
        body=[("", facts)],
        after=[
            (
                "",
                "Limits: how well it answers from long compressed documents is measured in "
                "bench/results/compress-soft*.md,\nnot assumed from the loss.",
            )
        ],
    )


def report(output: Path) -> None:
    """Curve and card from the log in the adapter's folder (its first row holds the run's settings)."""
    rows = [json.loads(line) for line in (output.parent / LOG).read_text().splitlines()]
    run, log = rows[0]["run"], rows[1:]
    plot_run(log, output.parent / PLOT)
    write_card(output.parent, card(output, run, log))


def engine_config(args: argparse.Namespace, settings: Settings) -> EngineConfig:
    """The native engine to train on: an explicit folder (`--model-dir`), else the settings' model."""
    if args.model_dir is not None:
        return EngineConfig(
            kind="native", model=str(args.model_dir), device=args.device or "auto", threads=args.threads
        )
    device = {"device": args.device} if args.device else {}
    return settings.engine_config(kind="native", threads=args.threads, model=args.model, **device)


# -- examples made ahead: worker processes tokenize while the accelerator trains --

_worker: tuple[ExampleMaker, int] | None = None  # this process's example maker and the run's seed


def _set_worker(maker: ExampleMaker, seed: int) -> None:
    global _worker
    _worker = (maker, seed)


Plan = tuple[int, int, bool]  # a batch's context tokens, examples, and whether they are reconstruction examples


def make_batch(job: tuple[int, int, int, bool]) -> list[Example]:
    """`count` examples with contexts of `tokens` tokens (texts to repeat when `reconstruct`), from a generator
    seeded by the job alone (so a batch is the same whichever process makes it)."""
    number, tokens, count, reconstruct = job
    assert _worker is not None
    maker, seed = _worker
    maker.rng = random.Random(f"compllm-train:{seed}:{number}")
    make = maker.reconstruction if reconstruct else maker
    return [make(tokens) for _ in range(count)]


class Batches:
    """Batches made `ahead` jobs in advance by `workers` processes, or in this process with none."""

    def __init__(self, maker: ExampleMaker, seed: int, workers: int, ahead: int) -> None:
        _set_worker(maker, seed)
        self.pool = None
        if workers > 0:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            self.pool = mp.get_context("fork").Pool(workers, initializer=_set_worker, initargs=(maker, seed))
        self.ahead = max(1, ahead)
        self.pending: collections.deque = collections.deque()
        self.number = 0

    def fill(self, plan: Callable[[], Plan]) -> None:
        while len(self.pending) < (self.ahead if self.pool else 1):
            job = (self.number, *plan())
            self.number += 1
            self.pending.append(self.pool.apply_async(make_batch, (job,)) if self.pool else job)

    def next(self, plan: Callable[[], Plan]) -> list[Example]:
        self.fill(plan)
        item = self.pending.popleft()
        return item.get() if self.pool else make_batch(item)

    def close(self) -> None:
        if self.pool:
            self.pool.terminate()


def lr_factor(progress: float, warmup: float, floor: float = 0.1) -> float:
    """Linear warmup over the first `warmup` of the run, then cosine from 1 down to `floor`."""
    warm = min(1.0, (progress + 1e-9) / warmup) if warmup > 0 else 1.0
    return warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def context_length(progress: float, lo: int, hi: int, ramp: float, rng: random.Random) -> int:
    """A batch's context length: log-uniform between `lo` and a cap growing from `lo` to `hi` over `ramp` of the run."""
    if hi <= lo:
        return hi
    cap = lo * (hi / lo) ** min(1.0, progress / ramp if ramp > 0 else 1.0)
    return round(lo * (cap / lo) ** rng.random())


def build_parser(corpus: Path) -> argparse.ArgumentParser:
    """`tome train compllm`'s options; the corpus defaults to the one `tome train` passes."""
    parser = argparse.ArgumentParser(prog="tome train compllm", description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=corpus)
    parser.add_argument("--output", type=Path, default=SHIPPED, help="the weights file; its folder gets the rest")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument(
        "--minutes", type=float, default=35.0, help="wall-clock limit; stops early with a saved adapter"
    )
    parser.add_argument("--batch", type=int, default=4, help="examples per step (unless --batch-tokens)")
    parser.add_argument(
        "--batch-tokens", type=int, default=0, help="context tokens per step instead of a fixed --batch (GPU)"
    )
    parser.add_argument("--context-tokens", type=int, default=128, help="the longest context")
    parser.add_argument(
        "--min-context-tokens", type=int, default=0, help="the shortest context (default: --context-tokens)"
    )
    parser.add_argument("--ramp", type=float, default=0.5, help="share of the run over which contexts grow")
    parser.add_argument("--answer-tokens", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--head-lr-scale", type=float, default=0.02, help="the head's learning rate, as a share of --lr"
    )
    parser.add_argument("--warmup", type=float, default=0.05, help="share of the run spent warming up")
    parser.add_argument(
        "--ce-weight", type=float, default=0.0, help="adds this times the student's CE on the gold answer to the KL"
    )
    parser.add_argument(
        "--reconstruct-share",
        type=float,
        default=0.0,
        help="share of the run (from its start) spent on reconstruction before distillation; 1: reconstruction only",
    )
    parser.add_argument("--reconstruct-tokens", type=int, default=64, help="tokens of each text to repeat")
    parser.add_argument(
        "--heldout-reconstruct", type=int, default=32, help="held-out texts to repeat (seed + 10000), if reconstructing"
    )
    parser.add_argument("--init", type=Path, default=None, help="start from this adapter's weights (same shape)")
    parser.add_argument("--lora-rank", type=int, default=CompressorConfig.lora_rank)
    parser.add_argument("--layers", type=int, default=0, help="decoder layers the compressor runs (0: all)")
    parser.add_argument("--target-modules", default=",".join(CompressorConfig.target_modules), help="comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0, help="processes making examples ahead (GPU hosts)")
    parser.add_argument("--save-every", type=int, default=25)
    parser.add_argument("--eval-every", type=int, default=0, help="held-out measure every N steps (0: never)")
    parser.add_argument("--heldout", type=int, default=32, help="held-out examples (seed + 10000)")
    parser.add_argument("--heldout-tokens", type=int, default=0, help="held-out contexts (default: the longest)")
    parser.add_argument("--model", default=None, help="default: TOME_MODEL or smollm2")
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="an HF model folder instead of the settings' model (GPU hosts)"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or auto (default: TOME_DEVICE)")
    parser.add_argument("--report-only", action="store_true", help="draw the curve and card from --output's log")
    return parser


def compressor_to_train(args: argparse.Namespace, settings: Settings) -> tuple[Engine, SegmentCompressor]:
    """The frozen model on its engine and a fresh compressor over it (or --init's weights)."""
    torch.manual_seed(args.seed)
    engine = create_engine(engine_config(args, settings))
    model = engine.hf_model
    for p in model.parameters():
        p.requires_grad_(False)
    config = CompressorConfig(
        base_model=Path(str(engine.path)).name,
        lora_rank=args.lora_rank,
        lora_alpha=2 * args.lora_rank,
        target_modules=tuple(args.target_modules.split(",")),
        layers=args.layers,
    )
    compressor = SegmentCompressor(model, config).to(model.device)
    if args.init is not None:
        compressor.load_trained(load_file(str(args.init)))
    return engine, compressor


def optimizer_for(
    compressor: SegmentCompressor, lr: float, head_lr_scale: float
) -> tuple[torch.optim.Optimizer, list[torch.nn.Parameter]]:
    """AdamW over the trainable tensors (returned too), the head at a fraction of the rate."""
    trainable = [p for p in compressor.parameters() if p.requires_grad]
    print(f"trainable parameters: {sum(p.numel() for p in trainable):,}", flush=True)
    # The head's outputs add to embeddings about 15x smaller than the hidden states it reads: at the LoRA's rate
    # its noise buried the pooled embeddings in a first run (loss flat for 80 steps), so it learns far slower.
    head = list(compressor.head.parameters())
    rest = [p for p in trainable if all(p is not h for h in head)]
    groups = [{"params": rest, "lr": lr}, {"params": head, "lr": lr * head_lr_scale}]
    return torch.optim.AdamW(groups, weight_decay=0.0), trainable


class Training:
    """One run: examples made ahead, the optimizer stepping on the larger of the step and the wall-clock share of the
    run (`progress`, which also drives the context curriculum), held-out measures and checkpoints as it goes."""

    def __init__(
        self, args: argparse.Namespace, engine: Engine, compressor: SegmentCompressor, texts: list[str], start: float
    ) -> None:
        self.args, self.engine, self.compressor, self.config = args, engine, compressor, compressor.config
        self.start = start  # the wall-clock limit counts from here (the model's loading included)
        tokenizer = engine.hf_tokenizer  # type: ignore[attr-defined]
        maker = ExampleMaker(texts, tokenizer, args.context_tokens, args.answer_tokens, args.seed)
        other = ExampleMaker(texts, tokenizer, args.context_tokens, args.answer_tokens, args.seed + 10_000)
        self.heldout = [other(args.heldout_tokens) for _ in range(args.heldout)] if args.eval_every else []
        heldout_repeat = [other.reconstruction(args.reconstruct_tokens) for _ in range(args.heldout_reconstruct)]
        self.heldout_repeat = heldout_repeat if args.eval_every and args.reconstruct_share > 0 else []
        self.heldout_batch = max(1, args.batch_tokens // args.heldout_tokens) if args.batch_tokens else args.batch
        self.optimizer, self.trainable = optimizer_for(compressor, args.lr, args.head_lr_scale)
        self.bases = [g["lr"] for g in self.optimizer.param_groups]
        self.run = self.run_record()
        self.progress = 0.0
        self.plan_rng = random.Random(f"compllm-lengths:{args.seed}")
        self.batches = Batches(maker, args.seed, args.workers, ahead=2 * args.workers)
        self.log_path = args.output.parent / LOG
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log: list[dict] = []

    def run_record(self) -> dict[str, Any]:
        """The run's settings, the log's first row (the card reads it)."""
        device, model = self.compressor.device, self.engine.hf_model  # type: ignore[attr-defined]
        hardware = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} CPU thread(s)"
        return {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()},
            "config": {**asdict(self.config), "extra": {}},
            "device": hardware,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "minutes": 0.0,
            "answers": ANSWER_FORMAT,
        }

    def plan(self) -> Plan:
        """A batch's shape, decided when it is queued: a few batches behind the run's progress."""
        args = self.args
        reconstruct = self.progress < args.reconstruct_share
        if reconstruct:
            tokens = args.reconstruct_tokens
        else:  # the context curriculum runs over the distillation part of the run
            share = (self.progress - args.reconstruct_share) / max(1e-9, 1 - args.reconstruct_share)
            tokens = context_length(share, args.min_context_tokens, args.context_tokens, args.ramp, self.plan_rng)
        count = max(1, args.batch_tokens // tokens) if args.batch_tokens else args.batch
        return tokens, count, reconstruct

    def save(self, step: int, elapsed: float) -> None:
        """The adapter, the log so far, its curve and card."""
        extra = {"steps": step, "minutes": round(elapsed / 60, 1), "seed": self.args.seed}
        self.compressor.config = replace(self.config, extra=extra)
        self.compressor.save(self.args.output)
        self.run["minutes"] = elapsed / 60
        rows = [json.dumps({"run": self.run}), *(json.dumps(r) for r in self.log)]
        self.log_path.write_text("\n".join(rows) + "\n", encoding="utf-8")
        report(self.args.output)

    def measure(self, step: int) -> None:
        """The held-out measures at this step, into the log."""
        args = self.args
        row: dict[str, Any] = {"step": step, "heldout": True, "examples": len(self.heldout)}
        if self.heldout:
            row |= held_out(self.engine, self.compressor, self.heldout, self.config.rates, self.heldout_batch)
        if self.heldout_repeat:
            batch = max(1, args.batch_tokens // args.reconstruct_tokens) if args.batch_tokens else args.batch
            row |= {"repeat_examples": len(self.heldout_repeat)}
            row |= held_out_reconstruction(self.engine, self.compressor, self.heldout_repeat, self.config.rates, batch)
        self.log.append(row)
        print(json.dumps(row), flush=True)

    def step(self, step: int) -> dict[str, Any]:
        """One optimizer step on the next batch; its log row."""
        t0 = time.perf_counter()
        examples = self.batches.next(self.plan)
        rate = self.config.rates[step % len(self.config.rates)]
        if examples[0].kind == "reconstruct":
            loss, stats = reconstruction_step(self.engine, self.compressor, examples, rate)
        else:
            loss, stats = distillation_step(self.engine, self.compressor, examples, rate, self.args.ce_weight)
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        elapsed = time.perf_counter() - self.start
        self.progress = max(step / self.args.steps, elapsed / (self.args.minutes * 60))
        for group, base in zip(self.optimizer.param_groups, self.bases, strict=True):
            group["lr"] = base * lr_factor(self.progress, self.args.warmup)
        self.optimizer.step()
        row = {
            "step": step,
            "objective": "reconstruct" if examples[0].kind == "reconstruct" else "distill",
            "rate": rate,
            "context": len(examples[0].context),
            "batch": len(examples),
            "loss": round(loss.item(), 4),
            **{k: round(v, 4) for k, v in stats.items()},
            "lr": round(self.optimizer.param_groups[0]["lr"], 7),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        self.log.append(row)
        print(json.dumps({**row, "elapsed_min": round(elapsed / 60, 2)}), flush=True)
        return row

    def train(self) -> int:
        """Steps until --steps or the wall-clock limit (with room for two more), measuring and saving on schedule;
        the number of steps run."""
        args, measuring = self.args, bool(self.heldout or self.heldout_repeat)
        self.compressor.train()
        if measuring:
            self.measure(0)
        step = 0
        try:
            for step in range(1, args.steps + 1):
                seconds = self.step(step)["seconds"]
                elapsed = time.perf_counter() - self.start
                done = step == args.steps or elapsed + 2 * seconds > args.minutes * 60
                if measuring and (step % args.eval_every == 0 or done):
                    self.measure(step)
                if step % args.save_every == 0 or done:
                    self.save(step, time.perf_counter() - self.start)
                if done:
                    break
        finally:
            self.batches.close()
        return step


def main(argv: Sequence[str] | None, read_texts: ReadTexts, corpus: Path, settings: Settings) -> int:
    """`tome train compllm`: `read_texts(corpus)` gives the training texts (the evaluation documents left out)."""
    args = build_parser(corpus).parse_args(argv)
    if args.report_only:
        report(args.output)
        return 0
    args.min_context_tokens = args.min_context_tokens or args.context_tokens
    args.heldout_tokens = args.heldout_tokens or args.context_tokens
    start = time.perf_counter()
    engine, compressor = compressor_to_train(args, settings)
    step = Training(args, engine, compressor, read_texts(args.corpus), start).train()
    print(f"saved {args.output} after {step} steps, {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    return 0
