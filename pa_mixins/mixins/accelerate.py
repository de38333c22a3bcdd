"""``AccelerateMixin``: the adapter between the trainer and Hugging Face Accelerate.

This is the only module of ``pa_mixins`` that imports ``accelerate``. Every hardware action of
the other mixins (device placement, preparation for distributed training, backward, gradient
synchronisation, clipping, gathering, printing, process roles) goes through its methods.

Speed: Accelerate's wrappers cost time on every step (``AcceleratedOptimizer.step`` re-checks
package availability, its ``zero_grad`` inspects a signature, ``Accelerator.backward`` divides
the loss even without accumulation, the dataloader wrapper moves and looks ahead one batch).
The adapter uses them only where a setup needs them:

* the optimizer is wrapped, and ``Accelerator.backward`` used, only with a gradient scaler
  (fp16) or an engine that owns the optimizer (DeepSpeed, FSDP, Megatron-LM, XLA);
* dataloaders are prepared only when there are several processes (sharding) or the device is
  not the CPU (placement); a single CPU process iterates the user's loader as it is;
* the model always goes through ``prepare_model`` (device, DDP wrapper, autocast).

``tests/test_adapter_paths.py`` trains with and without the wrappers (and against a hand-written
Accelerate loop) and finds the same weights, bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from typing_extensions import override

from pa_mixins.base import BaseTrainer
from pa_mixins.callback_base import StopTrainingError
from pa_mixins.distributed import (
    DEFAULT_PROCESS_GROUP_TIMEOUT_S,
    PendingStopAgreement,
    StopFlagInGradients,
    agreed_stop,
    as_timedelta,
    broadcast_buffers_from_main,
    carry_stop_flag,
    register_exit_handler,
    start_stop_agreement,
)
from pa_mixins.engines import (
    EngineSettings,
    prepare_deepspeed_environment,
    reconcile_deepspeed_config,
)
from pa_mixins.sharded_state import is_sharded
from pa_mixins.utils import remove_padding

if TYPE_CHECKING:
    from accelerate import Accelerator, notebook_launcher

__all__ = ["AccelerateMixin", "notebook_launcher"]


def __getattr__(name: str) -> Any:
    """``notebook_launcher`` is Accelerate's, imported on first use."""
    if name == "notebook_launcher":
        from accelerate import notebook_launcher

        return notebook_launcher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# accelerate is imported when the first Accelerator is made, not with the package (it costs
# about a tenth of ``import torch``). Accelerate's ``DistributedType`` is a ``str`` enum, so
# its members compare equal to these names.
_DEEPSPEED, _FSDP, _NO = "DEEPSPEED", "FSDP", "NO"
_ENGINES_OWNING_THE_OPTIMIZER = frozenset({_DEEPSPEED, _FSDP, "MEGATRON_LM", "XLA"})

_DATA_PARALLEL = (nn.parallel.DistributedDataParallel, nn.DataParallel)

_ENGINE_PLUGINS = ("deepspeed_plugin", "fsdp_plugin")

WORKING_CPU_LAUNCHES = (
    "ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node N script.py, or "
    "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N script.py"
)


@contextmanager
def _not_an_update(accelerator: Accelerator) -> Iterator[None]:
    """Backward passes inside do not end an update: DeepSpeed accumulates and does not step."""
    accelerator.sync_gradients = False
    try:
        yield
    finally:
        accelerator.sync_gradients = True


def reset_accelerate_state() -> None:
    """Forget Accelerate's process-wide state (mixed precision, plugins), keeping the process
    group. Tests call it between cases.

    An FSDP state writes FSDP into Accelerate's process state (``PartialState``), which the
    next state takes as given, skipping the setup of its FSDP plugin (so a second FSDP run in
    a process, e.g. ``evaluate()`` after ``train()``, failed): that process state is then
    forgotten too, and derived again from the launch when the next ``Accelerator`` is made
    (the process group exists already and is not created again)."""
    from accelerate.state import AcceleratorState, PartialState

    derive_again = PartialState._shared_state.get("distributed_type") == _FSDP
    AcceleratorState._reset_state(reset_partial_state=derive_again)


