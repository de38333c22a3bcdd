"""``GradientAccumulationMixin``: several micro-batches per optimizer update, exactly."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from typing_extensions import override

from pa_mixins.base import BaseTrainer, BatchOutput
from pa_mixins.data import loader_length

__all__ = ["GradientAccumulationMixin"]


class GradientAccumulationMixin(BaseTrainer):
    """Adds the ``gradient_accumulation_steps`` argument of ``train()``.

    * Micro-batches that do not end an update run without gradient synchronisation between
      processes.
    * Each micro-batch's loss is divided by the number of micro-batches of its update, also for
      a last, shorter group at the end of an epoch: equal-size micro-batches give exactly the
      gradient of the big batch (8 x 4 steps = batch 32).
    * The recorded ``train_loss_epoch`` is the true mean loss, whatever the accumulation.
    * When ``calculate_train_batch_loss`` returns ``num_items_in_batch`` (the number of items,
      e.g. tokens, its mean ``loss`` is over), the update's gradient is the mean over every item
      of the update on every process, however the items are spread over micro-batches and
      processes.
    """

    train_options: ClassVar[dict[str, Any]] = {"gradient_accumulation_steps": 1}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._group_size = 0
        self._items_in_group: torch.Tensor | None = None
        self._epoch_num_batches: int | None = None
        self._measured_loader: Any = None
        super().__init__(*args, **kwargs)

    @property
    def _accumulation_steps(self) -> int:
        return self.run_config.gradient_accumulation_steps if self.run_config is not None else 1

    @override
    def _is_update_step(self, step: int) -> bool:
        steps = self._accumulation_steps
        if steps == 1:
            return super()._is_update_step(step)
        dataloader = self._train_dataloader
        if dataloader is not self._measured_loader:  # a new run, or a wrapped loader
            self._measured_loader = dataloader
            self._epoch_num_batches = loader_length(dataloader)
        return (step + 1) % steps == 0 or (step + 1) == self._epoch_num_batches

    @override
    def _loss_for_backward(self, batch_output: BatchOutput) -> torch.Tensor:
        loss = super()._loss_for_backward(batch_output)
        num_items = batch_output.get("num_items_in_batch")
        if num_items is not None:
            num_items = torch.as_tensor(num_items, device=loss.device, dtype=torch.float32)
            self._items_in_group = (
                num_items if self._items_in_group is None else self._items_in_group + num_items
            )
            self._group_size += 1
            return loss * num_items
        steps = self._accumulation_steps
        if steps == 1:
            return loss
        self._group_size += 1
        return loss / steps

    @override
    def _before_optimizer_step(self) -> None:
        if self._items_in_group is not None:
            # Gradients now hold (1/P) * the sum over processes of every item's loss gradient
            # (DDP averages over the P processes): make them the mean over all the items.
            total_items = self.reduce_sum(self._items_in_group)
            self._scale_gradients(getattr(self, "num_processes", 1) / total_items.clamp_min(1))
        elif 0 < self._group_size < self._accumulation_steps:
            # A last, shorter group: its losses were divided by the full group size.
            self._scale_gradients(self._accumulation_steps / self._group_size)
        self._group_size = 0
        self._items_in_group = None
        super()._before_optimizer_step()

    def _scale_gradients(self, factor: float | torch.Tensor) -> None:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if grads:
            if isinstance(factor, torch.Tensor):
                factor = factor.to(grads[0].dtype)
            torch._foreach_mul_(grads, factor)

    @override
    def _finish_pending_update(self) -> None:
        super()._finish_pending_update()
        if self._group_size > 0:
            self._perform_optimizer_update()
