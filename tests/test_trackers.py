"""Issue 12, part 2: experiment trackers, each read back through its own reader.

Every test trains a real tiny model with the everyday ``Trainer`` and compares what the tracker
wrote with ``trainer.run_history``. A tracker whose package is not installed is skipped by
``pytest.importorskip`` at the top of its own test (the CSV tracker needs nothing).
"""

from __future__ import annotations

import csv
import json
import pathlib
import struct
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import torch
from torch import nn

from pa_mixins import Trainer
from pa_mixins.callbacks import (
    IntervalMetricsCallback,
    SaveTrainingStateCallback,
    StopTrainingError,
    TrainerCallback,
)
from pa_mixins.trackers import (
    TRACKERS,
    CSVTracker,
    Tracker,
    TrackingCallback,
    available_trackers,
    make_trackers,
    read_metrics_csv,
)
from pa_mixins.trackers import base as trackers_base
from pa_mixins.trackers.wandb_tracker import wandb_run_id
from tests.conftest import REPO_ROOT, launch_env, make_model, make_regression_data, torchrun

LR = 0.05
GAMMA = 0.9
NUM_TRAIN, BATCH_SIZE = 32, 8
UPDATES_PER_EPOCH = NUM_TRAIN // BATCH_SIZE
LOSSES = ("train_loss_epoch", "eval_loss_epoch")


def _exponential_lr(optimizer: torch.optim.Optimizer) -> Any:
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=GAMMA)


def _expected_lr(epoch: int) -> float:
    """The scheduler steps once per optimizer update: the rate at the end of ``epoch``."""
    return LR * GAMMA ** (UPDATES_PER_EPOCH * epoch)


def _train(
    callbacks: Sequence[Any],
    num_epochs: int = 3,
    trainer_cls: type[Trainer] = Trainer,
    model_seed: int = 0,
    **train_kwargs: Any,
) -> Trainer:
    model = make_model(seed=model_seed)
    trainer = trainer_cls(
        model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=LR), callbacks=callbacks
    )
    trainer.train(
        train_dataset=make_regression_data(NUM_TRAIN),
        eval_dataset=make_regression_data(16, seed=1),
        num_epochs=num_epochs,
        per_device_batch_size=BATCH_SIZE,
        create_scheduler_fn=_exponential_lr,
        seed=0,
        **train_kwargs,
    )
    return trainer


def _history(trainer: Trainer) -> dict[str, list[float]]:
    history = trainer.run_history
    return {name: [float(v) for v in history.get_metric_values(name)] for name in LOSSES}


def _csv_table(path: pathlib.Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _float32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


# ----------------------------------------------------------------------------------------------
# CSV (no extra package)
# ----------------------------------------------------------------------------------------------


def test_csv_tracker_writes_the_run_history_and_the_configuration(tmp_path: pathlib.Path) -> None:
    callback = TrackingCallback("csv", tmp_path)
    trainer = _train([callback])
    history = _history(trainer)

    run_name = callback.current_run_name
    assert run_name is not None and not callback.is_running
    assert [p.name for p in tmp_path.iterdir()] == [run_name]
    run_dir = tmp_path / run_name
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "metrics.csv"]

    header, rows = _csv_table(run_dir / "metrics.csv")
    assert header == [
        "step",
        "train_loss_epoch",
        "eval_loss_epoch",
        "learning_rate",
        "epoch_time",
    ]
    assert all(0 < float(row["epoch_time"]) < 60 for row in rows)
    assert [int(row["step"]) for row in rows] == [1, 2, 3]
    for name in LOSSES:  # full precision: the very same floats
        assert [float(row[name]) for row in rows] == history[name]
    assert [float(row["learning_rate"]) for row in rows] == pytest.approx(
        [_expected_lr(epoch) for epoch in (1, 2, 3)], rel=1e-12
    )

    config = json.loads((run_dir / "config.json").read_text())
    assert config["trainer"] == "Trainer"
    assert config["mixins"] == [c.__name__ for c in Trainer.__mro__ if c.__name__.endswith("Mixin")]
    assert "GradientAccumulationMixin" in config["mixins"]
    assert config["num_epochs"] == 3
    assert config["seed"] == 0
    assert config["train_per_device_batch_size"] == BATCH_SIZE
    assert config["num_update_steps_per_epoch"] == UPDATES_PER_EPOCH
    assert "is_world_process_zero" not in config

    try:
        import pandas
    except ImportError:
        return
    frame = pandas.read_csv(run_dir / "metrics.csv")
    assert frame["step"].tolist() == [1, 2, 3]
    for name in LOSSES:
        assert frame[name].tolist() == history[name]


