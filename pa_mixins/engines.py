"""What the trainer tells an engine (DeepSpeed, FSDP), as plain data: the engine's config
written from ``train()``'s arguments, the conflicts refused, the environment a process that no
launcher started needs. The adapter applies it; nothing here imports accelerate.

The ``train()`` arguments written into a DeepSpeed config (docs/engines.md has the table):

==============================================  =========================================
``train()`` argument                            DeepSpeed config key
==============================================  =========================================
``per_device_batch_size`` (or the loader's      ``train_micro_batch_size_per_gpu``
``batch_size``)
``gradient_accumulation_steps``                 ``gradient_accumulation_steps``
the three, times the number of processes        ``train_batch_size``
``gradient_clip_norm`` (``None``: 0, no clip)   ``gradient_clipping``
``gradient_clip_value``                         refused: DeepSpeed clips by norm only
==============================================  =========================================

A key the user's config leaves out or sets to ``"auto"`` gets the trainer's value; another
value is a conflict, refused with an error that names the key and both values (never a silent
``"auto"`` that DeepSpeed would turn into clipping at 1.0).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "EngineSettings",
    "load_deepspeed_config",
    "prepare_deepspeed_environment",
    "reconcile_deepspeed_config",
]

#: DeepSpeed's own progress printing, off (the trainer's callbacks report progress)
_QUIET_STEPS = 10**9


@dataclass(frozen=True)
class EngineSettings:
    """The ``train()`` arguments an engine must follow."""

    micro_batch_size: int
    accumulation_steps: int
    clip_norm: float | None
    clip_value: float | None
    dataset_has_length: bool

    @classmethod
    def from_train_arguments(cls, arguments: Mapping[str, Any]) -> EngineSettings:
        loader_kwargs = arguments.get("train_dataloader_kwargs") or {}
        dataset = arguments.get("train_dataset")
        return cls(
            micro_batch_size=int(
                loader_kwargs.get("batch_size", arguments["per_device_batch_size"])
            ),
            accumulation_steps=int(arguments.get("gradient_accumulation_steps", 1)),
            clip_norm=arguments.get("gradient_clip_norm"),
            clip_value=arguments.get("gradient_clip_value"),
            dataset_has_length=hasattr(dataset, "__len__"),
        )


def load_deepspeed_config(
    config: Mapping[str, Any] | str | os.PathLike[str] | None,
) -> dict[str, Any]:
    """A copy of ``config`` (a dict, or the path of a JSON file); ``{}`` for ``None``."""
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return json.loads(json.dumps(dict(config)))  # a deep copy of plain JSON data
    path = Path(config)
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read the DeepSpeed config {path}: {error}") from error
    if not isinstance(loaded, dict):
        raise ValueError(f"The DeepSpeed config {path} must hold a JSON object")
    return loaded


def _put(config: dict[str, Any], key: str, value: Any, argument: str) -> None:
    current = config.get(key, "auto")
    if current == "auto" or current is None:
        config[key] = value
    elif current != value:
        raise ValueError(
            f"The DeepSpeed config sets {key}={current!r}, but the trainer runs with {value!r} "
            f'({argument}): remove the key (or set it to "auto") or change {argument}'
        )


def reconcile_deepspeed_config(
    config: dict[str, Any], settings: EngineSettings, num_processes: int
) -> None:
    """Write the trainer's settings into the DeepSpeed ``config`` (in place); raise a
    ``ValueError`` naming the key when the config says otherwise, and for what DeepSpeed
    cannot do."""
    if settings.clip_value is not None:
        raise ValueError(
            "gradient_clip_value cannot be used with DeepSpeed, which clips gradients by their "
            "total norm only: pass gradient_clip_norm instead"
        )
    if settings.accumulation_steps > 1 and not settings.dataset_has_length:
        raise ValueError(
            "Gradient accumulation under DeepSpeed needs a training dataset with a length (the "
            "last accumulation group of an epoch must be known before its backward pass)"
        )
    micro, steps = settings.micro_batch_size, settings.accumulation_steps
    _put(config, "train_micro_batch_size_per_gpu", micro, "per_device_batch_size")
    _put(config, "gradient_accumulation_steps", steps, "gradient_accumulation_steps")
    _put(
        config,
        "train_batch_size",
        micro * steps * num_processes,
        f"per_device_batch_size x gradient_accumulation_steps x {num_processes} process(es)",
    )
    _put(config, "gradient_clipping", float(settings.clip_norm or 0.0), "gradient_clip_norm")
    config.setdefault("zero_allow_untested_optimizer", True)  # a plain torch optimizer
    config.setdefault("steps_per_print", _QUIET_STEPS)
    zero = config.setdefault("zero_optimization", {})
    if zero.get("stage") == 3:
        # so that portable checkpoints can gather the full weights
        zero.setdefault("stage3_gather_16bit_weights_on_model_save", True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepare_deepspeed_environment() -> None:
    """Set what DeepSpeed reads from the environment: its CPU backend on a machine without
    CUDA, and, in a process no launcher started, the launcher's variables for one process
    (without them DeepSpeed looks for MPI). Refuse several CPU processes, which Accelerate
    cannot run under DeepSpeed (it would set each one up as process 0 of 1)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RuntimeError(
                "DeepSpeed through Accelerate cannot train on several CPU processes (each would "
                "train alone on the whole data): run it on one process, or on GPUs"
            )
    if "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
