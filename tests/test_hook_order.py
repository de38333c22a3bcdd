"""The golden order of every hook, public seam and callback event (cf. Lightning's
test_hooks.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import pytest
import torch
from torch import nn

from pa_mixins import MinimalTrainer, Trainer, TrainerWithTimmScheduler
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
    "on_exception",
    "on_interval_metrics",
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


# ----------------------------------------------------------------------------------------------
# The public seams (issue 9 point 3), for each ready-made trainer, with and without accumulation
# ----------------------------------------------------------------------------------------------

#: the seams a mixin extends, recorded where the loop calls them
SEAMS = [
    "reset_run_state",
    "configure_run",
    "setup_scheduler",
    "resume_run",
    "is_update_step",
    "loss_for_backward",
    "before_optimizer_step",
    "after_optimizer_step",
    "has_pending_update",
]


def _recording_class(base: type, calls: list[str]) -> type:
    """``base`` with every hook and seam it has recorded (the outer call first), entering
    ``training_run_context`` recorded, and ``at_safe_point`` recorded with its point."""

    def make_hook(name: str) -> Any:
        def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return getattr(super(recording, self), name)(*args, **kwargs)

        return hook

    def at_safe_point(self: Any, point: str) -> None:
        calls.append(f"at_safe_point:{point}")
        super(recording, self).at_safe_point(point)

    @contextmanager
    def training_run_context(self: Any) -> Iterator[None]:
        with super(recording, self).training_run_context():
            calls.append("training_run_context")
            yield

    methods: dict[str, Any] = {
        name: make_hook(name) for name in (*HOOKS, *SEAMS) if hasattr(base, name)
    }
    methods["at_safe_point"] = at_safe_point
    methods["training_run_context"] = training_run_context
    recording = type(f"Recording{base.__name__}", (base,), methods)
    return recording


class FakeTimmScheduler:
    """A scheduler with timm's interface that records how it is driven."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def step_update(self, num_updates: int) -> None:
        self.calls.append(f"scheduler.step_update({num_updates})")

    def step(self, epoch: int, metric: float | None = None) -> None:
        self.calls.append(f"scheduler.step({epoch})")

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


# 10 samples, batch 2: 5 micro-batches per epoch. With 2 per update, updates after
# micro-batches 1, 3 and 4 (a last, shorter group of one).
TRAIN_SAMPLES, EVAL_SAMPLES, BATCH_SIZE, EPOCHS = 10, 4, 2, 2


