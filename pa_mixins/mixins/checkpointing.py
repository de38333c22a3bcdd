"""``CheckpointMixin``: portable checkpoints, full training states and exact resume.

Two kinds of files:

* a **checkpoint** (:meth:`~CheckpointMixin.save_checkpoint`): one portable ``.pt`` file with
  the model weights (without ``torch.compile`` / distributed wrappers), optionally the
  optimizer and scheduler, and your ``checkpoint_kwargs``; for deployment, fine-tuning, "best
  model" files;
* a **training state** (:meth:`~CheckpointMixin.save_training_state`): a folder with
  everything a run needs to continue exactly where it was: model, optimizer, scheduler, grad
  scaler, the random generators of every process (Python, NumPy, torch CPU and CUDA), the data
  position (epoch, micro-batch within the epoch, update count), the gradients of an open
  accumulation group, the epoch's running train loss, the run history and the state of every
  callback that has ``state_dict()`` / ``load_state_dict()``.

``train(..., resume_from=folder)`` continues a run from a training state (or, given a folder
of states, from the newest complete one) with the same shuffle order, from the next unseen
batch, for the remaining epochs only.

**Safe points.** During ``train()`` a training state is written only at a *safe point*, where
the run can be cut and continued without changing a bit of the result:

=============================================  ============================================
requested from (callback event or hook)         written at / the state represents
=============================================  ============================================
``on_training_run_start``, ``on_train_epoch_     the next safe point: the start of the first
start``, ``on_train_step_start``,                (resumed) epoch, or the end of the current
``on_train_step_end``                            micro-batch (after its backward pass and, if
                                                 it ends an update, after the update)
``on_optimizer_step_end``                        right after this update, once every callback
                                                 has seen it (EMA weights included)
``on_train_epoch_end``                           after the epoch's training part, before its
                                                 evaluation (the resumed run evaluates it)
``on_eval_epoch_end``                            after the epoch's evaluation, before
                                                 ``training_run_epoch_end``
``on_training_run_epoch_end``                    the epoch boundary: the epoch is complete and
                                                 the resumed run starts the next one
``on_stop_training_error``,                      the end of the run; a state saved after a run
``on_training_run_end``                          that finished all its epochs continues with
                                                 the extra epochs of a longer ``num_epochs``;
                                                 one saved after an early stop resumes to
                                                 nothing
=============================================  ============================================

So ``save_training_state`` called inside ``train()`` returns at once and the folder is written
at that point (an error is raised there); each write then fires the
``on_training_state_saved`` event with ``output_dir``. Outside ``train()`` it writes
immediately.

**Crash safety.** Files are written aside (temporary name), flushed to disk and renamed; the
folder's manifest (``pa_state.json``, listing every file with its size) is written last, the
same way, so a folder is a complete state exactly when its manifest is there and matches. A
state folder saved again keeps the previous complete state until the new manifest replaces
the old one. A folder without a valid manifest is never resumed from.

**Graceful stop.** During ``train()`` SIGTERM (a cluster pre-empting the job) and Ctrl-C
(SIGINT) are caught: at the next safe point the ``on_stop_signal`` event fires (where
:class:`~pa_mixins.callbacks.SaveTrainingStateCallback` saves a state), the run stops through
the usual :class:`~pa_mixins.callbacks.StopTrainingError` path (``on_stop_training_error``,
``training_run_end``, ``on_training_run_end``), and ``train()`` then raises ``SystemExit(143)``
for SIGTERM or ``KeyboardInterrupt`` for Ctrl-C. A second signal stops at once. On several
processes the processes agree on the stop every :attr:`CheckpointMixin.stop_signal_check_interval`
updates (one tiny collective), so they stop at the same step.

**Security.** Everything this module loads is read with ``torch.load(weights_only=True)`` and
JSON; states hold only tensors and plain values, checked when they are written. A file that
would need to run code to load is refused with :class:`UnsafeCheckpointError` and nothing in it
is executed. Accelerate's ``save_state``/``load_state`` (which unpickles registered objects) are
not used. Files written by other engines (e.g. DeepSpeed's own checkpoint files, once
supported) must come from a trusted source.

The folder must be on a file system that every process of the run can read and write.
"""

