""":class:`TrackingCallback`: sends the run's configuration and metrics to trackers."""

from __future__ import annotations

import atexit
import os
import secrets
import time
import warnings
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pa_mixins.callbacks.core import TrainerCallback
from pa_mixins.trackers.base import Tracker, check_run_name, to_float
from pa_mixins.trackers.registry import LogWith, make_trackers

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pa_mixins.base import BaseTrainer
    from pa_mixins.tracking import RunHistory

__all__ = ["EPOCH_TIME", "LEARNING_RATE", "TrackingCallback", "trainer_hyperparameters"]

#: The metric name of the learning rate (``learning_rate_group_<i>`` for several groups).
LEARNING_RATE = "learning_rate"
#: The metric name of an epoch's training time, in seconds.
EPOCH_TIME = "epoch_time"

# Process facts, not hyperparameters: the same on every logged run (the main process).
_NOT_HYPERPARAMETERS = ("is_local_process_zero", "is_world_process_zero")


def _run_config_dict(trainer: BaseTrainer) -> dict[str, Any]:
    run_config = getattr(trainer, "run_config", None)
    if run_config is None:
        return {}
    return {k: v for k, v in run_config.to_dict().items() if k not in _NOT_HYPERPARAMETERS}


def trainer_hyperparameters(trainer: BaseTrainer) -> dict[str, Any]:
    """What identifies the trainer: its class name and, in MRO order, the names of its classes
    that end with ``Mixin``."""
    cls = type(trainer)
    return {
        "trainer": cls.__name__,
        "mixins": [c.__name__ for c in cls.__mro__ if c.__name__.endswith("Mixin")],
    }


def _is_main(trainer: BaseTrainer) -> bool:
    return bool(trainer.is_world_process_zero)


