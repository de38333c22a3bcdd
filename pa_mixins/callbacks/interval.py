""":class:`IntervalMetricsCallback`: training metrics every N optimizer updates, read from
the device once per interval."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from pa_mixins.callbacks.core import TrainerCallback
from pa_mixins.checks import require_positive_int

if TYPE_CHECKING:
    from pa_mixins.base import BaseTrainer

__all__ = [
    "DEFAULT_LOG_EVERY_N_STEPS",
    "GRAD_NORM_STEP",
    "LEARNING_RATE_STEP",
    "SAMPLES_PER_SECOND",
    "TRAIN_LOSS_STEP",
    "UPDATES_PER_SECOND",
    "IntervalMetricsCallback",
]

#: The default interval, in optimizer updates (Lightning's default too).
DEFAULT_LOG_EVERY_N_STEPS = 50
#: The mean training loss of the interval (the interval counterpart of ``train_loss_epoch``).
TRAIN_LOSS_STEP = "train_loss_step"
#: The learning rate (``learning_rate_group_<i>_step`` for each of several parameter groups).
LEARNING_RATE_STEP = "learning_rate_step"
#: The total gradient norm of the interval's last update, before clipping.
GRAD_NORM_STEP = "grad_norm_step"
#: Training samples per second, all processes together.
SAMPLES_PER_SECOND = "samples_per_second"
#: Optimizer updates per second.
UPDATES_PER_SECOND = "updates_per_second"


class IntervalMetricsCallback(TrainerCallback):
    """Every ``log_every_n_steps`` optimizer updates, compute the metrics of the interval and
    fire ``on_interval_metrics(trainer, metrics=..., num_updates=...)``: the console
    (:class:`~pa_mixins.callbacks.LogMetricsCallback`), the progress bar
    (:class:`~pa_mixins.callbacks.ProgressBarCallback`) and the experiment trackers
    (:class:`~pa_mixins.trackers.TrackingCallback`) show them. The everyday ``Trainer`` adds
    one (its ``log_every_n_steps`` option); the run history is not touched (it stays one value
    per metric per epoch).

    The metrics (documented names):

    * ``train_loss_step``: the mean training loss of the interval's micro-batches, weighted by
      their batch sizes, over all processes (what ``train_loss_epoch`` is for an epoch);
    * ``learning_rate_step``, or ``learning_rate_group_<i>_step`` for several parameter
      groups: the rate of each group after the interval's last update (the scheduler has
      stepped: the rate the next update uses);
    * ``grad_norm_step``: the total gradient norm of the interval's last update, before
      clipping, when the run clips by norm (``gradient_clip_norm``; no norm is computed
      otherwise);
    * ``samples_per_second`` (all processes together) and ``updates_per_second``, over the
      interval's training time (evaluations inside it are not counted; on several processes,
      the mean of their clocks).

    Every process gets the same values (the loss, sample and time sums go through one small
    all-reduce), so a callback may decide on them.

    An interval ends after updates N, 2N, 3N... of the run (counted as ``num_updates``, so
    across epochs: an interval that spans the end of an epoch covers the micro-batches of
    both). A resumed run starts a new interval at the update it resumes from.

    Cost: per update, one Python call and a modulo. Per interval, a few operations on the
    device and **one** read from it (on several processes, one small all-reduce before it).
    The loss comes from the loop's own running sum (``trainer.running_train_loss``, summed in
    place on the device at each micro-batch anyway), so nothing is added per step.

    :param log_every_n_steps: the interval, in optimizer updates (default 50).

    :attr:`latest_metrics` holds the last interval's metrics (an empty dict before the first).
    """

    def __init__(self, log_every_n_steps: int = DEFAULT_LOG_EVERY_N_STEPS) -> None:
        require_positive_int("log_every_n_steps", log_every_n_steps)
        self.log_every_n_steps = log_every_n_steps
        #: the metrics of the last interval
        self.latest_metrics: dict[str, float] = {}
        self._updates_at_start = 0
        self._reset_interval()

    def _reset_interval(self) -> None:
        # loss sum and samples of the interval's part in epochs already finished
        self._carry_sum: torch.Tensor | float = 0.0
        self._carry_count: torch.Tensor | int = 0
        # the epoch's running sum and count when the interval's part in this epoch began
        self._mark_sum: torch.Tensor | float = 0.0
        self._mark_count: torch.Tensor | int = 0
        # training seconds of the interval before the current stretch, and its start
        self._seconds = 0.0
        self._stretch_start: float | None = None

    # -- the clock: training time only ---------------------------------------------------------

    def _resume_clock(self) -> None:
        if self._stretch_start is None:
            self._stretch_start = time.perf_counter()

    def _pause_clock(self) -> None:
        if self._stretch_start is not None:
            self._seconds += time.perf_counter() - self._stretch_start
            self._stretch_start = None

    def _elapsed(self) -> float:
        running = 0.0 if self._stretch_start is None else time.perf_counter() - self._stretch_start
        return self._seconds + running

    # -- events ------------------------------------------------------------------------------

    def on_training_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._reset_interval()
        self.latest_metrics = {}
        self._updates_at_start = trainer.num_updates

    def on_train_epoch_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        # the loop has reset its running loss (or restored it, when resuming inside an epoch)
        total, count = trainer.running_train_loss
        self._mark_sum = total.clone() if isinstance(total, torch.Tensor) else total
        self._mark_count = count.clone() if isinstance(count, torch.Tensor) else count
        self._resume_clock()

    def on_train_epoch_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        # carry the epoch's last part of the interval over to the next epoch (on the device)
        total, count = trainer.running_train_loss
        self._carry_sum = self._carry_sum + (total - self._mark_sum)
        self._carry_count = self._carry_count + (count - self._mark_count)
        self._mark_sum, self._mark_count = 0.0, 0
        self._pause_clock()

    def on_eval_epoch_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._pause_clock()

    def on_eval_epoch_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        if kwargs.get("is_intermediate"):  # back inside the training epoch
            self._resume_clock()

    def on_optimizer_step_end(
        self, trainer: BaseTrainer, num_updates: int = 0, **kwargs: Any
    ) -> None:
        if num_updates % self.log_every_n_steps:
            return
        metrics = self._interval_metrics(trainer, num_updates)
        self.latest_metrics = metrics
        trainer.callback_handler.call_event(
            "on_interval_metrics", trainer, metrics=metrics, num_updates=num_updates
        )

    # -- the computation ---------------------------------------------------------------------

    def _interval_metrics(self, trainer: BaseTrainer, num_updates: int) -> dict[str, float]:
        total, count = trainer.running_train_loss
        loss_sum = self._carry_sum + (total - self._mark_sum)
        samples = self._carry_count + (count - self._mark_count)
        seconds = self._elapsed()
        updates = num_updates - self._updates_at_start
        # the next interval starts here
        self._reset_interval()
        self._mark_sum = total.clone() if isinstance(total, torch.Tensor) else total
        self._mark_count = count.clone() if isinstance(count, torch.Tensor) else count
        self._updates_at_start = num_updates
        self._resume_clock()

        device = trainer.device
        totals = torch.stack(
            [
                torch.as_tensor(loss_sum, dtype=torch.float64, device=device).reshape(()),
                torch.as_tensor(samples, dtype=torch.float64, device=device).reshape(()),
                torch.tensor(seconds, dtype=torch.float64, device=device),
            ]
        )
        processes = trainer.num_processes
        if processes > 1:  # the sums over all processes, and the mean of their clocks
            totals = trainer.reduce_sum(totals)
        norm = trainer.last_grad_norm
        if norm is not None:
            totals = torch.cat([totals, norm.detach().to(totals).reshape(1)])
        values = totals.tolist()  # the interval's one read from the device

        metrics: dict[str, float] = {}
        loss_total, sample_count, seconds = values[0], values[1], values[2] / processes
        metrics[TRAIN_LOSS_STEP] = loss_total / sample_count if sample_count else float("nan")
        metrics.update(_learning_rates(trainer))
        if norm is not None:
            metrics[GRAD_NORM_STEP] = values[3]
        if seconds > 0:
            metrics[SAMPLES_PER_SECOND] = sample_count / seconds
            metrics[UPDATES_PER_SECOND] = updates / seconds
        return metrics

    def __repr__(self) -> str:
        return f"{type(self).__name__}(log_every_n_steps={self.log_every_n_steps})"


def _learning_rates(trainer: BaseTrainer) -> dict[str, float]:
    optimizer = trainer.optimizer
    groups = optimizer.param_groups if optimizer is not None else []
    rates = [float(group["lr"]) for group in groups if "lr" in group]
    if len(rates) == 1:
        return {LEARNING_RATE_STEP: rates[0]}
    return {f"learning_rate_group_{i}_step": rate for i, rate in enumerate(rates)}
