"""The report's figures, one row of panels per model family.

- ``pareto.png``: mean test metric (bars: sample standard deviation over seeds) against the
  trainable share (log axis) and against the priced step time over full fine-tuning's; the
  Pareto front is drawn as a line through the methods on it.
- ``time_to_accuracy.png``: validation metric of the selection seed's run against cumulative
  priced training seconds (``pricing.py``), for every method whose run evaluated during training.
- ``validation_curves.png``: the same evaluations against optimizer steps (full fine-tuning's
  curve shows whether it plateaued).
- ``memory.png``: the runs' peak memory and optimizer state per method.

Point labels are placed by ``place_labels``: each label takes the first free spot around its
point (eight directions, growing distances) that overlaps no other label, no marker and stays in
the axes, with a leader line when it sits away from its point.
"""

from __future__ import annotations

from recipes.report import pricing
from recipes.report.aggregate import Cell, Table, validation_curve
from recipes.report.markdown import pareto_cells

FULL_COLOR = "black"
KINDS = {"cpu_max_rss": "process peak RSS", "cuda": "CUDA max allocated"}


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "freeze-policies"  # SVG ids from the content only
    import matplotlib.pyplot as plt

    return plt


# No version, date or tool in the files: the same inputs give the same bytes (a rerun of
# `make report` leaves the committed plots untouched).
STABLE_METADATA = {
    ".png": {"Software": None},
    ".svg": {"Creator": None, "Date": None},
    ".pdf": {"Creator": None, "Producer": None, "CreationDate": None},
}


def save_figure(fig, path, suffix: str, **kwargs) -> None:
    """``fig.savefig`` with the metadata of ``suffix``'s format left out (``STABLE_METADATA``)."""
    fig.savefig(path, metadata=STABLE_METADATA.get(suffix, {}), **kwargs)


def plot_label(cell: Cell) -> str:
    """A cell's name with its options, as in the tables (``bottom_n n=4``, not the folder
    name ``bottom_n`` beside ``bottom_n_2``)."""
    label = cell.label
    if " (" in label and label.endswith(")"):
        head, options = label[:-1].split(" (", 1)
        label = f"{head} {options}"
    return label


def _scale(table: Table) -> tuple[float, str]:
    return (100.0, " (%)") if table.metrics.as_percent else (1.0, "")


def _metric_name(table: Table, prefix: str) -> str:
    key = table.metrics.primary if prefix == "test" else table.metrics.select
    return f"{prefix} {key.split('_', 1)[1]}"


# -- labels -----------------------------------------------------------------------------------


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


GAP = 3  # pixels kept free around a label, so that neighbours do not read as one word


def place_labels(ax, points: list[tuple[float, float]], texts: list[str], fontsize: float = 7,
                 renderer=None):
    """Annotate each point with its text where it overlaps nothing placed before. Give the
    ``renderer`` of a figure already drawn in its final layout, or it is drawn here."""
    fig = ax.figure
    if renderer is None:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
    to_pixels = ax.transData.transform
    frame = ax.get_window_extent(renderer)
    occupied = []
    for x, y in points:
        px, py = to_pixels((x, y))
        occupied.append((px - 5, py - 5, px + 5, py + 5))
    annotations = []
    order = sorted(range(len(points)), key=lambda i: (to_pixels(points[i])[0],
                                                      to_pixels(points[i])[1]))
    directions = [(1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)]
    for i in order:
        probe = ax.text(0, 0, texts[i], fontsize=fontsize)
        extent = probe.get_window_extent(renderer)
        width, height = extent.width, extent.height
        probe.remove()
        px, py = to_pixels(points[i])
        chosen = None
        for distance in (6, 14, 24, 36, 50, 66, 84):
            for dx, dy in directions:
                left = px + dx * distance - (width if dx < 0 else width / 2 if dx == 0 else 0)
                bottom = py + dy * distance - (height if dy < 0 else height / 2 if dy == 0
                                               else 0)
                box = (left, bottom, left + width, bottom + height)
                inside = (box[0] >= frame.x0 and box[2] <= frame.x1 and box[1] >= frame.y0
                          and box[3] <= frame.y1)
                padded = (box[0] - GAP, box[1] - GAP, box[2] + GAP, box[3] + GAP)
                if inside and not any(_overlaps(padded, other) for other in occupied):
                    chosen = (box, distance)
                    break
            if chosen:
                break
        if chosen is None:  # nowhere free: the last resort is up and right of the point
            box = (px + 6, py + 6, px + 6 + width, py + 6 + height)
            chosen = (box, 6)
        box, distance = chosen
        occupied.append(box)
        to_points = 72.0 / fig.dpi  # offsets in points scale with the saved resolution
        annotations.append(ax.annotate(
            texts[i], (points[i][0], points[i][1]),
            xytext=((box[0] - px) * to_points, (box[1] - py) * to_points),
            textcoords="offset points",
            ha="left", va="bottom", fontsize=fontsize,
            arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6, "shrinkA": 0,
                        "shrinkB": 3} if distance > 10 else None,
        ))
    return annotations


