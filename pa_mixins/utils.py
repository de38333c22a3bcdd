"""Helpers with the same names as in pytorch-accelerated's ``utils`` module.

The process decorators read the process roles from ``torch.distributed`` (and the launcher's
environment variables before a process group exists). They never create Accelerate's
``PartialState``: creating one before the trainer's ``Accelerator`` would pin every rank of a
CPU launch to "rank 0 of 1".
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Iterator
from copy import deepcopy
from functools import wraps
from itertools import islice
from types import TracebackType
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = [
    "LIMIT_BATCHES_ENV_VAR",
    "DataLoaderSlice",
    "LimitBatches",
    "ModelEma",
    "local_process_zero_first",
    "local_process_zero_only",
    "remove_padding",
    "worker_init_fn",
    "world_process_zero_only",
]

LIMIT_BATCHES_ENV_VAR = "PT_ACC_LIMIT_BATCHES"

T = TypeVar("T")


def limit_batches_from_env() -> int | None:
    """The batch limit set through :data:`LIMIT_BATCHES_ENV_VAR`, or ``None``."""
    value = os.environ.get(LIMIT_BATCHES_ENV_VAR)
    if value is None or value.strip().lower() == "none":
        return None
    try:
        limit = int(value)
    except ValueError:
        raise ValueError(
            f"{LIMIT_BATCHES_ENV_VAR} must be a positive integer or 'none', got {value!r}"
        ) from None
    if limit < 1:
        raise ValueError(f"{LIMIT_BATCHES_ENV_VAR} must be a positive integer, got {limit}")
    return limit


class LimitBatches:
    """Context manager: trainers created inside it run only ``num_batches`` batches per epoch.

    It sets :data:`LIMIT_BATCHES_ENV_VAR`, which a trainer reads when it is constructed (and
    then keeps its ``LimitBatchesCallback``). Setting the variable by hand has the same effect.
    """

    def __init__(self, num_batches: int) -> None:
        self.num_batches = num_batches
        self._previous: str | None = None

    def __enter__(self) -> LimitBatches:
        self._previous = os.environ.get(LIMIT_BATCHES_ENV_VAR)
        os.environ[LIMIT_BATCHES_ENV_VAR] = str(self.num_batches)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._previous is None:
            os.environ.pop(LIMIT_BATCHES_ENV_VAR, None)
        else:
            os.environ[LIMIT_BATCHES_ENV_VAR] = self._previous


class DataLoaderSlice:
    """Iterate over the first ``slice_size`` batches of a dataloader.

    ``len()`` is the number of batches it really yields (the smaller of ``slice_size`` and the
    wrapped loader's length). Attributes not defined here are looked up on the wrapped loader.
    """

    def __init__(self, dl: Iterable[Any], slice_size: int) -> None:
        self.dl = dl
        self.slice_size = slice_size

    def __iter__(self) -> Iterator[Any]:
        return islice(self.dl, self.slice_size)

    def __len__(self) -> int:
        try:
            return min(len(self.dl), self.slice_size)  # type: ignore[arg-type]
        except TypeError:
            return self.slice_size

    def __getattr__(self, name: str) -> Any:
        if name == "dl":
            raise AttributeError(name)
        return getattr(self.dl, name)


# ----------------------------------------------------------------------------------------------
# Process roles
# ----------------------------------------------------------------------------------------------


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _global_rank() -> int:
    if _distributed():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", _global_rank() if _distributed() else 0))


def _barrier(decorated: Callable[..., Any]) -> None:
    if _distributed():
        torch.distributed.barrier()
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError(
            f"{decorated.__qualname__} needs the processes of this launch to wait for each other, "
            "but no process group exists yet: create the trainer (or Accelerator) before "
            "calling it."
        )


def local_process_zero_only(func: Callable[..., T]) -> Callable[..., T | None]:
    """Run ``func`` only on the first process of each machine; every process then waits for
    the others. Every process must call the decorated function; the others get ``None``."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> T | None:
        result = func(*args, **kwargs) if _local_rank() == 0 else None
        _barrier(func)
        return result

    return wrapper


def local_process_zero_first(func: Callable[..., T]) -> Callable[..., T]:
    """Run ``func`` on the first process of each machine, then on the others (e.g. to download
    or preprocess once and read from the cache everywhere else). Every process gets a result."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        is_first = _local_rank() == 0
        if not is_first:
            _barrier(func)
        result = func(*args, **kwargs)
        if is_first:
            _barrier(func)
        return result

    return wrapper


def world_process_zero_only(func: Callable[..., T]) -> Callable[..., T | None]:
    """Run ``func`` only on the global first process; every process then waits for the
    others. Every process must call the decorated function; the others get ``None``."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> T | None:
        result = func(*args, **kwargs) if _global_rank() == 0 else None
        _barrier(func)
        return result

    return wrapper


# ----------------------------------------------------------------------------------------------
# Data and models
# ----------------------------------------------------------------------------------------------


def worker_init_fn(worker_id: int) -> None:
    """Seed Python's and NumPy's random generators in a dataloader worker.

    PyTorch already gives each worker the torch seed ``base_seed + worker_id``, where
    ``base_seed`` comes from the loader's ``generator`` (or the global torch RNG). This derives
    the other generators from it, so augmentations that use ``random`` or ``numpy`` differ
    between workers and are reproducible when the run is seeded.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with accelerate
        return
    np.random.seed(seed)


def remove_padding(padded_tensor: torch.Tensor, pad_value: Any) -> torch.Tensor:
    """Drop the rows (along dim 0) whose every element equals ``pad_value``."""
    is_pad = padded_tensor == pad_value
    while is_pad.dim() > 1:
        is_pad = is_pad.all(dim=-1)
    return padded_tensor[~is_pad]


class ModelEma(nn.Module):
    """An exponential moving average of a model's weights (parameters and buffers).

    ``ema = decay * ema + (1 - decay) * weight`` at each :meth:`update`; override
    :meth:`update_fn` for another rule. Create it from the unwrapped model, before the model is
    wrapped for distributed training. The copy is frozen and in eval mode.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999) -> None:
        super().__init__()
        self.module = deepcopy(model)
        self.module.eval()
        self.module.requires_grad_(False)
        self.decay = decay

    def update_fn(
        self, ema_model_weights: torch.Tensor, model_weights: torch.Tensor
    ) -> torch.Tensor:
        """Return the new EMA value of one weight tensor (override for another rule)."""
        return self.decay * ema_model_weights + (1.0 - self.decay) * model_weights

    @torch.no_grad()
    def _apply_to_weights(
        self, model: nn.Module, rule: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> None:
        ema_state = self.module.state_dict()
        model_state = model.state_dict()
        if ema_state.keys() != model_state.keys():
            raise ValueError("ModelEma: the model's weights do not match the EMA copy's weights")
        for name, ema_weight in ema_state.items():
            weight = model_state[name].to(device=ema_weight.device)
            if ema_weight.is_floating_point():
                ema_weight.copy_(rule(ema_weight, weight))
            else:
                ema_weight.copy_(weight)

    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current weights."""
        self._apply_to_weights(model, self.update_fn)

    def set(self, model: nn.Module) -> None:
        """Copy ``model``'s weights into the average."""
        self._apply_to_weights(model, lambda ema, weight: weight)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)
