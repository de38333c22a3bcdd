"""The mixins a trainer is assembled from: the capabilities in any order, then the adapter
``AccelerateMixin`` and ``BaseTrainer`` last (checked when the class is created)."""

from pa_mixins.mixins.accelerate import AccelerateMixin
from pa_mixins.mixins.checkpointing import CheckpointMixin
from pa_mixins.mixins.compile import CompileMixin
from pa_mixins.mixins.deepspeed import DeepSpeedMixin
from pa_mixins.mixins.evaluation import EvaluationMixin
from pa_mixins.mixins.fsdp import FSDPMixin
from pa_mixins.mixins.gradient_accumulation import GradientAccumulationMixin
from pa_mixins.mixins.loop import TrainingLoopMixin
from pa_mixins.mixins.mixed_precision import MixedPrecisionMixin
from pa_mixins.mixins.scheduling import SchedulerMixin
from pa_mixins.mixins.timm_scheduling import TimmSchedulerMixin
from pa_mixins.mixins.tracking import ExperimentTrackingMixin

__all__ = [
    "AccelerateMixin",
    "CheckpointMixin",
    "CompileMixin",
    "DeepSpeedMixin",
    "EvaluationMixin",
    "ExperimentTrackingMixin",
    "FSDPMixin",
    "GradientAccumulationMixin",
    "MixedPrecisionMixin",
    "SchedulerMixin",
    "TimmSchedulerMixin",
    "TrainingLoopMixin",
]
