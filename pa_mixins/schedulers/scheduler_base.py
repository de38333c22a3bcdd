"""Base classes for schedulers that set a field of an optimizer's parameter groups.

What "step ``n``" means, for every scheduler of this package: ``n`` is the number of optimizer
updates already completed, so the value for step ``n`` is the one that optimizer update number
``n`` (counting from 0) uses. A stateful scheduler applies the value for step 0 when it is
created; the trainer calls its :meth:`~StatefulSchedulerBase.step` once after each optimizer
update (as it does for torch schedulers), which advances it to the next step. After ``k``
updates it therefore holds the value for step ``k``, the one the next update will use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

from pa_mixins.placeholders import PlaceholderExpression, TrainerPlaceholderValues

__all__ = ["Count", "ParamValues", "SchedulerBase", "StatefulSchedulerBase", "linear_warmup"]

#: what :meth:`SchedulerBase.get_updated_values` returns: nothing to change, one value for
#: every parameter group, or one value per group
ParamValues = float | Sequence[float] | None

#: a count given to a ``create_scheduler_fn``: a number, or a placeholder the trainer resolves
Count = int | TrainerPlaceholderValues | PlaceholderExpression


def linear_warmup(start: float, peak: float, step: int, num_warmup_steps: int) -> float:
    """The warmup value for ``step`` (``0 <= step < num_warmup_steps``): ``start`` at step 0,
    then equal increments that reach ``peak`` exactly at the last warmup step
    (``num_warmup_steps - 1``). A one-step warmup stays at ``start``."""
    return start + (peak - start) * step / max(num_warmup_steps - 1, 1)


class SchedulerBase(ABC):
    """Set one field (``"lr"`` by default) of every parameter group of an optimizer from the
    number of optimizer updates completed.

    This class is stateless: call :meth:`step_update` with the number of updates completed
    after each update, as timm's schedulers expect::

        num_updates = 0
        for batch in loader:
            ...
            optimizer.step()
            num_updates += 1
            scheduler.step_update(num_updates)

    The value each group had when the scheduler was created is stored in the group as
    ``initial_<field>`` (an existing one, e.g. from an earlier scheduler, is kept) and is
    available as :attr:`base_lr_values`. Subclasses implement :meth:`get_updated_values`.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, param_group_field: str = "lr") -> None:
        """
        :param optimizer: the optimizer whose parameter groups are scheduled.
        :param param_group_field: the parameter-group field to schedule (e.g. ``"lr"`` or
            ``"weight_decay"``); every group must have it.
        """
        self.optimizer = optimizer
        self.param_group_field = param_group_field
        self._initial_param_group_field = f"initial_{param_group_field}"
        for index, group in enumerate(optimizer.param_groups):
            if param_group_field not in group:
                raise KeyError(f"{param_group_field!r} missing from param_groups[{index}]")
            group.setdefault(self._initial_param_group_field, group[param_group_field])
        #: the value of the field of each group before scheduling (the "peak" values)
        self.base_lr_values: list[float] = [
            group[self._initial_param_group_field] for group in optimizer.param_groups
        ]
        self._update_param_groups(self.base_lr_values)

    @abstractmethod
    def get_updated_values(self, num_updates: int) -> ParamValues:
        """Return the value(s) for step ``num_updates`` (the number of updates completed).

        :return: ``None`` to leave the groups unchanged, one number for every group, or a
            list or tuple with one number per group.
        """

    def step_update(self, num_updates: int) -> None:
        """Set the field of every group to its value for step ``num_updates``."""
        values = self.get_updated_values(num_updates)
        if values is not None:
            self._update_param_groups(values)

    def _update_param_groups(self, values: float | Sequence[float]) -> None:
        """Write ``values`` (one for all groups, or one per group) into the groups."""
        groups = self.optimizer.param_groups
        if isinstance(values, (list, tuple)):
            if len(values) != len(groups):
                raise ValueError(
                    f"{type(self).__name__} returned {len(values)} values for "
                    f"{len(groups)} parameter groups"
                )
            per_group: Sequence[float] = values
        else:
            per_group = [values] * len(groups)  # type: ignore[list-item]
        for group, value in zip(groups, per_group, strict=True):
            group[self.param_group_field] = value

    def current_values(self) -> list[float]:
        """The field's current value in each parameter group."""
        return [group[self.param_group_field] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Every attribute except the optimizer (which is saved on its own)."""
        return {key: value for key, value in self.__dict__.items() if key != "optimizer"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the attributes saved by :meth:`state_dict`."""
        self.__dict__.update(state_dict)


class StatefulSchedulerBase(SchedulerBase, ABC):
    """A scheduler that counts the optimizer updates itself, with the interface of torch's
    schedulers: call :meth:`step` once after every optimizer update.

    ``_num_updates`` is the number of updates completed: 0 when the scheduler is created,
    ``k`` after ``k`` calls of :meth:`step`. A subclass applies the value for step 0 at the end
    of its ``__init__`` (``self.step_update(self._num_updates)``) and saves ``_num_updates`` in
    its :meth:`state_dict`, so that a resumed run continues the schedule where it stopped.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, param_group_field: str = "lr") -> None:
        """
        :param optimizer: the optimizer whose parameter groups are scheduled.
        :param param_group_field: the parameter-group field to schedule.
        """
        super().__init__(optimizer=optimizer, param_group_field=param_group_field)
        self._num_updates = 0

    def step(self) -> None:
        """Record one more completed optimizer update and apply the value for the next one."""
        self._num_updates += 1
        self.step_update(self._num_updates)

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state, including the update counter."""

    @abstractmethod
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict`."""
