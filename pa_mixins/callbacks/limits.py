"""Callbacks that shorten epochs, for quick debugging runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pa_mixins.callbacks.core import TrainerCallback
from pa_mixins.checks import require_positive_int

if TYPE_CHECKING:
    from pa_mixins.base import BaseTrainer

__all__ = ["LimitBatchesCallback"]


class LimitBatchesCallback(TrainerCallback):
    """Run only the first ``num_batches`` batches of every training and evaluation epoch.

    The trainer asks it through ``get_train_batch_limit`` / ``get_eval_batch_limit`` at the
    start of each epoch. Setting the ``PT_ACC_LIMIT_BATCHES`` environment variable, or
    creating a trainer inside :class:`pa_mixins.utils.LimitBatches`, sets the same limit
    without the callback.
    """

    def __init__(self, num_batches: int) -> None:
        require_positive_int("num_batches", num_batches)
        self.num_batches = num_batches

    def train_batch_limit(self, trainer: BaseTrainer, **kwargs: Any) -> int:
        """The number of micro-batches of each training epoch."""
        return self.num_batches

    def eval_batch_limit(self, trainer: BaseTrainer, **kwargs: Any) -> int:
        """The number of batches of each evaluation epoch."""
        return self.num_batches
