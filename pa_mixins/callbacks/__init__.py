"""Callbacks: same names and events as pytorch-accelerated's ``callbacks`` module, plus the
``on_optimizer_step_end`` event (after each real optimizer update)."""

from __future__ import annotations

from pa_mixins.callbacks.checkpointing import SaveTrainingStateCallback, WSDCheckpointCallback
from pa_mixins.callbacks.core import (
    CallbackHandler,
    CallbackMethodNotImplementedError,
    StopTrainingError,
    TrainerCallback,
)
from pa_mixins.callbacks.defaults import (
    LogMetricsCallback,
    MoveModulesToDeviceCallback,
    PrintProgressCallback,
    ProgressBarCallback,
    TerminateOnNaNCallback,
)
from pa_mixins.callbacks.distributed import ConvertSyncBatchNormCallback
from pa_mixins.callbacks.ema import ModelEmaCallback
from pa_mixins.callbacks.evaluation import LimitEvalStepsCallback, StepBasedEvaluationCallback
from pa_mixins.callbacks.interval import IntervalMetricsCallback
from pa_mixins.callbacks.limits import LimitBatchesCallback
from pa_mixins.callbacks.model_selection import EarlyStoppingCallback, SaveBestModelCallback

__all__ = [
    "DEFAULT_CALLBACKS",
    "CallbackHandler",
    "CallbackMethodNotImplementedError",
    "ConvertSyncBatchNormCallback",
    "EarlyStoppingCallback",
    "IntervalMetricsCallback",
    "LimitBatchesCallback",
    "LimitEvalStepsCallback",
    "LogMetricsCallback",
    "ModelEmaCallback",
    "MoveModulesToDeviceCallback",
    "PrintProgressCallback",
    "ProgressBarCallback",
    "SaveBestModelCallback",
    "SaveTrainingStateCallback",
    "StepBasedEvaluationCallback",
    "StopTrainingError",
    "TerminateOnNaNCallback",
    "TrainerCallback",
    "WSDCheckpointCallback",
    "get_default_callbacks",
]


def get_default_callbacks(progress_bar: bool = True) -> tuple[type[TrainerCallback], ...]:
    """The default callback classes, with or without the progress bar."""
    return (
        MoveModulesToDeviceCallback,
        TerminateOnNaNCallback,
        PrintProgressCallback,
        *((ProgressBarCallback,) if progress_bar else ()),
        LogMetricsCallback,
    )


DEFAULT_CALLBACKS = get_default_callbacks(progress_bar=True)