class AccelerateMixin(BaseTrainer):
    """Runs the trainer's hardware work through an :class:`accelerate.Accelerator`.

    :param accelerator_kwargs: extra arguments for ``Accelerator(...)`` (e.g.
        ``{"kwargs_handlers": [DistributedDataParallelKwargs(find_unused_parameters=True)]}``),
        so that no private method needs overriding. Other mixins add theirs through
        :meth:`get_accelerator_kwargs`.
    :param process_group_timeout: seconds (or a ``timedelta``) a collective operation of a
        run on several processes may wait for the other processes before it fails with an
        error; a process that died or hangs then ends the run instead of blocking it forever.
        Default 1800 s (torch's gloo default, used for every backend). Only the first
        ``Accelerator`` of a process creates the process group, so only its value counts; an
        ``InitProcessGroupKwargs`` in ``accelerator_kwargs`` wins.

    A fresh ``Accelerator`` is created at the start of every ``train()`` / ``evaluate()`` (and
    on first use of :attr:`device`, :meth:`print` or a process role before that).
    """

    init_options: ClassVar[tuple[str, ...]] = ("accelerator_kwargs", "process_group_timeout")

    def __init__(
        self,
        *args: Any,
        accelerator_kwargs: dict[str, Any] | None = None,
        process_group_timeout: float | timedelta = DEFAULT_PROCESS_GROUP_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        self.accelerator_kwargs: dict[str, Any] = dict(accelerator_kwargs or {})
        self.process_group_timeout = as_timedelta(process_group_timeout)
        self._defer_stops = False
        self._deferred_stop: StopTrainingError | None = None
        self._pending_stop_agreement: PendingStopAgreement | None = None
        self._stop_flag_carrier: StopFlagInGradients | None = None
        self._accelerator: Accelerator | None = None
        self._engine_owns_optimizer = False
        self._engine_settings: EngineSettings | None = None
        self._run_trains = False  # set by train() for the hardware run it starts
        self._reusing_engine = False
        #: the run's ``torch.compile`` keyword arguments (``CompileMixin``), else ``None``
        self._compile_kwargs: dict[str, Any] | None = None
        super().__init__(*args, **kwargs)

    # -- the accelerator --------------------------------------------------------------------

    @override
    def get_accelerator_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``Accelerator(...)``: the other mixins' settings, then
        ``accelerator_kwargs`` (which wins)."""
        from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs

        # Batches go to a GPU without blocking (from the pinned memory of the default loaders),
        # so the copy is no per-step host synchronisation.
        defaults = {"dataloader_config": DataLoaderConfiguration(non_blocking=True)}
        kwargs = {**defaults, **super().get_accelerator_kwargs(), **self.accelerator_kwargs}
        handlers = list(kwargs.get("kwargs_handlers") or [])
        if not any(isinstance(handler, InitProcessGroupKwargs) for handler in handlers):
            kwargs["kwargs_handlers"] = [
                *handlers,
                InitProcessGroupKwargs(timeout=self.process_group_timeout),
            ]
        return kwargs

    @property
    def accelerator(self) -> Accelerator:
        """The current ``Accelerator`` (created on first use)."""
        if self._accelerator is None:
            self._accelerator = self._create_accelerator()
        return self._accelerator

    def _create_accelerator(self) -> Accelerator:
        """Create the ``Accelerator`` from :meth:`get_accelerator_kwargs`.

        Accelerate keeps one process-wide state and refuses a second mixed-precision setting
        in the same process; when this trainer asks for another one than the state holds, the
        state (not the process group) is reset first, so several trainers with different
        settings can be used one after the other.
        """
        kwargs = self.get_accelerator_kwargs()
        # plain data from CompileMixin: applied by prepare_for_hardware, not by Accelerate
        self._compile_kwargs = kwargs.pop("torch_compile", None)
        self._check_compile(kwargs)
        self._engine_plugins(kwargs)
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        state = AcceleratorState._shared_state
        if state:
            wanted = kwargs.get("mixed_precision") or os.environ.get(
                "ACCELERATE_MIXED_PRECISION", "no"
            )
            engines = any(kwargs.get(name) is not None for name in _ENGINE_PLUGINS) or any(
                state.get(name) for name in ("deepspeed_plugins", "fsdp_plugin")
            )
            if engines or state.get("_mixed_precision", "no") != str(wanted):
                reset_accelerate_state()
        # Accelerator(fsdp_plugin=...) sets ACCELERATE_USE_FSDP for the whole process, where a
        # later Accelerator would read it: what the launcher set is put back afterwards.
        launcher_fsdp = os.environ.get("ACCELERATE_USE_FSDP")
        try:
            accelerator = Accelerator(**kwargs)
        finally:
            if launcher_fsdp is None:
                os.environ.pop("ACCELERATE_USE_FSDP", None)
            else:
                os.environ["ACCELERATE_USE_FSDP"] = launcher_fsdp
        self._check_launch(accelerator)
        fsdp_asked = kwargs.get("fsdp_plugin") is not None or (
            (launcher_fsdp or "").lower() == "true"
        )
        self._check_engine(accelerator, fsdp_asked)
        self._check_compile(kwargs, accelerator)
        if accelerator.num_processes > 1:
            register_exit_handler()
        return accelerator

    @staticmethod
    def _check_launch(accelerator: Accelerator) -> None:
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and accelerator.num_processes == 1:
            raise RuntimeError(
                f"The launcher started {launched} processes (WORLD_SIZE={launched}), but "
                "Accelerate set this one up as a single process, so every process would train "
                "alone as rank 0. On a machine without GPUs, tell Accelerate to use the CPU: "
                f"{WORKING_CPU_LAUNCHES}."
            )

    def _engine_plugins(self, kwargs: dict[str, Any]) -> None:
        """Turn the engine configs that mixins put in the kwargs as plain data
        (``deepspeed_config``, ``fsdp_config``) into Accelerate's plugins, the trainer's
        settings written into the DeepSpeed config first."""
        from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin

        deepspeed_config = kwargs.pop("deepspeed_config", None)
        if deepspeed_config is not None:
            if self._engine_settings is not None:
                world_size = int(os.environ.get("WORLD_SIZE", "1"))
                reconcile_deepspeed_config(deepspeed_config, self._engine_settings, world_size)
            prepare_deepspeed_environment()
            kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=deepspeed_config)
        fsdp_config = kwargs.pop("fsdp_config", None)
        if fsdp_config is not None:
            kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(**fsdp_config)

    @staticmethod
    def _check_engine(accelerator: Accelerator, fsdp_asked: bool) -> None:
        if fsdp_asked and accelerator.distributed_type != _FSDP:
            raise RuntimeError(
                "FSDP was asked for, but Accelerate set this run up as "
                f"{accelerator.distributed_type} (on a machine without GPUs it silently falls "
                "back to plain data parallelism): FSDP needs GPUs; leave it out to train with "
                "DDP on the CPU"
            )

    @override
    def configure_run(self, train_arguments: Mapping[str, Any]) -> None:
        """Records what an engine must follow (batch sizes, accumulation, clipping)."""
        super().configure_run(train_arguments)
        self._engine_settings = EngineSettings.from_train_arguments(train_arguments)
        self._run_trains = True

    @override
    def start_hardware_run(self) -> None:
        """Begin a run on a fresh ``Accelerator`` (called at the start of train/evaluate).

        After a DeepSpeed run, whose engine now holds the model and the optimizer (sharded
        from ZeRO-1 on), ``evaluate()`` and ``predict()`` run through that engine instead, and
        a second ``train()`` is refused with a clear error. After an FSDP run, whose model
        ``fully_shard`` changed in place (Accelerate cannot prepare it again), likewise:
        ``evaluate()`` and ``predict()`` run on that run's ``Accelerator`` and sharded model,
        and a second ``train()`` is refused."""
        trains, self._run_trains = self._run_trains, False
        engine = self.engine if self._accelerator is not None else None
        sharded = (
            self._accelerator is not None
            and self._accelerator.distributed_type == _FSDP
            and is_sharded(self.model)
        )
        self._reusing_engine = (engine is not None or sharded) and not trains
        if self._reusing_engine:
            self._defer_stops = self.accelerator.num_processes > 1
            self._deferred_stop = None
            self._pending_stop_agreement = None
            return
        if engine is not None and engine.zero_optimization_stage() >= 1:
            raise RuntimeError(
                "This trainer's model and optimizer now belong to its DeepSpeed engine (ZeRO "
                f"stage {engine.zero_optimization_stage()} shards them), which cannot be set up "
                "a second time: train again with a new trainer (load the exported weights or "
                "resume from a training state)"
            )
        if sharded:
            raise RuntimeError(
                "This trainer's model is now sharded by its FSDP run (fully_shard changed it in "
                "place), and Accelerate cannot prepare it a second time: train again with a new "
                "trainer (load the exported weights or resume from a training state)"
            )
        previous = self._accelerator
        if previous is not None:
            device = getattr(previous.state, "device", None)  # None after a state reset
            if self._engine_owns_optimizer or device is None or device.type != "cpu":
                # Frees the previous run's device memory (engines included). It runs
                # gc.collect(), a tenth of a second in a large process: not after a CPU run.
                previous.free_memory()
        self._accelerator = self._create_accelerator()
        acc = self._accelerator
        self._engine_owns_optimizer = self._uses_accelerate_wrappers(acc)
        self._defer_stops = acc.num_processes > 1
        self._deferred_stop = None
        self._pending_stop_agreement = None
        self._stop_flag_carrier = None

    @staticmethod
    def _uses_accelerate_wrappers(acc: Accelerator) -> bool:
        """Whether the run needs Accelerate's optimizer wrapper and ``Accelerator.backward``:
        with a gradient scaler (fp16) or an engine that owns the optimizer."""
        return acc.distributed_type in _ENGINES_OWNING_THE_OPTIMIZER or acc.scaler is not None

    def _check_compile(
        self, kwargs: Mapping[str, Any], accelerator: Accelerator | None = None
    ) -> None:
        """Refuse the compile option on a run that an engine owns: before the Accelerator
        exists, from the engine configs among its ``kwargs`` (so nothing of the engine is set
        up), and once it exists, for an engine that the launch chose."""
        if self._compile_kwargs is None:
            return
        engine_keys = {"deepspeed_config": "DEEPSPEED", "deepspeed_plugin": "DEEPSPEED"}
        engine_keys.update(fsdp_config="FSDP", fsdp_plugin="FSDP")
        named = [name for key, name in engine_keys.items() if kwargs.get(key) is not None]
        engine = named[0] if named else None
        if accelerator is not None:
            distributed_type = accelerator.distributed_type
            if distributed_type in _ENGINES_OWNING_THE_OPTIMIZER:
                engine = str(getattr(distributed_type, "value", distributed_type))
        if engine is not None:
            raise ValueError(
                f"compile= cannot be used on a {engine} run: the trainer compiles the models it "
                "prepares itself (one process or DDP), not one that an engine owns. Leave "
                "compile off with this engine."
            )

    @staticmethod
    def _compiled(model: nn.Module, options: dict[str, Any]) -> nn.Module:
        """``model`` (prepared: in its DDP wrapper, with mixed precision) through
        ``torch.compile``, last, as PyTorch recommends for DDP."""
        if hasattr(model, "_orig_mod"):
            raise ValueError(
                "compile= was given, but Accelerate compiled the model already (a launch with "
                "--dynamo_backend / ACCELERATE_DYNAMO_BACKEND, or dynamo_backend / dynamo_plugin "
                "in accelerator_kwargs): compile once, with one of them"
            )
        compiled = torch.compile(model, **options)
        assert isinstance(compiled, nn.Module)
        return compiled

    # -- preparation ------------------------------------------------------------------------

    @staticmethod
    def _set_even_batches(dataloader: Any, even_batches: bool) -> None:
        batch_sampler: Any = getattr(dataloader, "batch_sampler", None)
        if hasattr(batch_sampler, "even_batches"):
            batch_sampler.even_batches = even_batches

    def _prepare_dataloader(self, dataloader: Any, even_batches: bool) -> Any:
        acc = self.accelerator
        if dataloader is None or (acc.num_processes == 1 and acc.device.type == "cpu"):
            return dataloader
        prepared = acc.prepare_data_loader(dataloader)
        self._set_even_batches(prepared, even_batches)
        return prepared

    def _prepare_eval_dataloader(self, dataloader: Any) -> Any:
        """One evaluation loader prepared on its own (``even_batches=False``)."""
        if not self._engine_owns_optimizer:
            return self._prepare_dataloader(dataloader, even_batches=False)
        prepared = self.accelerator.prepare(dataloader)
        self._set_even_batches(prepared, False)
        return prepared

    @override
    def prepare_for_hardware(
        self, model: nn.Module, optimizer: Any, train_dataloader: Any, eval_dataloader: Any
    ) -> tuple[nn.Module, Any, Any, Any]:
        """The model, the optimizer and the loaders prepared for this run's hardware.

        Training loaders use ``even_batches=True`` (every process gets the same number of
        batches; the last one is completed from the start of the data), evaluation loaders
        ``even_batches=False`` (no sample is seen twice). ``eval_dataloader`` may be a dict of
        loaders (several evaluation sets): each is prepared, the dict is returned.
        """
        if isinstance(eval_dataloader, Mapping):
            model, optimizer, train_dataloader, _ = self.prepare_for_hardware(
                model, optimizer, train_dataloader, None
            )
            loaders = {
                name: self._prepare_eval_dataloader(dl) for name, dl in eval_dataloader.items()
            }
            return model, optimizer, train_dataloader, loaders
        acc = self.accelerator
        if self._reusing_engine:  # evaluation or prediction after a DeepSpeed or FSDP run
            prepared = self.engine if self.engine is not None else model  # FSDP: sharded
            return prepared, optimizer, None, self._prepare_eval_dataloader(eval_dataloader)
        if acc.distributed_type == _DEEPSPEED and self._engine_settings is not None:
            config = acc.state.deepspeed_plugin.deepspeed_config
            reconcile_deepspeed_config(config, self._engine_settings, acc.num_processes)
        if self._engine_owns_optimizer:
            # Engines (DeepSpeed needs the loaders to infer its batch size) prepare all at once.
            objects = [model, optimizer, train_dataloader, eval_dataloader]
            present = [i for i, obj in enumerate(objects) if obj is not None]
            prepared = acc.prepare(*(objects[i] for i in present))
            for i, obj in zip(present, prepared if len(present) > 1 else [prepared]):
                objects[i] = obj
            self._set_even_batches(objects[3], False)
            return objects[0], objects[1], objects[2], objects[3]
        model = acc.prepare_model(model)
        if self._defer_stops:
            self._stop_flag_carrier = carry_stop_flag(model)
        if self._compile_kwargs is not None:
            model = self._compiled(model, self._compile_kwargs)
        if optimizer is not None and optimizer.state and acc.device.type != "cpu":
            # Move existing optimizer state (e.g. loaded from a checkpoint) next to the params.
            optimizer.load_state_dict(optimizer.state_dict())
        return (
            model,
            optimizer,
            self._prepare_dataloader(train_dataloader, even_batches=True),
            self._prepare_dataloader(eval_dataloader, even_batches=False),
        )

    # -- the hardware interface used by the other mixins --------------------------------------

    @property
    @override
    def device(self) -> torch.device:
        return self.accelerator.device

    @override
    def print(self, *args: Any, **kwargs: Any) -> None:
        self.accelerator.print(*args, **kwargs)

    @property
    @override
    def is_local_process_zero(self) -> bool:
        return self.accelerator.is_local_main_process

    @property
    @override
    def is_world_process_zero(self) -> bool:
        return self.accelerator.is_main_process

    @property
    @override
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    @override
    def process_index(self) -> int:
        return self.accelerator.process_index

    @property
    @override
    def is_distributed(self) -> bool:
        return self.accelerator.distributed_type != _NO

    @property
    @override
    def mixed_precision(self) -> str:
        return str(self.accelerator.mixed_precision)

    @override
    def gather(self, tensor: Any, padding_value: Any = None) -> Any:
        """Gather ``tensor`` (or a nested structure of tensors) from every process,
        concatenated along dim 0. With ``padding_value``, tensors of different lengths are
        padded to the longest before gathering and the padding rows removed after (rows
        equal to ``padding_value`` everywhere are removed too)."""
        acc = self.accelerator
        if padding_value is None:
            return acc.gather(tensor) if acc.num_processes > 1 else tensor
        padded = acc.pad_across_processes(tensor, pad_index=padding_value)
        gathered = acc.gather(padded) if acc.num_processes > 1 else padded
        return remove_padding(gathered, padding_value)

    @override
    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return tensor
        return self.accelerator.reduce(tensor.clone(), reduction="sum")

    @override
    def broadcast_from_main(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return tensor
        from accelerate.utils import broadcast

        return broadcast(tensor.to(self.device), from_process=0)

    @override
    def int_from_main(self, value: int) -> int:
        if self.accelerator.num_processes == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        return int(self.broadcast_from_main(tensor).item())

    @override
    def any_process(self, flag: bool) -> bool:
        if self.accelerator.num_processes == 1:
            return flag
        total = self.reduce_sum(torch.tensor([1.0 if flag else 0.0], device=self.device))
        return bool(total.item() > 0)

    @property
    @override
    def forward_is_collective(self) -> bool:
        """``True`` for FSDP and for DeepSpeed ZeRO-3 (the engine's stage after a DeepSpeed
        run, else the config's), each on several processes; ``False`` otherwise (one
        process, DDP, other engines)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return False
        if acc.distributed_type == _FSDP:
            return True
        if acc.distributed_type != _DEEPSPEED:
            return False
        engine = self.engine
        if engine is not None:
            return bool(engine.zero_optimization_stage() == 3)
        plugin = acc.state.deepspeed_plugin
        return plugin is not None and bool(plugin.hf_ds_config.is_zero3())

    @override
    def wait_for_everyone(self) -> None:
        self.accelerator.wait_for_everyone()

    @property
    @override
    def engine(self) -> Any:
        wrapped = getattr(self.accelerator, "deepspeed_engine_wrapped", None)
        return None if wrapped is None else wrapped.engine

    @override
    def full_model_state_dict(self) -> dict[str, Any]:
        """Through ``Accelerator.get_state_dict``: gathers ZeRO-3 and FSDP shards (from the
        engine, which still holds them after ``train()``)."""
        model = self.engine if self.engine is not None else self.model
        compiled = getattr(model, "_orig_mod", None) if self.engine is None else None
        if isinstance(compiled, nn.Module):
            # Accelerate's unwrapping, keeping a compile wrapper, would point a compiled DDP
            # wrapper at the module inside (out of DDP): the wrapper is left out here.
            model = compiled
        state: dict[str, Any] = self.accelerator.get_state_dict(model)
        return {key.removeprefix("_orig_mod."): value for key, value in state.items()}

    @override
    def get_model(self, keep_torch_compile: bool = True) -> nn.Module:
        """The model without the distributed and mixed-precision wrappers; with
        ``keep_torch_compile=False`` also without a ``torch.compile`` wrapper. The wrapper of
        the ``compile`` option (``CompileMixin``) belongs to the run and is always left out,
        so your module comes back (and ``self.model`` is it again after the run). A model with
        no wrapper is returned as it is, without asking Accelerate (whose unwrapping imports
        DeepSpeed, when installed, for every run)."""
        model = self.model
        compiled = getattr(model, "_orig_mod", None)
        if isinstance(compiled, nn.Module) and (
            not keep_torch_compile or self._compile_kwargs is not None
        ):
            model = compiled
        if self.accelerator.distributed_type in _ENGINES_OWNING_THE_OPTIMIZER:
            return self.accelerator.unwrap_model(model, keep_torch_compile=keep_torch_compile)
        if not isinstance(model, _DATA_PARALLEL):
            return model
        # A DDP (or DataParallel) wrapper is taken off here: Accelerate's unwrapping would
        # import DeepSpeed, when installed, at the end of every multi-process run (seconds).
        while isinstance(model, _DATA_PARALLEL):
            model = model.module
        inner = getattr(model, "_orig_mod", None)
        if not keep_torch_compile and isinstance(inner, nn.Module):
            model = inner
        return model

    def autocast(self) -> AbstractContextManager[Any]:
        """A context that runs code in this run's mixed precision (the prepared model's
        forward already does)."""
        return self.accelerator.autocast()

    @override
    def backward(self, loss: torch.Tensor) -> None:
        acc = self.accelerator
        if acc.distributed_type == _DEEPSPEED:
            # DeepSpeed steps inside backward at an accumulation boundary; the loss is already
            # scaled by GradientAccumulationMixin, exactly as without the engine.
            acc.backward(loss, scale_wrt_gas=False)
        elif self._engine_owns_optimizer:
            acc.backward(loss)
        else:
            loss.backward()

    @override
    def no_gradient_sync(self) -> AbstractContextManager[Any]:
        acc = self.accelerator
        if acc.distributed_type == _DEEPSPEED:
            return _not_an_update(acc)
        if acc.num_processes == 1 and not self._engine_owns_optimizer:
            return nullcontext()
        return acc.no_sync(self.model)

    @property
    @override
    def optimizer_step_was_skipped(self) -> bool:
        return self._engine_owns_optimizer and self.accelerator.optimizer_step_was_skipped

    def _parameters(self) -> Iterable[torch.Tensor]:
        return self.model.parameters()

    @override
    def unscale_and_clip_gradients(
        self, clip_value: float | None, clip_norm: float | None
    ) -> torch.Tensor | None:
        acc = self.accelerator
        if clip_value is not None and clip_norm is not None:
            acc.unscale_gradients()
            torch.nn.utils.clip_grad_value_(self._parameters(), clip_value)
            return torch.nn.utils.clip_grad_norm_(self._parameters(), clip_norm)
        if clip_value is not None:
            acc.clip_grad_value_(self._parameters(), clip_value)
            return None
        if clip_norm is not None:
            norm = acc.clip_grad_norm_(self._parameters(), clip_norm)
            return norm if isinstance(norm, torch.Tensor) else None  # engines clip themselves
        return None

    # -- run state: the grad scaler -------------------------------------------------------------

    def _refuse_sharded_engine(self) -> None:
        distributed_type = self.accelerator.distributed_type
        if distributed_type == _DEEPSPEED and not self.engine_saves_weights:
            raise NotImplementedError(
                "Training states of a DeepSpeed run need the engine's own checkpoint: use "
                "pa_mixins.DeepSpeedTrainer (or add DeepSpeedMixin to your trainer)"
            )
        if distributed_type == _FSDP and not self.engine_saves_weights:
            raise NotImplementedError(
                "Training states of an FSDP run need its sharded checkpoint: use "
                "pa_mixins.FSDPTrainer (or add FSDPMixin to your trainer)"
            )
        if distributed_type == "MEGATRON_LM":
            raise NotImplementedError(
                f"Training states of {distributed_type} runs (sharded model or optimizer) are "
                "not supported yet; save_checkpoint exports their full weights"
            )

    @override
    def training_state_dict(self) -> dict[str, Any]:
        """Adds ``grad_scaler``: the fp16 gradient scaler's state (``None`` without one)."""
        self._refuse_sharded_engine()
        state = super().training_state_dict()
        scaler = self.accelerator.scaler
        state["grad_scaler"] = None if scaler is None else dict(scaler.state_dict())
        return state

    @override
    def load_training_state_dict(self, state: dict[str, Any], resume: bool = True) -> None:
        self._refuse_sharded_engine()
        super().load_training_state_dict(state, resume)
        scaler = self.accelerator.scaler
        if scaler is not None and state.get("grad_scaler") is not None:
            scaler.load_state_dict(state["grad_scaler"])

    # -- distributed support ------------------------------------------------------------------
    # Agreement on stopping, evaluation without collectives, exact gathers. On one process
    # every method below returns at once.

    @override
    def call_loop_event(self, event: str, **kwargs: Any) -> None:
        """Fire a loop event. On several processes every callback still receives it on this
        process, and a :class:`StopTrainingError` raised by one is held until the next
        :meth:`agree_on_stop`, so this process keeps taking part in the collectives (DDP's
        gradient all-reduce) that the others are running. Not meant to be overridden."""
        if not self._defer_stops:
            self.callback_handler.call_event(event, self, **kwargs)
            return
        error = self.callback_handler.call_event_holding_stop(event, self, **kwargs)
        if self._deferred_stop is None:
            self._deferred_stop = error

    @override
    def start_stop_agreement(self) -> None:
        """Where DDP reduces the gradients of CPU processes (gloo), the flag rides in that
        all-reduce (:class:`~pa_mixins.distributed.StopFlagInGradients`): no collective of its
        own. Elsewhere (GPUs, engines) a flag all-reduce on a gloo group starts now, without
        waiting, and runs beside the backward pass."""
        if not self._defer_stops or self._pending_stop_agreement is not None:
            return
        carrier = self._stop_flag_carrier
        if carrier is not None:
            error, self._deferred_stop = self._deferred_stop, None
            carrier.arm(error)
            return
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return  # agree_on_stop agrees through Accelerate, waiting
        error, self._deferred_stop = self._deferred_stop, None
        self._pending_stop_agreement = start_stop_agreement(error, self.process_group_timeout)

    @override
    def agree_on_stop(self) -> None:
        """On several processes: one all-reduce of a flag on a CPU (gloo) group, which never
        waits for a GPU (started earlier by :meth:`start_stop_agreement` when the loop could).
        If any process holds a stop, every process raises a :class:`StopTrainingError` here:
        the error (same class, message and attributes) that the lowest such process raised,
        with ``process_index`` set to that process. A stop raised after the agreement started
        waits for the next one. Not meant to be overridden."""
        if not self._defer_stops:
            return
        carrier = self._stop_flag_carrier
        if carrier is not None and carrier.armed:
            error, holding = carrier.take()
            if holding is None:  # no synchronised backward pass ran (on any process)
                agreed = agreed_stop(error, self.process_group_timeout)
            elif holding > 0:
                agreed = carrier.first_stop(error, self.process_group_timeout)
            else:
                agreed = None
            if agreed is not None:
                raise agreed
            return
        pending, self._pending_stop_agreement = self._pending_stop_agreement, None
        if pending is not None:
            agreed = pending.result()
            if agreed is not None:
                raise agreed
            return
        error, self._deferred_stop = self._deferred_stop, None
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            flag = torch.tensor([0.0 if error is None else 1.0], device=self.device)
            if self.reduce_sum(flag).item() == 0:
                return
            raise error or StopTrainingError("Another process stopped the run")
        agreed = agreed_stop(error, self.process_group_timeout)
        if agreed is not None:
            raise agreed

    def _buffers_follow_main(self) -> bool:
        """Whether the prepared model is a DDP replica whose buffers DDP keeps equal to the
        first process's (``broadcast_buffers``, DDP's default)."""
        acc = self.accelerator
        if acc.num_processes == 1 or acc.distributed_type in _ENGINES_OWNING_THE_OPTIMIZER:
            return False
        handler = getattr(acc, "ddp_handler", None)
        return handler is None or bool(getattr(handler, "broadcast_buffers", True))

    @override
    def model_for_evaluation(self) -> nn.Module:
        """The module inside a DDP wrapper (its forward pass runs no collective, so processes
        with different numbers of evaluation batches, or none, cannot hang), after its
        buffers (e.g. BatchNorm running statistics) are made equal to the first process's,
        as DDP's next forward pass would. Other models are returned as they are (the forward
        pass of an FSDP or ZeRO-3 model stays collective: see :attr:`forward_is_collective`).
        A compiled DDP wrapper (the ``compile`` option) gives the module inside, compiled with
        the same options (its compiled code is reused from one evaluation to the next)."""
        model = self.model
        compiled = getattr(model, "_orig_mod", None)
        ddp = compiled if isinstance(compiled, nn.Module) else model
        if not isinstance(ddp, torch.nn.parallel.DistributedDataParallel):
            return model
        module: nn.Module = ddp.module
        if self._buffers_follow_main():
            broadcast_buffers_from_main(module)
        if compiled is not None and self._compile_kwargs is not None:
            return self._compiled(module, self._compile_kwargs)
        return module

    @override
    def training_run_end(self) -> None:
        """End of ``train()``: on several processes, makes the model's buffers equal to the
        first process's (DDP broadcasts them before each forward pass, so after the last one
        each replica has its own), so every replica holds the same weights. Extend with
        ``super().training_run_end()`` called last."""
        if self._defer_stops and self._buffers_follow_main():
            broadcast_buffers_from_main(self.model)
        super().training_run_end()

    @override
    def place_dataloader_on_device(self, dataloader: Any) -> Any:
        """``dataloader`` with its batches placed on this process's device, not sharded
        (each process iterates all of it)."""
        acc = self.accelerator
        if acc.device.type == "cpu":
            return dataloader
        from accelerate.data_loader import prepare_data_loader

        return prepare_data_loader(
            dataloader,
            device=acc.device,
            num_processes=1,
            process_index=0,
            put_on_device=True,
            non_blocking=acc.non_blocking,
        )

    @override
    def gather_in_order(self, data: Any, num_rows: int) -> Any:
        acc = self.accelerator
        if acc.num_processes == 1:
            return data
        from accelerate.utils import find_batch_size, recursively_apply

        counts = acc.gather(torch.tensor([num_rows], device=acc.device)).tolist()
        padded = acc.pad_across_processes(data, dim=0)
        gathered = acc.gather(padded)
        longest = int(find_batch_size(padded))
        keep = torch.cat(
            [
                torch.arange(rank * longest, rank * longest + count, dtype=torch.long)
                for rank, count in enumerate(counts)
            ]
        )
        return recursively_apply(
            lambda tensor: tensor.index_select(0, keep.to(tensor.device)), gathered
        )
