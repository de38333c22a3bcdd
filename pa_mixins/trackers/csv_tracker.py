""":class:`CSVTracker`: one CSV file per run, the tracker that needs no extra package."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pa_mixins.trackers.base import DEFAULT_PROJECT_DIR, Tracker, jsonable_config

__all__ = [
    "CONFIG_FILENAME",
    "METRICS_FILENAME",
    "STEPS_FILENAME",
    "CSVTracker",
    "read_metrics_csv",
]

METRICS_FILENAME = "metrics.csv"
STEPS_FILENAME = "steps.csv"
CONFIG_FILENAME = "config.json"


class CSVTracker(Tracker):
    """Write each run to ``project_dir/<run_name>/``: ``metrics.csv``, ``config.json`` and,
    with interval logging, ``steps.csv``.

    ``metrics.csv`` holds the epoch metrics: a ``step`` column (the epoch), then one column per
    metric in the order the metrics first appeared; one row per step (values logged at the same
    step are merged into one row unless a metric already has a value there, then a new row
    with the same step starts). A missing value is an empty cell. Numbers are written with full
    precision (``repr``), so reading them back gives the same floats. pandas (``pd.read_csv``)
    and spreadsheets read it as it is. A new metric rewrites the file with the wider header
    (atomically: the old file stays until the new one is complete); otherwise a row is
    appended.

    ``steps.csv`` has the same layout for the interval metrics (``train_loss_step``,
    ``learning_rate_step``, ``samples_per_second``...), whose ``step`` column is the number of
    optimizer updates: the two x axes never share a column.

    ``config.json`` holds the hyperparameters (nested, as given). Starting a run whose folder
    already has these files continues it: rows are added after the existing ones and the
    configuration is updated (a resumed run keeps one file).

    Needs nothing beyond the standard library.
    """

    name = "csv"

    def __init__(
        self,
        project_dir: str | os.PathLike[str] = DEFAULT_PROJECT_DIR,
        filename: str = METRICS_FILENAME,
        config_filename: str = CONFIG_FILENAME,
        steps_filename: str = STEPS_FILENAME,
    ) -> None:
        super().__init__(project_dir)
        self.filename = filename
        self.config_filename = config_filename
        self.steps_filename = steps_filename
        self._epochs: _MetricsFile | None = None
        self._steps: _MetricsFile | None = None

    @property
    def run_dir(self) -> Path | None:
        """The folder of the open run."""
        return None if self.run_name is None else self.project_dir / self.run_name

    @property
    def metrics_path(self) -> Path | None:
        """The CSV file of the open run's epoch metrics."""
        return None if self._epochs is None else self._epochs.path

    @property
    def steps_path(self) -> Path | None:
        """The CSV file of the open run's interval metrics (written at the first interval)."""
        return None if self._steps is None else self._steps.path

    def start(self, run_name: str, config: Mapping[str, Any]) -> None:
        run_name = self._check_can_start(run_name)
        run_dir = self.project_dir / run_name
        run_dir.mkdir(parents=True, exist_ok=True)
        config_path = run_dir / self.config_filename
        merged: dict[str, Any] = {}
        if config_path.exists():
            try:
                merged = dict(json.loads(config_path.read_text(encoding="utf-8")))
            except (ValueError, TypeError):
                merged = {}
        merged.update(jsonable_config(config))
        _write_atomically(
            config_path, json.dumps(merged, indent=2, sort_keys=True, allow_nan=False) + "\n"
        )
        self._epochs = _MetricsFile(run_dir / self.filename)
        self._steps = _MetricsFile(run_dir / self.steps_filename)
        self.run_name = run_name

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._check_running()
        assert self._epochs is not None
        self._epochs.log(metrics, step)

    def log_interval_metrics(self, metrics: Mapping[str, float], num_updates: int) -> None:
        """Append the interval's metrics to ``steps.csv`` at ``step = num_updates``."""
        self._check_running()
        assert self._steps is not None
        self._steps.log(metrics, num_updates)

    def finish(self, failed: bool = False) -> None:
        self.run_name = None
        self._epochs = self._steps = None


class _MetricsFile:
    """One CSV file of metrics by step (see :class:`CSVTracker`): an existing file is
    continued; a new column rewrites the file atomically, a new row is appended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.exists():
            self._columns, self._rows = _read_rows(path)
        else:
            self._columns, self._rows = ["step"], []

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        values = {str(k): float(v) for k, v in metrics.items()}
        if not values:
            return
        new_columns = [name for name in values if name not in self._columns]
        self._columns.extend(new_columns)
        last = self._rows[-1] if self._rows else None
        if last is not None and last["step"] == step and not values.keys() & last.keys():
            last.update(values)
            rewrite = True
        else:
            self._rows.append({"step": int(step), **values})
            rewrite = bool(new_columns) or not self.path.exists()
        if rewrite:
            self._rewrite()
        else:
            with self.path.open("a", newline="", encoding="utf-8") as file:
                csv.writer(file).writerow(self._cells(self._rows[-1]))

    def _cells(self, row: Mapping[str, float | int]) -> list[str]:
        return [_format(row.get(column)) for column in self._columns]

    def _rewrite(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(self._columns)
            writer.writerows(self._cells(row) for row in self._rows)
        os.replace(tmp, self.path)


def _format(value: float | int | None) -> str:
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else repr(float(value))


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, float | int]]]:
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.reader(file)
        header = next(reader, None)
        if not header or header[0] != "step":
            raise ValueError(f"{path} is not a metrics file written by CSVTracker")
        rows: list[dict[str, float | int]] = []
        for cells in reader:
            if not cells:
                continue
            row: dict[str, float | int] = {"step": int(float(cells[0]))}
            for column, cell in zip(header[1:], cells[1:]):
                if cell != "":
                    row[column] = float(cell)
            rows.append(row)
    return list(header), rows


def read_metrics_csv(path: str | os.PathLike[str]) -> dict[str, list[tuple[int, float]]]:
    """Read a ``metrics.csv`` written by :class:`CSVTracker` (or the run folder holding it):
    for each metric, its ``(step, value)`` pairs in file order."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILENAME
    if not path.exists():
        raise FileNotFoundError(f"No metrics file at {path}")
    columns, rows = _read_rows(path)
    series: dict[str, list[tuple[int, float]]] = {name: [] for name in columns[1:]}
    for row in rows:
        for name in columns[1:]:
            if name in row:
                series[name].append((int(row["step"]), float(row[name])))
    return series


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