def test_evaluate_after_train_logs_into_the_same_run_at_the_last_epoch(
    tmp_path: pathlib.Path,
) -> None:
    callback = TrackingCallback("csv", tmp_path)
    trainer = _train([callback], num_epochs=2)
    history = _history(trainer)
    run_name = callback.current_run_name
    assert run_name is not None

    trainer.evaluate(make_regression_data(12, seed=2), per_device_batch_size=5)
    first = float(trainer.run_history.get_latest_metric("evaluation_loss"))
    trainer.evaluate(make_regression_data(12, seed=3), per_device_batch_size=5)
    second = float(trainer.run_history.get_latest_metric("evaluation_loss"))
    assert first != second

    assert callback.current_run_name == run_name and not callback.is_running
    assert [p.name for p in tmp_path.iterdir()] == [run_name]
    header, rows = _csv_table(tmp_path / run_name / "metrics.csv")
    assert header[-1] == "evaluation_loss"  # the new column widened the file
    assert [row["step"] for row in rows] == ["1", "2", "2"]
    assert [float(row["train_loss_epoch"]) for row in rows[:2]] == history["train_loss_epoch"]
    assert [row["evaluation_loss"] for row in rows] == ["", repr(first), repr(second)]
    assert rows[2]["train_loss_epoch"] == ""

    config = json.loads((tmp_path / run_name / "config.json").read_text())
    assert config["num_epochs"] == 2  # the training configuration is kept
    assert config["evaluate"]["eval_per_device_batch_size"] == 5


def test_a_resumed_run_continues_the_same_tracker_run(tmp_path: pathlib.Path) -> None:
    states = tmp_path / "states"
    runs = tmp_path / "runs"
    first = TrackingCallback("csv", runs)
    first_trainer = _train(
        [SaveTrainingStateCallback(str(states), save_every_n_epochs=1), first], num_epochs=2
    )
    first_history = _history(first_trainer)

    second = TrackingCallback("csv", runs)
    resumed = _train(
        [SaveTrainingStateCallback(str(tmp_path / "states2")), second],
        num_epochs=3,
        model_seed=1,
        resume_from=str(states),
    )
    history = _history(resumed)
    assert [h[:2] for h in history.values()] == list(first_history.values())

    assert second.current_run_name == first.current_run_name
    assert [p.name for p in runs.iterdir()] == [first.current_run_name]
    _, rows = _csv_table(runs / str(first.current_run_name) / "metrics.csv")
    assert [int(row["step"]) for row in rows] == [1, 2, 3]
    for name in LOSSES:
        assert [float(row[name]) for row in rows] == history[name]


# ----------------------------------------------------------------------------------------------
# TensorBoard, MLflow, W&B: each read back with its own reader
# ----------------------------------------------------------------------------------------------


