"""Issue 12, parts 1, 2 (wiring), 6 and 7: interval metrics, the tracking mixin's options, the
console, the progress bar and the run history after ``evaluate()``.

Each test trains a tiny real model on the CPU. Interval metrics are compared with values
computed by hand from the losses, learning rates and gradients of the same run.
"""

from __future__ import annotations

import io
import logging
import math
import os
import pathlib
from typing import Any

import pytest
import torch
from torch import nn

import pa_mixins
from pa_mixins import MinimalTrainer, Trainer
from pa_mixins.callbacks import (
    DEFAULT_CALLBACKS,
    IntervalMetricsCallback,
    LogMetricsCallback,
    PrintProgressCallback,
    ProgressBarCallback,
    StopTrainingError,
    TrainerCallback,
)
from pa_mixins.console import format_number
from pa_mixins.trackers import CSVTracker, TrackingCallback, read_metrics_csv
from tests.conftest import make_model, make_regression_data

LR = 0.05


def _sgd(model: nn.Module, **kwargs: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LR, **kwargs)


class RecordIntervals(TrainerCallback):
    """Records every micro-batch loss (read here, in the test, not by the trainer) and every
    interval event."""

    def __init__(self) -> None:
        self.losses: list[tuple[int, float, int]] = []  # (updates done before, loss, batch size)
        self.intervals: list[tuple[int, dict[str, float]]] = []

    def on_train_step_end(self, trainer: Any, batch: Any, batch_output: Any, **kwargs: Any) -> None:
        self.losses.append(
            (
                trainer.num_updates,
                float(batch_output["loss"].detach()),
                int(batch_output["batch_size"]),
            )
        )

    def on_interval_metrics(
        self, trainer: Any, metrics: dict[str, float], num_updates: int, **kwargs: Any
    ) -> None:
        self.intervals.append((num_updates, dict(metrics)))


def _mean_loss(losses: list[tuple[int, float, int]], first: int, last: int) -> float:
    """The sample-weighted mean loss of the micro-batches of updates first+1 .. last."""
    chosen = [(loss, size) for before, loss, size in losses if first <= before < last]
    return sum(loss * size for loss, size in chosen) / sum(size for _, size in chosen)


# ----------------------------------------------------------------------------------------------
# Interval metrics (part 1)
# ----------------------------------------------------------------------------------------------


def test_interval_metrics_are_the_means_of_their_interval_across_epochs_and_accumulation() -> None:
    record = RecordIntervals()
    model = make_model()
    trainer = Trainer(model, nn.MSELoss(), _sgd(model), callbacks=[record], log_every_n_steps=2)
    # 14 samples, batch 2: 7 micro-batches per epoch; 2 per update: updates of 2, 2, 2 and 1
    # micro-batches (the last group is short), 4 per epoch. Intervals end at updates 2, 4
    # (the epoch's end), 6 and 8, and the first interval of epoch 2 is 5-6.
    trainer.train(
        train_dataset=make_regression_data(14),
        num_epochs=3,
        per_device_batch_size=2,
        gradient_accumulation_steps=2,
        create_scheduler_fn=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5),
        seed=0,
    )
    assert [n for n, _ in record.intervals] == [2, 4, 6, 8, 10, 12]
    for n, metrics in record.intervals:
        assert set(metrics) == {
            "train_loss_step",
            "learning_rate_step",
            "samples_per_second",
            "updates_per_second",
        }
        assert metrics["train_loss_step"] == pytest.approx(
            _mean_loss(record.losses, n - 2, n), rel=1e-6
        )
        assert metrics["learning_rate_step"] == pytest.approx(LR * 0.5**n)  # after update n
        assert metrics["samples_per_second"] > 0 and metrics["updates_per_second"] > 0
    # the interval metrics do not enter the run history: it stays one value per epoch
    assert trainer.run_history.get_metric_names() == {"train_loss_epoch"}
    assert len(trainer.run_history.get_metric_values("train_loss_epoch")) == 3


