"""``CheckpointMixin``: portable checkpoints, full training states and exact resume.

Two kinds of files:

* a **checkpoint** (:meth:`~CheckpointMixin.save_checkpoint`): one portable ``.pt`` file with
  the model weights (without ``torch.compile`` / distributed wrappers), optionally the
  optimizer and scheduler, and your ``checkpoint_kwargs``; for deployment, fine-tuning, "best
  model" files;
* a **training state** (:meth:`~CheckpointMixin.save_training_state`): a folder with
  everything a run needs to continue exactly where it was. The mixin owns none of that state:
  each class that owns some contributes it through the trainer's
  :meth:`~pa_mixins.base.BaseTrainer.training_state_dict` (shared by every process) and
  :meth:`~pa_mixins.base.BaseTrainer.process_state_dict` (one per process) chains, and takes it
  back through their ``load_*`` twins; this mixin writes and reads the folder
  (:mod:`pa_mixins.checkpoint_format`).

``train(..., resume_from=folder)`` continues a run from a training state (or, given a folder
of states, from the newest complete one) with the same shuffle order, from the next unseen
batch, for the remaining epochs only.

**Safe points.** During ``train()`` a state is written only where the loop calls
:meth:`~pa_mixins.base.BaseTrainer.at_safe_point`, where the run can be cut and continued
without changing a bit of the result. ``save_training_state`` called inside ``train()``
returns at once and the folder is written at the next safe point (each write then fires
``on_training_state_saved`` with ``output_dir``); outside ``train()`` it writes at once.

=============================================  ============================================
requested from (callback event or hook)         written at / the state represents
=============================================  ============================================
``on_training_run_start``                        the start of the first (resumed) epoch
``on_train_epoch_start``, ``on_train_step_*``    the end of the current micro-batch (after its
                                                 backward pass and, if it ends an update,
                                                 after the update)
``on_optimizer_step_end``                        right after this update, once every callback
                                                 has seen it (EMA weights included)
``on_train_epoch_end``                           after the epoch's training part, before its
                                                 evaluation (the resumed run evaluates it)
``on_eval_epoch_end``                            after the epoch's evaluation
``on_training_run_epoch_end``                    the epoch boundary: the resumed run starts
                                                 the next epoch
``on_stop_training_error``,                      the end of the run; a state saved after a run
``on_training_run_end``                          that finished all its epochs continues with
                                                 the extra epochs of a longer ``num_epochs``;
                                                 one saved after an early stop resumes to
                                                 nothing
=============================================  ============================================

**Crash safety.** Files are written aside, flushed and renamed; the manifest is written last,
so a folder is a complete state exactly when its manifest is there and matches. Saving again
keeps the previous complete state until the new manifest replaces the old one.

**Graceful stop.** During ``train()`` SIGTERM (a cluster pre-empting the job) and Ctrl-C are
caught (:mod:`pa_mixins.stop_signals`): at the next safe point ``on_stop_signal`` fires (where
:class:`~pa_mixins.callbacks.SaveTrainingStateCallback` saves a state, written right there),
the run stops through the usual :class:`~pa_mixins.callbacks.StopTrainingError` path, and
``train()`` then raises ``SystemExit(143)`` for SIGTERM or ``KeyboardInterrupt`` for Ctrl-C. A
second signal stops at once. On several processes they agree on the stop every
:attr:`CheckpointMixin.stop_signal_check_interval` updates, so they stop at the same step.

**Security.** Everything is read with ``torch.load(weights_only=True)`` and JSON; a file that
would need to run code to load is refused with :class:`UnsafeCheckpointError`. Files of other
engines (e.g. DeepSpeed's) must come from a trusted source. The folder must be on a file
system that every process of the run can read and write.
"""

from __future__ import annotations

import os
import signal
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from typing_extensions import override

from pa_mixins.base import BaseTrainer, SafePoint
from pa_mixins.callback_base import StopTrainingError
from pa_mixins.checkpoint_format import (
    MANIFEST_NAME,
    STATE_FORMAT,
    CheckpointError,
    UnsafeCheckpointError,
    check_model_fits,
    check_optimizer_fits,
    check_plain,
    engine_dir_name,
    list_training_states,
    read_manifest,
    read_training_state,
    resolve_training_state,
    safe_load,
    save_tensors,
    write_training_state,
)
from pa_mixins.checkpoint_format import STATE_VERSION as STATE_VERSION  # re-exported
from pa_mixins.stop_signals import StopSignals

