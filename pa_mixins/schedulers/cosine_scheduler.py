"""``CosineLrScheduler``: linear warmup, cosine annealing with k-decay, then a cooldown."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, cast

import torch

from pa_mixins.placeholders import TrainerPlaceholderValues
from pa_mixins.schedulers.scheduler_base import Count, StatefulSchedulerBase, linear_warmup

__all__ = ["CosineLrScheduler"]


class CosineLrScheduler(StatefulSchedulerBase):
    """Cosine annealing of the learning rate (SGDR, arXiv 1608.03983, without restarts), with
    optional warmup and cooldown and the k-decay option (arXiv 2004.05909).

    With ``T`` total updates, ``W`` warmup and ``C`` cooldown updates (epochs times
    ``num_update_steps_per_epoch``), the learning rate of a group with peak ``lr_max`` (its
    learning rate when the scheduler is created) and minimum ``lr_lo`` for step ``n`` (the
    number of updates completed, see :mod:`pa_mixins.schedulers.scheduler_base`) is:

    * warmup, ``0 <= n < W``: linear from the starting lr at ``n = 0`` up to ``lr_max``,
      reached exactly at ``n = W - 1``;
    * cosine, ``W <= n < T - C``, with ``m = n - W`` and ``D = T - W - C``:
      ``lr_lo + 0.5 * (lr_max - lr_lo) * (1 + cos(pi * (m / D) ** k_decay))``, which starts
      at ``lr_max``;
    * cooldown, ``T - C <= n``: ``lr_lo``, for exactly the ``C`` cooldown updates and for any
      step after the end of the schedule.

    ``lr_lo`` is ``min_lr_ratio * lr_max`` if ``min_lr_ratio`` is given, else ``lr_min``; the
    starting lr is ``warmup_starting_lr_ratio * lr_max`` if that ratio is given, else
    ``warmup_starting_lr``. Step it once after each optimizer update (the trainer does).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_num_epochs: int,
        num_update_steps_per_epoch: int,
        k_decay: float = 1.0,
        lr_min: float = 1e-6,
        min_lr_ratio: float | None = None,
        num_warmup_epochs: int = 0,
        warmup_starting_lr: float = 1e-6,
        warmup_starting_lr_ratio: float | None = None,
        num_cooldown_epochs: int = 0,
    ) -> None:
        """
        :param optimizer: the optimizer; each group's current lr is its peak lr.
        :param total_num_epochs: epochs in the schedule, warmup and cooldown included.
        :param num_update_steps_per_epoch: optimizer updates per epoch.
        :param k_decay: the k of k-decay; above 1 keeps the lr high for longer.
        :param lr_min: the minimum lr of every group (used when ``min_lr_ratio`` is ``None``).
        :param min_lr_ratio: the minimum lr of each group as a fraction of its peak lr.
        :param num_warmup_epochs: epochs of linear warmup (may be fractional).
        :param warmup_starting_lr: the lr of every group at step 0 when there is a warmup.
        :param warmup_starting_lr_ratio: the starting lr of each group as a fraction of its
            peak lr; takes precedence over ``warmup_starting_lr``.
        :param num_cooldown_epochs: epochs at the minimum lr at the end (may be fractional).
        """
        super().__init__(optimizer)
        if total_num_epochs <= 0 or num_update_steps_per_epoch <= 0:
            raise ValueError(
                "total_num_epochs and num_update_steps_per_epoch must be positive, got "
                f"{total_num_epochs} and {num_update_steps_per_epoch}"
            )
        if lr_min < 0 or (min_lr_ratio is not None and min_lr_ratio < 0):
            raise ValueError("lr_min and min_lr_ratio must not be negative")
        if k_decay <= 0:
            raise ValueError(f"k_decay must be positive, got {k_decay}")
        if num_warmup_epochs < 0 or num_cooldown_epochs < 0:
            raise ValueError("num_warmup_epochs and num_cooldown_epochs must not be negative")
        self.total_iterations = int(total_num_epochs * num_update_steps_per_epoch)
        self.warmup_iterations = int(num_warmup_epochs * num_update_steps_per_epoch)
        self.num_cooldown_iterations = int(num_cooldown_epochs * num_update_steps_per_epoch)
        if self.warmup_iterations + self.num_cooldown_iterations > self.total_iterations:
            raise ValueError(
                f"{self.warmup_iterations} warmup and {self.num_cooldown_iterations} cooldown "
                f"updates do not fit in the {self.total_iterations} updates of the schedule"
            )
        self.lr_min = lr_min
        self.lr_min_ratio = min_lr_ratio
        self.warmup_lr_init = warmup_starting_lr
        self.warmup_lr_ratio = warmup_starting_lr_ratio
        self.k_decay = k_decay
        self.step_update(self._num_updates)

    def _min_values(self) -> list[float]:
        """The minimum lr of each group."""
        if self.lr_min_ratio is not None:
            return [self.lr_min_ratio * lr_max for lr_max in self.base_lr_values]
        return [self.lr_min] * len(self.base_lr_values)

    def _warmup_start_values(self) -> list[float]:
        """The lr of each group at step 0 of the warmup."""
        if self.warmup_lr_ratio is not None:
            return [self.warmup_lr_ratio * lr_max for lr_max in self.base_lr_values]
        return [self.warmup_lr_init] * len(self.base_lr_values)

    def get_updated_values(self, num_updates: int) -> list[float]:
        """The lr of each group for step ``num_updates`` (see the class docstring)."""
        num_updates = max(num_updates, 0)
        if num_updates < self.warmup_iterations:
            starts = self._warmup_start_values()
            return [
                linear_warmup(start, lr_max, num_updates, self.warmup_iterations)
                for start, lr_max in zip(starts, self.base_lr_values, strict=True)
            ]
        cosine_end = self.total_iterations - self.num_cooldown_iterations
        if num_updates < cosine_end:
            cosine_length = cosine_end - self.warmup_iterations
            progress = (num_updates - self.warmup_iterations) / cosine_length
            factor = 0.5 * (1.0 + math.cos(math.pi * progress**self.k_decay))
            return [
                lr_lo + (lr_max - lr_lo) * factor
                for lr_lo, lr_max in zip(self._min_values(), self.base_lr_values, strict=True)
            ]
        return self._min_values()

    @classmethod
    def create_scheduler_fn(
        cls,
        total_num_epochs: Count = TrainerPlaceholderValues.NUM_EPOCHS,
        num_update_steps_per_epoch: Count = TrainerPlaceholderValues.NUM_UPDATE_STEPS_PER_EPOCH,
        k_decay: float = 1.0,
        lr_min: float = 1e-6,
        min_lr_ratio: float | None = None,
        num_warmup_epochs: int = 0,
        warmup_starting_lr: float = 1e-6,
        warmup_starting_lr_ratio: float | None = None,
        num_cooldown_epochs: int = 0,
    ) -> partial[CosineLrScheduler]:
        """Return a ``functools.partial`` that takes the optimizer and creates the scheduler,
        for ``Trainer.train(create_scheduler_fn=...)``::

            trainer.train(..., create_scheduler_fn=CosineLrScheduler.create_scheduler_fn(
                num_warmup_epochs=1, num_cooldown_epochs=1))

        The epoch count and updates per epoch default to placeholders that the trainer
        replaces with the run's values. The other arguments are those of the constructor.
        """
        factory = cast(Callable[..., CosineLrScheduler], cls)
        return partial(
            factory,
            total_num_epochs=total_num_epochs,
            num_update_steps_per_epoch=num_update_steps_per_epoch,
            k_decay=k_decay,
            lr_min=lr_min,
            min_lr_ratio=min_lr_ratio,
            num_warmup_epochs=num_warmup_epochs,
            warmup_starting_lr=warmup_starting_lr,
            warmup_starting_lr_ratio=warmup_starting_lr_ratio,
            num_cooldown_epochs=num_cooldown_epochs,
        )

    def state_dict(self) -> dict[str, Any]:
        """The schedule's settings, the peak lrs and the update counter (``num_updates``)."""
        return {
            "total_iterations": self.total_iterations,
            "lr_min_ratio": self.lr_min_ratio,
            "lr_min": self.lr_min,
            "warmup_iterations": self.warmup_iterations,
            "warmup_lr_init": self.warmup_lr_init,
            "warmup_lr_ratio": self.warmup_lr_ratio,
            "k_decay": self.k_decay,
            "num_cooldown_iterations": self.num_cooldown_iterations,
            "num_updates": self._num_updates,
            "base_lr_values": list(self.base_lr_values),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` (pytorch-accelerated's format, without
        ``base_lr_values``, is accepted too) and set the lr for the restored step."""
        self.total_iterations = state_dict["total_iterations"]
        self.lr_min_ratio = state_dict["lr_min_ratio"]
        self.lr_min = state_dict["lr_min"]
        self.warmup_iterations = state_dict["warmup_iterations"]
        self.warmup_lr_init = state_dict["warmup_lr_init"]
        self.warmup_lr_ratio = state_dict["warmup_lr_ratio"]
        self.k_decay = state_dict["k_decay"]
        self.num_cooldown_iterations = state_dict["num_cooldown_iterations"]
        self._num_updates = state_dict["num_updates"]
        if "base_lr_values" in state_dict:
            self.base_lr_values = list(state_dict["base_lr_values"])
        self.step_update(self._num_updates)
