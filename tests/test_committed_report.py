"""The committed report is what `make report` writes from the committed runs, word for word.

A results.json added, rerun or deleted without regenerating results/REPORT.md (or a report edited
by hand) fails here, so every number the README quotes from the report traces to a run in git.
"""

import shlex
from pathlib import Path

from recipes.report.cli import main

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "results" / "REPORT.md"


def recorded_args(report: str, out: Path) -> list[str]:
    """The arguments the committed report records on its "Report:" line (``make report``'s),
    with ``--out`` moved to ``out``."""
    line = next(line for line in report.splitlines() if line.startswith("Report: `"))
    command = line.split("`")[1]
    words = shlex.split(command)
    assert words[:2] == ["python", "recipes/compare.py"], command
    args = words[2:]
    args[args.index("--out") + 1] = str(out)
    return args


def test_committed_report_is_regenerated_from_the_committed_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the report names its inputs relative to the repository
    out = tmp_path / "REPORT.md"
    committed = REPORT.read_text()
    main(recorded_args(committed, out))
    ours = out.read_text().replace(str(out), "results/REPORT.md")
    differing = [(a, b) for a, b in zip(ours.splitlines(), committed.splitlines()) if a != b]
    assert not differing, f"results/REPORT.md is stale; run `make report`. First: {differing[0]}"
    assert len(ours.splitlines()) == len(committed.splitlines())
