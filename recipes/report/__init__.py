"""The comparison report: ``recipes/sweep.py``'s cells and the benchmarks -> REPORT.md and plots.

One job per module:

- ``reading``: load every run's ``results.json`` (through ``recipes.launcher.results``) and each
  cell's ``selection.json``.
- ``aggregate``: cross-check the runs; cells and tables.
- ``columns``: the report's table columns, declared once.
- ``longer``: the longer-run check (``make longer``) beside the profile's run.
- ``variant``: a cell rerun with flags changed (``recipes/rerun.py``), paired by seed.
- ``depth``: the frozen-depth curve (``bottom_n`` at every depth, the depth profile's cells with
  the default profile's) against full fine-tuning, paired by seed, and ``depth.png``.
- ``stats``: summaries, paired differences with t-intervals, Pareto fronts, plateaus.
- ``pricing``: each step priced from measured step-time ratios (the cost axis).
- ``markdown``: tables declared as columns once, findings generated from the numbers, and the
  generations of a task that records them (sft).
- ``plots``: the figures, one panel (or row) per model family.
- ``benches``: each benchmark file's table, rendered once for its script and the report.
- ``cli``: ``python recipes/compare.py``; atomic writes.
"""

from recipes.report.aggregate import ReportError
from recipes.report.cli import main, write_report
from recipes.report.reading import load_results

__all__ = ["ReportError", "load_results", "main", "write_report"]
