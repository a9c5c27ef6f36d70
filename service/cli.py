"""`tome`: ask questions about long documents from the shell, and prepare the models."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from engines.types import Task, TaskKind

EXIT_BAD_INPUT = 2


def _progress_bar() -> Any:
    from tqdm import tqdm

    bar: dict[str, tqdm] = {}

    def update(done: int, total: int, message: str) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, file=sys.stderr, leave=False, disable=not sys.stderr.isatty())
        b = bar["bar"]
        b.total = total
        b.n = done
        b.set_description(message[:40])
        b.refresh()

    return update


def cmd_ask(args: argparse.Namespace) -> int:
    from engines import create_engine
    from engines.settings import Settings
    from service.documents import load_document, structure
    from workflows.graph import run_job
    from workflows.registry import build_strategies

    settings = Settings()
    strategies = build_strategies(settings)
    document = load_document(args.file)
    task = Task(question=args.question, kind=TaskKind(args.kind), max_answer_tokens=args.max_tokens)
    engine = create_engine(settings.engine_config(kind=args.engine, model=args.model))
    result = run_job(document, [task], engine, strategy=args.strategy, progress=_progress_bar(), strategies=strategies)
    answer = result.answers[0]
    if args.json:
        out = {
            "question": task.question,
            "answer": answer.text,
            "supported": result.supported[0],
            "unsupported_reply": answer.details.get("unsupported_reply"),
            "strategy": result.strategy,
            "reason": result.reason,
            "kind": result.kind,
            "attempts": result.attempts,
            "document": {
                "source": document.source,
                "content_hash": document.content_hash,
                "tokens": result.document_tokens,
                **structure(document),
            },
            "engine": {"kind": engine.name, "model": engine.model_name, "max_context": engine.max_context},
            "cost": {  # every attempt together, fallbacks included
                "calls": result.cost.calls,
                "tokens_read": result.cost.tokens_read,
                "tokens_generated": result.cost.tokens_generated,
                "seconds": round(result.cost.seconds, 3),
            },
            "evidence": [
                {"start": e.start, "end": e.end, "text": e.text, "page": e.page, "section": e.section}
                for e in answer.evidence
            ],
        }
        print(json.dumps(out, ensure_ascii=False, indent=2))
    else:
        print(answer.text)
        if not result.supported[0] and answer.details.get("unsupported_reply"):
            reply = answer.details["unsupported_reply"]
            note = f"unsupported: the model replied {reply!r}, which nothing read backs (not found near what was asked)"
            print(f"\n{note}", file=sys.stderr)
        print(f"\nstrategy: {result.strategy} ({result.reason})", file=sys.stderr)
        skipped = structure(document).get("image_only_pages")
        if skipped:
            print(f"not read (image-only pages, no text layer): {', '.join(map(str, skipped))}", file=sys.stderr)
        c = result.cost
        print(f"cost: {c.calls} model call(s), {c.tokens_read} tokens read, {c.seconds:.1f} s", file=sys.stderr)
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    from engines.models import resolve_embedder, resolve_model
    from engines.settings import Settings

    settings = Settings()
    print(f"model: {resolve_model(settings.model, settings.home)}")
    print(f"embedder: {resolve_embedder(settings.embedder)}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from engines.settings import Settings
    from service.store import migrate

    url = Settings().database()
    migrate(url)
    print(f"job store at the newest revision: {url.split('@')[-1]}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    if not args.no_migrate:
        cmd_migrate(args)
    uvicorn.run("service.api:app_from_environment", factory=True, host=args.host, port=args.port, workers=args.workers)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from service.celery_app import app

    argv = ["worker", "--loglevel", "INFO" if args.verbose else "WARNING", "-Q", args.queues]
    argv += ["--concurrency", str(args.concurrency), "--pool", "prefork"]
    app.worker_main(argv)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from engines.settings import Settings
    from service.auth import hash_key, new_key, server_secret
    from service.store import Store

    settings = Settings()
    key = new_key()
    Store(settings.database()).add_key(args.name, hash_key(key, server_secret(settings.key_secret, settings.home)))
    print(key)
    print(f"stored the hash of a new key named {args.name!r}; the key is shown only now", file=sys.stderr)
    return 0


def cmd_router_fit(args: argparse.Namespace) -> int:
    from workflows.policy import POLICIES, fit_files

    paths = [Path(p) for p in args.results]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"tome: error: no such results file: {', '.join(missing)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    policy = fit_files(paths)
    out = Path(args.out) if args.out else POLICIES / f"{args.model}.json"
    policy.save(out)
    print(f"{out}: {len(policy.entries)} entries from {len(paths)} file(s)")
    return 0


def cmd_router_measure(args: argparse.Namespace) -> int:
    """`tome eval --preset policy` with the configured engine and model, then `tome router fit` of its results into
    the model's policy file (or --out). Other arguments go to `tome eval` (--strategy, --tasks, --samples...)."""
    return measure_policy(args.model, Path(args.results), args.out, args.passthrough_argv)


