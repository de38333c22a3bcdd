"""Issue 2: the package, the mixins and the everyday Trainer, trained for real on the CPU."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
from typing import Any

import pytest
import torch
from torch import nn

import pa_mixins
from pa_mixins import MinimalTrainer, Trainer
from pa_mixins.base import BaseTrainer
from pa_mixins.callbacks import (
    DEFAULT_CALLBACKS,
    CallbackHandler,
    LogMetricsCallback,
    MoveModulesToDeviceCallback,
    PrintProgressCallback,
    ProgressBarCallback,
    StopTrainingError,
    TerminateOnNaNCallback,
    TrainerCallback,
    get_default_callbacks,
)
from pa_mixins.mixins import (
    AccelerateMixin,
    EvaluationMixin,
    GradientAccumulationMixin,
    MixedPrecisionMixin,
    SchedulerMixin,
    TrainingLoopMixin,
)
from pa_mixins.utils import LIMIT_BATCHES_ENV_VAR, LimitBatches
from tests.conftest import REPO_ROOT, make_model, make_regression_data, weights

PACKAGE = pathlib.Path(REPO_ROOT) / "pa_mixins"


def _sgd(model: nn.Module, lr: float = 0.05) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr)


def test_training_lowers_the_loss_and_evaluation_matches_a_direct_computation() -> None:
    model = make_model()
    data = make_regression_data(64)
    trainer = Trainer(model, nn.MSELoss(), _sgd(model), callbacks=())
    trainer.train(
        train_dataset=data, eval_dataset=data, num_epochs=6, per_device_batch_size=8, seed=0
    )

    train_losses = trainer.run_history.get_metric_values("train_loss_epoch")
    eval_losses = trainer.run_history.get_metric_values("eval_loss_epoch")
    assert len(train_losses) == len(eval_losses) == 6
    assert eval_losses[-1] < 0.5 * eval_losses[0]

    x, y = data.tensors
    with torch.no_grad():
        direct = nn.functional.mse_loss(trainer.model(x), y).item()
    assert eval_losses[-1] == pytest.approx(direct, rel=1e-5)

    trainer.evaluate(dataset=data, per_device_batch_size=5)  # uneven last batch
    assert trainer.run_history.get_metric_values("evaluation_loss") == [
        pytest.approx(direct, rel=1e-5)
    ]
    # evaluate() keeps the training history (pytorch-accelerated cleared it, issue 12 part 7)
    assert trainer.run_history.get_metric_names() == {
        "train_loss_epoch",
        "eval_loss_epoch",
        "evaluation_loss",
    }
    assert trainer.run_history.get_metric_values("eval_loss_epoch") == eval_losses
    trainer.evaluate(dataset=data, per_device_batch_size=5, reset_run_history=True)
    assert trainer.run_history.get_metric_names() == {"evaluation_loss"}
    assert trainer.run_history.get_metric_values("evaluation_loss") == [
        pytest.approx(direct, rel=1e-5)
    ]


def test_readme_quickstart_runs_with_the_pytorch_accelerated_names() -> None:
    # The pytorch-accelerated README quickstart, with only the import changed.
    model = make_model()
    loss_func = nn.MSELoss()
    optimizer = _sgd(model)
    train_ds, val_ds, test_ds = (make_regression_data(32, seed=s) for s in range(3))
    trainer = Trainer(model, loss_func=loss_func, optimizer=optimizer)
    trainer.train(
        train_dataset=train_ds, eval_dataset=val_ds, num_epochs=2, per_device_batch_size=32
    )
    trainer.evaluate(dataset=test_ds, per_device_batch_size=64)
    assert len(trainer.run_history.get_metric_values("evaluation_loss")) == 1


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("pa_mixins", ["Trainer", "TrainerPlaceholderValues", "notebook_launcher", "__version__"]),
        (
            "pa_mixins.trainer",
            [
                "Trainer",
                "DEFAULT_CALLBACKS",
                "TrainerPlaceholderValues",
                "replace_trainer_placeholder_values",
            ],
        ),
        (
            "pa_mixins.callbacks",
            [
                "TrainerCallback",
                "CallbackHandler",
                "StopTrainingError",
                "CallbackMethodNotImplementedError",
                "get_default_callbacks",
                "LimitBatchesCallback",
                "LogMetricsCallback",
                "ProgressBarCallback",
                "PrintProgressCallback",
                "TerminateOnNaNCallback",
                "MoveModulesToDeviceCallback",
                "SaveBestModelCallback",
                "EarlyStoppingCallback",
                "ModelEmaCallback",
                "ConvertSyncBatchNormCallback",
                "StepBasedEvaluationCallback",
                "LimitEvalStepsCallback",
                "SaveTrainingStateCallback",
                "WSDCheckpointCallback",
            ],
        ),
        ("pa_mixins.tracking", ["RunHistory", "InMemoryRunHistory", "LossTracker"]),
        ("pa_mixins.run_config", ["TrainerRunConfig"]),
        (
            "pa_mixins.utils",
            [
                "LIMIT_BATCHES_ENV_VAR",
                "LimitBatches",
                "DataLoaderSlice",
                "local_process_zero_only",
                "local_process_zero_first",
                "world_process_zero_only",
                "ModelEma",
                "worker_init_fn",
                "remove_padding",
            ],
        ),
    ],
)
def test_pytorch_accelerated_module_paths_exist(module: str, names: list[str]) -> None:
    imported = __import__(module, fromlist=names)
    for name in names:
        assert hasattr(imported, name), f"{module}.{name}"


def test_default_callbacks_match_pytorch_accelerated() -> None:
    assert DEFAULT_CALLBACKS == (
        MoveModulesToDeviceCallback,
        TerminateOnNaNCallback,
        PrintProgressCallback,
        ProgressBarCallback,
        LogMetricsCallback,
    )
    assert ProgressBarCallback not in get_default_callbacks(progress_bar=False)


def test_ready_made_trainers_have_the_documented_mro() -> None:
    from pa_mixins.mixins import CheckpointMixin, CompileMixin, ExperimentTrackingMixin

    assert Trainer.__mro__ == (
        Trainer,
        ExperimentTrackingMixin,
        CheckpointMixin,
        SchedulerMixin,
        MixedPrecisionMixin,
        CompileMixin,
        GradientAccumulationMixin,
        EvaluationMixin,
        TrainingLoopMixin,
        AccelerateMixin,
        BaseTrainer,
        object,
    )
    assert MinimalTrainer.__mro__ == (
        MinimalTrainer,
        EvaluationMixin,
        TrainingLoopMixin,
        AccelerateMixin,
        BaseTrainer,
        object,
    )
    # one-line assemblies: no logic of their own
    for cls in (Trainer, MinimalTrainer):
        own = {k for k, v in vars(cls).items() if callable(v) and not k.startswith("__")}
        assert own == set(), own


def test_only_the_adapter_imports_accelerate() -> None:
    importers = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            if any(m == "accelerate" or m.startswith("accelerate.") for m in modules):
                importers.append(path.relative_to(PACKAGE).as_posix())
    assert set(importers) == {"mixins/accelerate.py"}


def test_importing_the_package_seeds_nothing() -> None:
    code = "import torch, random; import pa_mixins; print(torch.initial_seed(), random.random())"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    }
    assert len(outputs) == 2


def test_unknown_constructor_options_are_rejected_with_the_owning_mixin() -> None:
    model = make_model()
    with pytest.raises(TypeError, match="'mixed_precision' is an option of MixedPrecisionMixin"):
        MinimalTrainer(model, nn.MSELoss(), _sgd(model), mixed_precision="bf16")
    with pytest.raises(TypeError, match="'colour' is not an option of any pa_mixins mixin"):
        Trainer(model, nn.MSELoss(), _sgd(model), colour="blue")


def test_train_options_of_missing_mixins_are_rejected_before_training() -> None:
    model = make_model()
    before = weights(model)
    trainer = MinimalTrainer(model, nn.MSELoss(), _sgd(model), callbacks=())
    data = make_regression_data(8)
    with pytest.raises(
        TypeError, match="'gradient_accumulation_steps' is an option of GradientAccumulationMixin"
    ):
        trainer.train(train_dataset=data, num_epochs=1, gradient_accumulation_steps=2)
    with pytest.raises(TypeError, match="'create_scheduler_fn' is an option of SchedulerMixin"):
        trainer.train(train_dataset=data, num_epochs=1, create_scheduler_fn=lambda opt: None)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(model)))
    # Their "off" values are accepted.
    trainer.train(
        train_dataset=data, num_epochs=1, gradient_accumulation_steps=1, create_scheduler_fn=None
    )


def test_an_assembled_trainer_and_a_one_method_override_work() -> None:
    class AccumulatingTrainer(
        GradientAccumulationMixin, EvaluationMixin, TrainingLoopMixin, AccelerateMixin, BaseTrainer
    ):
        pass

    class ScaledLossTrainer(Trainer):
        def calculate_train_batch_loss(self, batch: Any) -> dict[str, Any]:
            output = super().calculate_train_batch_loss(batch)
            output["loss"] = output["loss"] * 0.0
            return output

    data = make_regression_data(16)
    model = make_model()
    AccumulatingTrainer(model, nn.MSELoss(), _sgd(model), callbacks=()).train(
        train_dataset=data, num_epochs=1, per_device_batch_size=4, gradient_accumulation_steps=2
    )
    model = make_model()
    before = weights(model)
    ScaledLossTrainer(model, nn.MSELoss(), _sgd(model), callbacks=()).train(
        train_dataset=data, num_epochs=1, per_device_batch_size=4
    )
    assert all(torch.equal(a, b) for a, b in zip(before, weights(model)))


def test_device_print_and_process_roles_work_right_after_construction(
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = make_model()
    trainer = Trainer(model, nn.MSELoss(), _sgd(model), callbacks=())
    assert trainer.device == torch.device("cpu")
    trainer.print("hello")
    assert "hello" in capsys.readouterr().out
    assert trainer.is_local_process_zero and trainer.is_world_process_zero
    assert trainer.num_processes == 1 and trainer.process_index == 0 and not trainer.is_distributed


def test_accelerator_kwargs_reach_the_accelerator() -> None:
    from accelerate.utils import DistributedDataParallelKwargs

    handler = DistributedDataParallelKwargs(find_unused_parameters=True)
    model = make_model()
    trainer = Trainer(
        model,
        nn.MSELoss(),
        _sgd(model),
        callbacks=(),
        accelerator_kwargs={"kwargs_handlers": [handler]},
    )
    trainer.train(train_dataset=make_regression_data(8), num_epochs=1, per_device_batch_size=4)
    assert trainer.accelerator.ddp_handler is handler


def test_a_trainer_without_optimizer_evaluates_but_refuses_to_train() -> None:
    model = make_model()
    trainer = Trainer(model, nn.MSELoss(), optimizer=None, callbacks=())
    trainer.evaluate(make_regression_data(10), per_device_batch_size=4)
    assert len(trainer.run_history.get_metric_values("evaluation_loss")) == 1
    with pytest.raises(ValueError, match="needs an optimizer"):
        trainer.train(train_dataset=make_regression_data(8), num_epochs=1)


def test_run_config_has_the_pytorch_accelerated_fields() -> None:
    model = make_model()
    trainer = Trainer(model, nn.MSELoss(), _sgd(model), callbacks=())
    trainer.train(
        train_dataset=make_regression_data(20),
        eval_dataset=make_regression_data(6),
        num_epochs=3,
        per_device_batch_size=4,
        gradient_accumulation_steps=2,
        gradient_clip_value=1.0,
        eval_dataloader_kwargs={"batch_size": 3},
    )
    config = trainer.run_config
    assert config is not None
    assert (
        config.num_epochs,
        config.train_per_device_batch_size,
        config.eval_per_device_batch_size,
    ) == (3, 4, 3)
    assert (
        config.num_update_steps_per_epoch == config.num_local_update_steps_per_epoch == 3
    )  # ceil(5 / 2)
    assert config.max_num_train_steps == 9
    assert (config.train_total_batch_size, config.eval_total_batch_size) == (8, 3)
    assert config.gradient_clip_value == 1.0 and config.mixed_precision == "no"
    assert config.is_world_process_zero and not config.is_distributed and config.num_processes == 1
    assert config.to_dict()["train_dl_kwargs"]["batch_size"] == 4


def test_callback_handler_instantiates_classes_refuses_duplicates_and_calls_custom_events() -> None:
    seen: list[tuple[str, Any]] = []

    class Custom(TrainerCallback):
        def on_something_custom(self, trainer: Any, value: int, **kwargs: Any) -> None:
            seen.append(("custom", value))

    handler = CallbackHandler([PrintProgressCallback, Custom()])
    assert handler.callback_list == ["PrintProgressCallback", "Custom"]
    with pytest.raises(ValueError, match="PrintProgressCallback"):
        handler.add_callback(PrintProgressCallback())
    handler.call_event("on_something_custom", None, value=3)  # PrintProgressCallback skips it
    assert seen == [("custom", 3)]

    class NotACallback:
        pass

    with pytest.raises(AttributeError):
        CallbackHandler([NotACallback()]).call_event("on_something_custom", None)


def test_limit_batches_environment_variable_limits_every_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps: list[int] = []
    eval_steps: list[int] = []

    class CountSteps(TrainerCallback):
        def on_train_step_end(self, trainer: Any, step: int, **kwargs: Any) -> None:
            steps.append(step)

        def on_eval_step_end(self, trainer: Any, **kwargs: Any) -> None:
            eval_steps.append(1)

    model = make_model()
    with LimitBatches(2):
        assert LIMIT_BATCHES_ENV_VAR in __import__("os").environ
        trainer = Trainer(model, nn.MSELoss(), _sgd(model), callbacks=[CountSteps()])
    assert LIMIT_BATCHES_ENV_VAR not in __import__("os").environ
    trainer.train(
        train_dataset=make_regression_data(40),
        eval_dataset=make_regression_data(40),
        num_epochs=2,
        per_device_batch_size=4,
    )
    assert steps == [0, 1, 0, 1]
    assert len(eval_steps) == 4  # 2 batches in each epoch's evaluation

    monkeypatch.setenv(LIMIT_BATCHES_ENV_VAR, "zero")
    with pytest.raises(ValueError, match=LIMIT_BATCHES_ENV_VAR):
        Trainer(model, nn.MSELoss(), _sgd(model))


def test_move_modules_to_device_moves_trainer_attributes_other_than_the_model() -> None:
    class WithMetricModule(Trainer):
        def training_run_start(self) -> None:
            super().training_run_start()
            self.seen_device = next(self.extra.parameters()).device

    model = make_model()
    trainer = WithMetricModule(
        model, nn.MSELoss(), _sgd(model), callbacks=[MoveModulesToDeviceCallback]
    )
    trainer.extra = nn.Linear(2, 2)
    trainer.train(train_dataset=make_regression_data(8), num_epochs=1, per_device_batch_size=4)
    assert next(trainer.extra.parameters()).device == trainer.device


def test_gather_and_get_model_on_one_process() -> None:
    model = make_model()
    trainer = Trainer(model, nn.MSELoss(), _sgd(model), callbacks=())
    t = torch.tensor([[1, 2], [-1, -1], [3, 4]])
    assert torch.equal(trainer.gather(t), t)
    assert torch.equal(trainer.gather(t, padding_value=-1), torch.tensor([[1, 2], [3, 4]]))
    trainer.train(train_dataset=make_regression_data(8), num_epochs=1, per_device_batch_size=4)
    assert trainer.get_model() is model and trainer.model is model

    compiled = torch.compile(model)
    trainer.model = compiled
    assert trainer.get_model(keep_torch_compile=False) is model
    assert trainer.get_model() is compiled


def _count_device_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    reads = {"count": 0}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy"):
        original = getattr(torch.Tensor, name)

        def counting(
            self: torch.Tensor, *args: Any, _original: Any = original, **kwargs: Any
        ) -> Any:
            reads["count"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return reads


def test_the_loop_reads_nothing_from_the_device_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Device-to-host reads happen per epoch, never per step: the count is the same for an
    epoch of 2 steps and one of 16 (interval logging on, at its default of 50 updates)."""
    reads = _count_device_reads(monkeypatch)

    def reads_for(num_samples: int) -> int:
        model = make_model()
        callbacks = [c for c in DEFAULT_CALLBACKS if c is not TerminateOnNaNCallback]
        trainer = Trainer(model, nn.MSELoss(), _sgd(model), callbacks=callbacks)
        assert trainer.log_every_n_steps == 50
        data = make_regression_data(num_samples)
        trainer.train(
            train_dataset=data,
            num_epochs=1,
            per_device_batch_size=4,
            gradient_accumulation_steps=2,
            seed=1,
        )
        before = reads["count"]
        trainer.train(
            train_dataset=data,
            eval_dataset=data,
            num_epochs=1,
            per_device_batch_size=4,
            gradient_accumulation_steps=2,
            seed=1,
        )
        return reads["count"] - before

    assert reads_for(8) == reads_for(64)


