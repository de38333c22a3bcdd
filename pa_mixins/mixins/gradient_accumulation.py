"""``GradientAccumulationMixin``: several micro-batches per optimizer update, exactly."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from typing_extensions import override

from pa_mixins.base import BaseTrainer, BatchOutput
from pa_mixins.checkpoint_format import CheckpointError

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

    Owns the open accumulation group (its size, its item count and, in a training state, its
    gradients: state keys ``"gradient_accumulation"``). Extends ``is_update_step``,
    ``loss_for_backward``, ``before_optimizer_step``, ``has_pending_update`` and
    ``reset_run_state``.
    """

    train_options: ClassVar[dict[str, Any]] = {"gradient_accumulation_steps": 1}
    requires: ClassVar[tuple[str, ...]] = ("TrainingLoopMixin",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._group_size = 0
        #: what the current micro-batch's loss is divided by: its group's size when known
        self._group_divisor = 1
        self._items_in_group: torch.Tensor | None = None
        super().__init__(*args, **kwargs)

    @property
    def _accumulation_steps(self) -> int:
        return self.run_config.gradient_accumulation_steps if self.run_config is not None else 1

    @override
    def reset_run_state(self) -> None:
        super().reset_run_state()
        self._group_size = 0  # a new run starts with no open group
        self._group_divisor = 1
        self._items_in_group = None

    @override
    def is_update_step(self, step: int) -> bool:
        steps = self._accumulation_steps
        if steps == 1:
            return super().is_update_step(step)
        length = self.batches_in_epoch
        # The size of this micro-batch's group, exact when the epoch's length is known (a last,
        # shorter group included), so its loss is divided by it before the backward pass.
        group_start = step - step % steps
        self._group_divisor = steps if length is None else min(steps, length - group_start)
        return (step + 1) % steps == 0 or (step + 1) == length

    @override
    def loss_for_backward(self, batch_output: BatchOutput) -> torch.Tensor:
        loss = super().loss_for_backward(batch_output)
        num_items = batch_output.get("num_items_in_batch")
        if num_items is not None:
            if self.engine is not None:
                raise ValueError(
                    "num_items_in_batch cannot be used under DeepSpeed, whose engine owns the "
                    "gradients: return a loss already averaged the way you want instead"
                )
            num_items = torch.as_tensor(num_items, device=loss.device, dtype=torch.float32)
            self._items_in_group = (
                num_items if self._items_in_group is None else self._items_in_group + num_items
            )
            self._group_size += 1
            return loss * num_items
        if self._accumulation_steps == 1:
            return loss
        self._group_size += 1
        return loss / self._group_divisor

    @override
    def before_optimizer_step(self) -> None:
        if self._items_in_group is not None:
            # Gradients now hold (1/P) * the sum over processes of every item's loss gradient
            # (DDP averages over the P processes): make them the mean over all the items.
            total_items = self.reduce_sum(self._items_in_group)
            self._scale_gradients(self.num_processes / total_items.clamp_min(1))
        elif 0 < self._group_size < self._group_divisor:
            # A last, shorter group of a loader without a length: its losses were divided by
            # the full group size.
            self._scale_gradients(self._group_divisor / self._group_size)
        self._group_size = 0
        self._items_in_group = None
        super().before_optimizer_step()

    def _scale_gradients(self, factor: float | torch.Tensor) -> None:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if grads:
            if isinstance(factor, torch.Tensor):
                factor = factor.to(grads[0].dtype)
            torch._foreach_mul_(grads, factor)

    @override
    def has_pending_update(self) -> bool:
        return super().has_pending_update() or self._group_size > 0

    # -- run state ----------------------------------------------------------------------------

    @override
    def training_state_dict(self) -> dict[str, Any]:
        """Adds ``"gradient_accumulation"``: the number of micro-batches per update."""
        state = super().training_state_dict()
        state["gradient_accumulation"] = {"steps": self._accumulation_steps}
        return state

    @override
    def load_training_state_dict(self, state: dict[str, Any], resume: bool = True) -> None:
        saved = state["gradient_accumulation"]["steps"]
        if resume and saved != self._accumulation_steps:
            raise CheckpointError(
                f"The training state was saved with gradient_accumulation_steps={saved}; this "
                f"run uses {self._accumulation_steps}"
            )
        super().load_training_state_dict(state, resume)

    @override
    def process_state_dict(self) -> dict[str, Any]:
        """Adds ``"gradient_accumulation"``: the open group (its size, item count and
        gradients), empty between updates."""
        state = super().process_state_dict()
        open_group = self._group_size > 0
        state["gradient_accumulation"] = {
            "group_size": self._group_size,
            "items_in_group": self._items_in_group,
            "grads": [p.grad for p in self.model.parameters()] if open_group else None,
        }
        return state

    @override
    def load_process_state_dict(self, state: dict[str, Any], resume: bool = True) -> None:
        super().load_process_state_dict(state, resume)
        own = state["gradient_accumulation"]
        if not resume or not own["group_size"]:
            return
        device = self.device
        self._group_size = int(own["group_size"])
        items = own["items_in_group"]
        self._items_in_group = items.to(device) if isinstance(items, torch.Tensor) else items
        for param, grad in zip(self.model.parameters(), own["grads"], strict=True):
            param.grad = None if grad is None else grad.to(param.device)
