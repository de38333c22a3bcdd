"""``ExperimentTrackingMixin``: see the run. Interval metrics and experiment trackers, set up
by constructor options (named as Accelerate's: ``log_with``, ``project_dir``)."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from pa_mixins.base import BaseTrainer
from pa_mixins.callbacks.interval import DEFAULT_LOG_EVERY_N_STEPS, IntervalMetricsCallback
from pa_mixins.checks import require_positive_int
from pa_mixins.trackers.callback import TrackingCallback
from pa_mixins.trackers.registry import LogWith

__all__ = ["ExperimentTrackingMixin"]


class ExperimentTrackingMixin(BaseTrainer):
    """Adds the run's observers to the trainer's callbacks, from constructor options:

    * ``log_every_n_steps`` (default 50): an
      :class:`~pa_mixins.callbacks.IntervalMetricsCallback`, which every N optimizer updates
      reads the interval's mean loss, learning rate(s), speed (and gradient norm when clipping
      by norm) from the device once and hands them to the progress bar, the console and the
      trackers. ``None`` turns it off.
    * ``log_with`` (default ``None``: no tracker, so no file is written) and ``project_dir``
      (default ``"runs"``): a :class:`~pa_mixins.trackers.TrackingCallback` writing the run's
      configuration, its epoch metrics and its interval metrics to ``"csv"``,
      ``"tensorboard"``, ``"mlflow"``, ``"wandb"``, a list of them, or ``"all"`` (every
      installed one), from the main process only. A tracker whose package is missing fails
      here, when the trainer is created, naming the extra to install.

    The callbacks are added after the ones you give, through the handler's ``add_callback``.
    Yours win: with an ``IntervalMetricsCallback`` among ``callbacks``, none is added; a
    ``TrackingCallback`` among ``callbacks`` together with ``log_with`` is refused (one or the
    other). A run that ends by an exception finishes its tracker runs as failed (the
    callback's ``on_exception``). Needs nothing but ``BaseTrainer``; without a loop it only
    stores its options.

    Example::

        trainer = Trainer(model, loss_func, optimizer, log_with="tensorboard", project_dir="runs")
    """

    init_options: ClassVar[tuple[str, ...]] = ("log_with", "project_dir", "log_every_n_steps")

    def __init__(
        self,
        *args: Any,
        log_with: LogWith = None,
        project_dir: str | os.PathLike[str] | None = None,
        log_every_n_steps: int | None = DEFAULT_LOG_EVERY_N_STEPS,
        **kwargs: Any,
    ) -> None:
        if log_every_n_steps is not None:
            require_positive_int("log_every_n_steps", log_every_n_steps)
        #: the ``log_with`` option (``None``: no tracker)
        self.log_with = log_with
        #: the ``project_dir`` option (``None``: ``"runs"``)
        self.project_dir = project_dir
        #: the ``log_every_n_steps`` option (``None``: no interval metrics)
        self.log_every_n_steps = log_every_n_steps
        # built before the rest of the trainer, so a wrong name or a missing package fails first
        tracking = None if log_with is None else TrackingCallback(log_with, project_dir)
        super().__init__(*args, **kwargs)
        handler = self.callback_handler
        if log_every_n_steps is not None and not any(
            isinstance(callback, IntervalMetricsCallback) for callback in handler
        ):
            handler.add_callback(IntervalMetricsCallback(log_every_n_steps))
        if tracking is not None:
            if self.tracking_callback is not None:
                raise ValueError(
                    "Both log_with= and a TrackingCallback in callbacks= were given: pass the "
                    "trackers to one of them"
                )
            handler.add_callback(tracking)

    @property
    def tracking_callback(self) -> TrackingCallback | None:
        """The trainer's :class:`~pa_mixins.trackers.TrackingCallback` (from ``log_with`` or
        among ``callbacks``), or ``None``: its ``current_run_name``, ``trackers``..."""
        return next((cb for cb in self.callback_handler if isinstance(cb, TrackingCallback)), None)
