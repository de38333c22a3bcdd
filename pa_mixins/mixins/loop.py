"""``TrainingLoopMixin``: ``train()``, its epochs, steps and optimizer updates.

The loop, with each hook (trainer method) before the callback event of the same name, and
the public seams (``setup_scheduler``, ``is_update_step``, ...; see docs/mixins.md) where the
mixins plug in::

    train(...):
        check arguments; reset the run history (unless told not to); reset_run_state
        _begin_run (fresh Accelerator); seed
        create_train_dataloader / create_eval_dataloader; prepare for the hardware
        run config; setup_scheduler(create_scheduler_fn); resume_run(resume_from)
        _run_training()

    _run_training(), inside training_run_context():
        training_run_start; on_training_run_start
        for each epoch:
            _run_train_epoch:
                at_safe_point("epoch_start")
                train_epoch_start; on_train_epoch_start
                for step, batch in train loader (get_train_batch_limit batches at most):
                    on_train_step_start
                    if is_update_step(step):             # asked first: it decides the sync
                        calculate_train_batch_loss
                        on_train_step_end(batch, batch_output, step)     # before backward
                        backward_step(loss_for_backward(batch_output))
                        before_optimizer_step            # accumulation scaling, clipping
                        optimizer_step; after_optimizer_step  # the scheduler steps here
                        optimizer_zero_grad
                        on_optimizer_step_end(num_updates); at_safe_point("update")
                        stop here once max_num_train_steps updates are done
                    else (no gradient sync between processes):
                        the same forward and backward pass; at_safe_point("micro_batch")
                if has_pending_update: the update        # a short last accumulation group
                train_epoch_end; record train_loss_epoch; on_train_epoch_end
                at_safe_point("train_done")
            _run_eval_epoch (if an eval set):
                eval_epoch_start; on_eval_epoch_start
                per batch: on_eval_step_start; calculate_eval_batch_loss; on_eval_step_end
                eval_epoch_end; record eval_loss_epoch; on_eval_epoch_end
            at_safe_point("eval_done")
            training_run_epoch_end; on_training_run_epoch_end; the epoch counter moves on
        training_run_end; on_training_run_end

A ``StopTrainingError`` raised anywhere in an epoch is printed, fires
``on_stop_training_error`` (with ``error``, the exception) and ends the epoch loop; the
end-of-run hooks still run.

On several processes, the callback events of the loop go through ``call_loop_event``, which
holds a ``StopTrainingError`` raised on one process until the next ``agree_on_stop``: before
each optimizer update (started by ``start_stop_agreement`` after ``on_train_step_end``, so it
overlaps the backward pass, and collected after it: the update is not applied), at the end of
the epoch's batches and after the epoch-level events. There every process raises it, so all
stop at the same point (see docs/scale_out.md). On one process both are plain calls.

The loop owns the run's position (epoch, micro-batch, updates), its random generators and
the epoch's running loss; it contributes them to training states and, when a run resumes,
continues from the saved micro-batch with the same data order and random numbers. It never
reads a value from the device during an epoch: losses are summed on the device and read once
when the epoch's mean is recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import islice
from typing import Any, ClassVar

import torch
from typing_extensions import override

from pa_mixins.base import BaseTrainer, BatchOutput, SafePoint
from pa_mixins.callback_base import StopTrainingError
from pa_mixins.checkpoint_format import CheckpointError
from pa_mixins.checks import (
    batch_is_not_a_pair,
    check_batch_output,
    check_dataset,
    check_loss_func,
    check_model_and_optimizer,
    reads_loss_func,
    require_positive_int,
    require_positive_number,
)
from pa_mixins.data import (
    default_dataloader_kwargs,
    find_shuffle_sampler,
    has_length,
    loader_length,
    make_dataloader,
    resumed_epoch_loader,
)
from pa_mixins.run_position import RunPosition
from pa_mixins.seeding import (
    capture_rng_state,
    draw_seed,
    restore_rng_state,
    seed_everything,
    use_deterministic_algorithms,
)
from pa_mixins.tracking import LossTracker

__all__ = ["TrainingLoopMixin"]


class TrainingLoopMixin(BaseTrainer):
    """Adds :meth:`train` and the training hooks.

    Owns the run's position (:attr:`num_updates`, :attr:`epochs_completed`, the micro-batch),
    its random generators and the epoch's running loss (state keys ``"loop"`` and, per
    process, ``"loop"``). Needs ``AccelerateMixin``; to evaluate during training,
    ``EvaluationMixin``.
    """

    requires: ClassVar[tuple[str, ...]] = ("AccelerateMixin",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._loss_tracker = LossTracker()
        self._user_max_steps: int | None = None
        self._shuffle_seed: int | None = None
        self._position = RunPosition()
        super().__init__(*args, **kwargs)

    @override
    def reset_run_state(self) -> None:
        super().reset_run_state()
        self._position = RunPosition()

    @property
    @override
    def num_updates(self) -> int:
        return self._position.num_updates

    @property
    @override
    def run_position(self) -> dict[str, Any]:
        return self._position.as_dict()

    @property
    @override
    def running_train_loss(self) -> tuple[torch.Tensor | float, torch.Tensor | int]:
        return self._loss_tracker.total_loss, self._loss_tracker.running_count

    @property
    def epochs_completed(self) -> int:
        """The number of epochs completed in the current ``train()`` run (read-only)."""
        return self._position.epoch

    # ------------------------------------------------------------------------------------------
    # train()
    # ------------------------------------------------------------------------------------------

    def train(
        self,
        train_dataset: Any,
        num_epochs: int,
        eval_dataset: Any = None,
        per_device_batch_size: int = 8,
        max_num_train_steps: int | None = None,
        gradient_accumulation_steps: int = 1,
        gradient_clip_value: float | None = None,
        create_scheduler_fn: Callable[..., Any] | None = None,
        train_dataloader_kwargs: dict[str, Any] | None = None,
        eval_dataloader_kwargs: dict[str, Any] | None = None,
        reset_run_history: bool = True,
        collate_fn: Callable[..., Any] | None = None,
        resume_from: str | None = None,
        *,
        gradient_clip_norm: float | None = None,
        seed: int | None = None,
        deterministic: bool = False,
    ) -> None:
        """Train the model for ``num_epochs`` epochs, evaluating after each if an
        ``eval_dataset`` is given.

        :param train_dataset: the training data (map-style or iterable dataset).
        :param num_epochs: the number of epochs (recomputed from ``max_num_train_steps`` when
            that is given and the loader has a length).
        :param eval_dataset: data evaluated after each epoch; ``None`` to skip evaluation. A
            dict of named datasets (``{"val": ..., "test": ...}``) evaluates each, in order,
            recording ``eval_loss_epoch_<name>`` (see docs/logging.md).
        :param per_device_batch_size: batch size of each process, for training and evaluation
            (a ``batch_size`` in the loader kwargs wins).
        :param max_num_train_steps: stop after this many optimizer updates. Updates are counted
            per process (all processes update together), so the number means the same on 1 and
            on N processes. Required for a training loader without ``__len__``.
        :param gradient_accumulation_steps: micro-batches per optimizer update
            (``GradientAccumulationMixin``).
        :param gradient_clip_value: clip each gradient element to ``[-v, v]``, once per update,
            after unscaling.
        :param create_scheduler_fn: ``f(optimizer) -> scheduler``, placeholders allowed
            (``SchedulerMixin``).
        :param train_dataloader_kwargs: overrides of the training ``DataLoader`` settings.
        :param eval_dataloader_kwargs: overrides of the evaluation ``DataLoader`` settings.
        :param reset_run_history: start a new run history (``False`` to continue one).
        :param collate_fn: the ``collate_fn`` of both loaders.
        :param resume_from: a training state to resume from (``CheckpointMixin``).
        :param gradient_clip_norm: clip the total gradient norm to this value, once per update,
            after unscaling (new in pa_mixins).
        :param seed: seed every process and the data order (see :mod:`pa_mixins.seeding`).
        :param deterministic: ask torch for deterministic algorithms.
        """
        arguments = dict(locals())
        del arguments["self"]
        self._check_train_options(
            {
                "gradient_accumulation_steps": gradient_accumulation_steps,
                "create_scheduler_fn": create_scheduler_fn,
                "resume_from": resume_from,
            }
        )
        require_positive_int("num_epochs", num_epochs)
        require_positive_int("per_device_batch_size", per_device_batch_size)
        require_positive_int("max_num_train_steps", max_num_train_steps, allow_none=True)
        require_positive_int("gradient_accumulation_steps", gradient_accumulation_steps)
        require_positive_number("gradient_clip_value", gradient_clip_value)
        require_positive_number("gradient_clip_norm", gradient_clip_norm)
        if self.optimizer is None:
            raise ValueError(
                "train() needs an optimizer: this trainer was created with optimizer=None, "
                "which only allows evaluate()"
            )
        if train_dataset is None:
            raise ValueError("train() needs a train_dataset, got None")
        check_dataset(train_dataset, "train_dataset")
        check_dataset(eval_dataset, "eval_dataset")
        check_model_and_optimizer(self.model, self.optimizer)
        evaluates = ("calculate_eval_batch_loss",) if eval_dataset is not None else ()
        check_loss_func(self, ("calculate_train_batch_loss", *evaluates))
        if create_scheduler_fn is not None and not callable(create_scheduler_fn):
            raise TypeError(
                "create_scheduler_fn must be a callable that takes the optimizer and returns a "
                f"scheduler (e.g. a functools.partial), got {type(create_scheduler_fn).__name__}"
            )
        if resume_from is not None:
            reset_run_history = False
        if reset_run_history:
            self.run_history.reset()

        self.reset_run_state()
        self.configure_run(arguments)
        self._user_max_steps = max_num_train_steps
        self._begin_run(train_dataset, eval_dataset, collate_fn)
        self._seed_run(seed, deterministic)
        self._create_dataloaders(
            per_device_batch_size, train_dataloader_kwargs, eval_dataloader_kwargs
        )
        self._start_run_config(
            per_device_batch_size=per_device_batch_size,
            num_epochs=num_epochs,
            gradient_accumulation_steps=gradient_accumulation_steps,
            max_num_train_steps=max_num_train_steps,
            gradient_clip_value=gradient_clip_value,
            gradient_clip_norm=gradient_clip_norm,
            seed=seed,
        )
        self.optimizer.zero_grad()
        self.setup_scheduler(create_scheduler_fn)
        self.resume_run(resume_from)
        self._run_training()

    def _seed_run(self, seed: int | None, deterministic: bool) -> None:
        if deterministic:
            use_deterministic_algorithms(True)
        if seed is not None:
            seed_everything(seed + self.process_index)
            self._shuffle_seed = seed
            return
        self._shuffle_seed = self.int_from_main(draw_seed())

    # -- dataloaders ---------------------------------------------------------------------------

    def get_default_train_dl_kwargs(self, batch_size: int) -> dict[str, Any]:
        """The training ``DataLoader`` settings before the user's overrides (shuffled; no
        worker processes on the CPU). Override to change the defaults."""
        return default_dataloader_kwargs(batch_size, shuffle=True, device=self.device)

    @override
    def create_train_dataloader(
        self, batch_size: int, train_dl_kwargs: dict[str, Any] | None = None
    ) -> Iterable[Any]:
        """Create the training loader from ``self.train_dataset``. Override to build another
        kind of loader (the run config shows ``self._train_dl_kwargs``)."""
        dataloader, self._train_dl_kwargs = make_dataloader(
            self.train_dataset,
            self.get_default_train_dl_kwargs(batch_size),
            train_dl_kwargs,
            self.collate_fn,
            shuffle_seed=self._shuffle_seed,
            device=self.device,
        )
        if has_length(dataloader) and len(dataloader) == 0:
            drops_all = (
                " and drop_last=True drops them all"
                if self._train_dl_kwargs.get("drop_last")
                else ""
            )
            raise ValueError(
                "The training dataloader is empty: the training dataset has "
                f"{len(self.train_dataset)} samples{drops_all}"
            )
        return dataloader

    def get_train_batch_limit(self) -> int | None:
        """The most micro-batches a training epoch runs, or ``None`` for all: the smallest of
        ``PT_ACC_LIMIT_BATCHES`` (read when the trainer was created) and what callbacks
        defining ``train_batch_limit(trainer) -> int | None`` answer. Asked at each epoch
        start; override to set a limit in a trainer."""
        limits = [] if self._env_batch_limit is None else [self._env_batch_limit]
        for callback in self.callback_handler:
            ask = getattr(callback, "train_batch_limit", None)
            limit = ask(self) if callable(ask) else None
            if limit is not None:
                limits.append(limit)
        return min(limits) if limits else None

    # -- the run ----------------------------------------------------------------------------------

    def _run_training(self) -> None:
        """Run the epochs (see the module docstring for the order of events) inside
        ``training_run_context()``; an exception that ends the run fires ``on_exception``."""
        with self.training_run_context():
            try:
                self._run_epochs()
            except BaseException as error:
                self.callback_handler.call_event("on_exception", self, error=error)
                raise

    def _run_epochs(self) -> None:
        """The run: its start, the epochs, its end."""
        assert self.run_config is not None
        num_epochs = self.run_config.num_epochs
        position = self._position
        self.training_run_start()
        self.callback_handler.call_event("on_training_run_start", self)
        if position.resume_phase == "ended":
            self.print("Nothing to resume: the training state was saved after its run ended")
        while position.resume_phase != "ended" and (
            num_epochs is None or position.epoch < num_epochs
        ):
            try:
                self._run_train_epoch(self._train_dataloader)
                evaluated = position.take_resume("eval_done") is not None
                if self.eval_dataset is not None and not evaluated:
                    self._run_eval_epoch(self._eval_dataloader)
                    self._reach_safe_point("eval_done")
                self.training_run_epoch_end()
                self.call_loop_event("on_training_run_epoch_end")
                self.agree_on_stop()
                self.run_history._increment_epoch()
                position.epoch += 1
                position.phase = "epoch_start"
            except StopTrainingError as error:
                self.print(error)
                self.callback_handler.call_event("on_stop_training_error", self, error=error)
                break
            if position.max_steps_reached:
                if self._user_max_steps is not None:
                    self.print(
                        "Reached the maximum number of training steps "
                        f"({self._user_max_steps}); ending training"
                    )
                break
        stopped = not position.max_steps_reached and (
            num_epochs is None or position.epoch < num_epochs
        )
        position.phase = "ended" if stopped else "epoch_start"
        position.resume_phase = None
        self.training_run_end()
        self.callback_handler.call_event("on_training_run_end", self)

    def _reach_safe_point(self, point: SafePoint) -> None:
        """A safe point between the parts of an epoch, where the position is ``point``."""
        self._position.phase = point
        self.at_safe_point(point)

    def _run_train_epoch(self, train_dl: Any) -> None:
        """One pass over the training data (the rest of it when resuming inside it)."""
        assert self.run_config is not None
        position = self._position
        resume = position.take_resume("epoch_start", "train", "train_done", "eval_done")
        if resume in ("train_done", "eval_done"):  # this epoch's training is in the history
            self._restore_rng()
            position.resume_phase = "eval_done" if resume == "eval_done" else None
            return
        if resume == "epoch_start":
            self._restore_rng()
        if resume != "train":
            self._reach_safe_point("epoch_start")
        first_step, position.first_step_of_epoch = position.first_step_of_epoch, 0
        position.phase, position.next_step = "train", first_step
        limit = self.get_train_batch_limit()
        self.batches_in_epoch = loader_length(train_dl)
        if limit is not None:
            self.batches_in_epoch = min(limit, self.batches_in_epoch or limit)
        self.train_epoch_start()
        self._loss_tracker.reset()
        self._restore_running_loss()
        self.call_loop_event("on_train_epoch_start")
        self.agree_on_stop()
        self._set_sampler_epoch(getattr(train_dl, "dl", train_dl))
        if resume == "train":
            train_dl = self._resumed_epoch(train_dl, first_step)
        if limit is not None:
            train_dl = islice(train_dl, max(limit - first_step, 0))
        self._run_train_batches(train_dl, first_step)
        self.agree_on_stop()
        self.train_epoch_end()
        self._add_epoch_loss_to_run_history("train_loss_epoch", self._loss_tracker)
        self.call_loop_event("on_train_epoch_end")
        self.agree_on_stop()
        self._reach_safe_point("train_done")

    def _run_train_batches(self, train_dl: Iterable[Any], first_step: int) -> None:
        """The micro-batches of an epoch, from micro-batch ``first_step``, and their updates."""
        assert self.run_config is not None
        position = self._position
        max_updates = self.run_config.max_num_train_steps
        for step, batch in enumerate(train_dl, start=first_step):
            self.call_loop_event("on_train_step_start")
            if self.is_update_step(step):
                self._perform_forward_and_backward_passes(batch, step, ends_update=True)
                position.next_step = step + 1
                self.agree_on_stop()
                self._perform_optimizer_update()
                if max_updates is not None and position.num_updates >= max_updates:
                    position.max_steps_reached = True
                    return
            else:
                with self.no_gradient_sync():
                    self._perform_forward_and_backward_passes(batch, step)
                position.next_step = step + 1
                self.at_safe_point("micro_batch")
        self.agree_on_stop()
        if self.has_pending_update():
            self._perform_optimizer_update()
        position.max_steps_reached = max_updates is not None and position.num_updates >= max_updates

    def _set_sampler_epoch(self, dataloader: Any) -> None:
        """Tell the loader which epoch starts, so its shuffled order is that epoch's.
        Accelerate's loaders keep their own epoch count, which they hand to the sampler when
        iterated: it is set too (a resumed run starts at a later epoch)."""
        if hasattr(dataloader, "set_epoch"):
            dataloader.set_epoch(self._position.epoch)
        sampler, _ = find_shuffle_sampler(dataloader)
        if sampler is not None:
            sampler.set_epoch(self._position.epoch)

    def _resumed_epoch(self, train_dl: Any, skip: int) -> Any:
        """The loader of the epoch the run resumes in, from micro-batch ``skip`` on; the
        random generators are restored just before its first batch is used."""
        assert self.run_config is not None
        max_updates = self.run_config.max_num_train_steps
        stopped_here = max_updates is not None and self._position.num_updates >= max_updates
        if stopped_here and has_length(train_dl):
            skip = len(train_dl)
        return resumed_epoch_loader(train_dl, skip, self.num_processes, self._restore_rng)

    def _perform_forward_and_backward_passes(
        self, batch: Any, step: int, ends_update: bool = False
    ) -> BatchOutput:
        batch_output = self.calculate_train_batch_loss(batch)
        check_batch_output(batch_output, "calculate_train_batch_loss")
        self._update_loss_tracker(batch_output["loss"], batch_output["batch_size"])
        self.call_loop_event("on_train_step_end", batch_output=batch_output, batch=batch, step=step)
        if ends_update:  # the step's events have fired: agree while the gradients flow
            self.start_stop_agreement()
        self.backward_step(self.loss_for_backward(batch_output))
        return batch_output

    def _update_loss_tracker(
        self, batch_loss: torch.Tensor, batch_size: int | torch.Tensor
    ) -> None:
        self._loss_tracker.update(batch_loss, batch_size)

    def _perform_optimizer_update(self) -> None:
        """One optimizer update: finish the gradients, step, schedule, zero, notify; then a
        safe point."""
        self.before_optimizer_step()
        self.optimizer_step()
        self.after_optimizer_step()
        self.optimizer_zero_grad()
        self._position.num_updates += 1
        self.call_loop_event("on_optimizer_step_end", num_updates=self._position.num_updates)
        self.at_safe_point("update")

    # -- hooks ------------------------------------------------------------------------------------

    def train_epoch_start(self) -> None:
        """Start of each training epoch: puts the model in train mode. Extend with
        ``super().train_epoch_start()`` called first."""
        self.model.train()

    @reads_loss_func
    def calculate_train_batch_loss(self, batch: Any) -> BatchOutput:
        """Compute a training micro-batch's loss.

        Must return a dict with ``loss`` (a scalar tensor, the mean over the batch),
        ``model_outputs`` and ``batch_size``; other keys reach ``on_train_step_end``. For
        token-level losses, also return ``num_items_in_batch`` (the number of items, e.g.
        non-padding tokens, that ``loss`` averages over): the gradient is then the mean over
        every item of the update, on every process. Default: ``batch = (inputs, targets)``.
        """
        try:
            xb, yb = batch[0], batch[1]
        except (KeyError, IndexError, TypeError) as error:
            raise batch_is_not_a_pair(batch, "calculate_train_batch_loss") from error
        model_outputs = self.model(xb)
        loss = self.loss_func(model_outputs, yb)  # type: ignore[misc]
        return {"loss": loss, "model_outputs": model_outputs, "batch_size": yb.size(0)}

    def backward_step(self, loss: torch.Tensor) -> None:
        """Back-propagate a micro-batch's loss (through the adapter, which handles loss
        scaling and engines). Override to change how; no need to call ``super()``."""
        self.backward(loss)

    def optimizer_step(self) -> None:
        """Step the optimizer (once per update)."""
        assert self.optimizer is not None
        self.optimizer.step()

    def optimizer_zero_grad(self) -> None:
        """Reset the gradients after an update."""
        assert self.optimizer is not None
        self.optimizer.zero_grad()

    def train_epoch_end(self) -> None:
        """End of each training epoch, before ``train_loss_epoch`` is recorded. Extend with
        ``super().train_epoch_end()`` called last."""

    # -- run state ----------------------------------------------------------------------------

    @override
    def training_state_dict(self) -> dict[str, Any]:
        """Adds ``"loop"``: the position (phase, epoch, next micro-batch, updates), the
        loader's length and the shuffle seed."""
        state = super().training_state_dict()
        state["loop"] = {
            "position": self.run_position,
            "batches_per_epoch": loader_length(self._train_dataloader),
            "shuffle_seed": self._shuffle_seed,
        }
        return state

    @override
    def load_training_state_dict(self, state: dict[str, Any], resume: bool = True) -> None:
        own = state["loop"]
        batches = loader_length(self._train_dataloader)
        saved_batches = own["batches_per_epoch"]
        if resume and saved_batches is not None and saved_batches != batches:
            raise CheckpointError(
                f"The training state was saved with {saved_batches} batches per epoch per "
                f"process; this run has {batches}. Resume with the same dataset, batch size "
                "and number of processes"
            )
        super().load_training_state_dict(state, resume)
        if not resume:
            return
        self._position.resume_at(own["position"])
        seed = own["shuffle_seed"]
        if seed is not None:  # the saved run's data order
            self._shuffle_seed = seed
            dataloader = self._train_dataloader
            sampler, _ = find_shuffle_sampler(getattr(dataloader, "dl", dataloader))
            if sampler is not None:
                sampler.seed = seed

    @override
    def process_state_dict(self) -> dict[str, Any]:
        """Adds ``"loop"``: this process's random generators and, inside an epoch, its running
        train loss."""
        state = super().process_state_dict()
        tracker = self._loss_tracker
        state["loop"] = {
            "rng": capture_rng_state(),
            "loss_tracker": tracker.state_dict() if self._position.phase == "train" else None,
        }
        return state

    @override
    def load_process_state_dict(self, state: dict[str, Any], resume: bool = True) -> None:
        super().load_process_state_dict(state, resume)
        own = state["loop"]
        if not resume:
            restore_rng_state(own["rng"])
            return
        self._position.pending_rng = own["rng"]
        self._position.pending_loss = own["loss_tracker"]

    def _restore_rng(self) -> None:
        """Put back the resumed run's random generators (once, at the saved moment)."""
        rng, self._position.pending_rng = self._position.pending_rng, None
        if rng is not None:
            restore_rng_state(rng)

    def _restore_running_loss(self) -> None:
        saved, self._position.pending_loss = self._position.pending_loss, None
        if saved is not None:
            self._loss_tracker.load_state_dict(saved, device=self.device)
