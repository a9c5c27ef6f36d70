"""`tome train memagent` (and `tome train reader`): LoRA SFT of the default model on one call of a strategy.

memagent: its update step and its final answer. CPU-sized: short synthetic steps (the caller's `make_examples`;
`tome train` passes evals/memagent_data.py). reader: the answer call over retrieved text, from a --data file
that evals/reader_data.py prepared (its meta names the target, and the card follows it).
Batch 1, a small LoRA rank; loss on the reply only.
The adapter (bf16 safetensors, a few MB) is saved every `--save-every` steps, so a stopped run is usable, and
at the end with the loss curve (JSON lines and PNG) beside it.

    tome train memagent --steps 300 --out engines/adapters/smollm2-memagent
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.adapters import ADAPTER_HOME, LOG, PLOT, Card, write_card
from engines.base import Message

if TYPE_CHECKING:  # a GPU host training from a model folder and a --data file needs no pydantic-settings
    from engines.settings import Settings

ADAPTER_DIR = ADAPTER_HOME / "smollm2-memagent"
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
IGNORE = -100


@dataclass(frozen=True)
class Example:
    kind: str  # "update" or "answer"
    family: str
    seed: int
    messages: list[Message]  # the prompt, exactly as memory.memagent sends it
    target: str  # the reply the model is trained to give


# (count_tokens, n, first_seed, answer_share, segment_tokens, corpus) -> n examples from seeds first_seed..
MakeExamples = Callable[[Callable[[str], int], int, int, float, tuple[int, int], Path], list[Example]]


def load_base(model: str, home: Path, dtype: str = "auto", device: str = "cpu") -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engines.config import resolve_dtype
    from engines.models import resolve_model

    dtype = resolve_dtype(dtype, device)
    path = resolve_model(model, home)
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device)
    return base, tokenizer


def model_home(model: str, settings: Settings | None) -> Path:
    """The settings' home for an alias; a model folder is its own."""
    if (Path(model) / "config.json").exists():
        return Path(model)
    if settings is None:
        raise ValueError(f"{model!r} is not a model folder (config.json); an alias needs `tome train`'s settings")
    return settings.home


