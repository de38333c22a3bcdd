"""The callbacks a trainer uses when none are given: device placement, NaN stop, progress
messages, progress bars and metric logging."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pa_mixins.callbacks.core import StopTrainingError, TrainerCallback
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
    """Print the latest metrics: names containing ``"train"`` at the end of each training
    epoch, the others at the end of each evaluation epoch (after an intermediate evaluation,
    only ``intermediate_eval_loss``). Override :meth:`log_metrics` to send them elsewhere (an
    experiment tracker, a file)."""

    def on_train_epoch_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._log_latest(trainer, lambda name: "train" in name)

    def on_eval_epoch_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        if kwargs.get("is_intermediate"):
            self._log_latest(trainer, lambda name: name.endswith(INTERMEDIATE_EVAL_LOSS))
        else:
            self._log_latest(
                trainer,
                lambda name: "train" not in name and not name.endswith(INTERMEDIATE_EVAL_LOSS),
            )

    def _log_latest(self, trainer: BaseTrainer, keep: Callable[[str], bool]) -> None:
        history = trainer.run_history
        metrics = {
            name: history.get_latest_metric(name)
            for name in sorted(history.get_metric_names())
            if keep(name) and history.get_metric_values(name)
        }
        self.log_metrics(trainer, metrics)

    def log_metrics(self, trainer: BaseTrainer, metrics: dict[str, Any]) -> None:
        """Write ``metrics`` (name to latest value); prints them by default."""
        for name, value in metrics.items():
            trainer.print(f"\n{name}: {value}")


class ProgressBarCallback(TrainerCallback):
    """tqdm progress bars for the training and evaluation epochs (first process of each
    machine only); an evaluation inside a training epoch gets its own bar. Updating a bar reads
    nothing from the device."""

    def __init__(self) -> None:
        self.pbar: Any = None  # the training epoch's bar
        self.eval_pbar: Any = None

    @staticmethod
    def _open(trainer: BaseTrainer, total: int | None, desc: str) -> Any:
        from tqdm.auto import tqdm  # tqdm comes with accelerate (through huggingface_hub)

        disable = not trainer.is_local_process_zero
        return tqdm(total=total, desc=desc, disable=disable, leave=False)

    @staticmethod
    def _close(bar: Any) -> None:
        if bar is not None:
            bar.close()

    def on_train_epoch_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._close(self.pbar)
        self.pbar = self._open(trainer, trainer.batches_in_epoch, "train")

    def on_train_step_end(
        self, trainer: BaseTrainer, batch: Any, batch_output: dict[str, Any], **kwargs: Any
    ) -> None:
        if self.pbar is not None:
            self.pbar.update(1)

    def on_train_epoch_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._close(self.pbar)
        self.pbar = None

    def on_eval_epoch_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._close(self.eval_pbar)
        self.eval_pbar = self._open(trainer, loader_length(trainer.eval_dataloader), "eval")

    def on_eval_step_end(
        self, trainer: BaseTrainer, batch: Any, batch_output: dict[str, Any], **kwargs: Any
    ) -> None:
        if self.eval_pbar is not None:
            self.eval_pbar.update(1)

    def on_eval_epoch_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._close(self.eval_pbar)
        self.eval_pbar = None

    def on_stop_training_error(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._close(self.pbar)
        self._close(self.eval_pbar)
        self.pbar = self.eval_pbar = None


class PrintProgressCallback(TrainerCallback):
    """Print a line when a run or an epoch starts and when a run ends."""

    def on_training_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        trainer.print("\nStarting training run")

    def on_train_epoch_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        trainer.print(f"\nStarting epoch {trainer.run_history.current_epoch}")

    def on_training_run_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        trainer.print("Finishing training run")

    def on_eval_epoch_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        if kwargs.get("is_intermediate"):
            trainer.print("\nStarting intermediate evaluation")

    def on_evaluation_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        trainer.print("\nStarting evaluation run")

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