from __future__ import annotations

import os
import signal
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader
from typing_extensions import override

from pa_mixins.base import BatchOutput
from pa_mixins.callbacks.core import StopTrainingError
from pa_mixins.checkpoint_format import (
    MANIFEST_NAME,
    STATE_FORMAT,
    CheckpointError,
    UnsafeCheckpointError,
    check_model_fits,
    check_optimizer_fits,
    check_plain,
    generation_files,
    list_training_states,
    next_generation,
    rank_file_name,
    read_manifest,
    remove_files,
    remove_stale_files,
    resolve_training_state,
    safe_load,
    save_tensors,
    state_position,
    trainer_file_name,
    write_manifest,
)
from pa_mixins.checkpoint_format import STATE_VERSION as STATE_VERSION  # re-exported
from pa_mixins.data import ResumedEpoch, find_shuffle_sampler, has_length, loader_length
from pa_mixins.mixins.loop import TrainingLoopMixin
from pa_mixins.seeding import capture_rng_state, restore_rng_state
from pa_mixins.stop_signals import StopSignals

# The on-disk format lives in pa_mixins.checkpoint_format; its public names (errors,
# MANIFEST_NAME, STATE_FORMAT, STATE_VERSION, read_manifest, list_training_states,
# resolve_training_state, safe_load) stay importable from here too.
__all__ = [
    "MANIFEST_NAME",
    "CheckpointError",
    "CheckpointMixin",
    "UnsafeCheckpointError",
    "list_training_states",
    "read_manifest",
]


@dataclass
class _PendingResume:
    """What a resumed run still has to restore once the loop reaches the saved moment."""

    position: dict[str, Any]
    rng: dict[str, Any]
    loss_tracker: dict[str, Any] | None
    grads: list[torch.Tensor | None] | None
    accumulation: dict[str, Any]
    callbacks: dict[str, Any] = field(default_factory=dict)
    callbacks_applied: bool = False

    @property
    def phase(self) -> str:
        return str(self.position["phase"])


