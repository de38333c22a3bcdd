"""Callbacks that save training states: periodically, at the end, on a stop signal, and at
the phases of a WSD learning-rate schedule. They need a trainer with ``CheckpointMixin``
(e.g. :class:`pa_mixins.Trainer`)."""

from __future__ import annotations

import contextlib
import shutil
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pa_mixins.callbacks.core import TrainerCallback
from pa_mixins.checkpoint_format import MANIFEST_NAME, list_training_states

if TYPE_CHECKING:
    from pa_mixins.base import BaseTrainer

__all__ = ["SaveTrainingStateCallback", "WSDCheckpointCallback"]

_OWN_PREFIXES = ("step_", "epoch_", "interrupted_")


class SaveTrainingStateCallback(TrainerCallback):
    """Save the full training state (see ``CheckpointMixin.save_training_state``) every N
    epochs, every N optimizer updates, at the end of training and when the job is stopped by
    SIGTERM or Ctrl-C, so that ``train(..., resume_from=save_dir)`` continues the run exactly
    from the newest complete state.

    :param save_dir: the folder the states go in, one sub-folder each: ``step_{n}``,
        ``epoch_{e}``, ``final``, ``interrupted_step_{n}``.
    :param save_every_n_epochs: save at the end of every N-th epoch (after its evaluation and
        epoch-end callbacks; the resumed run starts the next epoch).
    :param save_every_n_steps: save after every N-th optimizer update. A step is an **optimizer
        update** (not a micro-batch): with gradient accumulation, ``gradient_accumulation_steps``
        micro-batches make one step. ``n`` in ``step_{n}`` counts updates over the whole run,
        across resumes.
    :param save_at_end: save ``final`` at the end of training (not when a stop signal ended
        it: the ``interrupted_*`` state is the one to resume from).
    :param max_checkpoints: keep only the newest N states in ``save_dir`` (those this callback
        names; oldest deleted first). The new state is complete on disk before an old one is
        deleted, so the only good state is never lost. ``None`` keeps all.

    Its counter is saved in the training state. A second callback of the same class cannot be
    added to a trainer.
    """

    def __init__(
        self,
        save_dir: str = "training_states",
        save_every_n_epochs: int | None = None,
        save_every_n_steps: int | None = None,
        save_at_end: bool = True,
        max_checkpoints: int | None = None,
    ) -> None:
        for name, value in (
            ("save_every_n_epochs", save_every_n_epochs),
            ("save_every_n_steps", save_every_n_steps),
            ("max_checkpoints", max_checkpoints),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        self.save_dir = Path(save_dir)
        self.save_every_n_epochs = save_every_n_epochs
        self.save_every_n_steps = save_every_n_steps
        self.save_at_end = save_at_end
        self.max_checkpoints = max_checkpoints
        self._global_step = 0

    def state_dict(self) -> dict[str, Any]:
        """The update counter (saved in training states)."""
        return {"global_step": self._global_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._global_step = int(state["global_step"])

    def _save(self, trainer: BaseTrainer, name: str) -> None:
        trainer.save_training_state(  # type: ignore[attr-defined]
            str(self.save_dir / name), checkpoint_kwargs={"global_step": self._global_step}
        )

    def on_training_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._global_step = 0  # a resumed run gets its saved counter back after this

    def on_optimizer_step_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._global_step += 1
        if self.save_every_n_steps is not None and self._global_step % self.save_every_n_steps == 0:
            self._save(trainer, f"step_{self._global_step}")

    def on_training_run_epoch_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        epoch = trainer.run_history.current_epoch
        if self.save_every_n_epochs is not None and epoch % self.save_every_n_epochs == 0:
            self._save(trainer, f"epoch_{epoch}")

    def on_stop_signal(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        """A stop signal arrived: save a state to resume from (at this safe point)."""
        self._save(trainer, f"interrupted_step_{self._global_step}")

    def on_training_run_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        if self.save_at_end and getattr(trainer, "stop_signal", None) is None:
            self._save(trainer, "final")

    def on_training_state_saved(
        self, trainer: BaseTrainer, output_dir: str = "", **kwargs: Any
    ) -> None:
        """After a state is complete on disk: delete the oldest beyond ``max_checkpoints``."""
        if self.max_checkpoints is None or Path(output_dir).parent != self.save_dir:
            return
        if not trainer.is_world_process_zero:
            return
        own = [
            path
            for path, _ in list_training_states(self.save_dir)
            if path.name == "final" or path.name.startswith(_OWN_PREFIXES)
        ]
        for path in own[: max(len(own) - self.max_checkpoints, 0)]:
            if path == Path(output_dir):
                continue
            # Without its manifest the folder is no longer a state, even if removal stops.
            with contextlib.suppress(OSError):
                (path / MANIFEST_NAME).unlink()
            shutil.rmtree(path, ignore_errors=True)
            trainer.print(f"Removed old training state: {path}")


class WSDCheckpointCallback(TrainerCallback):
    """Save the checkpoints of a Warmup-Stable-Decay schedule, in step with
    :class:`~pa_mixins.schedulers.WSDLrScheduler`.

    * **pre-decay** (just before a decay phase starts): a full training state
      ``checkpoint_{n}_wsd_pre_decay/``, for continuation training (WSD);
    * **post-decay** (at the end of a decay phase): a portable checkpoint
      ``checkpoint_{n}_wsd_post_decay.pt`` (WSD-S, deployment, fine-tuning).

    ``n`` is the number of optimizer updates done; checks run after each update
    (``on_optimizer_step_end``), so the pre-decay state holds the weights before the first
    decayed update.

    :param save_dir: the folder the checkpoints go in (created at the start of training).
    :param save_optimizer: include the optimizer state in post-decay checkpoints.
    :param save_scheduler: include the scheduler state in post-decay checkpoints.
    :param initial_checkpoint: loaded at the start of training if it exists: a folder as a
        training state (``load_training_state``), a file as a checkpoint (``load_checkpoint``).
    """

    def __init__(
        self,
        save_dir: str = "checkpoints",
        save_optimizer: bool = True,
        save_scheduler: bool = True,
        initial_checkpoint: str | Path | None = None,
    ) -> None:
        self.save_dir = Path(save_dir)
        self.save_optimizer = save_optimizer
        self.save_scheduler = save_scheduler
        self.initial_checkpoint = Path(initial_checkpoint) if initial_checkpoint else None
        self.last_checkpoint_step: int | None = None
        self.checkpoint_steps: set[int] | None = None
        self.decay_fraction: float | None = None
        self.decay_info: Any = None

    def state_dict(self) -> dict[str, Any]:
        """The last step saved (saved in training states, so a resumed run does not save it
        twice)."""
        return {"last_checkpoint_step": self.last_checkpoint_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_checkpoint_step = state["last_checkpoint_step"]

    def _metadata(self, trainer: BaseTrainer, step: int, kind: str) -> dict[str, Any]:
        assert trainer.run_config is not None
        return {
            "step": step,
            "checkpoint_type": kind,
            "total_steps": trainer.run_config.max_num_train_steps,
            "decay_fraction": self.decay_fraction,
            "timestamp": datetime.now().isoformat(),
        }

    def _save_pre_decay(self, trainer: BaseTrainer, step: int) -> None:
        trainer.save_training_state(  # type: ignore[attr-defined]
            str(self.save_dir / f"checkpoint_{step}_wsd_pre_decay"),
            checkpoint_kwargs=self._metadata(trainer, step, "wsd_pre_decay"),
        )
        trainer.print(f"\nSaving wsd_pre_decay training state at step {step}")

    def _save_post_decay(self, trainer: BaseTrainer, step: int) -> None:
        trainer.save_checkpoint(  # type: ignore[attr-defined]
            self.save_dir / f"checkpoint_{step}_wsd_post_decay.pt",
            save_optimizer=self.save_optimizer,
            save_scheduler=self.save_scheduler,
            checkpoint_kwargs=self._metadata(trainer, step, "wsd_post_decay"),
        )
        trainer.print(f"\nSaved wsd_post_decay checkpoint at step {step}")

    def on_training_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        scheduler = trainer.scheduler
        if not hasattr(scheduler, "get_checkpoint_steps"):
            raise ValueError(
                "WSDCheckpointCallback needs a scheduler with get_checkpoint_steps(): create it "
                "with pa_mixins.schedulers.WSDLrScheduler.create_scheduler_fn(...)"
            )
        self.save_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_steps = set(scheduler.get_checkpoint_steps())
        self.decay_fraction = scheduler.decay_phase_ratio
        self.decay_info = scheduler.get_decay_info()
        initial = self.initial_checkpoint
        if initial is None or not initial.exists():
            return
        trainer.print(f"\nLoading checkpoint from {initial}")
        if initial.is_dir():
            metadata = trainer.load_training_state(str(initial))  # type: ignore[attr-defined]
        else:
            metadata = trainer.load_checkpoint(initial)  # type: ignore[attr-defined]
        self.last_checkpoint_step = metadata.get("step")
        trainer.print(
            f"Loaded {metadata.get('checkpoint_type', 'checkpoint')} from step "
            f"{self.last_checkpoint_step}"
        )

    def on_optimizer_step_end(
        self, trainer: BaseTrainer, num_updates: int = 0, **kwargs: Any
    ) -> None:
        step = int(trainer.scheduler.get_current_step())
        if step == self.last_checkpoint_step:
            return
        phase = trainer.scheduler.get_phase_info(step)
        if step == phase["pre_decay_step"]:
            trainer.print(f"\nWSD Lr Scheduler entering decay phase at step {step}")
            self._save_pre_decay(trainer, step)
            self.last_checkpoint_step = step
        elif step == phase["period_end"]:
            self._save_post_decay(trainer, step)
            self.last_checkpoint_step = step

    def on_training_run_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        if trainer.scheduler is None:
            return
        step = int(trainer.scheduler.get_current_step())
        if (
            self.last_checkpoint_step != step
            and step == trainer.scheduler.get_phase_info(step)["period_end"]
        ):
            self._save_post_decay(trainer, step)
            self.last_checkpoint_step = step
