"""Dataloader defaults, the epoch-seeded shuffling sampler used by the trainers, and the
loader of an epoch resumed mid-way."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, Sampler

from pa_mixins.utils import worker_init_fn

__all__ = [
    "DeviceDataLoader",
    "EpochShuffleSampler",
    "ResumedEpoch",
    "default_dataloader_kwargs",
    "find_shuffle_sampler",
    "has_length",
    "loader_length",
    "make_dataloader",
    "resumed_epoch_loader",
]


class EpochShuffleSampler(Sampler[int]):
    """A random permutation of the dataset that depends only on ``(seed, epoch)``.

    The trainer calls :meth:`set_epoch` before each epoch, so every process shuffles alike (the
    seed is shared) and a resumed run can replay any epoch's order exactly.
    """

    def __init__(self, data_source: Sized, seed: int) -> None:
        self.data_source = data_source
        self.seed = seed
        self.epoch = 0
        self._skip_next = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_next(self, num_indices: int) -> None:
        """Make the next iteration start after its first ``num_indices`` indices (to resume in
        the middle of an epoch without loading the skipped samples). ``len()`` is unchanged."""
        self._skip_next = num_indices

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.data_source), generator=generator).tolist()
        skip, self._skip_next = self._skip_next, 0
        # A list iterator, not a generator: the batch sampler takes each batch's indices
        # without resuming a Python frame per sample.
        return iter(order[skip:])

    def __len__(self) -> int:
        return len(self.data_source)


def has_length(obj: Any) -> bool:
    """Whether ``len(obj)`` works (an ``IterableDataset`` or a loader over one may not)."""
    try:
        len(obj)
    except TypeError:
        return False
    return True


def loader_length(dataloader: Any) -> int | None:
    """``len(dataloader)``, or ``None`` when there is no loader or it has no length."""
    return len(dataloader) if dataloader is not None and has_length(dataloader) else None


def find_shuffle_sampler(dataloader: Any) -> tuple[EpochShuffleSampler | None, Any]:
    """The loader's :class:`EpochShuffleSampler` and the batch sampler that draws from it."""
    if isinstance(getattr(dataloader, "sampler", None), EpochShuffleSampler):
        return dataloader.sampler, getattr(dataloader, "batch_sampler", None)
    batch_sampler = getattr(dataloader, "batch_sampler", None)
    for _ in range(4):
        if batch_sampler is None:
            break
        if isinstance(getattr(batch_sampler, "sampler", None), EpochShuffleSampler):
            return batch_sampler.sampler, batch_sampler
        batch_sampler = getattr(batch_sampler, "batch_sampler", None)
    return None, None


