"""Argument and return-value checks shared by the loops: each error names the problem."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = [
    "batch_is_not_a_pair",
    "check_batch_output",
    "check_dataset",
    "check_loss_func",
    "check_model_and_optimizer",
    "reads_loss_func",
    "require_positive_int",
    "require_positive_number",
]

_Hook = TypeVar("_Hook", bound=Callable[..., Any])


def require_positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    """Raise a ``ValueError`` unless ``value`` is an ``int`` >= 1 (or ``None`` if allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def require_positive_number(name: str, value: Any) -> None:
    """Raise a ``ValueError`` unless ``value`` is ``None`` or a number > 0."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def check_batch_output(batch_output: Any, hook: str) -> None:
    """Raise a ``ValueError`` naming ``hook`` unless ``batch_output`` is a dict with ``loss``
    and ``batch_size`` (what the loops read)."""
    if isinstance(batch_output, dict) and "loss" in batch_output and "batch_size" in batch_output:
        return
    found = sorted(batch_output) if isinstance(batch_output, dict) else type(batch_output).__name__
    raise ValueError(
        f"{hook} must return a dict with the keys 'loss', 'model_outputs' and 'batch_size'; "
        f"got {found}"
    )


# -- careless input (issue 13 part 5): clear errors before the first step -------------------------


def reads_loss_func(hook: _Hook) -> _Hook:
    """Mark a default hook that calls ``self.loss_func`` (so :func:`check_loss_func` checks
    the loss only while that hook is not overridden)."""
    hook.reads_loss_func = True  # type: ignore[attr-defined]
    return hook


def check_loss_func(trainer: Any, hooks: tuple[str, ...]) -> None:
    """Raise before anything runs if one of ``hooks`` is a default that calls
    ``trainer.loss_func`` and the loss cannot be called (``None``, or an optimizer: the
    loss and the optimizer given in each other's place)."""
    loss_func = trainer.loss_func
    if isinstance(loss_func, torch.optim.Optimizer):
        raise TypeError(
            f"loss_func is an optimizer ({type(loss_func).__name__}): the loss function and the "
            "optimizer seem swapped. The order is Trainer(model, loss_func, optimizer); pass "
            "them by name to be sure: Trainer(model, loss_func=..., optimizer=...)"
        )
    if loss_func is not None and callable(loss_func):
        return
    for hook in hooks:
        if getattr(getattr(type(trainer), hook, None), "reads_loss_func", False):
            got = "None" if loss_func is None else f"a {type(loss_func).__name__}"
            raise TypeError(
                f"loss_func is {got}, but the default {hook} calls "
                "self.loss_func(model_outputs, targets): create the trainer with a loss "
                f"function (e.g. loss_func=torch.nn.CrossEntropyLoss()), or override {hook}"
            )


def check_model_and_optimizer(model: nn.Module, optimizer: Any) -> None:
    """Raise before training if the optimizer cannot train ``model``: a loss module passed as
    the optimizer (the two swapped), an optimizer none of whose parameters requires a
    gradient (everything frozen), or one over none of the model's parameters (another
    model's). Optimizers of engines (not a ``torch.optim.Optimizer``) are not inspected."""
    if isinstance(optimizer, nn.Module):
        raise TypeError(
            f"optimizer is a module ({type(optimizer).__name__}), not an optimizer: the loss "
            "function and the optimizer seem swapped. The order is Trainer(model, loss_func, "
            "optimizer); pass them by name to be sure: Trainer(model, loss_func=..., "
            "optimizer=...)"
        )
    inner = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper
    if not isinstance(inner, torch.optim.Optimizer):
        return
    params = [p for group in inner.param_groups for p in group["params"]]
    if not any(p.requires_grad for p in params):
        raise ValueError(
            "none of the optimizer's parameters requires a gradient (every parameter is "
            "frozen), so training would change nothing: unfreeze some (e.g. "
            "ModelFreezer.unfreeze(), or p.requires_grad_(True)) before train()"
        )
    model_params = {id(p) for p in model.parameters()}
    if not any(id(p) in model_params for p in params):
        raise ValueError(
            "none of the optimizer's parameters belongs to the trainer's model, so training "
            "would change nothing: create the optimizer from this model's parameters, e.g. "
            "torch.optim.SGD(model.parameters(), lr=...), after any copy or replacement of "
            "the model"
        )


def check_dataset(dataset: Any, argument: str) -> None:
    """Raise if ``dataset`` (or a value of a dict of named datasets) is a bare tensor (a
    ``DataLoader`` would yield slices of its rows, with no targets)."""
    datasets = dataset.values() if isinstance(dataset, Mapping) else [dataset]
    for value in datasets:
        if isinstance(value, torch.Tensor):
            raise TypeError(
                f"{argument} is a bare tensor, which would train on slices of its rows without "
                "targets: wrap inputs and targets in a dataset, e.g. "
                "torch.utils.data.TensorDataset(inputs, targets)"
            )


def batch_is_not_a_pair(batch: Any, hook: str) -> TypeError:
    """The error of a default hook (which reads ``batch[0]`` and ``batch[1]``) given a batch
    that is not an ``(inputs, targets)`` pair, e.g. a dict."""
    if isinstance(batch, Mapping):
        found = f"dicts with the keys {sorted(map(str, batch))}"
    else:
        found = f"of type {type(batch).__name__}"
    return TypeError(
        f"the default {hook} reads batch[0] as the inputs and batch[1] as the targets, but the "
        f"batches are {found}: override {hook} to read your batches (see the hook's docstring), "
        "or make the dataset return (inputs, targets) pairs"
    )