def test_an_interval_that_spans_the_end_of_an_epoch_covers_both_parts() -> None:
    record = RecordIntervals()
    model = make_model()
    trainer = Trainer(model, nn.MSELoss(), _sgd(model), callbacks=[record], log_every_n_steps=3)
    # 5 updates per epoch: intervals at 3, 6 (updates 4-5 of epoch 1, update 6 of epoch 2), 9
    trainer.train(train_dataset=make_regression_data(10), num_epochs=2, per_device_batch_size=2)
    assert [n for n, _ in record.intervals] == [3, 6, 9]
    for n, metrics in record.intervals:
        expected = _mean_loss(record.losses, n - 3, n)
        assert metrics["train_loss_step"] == pytest.approx(expected, rel=1e-6)


def test_an_interval_that_is_an_epoch_has_the_epochs_loss() -> None:
    record = RecordIntervals()
    model = make_model()
    trainer = Trainer(model, nn.MSELoss(), _sgd(model), callbacks=[record], log_every_n_steps=5)
    trainer.train(train_dataset=make_regression_data(10), num_epochs=3, per_device_batch_size=2)
    losses = [metrics["train_loss_step"] for _, metrics in record.intervals]
    assert losses == trainer.run_history.get_metric_values("train_loss_epoch")  # the same sums


class RecordGradNorm(Trainer):
    """Records the total gradient norm of each update before clipping (the hard way)."""

    def before_optimizer_step(self) -> None:
        grads = [p.grad.detach().flatten() for p in self.model.parameters()]
        self.norms.append(float(torch.linalg.vector_norm(torch.cat(grads))))
        super().before_optimizer_step()


def test_the_gradient_norm_is_logged_when_clipping_by_norm_computes_it() -> None:
    record = RecordIntervals()
    model = make_model()
    trainer = RecordGradNorm(
        model, nn.MSELoss(), _sgd(model, momentum=0.9), callbacks=[record], log_every_n_steps=2
    )
    trainer.norms = []
    trainer.train(
        train_dataset=make_regression_data(16),
        num_epochs=1,
        per_device_batch_size=4,
        gradient_clip_norm=0.5,
    )
    assert [n for n, _ in record.intervals] == [2, 4]
    for n, metrics in record.intervals:
        assert metrics["grad_norm_step"] == pytest.approx(trainer.norms[n - 1], rel=1e-5)
    assert trainer.norms[-1] > 0.5  # the norm is the one before clipping
    assert isinstance(trainer.last_grad_norm, torch.Tensor)

    # clipping by value only computes no norm: none is logged
    record.intervals.clear()
    trainer.train(
        train_dataset=make_regression_data(16),
        num_epochs=1,
        per_device_batch_size=4,
        gradient_clip_value=0.5,
    )
    assert record.intervals and all("grad_norm_step" not in m for _, m in record.intervals)
    assert trainer.last_grad_norm is None


def test_several_parameter_groups_have_a_learning_rate_each() -> None:
    record = RecordIntervals()
    model = make_model()
    first, _, last = model.children()
    optimizer = torch.optim.SGD(
        [{"params": first.parameters(), "lr": 0.1}, {"params": last.parameters()}], lr=LR
    )
    trainer = Trainer(model, nn.MSELoss(), optimizer, callbacks=[record], log_every_n_steps=4)
    trainer.train(train_dataset=make_regression_data(16), num_epochs=1, per_device_batch_size=4)
    [(_, metrics)] = record.intervals
    assert metrics["learning_rate_group_0_step"] == 0.1
    assert metrics["learning_rate_group_1_step"] == LR
    assert "learning_rate_step" not in metrics


def test_the_interval_callback_is_added_by_the_trainer_and_yours_wins() -> None:
    model = make_model()
    default = Trainer(model, nn.MSELoss(), _sgd(model))
    [interval] = [c for c in default.callback_handler if isinstance(c, IntervalMetricsCallback)]
    assert interval.log_every_n_steps == 50
    assert default.callback_handler.callback_list[: len(DEFAULT_CALLBACKS)] == [
        c.__name__ for c in DEFAULT_CALLBACKS
    ]
    assert default.tracking_callback is None  # no tracker unless asked

    off = Trainer(model, nn.MSELoss(), _sgd(model), log_every_n_steps=None)
    assert not any(isinstance(c, IntervalMetricsCallback) for c in off.callback_handler)

    mine = IntervalMetricsCallback(7)
    own = Trainer(model, nn.MSELoss(), _sgd(model), callbacks=[mine], log_every_n_steps=3)
    assert [c for c in own.callback_handler if isinstance(c, IntervalMetricsCallback)] == [mine]

    with pytest.raises(ValueError, match="log_every_n_steps"):
        Trainer(model, nn.MSELoss(), _sgd(model), log_every_n_steps=0)
    with pytest.raises(TypeError, match="'log_with' is an option of ExperimentTrackingMixin"):
        MinimalTrainer(model, nn.MSELoss(), _sgd(model), log_with="csv")