# -- figures ----------------------------------------------------------------------------------


def _cost_axes(table: Table) -> list[tuple[str, object, str, bool, str]]:
    sources = {cell.priced_source for cell in table.cells if cell.priced_ratio is not None}
    runs_only = sources == {"runs"}
    step_label = ("step time vs full fine-tuning (ratio, measured in the runs under load)"
                  if runs_only else "priced step time vs full fine-tuning (ratio, from the bench)")
    step_basis = ("step time measured in the runs (under load)" if runs_only else
                  "step time priced from the interleaved benchmark")
    return [
        ("share", lambda c: c.trainable_share, "trainable share of parameters (%, log scale)",
         True, "trainable parameters (not time)"),
        ("step", lambda c: c.priced_ratio, step_label, False, step_basis),
    ]


def plot_pareto(tables: list[Table]):
    plt = pyplot()
    fig, axes = plt.subplots(len(tables), 2, figsize=(13, 5.6 * len(tables)), squeeze=False)
    labels = []
    for row, table in zip(axes, tables):
        scale, unit = _scale(table)
        primary = table.metrics.primary
        for ax, (kind, cost, xlabel, log_x, basis) in zip(row, _cost_axes(table)):
            cells = [cell for cell in table.cells if cost(cell) is not None]
            x_scale = 100.0 if kind == "share" else 1.0
            front = pareto_cells(table, cost)
            for cell in cells:
                stat = cell.test(primary)
                on_front = cell in front
                ax.errorbar(cost(cell) * x_scale, stat.mean * scale, yerr=(stat.std or 0) * scale,
                            fmt="o", capsize=3, ms=6 if on_front else 4,
                            color=FULL_COLOR if cell.is_full else "C0" if on_front else "C7",
                            zorder=3)
            ax.plot([cost(c) * x_scale for c in front],
                    [c.test(primary).mean * scale for c in front],
                    "-", color="C3", lw=1.2, alpha=0.8, label="Pareto front",
                    drawstyle="steps-post")
            if log_x:
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(_plain_numbers())
            ax.plot([], [], "o", color="C0", label="on the front")
            ax.plot([], [], "o", color="C7", ms=4, label="dominated")
            ax.plot([], [], "o", color=FULL_COLOR, label="full fine-tuning")
            ax.margins(x=0.12, y=0.12)
            ax.set(xlabel=xlabel, ylabel=f"{_metric_name(table, 'test')}{unit}, mean ± sd",
                   title=f"{table.title}\ncost basis: {basis}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=4,
                      frameon=False)
            labels.append((ax, [(cost(c) * x_scale, c.test(primary).mean * scale) for c in cells],
                           [plot_label(c) for c in cells]))
    fig.tight_layout()  # first the layout, then the labels in the final axes
    fig.canvas.draw()
    for ax, points, texts in labels:
        place_labels(ax, points, texts, renderer=fig.canvas.get_renderer())
    return fig


def _plain_numbers():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _: f"{value:g}")


def _curve_tables(tables: list[Table]) -> list[Table]:
    return [t for t in tables if any(cell.curve_run is not None for cell in t.cells)]


def _curve_cells(table: Table) -> list[Cell]:
    return [cell for cell in table.cells if cell.curve_run is not None]


