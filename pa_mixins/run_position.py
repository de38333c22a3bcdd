"""Where a training run stands (``TrainingLoopMixin`` owns one), and what a resumed run still
has to put back when the loop reaches the saved moment."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pa_mixins.checkpoint_format import state_position

__all__ = ["RunPosition"]


@dataclass
class RunPosition:
    """The position of the current ``train()`` run.

    ``phase`` is ``"epoch_start"`` (before epoch ``epoch``), ``"train"`` (inside it, before
    micro-batch ``next_step``), ``"train_done"`` / ``"eval_done"`` (after the epoch's training
    / evaluation) or ``"ended"`` (after a run that stopped early).
    """

    epoch: int = 0  # epochs completed in this run (0-based index of the current one)
    num_updates: int = 0
    max_steps_reached: bool = False
    phase: str = "epoch_start"
    next_step: int = 0
    #: index of the first micro-batch of the next epoch (> 0 when resuming mid-epoch)
    first_step_of_epoch: int = 0
    #: the phase a resumed run starts at, until the loop reaches it
    resume_phase: str | None = None
    #: the random generators to restore at the saved moment
    pending_rng: dict[str, Any] | None = None
    #: the running loss of the epoch resumed mid-way
    pending_loss: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The position as training states store it."""
        next_step = self.next_step if self.phase == "train" else 0
        return state_position(
            self.phase, self.epoch, next_step, self.num_updates, self.max_steps_reached
        )

    def resume_at(self, saved: dict[str, Any]) -> None:
        """Continue from a position saved by :meth:`as_dict`."""
        self.epoch = int(saved["epoch"])
        self.num_updates = int(saved["num_updates"])
        self.max_steps_reached = bool(saved["max_steps_reached"])
        self.phase = self.resume_phase = str(saved["phase"])
        self.first_step_of_epoch = int(saved["next_step"]) if self.phase == "train" else 0

    def take_resume(self, *phases: str) -> str | None:
        """The phase the run resumes at, if it is one of ``phases`` (then it is used up)."""
        phase = self.resume_phase
        if phase is None or phase not in phases:
            return None
        self.resume_phase = None
        return phase