# ----------------------------------------------------------------------------------------------
# The tracking mixin's options (part 2 wiring)
# ----------------------------------------------------------------------------------------------


def test_log_with_writes_epoch_and_interval_metrics_on_their_own_axes(
    tmp_path: pathlib.Path,
) -> None:
    record = RecordIntervals()
    model = make_model()
    trainer = Trainer(
        model,
        nn.MSELoss(),
        _sgd(model),
        callbacks=[record],
        log_with="csv",
        project_dir=tmp_path,
        log_every_n_steps=3,
    )
    callback = trainer.tracking_callback
    assert isinstance(callback, TrackingCallback) and isinstance(callback.trackers[0], CSVTracker)
    trainer.train(
        train_dataset=make_regression_data(16),
        eval_dataset=make_regression_data(8, seed=1),
        num_epochs=3,
        per_device_batch_size=4,
    )
    run_dir = tmp_path / str(callback.current_run_name)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "metrics.csv", "steps.csv"]

    epochs = read_metrics_csv(run_dir / "metrics.csv")
    assert [step for step, _ in epochs["train_loss_epoch"]] == [1, 2, 3]
    assert "train_loss_step" not in epochs
    steps = read_metrics_csv(run_dir / "steps.csv")
    assert [step for step, _ in steps["train_loss_step"]] == [3, 6, 9, 12]
    assert [value for _, value in steps["train_loss_step"]] == [
        metrics["train_loss_step"] for _, metrics in record.intervals
    ]
    assert set(steps) == {
        "train_loss_step",
        "learning_rate_step",
        "samples_per_second",
        "updates_per_second",
    }


def test_log_with_checks_names_and_packages_when_the_trainer_is_created(
    tmp_path: pathlib.Path,
) -> None:
    model = make_model()
    with pytest.raises(ValueError, match="Unknown tracker 'tensorbord'"):
        Trainer(model, nn.MSELoss(), _sgd(model), log_with="tensorbord")
    with pytest.raises(ValueError, match="log_with= and a TrackingCallback"):
        Trainer(
            model,
            nn.MSELoss(),
            _sgd(model),
            callbacks=[TrackingCallback("csv", tmp_path)],
            log_with="csv",
        )
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# The console (part 6)
# ----------------------------------------------------------------------------------------------


def test_format_number_rounds_to_four_significant_digits() -> None:
    assert format_number(0.9366666674613953) == "0.9367"
    assert format_number(torch.tensor(0.9366666674613953)) == "0.9367"
    assert format_number(1.23456e-5) == "1.235e-05"
    assert format_number(123456.7) == "123457"
    assert format_number(12.0) == "12"
    assert format_number(3) == "3"
    assert format_number(0.0) == "0"
    assert format_number(float("nan")) == "nan"
    assert format_number("text") == "text"


