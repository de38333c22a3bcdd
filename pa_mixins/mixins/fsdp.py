"""``FSDPMixin``: shard the model, gradients and optimizer state over the GPUs with PyTorch's
FSDP2 (``fully_shard``), through Accelerate's FSDP plugin.

* ``fsdp_config``: the arguments of Accelerate's ``FullyShardedDataParallelPlugin`` (e.g.
  ``{"auto_wrap_policy": "transformer_based_wrap", "reshard_after_forward": True}``);
  ``fsdp_version=2`` is the default.
* FSDP needs GPUs. On a machine without them Accelerate silently trains with plain DDP
  instead: the adapter refuses that with an error rather than train something other than
  what was asked.
* ``save_checkpoint`` exports the full weights, gathered from the shards, as a portable file.
  Training states of FSDP runs are not supported yet (a clear ``NotImplementedError``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from typing_extensions import override

from pa_mixins.base import BaseTrainer

__all__ = ["FSDPMixin"]


class FSDPMixin(BaseTrainer):
    """Adds the ``fsdp_config`` constructor option (see the module docstring). Owns
    ``fsdp_config``; extends ``get_accelerator_kwargs``."""

    init_options: ClassVar[tuple[str, ...]] = ("fsdp_config",)
    requires: ClassVar[tuple[str, ...]] = ("TrainingLoopMixin", "AccelerateMixin")

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
