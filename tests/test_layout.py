"""The house rules, read from the source: imports point one way, and only the settings module reads TOME_*."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT

PRODUCT = ("memory", "compressors", "workflows", "engines", "kernels", "service")
OURS = (*PRODUCT, "evals", "bench", "tests")
SETTINGS_MODULE = ROOT / "engines" / "settings.py"

# Environment that third-party libraries read, set (never read) by us before they load; each line is justified.
LIBRARY_ENVIRONMENT = {
    # No model hub at run time: models come from local packages and folders (DESIGN.md).
    ("engines/models.py", 'os.environ.setdefault("HF_HUB_OFFLINE", "1")'),
    ("engines/models.py", 'os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")'),
    # vLLM configures its logging from these at import: warnings only, on stderr (stdout carries `--json` output).
    ("engines/vllm.py", 'os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")'),
    ("engines/vllm.py", 'os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")'),
    # vLLM's CPU build reads its thread binding and KV-cache size from the environment only.
    ("engines/vllm.py", 'os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{(os.cpu_count() or 1) - 1}")'),
    ("engines/vllm.py", 'os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")'),
    # Hugging Face tokenizers warn (and may deadlock) when a process forks after using them: the CLI's worker
    # pools and the compllm trainer's example processes fork.
    ("service/cli.py", 'os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")'),
    ("compressors/soft/train.py", 'os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")'),
}


def modules(*packages: str) -> Iterator[Path]:
    for package in packages:
        yield from sorted((ROOT / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Top-level package names this file imports (at any depth: lazy imports in functions count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def violations(packages: tuple[str, ...], forbidden: set[str]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules(*packages)
        for name in sorted(imported(path) & forbidden)
    ]


def test_imports_point_one_way() -> None:
    assert violations(("memory", "compressors", "workflows", "engines", "kernels"), {"evals", "service"}) == []
    assert violations(("engines",), {"workflows", "memory", "compressors"}) == []
    assert violations(("kernels",), set(OURS) - {"kernels"}) == []
    assert violations(("memory",), {"compressors"}) == []
    assert violations(("compressors",), {"memory"}) == []


def environment_uses(path: Path) -> Iterator[tuple[int, str]]:
    """Lines that touch os.environ or os.getenv, or import them by name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines = path.read_text(encoding="utf-8").splitlines()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv"):
            yield node.lineno, lines[node.lineno - 1].strip()
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            if any(a.name in ("environ", "getenv") for a in node.names):
                yield node.lineno, lines[node.lineno - 1].strip()


def test_only_the_settings_module_reads_the_environment() -> None:
    found = {
        (str(path.relative_to(ROOT)), line, number)
        for path in modules(*PRODUCT)
        if path != SETTINGS_MODULE
        for number, line in environment_uses(path)
    }
    unexpected = sorted(f"{p}:{n}: {line}" for p, line, n in found if (p, line) not in LIBRARY_ENVIRONMENT)
    assert unexpected == []
    # The allow-list names only lines that still exist, so it cannot go stale.
    assert {(p, line) for p, line, _ in found} == LIBRARY_ENVIRONMENT


def test_the_readme_settings_table_is_generated_from_the_settings() -> None:
    from engines.settings import Settings, settings_table
    from service.cli import SETTINGS_TABLE_MARKERS

    start, end = SETTINGS_TABLE_MARKERS
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.split(start, 1)[1].split(end, 1)[0] == settings_table(), "run `tome settings --write README.md`"
    assert all(field.description for field in Settings.model_fields.values())  # every row says what it means


LONGEST_FUNCTION = 80  # lines, decorators included: longer ones are split into named steps that read top to bottom


def long_functions(packages: tuple[str, ...]) -> list[str]:
    """Functions (methods and nested ones too) longer than LONGEST_FUNCTION lines, with their length."""
    found = []
    for path in modules(*packages):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = (node.end_lineno or node.lineno) - first + 1
                if lines > LONGEST_FUNCTION:
                    found.append(f"{path.relative_to(ROOT)}:{first} {node.name}: {lines} lines")
    return found


def test_no_function_is_longer_than_80_lines() -> None:
    assert long_functions((*PRODUCT, "evals")) == []


def test_every_shipped_adapter_has_its_weights_log_curve_and_card() -> None:
    from engines.adapters import ADAPTER_HOME, CARD, LOG, PLOT, WEIGHTS

    folders = [f for f in sorted(ADAPTER_HOME.iterdir()) if f.is_dir() and f.name != "__pycache__"]
    assert {f.name for f in folders} >= {"compllm", "compllm-early", "gist", "smollm2-memagent"}
    for folder in folders:
        weights = (folder / WEIGHTS).exists() or (folder / "adapter_model.safetensors").exists()
        assert weights and all((folder / name).exists() for name in (LOG, PLOT, CARD)), folder.name
