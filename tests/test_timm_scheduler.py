"""TrainerWithTimmScheduler / TimmSchedulerMixin: real short runs with a scheduler that has
timm's interface, checking the exact sequence of step_update and step calls."""

from __future__ import annotations

import pytest
import torch

from pa_mixins.mixins import SchedulerMixin, TimmSchedulerMixin
from pa_mixins.trainer import Trainer, TrainerWithTimmScheduler
from tests.conftest import make_model, make_regression_data


class TimmLikeScheduler:
    """timm's scheduler interface: ``step_update(num_updates)`` sets the lr from the number of
    updates (here ``base / (1 + num_updates)``); ``step(epoch)`` is recorded."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.base_lr = optimizer.param_groups[0]["lr"]
        self.calls: list[tuple[str, int]] = []

    def step_update(self, num_updates: int, metric: float | None = None) -> None:
        self.calls.append(("update", num_updates))
        for group in self.optimizer.param_groups:
            group["lr"] = self.base_lr / (1 + num_updates)

    def step(self, epoch: int, metric: float | None = None) -> None:
        self.calls.append(("epoch", epoch))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass


class RecordingTrainer(TrainerWithTimmScheduler):
    """Records the lr each optimizer update used and when evaluation epochs start."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.used_lrs: list[float] = []

    def optimizer_step(self):
        self.used_lrs.append(self.optimizer.param_groups[0]["lr"])
        super().optimizer_step()

    def eval_epoch_start(self):
        super().eval_epoch_start()
        self.scheduler.calls.append(("eval", self.epochs_completed + 1))


def run(num_samples=40, eval_dataset=None, **train_kwargs) -> RecordingTrainer:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = RecordingTrainer(
        model, loss_func=torch.nn.MSELoss(), optimizer=optimizer, callbacks=()
    )
    trainer.train(
        train_dataset=make_regression_data(n=num_samples),
        eval_dataset=eval_dataset,
        per_device_batch_size=8,
        create_scheduler_fn=TimmLikeScheduler,
        **train_kwargs,
    )
    return trainer


def updates(*numbers: int) -> list[tuple[str, int]]:
    return [("update", n) for n in numbers]


def test_counts_optimizer_updates_not_micro_batches_with_gradient_accumulation():
    # 40 samples / 8 = 5 micro-batches per epoch; accumulating 2 -> 3 updates per epoch
    trainer = run(num_epochs=2, gradient_accumulation_steps=2)
    assert trainer.scheduler.calls == [
        *updates(1, 2, 3),
        ("epoch", 1),
        *updates(4, 5, 6),
        ("epoch", 2),
    ]
    assert trainer.num_updates == 6
    # update k uses the lr that step_update(k - 1) set (the initial lr for the first)
    assert trainer.used_lrs == pytest.approx([0.1 / (1 + k) for k in range(6)])


def test_steps_the_epoch_before_evaluation_and_without_an_eval_set_too():
    with_eval = run(num_epochs=2, eval_dataset=make_regression_data(n=16, seed=1))
    assert with_eval.scheduler.calls == [
        *updates(1, 2, 3, 4, 5),
        ("epoch", 1),
        ("eval", 1),
        *updates(6, 7, 8, 9, 10),
        ("epoch", 2),
        ("eval", 2),
    ]
    without_eval = run(num_epochs=2)
    assert without_eval.scheduler.calls == [
        *updates(1, 2, 3, 4, 5),
        ("epoch", 1),
        *updates(6, 7, 8, 9, 10),
        ("epoch", 2),
    ]


def test_max_num_train_steps_ends_the_epoch_with_an_epoch_step():
    trainer = run(num_epochs=3, gradient_accumulation_steps=2, max_num_train_steps=4)
    assert trainer.scheduler.calls == [*updates(1, 2, 3), ("epoch", 1), *updates(4), ("epoch", 2)]


def test_a_second_train_call_counts_from_zero_again():
    trainer = run(num_samples=16, num_epochs=1)
    trainer.train(
        train_dataset=make_regression_data(n=16),
        num_epochs=1,
        per_device_batch_size=8,
        create_scheduler_fn=TimmLikeScheduler,
    )
    assert trainer.scheduler.calls == [*updates(1, 2), ("epoch", 1)]


def test_runs_without_a_scheduler():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = TrainerWithTimmScheduler(model, torch.nn.MSELoss(), optimizer, callbacks=())
    trainer.train(train_dataset=make_regression_data(n=16), num_epochs=1, per_device_batch_size=8)
    assert trainer.scheduler is None


def test_trainer_is_the_mixin_on_the_everyday_trainer():
    assert issubclass(TrainerWithTimmScheduler, TimmSchedulerMixin)
    assert issubclass(TrainerWithTimmScheduler, Trainer)
    assert issubclass(TimmSchedulerMixin, SchedulerMixin)


def test_with_a_real_timm_scheduler():
    timm_scheduler = pytest.importorskip("timm.scheduler")
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = TrainerWithTimmScheduler(model, torch.nn.MSELoss(), optimizer, callbacks=())

    def create(optimizer):
        return timm_scheduler.CosineLRScheduler(
            optimizer, t_initial=10, lr_min=0.0, t_in_epochs=False
        )

    trainer.train(
        train_dataset=make_regression_data(n=40),
        num_epochs=2,
        per_device_batch_size=8,
        create_scheduler_fn=create,
    )
    # 10 updates of a 10-update cosine: the lr is back at the minimum
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)
