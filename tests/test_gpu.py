"""Checks that need a CUDA device (skipped elsewhere; run them on a GPU machine with
``python -m pytest -m gpu``)."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from torch import nn

from pa_mixins import Trainer
from tests.conftest import make_model, make_regression_data

pytestmark = pytest.mark.gpu


def _trainer(cls: type[Trainer] = Trainer, **kwargs: Any) -> Trainer:
    model = make_model()
    return cls(
        model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.01), callbacks=(), **kwargs
    )


def test_fp16_trains_with_a_gradient_scaler_on_cuda() -> None:
    trainer = _trainer(mixed_precision="fp16")
    trainer.train(train_dataset=make_regression_data(64), num_epochs=2, per_device_batch_size=8)
    assert trainer.device.type == "cuda"
    assert trainer.accelerator.scaler is not None
    assert trainer.run_config.mixed_precision == "fp16"
    losses = trainer.run_history.get_metric_values("train_loss_epoch")
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_an_overflowing_fp16_step_is_skipped_with_its_scheduler_step() -> None:
    class OverflowAtFirstUpdate(Trainer):
        def calculate_train_batch_loss(self, batch: Any) -> dict[str, Any]:
            output = super().calculate_train_batch_loss(batch)
            if self.num_updates == 0:
                output["loss"] = output["loss"] * 1e30  # inf once scaled: the step is skipped
            return output

    trainer = _trainer(OverflowAtFirstUpdate, mixed_precision="fp16")
    trainer.train(
        train_dataset=make_regression_data(32),
        num_epochs=1,
        per_device_batch_size=8,
        create_scheduler_fn=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1),
    )
    assert trainer.num_updates == 4
    assert trainer.scheduler.last_epoch == 3


def test_bf16_autocasts_on_cuda() -> None:
    dtypes: list[torch.dtype] = []
    trainer = _trainer(mixed_precision="bf16")
    trainer.model[0].register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    trainer.train(train_dataset=make_regression_data(16), num_epochs=1, per_device_batch_size=8)
    assert set(dtypes) == {torch.bfloat16}


def test_loaders_on_cuda_pin_memory_and_place_batches() -> None:
    devices: list[torch.device] = []

    class Recording(Trainer):
        def calculate_train_batch_loss(self, batch: Any) -> dict[str, Any]:
            devices.append(batch[0].device)
            return super().calculate_train_batch_loss(batch)

    trainer = _trainer(Recording)
    trainer.train(train_dataset=make_regression_data(16), num_epochs=1, per_device_batch_size=8)
    assert trainer.run_config.train_dl_kwargs["pin_memory"] is True
    assert {d.type for d in devices} == {"cuda"}
