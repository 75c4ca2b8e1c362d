"""The committed report is what `make report` writes from the committed runs, word for word.

A results.json added, rerun or deleted without regenerating results/REPORT.md (or a report edited
by hand) fails here, so every number the README quotes from the report traces to a run in git.
Both committed reports are checked: the classification one (the default profile's and SmolLM2's
cells with the frozen-depth section, ``make report UPDATE=1``) and the generative one
(``make report PROFILE=sft UPDATE=1``: results/sft/REPORT.md).
"""

import re
import shlex
from pathlib import Path

import pytest

from recipes.report.cli import main

ROOT = Path(__file__).resolve().parent.parent
REPORTS = {  # committed report -> a plot it must show (depth: make report passes --depth)
    "results/REPORT.md": "depth.png",
    "results/sft/REPORT.md": "validation_curves.png",
}


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


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_committed_report_is_regenerated_from_the_committed_runs(name, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the report names its inputs relative to the repository
    report = ROOT / name
    out = tmp_path / "REPORT.md"
    committed = report.read_text()
    main(recorded_args(committed, out))
    ours = out.read_text().replace(str(out), name)
    differing = [(a, b) for a, b in zip(ours.splitlines(), committed.splitlines()) if a != b]
    assert not differing, f"{name} is stale; run `make report UPDATE=1`. First: {differing[0]}"
    assert len(ours.splitlines()) == len(committed.splitlines())
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", committed)
    assert REPORTS[name] in images
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(images)
    absent = [image for image in images if not (report.parent / image).is_file()]
    assert not absent, f"{name} shows plots that are not committed: {absent}"


def make_dry_run(*args: str) -> str:
    """What ``make`` would run (``-n``), never `make setup` (``-o`` its stamp)."""
    import os
    import subprocess

    done = subprocess.run(["make", "-n", "-o", ".venv/.setup-done", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_experiment_targets_write_outside_the_committed_results_unless_asked():
    """`make bench`, `make report` and `make compare` write under results/local/ (ignored), so
    the committed report and its inputs (results/bench*.json, results/runs) stay what git has;
    UPDATE=1 writes the committed ones."""
    import subprocess

    bench = make_dry_run("bench")
    outs = [word for line in bench.splitlines() for word in line.split()
            if word.endswith(".json")]
    assert len(outs) == 5 and all(out.startswith("results/local/bench") for out in outs), bench
    report = make_dry_run("report")
    assert "--out results/local/REPORT.md" in report
    assert "--results results/runs/default results/runs/smollm2" in report  # committed runs
    assert "--bench results/bench.json" in report
    assert "--depth results/runs/depth" in report  # the frozen-depth section's runs
    cells = make_dry_run("cells")
    assert "--out results/local/runs/default" in cells
    assert "--out results/REPORT.md" in make_dry_run("report", "UPDATE=1")
    # the depth profile has no full fine-tuning of its own: its report is the default one's
    depth = make_dry_run("report", "PROFILE=depth", "UPDATE=1")
    assert "--out results/REPORT.md" in depth and "--depth results/runs/depth" in depth
    assert "--out results/runs/depth" in make_dry_run("cells", "PROFILE=depth", "UPDATE=1")
    assert "--out results/bench.json" in make_dry_run("bench", "UPDATE=1")
    paths = ["results/local/REPORT.md", "results/local/bench.json",
             "results/local/runs/default/a/results.json"]
    ignored = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True,
                             text=True)
    assert ignored.stdout.split() == paths, ignored.stderr


def test_plots_are_byte_stable(tmp_path):
    """The same figure saved twice gives the same bytes, with no tool version in them."""
    from recipes.report.plots import pyplot, save_figure

    plt = pyplot()
    written = []
    for index in range(2):
        fig, ax = plt.subplots()
        ax.plot([1, 2, 3], [3, 1, 2], "o-", label="bottom_n n=4")
        ax.legend()
        path = tmp_path / f"figure{index}.png"
        save_figure(fig, path, ".png", dpi=60)
        plt.close(fig)
        written.append(path.read_bytes())
    assert written[0] == written[1]
    assert b"Matplotlib" not in written[0] and b"Software" not in written[0]


def test_intervals_the_docs_quote_are_in_a_committed_report():
    """Every confidence interval README.md and docs/ quote ("[-8.84, -3.73]") is written in a
    committed report, so a rerun that moves a number fails here until the docs say the new one."""
    reports = "\n".join((ROOT / name).read_text() for name in REPORTS)
    interval = re.compile(r"\[[+-]?\d+\.\d+, [+-]?\d+\.\d+\]")
    quoted = {}
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for found in interval.findall(doc.read_text()):
            quoted.setdefault(found, doc.name)
    assert len(quoted) > 10  # the headline and the comparison page quote many
    stale = {found: doc for found, doc in quoted.items() if found not in reports}
    assert not stale, f"quoted in the docs, in no committed report: {stale}"


def test_the_docs_site_publishes_the_reports_its_nav_names_and_no_other(tmp_path):
    """docs/hooks.py: results/REPORT.md and results/sft/REPORT.md (in mkdocs.yml's nav) become
    pages with their plots; a report the nav does not name (make report PROFILE=gpu UPDATE=1)
    stays out, where it would fail the strict build as a page missing from the nav."""
    import importlib.util

    import yaml

    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)

    def published(nav) -> set[str]:
        return {path.relative_to(ROOT).as_posix() for path in hooks.report_files(nav)}

    loader = type("Loader", (yaml.SafeLoader,), {})  # mkdocs.yml names a Python function
    loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda *args: None)
    nav = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=loader)["nav"]  # noqa: S506
    both = published(nav)
    assert {"results/REPORT.md", "results/depth.png", "results/sft/REPORT.md",
            "results/sft/pareto.png"} <= both
    assert not any(name.startswith(("results/runs/", "results/local/")) for name in both)
    only_main = published(["index.md", {"Results": "results/REPORT.md"}])
    assert "results/REPORT.md" in only_main and not any("sft/" in n for n in only_main)