def test_tensorboard_event_files_read_back_with_tensorboard(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    callback = TrackingCallback("tensorboard", tmp_path)
    trainer = _train([callback])
    history = _history(trainer)
    run_dir = tmp_path / str(callback.current_run_name)

    events = EventAccumulator(str(run_dir))
    events.Reload()
    for name, values in history.items():
        scalars = events.Scalars(name)
        assert [s.step for s in scalars] == [1, 2, 3]
        assert [s.value for s in scalars] == [_float32(v) for v in values]  # stored as float32
    assert [s.value for s in events.Scalars("learning_rate")] == pytest.approx(
        [_expected_lr(epoch) for epoch in (1, 2, 3)], rel=1e-6
    )

    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info.hparams
    assert start["trainer"].string_value == "Trainer"
    assert start["num_epochs"].number_value == 3
    assert start["train_dl_kwargs.batch_size"].number_value == BATCH_SIZE
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"])
    assert end.session_end_info.status == api_pb2.STATUS_SUCCESS

    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(textwrap.dedent(text))["trainer"] == "Trainer"


# MLflow's SQLite store uses a loader option that SQLAlchemy 2.1 deprecates: not ours to fix.
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
def test_mlflow_run_read_back_with_mlflow_client(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("alembic")
    from mlflow.tracking import MlflowClient

    callback = TrackingCallback("mlflow", tmp_path)
    trainer = _train([callback])
    history = _history(trainer)
    trainer.evaluate(make_regression_data(12, seed=2), per_device_batch_size=5)
    evaluation_loss = float(trainer.run_history.get_latest_metric("evaluation_loss"))

    client = MlflowClient(tracking_uri=f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}")
    experiment = client.get_experiment_by_name("pa_mixins")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # evaluate() continued the training run
    run = runs[0]
    assert run.info.run_name == callback.current_run_name
    assert run.info.status == "FINISHED"

    def metric(name: str) -> list[tuple[int, float]]:
        points = client.get_metric_history(run.info.run_id, name)
        return sorted((m.step, m.value) for m in points)

    for name, values in history.items():
        assert metric(name) == list(zip([1, 2, 3], values))
    assert [v for _, v in metric("learning_rate")] == pytest.approx(
        [_expected_lr(epoch) for epoch in (1, 2, 3)], rel=1e-12
    )
    assert metric("evaluation_loss") == [(3, evaluation_loss)]

    params = run.data.params
    assert params["trainer"] == "Trainer"
    assert params["num_epochs"] == "3"
    assert params["train_dl_kwargs.batch_size"] == str(BATCH_SIZE)
    assert params["evaluate.eval_per_device_batch_size"] == "5"
    assert "GradientAccumulationMixin" in json.loads(params["mixins"])


def _wandb_records(path: pathlib.Path) -> list[dict[str, Any]]:
    """The records of a .wandb file, read by W&B's own reader (``wandb leet inspect``)."""
    done = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_wandb_offline_run_read_back_with_wandb(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb", minversion="0.31")  # `wandb leet inspect --json`
    for variable in ("WANDB_MODE", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_PROJECT"):
        monkeypatch.delenv(variable, raising=False)
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "home" / variable.lower()))

    callback = TrackingCallback("wandb", tmp_path / "runs")
    trainer = _train([callback])
    history = _history(trainer)
    run_name = str(callback.current_run_name)

    run_id = wandb_run_id(run_name)
    files = sorted((tmp_path / "runs" / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1
    records = _wandb_records(files[0])

    rows = [r["history"]["item"] for r in records if r["type"] == "history"]
    assert [row["step"] for row in rows] == [1, 2, 3]
    for name, values in history.items():
        assert [row[name] for row in rows] == values
    assert [row["learning_rate"] for row in rows] == pytest.approx(
        [_expected_lr(epoch) for epoch in (1, 2, 3)], rel=1e-12
    )

    run = next(r["run"] for r in records if r["type"] == "run")
    assert run["display_name"] == run_name and run["run_id"] == run_id
    config = run["config"]["update"]
    assert config["trainer"] == "Trainer"
    assert config["num_epochs"] == 3
    assert config["train_dl_kwargs"]["batch_size"] == BATCH_SIZE
    exits = [r["exit"] for r in records if r["type"] == "exit"]
    assert [e.get("exit_code", 0) for e in exits] == [0]


# ----------------------------------------------------------------------------------------------
# Interval metrics (issue 12 part 1), read back through each tracker's reader
# ----------------------------------------------------------------------------------------------


class RecordIntervals(TrainerCallback):
    def __init__(self) -> None:
        self.intervals: list[tuple[int, dict[str, float]]] = []

    def on_interval_metrics(
        self, trainer: Any, metrics: dict[str, float], num_updates: int, **kwargs: Any
    ) -> None:
        self.intervals.append((num_updates, dict(metrics)))


def _interval_series(name: str, run_dir: pathlib.Path, tmp_path: pathlib.Path) -> Any:
    """(step, value) of every interval metric, as the tracker ``name`` stored them."""
    if name == "csv":  # two files: steps.csv and metrics.csv (the epochs)
        steps = read_metrics_csv(run_dir / "steps.csv")
        assert not steps.keys() & read_metrics_csv(run_dir / "metrics.csv").keys()
        return {**steps, **read_metrics_csv(run_dir / "metrics.csv")}
    if name == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run_dir))
        events.Reload()
        return {
            tag: [(s.step, s.value) for s in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]
        }
    if name == "mlflow":
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}")
        experiment = client.get_experiment_by_name("pa_mixins")
        assert experiment is not None
        [run] = client.search_runs([experiment.experiment_id])
        return {
            key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            for key in run.data.metrics
        }
    files = sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    rows = [r["history"]["item"] for r in _wandb_records(files[0]) if r["type"] == "history"]
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        axis = "update" if "update" in row else "step"  # interval or epoch record
        assert not ("update" in row and "step" in row)
        for key, value in row.items():
            if key not in ("update", "step", "_step", "_timestamp", "_runtime"):
                series.setdefault(key, []).append((row[axis], value))
    return series


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
@pytest.mark.parametrize("name", ["csv", "tensorboard", "mlflow", "wandb"])
def test_interval_metrics_are_logged_at_their_update_by_every_tracker(
    name: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if name != "csv":
        pytest.importorskip({"tensorboard": "tensorboard", "mlflow": "mlflow"}.get(name, "wandb"))
    if name == "wandb":
        pytest.importorskip("wandb", minversion="0.31")
        for variable in ("WANDB_MODE", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_PROJECT"):
            monkeypatch.delenv(variable, raising=False)
        for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            monkeypatch.setenv(variable, str(tmp_path / "home" / variable.lower()))
    record = RecordIntervals()
    callback = TrackingCallback(name, tmp_path)
    trainer = _train([IntervalMetricsCallback(5), record, callback])
    run_dir = tmp_path / str(callback.current_run_name)
    series = _interval_series(name, run_dir, tmp_path)

    assert [n for n, _ in record.intervals] == [5, 10]  # 12 updates
    names = ["train_loss_step", "learning_rate_step", "samples_per_second", "updates_per_second"]
    for metric in names:
        expected = [(n, metrics[metric]) for n, metrics in record.intervals]
        if name == "tensorboard":  # stored as float32
            expected = [(n, _float32(v)) for n, v in expected]
        assert series[metric] == expected, metric
    assert series["learning_rate_step"][0][1] == pytest.approx(LR * GAMMA**5)
    # the epoch metrics keep their own axis
    assert [step for step, _ in series["train_loss_epoch"]] == [1, 2, 3]
    assert [v for _, v in series["train_loss_epoch"]] == pytest.approx(
        trainer.run_history.get_metric_values("train_loss_epoch")
    )


# ----------------------------------------------------------------------------------------------
# Finishing: at the end, after an exception, and a tracker that fails to finish
# ----------------------------------------------------------------------------------------------


class RecordingTracker(Tracker):
    """Records the calls it receives."""

    name = "recording"

    def __init__(self) -> None:
        super().__init__("unused")
        self.calls: list[tuple[Any, ...]] = []

    def start(self, run_name: str, config: Mapping[str, Any]) -> None:
        self.run_name = self._check_can_start(run_name)
        self.calls.append(("start", run_name))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._check_running()
        self.calls.append(("log", step, sorted(metrics)))

    def finish(self, failed: bool = False) -> None:
        if self.run_name is not None:
            self.calls.append(("finish", failed))
            self.run_name = None


class BrokenFinishTracker(RecordingTracker):
    def finish(self, failed: bool = False) -> None:
        self.run_name = None
        raise OSError("disk full")


class FailsInEpoch2(Trainer):
    fail = True

    def train_epoch_start(self) -> None:
        super().train_epoch_start()
        if self.fail and self.run_history.current_epoch == 2:
            raise RuntimeError("boom in epoch 2")


def test_a_run_ended_by_an_exception_is_finished_as_failed_at_once() -> None:
    tracker = RecordingTracker()
    callback = TrackingCallback(tracker, log_learning_rate=False, log_epoch_time=False)
    model = make_model()
    trainer = FailsInEpoch2(
        model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=LR), callbacks=(callback,)
    )
    data = make_regression_data(NUM_TRAIN)

    with pytest.raises(RuntimeError, match="boom in epoch 2"):
        trainer.train(train_dataset=data, num_epochs=3, per_device_batch_size=BATCH_SIZE)
    failed_run = callback.current_run_name
    assert tracker.calls == [
        ("start", failed_run),
        ("log", 1, ["train_loss_epoch"]),
        ("finish", True),  # on_exception, before the error left train()
    ]
    assert not tracker.is_running and not callback.is_running

    trainer.fail = False
    trainer.train(train_dataset=data, num_epochs=1, per_device_batch_size=BATCH_SIZE)
    new_run = callback.current_run_name
    assert new_run != failed_run
    assert tracker.calls[3:] == [
        ("start", new_run),
        ("log", 1, ["train_loss_epoch"]),
        ("finish", False),
    ]
    callback.finish()
    callback.finish(failed=True)
    assert len(tracker.calls) == 6 and not callback.is_running


class FailsInEvaluation(Trainer):
    def calculate_eval_batch_loss(self, batch: Any) -> dict[str, Any]:
        raise RuntimeError("boom in evaluate")


def test_trackers_set_by_log_with_finish_as_failed_when_train_or_evaluate_raises() -> None:
    tracker = RecordingTracker()
    model = make_model()
    trainer = FailsInEvaluation(
        model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=LR), log_with=tracker
    )
    callback = trainer.tracking_callback
    assert callback is not None and callback.trackers == [tracker]
    data = make_regression_data(NUM_TRAIN)
    with pytest.raises(RuntimeError, match="boom in evaluate"):
        trainer.train(
            train_dataset=data, eval_dataset=data, num_epochs=2, per_device_batch_size=BATCH_SIZE
        )
    assert tracker.calls[-1] == ("finish", True) and not tracker.is_running
    tracker.calls.clear()
    with pytest.raises(RuntimeError, match="boom in evaluate"):
        trainer.evaluate(data, per_device_batch_size=BATCH_SIZE)
    assert tracker.calls == [("start", callback.current_run_name), ("finish", True)]


def test_a_killed_run_is_finished_as_failed_by_the_next_run() -> None:
    # A run that never reached on_exception (the process state a kill leaves behind): the
    # callback's next train() finishes it as failed first.
    tracker = RecordingTracker()
    callback = TrackingCallback(tracker, log_learning_rate=False, log_epoch_time=False)
    model = make_model()
    trainer = Trainer(
        model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=LR), callbacks=(callback,)
    )
    tracker.start("left-open", {})
    trainer.train(
        train_dataset=make_regression_data(NUM_TRAIN), num_epochs=1, per_device_batch_size=8
    )
    assert tracker.calls[:2] == [("start", "left-open"), ("finish", True)]
    assert tracker.calls[-1] == ("finish", False)


