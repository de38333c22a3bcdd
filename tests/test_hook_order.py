"""The golden order of every hook and callback event (cf. Lightning's test_hooks.py)."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from pa_mixins import Trainer
from pa_mixins.callbacks import TrainerCallback
from tests.conftest import make_model, make_regression_data

HOOKS = [
    "get_default_train_dl_kwargs",
    "create_train_dataloader",
    "get_default_eval_dl_kwargs",
    "create_eval_dataloader",
    "create_scheduler",
    "training_run_start",
    "train_epoch_start",
    "calculate_train_batch_loss",
    "backward_step",
    "optimizer_step",
    "scheduler_step",
    "optimizer_zero_grad",
    "train_epoch_end",
    "eval_epoch_start",
    "calculate_eval_batch_loss",
    "eval_epoch_end",
    "training_run_epoch_end",
    "training_run_end",
    "evaluation_run_start",
    "evaluation_run_end",
]

EVENTS = [
    "on_init_end",
    "on_training_run_start",
    "on_train_epoch_start",
    "on_train_step_start",
    "on_train_step_end",
    "on_optimizer_step_end",
    "on_train_epoch_end",
    "on_eval_epoch_start",
    "on_eval_step_start",
    "on_eval_step_end",
    "on_eval_epoch_end",
    "on_training_run_epoch_end",
    "on_training_run_end",
    "on_evaluation_run_start",
    "on_evaluation_run_end",
    "on_stop_training_error",
]


def _recording_trainer_class(calls: list[str]) -> type[Trainer]:
    def make_hook(name: str) -> Any:
        def hook(self: Trainer, *args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return getattr(super(RecordingTrainer, self), name)(*args, **kwargs)

        return hook

    RecordingTrainer = type(
        "RecordingTrainer", (Trainer,), {name: make_hook(name) for name in HOOKS}
    )
    return RecordingTrainer


class RecordingCallback(TrainerCallback):
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        for event in EVENTS:
            setattr(self, event, self._make_recorder(event))

    def _make_recorder(self, event: str) -> Any:
        def record(trainer: Any, **kwargs: Any) -> None:
            self.calls.append(event)

        return record


def _epoch(train_steps: int, eval_steps: int) -> list[str]:
    step = [
        "on_train_step_start",
        "calculate_train_batch_loss",
        "on_train_step_end",
        "backward_step",
        "optimizer_step",
        "scheduler_step",
        "optimizer_zero_grad",
        "on_optimizer_step_end",
    ]
    eval_step = ["on_eval_step_start", "calculate_eval_batch_loss", "on_eval_step_end"]
    return [
        "train_epoch_start",
        "on_train_epoch_start",
        *step * train_steps,
        "train_epoch_end",
        "on_train_epoch_end",
        "eval_epoch_start",
        "on_eval_epoch_start",
        *eval_step * eval_steps,
        "eval_epoch_end",
        "on_eval_epoch_end",
        "training_run_epoch_end",
        "on_training_run_epoch_end",
    ]


def test_two_epochs_with_evaluation_follow_the_golden_order() -> None:
    calls: list[str] = []
    model = make_model()
    trainer = _recording_trainer_class(calls)(
        model,
        nn.MSELoss(),
        torch.optim.SGD(model.parameters(), lr=0.01),
        callbacks=[RecordingCallback(calls)],
    )
    trainer.train(
        train_dataset=make_regression_data(4),
        eval_dataset=make_regression_data(2, seed=1),
        num_epochs=2,
        per_device_batch_size=2,
        create_scheduler_fn=partial(torch.optim.lr_scheduler.StepLR, step_size=1),
    )
    trainer.evaluate(make_regression_data(2, seed=1), per_device_batch_size=2)

    # create_* call get_default_* from inside, so the outer call is recorded first.
    expected = [
        "on_init_end",
        "create_train_dataloader",
        "get_default_train_dl_kwargs",
        "create_eval_dataloader",
        "get_default_eval_dl_kwargs",
        "create_scheduler",
        "training_run_start",
        "on_training_run_start",
        *_epoch(train_steps=2, eval_steps=1) * 2,
        "training_run_end",
        "on_training_run_end",
        "create_eval_dataloader",
        "get_default_eval_dl_kwargs",
        "evaluation_run_start",
        "on_evaluation_run_start",
        "eval_epoch_start",
        "on_eval_epoch_start",
        "on_eval_step_start",
        "calculate_eval_batch_loss",
        "on_eval_step_end",
        "eval_epoch_end",
        "on_eval_epoch_end",
        "evaluation_run_end",
        "on_evaluation_run_end",
    ]
    assert calls == expected


def test_optimizer_step_event_fires_once_per_update_under_accumulation() -> None:
    calls: list[str] = []
    updates: list[int] = []

    class UpdateCounter(TrainerCallback):
        def on_optimizer_step_end(self, trainer: Any, num_updates: int, **kwargs: Any) -> None:
            updates.append(num_updates)

    model = make_model()
    trainer = Trainer(
        model,
        nn.MSELoss(),
        torch.optim.SGD(model.parameters(), lr=0.01),
        callbacks=[RecordingCallback(calls), UpdateCounter()],
    )
    # 10 samples, batch 2 -> 5 micro-batches per epoch; 2 per update -> updates after
    # micro-batches 2, 4 and 5 (a last, shorter group).
    trainer.train(
        train_dataset=make_regression_data(10),
        num_epochs=2,
        per_device_batch_size=2,
        gradient_accumulation_steps=2,
    )
    assert calls.count("on_train_step_end") == 10
    assert updates == [1, 2, 3, 4, 5, 6]
    first_epoch = calls[: calls.index("on_train_epoch_end")]
    kinds = [c for c in first_epoch if c in ("on_train_step_end", "on_optimizer_step_end")]
    assert kinds == [
        "on_train_step_end",
        "on_train_step_end",
        "on_optimizer_step_end",
        "on_train_step_end",
        "on_train_step_end",
        "on_optimizer_step_end",
        "on_train_step_end",
        "on_optimizer_step_end",
    ]


def test_stop_training_error_ends_the_run_and_still_runs_the_end_hooks() -> None:
    calls: list[str] = []

    class StopAtSecondStep(TrainerCallback):
        def on_train_step_end(self, trainer: Any, step: int, **kwargs: Any) -> None:
            from pa_mixins.callbacks import StopTrainingError

            if step == 1:
                raise StopTrainingError("enough")

    model = make_model()
    trainer = _recording_trainer_class(calls)(
        model,
        nn.MSELoss(),
        torch.optim.SGD(model.parameters(), lr=0.01),
        callbacks=[StopAtSecondStep(), RecordingCallback(calls)],
    )
    trainer.train(train_dataset=make_regression_data(8), num_epochs=3, per_device_batch_size=2)
    assert calls.index("on_stop_training_error") < calls.index("training_run_end")
    assert calls[-2:] == ["training_run_end", "on_training_run_end"]
    assert "on_train_epoch_end" not in calls
    assert calls.count("optimizer_step") == 1
    assert trainer.run_history.current_epoch == 1
