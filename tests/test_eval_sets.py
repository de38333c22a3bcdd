"""Issue 12, part 5: several evaluation sets (``eval_dataset`` a dict of named datasets)."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from torch import nn

from pa_mixins import Trainer, TrainerPlaceholderValues
from pa_mixins.callbacks import (
    EarlyStoppingCallback,
    LimitEvalStepsCallback,
    LogMetricsCallback,
    ModelEmaCallback,
    SaveBestModelCallback,
    StepBasedEvaluationCallback,
    TrainerCallback,
)
from pa_mixins.data import loader_length
from tests.conftest import make_model, make_regression_data

SETS = {"val": make_regression_data(12, seed=1), "test": make_regression_data(6, seed=2)}


def _trainer(callbacks: Any = ()) -> Trainer:
    model = make_model()
    return Trainer(
        model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.05), callbacks=callbacks
    )


def _direct_loss(model: nn.Module, data: Any) -> float:
    x, y = data.tensors
    with torch.no_grad():
        return float(nn.functional.mse_loss(model(x), y))


class SeeTheSets(TrainerCallback):
    """What a callback written for one set sees in each evaluation epoch."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []
        self.outside: list[Any] = []

    def on_eval_epoch_start(self, trainer: Any, **kwargs: Any) -> None:
        self.seen.append(
            (
                trainer.eval_set_name,
                trainer.eval_dataset,
                loader_length(trainer.eval_dataloader),
                kwargs["is_intermediate"],
            )
        )

    def on_training_run_epoch_end(self, trainer: Any, **kwargs: Any) -> None:
        self.outside.append((trainer.eval_set_name, trainer.eval_dataset))


def test_each_set_is_evaluated_after_each_epoch_under_its_own_name() -> None:
    see = SeeTheSets()
    trainer = _trainer([see])
    trainer.train(
        train_dataset=make_regression_data(16),
        eval_dataset=SETS,
        num_epochs=2,
        per_device_batch_size=4,
    )
    history = trainer.run_history
    assert history.get_metric_names() == {
        "train_loss_epoch",
        "eval_loss_epoch_val",
        "eval_loss_epoch_test",
    }
    for name, data in SETS.items():
        values = history.get_metric_values(f"eval_loss_epoch_{name}")
        assert len(values) == 2
        assert values[-1] == pytest.approx(_direct_loss(trainer.model, data), rel=1e-5)
    # inside a set's epoch: that set, its loader and its name; outside: the dict
    assert (
        see.seen
        == [
            ("val", SETS["val"], 3, False),
            ("test", SETS["test"], 2, False),
        ]
        * 2
    )
    assert see.outside == [(None, SETS)] * 2
    assert trainer.eval_set_names == ("val", "test") and trainer.eval_set_name is None
    assert set(trainer.eval_dataloader) == {"val", "test"}

    # evaluate() after it: the same sets by default, evaluation_loss_<name>
    trainer.evaluate(per_device_batch_size=4)
    for name, data in SETS.items():
        assert history.get_metric_values(f"evaluation_loss_{name}") == [
            pytest.approx(_direct_loss(trainer.model, data), rel=1e-5)
        ]
    # a single set again: the unnamed names
    trainer.evaluate(make_regression_data(8, seed=3), per_device_batch_size=4)
    assert len(history.get_metric_values("evaluation_loss")) == 1
    assert trainer.eval_set_names == ()


def test_intermediate_evaluations_and_limits_apply_to_each_set() -> None:
    see = SeeTheSets()
    trainer = _trainer(
        [StepBasedEvaluationCallback(eval_every_n_steps=2), LimitEvalStepsCallback(1), see]
    )
    trainer.train(
        train_dataset=make_regression_data(16),
        eval_dataset=SETS,
        num_epochs=1,
        per_device_batch_size=4,
    )
    history = trainer.run_history
    for name in SETS:
        assert len(history.get_metric_values(f"intermediate_eval_loss_{name}")) == 2
        assert len(history.get_metric_values(f"eval_loss_epoch_{name}")) == 1
    assert [(name, intermediate) for name, _, _, intermediate in see.seen] == [
        ("val", True),
        ("test", True),
        ("val", True),
        ("test", True),
        ("val", False),
        ("test", False),
    ]


def test_model_selection_callbacks_need_the_name_of_the_set_to_watch(tmp_path: Any) -> None:
    data = make_regression_data(16)
    for callback in (
        EarlyStoppingCallback(),
        SaveBestModelCallback(save_path=str(tmp_path / "best.pt")),
        ModelEmaCallback(save_path=str(tmp_path / "ema.pt")),
    ):
        trainer = _trainer([callback])
        with pytest.raises(ValueError, match=r"several evaluation sets.*eval_loss_epoch_val'"):
            trainer.train(train_dataset=data, eval_dataset=SETS, num_epochs=1)
        assert trainer.num_updates == 0  # refused before the first step

    stop = EarlyStoppingCallback(watch_metric="eval_loss_epoch_test", early_stopping_patience=5)
    best = SaveBestModelCallback(
        save_path=str(tmp_path / "best.pt"), watch_metric="eval_loss_epoch_val"
    )
    ema = ModelEmaCallback(
        save_path=str(tmp_path / "ema.pt"), watch_metric="ema_model_eval_loss_epoch_test"
    )
    trainer = _trainer([stop, best, ema])
    trainer.train(train_dataset=data, eval_dataset=SETS, num_epochs=3, per_device_batch_size=4)
    history = trainer.run_history
    assert best.best_metric == min(history.get_metric_values("eval_loss_epoch_val"))
    assert stop.best_metric is not None
    # the EMA model is evaluated on every set too
    assert len(history.get_metric_values("ema_model_eval_loss_epoch_val")) == 3
    assert ema.best_metric == min(history.get_metric_values("ema_model_eval_loss_epoch_test"))


def test_eval_dataloader_len_is_the_batches_of_all_sets() -> None:
    seen: dict[str, int] = {}

    def scheduler(optimizer: Any, steps: int) -> Any:
        seen["steps"] = steps
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)

    trainer = _trainer()
    trainer.train(
        train_dataset=make_regression_data(16),
        eval_dataset=SETS,
        num_epochs=1,
        per_device_batch_size=4,
        create_scheduler_fn=functools.partial(
            scheduler, steps=TrainerPlaceholderValues.EVAL_DATALOADER_LEN
        ),
    )
    assert seen["steps"] == 3 + 2


def test_the_console_prints_each_sets_loss_once(capsys: pytest.CaptureFixture[str]) -> None:
    trainer = _trainer([LogMetricsCallback])
    trainer.train(
        train_dataset=make_regression_data(16),
        eval_dataset={"train": make_regression_data(8), "val": SETS["val"]},
        num_epochs=1,
        per_device_batch_size=4,
    )
    names = [line.split(":")[0] for line in capsys.readouterr().out.splitlines()]
    assert names == [
        "train_loss_epoch",
        "epoch_time",
        "learning_rate",
        "eval_loss_epoch_train",  # at its set's end, not among the training metrics
        "eval_loss_epoch_val",
    ]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({}, "empty dict"),
        ({"a b": SETS["val"]}, "Invalid evaluation set name"),
        ({"x": None}, "is None"),
    ],
)
def test_bad_sets_are_refused_before_training(sets: Any, message: str) -> None:
    trainer = _trainer()
    with pytest.raises(ValueError, match=message):
        trainer.train(train_dataset=make_regression_data(8), eval_dataset=sets, num_epochs=1)
    assert trainer.num_updates == 0