def test_a_tracker_that_fails_to_finish_does_not_keep_the_others_open() -> None:
    broken, recording = BrokenFinishTracker(), RecordingTracker()
    callback = TrackingCallback([broken, recording])
    with pytest.warns(UserWarning, match="BrokenFinishTracker could not finish.*disk full"):
        _train([callback], num_epochs=1)
    assert recording.calls[-1] == ("finish", False)
    assert not callback.is_running


_DIES_IN_EPOCH_2 = """
import sys

import torch
from torch import nn

sys.path.insert(0, {repo!r})
from pa_mixins import Trainer
from pa_mixins.trackers import TrackingCallback
from tests.conftest import make_model, make_regression_data


class FailsInEpoch2(Trainer):
    def train_epoch_start(self):
        super().train_epoch_start()
        if self.run_history.current_epoch == 2:
            raise RuntimeError("boom in epoch 2")


model = make_model()
callback = TrackingCallback(["csv", "tensorboard"], sys.argv[1], run_name="dies")
trainer = FailsInEpoch2(model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.05),
                        callbacks=(callback,))
trainer.train(train_dataset=make_regression_data(32), num_epochs=3, per_device_batch_size=8)
"""


def test_a_process_that_dies_by_an_exception_finishes_its_runs_as_failed(
    tmp_path: pathlib.Path,
) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    script = tmp_path / "dies.py"
    script.write_text(_DIES_IN_EPOCH_2.format(repo=REPO_ROOT))
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=120,
        env=launch_env(),
        cwd=REPO_ROOT,
    )
    assert done.returncode == 1 and "boom in epoch 2" in done.stderr, done.stderr

    run_dir = tmp_path / "runs" / "dies"
    _, rows = _csv_table(run_dir / "metrics.csv")
    assert [row["step"] for row in rows] == ["1"]  # epoch 1 was written before the crash
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert [s.step for s in events.Scalars("train_loss_epoch")] == [1]
    end = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_end_info"]
    )
    assert end.session_end_info.status == api_pb2.STATUS_FAILURE


