"""``TrainerPlaceholderValues``: symbolic run values for scheduler factories.

A scheduler must often know how many updates a run has, which is only known once the loaders
are built and sharded. Put a placeholder in a ``functools.partial`` and the trainer replaces it
when it creates the scheduler::

    create_scheduler_fn = partial(
        OneCycleLR, max_lr=0.01,
        epochs=TrainerPlaceholderValues.NUM_EPOCHS,
        steps_per_epoch=TrainerPlaceholderValues.NUM_UPDATE_STEPS_PER_EPOCH,
    )

Placeholders combine with numbers through ``*``, ``+`` and ``-`` (either side).

Update counts are per process: one update is one step of the replicated optimizer, which all
processes take together, so a schedule sized with them ends at the end of training whatever
the number of processes (in pytorch-accelerated, ``NUM_UPDATE_STEPS_PER_EPOCH`` counted the
updates of all processes together).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pa_mixins.base import BaseTrainer

__all__ = [
    "PlaceholderExpression",
    "TrainerPlaceholderValues",
    "replace_trainer_placeholder_values",
]


def _dataloader_length(trainer: BaseTrainer, attribute: str, what: str) -> int:
    dataloader = getattr(trainer, attribute)
    if dataloader is None:
        raise ValueError(
            f"The placeholder {what} needs a {attribute.strip('_')}, and this run has none"
        )
    try:
        if isinstance(dataloader, Mapping):  # several evaluation sets: batches of all of them
            return sum(len(loader) for loader in dataloader.values())
        return len(dataloader)
    except TypeError:
        raise ValueError(
            f"The placeholder {what} needs the length of the {attribute.strip('_')}, which has no "
            "__len__ (an IterableDataset?): pass the value explicitly"
        ) from None


def _run_config_value(trainer: BaseTrainer, field: str, what: str) -> int:
    value = getattr(trainer.run_config, field, None)
    if value is None:
        raise ValueError(
            f"The placeholder {what} needs run_config.{field}, which is unknown for this run "
            "(a training loader without __len__?): pass the value explicitly"
        )
    return int(value)


class TrainerPlaceholderValues(Enum):
    """Values resolved when the trainer creates the scheduler (see the module docstring).

    ``TRAIN_DATALOADER_LEN`` / ``EVAL_DATALOADER_LEN`` are the batches per epoch of this
    process's loader; with several evaluation sets (``eval_dataset`` a dict),
    ``EVAL_DATALOADER_LEN`` is the total over the sets (the evaluation batches after each
    epoch).
    """

    NUM_EPOCHS = "num_epochs"
    NUM_UPDATE_STEPS_PER_EPOCH = "num_update_steps_per_epoch"
    PER_PROCESS_NUM_UPDATE_STEPS_PER_EPOCH = "num_local_update_steps_per_epoch"
    TRAIN_DATALOADER_LEN = "_train_dataloader"
    EVAL_DATALOADER_LEN = "_eval_dataloader"

    @classmethod
    def placeholder_set(cls) -> set[str]:
        return {member.name for member in cls}

    def resolve(self, trainer: BaseTrainer) -> int:
        what = f"TrainerPlaceholderValues.{self.name}"
        if self.value.startswith("_"):
            return _dataloader_length(trainer, self.value, what)
        return _run_config_value(trainer, self.value, what)

    def __mul__(self, other: Any) -> PlaceholderExpression:
        return PlaceholderExpression(self, ((operator.mul, other, False),))

    __rmul__ = __mul__

    def __add__(self, other: Any) -> PlaceholderExpression:
        return PlaceholderExpression(self, ((operator.add, other, False),))

    __radd__ = __add__

    def __sub__(self, other: Any) -> PlaceholderExpression:
        return PlaceholderExpression(self, ((operator.sub, other, False),))

    def __rsub__(self, other: Any) -> PlaceholderExpression:
        return PlaceholderExpression(self, ((operator.sub, other, True),))


def _resolve(value: Any, trainer: BaseTrainer) -> Any:
    if isinstance(value, (TrainerPlaceholderValues, PlaceholderExpression)):
        return value.resolve(trainer)
    return value


@dataclass(frozen=True)
class PlaceholderExpression:
    """A placeholder combined with numbers (``NUM_EPOCHS * 5``); resolved like a placeholder."""

    placeholder: TrainerPlaceholderValues
    operations: tuple[tuple[Callable[[Any, Any], Any], Any, bool], ...] = ()

    def _then(
        self, op: Callable[[Any, Any], Any], other: Any, reverse: bool
    ) -> PlaceholderExpression:
        return PlaceholderExpression(self.placeholder, (*self.operations, (op, other, reverse)))

    def __mul__(self, other: Any) -> PlaceholderExpression:
        return self._then(operator.mul, other, False)

    __rmul__ = __mul__

    def __add__(self, other: Any) -> PlaceholderExpression:
        return self._then(operator.add, other, False)

    __radd__ = __add__

    def __sub__(self, other: Any) -> PlaceholderExpression:
        return self._then(operator.sub, other, False)

    def __rsub__(self, other: Any) -> PlaceholderExpression:
        return self._then(operator.sub, other, True)

    @property
    def name(self) -> str:
        return self.placeholder.name

    def resolve(self, trainer: BaseTrainer) -> Any:
        result: Any = self.placeholder.resolve(trainer)
        for op, other, reverse in self.operations:
            other = _resolve(other, trainer)
            result = op(other, result) if reverse else op(result, other)
        return result


def replace_trainer_placeholder_values(trainer: BaseTrainer, instance: Any) -> Any:
    """Return ``instance`` with the placeholders among a ``functools.partial``'s arguments
    (positional and keyword, nested partials included) replaced by their values for
    ``trainer``'s current run; anything else is returned unchanged."""
    if not isinstance(instance, functools.partial):
        return instance
    func = replace_trainer_placeholder_values(trainer, instance.func)
    args = [_resolve(arg, trainer) for arg in instance.args]
    keywords = {key: _resolve(value, trainer) for key, value in instance.keywords.items()}
    return functools.partial(func, *args, **keywords)
