"""``SchedulerMixin``: a learning-rate (or other) scheduler stepped once per optimizer update."""

from __future__ import annotations

from typing import Any, ClassVar

from typing_extensions import override

from pa_mixins.base import BaseTrainer
from pa_mixins.placeholders import replace_trainer_placeholder_values

__all__ = ["SchedulerMixin"]


class SchedulerMixin(BaseTrainer):
    """Adds the ``create_scheduler_fn`` argument of ``train()``.

    The scheduler is created after the loaders are prepared and the run config exists (so
    :class:`~pa_mixins.TrainerPlaceholderValues` resolve to this run's per-process update
    counts), is never handed to Accelerate (which would step it once per process), and steps
    once per real optimizer update: not on accumulation micro-batches, and not after an fp16
    update that was skipped because its gradients overflowed.
    """

    train_options: ClassVar[dict[str, Any]] = {"create_scheduler_fn": None}

    @override
    def _setup_scheduler(self) -> None:
        super()._setup_scheduler()
        self.scheduler = self.create_scheduler() if self.create_scheduler_fn is not None else None

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
    def _after_optimizer_step(self) -> None:
        super()._after_optimizer_step()
        if self.scheduler is not None and not self.optimizer_step_was_skipped:
            self.scheduler_step()
