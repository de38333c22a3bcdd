"""``BaseTrainer``: the cooperative root that every mixin and ready-made trainer ends on.

It stores what the user gives the constructor (model, loss function, optimizer, callbacks,
run history), declares every hook with a typed default, and ends the constructor chain: an
option that no class of the trainer consumed is rejected with a ``TypeError`` that names the
mixin which would accept it.

How mixins cooperate:

* every mixin subclasses ``BaseTrainer`` and names the options it adds in ``init_options``
  (constructor) and ``train_options`` (``train()`` arguments, with their "off" value);
* a mixin's ``__init__`` stores its own options, then calls ``super().__init__(*args, **kwargs)``;
  options reach the root only if nobody took them;
* run-level ``*_start`` hooks call ``super()`` first, ``*_end`` hooks call it last, so the
  base opens first and closes last;
* hardware goes through the adapter (``AccelerateMixin``); the stubs below say so when a
  trainer is assembled without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar

import torch
from torch import nn

from pa_mixins.callbacks import DEFAULT_CALLBACKS, CallbackHandler, LimitBatchesCallback
from pa_mixins.data import loader_length
from pa_mixins.run_config import TrainerRunConfig
from pa_mixins.tracking import InMemoryRunHistory, LossTracker, RunHistory
from pa_mixins.utils import limit_batches_from_env

__all__ = ["BaseTrainer"]

BatchOutput = dict[str, Any]


def _owner_hint(option: str, owners: dict[str, type], trainer_cls: type) -> str:
    owner = owners.get(option)
    if owner is None:
        return f"{option!r} is not an option of any pa_mixins mixin"
    return (
        f"{option!r} is an option of {owner.__name__}, which {trainer_cls.__name__} does not "
        f"include; use a trainer that includes it (e.g. pa_mixins.Trainer) or add "
        f"{owner.__name__} to your trainer's bases"
    )


class BaseTrainer:
    """The root of every trainer. Subclass a ready-made trainer or combine mixins instead of
    using this class alone: on its own it stores its arguments and defines no loop.

    :param model: the ``nn.Module`` to train or evaluate.
    :param loss_func: ``loss_func(model_outputs, targets)``; may be ``None`` when the model (or
        an overridden ``calculate_*_batch_loss``) computes the loss itself.
    :param optimizer: an optimizer built on ``model``'s parameters, not yet prepared; ``None``
        for evaluation or prediction only.
    :param callbacks: callback classes (instantiated without arguments) or instances, called in
        order. Defaults to :data:`pa_mixins.callbacks.DEFAULT_CALLBACKS`.
    :param run_history: where metrics are recorded; a new :class:`InMemoryRunHistory` if ``None``.
    """

    #: constructor options added by this class (declared by mixins)
    init_options: ClassVar[tuple[str, ...]] = ()
    #: ``train()`` options owned by this class, with the value that means "not used"
    train_options: ClassVar[dict[str, Any]] = {}
    _option_owners: ClassVar[dict[str, type]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in (*cls.__dict__.get("init_options", ()), *cls.__dict__.get("train_options", {})):
            BaseTrainer._option_owners.setdefault(name, cls)

    def __init__(
        self,
        model: nn.Module,
        loss_func: Callable[..., torch.Tensor] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        callbacks: Sequence[Any] = DEFAULT_CALLBACKS,
        run_history: RunHistory | None = None,
        **unknown_options: Any,
    ) -> None:
        if unknown_options:
            hints = "; ".join(
                _owner_hint(name, self._option_owners, type(self)) for name in unknown_options
            )
            raise TypeError(f"{type(self).__name__}() got unexpected option(s): {hints}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.loss_func = loss_func
        self.optimizer = optimizer
        self.callbacks = callbacks
        self.callback_handler = self._create_callback_handler()
        self.run_history: RunHistory = (
            run_history if run_history is not None else InMemoryRunHistory()
        )
        self._loss_tracker = LossTracker()

        # Set by train() / evaluate().
        self.create_scheduler_fn: Callable[..., Any] | None = None
        self.scheduler: Any = None
        self.collate_fn: Callable[..., Any] | None = None
        self.train_dataset: Any = None
        self.eval_dataset: Any = None
        self._train_dataloader: Iterable[Any] | None = None
        self._eval_dataloader: Iterable[Any] | None = None
        self._train_dl_kwargs: dict[str, Any] | None = None
        self._eval_dl_kwargs: dict[str, Any] | None = None
        self.run_config: TrainerRunConfig | None = None

        self.callback_handler.call_event("on_init_end", self)

    def _create_callback_handler(self) -> CallbackHandler:
        """Build the handler from ``self.callbacks``; a ``LimitBatchesCallback`` goes first when
        the limit-batches environment variable is set."""
        callbacks = list(self.callbacks)
        limit = limit_batches_from_env()
        if limit is not None:
            callbacks.insert(0, LimitBatchesCallback(limit))
        return CallbackHandler(callbacks)

    @classmethod
    def _check_train_options(cls, requested: dict[str, Any]) -> None:
        """Raise a ``TypeError`` for a ``train()`` option used with a value other than its
        "off" value when the mixin owning it is not part of this trainer."""
        missing = []
        for name, value in requested.items():
            owner = cls._option_owners.get(name)
            if owner is None or issubclass(cls, owner):
                continue
            if value != getattr(owner, "train_options", {}).get(name):
                missing.append(_owner_hint(name, cls._option_owners, cls))
        if missing:
            raise TypeError(
                f"{cls.__name__}.train() got unsupported option(s): {'; '.join(missing)}"
            )

    # -- run facts shared by training and evaluation -------------------------------------------

    def _create_run_config(
        self,
        per_device_batch_size: int,
        num_epochs: int,
        gradient_accumulation_steps: int,
        max_num_train_steps: int | None,
        gradient_clip_value: float | None,
        gradient_clip_norm: float | None = None,
        seed: int | None = None,
    ) -> TrainerRunConfig:
        """Build the frozen :class:`TrainerRunConfig` of this run (after preparation, so the
        loader lengths are per process)."""
        train_dl_kwargs = self._train_dl_kwargs or {}
        eval_dl_kwargs = self._eval_dl_kwargs or {}
        train_bs = train_dl_kwargs.get("batch_size", per_device_batch_size)
        eval_bs = eval_dl_kwargs.get("batch_size", train_bs)
        num_processes = getattr(self, "num_processes", 1)

        updates_per_epoch: int | None = None
        epochs: int | None = num_epochs
        dataloader = self._train_dataloader
        batches = loader_length(dataloader)
        if batches is not None:
            updates_per_epoch = math.ceil(batches / gradient_accumulation_steps)
            if max_num_train_steps is not None:
                epochs = math.ceil(max_num_train_steps / updates_per_epoch)
            else:
                max_num_train_steps = num_epochs * updates_per_epoch
        elif dataloader is not None:
            if max_num_train_steps is None:
                raise ValueError(
                    "The training dataloader has no length (an IterableDataset?): pass "
                    "max_num_train_steps to say how many optimizer updates to run"
                )
            epochs = None  # unknown length: passes over the data until max_num_train_steps

        return TrainerRunConfig(
            num_epochs=epochs,
            train_per_device_batch_size=train_bs,
            train_dl_kwargs=self._train_dl_kwargs,
            eval_per_device_batch_size=eval_bs,
            eval_dl_kwargs=self._eval_dl_kwargs,
            gradient_accumulation_steps=gradient_accumulation_steps,
            gradient_clip_value=gradient_clip_value,
            train_total_batch_size=train_bs * num_processes * gradient_accumulation_steps,
            eval_total_batch_size=eval_bs * num_processes,
            num_update_steps_per_epoch=updates_per_epoch,
            max_num_train_steps=max_num_train_steps,
            is_local_process_zero=getattr(self, "is_local_process_zero", True),
            is_world_process_zero=getattr(self, "is_world_process_zero", True),
            is_distributed=getattr(self, "is_distributed", False),
            mixed_precision=getattr(self, "mixed_precision", "no"),
            num_processes=num_processes,
            num_local_update_steps_per_epoch=updates_per_epoch,
            gradient_clip_norm=gradient_clip_norm,
            seed=seed,
        )

    def _add_epoch_loss_to_run_history(
        self, metric_name: str, tracker: LossTracker | None = None
    ) -> None:
        """Record the epoch's mean loss over all processes (weighted by samples); the only
        point where the loop reads from the device."""
        tracker = tracker if tracker is not None else self._loss_tracker
        totals = torch.stack(
            [
                torch.as_tensor(tracker.total_loss, dtype=torch.float64, device=self.device),
                torch.as_tensor(tracker.running_count, dtype=torch.float64, device=self.device),
            ]
        )
        total_loss, count = self.reduce_sum(totals).tolist()
        self.run_history.update_metric(metric_name, total_loss / count if count else float("nan"))

    # ------------------------------------------------------------------------------------------
    # Hardware: provided by AccelerateMixin. The stubs say so when it is missing.
    # ------------------------------------------------------------------------------------------

    def _missing_adapter(self, what: str) -> NotImplementedError:
        return NotImplementedError(
            f"{type(self).__name__}.{what} needs AccelerateMixin among the trainer's bases"
        )

    @property
    def device(self) -> torch.device:
        """The device this process trains on."""
        raise self._missing_adapter("device")

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Print once per machine (on each machine's first process)."""
        raise self._missing_adapter("print")

    def gather(self, tensor: Any, padding_value: Any = None) -> Any:
        """Gather ``tensor`` from every process, concatenated along dim 0."""
        raise self._missing_adapter("gather")

    def get_model(self, keep_torch_compile: bool = True) -> nn.Module:
        """The model without distributed / mixed-precision wrappers."""
        raise self._missing_adapter("get_model")

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` (loss scaling and engines included)."""
        raise self._missing_adapter("backward")

    def no_gradient_sync(self) -> AbstractContextManager[Any]:
        """A context in which backward passes do not synchronise gradients across processes."""
        raise self._missing_adapter("no_gradient_sync")

    def clip_gradients(self, clip_value: float | None, clip_norm: float | None) -> None:
        """Clip the model's gradients by value and/or total norm (unscaled first)."""
        raise self._missing_adapter("clip_gradients")

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over all processes."""
        raise self._missing_adapter("reduce_sum")

    def wait_for_everyone(self) -> None:
        """Block until every process reaches this point."""
        raise self._missing_adapter("wait_for_everyone")

    @property
    def optimizer_step_was_skipped(self) -> bool:
        """``True`` when the last optimizer step was skipped (fp16 overflow)."""
        return False

    # ------------------------------------------------------------------------------------------
    # Hooks (public, overridable). Defaults that need a loop live in the loop mixins.
    # ------------------------------------------------------------------------------------------

    def training_run_start(self) -> None:
        """Called once at the start of ``train()``, before the first epoch. Extend with
        ``super().training_run_start()`` called first."""

    def training_run_epoch_end(self) -> None:
        """Called after each epoch's training and evaluation, before the epoch counter moves.
        Extend with ``super().training_run_epoch_end()`` called last."""

    def training_run_end(self) -> None:
        """Called once at the end of ``train()``. Extend with ``super().training_run_end()``
        called last."""

    def evaluation_run_start(self) -> None:
        """Called once at the start of ``evaluate()``. Extend with super() called first."""

    def evaluation_run_end(self) -> None:
        """Called once at the end of ``evaluate()``. Extend with super() called last."""

    # ------------------------------------------------------------------------------------------
    # Seams of the training loop. The defaults live here, at the root, so that a mixin that
    # extends one (calling super()) works wherever it stands among the bases.
    # ------------------------------------------------------------------------------------------

    def get_accelerator_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Accelerator(...)``; mixins add theirs to the dict that
        ``super().get_accelerator_kwargs()`` returns."""
        return {}

    def _setup_scheduler(self) -> None:
        """Setup step after the run config exists (``SchedulerMixin`` creates the scheduler)."""

    def _restore_training_state(self, resume_from: str | None) -> None:
        """Setup step after the scheduler exists (``CheckpointMixin`` resumes a run)."""

    def _is_update_step(self, step: int) -> bool:
        """Whether micro-batch ``step`` of the epoch ends an optimizer update (always, without
        gradient accumulation)."""
        return True

    def _finish_pending_update(self) -> None:
        """At the end of an epoch, apply an update whose accumulation group is still open."""

    def _perform_optimizer_update(self) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} has no training loop: add TrainingLoopMixin"
        )

    def _loss_for_backward(self, batch_output: BatchOutput) -> torch.Tensor:
        """The tensor to back-propagate for a micro-batch: the loss, which the accumulation
        mixin scales."""
        loss: torch.Tensor = batch_output["loss"]
        return loss

    def _before_optimizer_step(self) -> None:
        """Make the gradients final before the optimizer steps. A mixin that changes
        gradients extends it and calls ``super()`` last, so clipping (here) comes after."""
        self._clip_gradients()

    def _after_optimizer_step(self) -> None:
        """Between the optimizer step and ``zero_grad`` (``SchedulerMixin`` steps here)."""

    def _clip_gradients(self) -> None:
        """Clip gradients by value and/or norm as the run config says (once per update,
        after unscaling)."""
        config = self.run_config
        if config is not None and (
            config.gradient_clip_value is not None or config.gradient_clip_norm is not None
        ):
            self.clip_gradients(config.gradient_clip_value, config.gradient_clip_norm)

    # ------------------------------------------------------------------------------------------
    # Steps that other mixins provide; the stubs name the missing mixin.
    # ------------------------------------------------------------------------------------------

    def _create_accelerator(self) -> Any:
        raise self._missing_adapter("_create_accelerator")

    def _start_hardware_run(self) -> None:
        raise self._missing_adapter("_start_hardware_run")

    def _prepare_model_optimizer_and_dataloaders(self) -> None:
        raise self._missing_adapter("_prepare_model_optimizer_and_dataloaders")

    def broadcast_from_main(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` as the first process has it, on every process."""
        raise self._missing_adapter("broadcast_from_main")

    def create_eval_dataloader(
        self, batch_size: int, eval_dl_kwargs: dict[str, Any] | None = None
    ) -> Iterable[Any]:
        raise NotImplementedError(
            f"{type(self).__name__} cannot evaluate: add EvaluationMixin to its bases"
        )

    def _run_eval_epoch(
        self, valid_dl: Any, is_training: bool = True, is_intermediate: bool = False
    ) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} cannot evaluate: add EvaluationMixin to its bases"
        )

    # ------------------------------------------------------------------------------------------
    # Checkpointing support: CheckpointMixin uses these; AccelerateMixin provides them.
    # ------------------------------------------------------------------------------------------

    def _grad_scaler_state(self) -> dict[str, Any] | None:
        """The mixed-precision grad scaler's state, ``None`` without a scaler."""
        return None

    def _load_grad_scaler_state(self, state: dict[str, Any] | None) -> None:
        """Restore a state from :meth:`_grad_scaler_state` (nothing without a scaler)."""

    def _sharded_engine_name(self) -> str | None:
        """The engine sharding the model or optimizer state (DeepSpeed, FSDP, Megatron-LM),
        whose training states are not supported yet; ``None`` otherwise."""
        return None

    # ------------------------------------------------------------------------------------------
    # Distributed support: the loop and evaluation use these seams; AccelerateMixin provides
    # them. On one process they cost one method call and read nothing from the device.
    # ------------------------------------------------------------------------------------------

    def _call_loop_event(self, event: str, **kwargs: Any) -> None:
        """Fire callback ``event`` from inside the training or evaluation loop.

        On one process this is ``callback_handler.call_event``. On several processes
        ``AccelerateMixin`` holds a :class:`StopTrainingError` raised by a callback until the
        next :meth:`_agree_on_stop`, so that one process never leaves the others waiting in a
        collective. Not meant to be overridden.
        """
        self.callback_handler.call_event(event, self, **kwargs)

    def _agree_on_stop(self) -> None:
        """A point where every process learns whether one of them was asked to stop, and
        then all raise :class:`StopTrainingError` together. No-op on one process."""

    def _model_for_evaluation(self) -> nn.Module:
        """The module that evaluation and prediction run through: ``self.model`` here;
        ``AccelerateMixin`` returns the module inside a DDP wrapper, with its buffers made
        equal to the first process's (no collective in an evaluation forward pass)."""
        return self.model

    def _prepare_unsharded_dataloader(self, dataloader: Any) -> Any:
        """``dataloader`` with its batches placed on this process's device, not split between
        processes (``predict`` shards the data itself, to keep the dataset order)."""
        return dataloader

    def _gather_exact(self, data: Any, num_rows: int) -> Any:
        """Concatenate ``data`` (a tensor or a nested structure of tensors, ``num_rows`` rows
        on this process, possibly a different number on each) from every process, in process
        order, without padding. ``data`` itself on one process."""
        return data
