"""``DeepSpeedMixin``: train with DeepSpeed (ZeRO stages 0-3, CPU offload) configured in code,
with the trainer's semantics carried into the engine.

* ``deepspeed_config`` (a dict or the path of a JSON file) and ``zero_stage`` set the engine;
  ``train()``'s batch size, accumulation and clipping by norm are written into its config
  (:mod:`pa_mixins.engines`; a conflicting value is refused with the key's name);
  ``gradient_clip_value`` is refused (DeepSpeed clips by norm only), before anything runs.
* The engine steps inside the backward pass of the micro-batch that ends an update; the
  optimizer step, ``zero_grad``, the scheduler and ``on_optimizer_step_end`` still happen once
  per real update, and an fp16 overflow skip does not step the scheduler. The loss is scaled
  by ``GradientAccumulationMixin`` exactly as without the engine (DeepSpeed's own scaling is
  off), so the losses and gradients match the plain ``Trainer``'s.
* Training states hold the engine's own checkpoint (``engine.<generation>/`` in the state
  folder, under the manifest) beside the trainer's state, for every ZeRO stage; ``resume_from``
  resumes exactly, at the same safe points as the plain ``Trainer``. DeepSpeed reads its files
  with ``torch.load(weights_only=False)``: load training states from trusted sources only.
* ``save_checkpoint`` writes the full weights, gathered from ZeRO-3's shards, as a portable file
  that loads into the plain model with ``weights_only=True``.
* Under ZeRO-3 on several processes each forward pass gathers the partitioned parameters, so
  evaluation and ``predict()`` keep the processes' forward passes in step (a process with
  fewer batches runs padding passes, see ``EvaluationMixin``).

On a machine without GPUs DeepSpeed runs on one CPU process (its CPU backend is chosen and the
launcher's variables set when no launcher ran); several CPU processes are refused. The
everyday ``Trainer`` launched with ``accelerate launch --use_deepspeed`` (or an Accelerate
config) gets the same config reconciliation from the adapter; training states need this mixin.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

from typing_extensions import override

from pa_mixins.base import BaseTrainer
from pa_mixins.engines import load_deepspeed_config

__all__ = ["DeepSpeedMixin"]

_ENGINE_TAG = "state"


class DeepSpeedMixin(BaseTrainer):
    """Adds the ``deepspeed_config`` and ``zero_stage`` constructor options (see the module
    docstring). Owns ``deepspeed_config``; extends ``get_accelerator_kwargs``,
    ``save_engine_state`` and ``load_engine_state``, and sets ``engine_saves_weights``.

    :param deepspeed_config: a DeepSpeed config, as a dict or the path of a JSON file. Keys
        that ``train()`` decides (batch sizes, accumulation, clipping) may be left out or set
        to ``"auto"``.
    :param zero_stage: the ZeRO stage, 0 to 3 (else the config's, else DeepSpeed's default 0).
    """

    init_options: ClassVar[tuple[str, ...]] = ("deepspeed_config", "zero_stage")
    requires: ClassVar[tuple[str, ...]] = ("TrainingLoopMixin", "AccelerateMixin")
    engine_saves_weights: ClassVar[bool] = True

    def __init__(
        self,
        *args: Any,
        deepspeed_config: dict[str, Any] | str | os.PathLike[str] | None = None,
        zero_stage: int | None = None,
        **kwargs: Any,
    ) -> None:
        config = load_deepspeed_config(deepspeed_config)
        if zero_stage is not None:
            if zero_stage not in (0, 1, 2, 3):
                raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage!r}")
            zero = config.setdefault("zero_optimization", {})
            if zero.get("stage", zero_stage) != zero_stage:
                raise ValueError(
                    f"zero_stage={zero_stage} conflicts with the DeepSpeed config's "
                    f"zero_optimization.stage={zero['stage']}"
                )
            zero["stage"] = zero_stage
        self.deepspeed_config = config
        super().__init__(*args, **kwargs)

    @override
    def get_accelerator_kwargs(self) -> dict[str, Any]:
        kwargs = super().get_accelerator_kwargs()
        # A fresh copy per run: the adapter writes this run's settings into it.
        kwargs["deepspeed_config"] = json.loads(json.dumps(self.deepspeed_config))
        return kwargs

    def _engine_or_error(self, action: str) -> Any:
        engine = self.engine
        if engine is None:
            raise RuntimeError(
                f"{action} needs the DeepSpeed engine, which exists from the start of train(): "
                "resume with train(..., resume_from=...) or load inside train()"
            )
        return engine

    @override
    def save_engine_state(self, folder: Path) -> None:
        super().save_engine_state(folder)
        engine = self._engine_or_error("Saving a training state")
        engine.save_checkpoint(str(folder), tag=_ENGINE_TAG, save_latest=False)

    @override
    def load_engine_state(self, folder: Path) -> None:
        super().load_engine_state(folder)
        engine = self._engine_or_error("Loading a training state")
        path, _ = engine.load_checkpoint(
            str(folder),
            tag=_ENGINE_TAG,
            load_module_strict=True,
            load_optimizer_states=True,
            load_lr_scheduler_states=False,
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint in {folder}")
