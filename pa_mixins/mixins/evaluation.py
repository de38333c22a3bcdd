"""``EvaluationMixin``: ``evaluate()``, ``predict()``, evaluation epochs and their hooks.

Exact on several processes: each process evaluates its own share of the data (no sample
twice, none missing), the loss is the sample-weighted mean over all of them, and an
evaluation forward pass runs no collective operation (through the module inside a DDP
wrapper, whose buffers are first made equal to the first process's), so processes with
different numbers of batches, or none, never wait for each other. ``predict()`` returns the
outputs of every sample, in dataset order, on every process.

Under an engine whose forward pass is itself collective (FSDP or DeepSpeed ZeRO-3 on several
processes, :attr:`~pa_mixins.base.BaseTrainer.forward_is_collective`: each forward pass
gathers the sharded parameters), the processes agree once, at the start of each evaluation
epoch (and of each ``predict()``), on the most batches any of them runs; a process with fewer
then runs padding passes (its last batch again, or a one-sample batch of the dataset's first
sample when it had none) until it has run as many, their outputs discarded and no callback
event fired for them. The results are the same as without the engine. This needs loaders
with a length: an ``IterableDataset`` for evaluation is refused there, before the run starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from itertools import islice
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, Subset
from typing_extensions import override

from pa_mixins.base import BaseTrainer, BatchOutput
from pa_mixins.callback_base import CallbackHandler, StopTrainingError
from pa_mixins.checks import (
    batch_is_not_a_pair,
    check_batch_output,
    check_dataset,
    check_loss_func,
    reads_loss_func,
    require_positive_int,
)
from pa_mixins.data import default_dataloader_kwargs, has_length, make_dataloader
from pa_mixins.tracking import LossTracker

__all__ = ["EvaluationMixin"]


def _concatenate(outputs: Sequence[Any]) -> Any:
    """Concatenate per-batch model outputs along dim 0: tensors, or dicts / lists / tuples of
    them (nested)."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(outputs))
    if isinstance(first, dict):
        return type(first)(
            {key: _concatenate([output[key] for output in outputs]) for key in first}
        )
    if isinstance(first, (list, tuple)):
        parts = [_concatenate([output[i] for output in outputs]) for i in range(len(first))]
        return type(first)(*parts) if hasattr(first, "_fields") else type(first)(parts)
    raise TypeError(
        "predict() gathers tensors, or dicts, lists and tuples of tensors; the model returned "
        f"{type(first).__name__}: override calculate_batch_predictions to return tensors"
    )