__all__ = [
    "MANIFEST_NAME",
    "CheckpointError",
    "CheckpointMixin",
    "UnsafeCheckpointError",
    "list_training_states",
    "read_manifest",
]


class CheckpointMixin(BaseTrainer):
    """Adds :meth:`save_checkpoint` / :meth:`load_checkpoint` (portable ``.pt`` exports),
    :meth:`save_training_state` / :meth:`load_training_state` (full training states), the
    ``resume_from`` argument of ``train()`` (exact resume) and the graceful stop on SIGTERM
    and Ctrl-C. See the module docstring for the safe points and the file format.

    Owns the saves waiting for a safe point, :attr:`stop_signal` and :attr:`resumed_from`.
    Extends ``reset_run_state``, ``resume_run``, ``training_run_context``, ``at_safe_point``
    and ``training_run_end``; reads the state of every other class through the state chains.
    """

    train_options: ClassVar[dict[str, Any]] = {"resume_from": None}
    requires: ClassVar[tuple[str, ...]] = ("TrainingLoopMixin",)
    #: on several processes, the processes agree on a stop signal every this many updates
    stop_signal_check_interval: ClassVar[int] = 10

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._pending_saves: list[tuple[Path, dict[str, Any]]] = []
        self._in_run = False
        self._several_processes = False
        self._stop_signals = StopSignals(announce=lambda message: self.print(message))
        #: the signal (``"SIGTERM"`` / ``"SIGINT"``) that stopped the last run, else ``None``
        self.stop_signal: str | None = None
        #: the training state the current run resumed from, else ``None``
        self.resumed_from: str | None = None
        super().__init__(*args, **kwargs)

    # ==========================================================================================
    # Portable checkpoints
    # ==========================================================================================

    def save_checkpoint(
        self,
        save_path: str | os.PathLike[str],
        checkpoint_kwargs: dict[str, Any] | None = None,
        save_optimizer: bool = True,
        save_scheduler: bool = True,
        save_per_node: bool = True,
    ) -> None:
        """Save the model weights (and optionally the optimizer and scheduler) as one portable
        ``.pt`` file, written atomically. ``checkpoint_kwargs`` entries are added at the top
        level and must be tensors or plain values. Written by the first process of each
        machine (``save_per_node=True``) or of the whole run; every process must call it.
        The weights are complete (gathered where an engine shards them); under DeepSpeed the
        optimizer's state, sharded and engine-specific, stays in training states."""
        checkpoint: dict[str, Any] = {"model_state_dict": self.full_model_state_dict()}
        if save_optimizer and self.optimizer is not None and not self.engine_saves_weights:
            checkpoint["optimizer_state_dict"] = self.optimizer.state_dict()
        if save_scheduler and self.scheduler is not None:
            try:
                checkpoint["scheduler_state_dict"] = self.scheduler.state_dict()
            except Exception as error:  # as pytorch-accelerated: warn and go on
                warnings.warn(
                    f"The scheduler's state was not saved: state_dict() failed ({error})",
                    stacklevel=2,
                )
        checkpoint.update(checkpoint_kwargs or {})
        check_plain(checkpoint, "the checkpoint")
        self.wait_for_everyone()
        writer = self.is_local_process_zero if save_per_node else self.is_world_process_zero
        if writer:
            path = Path(save_path)
            try:
                save_tensors(checkpoint, path)
            except OSError as error:
                raise CheckpointError(f"Cannot write the checkpoint {path}: {error}") from error
        self.wait_for_everyone()

    def load_checkpoint(
        self,
        checkpoint_path: str | os.PathLike[str],
        load_optimizer: bool = True,
        load_scheduler: bool = True,
    ) -> dict[str, Any]:
        """Load a file written by :meth:`save_checkpoint` into the model (and the optimizer and
        scheduler if asked and present); returns the whole dict, ``checkpoint_kwargs``
        included. ``torch.compile`` prefixes are removed; nothing is changed if the weights
        do not fit the model."""
        self.wait_for_everyone()
        checkpoint = safe_load(checkpoint_path, "checkpoint")
        if not isinstance(checkpoint, dict) or "model_state_dict" not in checkpoint:
            raise CheckpointError(f"{checkpoint_path} is not a checkpoint (no 'model_state_dict')")
        weights = {
            key.removeprefix("_orig_mod."): value
            for key, value in checkpoint["model_state_dict"].items()
        }
        model = self.get_model(keep_torch_compile=False)
        check_model_fits(model, weights, f"The checkpoint {checkpoint_path}")
        if load_optimizer and "optimizer_state_dict" in checkpoint:
            if self.optimizer is None:
                raise ValueError(
                    "The checkpoint holds an optimizer state but the trainer has no optimizer: "
                    "create it with one, or pass load_optimizer=False"
                )
            check_optimizer_fits(
                self.optimizer, checkpoint["optimizer_state_dict"], str(checkpoint_path)
            )
        if load_scheduler and "scheduler_state_dict" in checkpoint and self.scheduler is None:
            raise ValueError(
                "The checkpoint holds a scheduler state but the trainer has no scheduler: "
                "pass load_scheduler=False, or load it during train()"
            )
        self.load_full_model_state_dict(weights)
        if load_optimizer and "optimizer_state_dict" in checkpoint:
            assert self.optimizer is not None
            self.optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        if load_scheduler and "scheduler_state_dict" in checkpoint:
            self.scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
        return dict(checkpoint)

    # ==========================================================================================
    # Training states
    # ==========================================================================================

    def save_training_state(
        self, output_dir: str | os.PathLike[str], checkpoint_kwargs: dict[str, Any] | None = None
    ) -> None:
        """Save the full training state to the folder ``output_dir`` (created if needed).

        Inside ``train()`` the state is written at the next safe point (see the module
        docstring) and this returns at once; outside, it is written now. ``checkpoint_kwargs``
        (tensors and plain values) are returned by :meth:`load_training_state`. Every process
        must call it.
        """
        kwargs = dict(checkpoint_kwargs or {})
        check_plain(kwargs, "checkpoint_kwargs")
        if self._in_run:
            self._pending_saves.append((Path(output_dir), kwargs))
        else:
            self._write_training_state(Path(output_dir), kwargs)

    def load_training_state(self, input_dir: str | os.PathLike[str]) -> dict[str, Any]:
        """Load the model, optimizer, scheduler, grad scaler and this process's random
        generators from a training state (or the newest one in a folder of states) and return
        ``{"current_epoch": ..., **checkpoint_kwargs}``.

        This is for starting a *new* run from a state's weights (e.g. a WSD continuation);
        to continue the *same* run, data position and run history included, use
        ``train(..., resume_from=input_dir)``. States saved by another number of processes load
        without their random states (with a warning).
        """
        state_dir = resolve_training_state(input_dir)
        shared, process = read_training_state(
            state_dir, self.num_processes, self.process_index, strict=False
        )
        self.load_training_state_dict(shared, resume=False)
        self._load_engine_state(state_dir)
        if process is not None:
            self.load_process_state_dict(process, resume=False)
        saved = shared["checkpoint"]
        return {"current_epoch": saved["current_epoch"], **saved["kwargs"]}

    def _write_training_state(self, output_dir: Path, checkpoint_kwargs: dict[str, Any]) -> None:
        process_state = self.process_state_dict()  # raises on every process if unsupported
        shared_state = None
        if self.is_world_process_zero:
            shared_state = {
                "format": STATE_FORMAT,
                **self.training_state_dict(),
                "checkpoint": {
                    "kwargs": checkpoint_kwargs,
                    "current_epoch": self.run_history.current_epoch,
                },
            }
            check_plain(shared_state, "the training state")
        check_plain(process_state, "the process state")
        write_training_state(
            output_dir,
            shared_state,
            process_state,
            rank=self.process_index,
            num_processes=self.num_processes,
            position=self.run_position,
            value_from_main=self.int_from_main,
            any_process=self.any_process,
            write_engine_state=self.save_engine_state if self.engine_saves_weights else None,
        )

    def _load_engine_state(self, state_dir: Path) -> None:
        if self.engine_saves_weights:
            generation = read_manifest(state_dir)["generation"]
            self.load_engine_state(state_dir / engine_dir_name(generation))

    # ==========================================================================================
    # Resume and the run: the seams this mixin extends
    # ==========================================================================================

    @override
    def reset_run_state(self) -> None:
        super().reset_run_state()
        self._pending_saves = []
        self._stop_signals.clear()
        self.stop_signal = None
        self.resumed_from = None

    @override
    def resume_run(self, resume_from: str | None) -> None:
        """Load the state to resume from; every class takes its part back (the loop keeps the
        position, random generators and running loss until it reaches the saved moment)."""
        super().resume_run(resume_from)
        if resume_from is None:
            return
        failure: BaseException | None = None
        try:
            state_dir = resolve_training_state(resume_from)
            shared, process = read_training_state(
                state_dir, self.num_processes, self.process_index, strict=True
            )
        except (CheckpointError, OSError, ValueError, KeyError) as error:
            failure = error
        if self.any_process(failure is not None):
            raise failure or CheckpointError("Resuming failed on another process (see its error)")
        assert process is not None
        self.load_training_state_dict(shared, resume=True)
        self._load_engine_state(state_dir)
        self.load_process_state_dict(process, resume=True)
        self.resumed_from = str(state_dir)
        self.print(
            f"\nResuming from {state_dir}: epoch {self.run_history.current_epoch}, "
            f"{self.num_updates} updates done"
        )

    @override
    @contextmanager
    def training_run_context(self) -> Iterator[None]:
        """Catch SIGTERM and Ctrl-C during the run; write the saves requested at its very end;
        then raise ``SystemExit(143)`` / ``KeyboardInterrupt`` if a signal stopped it."""
        with super().training_run_context():
            self._several_processes = self.num_processes > 1
            self._stop_signals.install()
            self._in_run = True
            try:
                yield
                self._flush_pending_saves()
            finally:
                self._in_run = False
                self._stop_signals.restore()
        if self.stop_signal == "SIGINT":
            raise KeyboardInterrupt("Training stopped by Ctrl-C at a safe point")
        if self.stop_signal is not None:
            raise SystemExit(128 + int(signal.SIGTERM))

    @override
    def at_safe_point(self, point: SafePoint) -> None:
        """Write the saves requested since the last safe point; stop here on a signal. Two
        Python checks unless something is pending (on several processes, a tiny collective
        every ``stop_signal_check_interval`` updates and at the epoch's safe points)."""
        super().at_safe_point(point)
        if point == "micro_batch" and self.engine_saves_weights:
            return  # an engine's checkpoint cannot hold an open group's gradients: at its end
        stop = self._stop_signals.received is not None
        if self._several_processes:
            due = point != "micro_batch" and (
                point != "update" or self.num_updates % max(self.stop_signal_check_interval, 1) == 0
            )
            stop = due and self.any_process(stop)
        if not stop and not self._pending_saves:
            return
        if stop:
            self.stop_signal = self._stop_signals.received or "SIGTERM"
            self.callback_handler.call_event("on_stop_signal", self, signal_name=self.stop_signal)
            if not self._pending_saves:
                warnings.warn(
                    f"Received {self.stop_signal}: stopping without saving a training state "
                    "(add SaveTrainingStateCallback to save one)",
                    stacklevel=2,
                )
        self._flush_pending_saves()
        if stop:
            raise StopTrainingError(
                f"Received {self.stop_signal}: stopping at a safe point (epoch "
                f"{self.run_history.current_epoch}, {self.num_updates} updates done)"
            )

    @override
    def training_run_end(self) -> None:
        """Saves still pending from the loop are written before the end-of-run hooks change
        anything (e.g. reload the best weights)."""
        self._flush_pending_saves()
        super().training_run_end()

    def _flush_pending_saves(self) -> None:
        while self._pending_saves:
            output_dir, kwargs = self._pending_saves.pop(0)
            self._write_training_state(output_dir, kwargs)
            self.callback_handler.call_event(
                "on_training_state_saved", self, output_dir=str(output_dir)
            )
