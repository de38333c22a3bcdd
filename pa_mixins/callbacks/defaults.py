"""The callbacks a trainer uses when none are given: device placement, NaN stop, progress
messages, progress bars and metric logging."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pa_mixins.callbacks.core import StopTrainingError, TrainerCallback
from pa_mixins.console import format_metrics, format_number, get_logger
from pa_mixins.data import loader_length

INTERMEDIATE_EVAL_LOSS = "intermediate_eval_loss"

if TYPE_CHECKING:
    from pa_mixins.base import BaseTrainer

__all__ = [
    "LogMetricsCallback",
    "MoveModulesToDeviceCallback",
    "PrintProgressCallback",
    "ProgressBarCallback",
    "TerminateOnNaNCallback",
]


class LogMetricsCallback(TrainerCallback):
    """Print the metrics of the run history, one line each (``name: value``, rounded to
    :data:`~pa_mixins.console.SIGNIFICANT_DIGITS` significant digits), each value once:

    * at the end of each training epoch, the new values of the names containing ``"train"``
      (not the evaluation losses of a set named so), then the epoch's training time
      (``epoch_time: 1.234 s``) and the learning rate (``learning_rate``, or
      ``learning_rate_group_<i>`` for several parameter groups);
    * at the end of each evaluation epoch, the new values of the other names (after an
      intermediate evaluation, only ``intermediate_eval_loss``);
    * every N optimizer updates (with :class:`~pa_mixins.callbacks.IntervalMetricsCallback`),
      one line with the interval's metrics through the ``pa_mixins`` logger at ``INFO``, on the
      main process (shown after ``pa_mixins.set_verbosity("info")``).

    "New" means recorded since this callback last printed that metric, so values recorded
    before the run (a resumed or continued history, the training history that ``evaluate()``
    keeps) are not printed again. Override :meth:`log_metrics` to send the metrics elsewhere
    (an experiment tracker, a file) and :meth:`log_interval_metrics` for the interval lines.
    """

    def __init__(self) -> None:
        self._printed: dict[str, int] = {}
        self._epoch_start: float | None = None

    def on_training_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._printed = _value_counts(trainer.run_history)

    def on_evaluation_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._printed = _value_counts(trainer.run_history)

    def on_train_epoch_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._log_new(trainer, _is_train_metric)
        if self._epoch_start is not None:
            seconds = time.perf_counter() - self._epoch_start
            trainer.print(f"epoch_time: {format_number(seconds)} s")
            self._epoch_start = None
        for name, rate in learning_rates(trainer.optimizer).items():
            trainer.print(f"{name}: {format_number(rate)}")

    def on_eval_epoch_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        if kwargs.get("is_intermediate"):
            self._log_new(trainer, lambda name: INTERMEDIATE_EVAL_LOSS in name)
        else:
            self._log_new(
                trainer,
                lambda name: not _is_train_metric(name) and INTERMEDIATE_EVAL_LOSS not in name,
            )

    def on_interval_metrics(
        self,
        trainer: BaseTrainer,
        metrics: dict[str, float] | None = None,
        num_updates: int = 0,
        **kwargs: Any,
    ) -> None:
        if trainer.is_world_process_zero and metrics:
            self.log_interval_metrics(trainer, metrics, num_updates)

    def _log_new(self, trainer: BaseTrainer, keep: Callable[[str], bool]) -> None:
        history = trainer.run_history
        metrics = {}
        for name in sorted(history.get_metric_names()):
            values = history.get_metric_values(name)
            seen = self._printed.get(name, 0)
            if len(values) < seen:  # the metric was deleted and recorded again
                seen = 0
            if keep(name) and len(values) > seen:
                metrics[name] = values[-1]
                self._printed[name] = len(values)
        self.log_metrics(trainer, metrics)

    def log_metrics(self, trainer: BaseTrainer, metrics: dict[str, Any]) -> None:
        """Write ``metrics`` (name to newest value); prints ``name: value`` lines by
        default."""
        for name, value in metrics.items():
            trainer.print(f"{name}: {format_number(value)}")

    def log_interval_metrics(
        self, trainer: BaseTrainer, metrics: dict[str, float], num_updates: int
    ) -> None:
        """Write an interval's metrics (main process only): by default one line at ``INFO``
        on the ``pa_mixins`` logger, ``update 50 | train_loss_step: 0.1234 | ...``."""
        get_logger().info("update %d | %s", num_updates, format_metrics(metrics))


def _is_train_metric(name: str) -> bool:
    """pytorch-accelerated's rule (the name contains ``"train"``), except the evaluation
    losses of an evaluation set whose name contains it (``eval_loss_epoch_train``)."""
    return "train" in name and not any(
        loss in name for loss in ("eval_loss", "evaluation_loss", INTERMEDIATE_EVAL_LOSS)
    )


def _value_counts(history: Any) -> dict[str, int]:
    return {name: len(history.get_metric_values(name)) for name in history.get_metric_names()}


def learning_rates(optimizer: Any) -> dict[str, float]:
    """The learning rate of each parameter group of ``optimizer``: ``{"learning_rate": r}``
    for one group, ``{"learning_rate_group_<i>": r, ...}`` for several (empty without an
    optimizer)."""
    groups = getattr(optimizer, "param_groups", None) or []
    rates = [float(group["lr"]) for group in groups if "lr" in group]
    if len(rates) == 1:
        return {"learning_rate": rates[0]}
    return {f"learning_rate_group_{i}": rate for i, rate in enumerate(rates)}


class ProgressBarCallback(TrainerCallback):
    """A progress bar for each training and evaluation epoch, on the first process of each
    machine; an evaluation inside a training epoch gets its own bar. Updating it reads nothing
    from the device.

    * In a terminal (or a notebook): a tqdm bar. The training bar's postfix shows the loss,
      the learning rate and the speed of the last interval (``loss=0.1234, lr=0.001,
      512 samples/s``, from :class:`~pa_mixins.callbacks.IntervalMetricsCallback`).
    * Elsewhere (output to a log file, CI): no carriage returns; one line every
      ``line_interval`` seconds and one when the epoch ends (``train: 120/500 (24%),
      3.1 s, loss=0.1234, ...``).

    Bars are closed at the end of each epoch and on every other way out: a
    :class:`~pa_mixins.callbacks.StopTrainingError`, the end of the run, an exception
    (``on_exception``), so no bar is left behind to push the next run's bars down.

    :param mode: ``"auto"`` (a bar when stderr is a terminal or in a notebook, lines
        otherwise), ``"bar"`` or ``"lines"``.
    :param line_interval: seconds between two lines in ``"lines"`` mode.
    """

    def __init__(self, mode: str = "auto", line_interval: float = 30.0) -> None:
        if mode not in ("auto", "bar", "lines"):
            raise ValueError(f"mode must be 'auto', 'bar' or 'lines', got {mode!r}")
        self.mode = mode
        self.line_interval = line_interval
        self.pbar: Any = None  # the training epoch's bar
        self.eval_pbar: Any = None
        self._postfix = ""

    def _open(self, trainer: BaseTrainer, total: int | None, desc: str) -> Any:
        if not trainer.is_local_process_zero:
            return None
        stream = sys.stderr
        mode = self.mode
        if mode == "auto":
            mode = "bar" if _is_interactive(stream) else "lines"
        if mode == "lines":
            return _LineProgress(total, desc, self.line_interval, stream)
        from tqdm.auto import tqdm  # tqdm comes with accelerate (through huggingface_hub)

        return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    @staticmethod
    def _close(bar: Any) -> None:
        if bar is not None:
            bar.close()

    def _close_all(self) -> None:
        bars, self.pbar, self.eval_pbar = (self.pbar, self.eval_pbar), None, None
        for bar in bars:
            self._close(bar)

    def on_training_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._close_all()
        self._postfix = ""

    def on_train_epoch_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._close(self.pbar)
        self.pbar = self._open(trainer, trainer.batches_in_epoch, "train")
        if self.pbar is not None and self._postfix:
            self.pbar.set_postfix_str(self._postfix, refresh=False)

    def on_train_step_end(
        self, trainer: BaseTrainer, batch: Any, batch_output: dict[str, Any], **kwargs: Any
    ) -> None:
        if self.pbar is not None:
            self.pbar.update(1)

    def on_interval_metrics(
        self, trainer: BaseTrainer, metrics: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        self._postfix = _postfix(metrics or {})
        if self.pbar is not None:
            self.pbar.set_postfix_str(self._postfix)

    def on_train_epoch_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._close(self.pbar)
        self.pbar = None

    def on_eval_epoch_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._close(self.eval_pbar)
        name = trainer.eval_set_name
        desc = "eval" if name is None else f"eval {name}"
        self.eval_pbar = self._open(trainer, loader_length(trainer.eval_dataloader), desc)

    def on_eval_step_end(
        self, trainer: BaseTrainer, batch: Any, batch_output: dict[str, Any], **kwargs: Any
    ) -> None:
        if self.eval_pbar is not None:
            self.eval_pbar.update(1)

    def on_eval_epoch_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._close(self.eval_pbar)
        self.eval_pbar = None

    def on_stop_training_error(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._close_all()

    def on_training_run_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._close_all()

    def on_evaluation_run_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._close_all()

    def on_exception(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._close_all()


def _is_interactive(stream: Any) -> bool:
    """Whether ``stream`` shows a live bar: a terminal, or a notebook (tqdm.auto draws a
    widget there)."""
    if "ipykernel" in sys.modules:
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(callable(isatty) and isatty())
    except ValueError:  # a closed stream
        return False


def _postfix(metrics: dict[str, float]) -> str:
    """``loss=..., lr=..., N samples/s`` from an interval's metrics."""
    parts = []
    if "train_loss_step" in metrics:
        parts.append(f"loss={format_number(metrics['train_loss_step'])}")
    rate = metrics.get("learning_rate_step", metrics.get("learning_rate_group_0_step"))
    if rate is not None:
        parts.append(f"lr={format_number(rate, 3)}")
    if "samples_per_second" in metrics:
        parts.append(f"{format_number(metrics['samples_per_second'], 3)} samples/s")
    return ", ".join(parts)