def test_the_default_console_prints_one_rounded_line_per_item(
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = make_model()
    trainer = Trainer(
        model,
        nn.MSELoss(),
        _sgd(model),
        callbacks=[PrintProgressCallback, LogMetricsCallback],
    )
    trainer.train(
        train_dataset=make_regression_data(16),
        eval_dataset=make_regression_data(8, seed=1),
        num_epochs=2,
        per_device_batch_size=4,
    )
    trainer.evaluate(make_regression_data(8, seed=2), per_device_batch_size=4)
    lines = capsys.readouterr().out.splitlines()
    assert "" not in lines  # no stray blank lines
    shapes = [line.split(":")[0] for line in lines]
    epoch = ["train_loss_epoch", "epoch_time", "learning_rate", "eval_loss_epoch"]
    assert shapes == [
        "Starting training run",
        "Starting epoch 1",
        *epoch,
        "Starting epoch 2",
        *epoch,
        "Finishing training run",
        "Starting evaluation run",
        "evaluation_loss",  # the training metrics kept by evaluate() are not printed again
        "Finishing evaluation run",
    ]
    history = trainer.run_history
    for line in lines:
        name, _, value = line.partition(": ")
        if name in history.get_metric_names():
            assert value == format_number(history.get_metric_values(name)[0]) or value in {
                format_number(v) for v in history.get_metric_values(name)
            }
            assert len(value.replace(".", "").replace("-", "").lstrip("0")) <= 4
        if name == "epoch_time":
            assert value.endswith(" s") and float(value[:-2]) > 0
        if name == "learning_rate":
            assert value == "0.05"


def test_interval_lines_go_to_the_pa_mixins_logger(caplog: pytest.LogCaptureFixture) -> None:
    model = make_model()
    trainer = Trainer(
        model, nn.MSELoss(), _sgd(model), callbacks=[LogMetricsCallback], log_every_n_steps=2
    )
    with caplog.at_level(logging.INFO, logger="pa_mixins"):
        trainer.train(train_dataset=make_regression_data(16), num_epochs=1, per_device_batch_size=4)
    records = [r for r in caplog.records if r.name == "pa_mixins"]
    assert [r.getMessage().split(" |")[0] for r in records] == ["update 2", "update 4"]
    assert "train_loss_step: " in records[0].getMessage()
    assert all(r.levelno == logging.INFO for r in records)


def test_set_verbosity_shows_and_hides_the_interval_lines() -> None:
    logger = logging.getLogger("pa_mixins")
    saved = (logger.level, list(logger.handlers), logger.propagate)
    stream = io.StringIO()
    try:
        pa_mixins.set_verbosity("info", stream=stream)
        pa_mixins.set_verbosity("info", stream=stream)  # one handler, not two
        model = make_model()
        trainer = Trainer(
            model, nn.MSELoss(), _sgd(model), callbacks=[LogMetricsCallback], log_every_n_steps=2
        )
        data = make_regression_data(8)
        trainer.train(train_dataset=data, num_epochs=1, per_device_batch_size=4)
        assert stream.getvalue().startswith("update 2 | train_loss_step: ")
        assert stream.getvalue().count("\n") == 1
        pa_mixins.set_verbosity("warning")
        trainer.train(train_dataset=data, num_epochs=1, per_device_batch_size=4)
        assert stream.getvalue().count("\n") == 1
        with pytest.raises(ValueError, match="Unknown verbosity"):
            pa_mixins.set_verbosity("loud")
    finally:
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]
        logger.propagate = saved[2]


# ----------------------------------------------------------------------------------------------
# The progress bar (part 6)
# ----------------------------------------------------------------------------------------------


class FailsAtStep(Trainer):
    fail_at_update = 3

    def calculate_train_batch_loss(self, batch: Any) -> dict[str, Any]:
        if self.num_updates == self.fail_at_update:
            raise RuntimeError("boom")
        return super().calculate_train_batch_loss(batch)


class FailsInEval(Trainer):
    def calculate_eval_batch_loss(self, batch: Any) -> dict[str, Any]:
        raise RuntimeError("boom in eval")


def _open_bars() -> int:
    from tqdm import tqdm

    return len(tqdm._instances)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "how", ["exception in training", "exception in evaluation", "evaluate()", "stop"]
)
def test_no_progress_bar_is_left_behind(how: str) -> None:
    before = _open_bars()
    model = make_model()
    bar = ProgressBarCallback(mode="bar")

    class StopInEval(TrainerCallback):
        def on_eval_step_end(self, trainer: Any, **kwargs: Any) -> None:
            raise StopTrainingError("enough")

    trainer_cls = {"exception in training": FailsAtStep}.get(how, FailsInEval)
    callbacks: list[Any] = [bar, StopInEval()] if how == "stop" else [bar]
    if how == "stop":
        trainer_cls = Trainer
    trainer = trainer_cls(model, nn.MSELoss(), _sgd(model), callbacks=callbacks)
    data = make_regression_data(16)
    if how == "evaluate()":
        with pytest.raises(RuntimeError, match="boom"):
            trainer.evaluate(data, per_device_batch_size=4)
    elif how == "stop":
        trainer.train(train_dataset=data, eval_dataset=data, num_epochs=2, per_device_batch_size=4)
    else:
        with pytest.raises(RuntimeError, match="boom"):
            trainer.train(
                train_dataset=data, eval_dataset=data, num_epochs=2, per_device_batch_size=4
            )
    assert _open_bars() == before
    assert bar.pbar is None and bar.eval_pbar is None


