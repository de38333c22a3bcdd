"""Ready-made trainers: one-line assemblies of the mixins (no logic lives here).

Same module path as pytorch-accelerated's ``trainer`` module, so its imports carry over.
"""

from __future__ import annotations

from pa_mixins.base import BaseTrainer
from pa_mixins.callbacks import DEFAULT_CALLBACKS
from pa_mixins.mixins import (
    AccelerateMixin,
    CheckpointMixin,
    CompileMixin,
    DeepSpeedMixin,
    EvaluationMixin,
    ExperimentTrackingMixin,
    FSDPMixin,
    GradientAccumulationMixin,
    MixedPrecisionMixin,
    SchedulerMixin,
    TimmSchedulerMixin,
    TrainingLoopMixin,
)
from pa_mixins.placeholders import TrainerPlaceholderValues, replace_trainer_placeholder_values

__all__ = [
    "DEFAULT_CALLBACKS",
    "BaseTrainer",
    "DeepSpeedTrainer",
    "FSDPTrainer",
    "MinimalTrainer",
    "Trainer",
    "TrainerPlaceholderValues",
    "TrainerWithTimmScheduler",
    "replace_trainer_placeholder_values",
]


class Trainer(
    ExperimentTrackingMixin,
    CheckpointMixin,
    SchedulerMixin,
    MixedPrecisionMixin,
    CompileMixin,
    GradientAccumulationMixin,
    EvaluationMixin,
    TrainingLoopMixin,
    AccelerateMixin,
    BaseTrainer,
):
    """The everyday trainer: training loop and evaluation with schedulers, mixed precision,
    gradient accumulation, checkpoints and exact resume, on any hardware Accelerate supports;
    metrics every N updates and, if asked, experiment trackers and torch.compile.

    ``Trainer(model, loss_func, optimizer, callbacks=DEFAULT_CALLBACKS, run_history=None,
    *, mixed_precision=None, compile=None, accelerator_kwargs=None,
    process_group_timeout=1800, log_with=None, project_dir=None, log_every_n_steps=50)``
    """

    default_callbacks = DEFAULT_CALLBACKS


class MinimalTrainer(EvaluationMixin, TrainingLoopMixin, AccelerateMixin, BaseTrainer):
    """The smallest complete trainer: the training loop, evaluation and the Accelerate
    adapter. No accumulation, scheduler, mixed-precision option or checkpointing (a launch
    configured for mixed precision still applies)."""

    default_callbacks = DEFAULT_CALLBACKS


class TrainerWithTimmScheduler(TimmSchedulerMixin, Trainer):
    """A :class:`Trainer` for schedulers with timm's interface: ``step_update(num_updates=n)``
    after each optimizer update (``n`` = updates completed in the run) and ``step(epoch)`` at
    the end of each training epoch (``epoch`` = epochs completed). See
    :class:`~pa_mixins.mixins.timm_scheduling.TimmSchedulerMixin`."""


class DeepSpeedTrainer(DeepSpeedMixin, Trainer):
    """A :class:`Trainer` on DeepSpeed configured in code: ``DeepSpeedTrainer(model, loss_func,
    optimizer, deepspeed_config=..., zero_stage=...)``. See
    :class:`~pa_mixins.mixins.deepspeed.DeepSpeedMixin`."""


class FSDPTrainer(FSDPMixin, Trainer):
    """A :class:`Trainer` on PyTorch FSDP2 (GPUs only): ``FSDPTrainer(model, loss_func,
    optimizer, fsdp_config={...})``. See :class:`~pa_mixins.mixins.fsdp.FSDPMixin`."""