class TrackingCallback(TrainerCallback):
    """Record each run in experiment trackers, from the main process only.

    * **Configuration.** When a training run starts: the trainer class and its mixins
      (:func:`trainer_hyperparameters`), your ``config``, and the run config
      (``trainer.run_config.to_dict()``: epochs, batch sizes, accumulation, clipping,
      precision, processes, seed...). The tracker run is opened at the first epoch event
      rather than in ``on_training_run_start``, so that a resumed run (below) knows its name
      first; nothing happens in between.
    * **Metrics.** At the end of each epoch (``on_training_run_epoch_end``, after training
      and evaluation), step = the epoch number: the newest value of every run-history metric
      recorded since the last log (a metric not updated in an epoch is not repeated), and the
      learning rate at the end of the epoch (``learning_rate``, or
      ``learning_rate_group_<i>`` for several parameter groups; ``log_learning_rate=False``
      turns it off) and the training time of the epoch in seconds (``epoch_time``;
      ``log_epoch_time=False`` turns it off). Values that are not one number are skipped.
      Metrics not logged yet when the run ends (an epoch cut short by a
      ``StopTrainingError``, e.g. early stopping raised before this callback saw the epoch
      end; values recorded by ``training_run_end`` hooks) are logged then, at the epoch they
      belong to.
    * **Interval metrics.** Every N optimizer updates, the metrics of
      :class:`~pa_mixins.callbacks.IntervalMetricsCallback` (``train_loss_step``,
      ``learning_rate_step``, ``samples_per_second``...; the everyday ``Trainer`` adds that
      callback), through :meth:`Tracker.log_interval_metrics` at step = ``num_updates``: an
      axis of their own (the CSV tracker's ``steps.csv``, W&B's ``update``), never mixed with
      the epochs.
    * **evaluate().** The evaluation metrics are logged into this callback's last run,
      reopened (so ``evaluation_loss`` of a final test evaluation sits next to the training
      curves, at the last epoch), with the evaluation's run config under ``evaluate``; with
      no earlier run, into a new run. The run is closed again at the end of ``evaluate()``.
    * **End of the run.** The trackers are finished at the end of ``train()``. A run that ends
      by an exception is finished as failed at once (the ``on_exception`` event of
      ``train()`` and ``evaluate()``); if the process dies before (a kill), at the next
      ``train()`` / ``evaluate()`` of this callback or when the interpreter exits, whichever
      comes first. :meth:`finish` is safe to call at any time and twice.
    * **Resume.** The run name is part of the callback's state in a training state, so
      ``train(resume_from=...)`` continues the same tracker run where the tracker supports
      it (the CSV file, the TensorBoard folder and the MLflow run continue; W&B resumes the
      run id).

    :param trackers: what :func:`~pa_mixins.trackers.make_trackers` accepts: ``"csv"``,
        ``"tensorboard"``, ``"mlflow"``, ``"wandb"``, ``"all"``, trackers, or a list.
    :param project_dir: where the trackers created from names write (default ``"runs"``).
    :param run_name: a fixed run name; default: ``YYYYmmdd-HHMMSS-<random>``, new for each
        ``train()``. Starting a name that exists continues that run.
    :param config: more hyperparameters to record (the model, the data...).
    :param log_learning_rate: also log the optimizer's learning rate(s) each epoch.
    :param log_epoch_time: also log each epoch's training time (``epoch_time``, seconds).

    Example::

        trainer = Trainer(model, loss_func, optimizer,
                          callbacks=(*get_default_callbacks(), TrackingCallback("csv", "runs")))
    """

    def __init__(
        self,
        trackers: LogWith,
        project_dir: str | os.PathLike[str] | None = None,
        *,
        run_name: str | None = None,
        config: Mapping[str, Any] | None = None,
        log_learning_rate: bool = True,
        log_epoch_time: bool = True,
    ) -> None:
        self.trackers: list[Tracker] = make_trackers(trackers, project_dir)
        self.run_name = None if run_name is None else check_run_name(run_name)
        self.config: dict[str, Any] = dict(config or {})
        self.log_learning_rate = log_learning_rate
        self.log_epoch_time = log_epoch_time
        self._epoch_started: float | None = None
        self._epoch_seconds: float | None = None
        # A run to open at the next event: its name (None: a new one) and configuration.
        self._pending: tuple[str | None, dict[str, Any]] | None = None
        self._current_run_name: str | None = None
        self._current_config: dict[str, Any] = {}
        self._resumed_run_name: str | None = None
        self._opened_for_evaluation = False
        self._counts: dict[str, int] = {}
        self._last_step: int | None = None
        self._epoch_seen: int | None = None  # the epoch of the latest epoch event
        self._exit_hook_registered = False

    # -- state -------------------------------------------------------------------------------

    @property
    def current_run_name(self) -> str | None:
        """The name of the open run, or of the last one."""
        return self._current_run_name

    @property
    def is_running(self) -> bool:
        """Whether a tracker run is open."""
        return any(tracker.is_running for tracker in self.trackers)

    def state_dict(self) -> dict[str, Any]:
        """Saved in a training state: the name of the run in progress."""
        return {"run_name": self._current_run_name}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """A resumed run continues the saved run (unless ``run_name`` was given)."""
        name = state.get("run_name")
        self._resumed_run_name = None if name is None else check_run_name(str(name))

    def hyperparameters(self, trainer: BaseTrainer) -> dict[str, Any]:
        """The configuration recorded when a training run starts."""
        return {**trainer_hyperparameters(trainer), **self.config, **_run_config_dict(trainer)}

    # -- events ------------------------------------------------------------------------------

    def on_training_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        if not _is_main(trainer):
            return
        if self.is_running:  # the previous run of this callback ended by an exception
            self.finish(failed=True)
        self._pending = (None, self.hyperparameters(trainer))
        self._opened_for_evaluation = False
        self._last_step = None
        self._epoch_seen = None
        self._count_recorded_values(trainer.run_history)

    def on_train_epoch_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._in_epoch(trainer)
        self._epoch_started = time.perf_counter()
        self._epoch_seconds = None

    def on_train_epoch_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._in_epoch(trainer)
        if self._epoch_started is not None:
            self._epoch_seconds = time.perf_counter() - self._epoch_started
            self._epoch_started = None

    def on_eval_epoch_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._in_epoch(trainer)

    def on_eval_epoch_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._in_epoch(trainer)

    def on_training_run_epoch_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        if not _is_main(trainer):
            return
        self._open_pending_run()
        self._log_new_values(
            trainer, trainer.run_history.current_epoch, learning_rate=self.log_learning_rate
        )

    def on_interval_metrics(
        self,
        trainer: BaseTrainer,
        metrics: Mapping[str, float] | None = None,
        num_updates: int = 0,
        **kwargs: Any,
    ) -> None:
        if not _is_main(trainer) or not metrics:
            return
        self._open_pending_run()
        for tracker in self.trackers:
            if tracker.is_running:
                tracker.log_interval_metrics(metrics, num_updates)

    def on_exception(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        """The run ends by an exception: its tracker runs are finished as failed now."""
        if _is_main(trainer):
            self.finish(failed=True)

    def on_training_run_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        if not _is_main(trainer):
            return
        self._open_pending_run()
        epoch = trainer.run_history.current_epoch
        # A run stopped inside an epoch (a StopTrainingError) ends in it; after a complete
        # epoch the history's counter has already moved on to the next one.
        step = epoch if self._epoch_seen == epoch else max(epoch - 1, 1)
        self._log_new_values(trainer, step, learning_rate=False)
        self.finish()

    def on_evaluation_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        if not _is_main(trainer):
            return
        if self.is_running:  # an earlier train() / evaluate() ended by an exception
            self.finish(failed=True)
        evaluation = {"evaluate": _run_config_dict(trainer)}
        if self._current_run_name is not None:
            self._pending = (self._current_run_name, {**self._current_config, **evaluation})
        else:
            self._pending = (
                None,
                {**trainer_hyperparameters(trainer), **self.config, **evaluation},
            )
        self._opened_for_evaluation = True
        self._count_recorded_values(trainer.run_history)

    def on_evaluation_run_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        if not _is_main(trainer):
            return
        self._open_pending_run()
        step = self._last_step if self._last_step is not None else trainer.run_history.current_epoch
        self._log_new_values(trainer, step, learning_rate=False)
        if self._opened_for_evaluation:
            self._opened_for_evaluation = False
            self.finish()

    # -- finishing ---------------------------------------------------------------------------

    def finish(self, failed: bool = False) -> None:
        """Finish every open tracker run (``failed`` marks it so where the tracker has a
        status). Safe to call when nothing is open and more than once; a tracker that fails to
        finish is reported with a warning and does not keep the others open."""
        self._pending = None
        for tracker in self.trackers:
            if not tracker.is_running:
                continue
            try:
                tracker.finish(failed=failed)
            except Exception as error:
                warnings.warn(
                    f"{type(tracker).__name__} could not finish the run "
                    f"{self._current_run_name!r}: {error!r}",
                    stacklevel=2,
                )
        if self._exit_hook_registered:
            atexit.unregister(self._finish_at_exit)
            self._exit_hook_registered = False

    def _finish_at_exit(self) -> None:
        """Runs at interpreter exit only if a run is still open: it ended by an exception."""
        self.finish(failed=True)

    # -- helpers -----------------------------------------------------------------------------

    def _in_epoch(self, trainer: BaseTrainer) -> None:
        if _is_main(trainer):
            self._open_pending_run()
            self._epoch_seen = trainer.run_history.current_epoch

    def _open_pending_run(self) -> None:
        if self._pending is None:
            return
        name, config = self._pending
        self._pending = None
        if name is None:
            name = self.run_name or self._resumed_run_name or _new_run_name()
        self._resumed_run_name = None
        started: list[Tracker] = []
        try:
            for tracker in self.trackers:
                tracker.start(name, config)
                started.append(tracker)
        except BaseException:
            for tracker in started:
                try:
                    tracker.finish(failed=True)
                except Exception:  # the error that stopped the start is the one to see
                    pass
            raise
        self._current_run_name = name
        self._current_config = dict(config)
        if not self._exit_hook_registered and self.trackers:
            atexit.register(self._finish_at_exit)
            self._exit_hook_registered = True

    def _count_recorded_values(self, run_history: RunHistory) -> None:
        """Values recorded so far are not logged again."""
        self._counts = {
            name: len(run_history.get_metric_values(name))
            for name in run_history.get_metric_names()
        }

    def _new_values(self, run_history: RunHistory) -> dict[str, float]:
        metrics: dict[str, float] = {}
        counts: dict[str, int] = {}
        for name in sorted(run_history.get_metric_names(), key=_column_order):
            values = run_history.get_metric_values(name)
            seen = self._counts.get(name, 0)
            if len(values) < seen:  # the metric was deleted and recorded again
                seen = 0
            if len(values) > seen:
                value = to_float(values[-1])
                if value is not None:
                    metrics[name] = value
            counts[name] = len(values)
        self._counts = counts
        return metrics

    def _log_new_values(self, trainer: BaseTrainer, step: int, learning_rate: bool) -> None:
        metrics = self._new_values(trainer.run_history)
        if learning_rate:
            metrics.update(_learning_rates(trainer))
        if self._epoch_seconds is not None and self.log_epoch_time:
            metrics[EPOCH_TIME] = self._epoch_seconds
        self._epoch_seconds = None
        if metrics:
            for tracker in self.trackers:
                if tracker.is_running:
                    tracker.log_metrics(metrics, step)
        self._last_step = step

    def __repr__(self) -> str:
        return f"{type(self).__name__}(trackers={self.trackers!r}, run_name={self.run_name!r})"


def _learning_rates(trainer: BaseTrainer) -> dict[str, float]:
    groups = getattr(getattr(trainer, "optimizer", None), "param_groups", None) or []
    rates = [to_float(group.get("lr")) for group in groups]
    if len(rates) == 1:
        return {} if rates[0] is None else {LEARNING_RATE: rates[0]}
    return {f"{LEARNING_RATE}_group_{i}": rate for i, rate in enumerate(rates) if rate is not None}


def _column_order(name: str) -> tuple[bool, bool, str]:
    """Losses first, training ones first among them, then the rest by name (the column
    order of a CSV file)."""
    return ("loss" not in name, not name.startswith("train"), name)


def _new_run_name() -> str:
    return f"{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
