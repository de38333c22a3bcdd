"""Issue 3: gradient accumulation, clipping and loss bookkeeping are exact."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import BatchSampler, SequentialSampler

from pa_mixins import Trainer
from tests.conftest import make_model, make_regression_data, weights


def _train(
    model: nn.Module,
    batch_size: int,
    accumulation: int = 1,
    num_samples: int = 32,
    lr: float = 0.1,
    trainer_cls: type[Trainer] = Trainer,
    **train_kwargs: Any,
) -> Trainer:
    trainer = trainer_cls(
        model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=lr), callbacks=()
    )
    trainer.train(
        train_dataset=make_regression_data(num_samples),
        num_epochs=train_kwargs.pop("num_epochs", 1),
        per_device_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        train_dataloader_kwargs={
            "shuffle": False,
            **train_kwargs.pop("train_dataloader_kwargs", {}),
        },
        **train_kwargs,
    )
    return trainer


def _assert_same_weights(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> None:
    for pa, pb in zip(weights(a), weights(b)):
        torch.testing.assert_close(pa, pb, atol=atol, rtol=0)


def test_batch_8_with_4_accumulation_steps_equals_batch_32() -> None:
    big, accumulated = make_model(), make_model()
    _train(big, batch_size=32, num_samples=64, num_epochs=2)
    _train(accumulated, batch_size=8, accumulation=4, num_samples=64, num_epochs=2)
    _assert_same_weights(big, accumulated)


def test_a_last_shorter_group_is_divided_by_its_own_size() -> None:
    # 20 samples, batch 2, 3 steps per update -> groups of 6, 6, 6 and 2 samples; the last
    # group must give the gradient of its own 2-sample mean (batches of 6, 6, 6, 2).
    big, accumulated = make_model(), make_model()
    sampler = BatchSampler(SequentialSampler(range(20)), batch_size=6, drop_last=False)
    _train(big, batch_size=6, num_samples=20, train_dataloader_kwargs={"batch_sampler": sampler})
    trainer = _train(accumulated, batch_size=2, accumulation=3, num_samples=20)
    assert trainer.num_updates == 4
    _assert_same_weights(big, accumulated)


def test_recorded_train_loss_is_the_true_mean_whatever_the_accumulation() -> None:
    data = make_regression_data(32)
    x, y = data.tensors
    expected = nn.functional.mse_loss(make_model()(x), y).item()
    for accumulation in (1, 4):
        trainer = _train(make_model(), batch_size=4, accumulation=accumulation, lr=0.0)
        assert trainer.run_history.get_latest_metric("train_loss_epoch") == pytest.approx(
            expected, rel=1e-6
        )


class TokenTrainer(Trainer):
    """A token-level loss: each sample has a mask; the loss averages over unmasked items."""

    def calculate_train_batch_loss(self, batch: Any) -> dict[str, Any]:
        x, y = batch
        mask = (x[:, 0] > -0.5).float()  # a varying number of "tokens" per micro-batch
        per_item = (self.model(x).squeeze(1) - y.squeeze(1)) ** 2
        num_items = mask.sum()
        loss = (per_item * mask).sum() / num_items.clamp_min(1)
        return {
            "loss": loss,
            "model_outputs": None,
            "batch_size": x.size(0),
            "num_items_in_batch": num_items,
        }


def test_num_items_in_batch_gives_the_mean_over_all_items_of_an_update() -> None:
    model = make_model()
    reference = copy.deepcopy(model)
    _train(model, batch_size=4, accumulation=4, num_samples=16, trainer_cls=TokenTrainer)

    x, y = make_regression_data(16).tensors
    mask = (x[:, 0] > -0.5).float()
    per_item = (reference(x).squeeze(1) - y.squeeze(1)) ** 2
    loss = (per_item * mask).sum() / mask.sum()
    loss.backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= 0.1 * p.grad
    _assert_same_weights(model, reference)


def _clipped_reference(clip_value: float | None, clip_norm: float | None) -> nn.Module:
    reference = make_model()
    x, y = make_regression_data(16).tensors
    nn.functional.mse_loss(reference(x), y).backward()
    if clip_value is not None:
        nn.utils.clip_grad_value_(reference.parameters(), clip_value)
    if clip_norm is not None:
        nn.utils.clip_grad_norm_(reference.parameters(), clip_norm)
    with torch.no_grad():
        for p in reference.parameters():
            p -= 0.1 * p.grad
    return reference


@pytest.mark.parametrize(("clip_value", "clip_norm"), [(0.05, None), (None, 0.5), (0.05, 0.1)])
def test_clipping_applies_once_per_update_to_the_accumulated_gradient(
    clip_value: float | None, clip_norm: float | None
) -> None:
    model = make_model()
    _train(
        model,
        batch_size=4,
        accumulation=4,
        num_samples=16,
        gradient_clip_value=clip_value,
        gradient_clip_norm=clip_norm,
    )
    _assert_same_weights(model, _clipped_reference(clip_value, clip_norm))
    unclipped = make_model()
    _train(unclipped, batch_size=4, accumulation=4, num_samples=16)
    assert not all(torch.allclose(a, b) for a, b in zip(weights(model), weights(unclipped)))


def test_micro_batches_of_a_group_run_without_gradient_sync() -> None:
    synced: list[bool] = []

    class Recording(Trainer):
        def no_gradient_sync(self) -> Any:
            synced.append(False)
            return super().no_gradient_sync()

    _train(make_model(), batch_size=2, accumulation=3, num_samples=16, trainer_cls=Recording)
    # 8 micro-batches: groups [0,1,2] [3,4,5] [6,7]; the non-final ones skip sync.
    assert len(synced) == 5
