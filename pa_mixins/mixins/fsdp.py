"""``FSDPMixin``: shard the model, gradients and optimizer state over the GPUs with PyTorch's
FSDP2 (``fully_shard``), through Accelerate's FSDP plugin.

* ``fsdp_config``: the arguments of Accelerate's ``FullyShardedDataParallelPlugin`` (e.g.
  ``{"auto_wrap_policy": "transformer_based_wrap", "reshard_after_forward": True}``);
  ``fsdp_version=2`` is the default.
* FSDP needs GPUs. On a machine without them Accelerate silently trains with plain DDP
  instead: the adapter refuses that with an error rather than train something other than
  what was asked. Accelerate sets FSDP up only under a launcher (``torchrun`` or
  ``accelerate launch``, one process per GPU, also for a single GPU).
* Training states hold the sharded model and optimizer (``engine.<generation>/`` in the state
  folder, under the manifest), written with PyTorch's distributed checkpoint (DCP): every
  process writes its own shards, and loading reshards (:mod:`pa_mixins.sharded_state`); the
  trainer's own state (position, random generators, scheduler, history, callbacks) is beside
  it as for every trainer. ``resume_from`` resumes exactly; a state requested inside an
  accumulation group is written at the end of that group (FSDP keeps an open group's
  gradients in its private unsharded buffers). DCP reads its metadata with ``pickle``: load
  training states from trusted sources only.
* ``save_checkpoint`` exports the full weights, gathered from the shards one tensor at a
  time, as a portable file that loads into the plain model with ``weights_only=True``.
* Evaluation (after each epoch and ``evaluate()``) and ``predict()`` on several processes
  give what one process gives (every sample once, in order): each forward pass all-gathers
  sharded parameters, a collective operation, so a process with fewer batches (or none) runs
  padding passes, outputs discarded and unseen by callbacks, until it has run as many as the
  others (``EvaluationMixin``); an ``IterableDataset`` for evaluation is refused. After
  ``train()``, ``evaluate()`` and ``predict()`` use the run's sharded model; a second
  ``train()`` of the same trainer is refused (``fully_shard`` changed the model in place).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from typing_extensions import override

from pa_mixins.base import BaseTrainer
from pa_mixins.checkpoint_format import CheckpointError
from pa_mixins.sharded_state import (
    full_model_state_dict,
    is_sharded,
    load_full_weights,
    load_sharded_state,
    save_sharded_state,
)

__all__ = ["FSDPMixin"]

#: what ``training_state_dict`` records under ``"fsdp"``: the format of the engine folder
_STATE_FORMAT = "torch.distributed.checkpoint"


class FSDPMixin(BaseTrainer):
    """Adds the ``fsdp_config`` constructor option (see the module docstring). Owns
    ``fsdp_config``; extends ``get_accelerator_kwargs``, ``full_model_state_dict``,
    ``save_engine_state``, ``load_engine_state`` and the ``training_state_dict`` chain (state
    key ``fsdp``), and sets ``engine_saves_weights``.

    :param fsdp_config: the arguments of Accelerate's ``FullyShardedDataParallelPlugin``.
    """

    init_options: ClassVar[tuple[str, ...]] = ("fsdp_config",)
    requires: ClassVar[tuple[str, ...]] = ("TrainingLoopMixin", "AccelerateMixin")
    engine_saves_weights: ClassVar[bool] = True

    def __init__(
        self, *args: Any, fsdp_config: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        self.fsdp_config: dict[str, Any] = {"fsdp_version": 2, **(fsdp_config or {})}
        super().__init__(*args, **kwargs)

    @override
    def get_accelerator_kwargs(self) -> dict[str, Any]:
        kwargs = super().get_accelerator_kwargs()
        kwargs["fsdp_config"] = dict(self.fsdp_config)
        return kwargs

    @override
    def full_model_state_dict(self) -> dict[str, Any]:
        """The full weights, gathered from the shards one tensor at a time, in CPU memory on
        the first process of each machine (the processes that write exports); ``{}`` on the
        others. Every process must call it. A model that is not sharded (before ``train()``)
        is asked as without FSDP."""
        if not is_sharded(self.model):
            return super().full_model_state_dict()
        return full_model_state_dict(self.model, keep=self.is_local_process_zero)

    @override
    def load_full_model_state_dict(self, weights: dict[str, Any]) -> None:
        """Complete weights go into the shards: each process keeps its part (a model that is
        not sharded loads them as without FSDP)."""
        if not is_sharded(self.model):
            super().load_full_model_state_dict(weights)
            return
        load_full_weights(self.model, weights)

    @override
    def save_engine_state(self, folder: Path) -> None:
        super().save_engine_state(folder)
        save_sharded_state(
            folder, self.model, self.optimizer, write_index=self.is_world_process_zero
        )

    def _check_sharded(self) -> None:
        if not is_sharded(self.model):
            raise RuntimeError(
                "Loading a training state of an FSDP run needs the sharded model and optimizer, "
                "which exist from the start of train(): resume with train(..., resume_from=...) "
                "or load inside train()"
            )

    @override
    def load_engine_state(self, folder: Path) -> None:
        super().load_engine_state(folder)
        self._check_sharded()
        load_sharded_state(folder, self.model, self.optimizer)

    @override
    def training_state_dict(self) -> dict[str, Any]:
        """Adds ``"fsdp"``: the format of the engine folder (the sharded model and optimizer)."""
        state = super().training_state_dict()
        state["fsdp"] = {"format": _STATE_FORMAT}
        return state

    @override
    def load_training_state_dict(self, state: dict[str, Any], resume: bool = True) -> None:
        saved = state.get("fsdp")
        if not isinstance(saved, dict) or saved.get("format") != _STATE_FORMAT:
            raise CheckpointError(
                "The training state was not saved by an FSDP trainer (its model and optimizer "
                "are another engine's files): resume with the same kind of trainer"
            )
        self._check_sharded()  # before anything is loaded
        super().load_training_state_dict(state, resume)
