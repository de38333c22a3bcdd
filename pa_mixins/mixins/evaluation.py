"""``EvaluationMixin``: ``evaluate()``, evaluation epochs and their hooks."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from typing_extensions import override

from pa_mixins.base import BaseTrainer, BatchOutput
from pa_mixins.callbacks.core import StopTrainingError
from pa_mixins.data import default_dataloader_kwargs, make_dataloader
from pa_mixins.tracking import LossTracker

__all__ = ["EvaluationMixin"]


class EvaluationMixin(BaseTrainer):
    """Adds :meth:`evaluate` and the evaluation epoch used after each training epoch.

    Losses are summed on the device and read once per epoch. On several processes each
    process evaluates its own share of the data (no sample twice, ``even_batches=False``) and
    the recorded loss is the sample-weighted mean over all of them.
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
    ) -> None:
        """Run one evaluation epoch over ``dataset`` and record ``evaluation_loss``.

        As in pytorch-accelerated, the run history is reset first (training metrics are
        cleared) and ``collate_fn`` replaces the one given to ``train()``.
        """
        if dataset is None:
            dataset = self.eval_dataset
        if dataset is None:
            raise ValueError("evaluate() needs a dataset")
        if (
            isinstance(per_device_batch_size, bool)
            or not isinstance(per_device_batch_size, int)
            or per_device_batch_size < 1
        ):
            raise ValueError(
                f"per_device_batch_size must be a positive integer, got {per_device_batch_size!r}"
            )
        self.eval_dataset = dataset
        self.collate_fn = collate_fn
        self.run_history.reset()
        self._start_hardware_run()
        self._train_dataloader = None
        self._train_dl_kwargs = None
        self._eval_dataloader = self.create_eval_dataloader(
            batch_size=per_device_batch_size, eval_dl_kwargs=dataloader_kwargs
        )
        self._prepare_model_optimizer_and_dataloaders()
        self.run_config = self._create_run_config(
            per_device_batch_size=per_device_batch_size,
            num_epochs=1,
            gradient_accumulation_steps=1,
            max_num_train_steps=None,
            gradient_clip_value=None,
        )
        self._run_evaluation()

    def _run_evaluation(self) -> None:
        self.evaluation_run_start()
        self.callback_handler.call_event("on_evaluation_run_start", self)
        try:
            self._run_eval_epoch(self._eval_dataloader, is_training=False)
        except StopTrainingError as error:
            self.print(error)
            self.callback_handler.call_event("on_stop_training_error", self)
        self.evaluation_run_end()
        self.callback_handler.call_event("on_evaluation_run_end", self)

    def get_default_eval_dl_kwargs(self, batch_size: int) -> dict[str, Any]:
        """The evaluation ``DataLoader`` settings before the user's overrides (not
        shuffled; no worker processes on the CPU)."""
        return default_dataloader_kwargs(batch_size, shuffle=False, device=self.device)

    @override
    def create_eval_dataloader(
        self, batch_size: int, eval_dl_kwargs: dict[str, Any] | None = None
    ) -> Iterable[Any]:
        """Create the evaluation loader from ``self.eval_dataset``."""
        dataloader, self._eval_dl_kwargs = make_dataloader(
            self.eval_dataset,
            self.get_default_eval_dl_kwargs(batch_size),
            eval_dl_kwargs,
            self.collate_fn,
            shuffle_seed=None,
        )
        return dataloader

    @override
    def _run_eval_epoch(
        self, valid_dl: Any, is_training: bool = True, is_intermediate: bool = False
    ) -> None:
        """One pass over ``valid_dl`` without gradients; records ``eval_loss_epoch``
        (``intermediate_eval_loss`` inside a training epoch, ``evaluation_loss`` in
        ``evaluate()``)."""
        tracker = self._eval_loss_tracker
        self.eval_epoch_start()
        tracker.reset()
        self.callback_handler.call_event(
            "on_eval_epoch_start", self, is_intermediate=is_intermediate
        )
        with torch.no_grad():
            for batch in valid_dl:
                self.callback_handler.call_event("on_eval_step_start", self)
                batch_output = self.calculate_eval_batch_loss(batch)
                if (
                    not isinstance(batch_output, dict)
                    or "loss" not in batch_output
                    or "batch_size" not in batch_output
                ):
                    found = (
                        sorted(batch_output)
                        if isinstance(batch_output, dict)
                        else type(batch_output).__name__
                    )
                    raise ValueError(
                        "calculate_eval_batch_loss must return a dict with the keys 'loss', "
                        f"'model_outputs' and 'batch_size'; got {found}"
                    )
                tracker.update(batch_output["loss"], batch_output["batch_size"])
                self.callback_handler.call_event(
                    "on_eval_step_end", self, batch_output=batch_output, batch=batch
                )
        self.eval_epoch_end()
        if is_intermediate:
            name = "intermediate_eval_loss"
        else:
            name = "eval_loss_epoch" if is_training else "evaluation_loss"
        self._add_epoch_loss_to_run_history(name, tracker)
        self.callback_handler.call_event("on_eval_epoch_end", self, is_intermediate=is_intermediate)

    def eval_epoch_start(self) -> None:
        """Start of each evaluation epoch: puts the model in eval mode. Extend with
        ``super().eval_epoch_start()`` called first."""
        self.model.eval()

    def calculate_eval_batch_loss(self, batch: Any) -> BatchOutput:
        """Compute an evaluation batch's loss (gradients are off). Same contract as
        ``calculate_train_batch_loss``."""
        xb, yb = batch[0], batch[1]
        model_outputs = self.model(xb)
        loss = self.loss_func(model_outputs, yb)  # type: ignore[misc]
        return {"loss": loss, "model_outputs": model_outputs, "batch_size": yb.size(0)}

    def eval_epoch_end(self) -> None:
        """End of each evaluation epoch, before its loss is recorded. Extend with
        ``super().eval_epoch_end()`` called last."""

    @override
    def evaluation_run_end(self) -> None:
        """End of ``evaluate()``: removes the wrappers from ``self.model``. Extend with
        ``super().evaluation_run_end()`` called last."""
        self.model = self.get_model()
        super().evaluation_run_end()
