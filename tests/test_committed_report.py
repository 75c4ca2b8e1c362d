"""The committed report is what `make report` writes from the committed runs, word for word.

A results.json added, rerun or deleted without regenerating results/REPORT.md (or a report edited
by hand) fails here, so every number the README quotes from the report traces to a run in git.
"""

from pathlib import Path

from recipes.report.cli import main

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "results" / "REPORT.md"


def make_report_args(out: Path) -> list[str]:
    """The arguments `make report` passes for the default profile (see the Makefile's report)."""
    runs = ROOT / "results" / "runs"
    args = ["--results", *(str(p.relative_to(ROOT)) for p in (runs / "default", runs / "smollm2")
                           if p.is_dir()),
            "--out", str(out), "--bench", "results/bench.json"]
    if (runs / "longer").is_dir():
        args += ["--longer", "results/runs/longer"]
    if (runs / "bf16_frozen").is_dir():
        args += ["--variants", "results/runs/bf16_frozen"]
    return args


def test_committed_report_is_regenerated_from_the_committed_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the report names its inputs relative to the repository
    out = tmp_path / "REPORT.md"
    main(make_report_args(out))
    ours = out.read_text().replace(str(out), "results/REPORT.md")
    committed = REPORT.read_text()
    assert ours.splitlines()[0] == committed.splitlines()[0]  # same command, same inputs
    differing = [(a, b) for a, b in zip(ours.splitlines(), committed.splitlines()) if a != b]
    assert not differing, f"results/REPORT.md is stale; run `make report`. First: {differing[0]}"
    assert len(ours.splitlines()) == len(committed.splitlines())