def _curve_figure(panels: list[Table], series, xlabel, basis):
    """One panel per table, each cell's validation curve in it (full fine-tuning in its colour).

    ``series(table, cell, curve)`` gives the curve's x values, its legend label and any further
    ``plot`` keywords; ``xlabel(table)`` the panel's x-axis label and ``basis(table)`` its cost
    basis, in the title. None without panels.
    """
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(8 * len(panels), 5.2), squeeze=False)
    for ax, table in zip(axes[0], panels):
        scale, unit = _scale(table)
        for index, cell in enumerate(_curve_cells(table)):
            curve = validation_curve(cell.curve_run, table.metrics.select)
            xs, label, style = series(table, cell, curve)
            ax.plot(xs, [value * scale for _, value in curve], marker="o", ms=3,
                    color=FULL_COLOR if cell.is_full else f"C{index}", label=label, **style)
        ax.set(xlabel=xlabel(table), ylabel=f"{_metric_name(table, 'validation')}{unit}",
               title=f"{table.title}: seed {_curve_seed(table)}\ncost basis: {basis(table)}")
        ax.grid(True, alpha=0.3)
        # accuracy curves rise, leaving the lower right free; loss curves fall from where the
        # methods that train less stay, so matplotlib finds the emptiest corner
        ax.legend(fontsize=8, loc="lower right" if table.metrics.higher_is_better else "best")
    fig.tight_layout()
    return fig


def plot_time_to_accuracy(tables: list[Table]):
    def series(table, cell, curve):
        seconds = pricing.cumulative_seconds(table, cell, cell.curve_run,
                                             [step for step, _ in curve])
        return seconds, f"{plot_label(cell)} (lr {cell.chosen_lr:g}; {cell.priced_source})", {}

    def xlabel(table):
        return (f"cumulative training cost (s; priced: full fine-tuning's measured "
                f"{pricing.seconds_per_full_step(table):.2f} s/step x step ratio)")

    def basis(table):  # per panel: one model may be priced by the benchmark, another by its runs
        sources = {cell.priced_source for cell in _curve_cells(table)}
        return ("training seconds from the step ratios measured in the runs (under load)"
                if sources == {"runs"} else
                "training seconds priced from the benchmark's step ratios")

    panels = [t for t in _curve_tables(tables) if pricing.seconds_per_full_step(t)]
    return _curve_figure(panels, series, xlabel, basis)


def _curve_seed(table: Table):
    return next(cell.selection.selection_seed for cell in _curve_cells(table))


def plot_validation_curves(tables: list[Table]):
    def series(table, cell, curve):
        return ([step for step, _ in curve], f"{plot_label(cell)} (lr {cell.chosen_lr:g})",
                {"lw": 2.2 if cell.is_full else 1.2})

    return _curve_figure(_curve_tables(tables), series, lambda table: "optimizer step",
                         lambda table: "optimizer steps (not time)")


def plot_memory(tables: list[Table]):
    plt = pyplot()
    height = max(3.5, 0.45 * max(len(t.cells) for t in tables) + 2.0)
    fig, axes = plt.subplots(1, len(tables), figsize=(7 * len(tables), height), squeeze=False)
    for ax, table in zip(axes[0], tables):
        labels = [plot_label(cell) for cell in table.cells]
        positions = list(range(len(labels)))
        peak = [(c.peak_memory or (0, ""))[0] / 2**30 for c in table.cells]
        state = [(c.optimizer_state_bytes or 0) / 2**30 for c in table.cells]
        kinds = sorted({KINDS.get(c.peak_memory[1], c.peak_memory[1]) for c in table.cells
                        if c.peak_memory})
        ax.barh([p - 0.2 for p in positions], peak, height=0.4,
                label=f"peak memory of the run ({'/'.join(kinds) or 'not recorded'})")
        ax.barh([p + 0.2 for p in positions], state, height=0.4, label="optimizer state")
        ax.set_yticks(positions, labels)
        ax.invert_yaxis()
        ax.set(xlabel="memory (GiB)",
               title=f"{table.title}\ncost basis: memory measured in the runs (peak; state)")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2,
                  frameon=False)
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def make_plots(tables: list[Table]) -> dict[str, object]:
    """File name -> matplotlib figure."""
    figures = {"pareto.png": plot_pareto(tables)}
    for name, figure in (("time_to_accuracy.png", plot_time_to_accuracy(tables)),
                         ("validation_curves.png", plot_validation_curves(tables))):
        if figure is not None:
            figures[name] = figure
    figures["memory.png"] = plot_memory(tables)
    return figures
