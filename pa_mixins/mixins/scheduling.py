"""``SchedulerMixin``: a learning-rate (or other) scheduler stepped once per optimizer update."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from typing_extensions import override

from pa_mixins.base import BaseTrainer
from pa_mixins.checkpoint_format import CheckpointError
from pa_mixins.placeholders import replace_trainer_placeholder_values

__all__ = ["SchedulerMixin"]


class SchedulerMixin(BaseTrainer):
    """Adds the ``create_scheduler_fn`` argument of ``train()``.

    The scheduler is created after the loaders are prepared and the run config exists (so
    :class:`~pa_mixins.TrainerPlaceholderValues` resolve to this run's per-process update
    counts), is never handed to Accelerate (which would step it once per process), and steps
    once per real optimizer update: not on accumulation micro-batches, and not after an fp16
    update that was skipped because its gradients overflowed.

    Owns ``scheduler`` and ``create_scheduler_fn`` (state key ``"scheduler"``). Extends
    ``setup_scheduler`` and ``after_optimizer_step``.
    """

    train_options: ClassVar[dict[str, Any]] = {"create_scheduler_fn": None}
    requires: ClassVar[tuple[str, ...]] = ("TrainingLoopMixin",)

    @override
    def setup_scheduler(self, create_scheduler_fn: Callable[..., Any] | None) -> None:
        super().setup_scheduler(create_scheduler_fn)
        self.create_scheduler_fn = create_scheduler_fn
        self.scheduler = None
        if create_scheduler_fn is not None:
            self.scheduler = self.create_scheduler()

    def create_scheduler(self) -> Any:
        """Create the scheduler from ``create_scheduler_fn`` with the placeholders resolved.
        Override to build it another way (``self.optimizer`` is the prepared optimizer)."""
        assert self.create_scheduler_fn is not None
        factory = replace_trainer_placeholder_values(self, self.create_scheduler_fn)
        return factory(self.optimizer)

    def scheduler_step(self) -> None:
        """Step the scheduler (once per optimizer update)."""
        if self.scheduler is not None:
            self.scheduler.step()

    @override
    def after_optimizer_step(self) -> None:
        super().after_optimizer_step()
        if self.scheduler is not None and not self.optimizer_step_was_skipped:
            self.scheduler_step()

    # -- run state ----------------------------------------------------------------------------

    @override
    def training_state_dict(self) -> dict[str, Any]:
        """Adds ``"scheduler"``: the scheduler's ``state_dict()`` (``None`` without one)."""
        state = super().training_state_dict()
        scheduler = self.scheduler
        has_state = scheduler is not None and hasattr(scheduler, "state_dict")
        state["scheduler"] = scheduler.state_dict() if has_state else None
        return state

    @override
    def load_training_state_dict(self, state: dict[str, Any], resume: bool = True) -> None:
        saved = state.get("scheduler")
        if resume and (saved is None) != (self.scheduler is None):
            had = "had" if saved is not None else "had no"
            raise CheckpointError(
                f"The training state {had} scheduler state, unlike this run: pass the same "
                "create_scheduler_fn as the run that saved it"
            )
        super().load_training_state_dict(state, resume)
        if self.scheduler is not None and saved is not None:
            self.scheduler.load_state_dict(saved)