class _LineProgress:
    """A progress report for a non-terminal: a line every ``interval`` seconds and one when
    closed, never a carriage return. The subset of tqdm's interface the callback uses."""

    def __init__(self, total: int | None, desc: str, interval: float, stream: Any) -> None:
        self.total, self.desc, self.interval, self.stream = total, desc, interval, stream
        self.n = 0
        self.postfix = ""
        self.start = self.last = time.perf_counter()
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            self._write(now)

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write(time.perf_counter())

    def _write(self, now: float) -> None:
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        if self.total:
            done += f" ({100 * self.n // self.total}%)"
        parts = [f"{self.desc}: {done}", f"{now - self.start:.1f} s"]
        if self.postfix:
            parts.append(self.postfix)
        print(", ".join(parts), file=self.stream, flush=True)


class PrintProgressCallback(TrainerCallback):
    """Print a line when a run or an epoch starts and when a run ends."""

    def on_training_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        trainer.print("Starting training run")

    def on_train_epoch_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        trainer.print(f"Starting epoch {trainer.run_history.current_epoch}")

    def on_training_run_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        trainer.print("Finishing training run")

    def on_eval_epoch_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        if kwargs.get("is_intermediate"):
            trainer.print("Starting intermediate evaluation")

    def on_evaluation_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        trainer.print("Starting evaluation run")

    def on_evaluation_run_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        trainer.print("Finishing evaluation run")