def default_dataloader_kwargs(
    batch_size: int, shuffle: bool, device: torch.device
) -> dict[str, Any]:
    """The loader settings the trainers start from.

    * ``num_workers``: 0 on the CPU — a worker pool only slows down data already in memory,
      and the training itself needs the cores; on an accelerator, up to 8 workers per device
      so that loading overlaps with the device's work.
    * ``pin_memory`` on CUDA only; ``persistent_workers`` whenever there are workers.
    """
    if device.type == "cpu":
        num_workers = 0
    else:
        devices = max(torch.cuda.device_count(), 1) if device.type == "cuda" else 1
        num_workers = min(8, max((os.cpu_count() or 1) // devices, 1))
    kwargs: dict[str, Any] = {
        "shuffle": shuffle,
        "pin_memory": device.type == "cuda",
        "batch_size": batch_size,
        "num_workers": num_workers,
        "worker_init_fn": worker_init_fn,
    }
    if num_workers > 0:
        kwargs["persistent_workers"] = True
    return kwargs


class DeviceDataLoader(DataLoader[Any]):
    """A plain ``DataLoader`` that also says which device its batches go to (``device``), as
    Accelerate's prepared loaders do. The trainers build these, so ``trainer._train_dataloader
    .device`` and ``trainer._eval_dataloader.device`` work on one CPU process too, where the
    loaders are not prepared (published pytorch-accelerated code reads them). Nothing else
    differs: iterating costs what a ``DataLoader`` costs."""

    device: torch.device | None = None


def make_dataloader(
    dataset: Any,
    default_kwargs: dict[str, Any],
    user_kwargs: dict[str, Any] | None,
    collate_fn: Callable[..., Any] | None,
    shuffle_seed: int | None,
    device: torch.device | None = None,
) -> tuple[DataLoader[Any], dict[str, Any]]:
    """Build a ``DataLoader`` (a :class:`DeviceDataLoader` whose ``device`` is ``device``) from
    the defaults overridden by the user's kwargs.

    A user ``sampler`` or ``batch_sampler`` replaces the default shuffling. Shuffling of a
    map-style dataset uses :class:`EpochShuffleSampler` seeded with ``shuffle_seed``; an
    ``IterableDataset`` is never shuffled by the loader. Returns the loader and the kwargs used.
    """
    kwargs = {**default_kwargs, **(user_kwargs or {})}
    if user_kwargs and ("sampler" in user_kwargs or "batch_sampler" in user_kwargs):
        if "shuffle" not in user_kwargs:
            kwargs.pop("shuffle", None)
        if "batch_sampler" in user_kwargs:
            for key in ("batch_size", "shuffle", "drop_last"):
                if key not in user_kwargs:
                    kwargs.pop(key, None)
    if isinstance(dataset, IterableDataset):
        kwargs.pop("shuffle", None)
    elif kwargs.get("shuffle") and shuffle_seed is not None:
        kwargs.pop("shuffle")
        kwargs["sampler"] = EpochShuffleSampler(dataset, shuffle_seed)
    if kwargs.get("num_workers", 0) == 0:
        kwargs.pop("persistent_workers", None)
        kwargs.pop("prefetch_factor", None)
    if collate_fn is not None:
        kwargs["collate_fn"] = collate_fn
    dataloader = DeviceDataLoader(dataset, **kwargs)
    dataloader.device = device
    return dataloader, kwargs


class ResumedEpoch:
    """Iterates a training loader from micro-batch ``skip`` on, for the epoch a run resumes in.

    The skipped batches are skipped in the sampler (not loaded) when that gives the same
    batches as the uninterrupted epoch, else loaded and dropped. ``before_first_batch`` runs
    once the loader's iterator exists (which draws from the global generator), just before
    the first resumed batch is used.
    """

    def __init__(
        self,
        dataloader: Any,
        skip: int,
        sampler_skip: tuple[EpochShuffleSampler, int] | None,
        before_first_batch: Callable[[], None],
    ) -> None:
        self.dataloader = dataloader
        self.skip = skip
        self.sampler_skip = sampler_skip
        self.before_first_batch = before_first_batch

    @property
    def dl(self) -> Any:
        return getattr(self.dataloader, "dl", self.dataloader)

    def __len__(self) -> int:
        return len(self.dataloader)

    def __iter__(self) -> Iterator[Any]:
        if has_length(self.dataloader) and self.skip >= len(self.dataloader):
            self.before_first_batch()
            return
        if self.sampler_skip is not None:
            sampler, num_indices = self.sampler_skip
            sampler.skip_next(num_indices)
        iterator = iter(self.dataloader)
        try:
            if self.sampler_skip is None:
                for _ in range(self.skip):
                    next(iterator)
            first = next(iterator)
        except StopIteration:
            self.before_first_batch()
            return
        self.before_first_batch()
        yield first
        yield from iterator


def resumed_epoch_loader(
    dataloader: Any, skip: int, num_processes: int, before_first_batch: Callable[[], None]
) -> ResumedEpoch:
    """``dataloader`` for the epoch a run resumes in, from micro-batch ``skip`` on (see
    :class:`ResumedEpoch`). The skipped batches are skipped in the sampler when every process
    drew full batches from it, else loaded and dropped."""
    sampler_skip = None
    if isinstance(dataloader, DataLoader):
        sampler, batch_sampler = find_shuffle_sampler(dataloader)
        batch_size = getattr(batch_sampler, "batch_size", None)
        if sampler is not None and batch_size:
            exact = (
                num_processes == 1
                or getattr(batch_sampler, "drop_last", False)
                or len(sampler) % (num_processes * batch_size) == 0
            )
            if exact:
                sampler_skip = (sampler, skip * num_processes * batch_size)
    return ResumedEpoch(dataloader, skip, sampler_skip, before_first_batch)
