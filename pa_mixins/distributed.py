"""What several processes need beyond Accelerate, with ``torch.distributed`` alone: the
agreement on a stop, buffers taken from the first process, the process-group timeout and a
clean shutdown. The adapter (``AccelerateMixin``) calls these; nothing here imports
accelerate."""

from __future__ import annotations

import atexit
import pickle
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from pa_mixins.callback_base import StopTrainingError

__all__ = [
    "DEFAULT_PROCESS_GROUP_TIMEOUT_S",
    "PendingStopAgreement",
    "StopFlagInGradients",
    "agreed_stop",
    "as_timedelta",
    "broadcast_buffers_from_main",
    "carry_stop_flag",
    "register_exit_handler",
    "start_stop_agreement",
]

#: default of ``AccelerateMixin(process_group_timeout=...)``, in seconds
DEFAULT_PROCESS_GROUP_TIMEOUT_S = 1800.0


def as_timedelta(timeout: float | timedelta) -> timedelta:
    if isinstance(timeout, timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        raise TypeError(
            f"process_group_timeout must be a number of seconds or a timedelta, got {timeout!r}"
        )
    if not seconds > 0:
        raise ValueError(f"process_group_timeout must be positive, got {timeout!r}")
    return timedelta(seconds=seconds)


def _destroy_process_group_at_exit() -> None:
    # Without this, gloo's threads can abort the interpreter at shutdown ("terminate called
    # without an active exception") even after a successful run.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


_exit_handler_registered = False

_stop_groups: dict[int, Any] = {}


def _picklable(error: StopTrainingError | None) -> StopTrainingError | None:
    """``error`` itself when it can be sent to the other processes, else a plain copy."""
    if error is None:
        return None
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return StopTrainingError(str(error))
    return error


def _stop_agreement_group(timeout: timedelta) -> Any:
    """The process group for stop agreements: the default group when it is gloo, else one
    gloo group (created once per process group, by every process at the same point)."""
    if torch.distributed.get_backend() == "gloo":
        return None
    key = id(torch.distributed.group.WORLD)
    if key not in _stop_groups:
        _stop_groups[key] = torch.distributed.new_group(backend="gloo", timeout=timeout)
    return _stop_groups[key]


def register_exit_handler() -> None:
    global _exit_handler_registered
    if not _exit_handler_registered:
        atexit.register(_destroy_process_group_at_exit)
        _exit_handler_registered = True


class PendingStopAgreement:
    """A stop agreement whose flag all-reduce is under way (see :func:`start_stop_agreement`);
    :meth:`result` finishes it."""

    def __init__(self, error: StopTrainingError | None, timeout: timedelta) -> None:
        self.error = error
        self._group = _stop_agreement_group(timeout)
        self._flag = torch.tensor([0 if error is None else 1], dtype=torch.int32)
        self._work = torch.distributed.all_reduce(self._flag, group=self._group, async_op=True)

    def result(self) -> StopTrainingError | None:
        """Every process gets the same answer: ``None`` when no process held a stop, else the
        error of the lowest process that held one (this process's own error if it held one),
        with ``process_index`` set to that process's."""
        self._work.wait()
        if int(self._flag.item()) == 0:
            return None
        return _first_stop(self.error, self._group)


def _first_stop(error: StopTrainingError | None, group: Any) -> StopTrainingError:
    """Once the processes know that at least one holds a stop: the error of the lowest such
    process (this process's own if it holds one), ``process_index`` set to that process's."""
    errors: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(errors, _picklable(error), group=group)
    if error is not None:
        return error
    rank, first = next((r, e) for r, e in enumerate(errors) if e is not None)
    first.process_index = rank
    return first


class StopFlagInGradients:
    """The stop agreement carried by DDP's gradient all-reduce on CPU processes (gloo), where
    a collective of its own costs about as much as the all-reduce of a small model's
    gradients: a communication hook (:func:`carry_stop_flag`) appends one number, this
    process's flag, to the first gradient bucket each synchronised backward pass reduces, and
    reads the sum back when the gradients arrive (reading a CPU tensor costs no device sync).

    :meth:`arm` before the backward pass of an update (with the stop this process holds);
    :meth:`take` after it: ``(error, number of processes holding a stop)``, or ``None`` for
    the count when no synchronised backward pass ran since :meth:`arm` (then none ran on any
    process: the all-reduce is collective)."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.armed = False
        self._error: StopTrainingError | None = None
        self._total: float | None = None

    def arm(self, error: StopTrainingError | None) -> None:
        self.armed, self._error, self._total = True, error, None

    def flag(self) -> float:
        return 1.0 if self.armed and self._error is not None else 0.0

    def received(self, total: float) -> None:
        self._total = total

    def take(self) -> tuple[StopTrainingError | None, float | None]:
        error, total = self._error, self._total
        self.armed, self._error, self._total = False, None, None
        return error, total

    def first_stop(self, error: StopTrainingError | None, timeout: timedelta) -> StopTrainingError:
        """After a count above zero: the stop every process raises (see :func:`agreed_stop`)."""
        return _first_stop(error, _stop_agreement_group(timeout))


def _stop_flag_hook(carrier: StopFlagInGradients, bucket: Any) -> torch.futures.Future[Any]:
    """DDP's own averaging all-reduce (``allreduce_hook``: divide by the world size, then sum),
    with the flag appended to bucket 0, the first bucket reduced (at most 1 MB by default, so
    the copy is small)."""
    if bucket.index() != 0:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        return allreduce_hook(None, bucket)  # type: ignore[arg-type]  # None: the default group
    buffer = bucket.buffer()
    buffer.div_(carrier.world_size)
    flag = torch.tensor([carrier.flag()], dtype=buffer.dtype, device=buffer.device)
    extended = torch.cat([buffer, flag])

    def done(fut: torch.futures.Future[Any]) -> torch.Tensor:
        reduced: torch.Tensor = fut.value()[0]
        carrier.received(float(reduced[-1]))
        return reduced[:-1]

    return torch.distributed.all_reduce(extended, async_op=True).get_future().then(done)


# DDP checks a hook's annotations as objects; this module's are strings (postponed).
_stop_flag_hook.__annotations__ = {
    "carrier": StopFlagInGradients,
    "bucket": getattr(torch.distributed, "GradBucket", Any),  # absent in builds without it
    "return": torch.futures.Future[torch.Tensor],
}


def carry_stop_flag(model: nn.Module) -> StopFlagInGradients | None:
    """Register the stop-flag hook on ``model``, a ``DistributedDataParallel`` on CPU processes
    with the default (gloo) group; ``None`` (and nothing registered) where that does not apply
    or another communication hook is registered already."""
    if not isinstance(model, nn.parallel.DistributedDataParallel):
        return None
    if torch.distributed.get_backend() != "gloo" or model.device_ids:
        return None
    if any(p.device.type != "cpu" for p in model.parameters()):
        return None
    carrier = StopFlagInGradients(torch.distributed.get_world_size())
    try:
        model.register_comm_hook(carrier, _stop_flag_hook)
    except RuntimeError:  # a hook of the user's (or Accelerate's) is there
        return None
    return carrier


def start_stop_agreement(
    error: StopTrainingError | None, timeout: timedelta
) -> PendingStopAgreement:
    """Every process calls this with the stop it holds (or ``None``) at the same point. One
    all-reduce of a flag on a gloo group (never waits for a GPU), started without waiting, so
    work that follows (a backward pass with DDP's gradient all-reduce) overlaps it; the errors
    travel only when a process holds one."""
    return PendingStopAgreement(error, timeout)


def agreed_stop(error: StopTrainingError | None, timeout: timedelta) -> StopTrainingError | None:
    """:func:`start_stop_agreement`, waited for at once."""
    return start_stop_agreement(error, timeout).result()


def broadcast_buffers_from_main(module: nn.Module) -> None:
    """Make ``module``'s buffers (e.g. BatchNorm statistics) equal to the first process's."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    works = [
        torch.distributed.broadcast(buffer, src=0, async_op=True) for buffer in module.buffers()
    ]
    for work in works:
        if work is not None:
            work.wait()