class TerminateOnNaNCallback(TrainerCallback):
    """Stop the run when a batch loss is NaN or infinite.

    On the CPU a step's loss is checked at once (reading it costs nothing). On a GPU, reading
    it would make the host wait for the device every step, so the check is queued (a
    non-blocking copy to pinned memory) and read at the next step or at the end of the epoch:
    training stops **at most one step late** there, so at most one update has used a
    non-finite loss. The trainer catches the :class:`StopTrainingError` and ends the run
    normally; :attr:`triggered` stays ``True`` so a script can tell (the process is not exited).

    On several processes the loss is checked on each process; the trainer makes every
    process stop at the same point (before the update of the step where the check failed),
    and :attr:`triggered` becomes ``True`` on every process, so a script that acts on it takes
    the same path everywhere.
    """

    def __init__(self) -> None:
        self.triggered = False
        self._pending: _PendingCheck | None = None
        self._where = ""

    def _stop(self, where: str) -> None:
        self.triggered = True
        error = StopTrainingError(
            f"Stopping training: a non-finite loss was found in a {where} step"
        )
        error.non_finite_loss = True  # type: ignore[attr-defined]
        raise error

    def _check_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and not pending.is_finite():
            self._stop(self._where)

    def _record(self, batch_output: dict[str, Any], where: str) -> None:
        self._check_pending()
        loss = batch_output["loss"]
        if not isinstance(loss, torch.Tensor):
            if not math.isfinite(loss):
                self._stop(where)
            return
        loss = loss.detach()
        if loss.device.type == "cpu":
            finite = math.isfinite(loss.item()) if loss.numel() == 1 else torch.isfinite(loss).all()
            if not finite:
                self._stop(where)
            return
        self._pending = _PendingCheck(torch.isfinite(loss).all())
        self._where = where

    def on_training_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self.triggered = False
        self._pending = None

    def on_evaluation_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self.triggered = False
        self._pending = None

    def on_train_step_end(
        self, trainer: BaseTrainer, batch: Any, batch_output: dict[str, Any], **kwargs: Any
    ) -> None:
        self._record(batch_output, "training")

    def on_eval_step_end(
        self, trainer: BaseTrainer, batch: Any, batch_output: dict[str, Any], **kwargs: Any
    ) -> None:
        self._record(batch_output, "validation")

    def on_train_epoch_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._check_pending()

    def on_eval_epoch_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._check_pending()

    def on_stop_training_error(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._pending = None
        if getattr(kwargs.get("error"), "non_finite_loss", False):
            self.triggered = True  # another process found the non-finite loss


class _PendingCheck:
    """A device-side "is finite" flag, read later without stalling the device's queue.

    On CUDA the flag is copied without blocking into pinned host memory, and an event marks
    the copy; reading waits for that event only (work queued after it keeps running). Other
    devices read the flag directly.
    """

    def __init__(self, flag: torch.Tensor) -> None:
        self._event: Any = None
        if flag.device.type == "cuda":
            host = torch.empty((), dtype=torch.bool, pin_memory=True)
            host.copy_(flag, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
            flag = host
        self._flag = flag

    def is_finite(self) -> bool:
        if self._event is not None:
            self._event.synchronize()
        return bool(self._flag)


class MoveModulesToDeviceCallback(TrainerCallback):
    """Move every ``nn.Module`` attribute of the trainer other than ``model`` (a loss module,
    a metrics collection) to the trainer's device at the start of a run."""

    def _move(self, trainer: BaseTrainer) -> None:
        for name, value in vars(trainer).items():
            if name != "model" and isinstance(value, nn.Module):
                value.to(trainer.device)

    def on_training_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._move(trainer)

    def on_evaluation_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._move(trainer)
