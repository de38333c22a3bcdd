""":class:`WandbTracker`: Weights & Biases runs, offline by default."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from pa_mixins.trackers.base import DEFAULT_PROJECT_DIR, Tracker, jsonable_config

__all__ = ["WandbTracker", "wandb_run_id"]

#: The W&B key that holds each record's step (the x axis of every other metric).
STEP_KEY = "step"
#: The W&B key that holds the optimizer update of an interval record (the x axis of the
#: interval metrics).
UPDATE_KEY = "update"


def wandb_run_id(run_name: str) -> str:
    """The W&B run id used for ``run_name`` (W&B ids may not contain ``/ \\ # ? % :``)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "-", run_name)[:64]


class WandbTracker(Tracker):
    """Record each run as a W&B run in ``project_dir/wandb/``; offline by default (no account
    and no network: ``wandb sync project_dir/wandb/offline-run-*`` uploads it later).

    The run's id is derived from ``run_name`` (:func:`wandb_run_id`) and its display name is
    ``run_name``; the configuration is the run's config. Metrics are logged with a ``step``
    key that every other metric uses as its x axis (``define_metric``), so W&B's own step
    counter never has to match ours; interval metrics use an ``update`` key (the optimizer
    update) instead. :meth:`finish` ends the run with exit code 0, or 1 when
    it failed. Starting a run name again resumes that id (``resume="allow"``): online, the same
    run continues; offline, W&B writes another ``offline-run-*`` folder with the same id, which
    ``wandb sync`` appends to the run.

    :param mode: ``"offline"`` (default), ``"online"``, ``"disabled"``, or ``None`` to let W&B
        decide (``WANDB_MODE``, ``wandb login``).
    :param init_kwargs: more arguments of ``wandb.init`` (``entity``, ``tags``, ``group``...).

    Needs the ``wandb`` package: ``pip install 'pa_mixins[wandb]'`` (0.19.10 or newer).
    """

    name = "wandb"
    extra = "wandb"
    required_modules = ("wandb",)

    def __init__(
        self,
        project_dir: str | os.PathLike[str] = DEFAULT_PROJECT_DIR,
        project: str = "pa_mixins",
        mode: str | None = "offline",
        **init_kwargs: Any,
    ) -> None:
        super().__init__(project_dir)
        self.project = project
        self.mode = mode
        self.init_kwargs = init_kwargs
        self._run: Any = None
        self._interval_names: set[str] = set()

    @property
    def run(self) -> Any:
        """The ``wandb`` run object of the open run (``None`` if none)."""
        return self._run

    def start(self, run_name: str, config: Mapping[str, Any]) -> None:
        run_name = self._check_can_start(run_name)
        import wandb

        self.project_dir.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {
            "project": self.project,
            "name": run_name,
            "id": wandb_run_id(run_name),
            "resume": "allow",
            "dir": str(self.project_dir),
            "config": jsonable_config(config),
            # Several runs may be open in one process (one per tracker object); W&B's own
            # stdout capture is off so that it does not wrap the console of the training run.
            "reinit": "create_new",
            "settings": wandb.Settings(console="off"),
        }
        if self.mode is not None:
            kwargs["mode"] = self.mode
        kwargs.update(self.init_kwargs)
        run = wandb.init(**kwargs)
        run.define_metric(STEP_KEY)
        run.define_metric(UPDATE_KEY)
        run.define_metric("*", step_metric=STEP_KEY)
        self._interval_names = set()
        self._run = run
        self.run_name = run_name

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._check_running()
        self._run.log({**{k: float(v) for k, v in metrics.items()}, STEP_KEY: int(step)})

    def log_interval_metrics(self, metrics: Mapping[str, float], num_updates: int) -> None:
        """Log the interval's metrics with an ``update`` key, their x axis
        (``define_metric(name, step_metric="update")``)."""
        self._check_running()
        for name in metrics:
            if name not in self._interval_names:
                self._run.define_metric(name, step_metric=UPDATE_KEY)
                self._interval_names.add(name)
        self._run.log({**{k: float(v) for k, v in metrics.items()}, UPDATE_KEY: int(num_updates)})

    def finish(self, failed: bool = False) -> None:
        run, self._run = self._run, None
        self.run_name = None
        if run is not None:
            run.finish(exit_code=1 if failed else 0)
