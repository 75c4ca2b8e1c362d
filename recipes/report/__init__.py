"""The comparison report: ``recipes/sweep.py``'s cells and the benchmarks -> REPORT.md and plots.

One job per module:

- ``aggregate``: read and cross-check ``results.json`` / ``selection.json``; cells and tables.
- ``stats``: summaries, paired differences with t-intervals, Pareto fronts, plateaus.
- ``pricing``: each step priced from measured step-time ratios (the cost axis).
- ``markdown``: tables declared as columns once, findings generated from the numbers.
- ``plots``: the figures, one panel (or row) per model family.
- ``benches``: each benchmark file's table, rendered once for its script and the report.
- ``cli``: ``python recipes/compare.py``; atomic writes.
"""

from recipes.report.aggregate import ReportError
from recipes.report.cli import main, write_report
from recipes.report.reading import load_results

__all__ = ["ReportError", "load_results", "main", "write_report"]
