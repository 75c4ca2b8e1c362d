"""``python recipes/compare.py --results DIR --out REPORT.md [--bench bench.json]``.

Everything is read and checked before anything is written; the plots and the report are written
to temporary names in the report's folder and renamed into place, the report last, so a bad
input or a failed write leaves the previous report and plots as they were.
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import sys
import tempfile
from pathlib import Path

from recipes.report.aggregate import ReportError
from recipes.report.benches import SECTIONS
from recipes.report.depth import depth_report
from recipes.report.longer import longer_markdown
from recipes.report.markdown import report_markdown
from recipes.report.plots import make_plots, pyplot, save_figure
from recipes.report.pricing import price_table
from recipes.report.reading import load_bench, load_results
from recipes.report.variant import variant_markdown


def bench_sections(folder: Path) -> tuple[dict | None, dict | None, list[tuple[str, str]]]:
    """(bench.json, bench_cache.json, rendered sections) from the benchmark files in ``folder``."""
    loaded, sections = {}, []
    for name, title, renderer, keys in SECTIONS:
        data = load_bench(folder / name, keys)
        loaded[name] = data
        if data is not None:
            sections.append((title, renderer(data)))
    return loaded["bench.json"], loaded["bench_cache.json"], sections


def write_report(results_dir: Path | list[Path], out: Path, bench_path: Path | None,
                 command: str, longer: Path | None = None,
                 variants: list[Path] = (), depth: Path | None = None) -> Path:
    """Read, check and aggregate everything, then write the report and plots atomically.

    ``results_dir`` is one folder of cells or a list of them (one per profile). The benchmark
    files are read from ``bench_path``'s folder (``bench.json`` under another name is read as
    such); without ``bench_path``, costs fall back to the runs' own times. ``depth`` is a folder
    of the depth profile's cells: the frozen-depth section and ``depth.png``
    (``recipes/report/depth.py``)."""
    folders = results_dir if isinstance(results_dir, (list, tuple)) else [results_dir]
    results = load_results(*folders)
    bench = bench_cache = None
    sections: list[tuple[str, str]] = []
    if bench_path is not None:
        bench_path = Path(bench_path)
        bench, bench_cache, sections = bench_sections(bench_path.parent)
        if bench_path.name != "bench.json":
            bench = load_bench(bench_path)
    for table in results.tables:
        price_table(table, bench, bench_cache)
    try:
        plots = make_plots(results.tables)
        extra, figures = depth_report(depth, results) if depth is not None else ([], {})
        extra += longer_markdown(longer, folders) if longer is not None else []
        for folder in variants:
            extra += variant_markdown(folder)
        text = report_markdown(results, command, bench, list(plots), sections, extra)
        out.parent.mkdir(parents=True, exist_ok=True)
        staged: list[tuple[str, Path]] = []
        try:
            for name, fig in {**plots, **figures}.items():
                save = functools.partial(save_figure, fig, suffix=Path(name).suffix, dpi=120)
                staged.append((_stage(out.parent, name, save), out.parent / name))
            staged.append((_stage(out.parent, out.name, _write_text(text)), out))
        except BaseException:
            for temporary, _ in staged:
                Path(temporary).unlink(missing_ok=True)
            raise
    finally:
        pyplot().close("all")
    for temporary, final in staged:  # the report last: it appears only with its plots
        os.replace(temporary, final)
    return out


def _write_text(text: str):
    def write(path: str) -> None:
        Path(path).write_text(text)

    return write


def _stage(folder: Path, name: str, writer, **kwargs) -> str:
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=Path(name).suffix)
    os.close(handle)
    try:
        writer(temporary, **kwargs)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; a report is for reading
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return temporary


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recipes/compare.py",
        description="Turn recipes/sweep.py's cells (results.json, selection.json) and the "
        "benchmark files into REPORT.md and its plots.",
    )
    parser.add_argument("--results", nargs="+", default=["results/runs/default"],
                        help="folders of cells, as recipes/sweep.py writes them (one per "
                        "profile)")
    parser.add_argument("--out", default="results/REPORT.md", help="the report; plots go beside it")
    parser.add_argument("--bench", default=None,
                        help="bench.json; bench_cache.json and bench_freeze_modes.json are read "
                        "from its folder (default: bench.json next to the report, if present)")
    parser.add_argument("--longer", default=None,
                        help="a folder of cells rerun at a longer budget (same relative paths as "
                        "under --results): their curves and plateau (recipes/report/longer.py)")
    parser.add_argument("--variants", nargs="*", default=[],
                        help="folders written by recipes/rerun.py: cells rerun with flags changed, "
                        "paired by seed with their base runs (recipes/report/variant.py)")
    parser.add_argument("--depth", default=None,
                        help="a folder of the depth profile's cells (configs/experiments/"
                        "depth.yaml): bottom_n at every frozen depth against full fine-tuning "
                        "under --results, and depth.png (recipes/report/depth.py)")
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = make_parser().parse_args(argv)
    out = Path(args.out)
    bench = Path(args.bench) if args.bench else out.parent / "bench.json"
    if args.bench and not bench.is_file():
        raise SystemExit(f"error: --bench {bench} does not exist")
    shown = sys.argv[1:] if argv is None else argv
    command = "python recipes/compare.py " + " ".join(map(shlex.quote, shown))
    try:
        path = write_report([Path(folder) for folder in args.results], out, bench, command,
                            Path(args.longer) if args.longer else None,
                            [Path(folder) for folder in args.variants],
                            Path(args.depth) if args.depth else None)
    except ReportError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"wrote {path}")
    return path
