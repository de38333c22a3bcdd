"""``TimmSchedulerMixin``: drive a scheduler with timm's interface.

timm's schedulers are told the position explicitly: ``step_update(num_updates=n)`` after each
optimizer update (``n`` = updates completed in the run) and ``step(epoch)`` at the end of each
epoch (``epoch`` = epochs completed). Which of the two changes the lr depends on the
scheduler's ``t_in_epochs`` setting; calling both is what timm's own training script does.
"""

from __future__ import annotations

from typing_extensions import override

from pa_mixins.mixins.scheduling import SchedulerMixin

__all__ = ["TimmSchedulerMixin"]


class TimmSchedulerMixin(SchedulerMixin):
    """Steps a timm-style scheduler: ``step_update`` with the number of optimizer updates
    completed in the run (updates, not micro-batches, so gradient accumulation is counted
    right, and continuing from the restored count when a run is resumed), and ``step`` with
    the number of epochs completed at the end of each training epoch (with or without an
    evaluation set). A scheduler that needs a metric in ``step`` (plateau schedulers) needs an
    override of :meth:`train_epoch_end` or of ``eval_epoch_end`` that passes it.

    Reads the loop's public :attr:`num_updates` and ``epochs_completed``; overrides
    ``scheduler_step`` and extends ``train_epoch_end``. Put it left of ``Trainer``, e.g.
    ``class T(TimmSchedulerMixin, Trainer)``.
    """

    @override
    def scheduler_step(self) -> None:
        """After each optimizer update: ``scheduler.step_update(num_updates=n)``, ``n``
        counting the update that just happened (the loop counts it right after this call).
        Updates skipped by fp16 overflow are counted but not stepped for."""
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=self.num_updates + 1)

    def train_epoch_end(self) -> None:
        """At the end of each training epoch: ``scheduler.step(epochs_completed)``."""
        if self.scheduler is not None:
            self.scheduler.step(self.epochs_completed + 1)  # type: ignore[attr-defined]
        super().train_epoch_end()  # type: ignore[misc]  # the loop's hook