# ----------------------------------------------------------------------------------------------
# Main process only
# ----------------------------------------------------------------------------------------------

_TWO_PROCESSES = """
import json
import pathlib
import sys

import torch
from torch import nn

sys.path.insert(0, {repo!r})
from pa_mixins import Trainer
from pa_mixins.callbacks import IntervalMetricsCallback, TrainerCallback
from pa_mixins.trackers import TrackingCallback
from tests.conftest import make_model, make_regression_data

out = pathlib.Path(sys.argv[1])
model = make_model()
callback = TrackingCallback("csv", out / "runs")
interval = IntervalMetricsCallback(4)  # 4 updates per epoch: the intervals are the epochs
trainer = Trainer(model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.05),
                  callbacks=(callback, interval))
intervals = []
trainer.callback_handler.add_callback(type("Record", (TrainerCallback,), {{
    "on_interval_metrics": lambda self, trainer, metrics, num_updates, **kw:
        intervals.append([num_updates, metrics])}}))
trainer.train(train_dataset=make_regression_data(32), eval_dataset=make_regression_data(16, seed=1),
              num_epochs=2, per_device_batch_size=4, seed=0)
history = {{n: [float(v) for v in trainer.run_history.get_metric_values(n)]
           for n in trainer.run_history.get_metric_names()}}
(out / f"rank{{trainer.process_index}}.json").write_text(
    json.dumps({{"history": history, "run_name": callback.current_run_name,
                "intervals": intervals}}))
"""