def test_interval_logging_reads_once_per_interval_not_per_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With interval metrics every N updates (shown on the bar, logged, sent to a tracker), the
    reads grow with the number of intervals, whatever their length."""
    from pa_mixins.trackers import Tracker

    class NullTracker(Tracker):
        def start(self, run_name: str, config: Any) -> None:
            self.run_name = run_name

        def log_metrics(self, metrics: Any, step: int) -> None:
            pass

        def finish(self, failed: bool = False) -> None:
            self.run_name = None

    reads = _count_device_reads(monkeypatch)

    def reads_for(num_samples: int, every: int) -> int:
        model = make_model()
        callbacks = [c for c in DEFAULT_CALLBACKS if c is not TerminateOnNaNCallback]
        trainer = Trainer(
            model,
            nn.MSELoss(),
            _sgd(model),
            callbacks=callbacks,
            log_every_n_steps=every,
            log_with=NullTracker(),
        )
        before = reads["count"]
        trainer.train(train_dataset=make_regression_data(num_samples), num_epochs=1, seed=1)
        return reads["count"] - before

    # batch 8: updates per epoch = samples / 8
    one_short, one_long = reads_for(16, 2), reads_for(128, 16)  # 1 interval of 2 / 16 updates
    assert one_short == one_long
    two, four = reads_for(32, 2), reads_for(64, 2)  # 2 and 4 intervals of 2 updates
    per_interval = two - one_short
    assert per_interval == 1 and four - two == 2 * per_interval  # the one .tolist()


class NaNAtUpdate(Trainer):
    nan_at_update = 2

    def calculate_train_batch_loss(self, batch: Any) -> dict[str, Any]:
        output = super().calculate_train_batch_loss(batch)
        if self.num_updates == self.nan_at_update:
            output["loss"] = output["loss"] * float("nan")
        return output


def test_nan_loss_on_the_cpu_stops_training_before_its_update() -> None:
    model = make_model()
    nan_callback = TerminateOnNaNCallback()
    trainer = NaNAtUpdate(model, nn.MSELoss(), _sgd(model), callbacks=[nan_callback])
    trainer.train(train_dataset=make_regression_data(40), num_epochs=2, per_device_batch_size=4)
    assert nan_callback.triggered
    assert trainer.num_updates == 2  # the NaN step (index 2) was not applied
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert "train_loss_epoch" not in trainer.run_history.get_metric_names()


@pytest.mark.gpu
def test_nan_loss_on_a_gpu_stops_training_at_most_one_step_late() -> None:
    model = make_model()
    nan_callback = TerminateOnNaNCallback()
    trainer = NaNAtUpdate(model, nn.MSELoss(), _sgd(model), callbacks=[nan_callback])
    trainer.train(train_dataset=make_regression_data(40), num_epochs=2, per_device_batch_size=4)
    assert trainer.device.type == "cuda" and nan_callback.triggered
    assert trainer.num_updates == 3  # the NaN step (index 2) was applied, the next one was not


def test_nan_in_the_last_step_of_an_epoch_stops_before_the_next_epoch() -> None:
    class InfAtLastStep(NaNAtUpdate):
        nan_at_update = 1

    model = make_model()
    nan_callback = TerminateOnNaNCallback()
    trainer = InfAtLastStep(model, nn.MSELoss(), _sgd(model), callbacks=[nan_callback])
    trainer.train(train_dataset=make_regression_data(8), num_epochs=3, per_device_batch_size=4)
    assert nan_callback.triggered and trainer.num_updates == 1
    assert trainer.run_history.current_epoch == 1


def test_stop_training_error_from_evaluate_is_caught() -> None:
    class Stop(TrainerCallback):
        def on_eval_step_end(self, trainer: Any, **kwargs: Any) -> None:
            raise StopTrainingError("stop")

    model = make_model()
    trainer = Trainer(model, nn.MSELoss(), optimizer=None, callbacks=[Stop()])
    trainer.evaluate(make_regression_data(8), per_device_batch_size=4)
    assert "evaluation_loss" not in trainer.run_history.get_metric_names()


def test_version_is_exposed() -> None:
    assert isinstance(pa_mixins.__version__, str) and pa_mixins.__version__.count(".") == 2


def test_dict_batches_and_loss_computed_by_the_model() -> None:
    class DictDataset(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
        def __init__(self) -> None:
            self.data = make_regression_data(12)

        def __len__(self) -> int:
            return len(self.data)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            x, y = self.data[i]
            return {"x": x, "y": y}

    class ModelWithLoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_model()

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
            out = self.net(x)
            return {"loss": nn.functional.mse_loss(out, y), "out": out}

    class DictTrainer(Trainer):
        def calculate_train_batch_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
            outputs = self.model(**batch)
            return {
                "loss": outputs["loss"],
                "model_outputs": outputs["out"],
                "batch_size": batch["x"].size(0),
            }

        calculate_eval_batch_loss = calculate_train_batch_loss

    model = ModelWithLoss()
    trainer = DictTrainer(model, loss_func=None, optimizer=_sgd(model), callbacks=())
    trainer.train(
        train_dataset=DictDataset(),
        eval_dataset=DictDataset(),
        num_epochs=1,
        per_device_batch_size=4,
    )
    assert len(trainer.run_history.get_metric_values("eval_loss_epoch")) == 1


def test_callback_handler_sees_callbacks_added_after_the_first_event() -> None:
    seen: list[str] = []

    class Late(TrainerCallback):
        def on_train_step_start(self, trainer: Any, **kwargs: Any) -> None:
            seen.append("late")

    handler = CallbackHandler([PrintProgressCallback()])
    handler.call_event("on_train_step_start", None)
    handler.add_callback(Late)
    handler.call_event("on_train_step_start", None)
    handler.callbacks.append(type("Direct", (Late,), {})())
    handler.call_event("on_train_step_start", None)
    assert seen == ["late", "late", "late"]


def test_loss_tracker_keeps_a_device_sum_of_sample_weighted_losses() -> None:
    from pa_mixins.tracking import LossTracker

    tracker = LossTracker()
    tracker.update(torch.tensor(2.0), 3)
    tracker.update(torch.tensor([1.0, 3.0]), 1)  # a non-scalar loss counts by its mean
    tracker.update(torch.tensor(4.0), torch.tensor(2))
    assert isinstance(tracker.total_loss, torch.Tensor)
    assert float(tracker.average) == pytest.approx((6 + 2 + 8) / 6)
    tracker.reset()
    tracker.update(1.5, 2)
    assert tracker.average == 1.5 and tracker.running_count == 2


def test_log_metrics_logs_intermediate_evaluations_apart_from_epoch_evaluations() -> None:
    from pa_mixins.callbacks import StepBasedEvaluationCallback

    logged: list[list[str]] = []

    class Recording(LogMetricsCallback):
        def log_metrics(self, trainer: Any, metrics: dict[str, Any]) -> None:
            logged.append(sorted(metrics))

    model = make_model()
    trainer = Trainer(
        model,
        nn.MSELoss(),
        _sgd(model),
        callbacks=[
            StepBasedEvaluationCallback(eval_every_n_steps=3),
            Recording(),
            ProgressBarCallback(),
        ],
    )
    trainer.train(
        train_dataset=make_regression_data(16),
        eval_dataset=make_regression_data(8),
        num_epochs=1,
        per_device_batch_size=4,
    )
    # 4 updates: an intermediate evaluation after update 3, then the epoch's own.
    assert logged == [["intermediate_eval_loss"], ["train_loss_epoch"], ["eval_loss_epoch"]]