class Golden:
    """The expected calls, built in the order of the loop (the docstring of
    pa_mixins/mixins/loop.py, corrected where noted), one part of the run at a time."""

    def __init__(
        self, trainer_cls: type, accumulation: int, log_every: int = 50, eval_sets: int = 1
    ) -> None:
        self.scheduler = {Trainer: "torch", TrainerWithTimmScheduler: "timm"}.get(trainer_cls)
        self.accumulation = accumulation
        self.log_every = log_every  # the interval of IntervalMetricsCallback
        # the batches of each evaluation set: one set, or "val" and a one-batch "test"
        self.eval_batches = [EVAL_SAMPLES // BATCH_SIZE, 1][:eval_sets]
        self.updates = 0

    def setup(self) -> list[str]:
        scheduler = ["create_scheduler"] if self.scheduler else []
        return [
            "reset_run_state",
            "configure_run",
            "create_train_dataloader",
            "get_default_train_dl_kwargs",
            *["create_eval_dataloader", "get_default_eval_dl_kwargs"] * len(self.eval_batches),
            "setup_scheduler",
            *scheduler,
            "resume_run",
        ]

    def update(self) -> list[str]:
        self.updates += 1
        scheduler = {
            None: [],
            "torch": ["scheduler_step"],
            "timm": ["scheduler_step", f"scheduler.step_update({self.updates})"],
        }[self.scheduler]
        return [
            "before_optimizer_step",
            "optimizer_step",
            "after_optimizer_step",
            *scheduler,  # SchedulerMixin steps it inside after_optimizer_step
            "optimizer_zero_grad",
            "on_optimizer_step_end",
            # fired by IntervalMetricsCallback (added by the trainer after the callbacks given)
            *(["on_interval_metrics"] if self.updates % self.log_every == 0 else []),
            "at_safe_point:update",
        ]

    def micro_batch(self, step: int, batches: int) -> list[str]:
        ends_update = (step + 1) % self.accumulation == 0 or step + 1 == batches
        return [
            "on_train_step_start",
            # asked before the forward pass: a micro-batch inside a group runs without
            # gradient synchronisation (the loop docstring shows it after backward_step)
            "is_update_step",
            "calculate_train_batch_loss",
            "on_train_step_end",
            "loss_for_backward",
            "backward_step",
            *(self.update() if ends_update else ["at_safe_point:micro_batch"]),
        ]

    def train_epoch(self, epoch: int, batches: int) -> list[str]:
        timm_step = [f"scheduler.step({epoch + 1})"] if self.scheduler == "timm" else []
        # The run's max_num_train_steps is num_epochs * updates per epoch: the last update of
        # the last epoch reaches it and leaves the batch loop before has_pending_update.
        pending = ["has_pending_update"] if epoch < EPOCHS - 1 else []
        return [
            # the safe point comes before the epoch's hooks, so a state saved there resumes
            # by running them (the loop docstring shows it after on_train_epoch_start)
            "at_safe_point:epoch_start",
            "train_epoch_start",
            "on_train_epoch_start",
            *(call for step in range(batches) for call in self.micro_batch(step, batches)),
            *pending,
            "train_epoch_end",
            *timm_step,
            "on_train_epoch_end",
            "at_safe_point:train_done",
        ]

    @staticmethod
    def eval_epoch(batches: int) -> list[str]:
        return [
            "eval_epoch_start",
            "on_eval_epoch_start",
            *["on_eval_step_start", "calculate_eval_batch_loss", "on_eval_step_end"] * batches,
            "eval_epoch_end",
            "on_eval_epoch_end",
        ]

    def epoch(self, epoch: int) -> list[str]:
        return [
            *self.train_epoch(epoch, TRAIN_SAMPLES // BATCH_SIZE),
            *(call for batches in self.eval_batches for call in self.eval_epoch(batches)),
            "at_safe_point:eval_done",  # once, after every set
            "training_run_epoch_end",
            "on_training_run_epoch_end",
        ]

    def train(self) -> list[str]:
        return [
            *self.setup(),
            "training_run_context",
            "training_run_start",
            "on_training_run_start",
            *(call for epoch in range(EPOCHS) for call in self.epoch(epoch)),
            "training_run_end",
            "on_training_run_end",
        ]

    def evaluate(self) -> list[str]:
        # no seam and no safe point: evaluate() is not a training run
        return [
            *["create_eval_dataloader", "get_default_eval_dl_kwargs"] * len(self.eval_batches),
            "evaluation_run_start",
            "on_evaluation_run_start",
            *(call for batches in self.eval_batches for call in self.eval_epoch(batches)),
            "evaluation_run_end",
            "on_evaluation_run_end",
        ]


def _record_a_run(
    trainer_cls: type, accumulation: int, eval_sets: int = 1, **trainer_options: Any
) -> list[str]:
    calls: list[str] = []
    model = make_model()
    trainer = _recording_class(trainer_cls, calls)(
        model,
        nn.MSELoss(),
        torch.optim.SGD(model.parameters(), lr=0.01),
        callbacks=[RecordingCallback(calls)],
        **trainer_options,
    )
    options: dict[str, Any] = {}
    if trainer_cls is Trainer:
        options["create_scheduler_fn"] = partial(torch.optim.lr_scheduler.StepLR, step_size=1)
    elif trainer_cls is TrainerWithTimmScheduler:
        options["create_scheduler_fn"] = lambda optimizer: FakeTimmScheduler(calls)
    if accumulation != 1:
        options["gradient_accumulation_steps"] = accumulation
    eval_dataset: Any = make_regression_data(EVAL_SAMPLES, seed=1)
    if eval_sets == 2:
        eval_dataset = {"val": eval_dataset, "test": make_regression_data(1, seed=2)}
    calls.append("train()")
    trainer.train(
        train_dataset=make_regression_data(TRAIN_SAMPLES),
        eval_dataset=eval_dataset,
        num_epochs=EPOCHS,
        per_device_batch_size=BATCH_SIZE,
        **options,
    )
    calls.append("evaluate()")
    trainer.evaluate(eval_dataset, per_device_batch_size=BATCH_SIZE)
    return calls


@pytest.mark.parametrize(
    ("trainer_cls", "accumulation"),
    [
        (Trainer, 1),
        (Trainer, 2),
        (MinimalTrainer, 1),
        (TrainerWithTimmScheduler, 1),
        (TrainerWithTimmScheduler, 2),
    ],
    ids=["Trainer", "Trainer-accumulation", "MinimalTrainer", "Timm", "Timm-accumulation"],
)
def test_hooks_seams_and_events_follow_the_golden_order(
    trainer_cls: type, accumulation: int
) -> None:
    golden = Golden(trainer_cls, accumulation)
    expected = ["on_init_end", "train()", *golden.train(), "evaluate()", *golden.evaluate()]
    calls = _record_a_run(trainer_cls, accumulation)
    assert calls == expected
    updates_per_epoch = 5 if accumulation == 1 else 3
    assert calls.count("on_optimizer_step_end") == EPOCHS * updates_per_epoch


@pytest.mark.parametrize("accumulation", [1, 2])
def test_interval_metrics_fire_after_the_update_that_ends_each_interval(accumulation: int) -> None:
    golden = Golden(Trainer, accumulation, log_every=2)
    expected = ["on_init_end", "train()", *golden.train(), "evaluate()", *golden.evaluate()]
    calls = _record_a_run(Trainer, accumulation, log_every_n_steps=2)
    assert calls == expected
    assert calls.count("on_interval_metrics") == EPOCHS * (5 if accumulation == 1 else 3) // 2


def test_an_exception_fires_on_exception_and_no_end_of_run_event() -> None:
    calls: list[str] = []

    class FailsAtSecondStep(TrainerCallback):
        def on_train_step_end(self, trainer: Any, step: int, **kwargs: Any) -> None:
            if step == 1:
                raise RuntimeError("boom")

    model = make_model()
    trainer = _recording_class(Trainer, calls)(
        model,
        nn.MSELoss(),
        torch.optim.SGD(model.parameters(), lr=0.01),
        callbacks=[RecordingCallback(calls), FailsAtSecondStep()],
    )
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train(train_dataset=make_regression_data(8), num_epochs=2, per_device_batch_size=2)
    assert calls[-3:] == ["calculate_train_batch_loss", "on_train_step_end", "on_exception"]
    assert "training_run_end" not in calls and "on_stop_training_error" not in calls

    calls.clear()
    with pytest.raises(RuntimeError, match="boom"):
        trainer.evaluate(_Exploding(), per_device_batch_size=2)
    assert calls[-2:] == ["on_eval_epoch_start", "on_exception"]  # the first batch failed
    assert "evaluation_run_end" not in calls


class _Exploding(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> Any:
        raise RuntimeError("boom in the data")


@pytest.mark.parametrize("trainer_cls", [Trainer, MinimalTrainer])
def test_two_evaluation_sets_are_evaluated_in_turn_with_one_safe_point(trainer_cls: type) -> None:
    golden = Golden(trainer_cls, 1, eval_sets=2)
    expected = ["on_init_end", "train()", *golden.train(), "evaluate()", *golden.evaluate()]
    assert _record_a_run(trainer_cls, 1, eval_sets=2) == expected


def test_the_minimal_trainer_refuses_accumulation() -> None:
    # MinimalTrainer has no GradientAccumulationMixin: there is no accumulated order to pin
    model = make_model()
    trainer = MinimalTrainer(
        model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.01), callbacks=()
    )
    with pytest.raises(TypeError, match="GradientAccumulationMixin"):
        trainer.train(
            train_dataset=make_regression_data(TRAIN_SAMPLES),
            num_epochs=1,
            per_device_batch_size=BATCH_SIZE,
            gradient_accumulation_steps=2,
        )


class _Stream(torch.utils.data.IterableDataset):
    """The samples of a dataset as a stream: the loader has no length."""

    def __init__(self, samples: Any) -> None:
        self.samples = samples

    def __iter__(self) -> Iterator[Any]:
        return iter(self.samples)


def test_an_open_group_at_the_end_of_an_epoch_of_unknown_length_is_the_pending_update() -> None:
    # Without a length, is_update_step cannot see the epoch's last micro-batch: the loop asks
    # has_pending_update after the batches and applies the open group's update.
    calls: list[str] = []
    model = make_model()
    trainer = _recording_class(Trainer, calls)(
        model,
        nn.MSELoss(),
        torch.optim.SGD(model.parameters(), lr=0.01),
        callbacks=[RecordingCallback(calls)],
    )
    trainer.train(
        train_dataset=_Stream(make_regression_data(TRAIN_SAMPLES)),
        num_epochs=1,
        per_device_batch_size=BATCH_SIZE,
        gradient_accumulation_steps=2,
        max_num_train_steps=3,
    )
    golden = Golden(MinimalTrainer, accumulation=2)  # no scheduler

    def micro_batch(ends_update: bool) -> list[str]:
        return [
            "on_train_step_start",
            "is_update_step",
            "calculate_train_batch_loss",
            "on_train_step_end",
            "loss_for_backward",
            "backward_step",
            *(golden.update() if ends_update else ["at_safe_point:micro_batch"]),
        ]

    assert calls == [
        "on_init_end",
        "reset_run_state",
        "configure_run",
        "create_train_dataloader",
        "get_default_train_dl_kwargs",
        "setup_scheduler",
        "resume_run",
        "training_run_context",
        "training_run_start",
        "on_training_run_start",
        "at_safe_point:epoch_start",
        "train_epoch_start",
        "on_train_epoch_start",
        *micro_batch(False),
        *micro_batch(True),
        *micro_batch(False),
        *micro_batch(True),
        *micro_batch(False),  # micro-batch 4 opens a group that the data ends
        "has_pending_update",
        *golden.update(),  # the third update reaches max_num_train_steps
        "train_epoch_end",
        "on_train_epoch_end",
        "at_safe_point:train_done",
        "training_run_epoch_end",
        "on_training_run_epoch_end",
        "training_run_end",
        "on_training_run_end",
    ]
    assert trainer.num_updates == 3
