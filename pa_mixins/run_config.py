"""The frozen description of the current run, built at the start of ``train()`` / ``evaluate()``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["TrainerRunConfig"]


@dataclass(frozen=True)
class TrainerRunConfig:
    """An immutable snapshot of the run's configuration (same fields as pytorch-accelerated).

    Update counts are *per process*: one optimizer update is one step of the replicated
    optimizer, which every process performs together. So ``num_update_steps_per_epoch``
    (equal to ``num_local_update_steps_per_epoch``) and ``max_num_train_steps`` mean the same
    on 1 and on N processes. They are ``None`` when the training loader has no length.
    """

    num_epochs: int | None
    train_per_device_batch_size: int | None
    train_dl_kwargs: dict[str, Any] | None
    eval_per_device_batch_size: int | None
    eval_dl_kwargs: dict[str, Any] | None
    gradient_accumulation_steps: int
    gradient_clip_value: float | None
    train_total_batch_size: int | None
    eval_total_batch_size: int | None
    num_update_steps_per_epoch: int | None
    max_num_train_steps: int | None
    is_local_process_zero: bool
    is_world_process_zero: bool
    is_distributed: bool
    mixed_precision: str
    num_processes: int
    num_local_update_steps_per_epoch: int | None = None
    gradient_clip_norm: float | None = None
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (samplers and generators inside the loader kwargs, which
        cannot be deep-copied, are left out)."""
        result: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, dict):
                value = {
                    k: v
                    for k, v in value.items()
                    if k not in ("sampler", "generator", "batch_sampler")
                }
            result[field.name] = value
        return result
