"""The :class:`Tracker` interface and the helpers its implementations share."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

__all__ = [
    "DEFAULT_PROJECT_DIR",
    "Tracker",
    "check_run_name",
    "flatten_config",
    "jsonable_config",
    "to_float",
]

#: Where run folders go when no ``project_dir`` is given.
DEFAULT_PROJECT_DIR = "runs"

ConfigScalar = bool | int | float | str

_RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,=+@ -]{0,127}")


def check_run_name(run_name: str) -> str:
    """Return ``run_name`` if it is usable as a folder name and a run id by every tracker
    (letters, digits and ``_ . , = + @ -`` and spaces, at most 128 characters, not starting
    with a dot, a space or a dash); ``ValueError`` otherwise."""
    if not isinstance(run_name, str) or not _RUN_NAME.fullmatch(run_name):
        raise ValueError(
            f"Invalid run name {run_name!r}: use letters, digits and '_ . , = + @ -' or "
            "spaces (at most 128 characters, starting with a letter, a digit or '_')"
        )
    if run_name != run_name.rstrip():
        raise ValueError(f"Invalid run name {run_name!r}: it ends with a space")
    return run_name


def to_float(value: Any) -> float | None:
    """``value`` as a Python float if it is one number (int, float, bool, a one-element tensor
    or array, a NumPy scalar); ``None`` otherwise."""
    if isinstance(value, (int, float)):
        return float(value)
    item = getattr(value, "item", None)
    numel = getattr(value, "numel", None) or getattr(value, "size", None)
    if callable(item):
        try:
            count = numel() if callable(numel) else numel
            if count is None or int(count) == 1:
                result = item()
                if isinstance(result, (int, float)):
                    return float(result)
        except (TypeError, ValueError, RuntimeError):
            return None
    return None


def _describe(value: Any) -> str:
    """A readable, stable text for a configuration value that is not plain data (a function is
    named by its module and qualified name, not by its address)."""
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
    return str(value)


def jsonable_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` as plain JSON data: nested mappings stay nested, other values that JSON
    cannot hold become text (see :func:`_describe`); NaN and infinities become text too."""

    def convert(value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else str(value)
        if isinstance(value, Mapping):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        number = to_float(value)
        if number is not None:
            return convert(number)
        return _describe(value)

    return {str(k): convert(v) for k, v in config.items()}


def flatten_config(config: Mapping[str, Any], sep: str = ".") -> dict[str, ConfigScalar]:
    """``config`` flattened to one level of scalar values, for trackers whose hyperparameters
    are flat (MLflow params, TensorBoard hparams): nested mappings become ``outer.inner`` keys,
    ``None`` becomes ``"None"`` and lists their JSON text."""
    flat: dict[str, ConfigScalar] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            if not value:
                flat[prefix] = "{}"
            for k, v in value.items():
                visit(f"{prefix}{sep}{k}" if prefix else str(k), v)
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix] = value
        elif value is None:
            flat[prefix] = "None"
        elif isinstance(value, (list, tuple)):
            flat[prefix] = json.dumps(jsonable_config({"v": value})["v"])
        else:
            number = to_float(value)
            flat[prefix] = number if number is not None else _describe(value)

    for key, value in config.items():
        visit(str(key), value)
    return flat


class Tracker(ABC):
    """An experiment tracker: it opens a run, records numbers at steps and closes the run.

    A tracker object holds at most one run at a time: :meth:`start` opens it (or, where the
    tracker supports it, continues the run of that name in the same ``project_dir``),
    :meth:`log_metrics` records values, :meth:`finish` closes it. Call them on the main process
    only; :class:`~pa_mixins.trackers.TrackingCallback` does. :meth:`finish` must be safe to
    call twice and when nothing was started.

    Constructors only store options (no file or network access), so trackers can be built on
    every process. A tracker whose package is missing raises ``ImportError`` naming the pip
    extra when it is constructed.

    To write your own, subclass and implement the three methods; pass an instance anywhere a
    tracker name is accepted.
    """

    #: The name accepted by :func:`~pa_mixins.trackers.make_trackers` (``""``: none).
    name: ClassVar[str] = ""
    #: The ``pa_mixins[...]`` extra that installs what the tracker needs.
    extra: ClassVar[str | None] = None
    #: Modules that must be importable.
    required_modules: ClassVar[tuple[str, ...]] = ()

    def __init__(self, project_dir: str | os.PathLike[str] = DEFAULT_PROJECT_DIR) -> None:
        self.project_dir = Path(project_dir)
        #: The name of the run in progress; ``None`` when no run is open.
        self.run_name: str | None = None
        self.require(self.required_modules)

    @classmethod
    def is_available(cls) -> bool:
        """Whether the packages this tracker needs are installed (nothing is imported)."""
        return all(_importable(module) for module in cls.required_modules)

    def require(self, modules: tuple[str, ...]) -> None:
        """``ImportError`` naming the pip extra if one of ``modules`` is not installed."""
        missing = [module for module in modules if not _importable(module)]
        if missing:
            extra = f"pip install 'pa_mixins[{self.extra}]'" if self.extra else "install it"
            raise ImportError(
                f"{type(self).__name__} needs the package(s) {', '.join(missing)}, which are not "
                f"installed: {extra}"
            )

    @property
    def is_running(self) -> bool:
        """Whether a run is open."""
        return self.run_name is not None

    def _check_can_start(self, run_name: str) -> str:
        if self.is_running:
            raise RuntimeError(
                f"{type(self).__name__} already has the run {self.run_name!r} open; call "
                "finish() before starting another"
            )
        return check_run_name(run_name)

    def _check_running(self) -> str:
        if self.run_name is None:
            raise RuntimeError(f"{type(self).__name__} has no open run: call start() first")
        return self.run_name

    @abstractmethod
    def start(self, run_name: str, config: Mapping[str, Any]) -> None:
        """Open the run ``run_name`` and record ``config`` as its hyperparameters."""

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record each value of ``metrics`` at ``step``."""

    def log_interval_metrics(self, metrics: Mapping[str, float], num_updates: int) -> None:
        """Record the metrics of an interval (every N optimizer updates, from
        :class:`~pa_mixins.callbacks.IntervalMetricsCallback`) at update ``num_updates``.

        Their x axis is the number of optimizer updates, where the epoch metrics of
        :meth:`log_metrics` use the epoch. Trackers that keep a series per metric (TensorBoard,
        MLflow) log them at ``step=num_updates`` (this default); the CSV tracker writes them to
        a file of their own and W&B against an ``update`` axis, so the two never mix."""
        self.log_metrics(metrics, num_updates)

    @abstractmethod
    def finish(self, failed: bool = False) -> None:
        """Close the open run, marked as failed if ``failed`` where the tracker has a status;
        does nothing when no run is open."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(project_dir={str(self.project_dir)!r})"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
