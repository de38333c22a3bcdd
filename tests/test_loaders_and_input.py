"""Issue 3: dataloader defaults, loaders without a length, and bad input."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import IterableDataset, TensorDataset

from pa_mixins import Trainer, TrainerPlaceholderValues
from tests.conftest import make_model, make_regression_data, weights


def _trainer(**kwargs: Any) -> Trainer:
    model = make_model()
    return Trainer(
        model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.05), callbacks=(), **kwargs
    )


class Stream(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, n: int = 10) -> None:
        self.data = make_regression_data(n)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(zip(*self.data.tensors))


def test_default_loaders_use_no_worker_processes_on_the_cpu() -> None:
    trainer = _trainer()
    trainer.train(
        train_dataset=make_regression_data(8),
        eval_dataset=make_regression_data(8),
        num_epochs=1,
        per_device_batch_size=4,
    )
    for kwargs in (trainer.run_config.train_dl_kwargs, trainer.run_config.eval_dl_kwargs):
        assert kwargs["num_workers"] == 0 and kwargs["pin_memory"] is False
    assert "shuffle" not in trainer.run_config.train_dl_kwargs  # replaced by the seeded sampler
    assert trainer.run_config.eval_dl_kwargs["shuffle"] is False


def test_user_loader_kwargs_win_and_a_sampler_replaces_shuffling() -> None:
    trainer = _trainer()
    sampler = torch.utils.data.SequentialSampler(range(12))
    trainer.train(
        train_dataset=make_regression_data(12),
        num_epochs=1,
        per_device_batch_size=4,
        train_dataloader_kwargs={"sampler": sampler, "batch_size": 3, "drop_last": True},
    )
    assert trainer.run_config.train_per_device_batch_size == 3
    assert trainer._train_dataloader.sampler is sampler
    assert trainer.run_config.num_update_steps_per_epoch == 4


def test_an_iterable_dataset_trains_for_max_num_train_steps_across_passes() -> None:
    trainer = _trainer()
    trainer.train(
        train_dataset=Stream(10),
        num_epochs=1,
        per_device_batch_size=4,
        max_num_train_steps=7,
        gradient_accumulation_steps=2,
    )
    # Each pass has 3 micro-batches (4, 4, 2): updates after micro-batches 2 and 3 of each pass.
    assert trainer.num_updates == 7
    assert (
        trainer.run_config.num_epochs is None
        and trainer.run_config.num_update_steps_per_epoch is None
    )
    assert len(trainer.run_history.get_metric_values("train_loss_epoch")) == 4


def test_an_iterable_dataset_gives_the_same_weights_as_a_map_style_one() -> None:
    streamed, indexed = make_model(), make_model()
    for model, dataset in ((streamed, Stream(12)), (indexed, make_regression_data(12))):
        Trainer(
            model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.05), callbacks=()
        ).train(
            train_dataset=dataset,
            num_epochs=2,
            per_device_batch_size=4,
            max_num_train_steps=4,
            gradient_accumulation_steps=2,
            train_dataloader_kwargs={"shuffle": False},
        )
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(weights(streamed), weights(indexed)))


def test_an_iterable_dataset_needs_max_steps_and_length_placeholders_say_why() -> None:
    with pytest.raises(ValueError, match="pass max_num_train_steps"):
        _trainer().train(train_dataset=Stream(), num_epochs=1)
    factory = functools.partial(
        torch.optim.lr_scheduler.StepLR,
        step_size=TrainerPlaceholderValues.NUM_UPDATE_STEPS_PER_EPOCH,
    )
    with pytest.raises(
        ValueError, match=r"NUM_UPDATE_STEPS_PER_EPOCH needs run_config\.num_update_steps_per_epoch"
    ):
        _trainer().train(
            train_dataset=Stream(), num_epochs=1, max_num_train_steps=2, create_scheduler_fn=factory
        )
    factory = functools.partial(
        torch.optim.lr_scheduler.StepLR, step_size=TrainerPlaceholderValues.TRAIN_DATALOADER_LEN
    )
    with pytest.raises(ValueError, match="TRAIN_DATALOADER_LEN needs the length"):
        _trainer().train(
            train_dataset=Stream(), num_epochs=1, max_num_train_steps=2, create_scheduler_fn=factory
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_epochs": 0}, "num_epochs must be a positive integer"),
        ({"num_epochs": 1.5}, "num_epochs must be a positive integer"),
        ({"per_device_batch_size": 0}, "per_device_batch_size must be a positive integer"),
        (
            {"gradient_accumulation_steps": 0},
            "gradient_accumulation_steps must be a positive integer",
        ),
        ({"max_num_train_steps": -3}, "max_num_train_steps must be a positive integer"),
        ({"gradient_clip_value": 0.0}, "gradient_clip_value must be a positive number"),
        ({"gradient_clip_norm": -1.0}, "gradient_clip_norm must be a positive number"),
    ],
)
def test_bad_numbers_are_refused_before_the_first_step(
    kwargs: dict[str, Any], message: str
) -> None:
    trainer = _trainer()
    before = weights(trainer.model)
    arguments = {"train_dataset": make_regression_data(8), "num_epochs": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        trainer.train(**arguments)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(trainer.model)))


def test_a_scheduler_instance_instead_of_a_factory_is_refused() -> None:
    trainer = _trainer()
    scheduler = torch.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=1)
    with pytest.raises(TypeError, match="create_scheduler_fn must be a callable"):
        trainer.train(
            train_dataset=make_regression_data(8), num_epochs=1, create_scheduler_fn=scheduler
        )


def test_an_empty_dataset_is_refused() -> None:
    empty = TensorDataset(torch.zeros(0, 4), torch.zeros(0, 1))
    with pytest.raises(ValueError, match="training dataloader is empty"):
        _trainer().train(train_dataset=empty, num_epochs=1)
    with pytest.raises(ValueError, match="drop_last=True drops them all"):
        _trainer().train(
            train_dataset=make_regression_data(3),
            num_epochs=1,
            per_device_batch_size=4,
            train_dataloader_kwargs={"drop_last": True},
        )


def test_a_batch_output_without_loss_is_named() -> None:
    class NoLoss(Trainer):
        def calculate_train_batch_loss(self, batch: Any) -> dict[str, Any]:
            return {"model_outputs": None, "batch_size": 4}

    model = make_model()
    trainer = NoLoss(model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.1), callbacks=())
    with pytest.raises(
        ValueError,
        match=r"must return a dict with the keys 'loss'.*got \['batch_size', 'model_outputs'\]",
    ):
        trainer.train(train_dataset=make_regression_data(8), num_epochs=1)


def test_model_must_be_a_module() -> None:
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        Trainer(lambda x: x, nn.MSELoss(), None)  # type: ignore[arg-type]
