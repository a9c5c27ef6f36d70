"""bench/results/README.md is what `make results-index` writes, and every result names the script that wrote it."""

import uuid
from pathlib import Path

from bench import index


def test_results_index_is_up_to_date():
    committed = (index.RESULTS / "README.md").read_text()
    assert committed == index.render(), "bench/results/README.md is stale: run `make results-index`"


def test_every_result_names_its_script():
    for run in index.runs():
        assert (index.ROOT / index.script(run["benchmark"])).is_file(), (run["file"], run["benchmark"])


def test_superseded_runs_are_the_unnamed_older_ones(tmp_path: Path):
    tag = uuid.uuid4().hex  # names no file of the repository can hold

    def write(name: str, benchmark: str, date: str, header: str = "") -> None:
        (tmp_path / f"{name}.json").write_text(f'{{"benchmark": "{benchmark}", "date": "{date}", {header}"rows": []}}')

    write(f"kernel-{tag}-1", "kernel_bench", "2026-01-01")
    write(f"kernel-{tag}-2", "kernel_bench", "2026-01-02")
    write(f"eval-{tag}-1", "eval", "2026-01-01")
    write(f"eval-{tag}-2", "eval", "2026-01-03")
    write(f"pair-{tag}", "eval_pair", "2026-01-04", header=f'"baseline": "{tag}-1", ')
    assert index.superseded(tmp_path) == [f"kernel-{tag}-1"]  # eval-<tag>-1 is named by the pair's header
    assert f"[kernel-{tag}-2](kernel-{tag}-2.md)" in index.render(tmp_path)
