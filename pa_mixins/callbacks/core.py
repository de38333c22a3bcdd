"""The callback protocol, as ``pa_mixins.callbacks`` exports it. It lives in
:mod:`pa_mixins.callback_base`, outside this package, so that the trainer's root imports no
concrete callback."""

from __future__ import annotations

from pa_mixins.callback_base import (
    CallbackHandler,
    CallbackMethodNotImplementedError,
    StopTrainingError,
    TrainerCallback,
)

__all__ = [
    "CallbackHandler",
    "CallbackMethodNotImplementedError",
    "StopTrainingError",
    "TrainerCallback",
]
