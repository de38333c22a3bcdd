"""The tracker names and :func:`make_trackers`, which turns a ``log_with`` value into trackers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeAlias

from pa_mixins.trackers.base import DEFAULT_PROJECT_DIR, Tracker
from pa_mixins.trackers.csv_tracker import CSVTracker
from pa_mixins.trackers.mlflow_tracker import MLflowTracker
from pa_mixins.trackers.tensorboard_tracker import TensorBoardTracker
from pa_mixins.trackers.wandb_tracker import WandbTracker

__all__ = ["TRACKERS", "LogWith", "TrackerSpec", "available_trackers", "make_trackers"]

#: The built-in trackers by name, in the order ``"all"`` creates them.
TRACKERS: dict[str, type[Tracker]] = {
    CSVTracker.name: CSVTracker,
    TensorBoardTracker.name: TensorBoardTracker,
    MLflowTracker.name: MLflowTracker,
    WandbTracker.name: WandbTracker,
}

#: One tracker: a name, an instance, or a class created with ``project_dir``.
TrackerSpec: TypeAlias = str | Tracker | type[Tracker]
#: What ``make_trackers`` accepts.
LogWith: TypeAlias = TrackerSpec | Sequence[TrackerSpec] | None


def available_trackers() -> list[str]:
    """The names of the built-in trackers whose packages are installed."""
    return [name for name, cls in TRACKERS.items() if cls.is_available()]


def make_trackers(
    log_with: LogWith, project_dir: str | os.PathLike[str] | None = None
) -> list[Tracker]:
    """Trackers from a ``log_with`` value (named as Accelerate's ``log_with`` option).

    :param log_with: ``None`` (no tracker), a name (``"csv"``, ``"tensorboard"``,
        ``"mlflow"``, ``"wandb"``), ``"all"`` (every built-in tracker whose package is
        installed), a :class:`Tracker` instance (used as it is) or subclass (created with
        ``project_dir``), or a list of these. A name given twice gives one tracker.
    :param project_dir: the folder the trackers write to (default ``"runs"``).
    :raises ValueError: for an unknown name or a value of another type.
    :raises ImportError: for a named tracker whose package is missing (naming the pip extra).
    """
    directory = DEFAULT_PROJECT_DIR if project_dir is None else project_dir
    if log_with is None:
        return []
    items: Sequence[TrackerSpec] = (
        [log_with] if isinstance(log_with, (str, Tracker, type)) else list(log_with)
    )
    trackers: list[Tracker] = []
    names_seen: set[str] = set()
    for item in items:
        if isinstance(item, Tracker):
            trackers.append(item)
        elif isinstance(item, type) and issubclass(item, Tracker):
            trackers.append(item(directory))
        elif isinstance(item, str):
            key = item.strip().lower()
            if key == "all":
                names = available_trackers()
            elif key in TRACKERS:
                names = [key]
            else:
                raise ValueError(
                    f"Unknown tracker {item!r}: log_with accepts {sorted(TRACKERS)}, 'all', "
                    "Tracker instances or a list of these"
                )
            for name in names:
                if name not in names_seen:
                    names_seen.add(name)
                    trackers.append(TRACKERS[name](directory))
        else:
            raise ValueError(
                f"log_with got {item!r} ({type(item).__name__}); expected a tracker name "
                f"({sorted(TRACKERS)} or 'all'), a Tracker, or a list of these"
            )
    return trackers