def measure_policy(model_arg: str | None, results: Path, out_arg: str | None, eval_argv: list[str]) -> int:
    from engines.settings import Settings
    from evals.cli import main as eval_main
    from workflows.policy import POLICIES, fit_files

    model = Path(model_arg or Settings().model).name
    name = f"policy-{model}"
    chosen = ["--model", model_arg] if model_arg else []
    code = eval_main(["--preset", "policy", "--name", name, "--out", str(results), *chosen, *eval_argv])
    if code:
        return code
    policy = fit_files([results / f"eval-{name}.json"])
    out = Path(out_arg) if out_arg else POLICIES / f"{model}.json"
    policy.save(out)
    print(f"{out}: {len(policy.entries)} entries measured with {model}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from evals.cli import main as eval_main  # the yardstick: imported only when `tome eval` runs

    return eval_main(args.passthrough_argv)


# `tome train TARGET ...`: each trainer owns its options (`tome train TARGET --help`).
TRAIN_TARGETS = ("compllm", "gist", "memagent", "reader")


def cmd_train(args: argparse.Namespace) -> int:
    """The trainers take their data and settings from here: the examples come from the evaluation's generators,
    which keep every evaluation document and seed out (the product itself never imports evals/)."""
    from engines.settings import Settings
    from evals.corpus import TRAINING_CORPUS, training_texts

    settings, argv = Settings(), args.passthrough_argv
    if args.target == "memagent":
        from evals.memagent_data import TRAIN_SEED_START, make_examples
        from memory import training

        return training.main(argv, make_examples, TRAIN_SEED_START, TRAINING_CORPUS, settings)
    if args.target == "reader":
        from evals import reader_data

        return reader_data.main(argv, settings)
    if args.target == "gist":
        from compressors.soft import gist_train

        return gist_train.main(argv, training_texts, TRAINING_CORPUS, settings)
    from compressors.soft import train

    return train.main(argv, training_texts, TRAINING_CORPUS, settings)


# README.md's settings table sits between these markers; `tome settings --write README.md` regenerates it.
SETTINGS_TABLE_MARKERS = ("<!-- settings-table -->\n", "<!-- /settings-table -->")


def cmd_settings(args: argparse.Namespace) -> int:
    from engines.settings import settings_table

    table = settings_table()
    if args.write is None:
        print(table, end="")
        return 0
    start, end = SETTINGS_TABLE_MARKERS
    text = args.write.read_text(encoding="utf-8")
    if start not in text or end not in text:
        print(f"tome: error: {args.write} has no {start.strip()} ... {end} markers", file=sys.stderr)
        return EXIT_BAD_INPUT
    head, rest = text.split(start, 1)
    args.write.write_text(head + start + table + end + rest.split(end, 1)[1], encoding="utf-8")
    return 0


# `tome calibrate`'s gemfilter needles (samples, tokens each). --quick is a bounded run that checks the whole path
# in minutes on a CPU (its numbers are no calibration to ship): gemfilter on 2 samples of 1K tokens, the policy on
# one 2K question per task and strategy.
GEMFILTER_BOUNDS = {"samples": 8, "length": 8000}
QUICK_GEMFILTER = {"samples": 2, "length": 1024}
QUICK_POLICY = ["--lengths", "2K", "--samples", "1"]


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Every per-model artifact for the configured engines, in order: GemFilter's layer (for the model that scores
    selections: the reader's own weights, or the selector model) and the router's policy (`tome router measure`)."""
    if args.only in (None, "gemfilter"):
        code = calibrate_gemfilter(args)
        if code:
            return code
    if args.only in (None, "policy"):
        argv = [*(QUICK_POLICY if args.quick else []), *args.passthrough_argv]  # later arguments win in `tome eval`
        return measure_policy(args.model, Path(args.results), args.policy_out, argv)
    return 0


def calibrate_gemfilter(args: argparse.Namespace) -> int:
    from compressors.calibration import calibrate
    from compressors.layer_store import STORE, save_entry
    from engines import create_engine
    from engines.internals import scoring_config
    from engines.models import ModelNotFoundError
    from engines.settings import Settings
    from service.documents import load_document

    settings = Settings()
    example = Path(__file__).resolve().parents[1] / "examples" / "walden_long.txt"
    haystack = Path(args.haystack) if args.haystack else example
    if not haystack.exists():
        print(f"tome: error: haystack {haystack} not found; pass --haystack FILE (any long text)", file=sys.stderr)
        return EXIT_BAD_INPUT
    native = scoring_config(settings.engine_config(model=args.model))
    if native is None:
        raise ModelNotFoundError(
            f"no local model to calibrate gemfilter with: TOME_SELECTOR_MODEL is {settings.selector_model!r}"
        )
    bounds = QUICK_GEMFILTER if args.quick else GEMFILTER_BOUNDS
    samples, length = args.samples or bounds["samples"], args.length or bounds["length"]
    result = calibrate(create_engine(native), load_document(haystack).text, samples, length, progress=_progress_bar())
    target = Path(args.output) if args.output else settings.home / STORE
    save_entry(result, target)
    curve = " ".join(f"{i}:{r:.2f}" for i, r in enumerate(result.recall_by_layer, start=1))
    print(f"{result.model}: layer {result.layer} of {result.num_layers} (needle recall by layer {curve}) -> {target}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tome", description="Answer questions about documents longer than a model's context."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True)

    ask = sub.add_parser("ask", help="answer a question about a document (.txt, .md, .html, .pdf)")
    ask.add_argument("file")
    ask.add_argument("question")
    ask.add_argument("--strategy", default="auto", help="auto (default) or a strategy name, e.g. full")
    ask.add_argument("--engine", choices=["native", "vllm"], default=None, help="default: TOME_ENGINE or native")
    ask.add_argument("--model", default=None, help="default: TOME_MODEL or smollm2")
    ask.add_argument("--kind", choices=[k.value for k in TaskKind], default="qa")
    ask.add_argument("--max-tokens", type=int, default=64, help="answer budget in tokens")
    ask.add_argument("--json", action="store_true", help="print one JSON object (documented in README)")
    ask.set_defaults(func=cmd_ask)

    router = sub.add_parser("router", help="the routing policy").add_subparsers(dest="router_command", required=True)
    fit = router.add_parser("fit", help="turn eval results (bench/results/eval-*.json) into a policy file")
    fit.add_argument("results", nargs="+")
    fit.add_argument("--model", default="smollm2", help="the model alias the policy is for (its file name)")
    fit.add_argument("--out", default=None, help="default: workflows/policies/<model>.json")
    fit.set_defaults(func=cmd_router_fit)
    measure = router.add_parser(
        "measure", help="measure the strategies with the configured engine and model, and fit its policy"
    )
    measure.add_argument("--model", default=None, help="default: TOME_MODEL or smollm2 (also names the policy file)")
    measure.add_argument("--results", default="bench/results", help="where the eval's results go")
    measure.add_argument("--out", default=None, help="default: workflows/policies/<model>.json")
    measure.set_defaults(func=cmd_router_measure)

    setup = sub.add_parser("setup", help="prepare the default models (converts the GGUF once)")
    setup.set_defaults(func=cmd_setup)

    migrate = sub.add_parser("migrate", help="create or upgrade the job store (TOME_DATABASE_URL)")
    migrate.set_defaults(func=cmd_migrate)
    serve = sub.add_parser("serve", help="run the job API (uvicorn); migrates the job store first")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.add_argument("--no-migrate", action="store_true")
    serve.set_defaults(func=cmd_serve)
    worker = sub.add_parser("worker", help="run a Celery worker for jobs and webhooks")
    worker.add_argument("-Q", "--queues", default="cpu,webhooks", help="queues to consume (GPU hosts: gpu)")
    worker.add_argument("-c", "--concurrency", type=int, default=1, help="processes; each loads the engine once")
    worker.set_defaults(func=cmd_worker)
    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create (or replace) the key NAME: prints it once, stores its hash")
    create.add_argument("name")
    create.set_defaults(func=cmd_keys)
    # Options belong to evals/cli.py (`tome eval --help`); they pass through untouched.
    evaluate = sub.add_parser("eval", help="run the evaluation harness (evals/): tome eval --help", add_help=False)
    evaluate.set_defaults(func=cmd_eval)

    train = sub.add_parser("train", help="train an adapter for the model: tome train TARGET --help", add_help=False)
    train.add_argument("target", choices=TRAIN_TARGETS)
    train.set_defaults(func=cmd_train)

    settings = sub.add_parser("settings", help="print every TOME_* setting as a markdown table")
    settings.add_argument("--write", type=Path, default=None, help="put the table between a file's markers instead")
    settings.set_defaults(func=cmd_settings)

    calibrate = sub.add_parser(
        "calibrate",
        help="measure the per-model artifacts for the configured engines: gemfilter's layer, the router's policy",
    )
    # An option, not a positional: the policy step's `tome eval` arguments (`--strategy rag`) pass through
    calibrate.add_argument("--only", choices=["gemfilter", "policy"], default=None, help="one artifact; default both")
    calibrate.add_argument("--model", default=None, help="default: TOME_MODEL or smollm2")
    calibrate.add_argument("--quick", action="store_true", help="a bounded run (minutes on a CPU) to check the path")
    calibrate.add_argument("--haystack", default=None, help="gemfilter: text to plant needles in (default: Walden)")
    calibrate.add_argument("--samples", type=int, default=None, help="gemfilter: needles (default 8; --quick 2)")
    calibrate.add_argument("--length", type=int, default=None, help="gemfilter: tokens a sample (8000; --quick 1024)")
    calibrate.add_argument("--output", default=None, help="gemfilter's JSON file (default: TOME_HOME/calibration/)")
    calibrate.add_argument("--results", default="bench/results", help="policy: where the eval's results go")
    calibrate.add_argument("--policy-out", default=None, help="policy: default workflows/policies/<model>.json")
    calibrate.set_defaults(func=cmd_calibrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    # `tome router measure` and `tome calibrate` (unless --only gemfilter) hand what they do not know to `tome eval`
    to_eval = getattr(args, "router_command", None) == "measure" or (
        args.command == "calibrate" and args.only != "gemfilter"
    )
    if rest and args.command not in ("eval", "train") and not to_eval:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.passthrough_argv = rest
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from compressors.soft.model import CompressorMismatchError
    from engines.base import ContextOverflowError
    from engines.models import ModelNotFoundError
    from service.documents import DocumentError
    from workflows.registry import UnknownStrategyError
    from workflows.router import NoStrategyError

    try:
        return args.func(args)
    except (
        DocumentError,
        NoStrategyError,
        UnknownStrategyError,
        ContextOverflowError,
        ModelNotFoundError,
        CompressorMismatchError,
    ) as exc:
        print(f"tome: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
