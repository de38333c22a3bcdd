"""Callbacks for runs on several processes."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch

from pa_mixins.callbacks.core import TrainerCallback

if TYPE_CHECKING:
    from pa_mixins.base import BaseTrainer

__all__ = ["ConvertSyncBatchNormCallback"]

#: device types on which torch's SyncBatchNorm can train
SYNC_BATCH_NORM_DEVICES = frozenset({"cuda", "xpu", "hpu"})


class ConvertSyncBatchNormCallback(TrainerCallback):
    """Normalise with statistics over every process: at the start of training on several
    processes, replace the model's ``BatchNorm*d`` layers by ``torch.nn.SyncBatchNorm``.

    The layers are replaced inside the prepared (DDP) model, keeping their parameters and
    buffers, so the optimizer and DDP keep working on the same tensors; the model stays
    converted after training. On one process it does nothing.

    torch's ``SyncBatchNorm`` trains only on GPUs (CUDA, XPU, HPU): on other devices (e.g. a
    CPU gloo run) the layers are left as they are and a warning says so, instead of the run
    failing at the first forward pass.
    """

    def on_training_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        config = trainer.run_config
        if config is None or not config.is_distributed:
            return
        device_type = trainer.device.type
        if device_type not in SYNC_BATCH_NORM_DEVICES and device_type != _privateuse1():
            warnings.warn(
                f"ConvertSyncBatchNormCallback: torch's SyncBatchNorm cannot train on "
                f"{device_type!r} devices; the BatchNorm layers are left as they are (each "
                "process normalises with its own batch statistics)",
                stacklevel=2,
            )
            return
        # Converts the layers in place (the prepared model stays the same object).
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(trainer.model)


def _privateuse1() -> str:
    return str(torch._C._get_privateuse1_backend_name())
