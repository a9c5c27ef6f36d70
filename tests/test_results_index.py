"""bench/results/README.md is what `make results-index` writes, and every result names the script that wrote it."""

from pathlib import Path

from bench import index


def test_results_index_is_up_to_date():
    committed = (index.RESULTS / "README.md").read_text()
    assert committed == index.render(), "bench/results/README.md is stale: run `make results-index`"


def test_every_result_names_its_script():
    for run in index.runs():
        assert (index.ROOT / index.script(run["benchmark"])).is_file(), (run["file"], run["benchmark"])


def test_superseded_runs_are_the_unnamed_older_ones(tmp_path: Path):
    def write(name: str, benchmark: str, date: str, header: str = "") -> None:
        (tmp_path / f"{name}.json").write_text(f'{{"benchmark": "{benchmark}", "date": "{date}", {header}"rows": []}}')

    write("kernel-a", "kernel_bench", "2026-01-01")
    write("kernel-b", "kernel_bench", "2026-01-02")
    write("eval-x", "eval", "2026-01-01")
    write("eval-y", "eval", "2026-01-03")
    write("pair", "eval_pair", "2026-01-04", header='"baseline": "x", ')
    assert index.superseded(tmp_path) == ["kernel-a"]  # eval-x is named by the pair's header
    assert "[kernel-b](kernel-b.md)" in index.render(tmp_path)