@pytest.mark.multiprocess
def test_only_the_main_process_writes_on_two_processes(tmp_path: pathlib.Path) -> None:
    script = tmp_path / "two.py"
    script.write_text(_TWO_PROCESSES.format(repo=REPO_ROOT))
    done = subprocess.run(
        [*torchrun(2), str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        env=launch_env(),
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank1["run_name"] is None  # the other process opened no run
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [rank0["run_name"]]
    _, rows = _csv_table(tmp_path / "runs" / rank0["run_name"] / "metrics.csv")
    assert [row["step"] for row in rows] == ["1", "2"]
    for name in LOSSES:
        assert [float(row[name]) for row in rows] == rank0["history"][name]

    # interval metrics: the same on both processes, reduced over both (an interval that is an
    # epoch has the epoch's loss), written by the main process only
    assert rank0["intervals"] == rank1["intervals"]
    assert [n for n, _ in rank0["intervals"]] == [4, 8]
    assert [m["train_loss_step"] for _, m in rank0["intervals"]] == pytest.approx(
        rank0["history"]["train_loss_epoch"], rel=1e-12
    )
    steps = read_metrics_csv(tmp_path / "runs" / rank0["run_name"] / "steps.csv")
    assert steps["train_loss_step"] == [(n, m["train_loss_step"]) for n, m in rank0["intervals"]]


# ----------------------------------------------------------------------------------------------
# make_trackers and options
# ----------------------------------------------------------------------------------------------


def test_make_trackers_accepts_names_lists_all_classes_and_instances(
    tmp_path: pathlib.Path,
) -> None:
    assert make_trackers(None) == []
    [csv_tracker] = make_trackers("csv", tmp_path)
    assert isinstance(csv_tracker, CSVTracker) and csv_tracker.project_dir == tmp_path
    assert make_trackers("csv")[0].project_dir == pathlib.Path("runs")

    own = CSVTracker(tmp_path / "own")
    made = make_trackers([own, "CSV", "csv", CSVTracker], tmp_path)
    assert made[0] is own and len(made) == 3  # a name given twice gives one tracker
    assert [type(t) for t in made] == [CSVTracker] * 3

    every = make_trackers("all", tmp_path)
    assert [t.name for t in every] == available_trackers()
    assert "csv" in available_trackers()
    for name, cls in TRACKERS.items():
        assert (name in available_trackers()) == cls.is_available()

    with pytest.raises(ValueError, match=r"Unknown tracker 'tensorbord'.*'csv'"):
        make_trackers(["csv", "tensorbord"], tmp_path)
    with pytest.raises(ValueError, match="expected a tracker name"):
        make_trackers([3], tmp_path)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="Invalid run name"):
        TrackingCallback("csv", tmp_path, run_name="../elsewhere")


def test_a_missing_tracker_package_names_the_extra_and_all_leaves_it_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setattr(trackers_base, "_importable", lambda module: module != "wandb")
    with pytest.raises(ImportError, match=r"pip install 'pa_mixins\[wandb\]'"):
        make_trackers("wandb", tmp_path)
    assert "wandb" not in [t.name for t in make_trackers("all", tmp_path)]


class RecordMetricOnlyInEpoch2(TrainerCallback):
    def on_train_epoch_end(self, trainer: Any, **kwargs: Any) -> None:
        if trainer.run_history.current_epoch == 2:
            trainer.run_history.update_metric("rare", torch.tensor(0.5))
            trainer.run_history.update_metric("not_a_number", "text")


def test_only_metrics_recorded_since_the_last_log_are_logged(tmp_path: pathlib.Path) -> None:
    tracker = RecordingTracker()
    _train([RecordMetricOnlyInEpoch2(), TrackingCallback(tracker)], num_epochs=3)
    logs = [call for call in tracker.calls if call[0] == "log"]
    base = sorted([*LOSSES, "learning_rate", "epoch_time"])
    assert logs == [
        ("log", 1, base),
        ("log", 2, sorted([*base, "rare"])),  # a one-element tensor is a number; text is not
        ("log", 3, base),
    ]


class StopAtEndOfEpoch2(TrainerCallback):
    """Placed before the tracking callback: it never sees epoch 2 end."""

    def on_training_run_epoch_end(self, trainer: Any, **kwargs: Any) -> None:
        if trainer.run_history.current_epoch == 2:
            raise StopTrainingError("stop after epoch 2")


def test_an_epoch_cut_short_by_a_stop_is_logged_at_its_own_epoch_when_the_run_ends() -> None:
    tracker = RecordingTracker()
    trainer = _train([StopAtEndOfEpoch2(), TrackingCallback(tracker)], num_epochs=4)
    assert len(trainer.run_history.get_metric_values("train_loss_epoch")) == 2
    assert tracker.calls[1:] == [
        ("log", 1, sorted([*LOSSES, "learning_rate", "epoch_time"])),
        ("log", 2, sorted([*LOSSES, "epoch_time"])),  # no learning rate after the run ended
        ("finish", False),
    ]


def test_evaluate_alone_opens_its_own_run_and_several_parameter_groups_have_a_rate_each() -> None:
    tracker = RecordingTracker()
    callback = TrackingCallback(tracker)
    model = make_model()
    first, _, last = model.children()
    groups: list[dict[str, Any]] = [
        {"params": first.parameters(), "lr": 0.1},
        {"params": last.parameters()},
    ]
    optimizer = torch.optim.SGD(groups, lr=LR)
    trainer = Trainer(model, nn.MSELoss(), optimizer, callbacks=(callback,))
    trainer.evaluate(make_regression_data(12, seed=2), per_device_batch_size=5)
    assert tracker.calls == [
        ("start", callback.current_run_name),
        ("log", 1, ["evaluation_loss"]),
        ("finish", False),
    ]
    tracker.calls.clear()
    trainer.train(
        train_dataset=make_regression_data(NUM_TRAIN),
        num_epochs=1,
        per_device_batch_size=BATCH_SIZE,
    )
    assert tracker.calls[1] == (
        "log",
        1,
        ["epoch_time", "learning_rate_group_0", "learning_rate_group_1", "train_loss_epoch"],
    )