def _shard(num_samples: int, num_processes: int, process_index: int) -> tuple[list[int], int]:
    """The contiguous share of ``range(num_samples)`` that ``process_index`` predicts and its
    length. A process with no share gets sample 0 to compute (its rows are dropped), so that
    every process has outputs of the same structure to gather."""
    per_process = -(-num_samples // num_processes)
    start = min(process_index * per_process, num_samples)
    stop = min(start + per_process, num_samples)
    indices = list(range(start, stop))
    return (indices, len(indices)) if indices else ([0], 0)


def _check_countable(loader: Any) -> None:
    """Refuse an evaluation loader whose batches cannot be counted before the epoch, under an
    engine whose forward pass is collective."""
    if isinstance(getattr(loader, "dataset", None), IterableDataset) or not has_length(loader):
        raise ValueError(
            "Evaluation and predict() on several processes under FSDP or DeepSpeed ZeRO-3 need "
            "a map-style dataset (with a length): every forward pass gathers the sharded "
            "parameters from all processes, so each process runs as many forward passes as "
            "the one with the most batches, counted before the epoch starts; the batches of "
            "an IterableDataset (or of a loader without a length) cannot be counted. Evaluate "
            "a map-style dataset instead."
        )


def _spare_batch(loader: Any, place_on_device: Callable[[Any], Any]) -> Any:
    """A batch of the first sample of ``loader``'s dataset, collated as ``loader`` collates and
    placed on the device: what a process with no batch of its own runs its padding passes
    on."""
    dataset: Any = getattr(loader, "dataset", None)
    if isinstance(dataset, IterableDataset) or not has_length(dataset) or len(dataset) == 0:
        raise RuntimeError(
            "This process has no evaluation batch to run the forward passes that the other "
            "processes run (FSDP, DeepSpeed ZeRO-3), and its loader has no map-style dataset "
            "to take one from: give the evaluation loader a .dataset and a .collate_fn"
        )
    batched = getattr(loader, "batch_sampler", None) is not None  # else batches come whole
    spare = DataLoader(
        Subset(dataset, [0]),
        batch_size=1 if batched else None,
        collate_fn=getattr(loader, "collate_fn", None),
    )
    return next(iter(place_on_device(spare)))


class _InStep:
    """One process's batches of an evaluation epoch (or of ``predict()``) when a forward pass
    is a collective operation: every process must run as many forward passes as the process
    with the most batches (``most``, agreed on before the epoch).

    Iterating gives this process's real batches (``own`` of them, as counted); then
    :meth:`padding` gives a batch for each forward pass still missing: the last real batch
    again, or ``spare()`` when there was none."""

    def __init__(
        self, batches: Iterable[Any], own: int, most: int, spare: Callable[[], Any]
    ) -> None:
        self._batches = batches
        self._own = own
        self._most = most
        self._spare = spare
        self._seen = 0
        self._last: Any = None

    def __iter__(self) -> Iterator[Any]:
        for batch in self._batches:
            if self._seen == self._own:
                raise RuntimeError(
                    f"The evaluation loader gave more batches than its length ({self._own}), "
                    "which every process counted to run as many collective forward passes "
                    "(FSDP, DeepSpeed ZeRO-3) as the others: give it a correct __len__"
                )
            self._seen += 1
            self._last = batch
            yield batch

    def padding(self) -> Iterator[Any]:
        """The batches of the padding passes (none when this process ran the most)."""
        missing = self._most - self._seen
        if missing <= 0:
            return
        batch = self._last if self._seen else self._spare()
        for _ in range(missing):
            yield batch


class EvaluationMixin(BaseTrainer):
    """Adds :meth:`evaluate` and the evaluation epoch used after each training epoch.

    Losses are summed on the device and read once per epoch. On several processes each
    process evaluates its own share of the data (no sample twice, ``even_batches=False``) and
    the recorded loss is the sample-weighted mean over all of them: the same, up to float
    rounding, as one process evaluating the whole set. The forward passes go through
    ``_model_for_evaluation()`` (the module inside a DDP wrapper, buffers equal to the first
    process's), so ``self.model`` inside the evaluation hooks is that module. Under FSDP or
    DeepSpeed ZeRO-3 on several processes (a collective forward pass) a process with fewer
    batches runs padding passes until every process has run as many (see the module
    docstring); the hooks run for them, the callbacks do not.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._eval_loss_tracker = LossTracker()
        super().__init__(*args, **kwargs)

    def evaluate(
        self,
        dataset: Any = None,
        per_device_batch_size: int = 8,
        dataloader_kwargs: dict[str, Any] | None = None,
        collate_fn: Callable[..., Any] | None = None,
        reset_run_history: bool = False,
    ) -> None:
        """Run one evaluation epoch over ``dataset`` and record ``evaluation_loss``.

        :param dataset: the data to evaluate; ``None`` for the evaluation set of the last
            ``train()``. A dict of named datasets evaluates each, recording
            ``evaluation_loss_<name>``.
        :param per_device_batch_size: the batch size of each process (a ``batch_size`` in
            ``dataloader_kwargs`` wins).
        :param dataloader_kwargs: overrides of the evaluation ``DataLoader`` settings.
        :param collate_fn: the loader's ``collate_fn`` (it replaces the one given to
            ``train()``).
        :param reset_run_history: clear the run history first. By default the history is kept,
            so evaluating after ``train()`` adds ``evaluation_loss`` next to the training
            metrics (pytorch-accelerated always cleared it; pass ``True`` for that behaviour).
        """
        if dataset is None:
            dataset = self.eval_dataset
        if dataset is None:
            raise ValueError("evaluate() needs a dataset")
        check_dataset(dataset, "dataset")
        check_loss_func(self, ("calculate_eval_batch_loss",))
        require_positive_int("per_device_batch_size", per_device_batch_size)
        if reset_run_history:
            self.run_history.reset()
        self._begin_run(None, dataset, collate_fn)
        self._create_dataloaders(per_device_batch_size, eval_dl_kwargs=dataloader_kwargs)
        self._start_run_config(
            per_device_batch_size=per_device_batch_size,
            num_epochs=1,
            gradient_accumulation_steps=1,
            max_num_train_steps=None,
            gradient_clip_value=None,
        )
        self._run_evaluation()

    def predict(
        self,
        dataset: Any,
        per_device_batch_size: int = 8,
        dataloader_kwargs: dict[str, Any] | None = None,
        collate_fn: Callable[..., Any] | None = None,
    ) -> Any:
        """Return the model's outputs for every sample of ``dataset``, in dataset order.

        The model runs in eval mode without gradients, through
        :meth:`calculate_batch_predictions` (``self.model(batch[0])`` by default, so a
        dataset of ``(inputs, targets)`` works as it is; override it for other batches). On
        several processes each process computes a contiguous share of the samples and every
        process gets all outputs, concatenated along dim 0 in dataset order, with no sample
        twice; the result is the same, up to float rounding, as on one process. Every process
        must call it. The outputs are tensors (or dicts, lists and tuples of tensors) on this
        process's device: call ``.cpu()`` to keep them.

        Works with a trainer created with ``optimizer=None``. No callback event fires, the
        run history is left as it is, and ``self.model`` is the unwrapped model afterwards.

        :param dataset: a map-style dataset (with ``__len__``).
        :param per_device_batch_size: the batch size of each process (a ``batch_size`` in
            ``dataloader_kwargs`` wins).
        :param dataloader_kwargs: overrides of the ``DataLoader`` settings; ``sampler``,
            ``batch_sampler`` and ``shuffle=True`` are refused (the order is the dataset's).
        :param collate_fn: the loader's ``collate_fn``.
        """
        require_positive_int("per_device_batch_size", per_device_batch_size)
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            raise TypeError("predict() needs a dataset with a length (a map-style dataset)")
        if len(dataset) == 0:
            raise ValueError("predict() got an empty dataset")
        kwargs = dict(dataloader_kwargs or {})
        if "sampler" in kwargs or "batch_sampler" in kwargs or kwargs.get("shuffle"):
            raise ValueError(
                "predict() returns the outputs in dataset order: remove sampler, batch_sampler "
                "and shuffle from dataloader_kwargs (pass a torch.utils.data.Subset to predict "
                "part of a dataset)"
            )
        self.start_hardware_run()
        indices, num_rows = _shard(len(dataset), self.num_processes, self.process_index)
        dataloader, _ = make_dataloader(
            Subset(dataset, indices),
            self.get_default_eval_dl_kwargs(per_device_batch_size),
            kwargs,
            collate_fn,
            shuffle_seed=None,
        )
        self._prepare_model_optimizer_and_dataloaders(include_dataloaders=False)
        try:
            with self.substitute(model=self.model_for_evaluation()), torch.no_grad():
                self.model.eval()
                placed = self.place_dataloader_on_device(dataloader)
                if not self.forward_is_collective:
                    outputs = [self.calculate_batch_predictions(batch) for batch in placed]
                else:
                    in_step = self._in_step(placed, None)
                    outputs = [self.calculate_batch_predictions(batch) for batch in in_step]
                    for batch in in_step.padding():
                        self.calculate_batch_predictions(batch)  # in step; output discarded
            return self.gather_in_order(_concatenate(outputs), num_rows)
        finally:
            self._unwrap_model()

    def calculate_batch_predictions(self, batch: Any) -> Any:
        """The model outputs for one batch of :meth:`predict` (gradients are off, the model is
        in eval mode): ``self.model(batch[0])`` for a tuple or list batch, ``self.model(batch)``
        otherwise. Override for other batches; return a tensor (or a dict, list or tuple of
        tensors) with one row per sample. No need to call ``super()``. Under FSDP or DeepSpeed
        ZeRO-3 on several processes it also runs the padding passes (their outputs are
        discarded)."""
        inputs = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.model(inputs)

    def _run_evaluation(self) -> None:
        try:
            self.evaluation_run_start()
            self.callback_handler.call_event("on_evaluation_run_start", self)
            try:
                self._run_eval_epoch(self._eval_dataloader, is_training=False)
            except StopTrainingError as error:
                self.print(error)
                self.callback_handler.call_event("on_stop_training_error", self, error=error)
            self.evaluation_run_end()
            self.callback_handler.call_event("on_evaluation_run_end", self)
        except BaseException as error:
            self.callback_handler.call_event("on_exception", self, error=error)
            raise

    def get_default_eval_dl_kwargs(self, batch_size: int) -> dict[str, Any]:
        """The evaluation ``DataLoader`` settings before the user's overrides (not
        shuffled; no worker processes on the CPU)."""
        return default_dataloader_kwargs(batch_size, shuffle=False, device=self.device)

    @override
    def create_eval_dataloader(
        self, batch_size: int, eval_dl_kwargs: dict[str, Any] | None = None
    ) -> Iterable[Any]:
        """Create the evaluation loader from ``self.eval_dataset``. Under FSDP or DeepSpeed
        ZeRO-3 on several processes an ``IterableDataset`` is refused here, before the run
        starts (see the module docstring)."""
        dataloader, self._eval_dl_kwargs = make_dataloader(
            self.eval_dataset,
            self.get_default_eval_dl_kwargs(batch_size),
            eval_dl_kwargs,
            self.collate_fn,
            shuffle_seed=None,
            device=self.device,
        )
        if self.forward_is_collective:
            _check_countable(dataloader)
        return dataloader

    def run_evaluation_epoch(
        self,
        *,
        is_intermediate: bool = True,
        model: torch.nn.Module | None = None,
        callback_handler: CallbackHandler | None = None,
        metric_prefix: str = "",
    ) -> None:
        """Evaluate the evaluation set now, from inside ``train()`` (for callbacks such as
        :class:`~pa_mixins.callbacks.StepBasedEvaluationCallback` and the EMA callback).

        :param is_intermediate: whether it runs inside a training epoch (the loss is recorded
            as ``intermediate_eval_loss``, the events get ``is_intermediate=True``).
        :param model: evaluate this model instead of ``self.model`` (the hooks see it as
            ``self.model``).
        :param callback_handler: fire the evaluation's events on these callbacks instead.
        :param metric_prefix: prepended to the names of the metrics it records.
        """
        if self._eval_dataloader is None:
            raise ValueError("run_evaluation_epoch() needs an evaluation set: train() got none")
        history = self.run_history
        prefix = history.metric_name_prefix
        history.set_metric_name_prefix(prefix + metric_prefix)
        try:
            with self.substitute(model=model, callback_handler=callback_handler):
                self._run_eval_epoch(self._eval_dataloader, is_intermediate=is_intermediate)
        finally:
            history.set_metric_name_prefix(prefix)

    def _run_eval_epoch(
        self, valid_dl: Any, is_training: bool = True, is_intermediate: bool = False
    ) -> None:
        """One pass over ``valid_dl`` (or its first :meth:`get_eval_batch_limit` batches)
        without gradients; records ``eval_loss_epoch`` (``intermediate_eval_loss`` inside a
        training epoch, ``evaluation_loss`` in ``evaluate()``). With several evaluation sets
        (a dict of loaders), one such epoch per set, in order, each with its own events and
        its metrics ending with ``_<name>``."""
        if isinstance(valid_dl, Mapping):
            for name, loader in valid_dl.items():
                with self._eval_set(name):
                    self._run_eval_epoch(loader, is_training, is_intermediate)
            return
        model = self.model
        module = self.model_for_evaluation()
        try:
            with self.substitute(model=module):
                self._run_eval_batches(valid_dl, is_training, is_intermediate)
        finally:
            if module is not model:
                model.train(module.training)  # the wrapper follows the module's mode

    def _run_eval_batches(self, valid_dl: Any, is_training: bool, is_intermediate: bool) -> None:
        tracker = self._eval_loss_tracker
        self.eval_epoch_start()
        tracker.reset()
        self.call_loop_event("on_eval_epoch_start", is_intermediate=is_intermediate)
        limit = self.get_eval_batch_limit(is_training=is_training, is_intermediate=is_intermediate)
        in_step = self._in_step(valid_dl, limit) if self.forward_is_collective else None
        batches: Iterable[Any]
        if in_step is not None:
            batches = in_step
        else:
            batches = valid_dl if limit is None else islice(valid_dl, limit)
        with torch.no_grad():
            for batch in batches:
                self.call_loop_event("on_eval_step_start")
                batch_output = self.calculate_eval_batch_loss(batch)
                check_batch_output(batch_output, "calculate_eval_batch_loss")
                tracker.update(batch_output["loss"], batch_output["batch_size"])
                self.call_loop_event("on_eval_step_end", batch_output=batch_output, batch=batch)
            if in_step is not None:
                for batch in in_step.padding():
                    self.calculate_eval_batch_loss(batch)  # in step; output discarded
        self.agree_on_stop()
        self.eval_epoch_end()
        if is_intermediate:
            name = "intermediate_eval_loss"
        else:
            name = "eval_loss_epoch" if is_training else "evaluation_loss"
        if self.eval_set_name is not None:
            name = f"{name}_{self.eval_set_name}"
        self._add_epoch_loss_to_run_history(name, tracker)
        self.call_loop_event("on_eval_epoch_end", is_intermediate=is_intermediate)
        self.agree_on_stop()

    def _in_step(self, loader: Any, limit: int | None) -> _InStep:
        """The batches of this process (at most ``limit``) with the padding passes that keep
        it in step with the others, when a forward pass is collective. Every process calls it
        (one gather of the numbers of batches)."""
        _check_countable(loader)
        own = len(loader) if limit is None else min(limit, len(loader))
        most = int(self.gather(torch.tensor([own], device=self.device)).max().item())
        batches = loader if limit is None else islice(loader, limit)
        return _InStep(
            batches, own, most, partial(_spare_batch, loader, self.place_dataloader_on_device)
        )

    def get_eval_batch_limit(self, is_training: bool, is_intermediate: bool) -> int | None:
        """The most batches this process runs in the evaluation epoch that is starting, or
        ``None`` for all of them (the default when no callback sets a limit).

        Asked once per evaluation epoch, after ``on_eval_epoch_start``. By default it returns
        the smallest limit given by the trainer's callbacks that define
        ``eval_batch_limit(trainer, is_training=..., is_intermediate=...) -> int | None``
        (e.g. :class:`~pa_mixins.callbacks.LimitEvalStepsCallback`), so the order of the
        callbacks does not matter. The loop then runs the first ``limit`` batches of this
        process's loader. Override to set a limit in a trainer; each process answers for
        itself (under FSDP or ZeRO-3 the processes then agree on the most batches any of them
        runs, as without a limit). No cost per batch: without a limit the loader is iterated
        as it is.

        :param is_training: whether the epoch runs inside ``train()`` (``False`` in
            ``evaluate()``).
        :param is_intermediate: whether it runs inside a training epoch.
        """
        limits = [] if self._env_batch_limit is None else [self._env_batch_limit]
        for callback in self.callback_handler:
            ask = getattr(callback, "eval_batch_limit", None)
            if not callable(ask):
                continue
            limit = ask(self, is_training=is_training, is_intermediate=is_intermediate)
            if limit is None:
                continue
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ValueError(
                    f"{type(callback).__name__}.eval_batch_limit must return None or an int "
                    f">= 0, got {limit!r}"
                )
            limits.append(limit)
        return min(limits) if limits else None

    def eval_epoch_start(self) -> None:
        """Start of each evaluation epoch: puts the model in eval mode. Extend with
        ``super().eval_epoch_start()`` called first."""
        self.model.eval()

    @reads_loss_func
    def calculate_eval_batch_loss(self, batch: Any) -> BatchOutput:
        """Compute an evaluation batch's loss (gradients are off). Same contract as
        ``calculate_train_batch_loss``. Under FSDP or DeepSpeed ZeRO-3 on several processes it
        also runs the padding passes of a process with fewer batches, whose outputs are
        discarded without any callback event: update metrics in callbacks
        (``on_eval_step_end``), not here."""
        try:
            xb, yb = batch[0], batch[1]
        except (KeyError, IndexError, TypeError) as error:
            raise batch_is_not_a_pair(batch, "calculate_eval_batch_loss") from error
        model_outputs = self.model(xb)
        loss = self.loss_func(model_outputs, yb)  # type: ignore[misc]
        return {"loss": loss, "model_outputs": model_outputs, "batch_size": yb.size(0)}

    def eval_epoch_end(self) -> None:
        """End of each evaluation epoch, before its loss is recorded. Extend with
        ``super().eval_epoch_end()`` called last."""
