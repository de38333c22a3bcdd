"""The model and optimizer state of sharded models (FSDP2, ``fully_shard``) in training states,
with PyTorch's distributed checkpoint (DCP, ``torch.distributed.checkpoint``).

:func:`save_sharded_state` writes a folder in which every process writes its own shards
(``*.distcp`` files and DCP's ``.metadata``) and the first process an index
(``pa_sharded.json``: which parameters have optimizer state). :func:`load_sharded_state` reads
it back into a model and optimizer of any sharding: DCP reshards, so a state saved by two
processes loads on one, into a ``fully_shard`` model or a plain one. Both work on plain
(unsharded) models too, and need the same calls on every process of the run.

:func:`full_model_state_dict` gathers the complete weights, one tensor at a time, into CPU
memory: what a portable export holds.

Security: DCP reads its ``.metadata`` with ``pickle`` and non-tensor values with
``torch.load(weights_only=False)``, which can run code stored in the files: load states from
trusted sources only.

The module does not import Accelerate; its only link to it is :func:`torch_optimizer`, which
finds the torch optimizer inside a wrapper such as ``AcceleratedOptimizer``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from pa_mixins.checkpoint_format import CheckpointError, atomic_write

__all__ = [
    "INDEX_NAME",
    "full_model_state_dict",
    "is_sharded",
    "load_full_weights",
    "load_sharded_state",
    "save_sharded_state",
    "torch_optimizer",
]

#: the index written beside DCP's files: format, and which parameters have optimizer state
INDEX_NAME = "pa_sharded.json"
_INDEX_FORMAT = "pa_mixins.sharded_state"
_INDEX_VERSION = 1


def torch_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside wrappers that keep it in ``.optimizer`` (Accelerate's
    ``AcceleratedOptimizer``); ``optimizer`` itself otherwise."""
    inner = optimizer
    while isinstance(getattr(inner, "optimizer", None), torch.optim.Optimizer):
        inner = inner.optimizer  # type: ignore[attr-defined]
    return inner


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` (or the module inside a ``torch.compile`` wrapper) was sharded with
    FSDP2's ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    inner = getattr(model, "_orig_mod", model)
    return isinstance(model, FSDPModule) or isinstance(inner, FSDPModule)


def save_sharded_state(
    folder: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    write_index: bool = True,
) -> None:
    """Save ``model``'s and ``optimizer``'s state into ``folder`` (created if needed): every
    process writes its shards; the process given ``write_index=True`` (one per run) writes
    :data:`INDEX_NAME`. Every process of the run must call it, with the same model and
    optimizer. The live run is left exactly as it was.

    ``optimizer`` may be a wrapper (see :func:`torch_optimizer`). Its parameters must be the
    model's (keys are the parameters' names, without wrapper prefixes).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any]
    with_state: list[str] = []
    if optimizer is None:
        state = {"model": get_model_state_dict(model)}
    else:
        optim = torch_optimizer(optimizer)
        had_state = bool(optim.state)
        model_state, optim_state = get_state_dict(model, optim)
        if not had_state:
            # get_state_dict creates the state of an optimizer that has none with one step at
            # learning rate 0 (which leaves the weights unchanged); forget that state again, so
            # the next real update is the optimizer's first one, as in a run never saved.
            optim.state.clear()
            optim_state["state"] = {}
        with_state = sorted(str(name) for name in optim_state["state"])
        state = {"model": model_state, "optimizer": optim_state}
    dcp.save(state, checkpoint_id=path)
    if write_index:
        index = {
            "format": _INDEX_FORMAT,
            "version": _INDEX_VERSION,
            "optimizer": optimizer is not None,
            "optimizer_state": with_state,
        }
        text = json.dumps(index, indent=1).encode()
        atomic_write(path / INDEX_NAME, lambda file: file.write(text))


def _read_index(path: Path) -> dict[str, Any]:
    index_path = path / INDEX_NAME
    try:
        index = json.loads(index_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{path} holds no sharded model state ({INDEX_NAME} is missing)"
        ) from None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{index_path} cannot be read: {error}") from error
    if not isinstance(index, dict) or index.get("format") != _INDEX_FORMAT:
        raise CheckpointError(f"{index_path} is not the index of a sharded model state")
    if index.get("version") != _INDEX_VERSION:
        raise CheckpointError(
            f"{index_path} has version {index.get('version')}; this pa_mixins reads version "
            f"{_INDEX_VERSION}"
        )
    return index


def load_sharded_state(
    folder: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Load what :func:`save_sharded_state` wrote in ``folder`` into ``model`` (and
    ``optimizer``, if given), resharding to their current sharding. Every process of the run
    must call it. Parameters without optimizer state when it was saved have none after
    loading; a model or optimizer that does not fit the saved one raises."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    path = Path(folder)
    index = _read_index(path)
    if optimizer is None:
        model_state = get_model_state_dict(model)
        state: dict[str, Any] = {"model": model_state}
        dcp.load(state, checkpoint_id=path)
        set_model_state_dict(model, state["model"])
        return
    if not index["optimizer"]:
        raise CheckpointError(f"{path} holds no optimizer state; load it without an optimizer")
    optim = torch_optimizer(optimizer)
    # get_state_dict gives an optimizer without state one (a step at learning rate 0), so
    # that DCP has tensors to load into; set_state_dict then replaces the whole state.
    model_state, optim_state = get_state_dict(model, optim)
    own: dict[Any, Any] = cast("dict[Any, Any]", optim_state["state"])
    saved = set(index["optimizer_state"])
    unknown = sorted(saved - {str(name) for name in own})
    if unknown:
        raise CheckpointError(
            f"The optimizer state in {path} has parameters this optimizer does not: "
            f"{unknown[:5]}; nothing was loaded"
        )
    optim_state["state"] = {name: value for name, value in own.items() if str(name) in saved}
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(model, state["model"])
    # Not strict: parameters left out above get no state (the optimizer's whole state is
    # replaced); parameters the checkpoint has and the optimizer has not were refused above.
    set_optimizer_state_dict(
        model, optim, state["optimizer"], options=StateDictOptions(strict=False)
    )


def full_model_state_dict(model: nn.Module, keep: bool = True) -> dict[str, Any]:
    """The complete weights of ``model``, gathered from its shards one tensor at a time into
    new CPU tensors, under the parameters' names (no wrapper prefixes). Every process must
    call it (the gathers are collective); only where ``keep`` is true are the tensors kept
    (elsewhere ``{}`` is returned), so that only the processes that write an export hold a
    full copy in memory."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.tensor import DTensor

    full: dict[str, Any] = {}
    for name, value in get_model_state_dict(model).items():
        if isinstance(value, DTensor):
            sharded: DTensor = value
            if sharded.device.type != sharded.device_mesh.device_type:  # offloaded to the CPU
                sharded = cast(DTensor, sharded.to(sharded.device_mesh.device_type))
            value = sharded.full_tensor()
        if not keep:
            continue
        if isinstance(value, torch.Tensor):
            value = value.detach().to("cpu", copy=True)
        full[name] = value
    return full


def load_full_weights(model: nn.Module, weights: dict[str, Any]) -> None:
    """Load complete (unsharded) weights, under the parameters' names, into a sharded
    ``model``: each process keeps its shard of every tensor. Every process must call it with
    the same weights; strict (missing or unexpected names raise)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
