"""Run history and loss tracking.

The trainer records one value per metric per epoch in a :class:`RunHistory`; the default
:class:`InMemoryRunHistory` keeps them in a dict of lists. :class:`LossTracker` keeps a running,
sample-weighted mean of batch losses. It accepts tensors and keeps them on their device, so
tracking a loss every step costs no device-to-host synchronisation: the value is read once,
when the epoch's mean is recorded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from typing import Any

import torch

__all__ = ["InMemoryRunHistory", "LossTracker", "RunHistory"]


class RunHistory(ABC):
    """The interface the trainer uses to record metrics. Implement it to back the history with
    another store (a database, an experiment tracker)."""

    @abstractmethod
    def get_metric_names(self) -> set[str]:
        """Return the names of all recorded metrics."""

    @abstractmethod
    def get_metric_values(self, metric_name: str) -> list[Any]:
        """Return every recorded value of ``metric_name``, oldest first."""

    @abstractmethod
    def get_latest_metric(self, metric_name: str) -> Any:
        """Return the newest value of ``metric_name``; ``ValueError`` if there is none."""

    @abstractmethod
    def update_metric(self, metric_name: str, metric_value: Any) -> None:
        """Append ``metric_value`` to ``metric_name`` (prefixed with :attr:`metric_name_prefix`)."""

    @abstractmethod
    def set_metric_name_prefix(self, prefix: str = "") -> None:
        """Prefix every name written by :meth:`update_metric` (e.g. ``"ema_model_"``)."""

    @property
    @abstractmethod
    def metric_name_prefix(self) -> str:
        """The prefix :meth:`update_metric` adds to names."""

    @abstractmethod
    def delete_metric(self, metric_name: str) -> None:
        """Remove a metric and all its values."""

    @property
    @abstractmethod
    def current_epoch(self) -> int:
        """The 1-based epoch the trainer is in."""

    @abstractmethod
    def _increment_epoch(self) -> None:
        """Advance :attr:`current_epoch` by one (called by the trainer at each epoch end)."""

    @abstractmethod
    def _set_epoch(self, epoch: int) -> None:
        """Set :attr:`current_epoch` (used when a run is resumed)."""

    @abstractmethod
    def reset(self) -> None:
        """Forget all metrics and go back to epoch 1."""

    def state_dict(self) -> dict[str, Any]:
        """Plain data that :meth:`load_state_dict` restores; used to save a training state."""
        return {
            "current_epoch": self.current_epoch,
            "metrics": {
                name: list(self.get_metric_values(name)) for name in self.get_metric_names()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        prefix = self.metric_name_prefix
        self.set_metric_name_prefix("")
        for name, values in state["metrics"].items():
            for value in values:
                self.update_metric(name, value)
        self.set_metric_name_prefix(prefix)
        self._set_epoch(state["current_epoch"])


class InMemoryRunHistory(RunHistory):
    """A :class:`RunHistory` held in memory. Epochs start at 1."""

    def __init__(self) -> None:
        self._current_epoch = 1
        self._metrics: defaultdict[str, list[Any]] = defaultdict(list)
        self._prefix = ""

    def get_metric_names(self) -> set[str]:
        return set(self._metrics)

    def get_metric_values(self, metric_name: str) -> list[Any]:
        return self._metrics.get(metric_name, [])

    def get_latest_metric(self, metric_name: str) -> Any:
        values = self._metrics.get(metric_name)
        if not values:
            raise ValueError(
                f"No values have been recorded for the metric {metric_name!r}; "
                f"recorded metrics: {sorted(self._metrics)}"
            )
        return values[-1]

    def update_metric(self, metric_name: str, metric_value: Any) -> None:
        self._metrics[f"{self._prefix}{metric_name}"].append(metric_value)

    def set_metric_name_prefix(self, prefix: str = "") -> None:
        self._prefix = prefix

    @property
    def metric_name_prefix(self) -> str:
        return self._prefix

    def delete_metric(self, metric_name: str) -> None:
        del self._metrics[metric_name]

    @property
    def current_epoch(self) -> int:
        return self._current_epoch

    def _increment_epoch(self) -> None:
        self._current_epoch += 1

    def _set_epoch(self, epoch: int) -> None:
        if epoch < 1:
            raise ValueError(f"Epochs are 1-based; got {epoch}")
        self._current_epoch = epoch

    def reset(self) -> None:
        self._current_epoch = 1
        self._metrics = defaultdict(list)


class LossTracker:
    """A running, sample-weighted mean of batch losses.

    ``update`` takes Python numbers or tensors. Tensors are detached and summed on their
    device, so calling it every step does not synchronise with the device; reading
    :attr:`average` (or ``float()`` of it) does, once.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_value: float | torch.Tensor = 0.0
        self.total_loss: float | torch.Tensor = 0.0
        self.running_count: int | torch.Tensor = 0

    def update(
        self, loss_batch_value: float | torch.Tensor, batch_size: int | torch.Tensor = 1
    ) -> None:
        if isinstance(loss_batch_value, torch.Tensor):
            loss = loss_batch_value.detach()
            if loss.numel() != 1:
                loss = loss.mean()
            self.loss_value = loss
            total = self.total_loss
            if isinstance(total, torch.Tensor):
                # In place, on the device: no new tensor and no synchronisation per step.
                if loss.dtype != total.dtype:
                    loss = loss.to(total.dtype)
                if isinstance(batch_size, torch.Tensor):
                    total.addcmul_(loss, batch_size)
                else:
                    total.add_(loss, alpha=batch_size)
            else:
                self.total_loss = (loss.float() * batch_size) + self.total_loss
        else:
            self.loss_value = loss_batch_value
            self.total_loss = self.total_loss + loss_batch_value * batch_size
        self.running_count = self.running_count + batch_size

    def state_dict(self) -> dict[str, Any]:
        """The running values (tensors stay on their device)."""
        return {
            "loss_value": self.loss_value,
            "total_loss": self.total_loss,
            "running_count": self.running_count,
        }

    def load_state_dict(self, state: dict[str, Any], device: Any = None) -> None:
        """Put back values from :meth:`state_dict`, tensors moved to ``device`` if given."""

        def place(value: Any) -> Any:
            return value.to(device) if device is not None and torch.is_tensor(value) else value

        self.loss_value = place(state["loss_value"])
        self.total_loss = place(state["total_loss"])
        self.running_count = place(state["running_count"])

    @property
    def average(self) -> float | torch.Tensor:
        if isinstance(self.running_count, int) and self.running_count == 0:
            return 0.0
        return self.total_loss / self.running_count