def with_lora(base: Any, rank: int, alpha: int, init: Path | None = None) -> Any:
    """A fresh LoRA, or (init) a saved adapter to train further."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if init is not None:
        return PeftModel.from_pretrained(base, str(init), is_trainable=True)

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(TARGET_MODULES))
    return get_peft_model(base, config)


def encode(tokenizer: Any, example: Example, max_tokens: int) -> dict[str, list[int]] | None:
    """Prompt (as the strategy sends it) + the reply as the chat template closes it; labels only on the reply.
    None if too long. The end of the reply comes from the template, not from `tokenizer.eos_token_id`: a tokenizer
    rebuilt from a GGUF on another transformers version named BOS as its EOS, and an adapter trained that way
    ended its replies by opening a new turn."""

    def ids(out: Any) -> list[int]:
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    prompt = ids(tokenizer.apply_chat_template(example.messages, add_generation_prompt=True, tokenize=True))
    turn = [*example.messages, {"role": "assistant", "content": example.target}]
    full = ids(tokenizer.apply_chat_template(turn, tokenize=True))
    if full[: len(prompt)] != prompt:
        raise ValueError("the chat template renders the prompt differently inside a whole conversation")
    if len(full) > max_tokens:
        return None
    return {"input_ids": full, "labels": [IGNORE] * len(prompt) + full[len(prompt) :]}


def encode_all(tokenizer: Any, examples: Sequence[Example], max_tokens: int) -> list[dict[str, list[int]]]:
    return [e for e in (encode(tokenizer, x, max_tokens) for x in examples) if e is not None]


def save_items(path: Path, items: Sequence[dict[str, list[int]]], held: Sequence[dict[str, list[int]]],
               meta: dict[str, Any]) -> None:  # fmt: skip
    """Encoded examples as one small file (uint16 token ids, the prompt's length each), so a GPU host trains on
    exactly the examples made here, without the corpus or a tokenizer rebuilt from the GGUF on its side."""
    import numpy as np

    rows = [*items, *held]
    ids = np.concatenate([np.asarray(r["input_ids"], dtype=np.uint16) for r in rows])
    lengths = np.asarray([len(r["input_ids"]) for r in rows], dtype=np.int32)
    prompts = np.asarray([sum(label == IGNORE for label in r["labels"]) for r in rows], dtype=np.int32)
    if any(max(r["input_ids"]) >= 2**16 for r in rows):
        raise ValueError("token ids beyond uint16")
    meta = {**meta, "train": len(items), "held_out": len(held)}
    np.savez_compressed(path, ids=ids, lengths=lengths, prompts=prompts, meta=np.asarray(json.dumps(meta)))


def load_items(path: Path) -> tuple[list[dict[str, list[int]]], list[dict[str, list[int]]], dict[str, Any]]:
    """(training items, held-out items, meta) as `save_items` wrote them."""
    import numpy as np

    data = np.load(path)
    meta = json.loads(str(data["meta"]))
    rows, at = [], 0
    for n, prompt in zip(data["lengths"].tolist(), data["prompts"].tolist(), strict=True):
        ids = data["ids"][at : at + n].astype(np.int64).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE] * prompt + ids[prompt:]})
        at += n
    return rows[: meta["train"]], rows[meta["train"] :], meta


def loss_on(model: Any, item: dict[str, list[int]], first_weight: float = 1.0) -> Any:
    """Mean cross-entropy over the reply, its first token weighted `first_weight` times: that token is the
    decision (NONE or a copy) and the copy itself is easy, so an unweighted mean hides a wrong decision."""
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([item["input_ids"]], device=device)
    labels = torch.tensor(item["labels"][1:], device=device)
    logits = model(input_ids=ids).logits[0, :-1].float()
    ce = torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="none")
    weights = (labels != IGNORE).float()
    weights[int(weights.argmax())] = first_weight
    return (ce * weights).sum() / weights.sum()


def mean_loss(model: Any, items: Sequence[dict[str, list[int]]]) -> float:
    import torch

    with torch.no_grad():
        return sum(float(loss_on(model, it)) for it in items) / max(1, len(items))


def decision_accuracy(model: Any, items: Sequence[dict[str, list[int]]]) -> float:
    """Share of items whose first reply token (NONE or the start of a copy) is the greedy choice."""
    import torch

    right = 0
    with torch.no_grad():
        for it in items:
            first = next(i for i, label in enumerate(it["labels"]) if label != IGNORE)
            ids = torch.tensor([it["input_ids"][:first]], device=next(model.parameters()).device)
            logits = model(input_ids=ids).logits[0, -1]
            right += int(logits.argmax()) == it["labels"][first]
    return right / max(1, len(items))


def train(
    model: Any,
    items: Sequence[dict[str, list[int]]],
    steps: int,
    lr: float,
    log: Any = None,
    save: Any = None,
    save_every: int = 0,
    warmup: int = 10,
    first_weight: float = 1.0,
    minutes: float = 0.0,
) -> list[dict[str, float]]:
    """AdamW on the LoRA weights, batch 1, linear warmup then cosine decay; returns the per-step losses.
    `minutes` (0: none) stops early, so a leased GPU's time limit ends a run with a saved adapter."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps))))
    )
    model.train()
    curve = []
    start = time.perf_counter()
    for step in range(steps):
        item = items[step % len(items)]
        loss = loss_on(model, item, first_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        row = {"step": step + 1, "loss": loss.item(), "tokens": len(item["input_ids"]),
               "seconds": round(time.perf_counter() - start, 1), "lr": sched.get_last_lr()[0]}  # fmt: skip
        curve.append(row)
        if log is not None:
            log(row)
        if save is not None and save_every and (step + 1) % save_every == 0:
            save(step + 1)
        if minutes and time.perf_counter() - start > minutes * 60:
            break
    model.eval()
    return curve


def save_adapter(model: Any, out: Path) -> None:
    """bf16 safetensors: half the size of fp32, and what both engines load."""
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    model.peft_config["default"].save_pretrained(out)
    from peft import get_peft_model_state_dict

    state = {k: v.detach().to(torch.bfloat16).cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(state, out / "adapter_model.safetensors")


def plot_curve(curve: Sequence[dict[str, float]], held_out: Sequence[tuple[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in curve]
    losses = [r["loss"] for r in curve]
    window = 20
    smooth = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
              for i in range(len(losses))]  # fmt: skip
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, color="#bbb", lw=0.8, label="train loss (per step)")
    ax.plot(steps, smooth, color="C0", label=f"train loss ({window}-step mean)")
    if held_out:
        ax.plot([s for s, _ in held_out], [v for _, v in held_out], "o-", color="C3", label="held-out steps")
    ax.set_xlabel("step (batch 1)")
    ax.set_ylabel("loss on the reply")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def data_stats(examples: Sequence[Example]) -> dict[str, Any]:
    mix: dict[str, int] = {}
    for e in examples:
        mix[f"{e.kind}:{e.family}"] = mix.get(f"{e.kind}:{e.family}", 0) + 1
    updates = [e for e in examples if e.kind == "update"]
    none = sum(e.target == "NONE" for e in updates) / max(1, len(updates))
    return {"mix": dict(sorted(mix.items())), "none_share": none}


def earlier_stages(summary: dict[str, Any]) -> list[str]:
    """The stages this run continued from (`init`, nested), latest first, one line each."""
    stages, first = [], summary.get("init")
    while first:
        stages.append(
            f"{first['steps']} steps on {first['examples']} examples (seeds from {first['first_seed']}, "
            f"lr {first['lr']}, {', '.join(sorted({k.split(':')[1] for k in first['data']['mix']}))})"
        )
        first = first.get("init")
    return stages


def training_text(summary: dict[str, Any]) -> str:
    """The card's training section: settings, held-out measures, earlier stages, the per-family table."""
    held = ", ".join(f"{loss:.3f} (step {step})" for step, loss in summary["held_out_loss"])
    decided = ", ".join(f"{acc:.2f} (step {step})" for step, acc in summary.get("held_out_decisions", []))
    by_family = "\n".join(
        f"| {family} | {row['n']} | {row['loss']:.4f} | {row['decisions']:.2f} |"
        for family, row in summary.get("held_out_by_family", {}).items()
    )
    families = (
        f"\n\n| family (held out, last step) | n | loss | first token right |\n|---|---|---|---|\n{by_family}"
        if by_family
        else ""
    )
    stages = earlier_stages(summary)
    stage = (
        "\nContinued, on new seeds, from earlier stages (their summaries are `training.json`'s nested `init`): "
        + "; before that ".join(stages)
        + "."
        if stages
        else ""
    )
    return f"""LoRA rank {summary["rank"]}, alpha {summary["alpha"]}, on {", ".join(summary["target_modules"])};
AdamW, lr {summary["lr"]}, warmup then cosine decay, batch 1, {summary["steps"]} steps, loss on the reply tokens
only, sequences up to {summary["max_tokens"]} tokens. {summary["seconds"] / 60:.0f} minutes on {summary["hardware"]}.
Held-out loss (examples never trained on): {held}. First reply token right (the decision: NONE, a copy's or an
answer's start): {decided}. Saved as bf16 safetensors.{stage}{families}"""


def reproduce_text(summary: dict[str, Any]) -> str:
    """The two commands that make the examples and train on them again."""
    lo, hi = summary["segment_tokens"]
    gpu = "CPU" not in summary.get("hardware", "CPU")
    device = f" --device cuda --minutes {summary['seconds'] / 60:.0f}" if gpu else ""
    resume = " --init PREVIOUS_STAGE" if earlier_stages(summary) else ""
    return f"""Reproduce: `tome train memagent --prepare-to data.npz --examples {summary["examples"]} --held-out
{sum(r["n"] for r in summary.get("held_out_by_family", {}).values()) or 24} --segment-tokens {lo},{hi}
--max-tokens {summary["max_tokens"]} --first-seed {summary["first_seed"]}` on any host, then
`python -m memory.training --data data.npz --steps {summary.get("planned_steps", summary["steps"])} --lr {summary["lr"]}
--first-token-weight {summary.get("first_token_weight", 1.0)}{device}{resume}` on the GPU host
(log: `train_log.jsonl`, summary: `training.json`)."""


def card(summary: dict[str, Any]) -> Card:
    """The adapter's card, from the run's summary (`training.json`)."""
    return reader_card(summary) if summary.get("target") == "reader" else memagent_card(summary)


def reader_card(summary: dict[str, Any]) -> Card:
    """The reader adapter's card: written questions on real prose, asked as `rag` asks them."""
    mix = "\n".join(f"| {k.split(':', 1)[1]} | {v} |" for k, v in summary["data"]["mix"].items())
    about = (
        "A LoRA adapter that teaches the default model to answer a question from retrieved passages of a long "
        'document\nby copying the answer as the text writes it, and to say "The document does not say." when '
        "the passages do not hold it.\nThe strategies' answer call runs it (`engines.prompting`, setting "
        "`reader_adapter`); both engines load it."
    )
    contrast = summary["data"].get("recipe") == "contrast"
    why_none = "its evidence was taken out of the text read" if contrast else "rag did not retrieve its evidence"
    data = f"""{summary["examples"]} examples from {summary["data"]["questions"]} questions written by reading the
training corpus (evals/data/reader_train: not docqa's test documents, and no fact docqa's dev questions ask); each
asked the way `rag` asks it, over the whole document. Held out: every question about
`{summary["data"]["held_out_doc"]}`. {summary["data"]["none_share"]:.0%} of the replies say the document does not
say it (the question has no answer there, or {why_none}).

| kind : context | examples |
|---|---|
{mix}"""
    reproduce = f"""Reproduce: `tome train reader --prepare-to reader.npz` on any host (retrieval runs there), then
`python -m memory.training --data reader.npz --model FOLDER --steps {summary.get("planned_steps", summary["steps"])}
--lr {summary["lr"]} --device cuda --out engines/adapters/smollm2-reader` on the GPU host."""
    return Card(
        title="reader adapter for SmolLM2-135M-Instruct",
        about=about,
        body=[("Data (evals/reader_data.py)", data), ("Training (memory/training.py)", training_text(summary))],
        after=[("", reproduce), ("Measured", "docqa, with and without: `bench/docqa_reading.py --readers none auto`.")],
    )


def memagent_card(summary: dict[str, Any]) -> Card:
    """The memagent adapter's card, from the run's summary (`training.json`)."""
    mix = "\n".join(f"| {k.split(':')[0]} | {k.split(':')[1]} | {v} |" for k, v in summary["data"]["mix"].items())
    lo, hi = summary["segment_tokens"]
    kinds = (
        "the evaluation harness's templates (RULER needles, variable chains, bAbI facts) and plain-prose facts\n"
        "(names, places, dates, quantities and relations about made-up people and trades, each in one of several\n"
        "phrasings, asked in other words, among distractor facts)"
        if summary["data"]["mix"].keys() >= {"update:prose"}
        else "the evaluation harness's templates (RULER needles, variable chains, bAbI facts)"
    )
    if "update:written" in summary["data"]["mix"]:
        kinds += ",\nand questions written about real books (`written`: evals/data/reader_train, the book's own text)"
    about = (
        "A LoRA adapter that teaches the default model the two calls of the `memagent` strategy (memory/memagent.py): "
        "the\nmemory update after each segment (copy, word for word and one per line, every sentence of the notes and "
        "the segment\nthat helps answer; NONE when the segment adds nothing) and the final answer from the memory. "
        "`memagent` runs it when\n`memory.memagent.ADAPTERS` lists it for the engine's model or "
        "`TOME_MEMAGENT_ADAPTER` names its folder; both engines\nload it (native: transformers' PEFT integration; "
        "vLLM: `LoRARequest`)."
    )
    data = f"""{summary["examples"]} synthetic examples, built with {kinds},
in text from the project corpus **without** the documents held out for evaluation (`evals.corpus.EVAL_DOCS`),
keys and names made of words from those training documents only (never the words of the tests' own planted
facts), and seeds from {summary["first_seed"]} up (the evaluation seeds are below). No `qa` examples: its questions
come from held-out documents. Update segments are {lo}-{hi} tokens (the strategy reads segments of up to 2K tokens).
{summary["data"]["none_share"]:.0%} of the update targets are NONE.

| call | family | examples |
|---|---|---|
{mix}"""
    measured = (
        "`tome eval --strategy memagent` with and without the adapter: "
        "`bench/results/eval-memory-memagent-lora*.md` and\n`bench/results/eval-memory-memagent-base.md` "
        "(same tasks, lengths and seeds)."
    )
    return Card(
        title="memagent adapter for SmolLM2-135M-Instruct",
        about=about,
        body=[("Data (evals/memagent_data.py)", data), ("Training (memory/training.py)", training_text(summary))],
        after=[("", reproduce_text(summary)), ("Measured", measured)],
    )


def merge(adapter: Path, model: str, home: Path, out: Path) -> None:
    """The base model with the adapter folded into its weights, as a plain HF folder any engine loads at full
    speed (vLLM's LoRA path on CPU is several times slower than its base model)."""
    import torch
    from peft import PeftModel

    base, tokenizer = load_base(model, home, "float32")
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def build_parser(first_seed: int, corpus: Path | None, settings: Settings | None) -> argparse.ArgumentParser:
    """`tome train memagent`'s options; the defaults come from what `tome train` passes, where it does."""
    p = argparse.ArgumentParser(prog="tome train memagent", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (batch 1)")
    p.add_argument("--examples", type=int, default=0, help="distinct training examples (default: one per step)")
    p.add_argument("--held-out", type=int, default=24, help="examples (other seeds) to measure the loss on")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--max-tokens", type=int, default=768, help="longest training sequence")
    p.add_argument("--segment-tokens", default="192,448", help="segment sizes of the update steps: MIN,MAX")
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--checkpoints", type=Path, default=None, help="also keep every save as FOLDER/step-N")
    p.add_argument("--corpus", type=Path, default=corpus)
    p.add_argument("--out", type=Path, default=None, help="adapter folder (default: engines/adapters/smollm2-TARGET)")
    p.add_argument("--model", default=settings.model if settings else None, help="an alias or an HF model folder")
    p.add_argument("--threads", type=int, default=(settings.threads if settings else None) or 1)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--minutes", type=float, default=0.0, help="wall-clock limit of the training loop (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--first-seed", type=int, default=first_seed, help="first example seed (not an eval seed)")
    p.add_argument("--first-token-weight", type=float, default=1.0, help="loss weight of the reply's first token")
    p.add_argument("--init", type=Path, default=None, help="continue training this adapter folder")
    p.add_argument("--merge-to", type=Path, default=None, help="only write --out's adapter merged into the model here")
    p.add_argument("--prepare-to", type=Path, default=None, help="only make and encode the examples into this file")
    p.add_argument("--data", type=Path, default=None, help="train on a --prepare-to file (its data settings win)")
    return p


Items = list[dict[str, list[int]]]


def make_items(
    args: argparse.Namespace, make_examples: MakeExamples, settings: Settings | None
) -> tuple[Items, Items, list[str], dict[str, Any]]:
    """Training and held-out examples (other seeds), encoded: the items, the held-out items, their families and the
    data's statistics."""
    from transformers import AutoTokenizer

    from engines.models import resolve_model

    lo, hi = args.segment_tokens
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model, model_home(args.model, settings)))
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    n = args.examples or args.steps
    examples = make_examples(count, n, args.first_seed, 0.25, (lo, hi), args.corpus)
    items = encode_all(tokenizer, examples, args.max_tokens)
    held_examples = make_examples(count, args.held_out, args.first_seed + 10 * n + 1000, 0.25, (lo, hi), args.corpus)
    encoded = [(e.family, encode(tokenizer, e, args.max_tokens)) for e in held_examples]
    held = [x for _, x in encoded if x is not None]
    held_families = [f for f, x in encoded if x is not None]
    return items, held, held_families, data_stats(examples)


def fit(args: argparse.Namespace, model: Any, items: Items, held: Items) -> dict[str, Any]:
    """Train with the held-out loss and first-token accuracy measured at the start, every --eval-every steps and at
    the end; rows go to `train_log.jsonl` as they come. The curve and the held-out measures."""
    args.out.mkdir(parents=True, exist_ok=True)
    log_file = open(args.out / LOG, "w")
    held_losses: list[tuple[int, float]] = [(0, mean_loss(model, held))]
    decisions: list[tuple[int, float]] = [(0, decision_accuracy(model, held))]
    print(json.dumps({"examples": len(items), "held_out": len(held), "held_loss": held_losses[0][1],
                      "held_decisions": decisions[0][1]}), flush=True)  # fmt: skip

    def log(row: dict[str, float]) -> None:
        if args.eval_every and row["step"] % args.eval_every == 0:
            model.eval()
            held_losses.append((int(row["step"]), mean_loss(model, held)))
            decisions.append((int(row["step"]), decision_accuracy(model, held)))
            model.train()
            row = {**row, "held_loss": held_losses[-1][1], "held_decisions": decisions[-1][1]}
        log_file.write(json.dumps(row) + "\n")
        log_file.flush()
        print(json.dumps(row), flush=True)

    def save(step: int) -> None:
        save_adapter(model, args.out)
        if args.checkpoints:  # every save kept, so the step can be chosen by measuring the reader it makes
            save_adapter(model, args.checkpoints / f"step-{step}")

    curve = train(
        model, items, args.steps, args.lr, log, save, args.save_every,
        first_weight=args.first_token_weight, minutes=args.minutes,
    )  # fmt: skip
    done = len(curve)
    if not args.eval_every or done % args.eval_every:
        held_losses.append((done, mean_loss(model, held)))
        decisions.append((done, decision_accuracy(model, held)))
    return {"curve": curve, "held_out_loss": held_losses, "held_out_decisions": decisions}


def by_family(model: Any, held: Items, held_families: list[str]) -> dict[str, dict[str, float]]:
    """The final held-out loss and first-token accuracy per example family."""
    out: dict[str, dict[str, float]] = {}
    for family in sorted(set(held_families)):
        mine = [h for h, f in zip(held, held_families, strict=True) if f == family]
        out[family] = {"n": len(mine), "loss": mean_loss(model, mine), "decisions": decision_accuracy(model, mine)}
    return out


def main(
    argv: Sequence[str] | None,
    make_examples: MakeExamples | None = None,
    first_seed: int = 0,
    corpus: Path | None = None,
    settings: Settings | None = None,
) -> int:
    """`tome train memagent` passes evals' example generator (`make_examples`, seeds from `first_seed`, text from
    `corpus` unless --corpus names another) and the settings (default model and threads). Without them (`python -m
    memory.training` on a GPU host) it trains from a --data file and a --model folder only."""
    p = build_parser(first_seed, corpus, settings)
    args = p.parse_args(argv)
    if args.model is None:
        p.error("--model FOLDER is needed without the settings")
    if make_examples is None and not (args.data or args.merge_to):
        p.error("examples come from `tome train memagent`; here only --data FILE (or --merge-to) works")

    import torch

    if args.merge_to:
        merge(args.out or ADAPTER_DIR, args.model, model_home(args.model, settings), args.merge_to)
        return 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    args.segment_tokens = [int(x) for x in args.segment_tokens.split(",")]
    if args.data:
        items, held, meta = load_items(args.data)
        args.first_seed, args.max_tokens, args.segment_tokens = (
            meta["first_seed"],
            meta["max_tokens"],
            meta["segment_tokens"],
        )
        stats, held_families = meta["data"], meta["held_families"]
        target = meta.get("target", "memagent")
    else:
        assert make_examples is not None  # checked with the arguments
        target = "memagent"
        items, held, held_families, stats = make_items(args, make_examples, settings)
        if args.prepare_to:
            meta = {"data": stats, "held_families": held_families, "first_seed": args.first_seed,
                    "max_tokens": args.max_tokens, "segment_tokens": list(args.segment_tokens)}  # fmt: skip
            save_items(args.prepare_to, items, held, meta)
            print(json.dumps({"examples": len(items), "held_out": len(held), **stats}), flush=True)
            return 0
    args.out = args.out or ADAPTER_HOME / f"smollm2-{target}"
    base, _ = load_base(args.model, model_home(args.model, settings), device=args.device)
    model = with_lora(base, args.rank, args.alpha, args.init)
    fitted = fit(args, model, items, held)
    curve = fitted["curve"]
    save_adapter(model, args.out)
    plot_curve(curve, fitted["held_out_loss"], args.out / PLOT)
    summary = {
        "target": target, "model": Path(args.model).name, "steps": len(curve), "planned_steps": args.steps,
        "examples": len(items),
        "rank": args.rank, "alpha": args.alpha,
        "lr": args.lr, "target_modules": list(TARGET_MODULES), "max_tokens": args.max_tokens,
        "segment_tokens": list(args.segment_tokens), "first_seed": args.first_seed,
        "held_out_loss": fitted["held_out_loss"], "held_out_decisions": fitted["held_out_decisions"],
        "held_out_by_family": by_family(model, held, held_families),
        "first_token_weight": args.first_token_weight,
        "init": json.loads((args.init / "training.json").read_text()) if args.init else None,
        "seconds": curve[-1]["seconds"] if curve else 0, "threads": args.threads, "data": stats,
        "hardware": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{args.threads} CPU thread(s)",
    }  # fmt: skip
    (args.out / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_card(args.out, card(summary))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":  # `python -m memory.training --data FILE --model FOLDER`: a GPU host, torch and peft only
    raise SystemExit(main(sys.argv[1:]))
