"""``TrainingLoopMixin``: ``train()``, its epochs, steps and optimizer updates.

The loop, with the hook (trainer method) before the callback event of the same name::

    train(...):
        check arguments; reset the run history (unless told not to)
        start the hardware run (fresh Accelerator); seed
        create_train_dataloader / create_eval_dataloader
        _prepare_model_optimizer_and_dataloaders; _create_run_config
        _setup_scheduler; _restore_training_state          # seams for the mixins
        _run_training()

    _run_training():
        training_run_start; on_training_run_start
        for each epoch:
            _run_train_epoch:
                train_epoch_start; on_train_epoch_start
                for step, batch in train loader:
                    on_train_step_start
                    calculate_train_batch_loss
                    on_train_step_end(batch, batch_output, step)     # before backward
                    backward_step
                    at an update (every micro-batch without accumulation):
                        gradients finished (accumulation scaling, unscale, clipping)
                        optimizer_step; scheduler_step (if a scheduler and the step ran)
                        optimizer_zero_grad
                        on_optimizer_step_end(num_updates)
                train_epoch_end; record train_loss_epoch; on_train_epoch_end
            _run_eval_epoch (if an eval set):
                eval_epoch_start; on_eval_epoch_start
                per batch: on_eval_step_start; calculate_eval_batch_loss; on_eval_step_end
                eval_epoch_end; record eval_loss_epoch; on_eval_epoch_end
            training_run_epoch_end; on_training_run_epoch_end; the epoch counter moves on
        training_run_end; on_training_run_end

A ``StopTrainingError`` raised anywhere in an epoch is printed, fires
``on_stop_training_error`` (with ``error``, the exception) and ends the epoch loop; the
end-of-run hooks still run.

On several processes, the callback events of the loop go through ``_call_loop_event``, which
holds a ``StopTrainingError`` raised on one process until the next ``_agree_on_stop``: before
each optimizer update (after the backward pass, so the update is not applied), at the end of
the epoch's batches and after the epoch-level events. There every process raises it, so all
stop at the same point (see docs/scale_out.md). On one process both are plain calls.

The loop never reads a value from the device during an epoch: losses are summed on the
device and read once when the epoch's mean is recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from pa_mixins.base import BaseTrainer, BatchOutput
from pa_mixins.callbacks.core import StopTrainingError
from pa_mixins.checks import check_batch_output, require_positive_int, require_positive_number
from pa_mixins.data import (
    default_dataloader_kwargs,
    find_shuffle_sampler,
    has_length,
    make_dataloader,
)
from pa_mixins.seeding import draw_seed, seed_everything, use_deterministic_algorithms

__all__ = ["TrainingLoopMixin"]


class TrainingLoopMixin(BaseTrainer):
    """Adds :meth:`train` and the training hooks. Needs ``AccelerateMixin`` and, to evaluate
    during training, ``EvaluationMixin``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._num_updates = 0
        self._run_epoch = 0
        self._max_steps_reached = False
        self._shuffle_seed: int | None = None
        #: index of the first micro-batch of the next epoch (> 0 when resuming mid-epoch)
        self._first_step_of_epoch = 0
        self._user_max_steps: int | None = None
        super().__init__(*args, **kwargs)

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
        :param eval_dataset: data evaluated after each epoch; ``None`` to skip evaluation.
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
        if create_scheduler_fn is not None and not callable(create_scheduler_fn):
            raise TypeError(
                "create_scheduler_fn must be a callable that takes the optimizer and returns a "
                f"scheduler (e.g. a functools.partial), got {type(create_scheduler_fn).__name__}"
            )

        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.create_scheduler_fn = create_scheduler_fn
        self.collate_fn = collate_fn
        self.scheduler = None
        if resume_from is not None:
            reset_run_history = False
        if reset_run_history:
            self.run_history.reset()

        self._start_hardware_run()
        self._seed_run(seed, deterministic)
        self._train_dataloader = self.create_train_dataloader(
            batch_size=per_device_batch_size, train_dl_kwargs=train_dataloader_kwargs
        )
        self._eval_dataloader = (
            self.create_eval_dataloader(
                batch_size=per_device_batch_size, eval_dl_kwargs=eval_dataloader_kwargs
            )
            if eval_dataset is not None
            else None
        )
        self._prepare_model_optimizer_and_dataloaders()
        self.run_config = self._create_run_config(
            per_device_batch_size=per_device_batch_size,
            num_epochs=num_epochs,
            gradient_accumulation_steps=gradient_accumulation_steps,
            max_num_train_steps=max_num_train_steps,
            gradient_clip_value=gradient_clip_value,
            gradient_clip_norm=gradient_clip_norm,
            seed=seed,
        )
        self._num_updates = 0
        self._run_epoch = 0
        self._first_step_of_epoch = 0
        self._max_steps_reached = False
        self._user_max_steps = max_num_train_steps
        self.optimizer.zero_grad()
        self._setup_scheduler()
        self._restore_training_state(resume_from)
        self._run_training()

    # -- setup steps (fixed order; mixins fill the seams) ----------------------------------------

    def _seed_run(self, seed: int | None, deterministic: bool) -> None:
        if deterministic:
            use_deterministic_algorithms(True)
        process_index = getattr(self, "process_index", 0)
        if seed is not None:
            seed_everything(seed + process_index)
            self._shuffle_seed = seed
            return
        drawn = torch.tensor([draw_seed()], dtype=torch.int64, device=self.device)
        self._shuffle_seed = int(self.broadcast_from_main(drawn).item())

    # -- dataloaders ---------------------------------------------------------------------------

    def get_default_train_dl_kwargs(self, batch_size: int) -> dict[str, Any]:
        """The training ``DataLoader`` settings before the user's overrides (shuffled; no
        worker processes on the CPU). Override to change the defaults."""
        return default_dataloader_kwargs(batch_size, shuffle=True, device=self.device)

    def create_train_dataloader(
        self, batch_size: int, train_dl_kwargs: dict[str, Any] | None = None
    ) -> Iterable[Any]:
        """Create the training loader from ``self.train_dataset``. Override to build another
        kind of loader; keep ``self._train_dl_kwargs`` up to date if the run config should
        show its settings."""
        dataloader, self._train_dl_kwargs = make_dataloader(
            self.train_dataset,
            self.get_default_train_dl_kwargs(batch_size),
            train_dl_kwargs,
            self.collate_fn,
            shuffle_seed=self._shuffle_seed,
        )
        if has_length(dataloader) and len(dataloader) == 0:
            raise ValueError(
                "The training dataloader is empty: the training dataset has "
                f"{len(self.train_dataset)} samples"
                + (
                    " and drop_last=True drops them all"
                    if self._train_dl_kwargs.get("drop_last")
                    else ""
                )
            )
        return dataloader

    # -- the run ----------------------------------------------------------------------------------

    def _run_training(self) -> None:
        """Run the epochs (see the module docstring for the order of events)."""
        assert self.run_config is not None
        self.training_run_start()
        self.callback_handler.call_event("on_training_run_start", self)
        num_epochs = self.run_config.num_epochs
        while num_epochs is None or self._run_epoch < num_epochs:
            try:
                self._run_train_epoch(self._train_dataloader)
                if self.eval_dataset is not None:
                    self._run_eval_epoch(self._eval_dataloader)
                self.training_run_epoch_end()
                self._call_loop_event("on_training_run_epoch_end")
                self._agree_on_stop()
                self.run_history._increment_epoch()
                self._run_epoch += 1
            except StopTrainingError as error:
                self.print(error)
                self.callback_handler.call_event("on_stop_training_error", self, error=error)
                break
            if self._max_steps_reached:
                if self._user_max_steps is not None:
                    self.print(
                        f"\nReached the maximum number of training steps ({self._user_max_steps}); "
                        "ending training"
                    )
                break
        self.training_run_end()
        self.callback_handler.call_event("on_training_run_end", self)

    def _set_sampler_epoch(self, dataloader: Any) -> None:
        """Tell the loader which epoch starts, so its shuffled order is that epoch's.

        Accelerate's loaders also keep their own epoch count, which they hand to the sampler
        when iterated: it is set too (a resumed run starts at a later epoch).
        """
        if hasattr(dataloader, "set_epoch"):
            dataloader.set_epoch(self._run_epoch)
        sampler, _ = find_shuffle_sampler(dataloader)
        if sampler is not None:
            sampler.set_epoch(self._run_epoch)

    def _run_train_epoch(self, train_dl: Any) -> None:
        """One pass over the training data."""
        assert self.run_config is not None
        self.train_epoch_start()
        self._loss_tracker.reset()
        self._call_loop_event("on_train_epoch_start")
        self._agree_on_stop()
        self._set_sampler_epoch(getattr(train_dl, "dl", train_dl))
        max_updates = self.run_config.max_num_train_steps
        first_step, self._first_step_of_epoch = self._first_step_of_epoch, 0
        for step, batch in enumerate(train_dl, start=first_step):
            self._call_loop_event("on_train_step_start")
            if not self._is_update_step(step):
                with self.no_gradient_sync():
                    self._perform_forward_and_backward_passes(batch, step)
            else:
                self._perform_forward_and_backward_passes(batch, step)
                self._agree_on_stop()
                self._perform_optimizer_update()
                if max_updates is not None and self._num_updates >= max_updates:
                    self._max_steps_reached = True
                    break
        else:
            self._agree_on_stop()
            self._finish_pending_update()
            self._max_steps_reached = max_updates is not None and self._num_updates >= max_updates
        self._agree_on_stop()
        self.train_epoch_end()
        self._add_epoch_loss_to_run_history("train_loss_epoch")
        self._call_loop_event("on_train_epoch_end")
        self._agree_on_stop()

    def _perform_forward_and_backward_passes(self, batch: Any, step: int) -> BatchOutput:
        batch_output = self.calculate_train_batch_loss(batch)
        check_batch_output(batch_output, "calculate_train_batch_loss")
        self._update_loss_tracker(batch_output["loss"], batch_output["batch_size"])
        self._call_loop_event(
            "on_train_step_end", batch_output=batch_output, batch=batch, step=step
        )
        self.backward_step(self._loss_for_backward(batch_output))
        return batch_output

    def _update_loss_tracker(
        self, batch_loss: torch.Tensor, batch_size: int | torch.Tensor
    ) -> None:
        self._loss_tracker.update(batch_loss, batch_size)

    def _perform_optimizer_update(self) -> None:
        """One optimizer update: finish the gradients, step, schedule, zero, notify."""
        self._before_optimizer_step()
        self.optimizer_step()
        self._after_optimizer_step()
        self.optimizer_zero_grad()
        self._num_updates += 1
        self._call_loop_event("on_optimizer_step_end", num_updates=self._num_updates)

    # -- hooks ------------------------------------------------------------------------------------

    def train_epoch_start(self) -> None:
        """Start of each training epoch: puts the model in train mode. Extend with
        ``super().train_epoch_start()`` called first."""
        self.model.train()

    def calculate_train_batch_loss(self, batch: Any) -> BatchOutput:
        """Compute a training micro-batch's loss.

        Must return a dict with ``loss`` (a scalar tensor, the mean over the batch),
        ``model_outputs`` and ``batch_size``; other keys reach ``on_train_step_end``. For
        token-level losses, also return ``num_items_in_batch`` (the number of items, e.g.
        non-padding tokens, that ``loss`` averages over): the gradient is then the mean over
        every item of the update, on every process. Default: ``batch = (inputs, targets)``.
        """
        xb, yb = batch[0], batch[1]
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

    def training_run_end(self) -> None:
        """End of ``train()``: removes the distributed / mixed-precision wrappers from
        ``self.model``. Extend with ``super().training_run_end()`` called last."""
        self.model = self.get_model()
        super().training_run_end()
