"""The adapter's fast path (no Accelerate wrappers on one CPU process) trains exactly as the
full Accelerate path and as a hand-written Accelerate loop."""

from __future__ import annotations

import functools
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from torch import nn
from torch.utils.data import DataLoader

from pa_mixins import Trainer, TrainerPlaceholderValues
from pa_mixins.data import EpochShuffleSampler
from tests.conftest import make_model, make_regression_data, weights


class FullAccelerateTrainer(Trainer):
    """Forces every Accelerate wrapper: prepared loaders, AcceleratedOptimizer,
    Accelerator.backward and Accelerator's clipping."""

    @staticmethod
    def _uses_accelerate_wrappers(acc: Any) -> bool:
        return True


def _train(trainer_cls: type[Trainer]) -> tuple[Trainer, list[torch.Tensor]]:
    model = make_model()
    trainer = trainer_cls(
        model, nn.MSELoss(), torch.optim.AdamW(model.parameters(), lr=0.01), callbacks=()
    )
    trainer.train(
        train_dataset=make_regression_data(40),
        eval_dataset=make_regression_data(10, seed=1),
        num_epochs=3,
        per_device_batch_size=4,
        gradient_accumulation_steps=3,
        gradient_clip_norm=0.5,
        create_scheduler_fn=functools.partial(
            torch.optim.lr_scheduler.StepLR,
            step_size=TrainerPlaceholderValues.NUM_UPDATE_STEPS_PER_EPOCH,
            gamma=0.5,
        ),
        seed=3,
    )
    return trainer, weights(trainer.model)


def test_fast_path_equals_the_full_accelerate_path() -> None:
    fast, fast_weights = _train(Trainer)
    full, full_weights = _train(FullAccelerateTrainer)
    assert not isinstance(fast.optimizer, AcceleratedOptimizer)
    assert isinstance(full.optimizer, AcceleratedOptimizer)
    assert all(torch.equal(a, b) for a, b in zip(fast_weights, full_weights))
    assert fast.run_history.get_metric_values(
        "train_loss_epoch"
    ) == full.run_history.get_metric_values("train_loss_epoch")
    assert fast.run_history.get_metric_values(
        "eval_loss_epoch"
    ) == full.run_history.get_metric_values("eval_loss_epoch")


def test_trainer_equals_a_hand_written_accelerate_loop() -> None:
    trainer_model = make_model()
    Trainer(
        trainer_model,
        nn.MSELoss(),
        torch.optim.SGD(trainer_model.parameters(), lr=0.05),
        callbacks=(),
    ).train(train_dataset=make_regression_data(32), num_epochs=2, per_device_batch_size=4, seed=5)

    torch.manual_seed(5)
    model = make_model()
    data = make_regression_data(32)
    accelerator = Accelerator()
    sampler = EpochShuffleSampler(data, seed=5)  # the Trainer's seeded order
    model, optimizer, loader = accelerator.prepare(
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        DataLoader(data, batch_size=4, sampler=sampler),
    )
    for epoch in range(2):
        loader.set_epoch(epoch)
        for x, y in loader:
            accelerator.backward(nn.functional.mse_loss(model(x), y))
            optimizer.step()
            optimizer.zero_grad()
    assert all(torch.equal(a, b) for a, b in zip(weights(trainer_model), weights(model)))
