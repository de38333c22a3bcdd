"""``BaseTrainer``: the cooperative root that every mixin and ready-made trainer ends on.

It owns what the user gives the constructor (model, loss function, optimizer, callbacks,
run history) and the objects of the current run (datasets, loaders, run config), declares
what every mixin may rely on (the hardware interface, the process roles, the public
extension seams with their defaults), ends the constructor chain (an option no class
consumed is rejected with a ``TypeError`` naming the mixin that would accept it) and checks
each trainer class when it is created (:mod:`pa_mixins.assembly`).

How mixins cooperate (see docs/mixins.md):

* a mixin subclasses ``BaseTrainer``, names its options in ``init_options`` (constructor) and
  ``train_options`` (``train()`` arguments with their "off" value) and the mixins it needs in
  ``requires``; its ``__init__`` stores its own options, then calls ``super().__init__``;
* each attribute has one class that writes it; the root declares the shared ones;
* a mixin changes the loop through the public seams below, each calling ``super()``;
* run state is contributed through :meth:`training_state_dict` /
  :meth:`process_state_dict` and taken back through their ``load_*`` twins;
* hardware goes through the adapter (``AccelerateMixin``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from pa_mixins.assembly import check_assembly
from pa_mixins.callback_base import CallbackHandler
from pa_mixins.checkpoint_format import CheckpointError, check_model_fits, check_optimizer_fits
from pa_mixins.data import loader_length
from pa_mixins.run_config import TrainerRunConfig
from pa_mixins.tracking import InMemoryRunHistory, LossTracker, RunHistory
from pa_mixins.utils import limit_batches_from_env

__all__ = ["BaseTrainer", "BatchOutput", "SafePoint"]

BatchOutput = dict[str, Any]

#: where the loop stands when it calls :meth:`BaseTrainer.at_safe_point`
SafePoint = Literal["epoch_start", "micro_batch", "update", "train_done", "eval_done"]


def _owner_hint(option: str, owners: dict[str, type], trainer_cls: type) -> str:
    owner = owners.get(option)
    if owner is None:
        return f"{option!r} is not an option of any pa_mixins mixin"
    return (
        f"{option!r} is an option of {owner.__name__}, which {trainer_cls.__name__} does not "
        f"include; use a trainer that includes it (e.g. pa_mixins.Trainer) or add "
        f"{owner.__name__} to your trainer's bases"
    )


_EVAL_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _check_eval_sets(eval_dataset: Any) -> dict[str, Any] | None:
    """The evaluation sets by name when ``eval_dataset`` is a dict (a mapping) of datasets;
    ``None`` for one dataset or none. The names end metric names (``eval_loss_epoch_<name>``):
    letters, digits, ``_ . -``, starting with a letter or a digit, at most 64 characters."""
    if not isinstance(eval_dataset, Mapping):
        return None
    if not eval_dataset:
        raise ValueError("eval_dataset is an empty dict: give at least one evaluation set")
    for name, dataset in eval_dataset.items():
        if not isinstance(name, str) or not _EVAL_SET_NAME.fullmatch(name):
            raise ValueError(
                f"Invalid evaluation set name {name!r}: use letters, digits and '_ . -' (it "
                "ends the names of the set's metrics, e.g. eval_loss_epoch_<name>)"
            )
        if dataset is None:
            raise ValueError(f"The evaluation set {name!r} is None")
    return dict(eval_dataset)


class BaseTrainer:
    """The root of every trainer. Subclass a ready-made trainer or combine mixins instead of
    using this class alone: on its own it stores its arguments and defines no loop.

    :param model: the ``nn.Module`` to train or evaluate.
    :param loss_func: ``loss_func(model_outputs, targets)``; may be ``None`` when the model (or
        an overridden ``calculate_*_batch_loss``) computes the loss itself.
    :param optimizer: an optimizer built on ``model``'s parameters, not yet prepared; ``None``
        for evaluation or prediction only.
    :param callbacks: callback classes (instantiated without arguments) or instances, called in
        order; ``None`` for the class's :attr:`default_callbacks`.
    :param run_history: where metrics are recorded; a new :class:`InMemoryRunHistory` if ``None``.
    """

    #: constructor options added by this class (declared by mixins)
    init_options: ClassVar[tuple[str, ...]] = ()
    #: ``train()`` options owned by this class, with the value that means "not used"
    train_options: ClassVar[dict[str, Any]] = {}
    #: names of the mixins a trainer using this class must also include
    requires: ClassVar[tuple[str, ...]] = ()
    #: the callbacks used when the constructor gets ``callbacks=None`` (the ready-made
    #: trainers set :data:`pa_mixins.callbacks.DEFAULT_CALLBACKS`)
    default_callbacks: ClassVar[Sequence[Any]] = ()
    _option_owners: ClassVar[dict[str, type]] = {}

    # The objects of the current run, declared here and written by one class each: the
    # datasets, loaders and run config by this class (in the setup steps below); the loaders'
    # settings by the mixin that creates the loader; the scheduler by SchedulerMixin.
    train_dataset: Any = None
    eval_dataset: Any = None
    collate_fn: Callable[..., Any] | None = None
    run_config: TrainerRunConfig | None = None
    _train_dataloader: Any = None
    _eval_dataloader: Any = None
    _train_dl_kwargs: dict[str, Any] | None = None
    _eval_dl_kwargs: dict[str, Any] | None = None
    scheduler: Any = None
    create_scheduler_fn: Callable[..., Any] | None = None
    #: micro-batches in the current training epoch, ``None`` if unknown (set by the loop)
    batches_in_epoch: int | None = None
    #: the total gradient norm of the last update when clipping by norm (see last_grad_norm)
    _last_grad_norm: torch.Tensor | None = None
    #: the evaluation sets by name when ``eval_dataset`` is a dict (several sets), else None
    _eval_sets: dict[str, Any] | None = None
    #: the name of the evaluation set being evaluated (several sets), else None
    _eval_set_name: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in (*cls.__dict__.get("init_options", ()), *cls.__dict__.get("train_options", {})):
            BaseTrainer._option_owners.setdefault(name, cls)
        check_assembly(cls, BaseTrainer)

    def __init__(
        self,
        model: nn.Module,
        loss_func: Callable[..., torch.Tensor] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        callbacks: Sequence[Any] | None = None,
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
        self.callbacks = self.default_callbacks if callbacks is None else callbacks
        self.callback_handler = self._create_callback_handler()
        #: the batch limit of ``PT_ACC_LIMIT_BATCHES`` when the trainer was created (debug runs)
        self._env_batch_limit = limit_batches_from_env()
        self.run_history: RunHistory = (
            run_history if run_history is not None else InMemoryRunHistory()
        )
        self.callback_handler.call_event("on_init_end", self)

    def _create_callback_handler(self) -> CallbackHandler:
        """Build the handler from ``self.callbacks``."""
        return CallbackHandler(self.callbacks)

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

    # ------------------------------------------------------------------------------------------
    # Setup steps of a run, called in this order by train() and evaluate()
    # ------------------------------------------------------------------------------------------

    def _begin_run(self, train_dataset: Any, eval_dataset: Any, collate_fn: Any) -> None:
        """Store the run's data and start the hardware run (a fresh Accelerator).
        ``eval_dataset`` may be a dict of named evaluation sets (:attr:`eval_set_names`)."""
        self._eval_sets = _check_eval_sets(eval_dataset)
        self._eval_set_name = None
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.collate_fn = collate_fn
        self.start_hardware_run()

    def _create_dataloaders(
        self,
        per_device_batch_size: int,
        train_dl_kwargs: dict[str, Any] | None = None,
        eval_dl_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """Create the loaders of the run's datasets (through ``create_train_dataloader`` /
        ``create_eval_dataloader``) and prepare them, the model and the optimizer for the
        hardware."""
        train_dl: Any = None
        eval_dl: Any = None
        if self.train_dataset is not None:
            train_dl = self.create_train_dataloader(
                batch_size=per_device_batch_size, train_dl_kwargs=train_dl_kwargs
            )
        if self._eval_sets is not None:  # several sets: a loader each, the hook sees one set
            loaders = {}
            for name in self._eval_sets:
                with self._eval_set(name):
                    loaders[name] = self.create_eval_dataloader(
                        batch_size=per_device_batch_size, eval_dl_kwargs=eval_dl_kwargs
                    )
            eval_dl = loaders
        elif self.eval_dataset is not None:
            eval_dl = self.create_eval_dataloader(
                batch_size=per_device_batch_size, eval_dl_kwargs=eval_dl_kwargs
            )
        self._train_dataloader, self._eval_dataloader = train_dl, eval_dl
        self._prepare_model_optimizer_and_dataloaders()

    def _prepare_model_optimizer_and_dataloaders(self, include_dataloaders: bool = True) -> None:
        """Replace the model, the optimizer and (unless ``include_dataloaders=False``) the
        run's loaders by their prepared forms (:meth:`prepare_for_hardware`)."""
        train_dl, eval_dl = (
            (self._train_dataloader, self._eval_dataloader) if include_dataloaders else (None, None)
        )
        prepared = self.prepare_for_hardware(self.model, self.optimizer, train_dl, eval_dl)
        self.model, self.optimizer = prepared[0], prepared[1]
        if include_dataloaders:
            self._train_dataloader, self._eval_dataloader = prepared[2], prepared[3]

    def _start_run_config(self, **config: Any) -> None:
        """Set :attr:`run_config` for the run that starts (see :meth:`_create_run_config`)."""
        self.run_config = self._create_run_config(**config)
        self._last_grad_norm = None

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
        dataloader = self._train_dataloader
        train_dl_kwargs = self._train_dl_kwargs if dataloader is not None else None
        eval_dl_kwargs = self._eval_dl_kwargs if self._eval_dataloader is not None else None
        train_bs = (train_dl_kwargs or {}).get("batch_size", per_device_batch_size)
        eval_bs = (eval_dl_kwargs or {}).get("batch_size", train_bs)
        num_processes = self.num_processes

        updates_per_epoch: int | None = None
        epochs: int | None = num_epochs
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
            train_dl_kwargs=train_dl_kwargs,
            eval_per_device_batch_size=eval_bs,
            eval_dl_kwargs=eval_dl_kwargs,
            gradient_accumulation_steps=gradient_accumulation_steps,
            gradient_clip_value=gradient_clip_value,
            train_total_batch_size=train_bs * num_processes * gradient_accumulation_steps,
            eval_total_batch_size=eval_bs * num_processes,
            num_update_steps_per_epoch=updates_per_epoch,
            max_num_train_steps=max_num_train_steps,
            is_local_process_zero=self.is_local_process_zero,
            is_world_process_zero=self.is_world_process_zero,
            is_distributed=self.is_distributed,
            mixed_precision=self.mixed_precision,
            num_processes=num_processes,
            num_local_update_steps_per_epoch=updates_per_epoch,
            gradient_clip_norm=gradient_clip_norm,
            seed=seed,
        )

    def _add_epoch_loss_to_run_history(self, metric_name: str, tracker: LossTracker) -> None:
        """Record the epoch's mean loss over all processes (weighted by samples); the only
        point where the loops read from the device."""
        totals = torch.stack(
            [
                torch.as_tensor(tracker.total_loss, dtype=torch.float64, device=self.device),
                torch.as_tensor(tracker.running_count, dtype=torch.float64, device=self.device),
            ]
        )
        total_loss, count = self.reduce_sum(totals).tolist()
        self.run_history.update_metric(metric_name, total_loss / count if count else float("nan"))

    @contextmanager
    def substitute(
        self, model: nn.Module | None = None, callback_handler: CallbackHandler | None = None
    ) -> Iterator[None]:
        """Within the block, the hooks see ``model`` as ``self.model`` and the events go to
        ``callback_handler``; both are put back afterwards (evaluation runs through the module
        inside a DDP wrapper this way, and the EMA callback evaluates its average)."""
        saved = self.model, self.callback_handler
        if model is not None:
            self.model = model
        if callback_handler is not None:
            self.callback_handler = callback_handler
        try:
            yield
        finally:
            self.model, self.callback_handler = saved

    @contextmanager
    def _eval_set(self, name: str) -> Iterator[None]:
        """Within the block, :attr:`eval_dataset`, :attr:`eval_dataloader` and
        :attr:`eval_set_name` are those of the evaluation set ``name`` (several sets), so that
        hooks and callbacks written for one set work unchanged; they are put back
        afterwards."""
        sets = self._eval_sets
        if sets is None or name not in sets:
            raise KeyError(f"No evaluation set named {name!r}: the sets are {self.eval_set_names}")
        saved = self.eval_dataset, self._eval_dataloader, self._eval_set_name
        self.eval_dataset = sets[name]
        if isinstance(self._eval_dataloader, Mapping):
            self._eval_dataloader = self._eval_dataloader[name]
        self._eval_set_name = name
        try:
            yield
        finally:
            self.eval_dataset, self._eval_dataloader, self._eval_set_name = saved

    @property
    def eval_set_names(self) -> tuple[str, ...]:
        """The names of the evaluation sets when ``eval_dataset`` is a dict, in its order;
        ``()`` for a single unnamed set or none. Each set's metrics end with ``_<name>``
        (``eval_loss_epoch_<name>``)."""
        return tuple(self._eval_sets) if self._eval_sets is not None else ()

    @property
    def eval_set_name(self) -> str | None:
        """The name of the evaluation set being evaluated (between ``eval_epoch_start`` and
        ``on_eval_epoch_end`` of that set, and while its loader is created), else ``None``
        (always ``None`` for a single unnamed set). A metric recorded for the set should end
        with ``_<name>``, as its loss does."""
        return self._eval_set_name

    @property
    def train_dataloader(self) -> Any:
        """The current run's training loader, prepared for the hardware (read-only)."""
        return self._train_dataloader

    @property
    def eval_dataloader(self) -> Any:
        """The current run's evaluation loader, prepared for the hardware (read-only). With
        several evaluation sets, a dict of loaders by name, except inside a set's evaluation
        epoch, where it is that set's loader."""
        return self._eval_dataloader

    # ------------------------------------------------------------------------------------------
    # Hardware and processes: provided by AccelerateMixin. The stubs say so when it is missing.
    # ------------------------------------------------------------------------------------------

    def _missing(self, what: str, mixin: str = "AccelerateMixin") -> NotImplementedError:
        return NotImplementedError(
            f"{type(self).__name__}.{what} needs {mixin} among the trainer's bases"
        )

    @property
    def device(self) -> torch.device:
        """The device this process trains on."""
        raise self._missing("device")

    @property
    def num_processes(self) -> int:
        """The number of processes of the run (1 without a distributed launch)."""
        raise self._missing("num_processes")

    @property
    def process_index(self) -> int:
        """This process's rank in the run, from 0."""
        raise self._missing("process_index")

    @property
    def is_world_process_zero(self) -> bool:
        """Whether this is the first process of the whole run."""
        raise self._missing("is_world_process_zero")

    @property
    def is_local_process_zero(self) -> bool:
        """Whether this is the first process of its machine."""
        raise self._missing("is_local_process_zero")

    @property
    def is_distributed(self) -> bool:
        """Whether the run is distributed (several processes or an engine)."""
        raise self._missing("is_distributed")

    @property
    def mixed_precision(self) -> str:
        """The mixed precision in force: ``"no"``, ``"fp16"``, ``"bf16"`` or ``"fp8"``."""
        raise self._missing("mixed_precision")

    @property
    def num_updates(self) -> int:
        """The number of optimizer updates completed in the current run (per process; all
        processes update together). Read-only."""
        raise self._missing("num_updates", "TrainingLoopMixin")

    @property
    def running_train_loss(self) -> tuple[torch.Tensor | float, torch.Tensor | int]:
        """The current training epoch's running loss: the sum of the micro-batch losses
        weighted by their batch sizes (a tensor on the device once a batch ran) and the number
        of samples, on this process, as the loop keeps them (read-only; the sum is updated in
        place). Reading the sum makes the host wait for the device: read it once per interval,
        not per step (``IntervalMetricsCallback`` does)."""
        raise self._missing("running_train_loss", "TrainingLoopMixin")

    @property
    def last_grad_norm(self) -> torch.Tensor | None:
        """The total gradient norm (before clipping) of the last optimizer update, a tensor on
        the device, when the run clips by norm (``gradient_clip_norm``); ``None`` otherwise
        (no norm is computed then). Read-only."""
        return self._last_grad_norm

    @property
    def run_position(self) -> dict[str, Any]:
        """Where the run stands: ``phase``, ``epoch``, ``next_step``, ``num_updates`` and
        ``max_steps_reached`` (see :func:`~pa_mixins.checkpoint_format.state_position`)."""
        raise self._missing("run_position", "TrainingLoopMixin")

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Print once per machine (on each machine's first process)."""
        raise self._missing("print")

    def _create_accelerator(self) -> Any:
        """Create this run's ``accelerate.Accelerator`` (``MixedPrecisionMixin`` checks it)."""
        raise self._missing("_create_accelerator")

    def start_hardware_run(self) -> None:
        """Begin a run on fresh hardware state (a new Accelerator)."""
        raise self._missing("start_hardware_run")

    def prepare_for_hardware(
        self, model: nn.Module, optimizer: Any, train_dataloader: Any, eval_dataloader: Any
    ) -> tuple[nn.Module, Any, Any, Any]:
        """The four objects prepared for this run's hardware (``None`` stays ``None``)."""
        raise self._missing("prepare_for_hardware")

    def gather(self, tensor: Any, padding_value: Any = None) -> Any:
        """Gather ``tensor`` from every process, concatenated along dim 0."""
        raise self._missing("gather")

    def gather_in_order(self, data: Any, num_rows: int) -> Any:
        """Concatenate ``data`` (``num_rows`` rows here, possibly another number on each
        process) from every process, in process order, without padding."""
        raise self._missing("gather_in_order")

    def place_dataloader_on_device(self, dataloader: Any) -> Any:
        """``dataloader`` with its batches placed on this process's device, not split between
        processes (``predict`` shards the data itself, to keep the dataset order)."""
        raise self._missing("place_dataloader_on_device")

    def full_model_state_dict(self) -> dict[str, Any]:
        """The model's complete weights (gathered from every process where an engine shards
        them), without any wrapper prefix: what portable checkpoints hold."""
        raise self._missing("full_model_state_dict")

    def load_full_model_state_dict(self, weights: dict[str, Any]) -> None:
        """Load complete weights (what :meth:`full_model_state_dict` gives, e.g. from a
        portable checkpoint) into the model. Default: ``load_state_dict`` on the unwrapped
        model. An engine that shards the model (``FSDPMixin``) overrides it for its sharded
        model and calls ``super()`` otherwise. Every process must call it."""
        self.get_model(keep_torch_compile=False).load_state_dict(weights)

    def get_model(self, keep_torch_compile: bool = True) -> nn.Module:
        """The model without distributed / mixed-precision wrappers."""
        raise self._missing("get_model")

    def model_for_evaluation(self) -> nn.Module:
        """The module that evaluation and prediction run through."""
        raise self._missing("model_for_evaluation")

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` (loss scaling and engines included)."""
        raise self._missing("backward")

    def no_gradient_sync(self) -> AbstractContextManager[Any]:
        """A context in which backward passes do not synchronise gradients across processes."""
        raise self._missing("no_gradient_sync")

    def unscale_and_clip_gradients(
        self, clip_value: float | None, clip_norm: float | None
    ) -> torch.Tensor | None:
        """Unscale the gradients (fp16), then clip them by value and/or total norm; return the
        total norm that clipping by norm computed (before clipping, a tensor on the device), or
        ``None`` when clipping by value only."""
        raise self._missing("unscale_and_clip_gradients")

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over all processes."""
        raise self._missing("reduce_sum")

    def broadcast_from_main(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` as the first process has it, on every process."""
        raise self._missing("broadcast_from_main")

    def int_from_main(self, value: int) -> int:
        """``value`` as the first process has it, on every process (every process must call
        it)."""
        raise self._missing("int_from_main")

    def any_process(self, flag: bool) -> bool:
        """Whether ``flag`` is true on at least one process (every process must call it)."""
        raise self._missing("any_process")

    @property
    def forward_is_collective(self) -> bool:
        """Whether a forward pass of the run's model is a collective operation, which every
        process must run as often as the others: ``True`` for FSDP and DeepSpeed ZeRO-3 on
        several processes (each forward pass gathers the sharded parameters), ``False`` on one
        process and under DDP (evaluation runs through the module inside the wrapper). When
        it is ``True``, evaluation and ``predict()`` keep the processes in step (see
        ``EvaluationMixin``). Supplied by the adapter (``AccelerateMixin``), which decides
        what kind of run this is; an adapter for another engine overrides it (no ``super()``).
        Known from the start of the run (``_begin_run``); asks no other process."""
        raise self._missing("forward_is_collective")

    def wait_for_everyone(self) -> None:
        """Block until every process reaches this point."""
        raise self._missing("wait_for_everyone")

    @property
    def optimizer_step_was_skipped(self) -> bool:
        """``True`` when the last optimizer step was skipped (fp16 overflow)."""
        return False

    def call_loop_event(self, event: str, **kwargs: Any) -> None:
        """Fire callback ``event`` from inside the training or evaluation loop. On several
        processes the adapter holds a :class:`~pa_mixins.callbacks.StopTrainingError` until the
        next :meth:`agree_on_stop`. Not meant to be overridden."""
        self.callback_handler.call_event(event, self, **kwargs)

    def agree_on_stop(self) -> None:
        """A point where every process learns whether one of them was asked to stop; then all
        raise :class:`~pa_mixins.callbacks.StopTrainingError` together. No-op on one process.
        Not meant to be overridden."""

    def start_stop_agreement(self) -> None:
        """Begin the next :meth:`agree_on_stop` now, without waiting for it: what the
        processes hold so far is agreed on while the work up to that call runs (the loop calls
        it before the backward pass of an update, so the agreement overlaps DDP's gradient
        all-reduce). No-op on one process. Not meant to be overridden."""

    # ------------------------------------------------------------------------------------------
    # Hooks of the run (public, overridable). Hooks of the epochs live in the loop mixins.
    # ------------------------------------------------------------------------------------------

    def create_train_dataloader(
        self, batch_size: int, train_dl_kwargs: dict[str, Any] | None = None
    ) -> Iterable[Any]:
        """Create the training loader (``TrainingLoopMixin``)."""
        raise self._missing("create_train_dataloader", "TrainingLoopMixin")

    def create_eval_dataloader(
        self, batch_size: int, eval_dl_kwargs: dict[str, Any] | None = None
    ) -> Iterable[Any]:
        """Create the evaluation loader (``EvaluationMixin``)."""
        raise self._missing("create_eval_dataloader", "EvaluationMixin")

    def _run_eval_epoch(
        self, valid_dl: Any, is_training: bool = True, is_intermediate: bool = False
    ) -> None:
        """One evaluation epoch (``EvaluationMixin``)."""
        raise self._missing("_run_eval_epoch", "EvaluationMixin")

    def training_run_start(self) -> None:
        """Called once at the start of ``train()``, before the first epoch. Extend with
        ``super().training_run_start()`` called first."""

    def training_run_epoch_end(self) -> None:
        """Called after each epoch's training and evaluation, before the epoch counter moves.
        Extend with ``super().training_run_epoch_end()`` called last."""

    def training_run_end(self) -> None:
        """Called once at the end of ``train()``; here it removes the distributed and
        mixed-precision wrappers from ``self.model``. Extend with
        ``super().training_run_end()`` called last."""
        self._unwrap_model()

    def evaluation_run_start(self) -> None:
        """Called once at the start of ``evaluate()``. Extend with super() called first."""

    def evaluation_run_end(self) -> None:
        """Called once at the end of ``evaluate()``; here it removes the wrappers from
        ``self.model``. Extend with ``super().evaluation_run_end()`` called last."""
        self._unwrap_model()

    def _unwrap_model(self) -> None:
        """Make ``self.model`` the model without its run's wrappers again."""
        self.model = self.get_model()

    # ------------------------------------------------------------------------------------------
    # Extension seams. The loop calls them at fixed points; the defaults live here, at the
    # root, so a mixin extending one (calling super()) works wherever it stands among the
    # bases. docs/mixins.md lists which mixin extends each in the ready-made trainers.
    # ------------------------------------------------------------------------------------------

    def get_accelerator_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Accelerator(...)``. Extended by ``MixedPrecisionMixin`` and
        ``AccelerateMixin``: add to the dict that ``super().get_accelerator_kwargs()`` returns."""
        return {}

    def configure_run(self, train_arguments: Mapping[str, Any]) -> None:
        """Setup step of ``train()``, before the Accelerator exists: read the ``train()``
        arguments your mixin depends on (``train_arguments``, by name) and refuse what it
        cannot do, with a clear error before anything runs (``DeepSpeedMixin`` writes them
        into the engine's config). Extend with ``super()`` called first."""

    def reset_run_state(self) -> None:
        """First setup step of ``train()``: forget the previous run's state (the loop its
        position, accumulation its open group, checkpointing its pending saves). Extend with
        ``super()`` called first."""

    def setup_scheduler(self, create_scheduler_fn: Callable[..., Any] | None) -> None:
        """Setup step of ``train()``, once the run config exists: create the scheduler
        (``SchedulerMixin``). Extend with ``super()`` called first."""

    def resume_run(self, resume_from: str | None) -> None:
        """Setup step of ``train()``, once the scheduler exists: load the training state to
        resume from (``CheckpointMixin``). Extend with ``super()`` called first."""

    def training_run_context(self) -> AbstractContextManager[Any]:
        """A context the loop enters around the epochs of ``train()`` (``CheckpointMixin``
        catches stop signals inside it). Extend by entering ``super().training_run_context()``
        inside your own context."""
        return nullcontext()

    def is_update_step(self, step: int) -> bool:
        """Whether micro-batch ``step`` of the epoch ends an optimizer update: always here;
        ``GradientAccumulationMixin`` groups micro-batches. Extend with ``super()``."""
        return True

    def loss_for_backward(self, batch_output: BatchOutput) -> torch.Tensor:
        """The tensor to back-propagate for a micro-batch: the loss here;
        ``GradientAccumulationMixin`` scales it. Extend by transforming ``super()``'s result."""
        loss: torch.Tensor = batch_output["loss"]
        return loss

    def before_optimizer_step(self) -> None:
        """Make the gradients final before the optimizer steps: here, clip them
        (:meth:`_clip_gradients`). A mixin that changes gradients (``GradientAccumulationMixin``
        rescales a short group) does so and calls ``super()`` last, so clipping comes after."""
        self._clip_gradients()

    def _clip_gradients(self) -> None:
        """Clip gradients by value and/or norm as the run config says (once per update,
        after unscaling). pytorch-accelerated's name; override to change the policy."""
        config = self.run_config
        if config is not None and (
            config.gradient_clip_value is not None or config.gradient_clip_norm is not None
        ):
            self._last_grad_norm = self.unscale_and_clip_gradients(
                config.gradient_clip_value, config.gradient_clip_norm
            )

    def after_optimizer_step(self) -> None:
        """Between the optimizer step and ``zero_grad``: ``SchedulerMixin`` steps the
        scheduler here. Extend with ``super()`` called first."""

    def has_pending_update(self) -> bool:
        """Asked at the end of an epoch's batches: whether gradients wait for an update (an
        accumulation group left open by a short epoch, ``GradientAccumulationMixin``); the
        loop then applies it. Extend with ``super().has_pending_update() or ...``."""
        return False

    def at_safe_point(self, point: SafePoint) -> None:
        """The loop reached a point where the run can be cut and continued without changing
        a bit of the result (``CheckpointMixin`` writes training states and stops on signals
        here). ``point`` says where: ``"epoch_start"`` (before an epoch's first batch),
        ``"micro_batch"`` (after a micro-batch inside an accumulation group), ``"update"``
        (after an optimizer update and its ``on_optimizer_step_end``), ``"train_done"`` (after
        an epoch's ``on_train_epoch_end``) or ``"eval_done"`` (after the epoch's evaluation).
        Cheap by contract: it runs after every micro-batch. Extend with ``super()``."""

    #: ``True`` when an engine (DeepSpeed) saves the model and the optimizer of training states
    #: itself (:meth:`save_engine_state`), instead of ``training_state_dict``'s weights
    engine_saves_weights: ClassVar[bool] = False

    @property
    def engine(self) -> Any:
        """The engine that owns the model and the optimizer in the current run (DeepSpeed's
        ``DeepSpeedEngine``), else ``None``."""
        return None

    def save_engine_state(self, folder: Path) -> None:
        """Write the engine's own checkpoint files into ``folder`` (every process; part of a
        training state, committed by its manifest): ``DeepSpeedMixin``. Nothing by default."""

    def load_engine_state(self, folder: Path) -> None:
        """Load what :meth:`save_engine_state` wrote in ``folder``. Nothing by default."""

    # ------------------------------------------------------------------------------------------
    # Run state, contributed by each class that owns some (see docs/mixins.md, "Write a
    # stateful mixin"). A training state holds the shared dict once and one process dict per
    # process; only tensors and plain values are allowed.
    # ------------------------------------------------------------------------------------------

    def training_state_dict(self) -> dict[str, Any]:
        """The run's state, the same on every process: here the model weights, the optimizer,
        the run history and the callbacks' states. Extend by calling ``super()`` first and
        adding your own key."""
        weights = not self.engine_saves_weights
        return {
            "model": self.get_model(keep_torch_compile=False).state_dict() if weights else None,
            "optimizer": self.optimizer.state_dict()
            if weights and self.optimizer is not None
            else None,
            "run_history": self.run_history.state_dict(),
            "callbacks": self.callback_handler.state_dict(),
        }

    def load_training_state_dict(self, state: dict[str, Any], resume: bool = True) -> None:
        """Take back a :meth:`training_state_dict`.

        With ``resume=True`` (``train(resume_from=...)``) the run continues where the state
        was saved: take back everything. With ``resume=False`` (``load_training_state``, to
        start a new run from a state) take back only what a new run keeps: weights,
        optimizer, scheduler, grad scaler (and, per process, the random generators).

        Extend in three steps: check your key (raise a clear error if it does not fit this
        run), call ``super()``, then apply it; so every check runs before anything changes.
        Here: the weights and the optimizer (checked first), then, when resuming, the run
        history and the callbacks' states (given back after ``on_training_run_start``)."""
        if (state["model"] is None) != self.engine_saves_weights:
            saved_by = "an engine" if state["model"] is None else "the trainer"
            raise CheckpointError(
                f"The training state's weights were saved by {saved_by}; this trainer "
                f"{'uses' if self.engine_saves_weights else 'does not use'} an engine's "
                "checkpoint (DeepSpeed, FSDP): resume with the same kind of trainer"
            )
        if state["model"] is not None:
            model = self.get_model(keep_torch_compile=False)
            check_model_fits(model, state["model"], "The training state")
            if self.optimizer is not None and state["optimizer"] is not None:
                check_optimizer_fits(self.optimizer, state["optimizer"], "the training state")
            model.load_state_dict(state["model"])
            if self.optimizer is not None and state["optimizer"] is not None:
                self.optimizer.load_state_dict(state["optimizer"])
        if resume:
            self.run_history.load_state_dict(state["run_history"])
            self.callback_handler.load_state_dict(state["callbacks"])

    def process_state_dict(self) -> dict[str, Any]:
        """This process's own part of the run's state (random generators, a running loss, an
        open accumulation group). Extend by calling ``super()`` first and adding your key."""
        return {}

    def load_process_state_dict(self, state: dict[str, Any], resume: bool = True) -> None:
        """Take back a :meth:`process_state_dict` (check, ``super()``, apply, as
        :meth:`load_training_state_dict`). State that belongs to a later moment of the loop
        (the random generators at the first resumed batch) is kept until then by its owner."""
