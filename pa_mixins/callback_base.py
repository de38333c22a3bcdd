"""The callback protocol: :class:`TrainerCallback`, :class:`CallbackHandler` and the errors."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pa_mixins.base import BaseTrainer

__all__ = [
    "CallbackHandler",
    "CallbackMethodNotImplementedError",
    "StopTrainingError",
    "TrainerCallback",
]


class StopTrainingError(Exception):
    """Raise from any hook or callback to end the run early.

    The trainer catches it, prints it, fires ``on_stop_training_error`` and then runs the
    end-of-run hooks as usual.
    """


class CallbackMethodNotImplementedError(AttributeError):
    """Raised internally when a callback does not handle an event; the handler skips it. An
    ``AttributeError``, so ``getattr(callback, name, default)`` and ``hasattr`` keep working."""


class TrainerCallback:
    """Base class for callbacks: every event is a no-op; override the ones you need.

    Callbacks observe the run and decide (log, stop, save); they should not change how the loop
    computes (that is what mixins and hooks are for). Each event is called as
    ``callback.<event>(trainer, **kwargs)``, after the trainer hook of the same name.
    A custom event fired with ``trainer.callback_handler.call_event("name", trainer, ...)`` is
    skipped by callbacks that do not define it.
    """

    def on_init_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        """End of the trainer's constructor."""

    def on_training_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        """Start of ``train()``, after ``training_run_start``; loaders, run config and
        scheduler exist."""

    def on_train_epoch_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        """Start of a training epoch, after ``train_epoch_start`` (model in train mode)."""

    def on_train_step_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        """Start of each training micro-batch."""

    def on_train_step_end(
        self, trainer: BaseTrainer, batch: Any, batch_output: dict[str, Any], **kwargs: Any
    ) -> None:
        """After the forward pass and loss of a micro-batch, before its backward pass.
        ``step`` is the micro-batch index within the epoch."""

    def on_optimizer_step_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        """After each real optimizer update (and its scheduler step and ``zero_grad``), once
        per update, never for accumulation micro-batches. ``num_updates`` is the number of
        updates done in the run so far (per process). For EMA, step-based evaluation,
        periodic saving and step logging."""

    def on_train_epoch_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        """End of a training epoch, after ``train_loss_epoch`` was recorded."""

    def on_eval_epoch_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        """Start of an evaluation epoch (model in eval mode); ``is_intermediate`` says whether
        it runs inside a training epoch."""

    def on_eval_step_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        """Start of each evaluation batch."""

    def on_eval_step_end(
        self, trainer: BaseTrainer, batch: Any, batch_output: dict[str, Any], **kwargs: Any
    ) -> None:
        """After an evaluation batch's loss was computed."""

    def on_eval_epoch_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        """End of an evaluation epoch, after its loss was recorded."""

    def on_training_run_epoch_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        """After an epoch's training and evaluation, before the epoch counter moves on."""

    def on_training_run_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        """End of ``train()``, after ``training_run_end`` (the model is unwrapped)."""

    def on_evaluation_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        """Start of ``evaluate()``, after ``evaluation_run_start``."""

    def on_evaluation_run_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        """End of ``evaluate()``, after ``evaluation_run_end``."""

    def on_stop_training_error(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        """A :class:`StopTrainingError` ended the run early; ``error`` is the exception."""

    def on_exception(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        """A ``train()`` or ``evaluate()`` run is ending by an exception other than a
        :class:`StopTrainingError` (``error``, the exception), which is raised again after
        this event: close what the callback opened (progress bars, files, tracker runs). The
        end-of-run events do not fire."""

    def on_interval_metrics(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        """Every N optimizer updates, the metrics of the interval (``metrics``: name to
        float) at ``num_updates``, fired by
        :class:`~pa_mixins.callbacks.IntervalMetricsCallback` right after its
        ``on_optimizer_step_end``. The values were read from the device once for the whole
        interval; they are the same on every process."""

    def on_stop_signal(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        """SIGTERM or Ctrl-C arrived and the run is at the next safe point, about to stop
        (``signal_name``); the place to save a training state (``CheckpointMixin``)."""

    def on_training_state_saved(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        """A training state folder (``output_dir``) was completely written
        (``CheckpointMixin``)."""

    def __getattr__(self, item: str) -> Any:
        # Reached only when normal lookup found nothing. Private and dunder names (probed by
        # copy, pickle and many libraries) get a plain AttributeError.
        message = f"{type(self).__name__!r} object has no attribute {item!r}"
        if item.startswith("_"):
            raise AttributeError(message, name=item)
        # Any other name may be an event, built in or custom (fired with
        # ``callback_handler.call_event("verify_train_batch", ...)``): the handler skips this
        # callback, as pytorch-accelerated does for every event name. The error is an
        # AttributeError, so ``hasattr(callback, name)`` and ``getattr(callback, name,
        # default)`` still answer "absent" (the trainer probes callbacks for ``state_dict``).
        raise CallbackMethodNotImplementedError(message, name=item)


class CallbackHandler:
    """Calls the callbacks of a trainer, in the order they were given.

    Classes are instantiated with no arguments; instances are used as they are. Two callbacks
    of the same class are refused: state-writing callbacks should come before those that read.
    """

    def __init__(self, callbacks: Iterable[Any] = ()) -> None:
        self.callbacks: list[Any] = []
        # event -> the callbacks that handle it (built on first use; the loop fires several
        # events per step, most of which no callback overrides)
        self._handlers: dict[str, list[Any]] = {}
        self._handlers_built_for: list[Any] = []
        #: callback states loaded from a training state, given back after the next
        #: ``on_training_run_start`` (so that a reset there does not undo them)
        self._pending_states: dict[str, Any] = {}
        self.add_callbacks(callbacks)

    def add_callbacks(self, callbacks: Iterable[Any]) -> None:
        for callback in callbacks:
            self.add_callback(callback)

    def add_callback(self, callback: Any) -> None:
        cls = callback if isinstance(callback, type) else type(callback)
        if any(type(existing) is cls for existing in self.callbacks):
            raise ValueError(
                f"A callback of type {cls.__name__} is already registered; "
                f"current callbacks: {self.callback_list}"
            )
        self.callbacks.append(callback() if isinstance(callback, type) else callback)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.callbacks)

    def clear_callbacks(self) -> None:
        self.callbacks = []

    @property
    def callback_list(self) -> list[str]:
        return [type(callback).__name__ for callback in self.callbacks]

    def _handlers_of(self, event: str) -> list[Any]:
        if self._handlers_built_for != self.callbacks:
            self._handlers = {}
            self._handlers_built_for = list(self.callbacks)
        handlers = self._handlers.get(event)
        if handlers is None:
            handlers = [callback for callback in self.callbacks if _handles(callback, event)]
            self._handlers[event] = handlers
        return handlers

    def call_event(self, event: str, *args: Any, **kwargs: Any) -> None:
        """Call ``event`` on every callback that handles it, in order."""
        for callback in self._handlers_of(event):
            getattr(callback, event)(*args, **kwargs)
        if self._pending_states and event == "on_training_run_start":
            self._apply_pending_states()

    def state_dict(self) -> dict[str, Any]:
        """The state of every callback that has ``state_dict()``, by class name."""
        states = {}
        for callback in self.callbacks:
            state_dict = getattr(callback, "state_dict", None)
            if callable(state_dict):
                states[type(callback).__name__] = state_dict()
        return states

    def load_state_dict(self, states: dict[str, Any]) -> None:
        """Give each callback with ``load_state_dict()`` its state from ``states`` (as
        :meth:`state_dict` wrote it) right after the next ``on_training_run_start`` event, so
        that a reset there does not undo it. States of callbacks not present are ignored with
        a warning."""
        self._pending_states = dict(states)

    def _apply_pending_states(self) -> None:
        states, self._pending_states = self._pending_states, {}
        for callback in self.callbacks:
            name = type(callback).__name__
            load = getattr(callback, "load_state_dict", None)
            if name in states and callable(load):
                load(states.pop(name))
        for name in states:
            warnings.warn(
                f"The training state holds the state of a {name} callback, which this run does "
                "not have: it is ignored",
                stacklevel=3,
            )

    def call_event_holding_stop(
        self, event: str, *args: Any, **kwargs: Any
    ) -> StopTrainingError | None:
        """Like :meth:`call_event`, but a :class:`StopTrainingError` does not interrupt the
        event: every callback still receives it, and the first such error is returned (used
        on several processes, where the stop is raised once all processes agree)."""
        first: StopTrainingError | None = None
        for callback in self._handlers_of(event):
            try:
                getattr(callback, event)(*args, **kwargs)
            except StopTrainingError as error:
                first = first or error
        return first


def _handles(callback: Any, event: str) -> bool:
    """Whether ``callback`` does something on ``event``: a ``TrainerCallback`` that neither
    defines it nor overrides the base class's no-op is skipped; any other object must have the
    method (``AttributeError`` otherwise, as in pytorch-accelerated)."""
    try:
        getattr(callback, event)
    except CallbackMethodNotImplementedError:
        return False
    if not isinstance(callback, TrainerCallback) or event in vars(callback):
        return True
    return getattr(type(callback), event, None) is not getattr(TrainerCallback, event, None)
