"""pa_mixins: a PyTorch trainer assembled from small mixins, on Hugging Face Accelerate.

Every public class and function of the submodules is also importable from here
(``from pa_mixins import ModelEmaCallback``); the submodule paths of pytorch-accelerated
(``pa_mixins.trainer``, ``pa_mixins.callbacks``, ...) work as well.

Importing the package has no side effect: it seeds nothing and configures no logging.
"""

from pa_mixins._version import __version__
from pa_mixins.base import BaseTrainer, BatchOutput, SafePoint
from pa_mixins.callbacks import (
    DEFAULT_CALLBACKS,
    CallbackHandler,
    CallbackMethodNotImplementedError,
    ConvertSyncBatchNormCallback,
    EarlyStoppingCallback,
    IntervalMetricsCallback,
    LimitBatchesCallback,
    LimitEvalStepsCallback,
    LogMetricsCallback,
    ModelEmaCallback,
    MoveModulesToDeviceCallback,
    PrintProgressCallback,
    ProgressBarCallback,
    SaveBestModelCallback,
    SaveTrainingStateCallback,
    StepBasedEvaluationCallback,
    StopTrainingError,
    TerminateOnNaNCallback,
    TrainerCallback,
    WSDCheckpointCallback,
    get_default_callbacks,
)
from pa_mixins.console import set_verbosity
from pa_mixins.finetuning import BN_MODULES, Layer, LayerGroup, ModelFreezer
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
from pa_mixins.mixins.checkpointing import (
    MANIFEST_NAME,
    CheckpointError,
    UnsafeCheckpointError,
    list_training_states,
    read_manifest,
)
from pa_mixins.mixins.mixed_precision import MIXED_PRECISION_MODES
from pa_mixins.placeholders import (
    PlaceholderExpression,
    TrainerPlaceholderValues,
    replace_trainer_placeholder_values,
)
from pa_mixins.run_config import TrainerRunConfig
from pa_mixins.schedulers import (
    CosineLrScheduler,
    SchedulerBase,
    StatefulSchedulerBase,
    WSDLrScheduler,
)
from pa_mixins.tracking import InMemoryRunHistory, LossTracker, RunHistory
from pa_mixins.trainer import (
    DeepSpeedTrainer,
    FSDPTrainer,
    MinimalTrainer,
    Trainer,
    TrainerWithTimmScheduler,
)
from pa_mixins.utils import (
    LIMIT_BATCHES_ENV_VAR,
    DataLoaderSlice,
    LimitBatches,
    ModelEma,
    local_process_zero_first,
    local_process_zero_only,
    remove_padding,
    worker_init_fn,
    world_process_zero_only,
)

__all__ = [
    "BN_MODULES",
    "DEFAULT_CALLBACKS",
    "LIMIT_BATCHES_ENV_VAR",
    "MANIFEST_NAME",
    "MIXED_PRECISION_MODES",
    "AccelerateMixin",
    "BaseTrainer",
    "BatchOutput",
    "CallbackHandler",
    "CallbackMethodNotImplementedError",
    "CheckpointError",
    "CheckpointMixin",
    "CompileMixin",
    "ConvertSyncBatchNormCallback",
    "CosineLrScheduler",
    "DataLoaderSlice",
    "DeepSpeedMixin",
    "DeepSpeedTrainer",
    "EarlyStoppingCallback",
    "EvaluationMixin",
    "ExperimentTrackingMixin",
    "FSDPMixin",
    "FSDPTrainer",
    "GradientAccumulationMixin",
    "InMemoryRunHistory",
    "IntervalMetricsCallback",
    "Layer",
    "LayerGroup",
    "LimitBatches",
    "LimitBatchesCallback",
    "LimitEvalStepsCallback",
    "LogMetricsCallback",
    "LossTracker",
    "MinimalTrainer",
    "MixedPrecisionMixin",
    "ModelEma",
    "ModelEmaCallback",
    "ModelFreezer",
    "MoveModulesToDeviceCallback",
    "PlaceholderExpression",
    "PrintProgressCallback",
    "ProgressBarCallback",
    "RunHistory",
    "SafePoint",
    "SaveBestModelCallback",
    "SaveTrainingStateCallback",
    "SchedulerBase",
    "SchedulerMixin",
    "StatefulSchedulerBase",
    "StepBasedEvaluationCallback",
    "StopTrainingError",
    "TerminateOnNaNCallback",
    "TimmSchedulerMixin",
    "Trainer",
    "TrainerCallback",
    "TrainerPlaceholderValues",
    "TrainerRunConfig",
    "TrainerWithTimmScheduler",
    "TrainingLoopMixin",
    "UnsafeCheckpointError",
    "WSDCheckpointCallback",
    "WSDLrScheduler",
    "__version__",
    "get_default_callbacks",
    "list_training_states",
    "local_process_zero_first",
    "local_process_zero_only",
    "notebook_launcher",
    "read_manifest",
    "remove_padding",
    "replace_trainer_placeholder_values",
    "set_verbosity",
    "worker_init_fn",
    "world_process_zero_only",
]


def __getattr__(name: str) -> object:
    """``notebook_launcher`` (Accelerate's) is imported on first use, so that
    ``import pa_mixins`` does not import accelerate."""
    if name == "notebook_launcher":
        from pa_mixins.mixins import accelerate

        return accelerate.notebook_launcher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
