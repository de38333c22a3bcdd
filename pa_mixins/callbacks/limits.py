"""Callbacks that shorten epochs, for quick debugging runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pa_mixins.callbacks.core import TrainerCallback
from pa_mixins.utils import DataLoaderSlice

if TYPE_CHECKING:
    from pa_mixins.base import BaseTrainer

__all__ = ["LimitBatchesCallback"]


class LimitBatchesCallback(TrainerCallback):
    """Run only the first ``num_batches`` batches of every training and evaluation epoch.

    Added automatically (first in the list) when the ``PT_ACC_LIMIT_BATCHES`` environment
    variable is set or a trainer is created inside :class:`pa_mixins.utils.LimitBatches`.
    """

    def __init__(self, num_batches: int) -> None:
        self.num_batches = num_batches

    def _limit(self, dataloader: Any) -> Any:
        if dataloader is None or isinstance(dataloader, DataLoaderSlice):
            return dataloader
        return DataLoaderSlice(dataloader, self.num_batches)

    def on_training_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        trainer._train_dataloader = self._limit(trainer._train_dataloader)
        trainer._eval_dataloader = self._limit(trainer._eval_dataloader)

    def on_evaluation_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        trainer._eval_dataloader = self._limit(trainer._eval_dataloader)
