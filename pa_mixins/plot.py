"""A picture of a run: its metrics per epoch (and per interval) drawn to a PNG file.

From a run folder written by :class:`~pa_mixins.trackers.CSVTracker`::

    python -m pa_mixins.plot runs/20250101-120000-a1b2c3            # -> that folder/metrics.png
    python -m pa_mixins.plot runs/20250101-120000-a1b2c3 -o run.png

From a trainer, in memory: ``plot_run_history(trainer.run_history, "run.png")``.

One panel per group: every metric whose name contains ``loss`` together (training and
evaluation losses on the same axes), then each other metric alone, then the learning rate(s)
(on a log scale when they span more than a factor of 20). A run folder with interval metrics
(its ``steps.csv``: ``train_loss_step``, ``learning_rate_step``, ``samples_per_second``...)
gets the same panels for them after the epoch ones, against the optimizer update, titled
``... per interval``. Drawn with matplotlib's Agg
backend (no display needed; pyplot and its global state are not used). Needs matplotlib:
``pip install 'pa_mixins[plot]'``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pa_mixins.trackers.base import to_float
from pa_mixins.trackers.csv_tracker import METRICS_FILENAME, STEPS_FILENAME, read_metrics_csv

if TYPE_CHECKING:
    from pa_mixins.tracking import RunHistory

__all__ = ["group_metrics", "main", "plot_metrics", "plot_run_dir", "plot_run_history"]

#: The size of one panel, in inches (at ``dpi`` 100: 600 x 350 pixels).
PANEL_SIZE = (6.0, 3.5)
#: Panels per row.
MAX_COLUMNS = 2
#: The file name ``python -m pa_mixins.plot RUN_DIR`` writes in RUN_DIR.
DEFAULT_IMAGE_NAME = "metrics.png"

Series = Mapping[str, Sequence[tuple[float, float]]]


def _is_learning_rate(name: str) -> bool:
    return name == "lr" or name.startswith(("learning_rate", "lr_", "lr-", "lr/"))


def group_metrics(names: Iterable[str]) -> list[tuple[str, list[str]]]:
    """The panels: ``("loss", [the losses])`` first, then ``(name, [name])`` for each other
    metric, then ``("learning rate", [the learning rates])``; empty groups are left out."""
    names = sorted(set(names))
    losses = [n for n in names if "loss" in n.lower()]
    rates = [n for n in names if _is_learning_rate(n) and n not in losses]
    others = [n for n in names if n not in losses and n not in rates]
    groups: list[tuple[str, list[str]]] = []
    if losses:
        losses.sort(key=lambda n: (not n.startswith("train"), n))
        groups.append(("loss", losses))
    groups.extend((name, [name]) for name in others)
    if rates:
        groups.append(("learning rate", rates))
    return groups


def _require_matplotlib() -> tuple[Any, Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as error:
        raise ImportError("Plotting needs matplotlib: pip install 'pa_mixins[plot]'") from error
    return Figure, FigureCanvasAgg, MaxNLocator


def plot_metrics(
    series: Series,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    x_label: str = "epoch",
    dpi: int = 100,
    interval_series: Series | None = None,
) -> Path:
    """Draw ``series`` (metric name -> ``(x, value)`` points) to the PNG file ``path``, one
    panel per group of :func:`group_metrics`, then the panels of ``interval_series`` (the
    same, against the optimizer update); return the path. The image is ``columns * 6`` by
    ``rows * 3.5`` inches at ``dpi`` (two panels per row at most)."""
    epochs: dict[str, list[tuple[float, float]]] = {
        name: list(points) for name, points in series.items() if points
    }
    intervals: dict[str, list[tuple[float, float]]] = {
        name: list(points) for name, points in (interval_series or {}).items() if points
    }
    if not epochs and not intervals:
        raise ValueError("There is no metric value to plot")
    Figure, FigureCanvasAgg, MaxNLocator = _require_matplotlib()
    panels = [(group, names, epochs, x_label) for group, names in group_metrics(epochs)]
    panels += [
        (f"{group} per interval", names, intervals, "optimizer update")
        for group, names in group_metrics(intervals)
    ]
    groups = panels
    columns = min(MAX_COLUMNS, len(groups))
    rows = math.ceil(len(groups) / columns)
    figure = Figure(figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows), dpi=dpi)
    FigureCanvasAgg(figure)
    figure.set_layout_engine("constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for index, (group, names, data, axis_label) in enumerate(groups):
        ax = axes[index // columns][index % columns]
        for name in names:
            xs = [x for x, _ in data[name]]
            ys = [y for _, y in data[name]]
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=name)
        ax.set_title(group)
        ax.set_xlabel(axis_label)
        ax.grid(True, alpha=0.3)
        if group.startswith("learning rate"):
            values = [y for name in names for _, y in data[name] if math.isfinite(y)]
            if values and min(values) > 0 and max(values) / min(values) > 20:
                ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(names) > 1:
            ax.legend(fontsize="small")
    for index in range(len(groups), rows * columns):
        axes[index // columns][index % columns].set_visible(False)
    if title:
        figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=dpi)
    return path


def plot_run_history(
    run_history: RunHistory, path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Draw ``trainer.run_history`` to the PNG file ``path``: the i-th recorded value of a
    metric is drawn at epoch i (values that are not one number are skipped)."""
    series: dict[str, list[tuple[float, float]]] = {}
    for name in run_history.get_metric_names():
        points = []
        for epoch, value in enumerate(run_history.get_metric_values(name), start=1):
            number = to_float(value)
            if number is not None:
                points.append((float(epoch), number))
        if points:
            series[name] = points
    return plot_metrics(series, path, title=title)


def plot_run_dir(
    run_dir: str | os.PathLike[str],
    path: str | os.PathLike[str] | None = None,
    *,
    title: str | None = None,
) -> Path:
    """Draw the ``metrics.csv`` of a run folder (or that file itself) to ``path`` (default:
    ``metrics.png`` next to the CSV file), and the interval metrics of the ``steps.csv`` beside
    it, if there is one."""
    run_dir = Path(run_dir)
    csv_path = run_dir if run_dir.is_file() else run_dir / METRICS_FILENAME
    series = _points(read_metrics_csv(csv_path))
    steps_path = csv_path.parent / STEPS_FILENAME
    intervals = _points(read_metrics_csv(steps_path)) if steps_path.exists() else {}
    output = Path(path) if path is not None else csv_path.parent / DEFAULT_IMAGE_NAME
    return plot_metrics(
        series, output, title=title or csv_path.parent.name, interval_series=intervals
    )


def _points(
    data: Mapping[str, Sequence[tuple[int, float]]],
) -> dict[str, list[tuple[float, float]]]:
    return {name: [(float(step), value) for step, value in points] for name, points in data.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pa_mixins.plot RUN_DIR [-o OUT.png] [--title TITLE]``."""
    parser = argparse.ArgumentParser(
        prog="python -m pa_mixins.plot",
        description="Draw the metrics of a run folder (its metrics.csv, written by the CSV "
        "tracker) to a PNG file.",
    )
    parser.add_argument("run_dir", help="a run folder, or its metrics.csv")
    parser.add_argument(
        "-o", "--output", help=f"the PNG file to write (default: RUN_DIR/{DEFAULT_IMAGE_NAME})"
    )
    parser.add_argument("--title", help="the figure title (default: the run folder's name)")
    args = parser.parse_args(argv)
    try:
        written = plot_run_dir(args.run_dir, args.output, title=args.title)
    except (OSError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