class CheckpointMixin(TrainingLoopMixin):
    """Adds :meth:`save_checkpoint` / :meth:`load_checkpoint` (portable ``.pt`` exports),
    :meth:`save_training_state` / :meth:`load_training_state` (full training states), the
    ``resume_from`` argument of ``train()`` (exact resume) and the graceful stop on SIGTERM
    and Ctrl-C. See the module docstring for the safe points and the file format.

    It extends :class:`TrainingLoopMixin` (it needs the loop's position) and talks to the
    hardware only through the adapter. Put it first among a trainer's bases::

        class MyTrainer(CheckpointMixin, EvaluationMixin, TrainingLoopMixin, AccelerateMixin,
                        BaseTrainer):
            pass
    """

    train_options: ClassVar[dict[str, Any]] = {"resume_from": None}
    #: on several processes, the processes agree on a stop signal every this many updates
    stop_signal_check_interval: ClassVar[int] = 10

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._pending_saves: list[tuple[Path, dict[str, Any]]] = []
        self._ckpt_in_run = False
        self._ckpt_step_is_update = True
        self._ckpt_next_step = 0
        self._ckpt_eval_depth = 0
        self._ckpt_idle_position: dict[str, Any] | None = None
        self._resume: _PendingResume | None = None
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
        machine (``save_per_node=True``) or of the whole run; every process must call it."""
        checkpoint: dict[str, Any] = {
            "model_state_dict": self.get_model(keep_torch_compile=False).state_dict()
        }
        if save_optimizer and self.optimizer is not None:
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
        writer = (
            getattr(self, "is_local_process_zero", True)
            if save_per_node
            else getattr(self, "is_world_process_zero", True)
        )
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
        model.load_state_dict(weights)
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
        if self._ckpt_in_run:
            self._pending_saves.append((Path(output_dir), kwargs))
            return
        position = self._ckpt_idle_position or state_position("epoch_start", 0, 0, 0, False)
        self._write_training_state(Path(output_dir), kwargs, position)

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
        manifest = read_manifest(state_dir)
        trainer_state, process_state = self._read_state_files(state_dir, manifest, strict=False)
        self._check_fits(trainer_state, state_dir)
        self._apply_weights(trainer_state)
        if process_state is not None:
            restore_rng_state(process_state["rng"])
        return {
            "current_epoch": trainer_state["run_history"]["current_epoch"],
            **trainer_state["checkpoint_kwargs"],
        }

    # -- writing ---------------------------------------------------------------------------------

    def _write_training_state(
        self, output_dir: Path, checkpoint_kwargs: dict[str, Any], position: dict[str, Any]
    ) -> None:
        engine = self._sharded_engine_name()
        if engine is not None:
            raise NotImplementedError(
                f"Training states of {engine} runs (sharded model or optimizer) are not "
                "supported yet"
            )
        is_main = bool(getattr(self, "is_world_process_zero", True))
        rank = int(getattr(self, "process_index", 0))
        num_processes = int(getattr(self, "num_processes", 1))

        # 1. The first process prepares the folder and picks the new generation number.
        generation, problem = -1, ""
        if is_main:
            try:
                output_dir.mkdir(parents=True, exist_ok=True)
                generation = next_generation(output_dir)
            except OSError as error:
                problem = f"{type(error).__name__}: {error}"
        generation = self._agree_int(generation)
        if generation < 0:
            raise CheckpointError(
                f"Cannot write a training state to {output_dir}: "
                f"{problem or 'the first process could not create the folder'}"
            )

        # 2. Every process writes its files aside; nothing is visible without the manifest.
        written: list[Path] = []
        failure: BaseException | None = None
        try:
            if is_main:
                trainer_state = self._trainer_state(position, checkpoint_kwargs)
                check_plain(trainer_state, "the training state")
                path = output_dir / trainer_file_name(generation)
                written.append(path)
                save_tensors(trainer_state, path)
            process_state = self._process_state(position)
            check_plain(process_state, "the process state")
            path = output_dir / rank_file_name(rank, generation)
            written.append(path)
            save_tensors(process_state, path)
        except (OSError, TypeError, RuntimeError) as error:
            failure = error
        if self._any_process(failure is not None):
            remove_files(written)
            raise CheckpointError(
                f"Writing the training state to {output_dir} failed"
                + (f": {type(failure).__name__}: {failure}" if failure else " on another process")
                + "; the previous state in that folder (if any) is unchanged"
            ) from failure

        # 3. The first process commits the manifest, then removes the older generation.
        ok = 1
        if is_main:
            try:
                files = write_manifest(output_dir, generation, num_processes, position)
                remove_stale_files(output_dir, keep=set(files))
            except OSError as error:
                ok, failure = 0, error
        if self._agree_int(ok) != 1:
            remove_files(
                written
                if not is_main
                else [output_dir / n for n in generation_files(output_dir, generation)]
            )
            raise CheckpointError(
                f"Committing the training state in {output_dir} failed"
                + (f": {failure}" if failure else "")
                + "; the previous state in that folder (if any) is unchanged"
            ) from failure

    def _trainer_state(
        self, position: dict[str, Any], checkpoint_kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """What every process shares: weights, optimizer, scheduler, history, callbacks."""
        scheduler_state = None
        if self.scheduler is not None and hasattr(self.scheduler, "state_dict"):
            scheduler_state = self.scheduler.state_dict()
        callbacks = {}
        for callback in self.callback_handler:
            state_dict = getattr(callback, "state_dict", None)
            if callable(state_dict):
                callbacks[type(callback).__name__] = state_dict()
        train_dl = self._train_dataloader
        return {
            "format": STATE_FORMAT,
            "model": self.get_model(keep_torch_compile=False).state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": scheduler_state,
            "grad_scaler": self._grad_scaler_state(),
            "run_history": self.run_history.state_dict(),
            "callbacks": callbacks,
            "position": position,
            "run": {
                "num_processes": int(getattr(self, "num_processes", 1)),
                "batches_per_epoch": loader_length(train_dl),
                "gradient_accumulation_steps": (
                    self.run_config.gradient_accumulation_steps if self.run_config else 1
                ),
                "shuffle_seed": self._shuffle_seed,
            },
            "checkpoint_kwargs": checkpoint_kwargs,
        }

    def _process_state(self, position: dict[str, Any]) -> dict[str, Any]:
        """What differs between processes: random generators and, mid-epoch, the open
        accumulation group's gradients and the epoch's running train loss."""
        mid_epoch = position["phase"] == "train"
        group_size = int(getattr(self, "_group_size", 0))
        tracker = self._loss_tracker
        return {
            "process_index": int(getattr(self, "process_index", 0)),
            "rng": capture_rng_state(),
            "grads": [p.grad for p in self.model.parameters()]
            if mid_epoch and group_size
            else None,
            "accumulation": {
                "group_size": group_size if mid_epoch else 0,
                "items_in_group": getattr(self, "_items_in_group", None) if mid_epoch else None,
            },
            "loss_tracker": (
                {
                    "loss_value": tracker.loss_value,
                    "total_loss": tracker.total_loss,
                    "running_count": tracker.running_count,
                }
                if mid_epoch
                else None
            ),
        }

    # -- reading ---------------------------------------------------------------------------------

    def _read_state_files(
        self, state_dir: Path, manifest: dict[str, Any], strict: bool
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        generation = manifest["generation"]
        num_processes = int(getattr(self, "num_processes", 1))
        saved_processes = int(manifest["num_processes"])
        trainer_state = safe_load(state_dir / trainer_file_name(generation), "training state")
        if not isinstance(trainer_state, dict) or trainer_state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{state_dir} does not hold a pa_mixins training state")
        if saved_processes != num_processes:
            message = (
                f"The training state {state_dir} was saved by {saved_processes} process(es); "
                f"this run has {num_processes}. The data position and the per-process random "
                "states depend on the number of processes: resume with the same number"
            )
            if strict:
                raise CheckpointError(message)
            warnings.warn(message + "; the random states are not restored", stacklevel=3)
            return trainer_state, None
        rank = int(getattr(self, "process_index", 0))
        process_state = safe_load(state_dir / rank_file_name(rank, generation), "training state")
        return trainer_state, process_state

    def _check_fits(self, trainer_state: dict[str, Any], state_dir: Path) -> None:
        """Refuse, before anything changes, a state that does not fit this trainer."""
        check_model_fits(
            self.get_model(keep_torch_compile=False),
            trainer_state["model"],
            f"The training state {state_dir}",
        )
        if self.optimizer is not None and trainer_state["optimizer"] is not None:
            check_optimizer_fits(self.optimizer, trainer_state["optimizer"], str(state_dir))

    def _apply_weights(self, trainer_state: dict[str, Any]) -> None:
        self.get_model(keep_torch_compile=False).load_state_dict(trainer_state["model"])
        if self.optimizer is not None and trainer_state["optimizer"] is not None:
            self.optimizer.load_state_dict(trainer_state["optimizer"])
        if self.scheduler is not None and trainer_state["scheduler"] is not None:
            self.scheduler.load_state_dict(trainer_state["scheduler"])
        self._load_grad_scaler_state(trainer_state["grad_scaler"])

    # ==========================================================================================
    # Resume: the setup step, and the loop overrides that restore at the saved moment
    # ==========================================================================================

    @override
    def _restore_training_state(self, resume_from: str | None) -> None:
        """Setup step (after the scheduler exists): load the state to resume from and restore
        what can be restored now; the rest waits for the saved moment of the loop."""
        super()._restore_training_state(resume_from)
        self._pending_saves = []
        self._resume = None
        self._stop_signals.received = None
        self.stop_signal = None
        self.resumed_from = None
        self._ckpt_next_step = 0
        if resume_from is None:
            return
        failure: BaseException | None = None
        process_state: dict[str, Any] | None = None
        try:
            state_dir = resolve_training_state(resume_from)
            manifest = read_manifest(state_dir)
            trainer_state, process_state = self._read_state_files(state_dir, manifest, strict=True)
            self._check_fits(trainer_state, state_dir)
            self._check_resumable(trainer_state, state_dir)
        except (CheckpointError, OSError, ValueError, KeyError) as error:
            failure = error
        if self._any_process(failure is not None):
            if failure is not None:
                raise failure
            raise CheckpointError("Resuming failed on another process (see its error)")
        assert process_state is not None
        self._apply_weights(trainer_state)
        self.run_history.load_state_dict(trainer_state["run_history"])
        position = trainer_state["position"]
        self._run_epoch = int(position["epoch"])
        self._num_updates = int(position["num_updates"])
        self._max_steps_reached = bool(position["max_steps_reached"])
        self._first_step_of_epoch = (
            int(position["next_step"]) if position["phase"] == "train" else 0
        )
        self._set_shuffle_seed(trainer_state["run"]["shuffle_seed"])
        self._resume = _PendingResume(
            position=position,
            rng=process_state["rng"],
            loss_tracker=process_state["loss_tracker"],
            grads=process_state["grads"],
            accumulation=process_state["accumulation"],
            callbacks=dict(trainer_state["callbacks"]),
        )
        self.resumed_from = str(state_dir)
        self.print(
            f"\nResuming from {state_dir}: epoch {self.run_history.current_epoch}, "
            f"{self._num_updates} updates done ({position['phase']})"
        )

    def _check_resumable(self, trainer_state: dict[str, Any], state_dir: Path) -> None:
        saved = trainer_state["run"]
        train_dl = self._train_dataloader
        batches = loader_length(train_dl)
        steps = self.run_config.gradient_accumulation_steps if self.run_config else 1
        if saved["batches_per_epoch"] is not None and saved["batches_per_epoch"] != batches:
            raise CheckpointError(
                f"The training state {state_dir} was saved with {saved['batches_per_epoch']} "
                f"batches per epoch per process; this run has {batches}. Resume with the same "
                "dataset, batch size and number of processes"
            )
        if saved["gradient_accumulation_steps"] != steps:
            raise CheckpointError(
                f"The training state {state_dir} was saved with gradient_accumulation_steps="
                f"{saved['gradient_accumulation_steps']}; this run uses {steps}"
            )
        if (trainer_state["scheduler"] is None) != (self.scheduler is None):
            had = "had" if trainer_state["scheduler"] is not None else "had no"
            raise CheckpointError(
                f"The training state {state_dir} {had} scheduler state, unlike this run: pass "
                "the same create_scheduler_fn as the run that saved it"
            )

    def _set_shuffle_seed(self, seed: int | None) -> None:
        """Use the saved run's shuffle seed, so the resumed run sees the same data order."""
        if seed is None:
            return
        self._shuffle_seed = seed
        sampler, _ = find_shuffle_sampler(
            getattr(self._train_dataloader, "dl", self._train_dataloader)
        )
        if sampler is not None:
            sampler.seed = seed

    def _apply_resumed_callback_states(self) -> None:
        """Give each callback its saved state (after ``on_training_run_start``, so that a
        reset there does not undo it). States of callbacks this run lacks are ignored."""
        resume = self._resume
        if resume is None or resume.callbacks_applied:
            return
        resume.callbacks_applied = True
        states = dict(resume.callbacks)
        for callback in self.callback_handler:
            name = type(callback).__name__
            load = getattr(callback, "load_state_dict", None)
            if name in states and callable(load):
                load(states.pop(name))
        for name in states:
            warnings.warn(
                f"The training state holds the state of a {name} callback, which this run does "
                "not have: it is ignored",
                stacklevel=2,
            )

    def _restore_mid_epoch(self) -> None:
        """At the first resumed micro-batch: random states, running loss, open group."""
        resume = self._resume
        assert resume is not None
        self._resume = None
        tracker = resume.loss_tracker
        if tracker is not None:
            device = self.device
            for name, value in tracker.items():
                setattr(
                    self._loss_tracker,
                    name,
                    value.to(device) if isinstance(value, torch.Tensor) else value,
                )
        accumulation = resume.accumulation
        if accumulation["group_size"] and hasattr(self, "_group_size"):
            self._group_size = accumulation["group_size"]
            items = accumulation["items_in_group"]
            self._items_in_group = (
                items.to(self.device) if isinstance(items, torch.Tensor) else items
            )
        if resume.grads is not None:
            for param, grad in zip(self.model.parameters(), resume.grads, strict=True):
                param.grad = None if grad is None else grad.to(param.device)
        restore_rng_state(resume.rng)

    def _resumed_epoch_loader(self, train_dl: Any) -> ResumedEpoch:
        """Wrap the loader for the epoch the run resumes in (see :class:`ResumedEpoch`)."""
        assert self._resume is not None and self.run_config is not None
        skip = int(self._resume.position["next_step"])
        max_updates = self.run_config.max_num_train_steps
        if max_updates is not None and self._num_updates >= max_updates:
            skip = len(train_dl) if has_length(train_dl) else skip  # the run stopped here
        sampler_skip = None
        if isinstance(train_dl, DataLoader):
            sampler, batch_sampler = find_shuffle_sampler(train_dl)
            batch_size = getattr(batch_sampler, "batch_size", None)
            num_processes = int(getattr(self, "num_processes", 1))
            if sampler is not None and batch_size:
                exact = (
                    num_processes == 1
                    or getattr(batch_sampler, "drop_last", False)
                    or len(sampler) % (num_processes * batch_size) == 0
                )
                if exact:
                    sampler_skip = (sampler, skip * num_processes * batch_size)
        return ResumedEpoch(train_dl, skip, sampler_skip, self._restore_mid_epoch)

    # -- loop overrides --------------------------------------------------------------------------

    @override
    def _run_training(self) -> None:
        """Extends the run: resume bookkeeping, safe-point saves at the end, signal handling."""
        resume = self._resume
        if resume is not None and resume.phase == "ended":
            self._resume = None
            self.print(
                f"\nNothing to resume: {self.resumed_from} was saved after its run had ended"
            )
            self.model = self.get_model()
            return
        self.stop_signal = None
        self._stop_signals.install()
        self._ckpt_in_run = True
        try:
            super()._run_training()
        finally:
            self._ckpt_in_run = False
            self._stop_signals.restore()
            self._resume = None
        self._ckpt_idle_position = self._run_end_position()
        self._flush_pending_saves(self._ckpt_idle_position)
        if self.stop_signal == "SIGINT":
            raise KeyboardInterrupt("Training stopped by Ctrl-C at a safe point")
        if self.stop_signal is not None:
            raise SystemExit(128 + int(signal.SIGTERM))

    @override
    def _run_train_epoch(self, train_dl: Any) -> None:
        """Extends a training epoch: the epoch-boundary safe point, resuming inside or after
        the epoch, and the safe point after its training part."""
        self._apply_resumed_callback_states()
        self._safe_point("epoch_start")
        resume = self._resume
        if resume is not None and resume.phase in ("train_done", "eval_done"):
            if resume.phase == "train_done":
                self._resume = None
                restore_rng_state(resume.rng)
            return
        if resume is not None and resume.phase == "epoch_start":
            self._resume = None
            restore_rng_state(resume.rng)
        elif resume is not None:
            train_dl = self._resumed_epoch_loader(train_dl)
        self._ckpt_next_step = self._first_step_of_epoch
        super()._run_train_epoch(train_dl)
        self._safe_point("train_done")

    @override
    def _run_eval_epoch(
        self, valid_dl: Any, is_training: bool = True, is_intermediate: bool = False
    ) -> None:
        """Extends an evaluation epoch: skipped when resuming after it; a safe point after
        the epoch's evaluation (not after intermediate or nested ones)."""
        top_level = (
            is_training and not is_intermediate and self._ckpt_in_run and self._ckpt_eval_depth == 0
        )
        resume = self._resume
        if top_level and resume is not None and resume.phase == "eval_done":
            self._resume = None
            restore_rng_state(resume.rng)
            return
        self._ckpt_eval_depth += 1
        try:
            super()._run_eval_epoch(
                valid_dl, is_training=is_training, is_intermediate=is_intermediate
            )
        finally:
            self._ckpt_eval_depth -= 1
        if top_level:
            self._safe_point("eval_done")

    @override
    def _is_update_step(self, step: int) -> bool:
        is_update = super()._is_update_step(step)
        self._ckpt_step_is_update = is_update
        return is_update

    @override
    def _perform_forward_and_backward_passes(self, batch: Any, step: int) -> BatchOutput:
        """Extends a micro-batch: a safe point after its backward pass when it does not end an
        update (inside an accumulation group)."""
        batch_output = super()._perform_forward_and_backward_passes(batch, step)
        self._ckpt_next_step = step + 1
        if not self._ckpt_step_is_update:
            self._safe_point("train", poll_others=False)
        return batch_output

    @override
    def _perform_optimizer_update(self) -> None:
        """Extends an update: a safe point once every callback has seen it."""
        super()._perform_optimizer_update()
        poll = self._num_updates % max(self.stop_signal_check_interval, 1) == 0
        self._safe_point("train", poll_others=poll)

    @override
    def training_run_end(self) -> None:
        """Extends the end of the run: saves still pending from the loop are written before
        the end-of-run hooks change anything (e.g. reload the best weights)."""
        self._apply_resumed_callback_states()
        self._flush_pending_saves(self._run_end_position())
        super().training_run_end()

    # -- safe points ----------------------------------------------------------------------------

    def _position_now(self, phase: str) -> dict[str, Any]:
        """The current position, ``phase`` being where the loop is (see
        :func:`~pa_mixins.checkpoint_format.state_position`)."""
        next_step = self._ckpt_next_step if phase == "train" else 0
        return state_position(
            phase, self._run_epoch, next_step, self._num_updates, self._max_steps_reached
        )

    def _run_end_position(self) -> dict[str, Any]:
        num_epochs = self.run_config.num_epochs if self.run_config is not None else None
        stopped = not self._max_steps_reached and (
            num_epochs is None or self._run_epoch < num_epochs
        )
        phase = "ended" if stopped else "epoch_start"
        return state_position(phase, self._run_epoch, 0, self._num_updates, self._max_steps_reached)

    def _safe_point(self, phase: str, poll_others: bool = True) -> None:
        """Write the saves requested since the last safe point; stop here on a signal. Costs
        two Python checks per call unless something is pending (on several processes, a tiny
        collective every ``stop_signal_check_interval`` updates). ``phase`` says where the loop
        is (see :meth:`_position_now`)."""
        stop = self._stop_agreed(poll_others)
        if not stop and not self._pending_saves:
            return
        position = self._position_now(phase)
        if stop:
            self.stop_signal = self._stop_signals.received or "SIGTERM"
            self.callback_handler.call_event("on_stop_signal", self, signal_name=self.stop_signal)
            if not self._pending_saves:
                warnings.warn(
                    f"Received {self.stop_signal}: stopping without saving a training state "
                    "(add SaveTrainingStateCallback to save one)",
                    stacklevel=2,
                )
        if self._pending_saves:
            self._flush_pending_saves(position)
        if stop:
            raise StopTrainingError(
                f"Received {self.stop_signal}: stopping at a safe point (epoch "
                f"{self.run_history.current_epoch}, {self._num_updates} updates done)"
            )

    def _flush_pending_saves(self, position: dict[str, Any]) -> None:
        while self._pending_saves:
            output_dir, kwargs = self._pending_saves.pop(0)
            self._write_training_state(output_dir, kwargs, position)
            self.callback_handler.call_event(
                "on_training_state_saved", self, output_dir=str(output_dir)
            )

    # -- agreement between processes ----------------------------------------------------------

    def _stop_agreed(self, poll_others: bool) -> bool:
        local = self._stop_signals.received is not None
        config = self.run_config
        if (config.num_processes if config is not None else getattr(self, "num_processes", 1)) == 1:
            return local
        if not poll_others:
            return False
        return self._any_process(local)

    def _any_process(self, flag: bool) -> bool:
        if int(getattr(self, "num_processes", 1)) == 1:
            return flag
        total = self.reduce_sum(torch.tensor([1.0 if flag else 0.0], device=self.device))
        return bool(total.item() > 0)

    def _agree_int(self, value: int) -> int:
        """``value`` as the first process has it."""
        if int(getattr(self, "num_processes", 1)) == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        return int(self.broadcast_from_main(tensor).item())