def test_the_bar_shows_loss_learning_rate_and_speed_of_the_last_interval() -> None:
    postfixes: list[str] = []

    class Watch(TrainerCallback):
        def on_optimizer_step_end(self, trainer: Any, **kwargs: Any) -> None:
            postfixes.append(bar.pbar.postfix or "")

    bar = ProgressBarCallback(mode="bar")
    model = make_model()
    trainer = Trainer(
        model, nn.MSELoss(), _sgd(model), callbacks=[bar, Watch()], log_every_n_steps=2
    )
    trainer.train(train_dataset=make_regression_data(16), num_epochs=1, per_device_batch_size=4)
    # the postfix is set at update 2 (after Watch ran for it), so Watch sees it from update 3
    assert postfixes[:2] == ["", ""]
    assert postfixes[2].startswith("loss=") and ", lr=0.05, " in postfixes[2]
    assert postfixes[2].endswith(" samples/s")


def test_outside_a_terminal_the_bar_prints_lines_without_carriage_returns(
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = make_model()
    bar = ProgressBarCallback(line_interval=0.0)  # "auto": captured stderr is not a terminal
    trainer = Trainer(model, nn.MSELoss(), _sgd(model), callbacks=[bar], log_every_n_steps=2)
    trainer.train(
        train_dataset=make_regression_data(16),
        eval_dataset=make_regression_data(8, seed=1),
        num_epochs=1,
        per_device_batch_size=4,
    )
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith(("train:", "eval:"))]
    assert [line.split(",")[0] for line in lines] == [
        "train: 1/4 (25%)",
        "train: 2/4 (50%)",
        "train: 3/4 (75%)",
        "train: 4/4 (100%)",
        "train: 4/4 (100%)",  # the line when the epoch ends
        "eval: 1/2 (50%)",
        "eval: 2/2 (100%)",
        "eval: 2/2 (100%)",
    ]
    assert "loss=" in lines[3] and "samples/s" in lines[3]


# ----------------------------------------------------------------------------------------------
# The run history after evaluate() (part 7)
# ----------------------------------------------------------------------------------------------


def test_evaluate_after_train_keeps_the_history_unless_asked_to_reset_it() -> None:
    model = make_model()
    trainer = Trainer(model, nn.MSELoss(), _sgd(model), callbacks=())
    trainer.train(
        train_dataset=make_regression_data(16),
        eval_dataset=make_regression_data(8, seed=1),
        num_epochs=2,
        per_device_batch_size=4,
    )
    history = trainer.run_history
    train_losses = list(history.get_metric_values("train_loss_epoch"))
    trainer.evaluate(make_regression_data(8, seed=2), per_device_batch_size=4)
    trainer.evaluate(make_regression_data(8, seed=3), per_device_batch_size=4)
    assert history.get_metric_values("train_loss_epoch") == train_losses
    assert len(history.get_metric_values("eval_loss_epoch")) == 2
    first, second = history.get_metric_values("evaluation_loss")
    assert first != second and all(math.isfinite(v) for v in (first, second))
    assert history.current_epoch == 3  # evaluate() does not move the epoch counter

    trainer.evaluate(
        make_regression_data(8, seed=2), per_device_batch_size=4, reset_run_history=True
    )
    assert history.get_metric_names() == {"evaluation_loss"}
    assert history.get_metric_values("evaluation_loss") == [pytest.approx(first)]
    assert history.current_epoch == 1


def test_no_file_is_written_in_the_working_directory_by_interval_logging(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    model = make_model()
    trainer = Trainer(model, nn.MSELoss(), _sgd(model), log_every_n_steps=1)
    trainer.train(train_dataset=make_regression_data(8), num_epochs=1, per_device_batch_size=4)
    assert os.listdir(tmp_path) == []
