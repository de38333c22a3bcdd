"""ModelEmaCallback, StepBasedEvaluationCallback and LimitEvalStepsCallback through real tiny
training runs on the CPU, checked against hand computations."""

from __future__ import annotations

import copy
import inspect
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from pa_mixins import Trainer
from pa_mixins.callbacks import (
    LimitEvalStepsCallback,
    ModelEmaCallback,
    SaveTrainingStateCallback,
    StepBasedEvaluationCallback,
    TrainerCallback,
)
from pa_mixins.utils import ModelEma
from tests.conftest import REPO_ROOT, launch_env, launcher, make_model, make_regression_data

# 32 training samples in batches of 8: 4 optimizer updates per epoch; 16 eval samples: 2 batches
TRAIN = make_regression_data(32)
EVAL = make_regression_data(16, seed=1)


def make_dropout_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 1))


def make_trainer(*callbacks: Any, model: nn.Module | None = None, seed: int = 0) -> Trainer:
    model = model if model is not None else make_model(seed=seed)
    return Trainer(
        model, nn.MSELoss(), torch.optim.Adam(model.parameters(), lr=0.01), callbacks=callbacks
    )


def train(trainer: Trainer, epochs: int = 2, eval_dataset: Any = EVAL, **kwargs: Any) -> None:
    trainer.train(
        TRAIN, epochs, eval_dataset=eval_dataset, per_device_batch_size=8, seed=3, **kwargs
    )


def eval_loss(model: nn.Module, num_samples: int = 16) -> float:
    """The mean squared error of ``model`` (a copy in eval mode) on the first samples of EVAL."""
    model = copy.deepcopy(model).eval()
    x, y = EVAL.tensors
    with torch.no_grad():
        return float(nn.functional.mse_loss(model(x[:num_samples]), y[:num_samples]))


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


class RecordUpdates(TrainerCallback):
    """The model's weights after every optimizer update."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_optimizer_step_end(self, trainer, **kwargs):
        self.weights.append(state(trainer.get_model()))


class CountEvalSteps(TrainerCallback):
    """The number of evaluation batches of each evaluation epoch, with ``is_intermediate``."""

    def __init__(self) -> None:
        self.epochs: list[list[Any]] = []

    def on_eval_epoch_start(self, trainer, is_intermediate=False, **kwargs):
        self.epochs.append([is_intermediate, 0])

    def on_eval_step_end(self, trainer, batch, batch_output, **kwargs):
        self.epochs[-1][1] += 1


# -- signatures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (
            ModelEmaCallback,
            {
                "decay": 0.99,
                "evaluate_during_training": True,
                "save_path": "ema_model.pt",
                "watch_metric": "ema_model_eval_loss_epoch",
                "greater_is_better": False,
                "model_ema": ModelEma,
                "callbacks": (),
            },
        ),
        (StepBasedEvaluationCallback, {"eval_every_n_steps": inspect.Parameter.empty}),
        (
            LimitEvalStepsCallback,
            {"num_eval_steps": inspect.Parameter.empty, "limit_intermediate_only": True},
        ),
    ],
)
def test_signatures_are_pytorch_accelerated_ones(cls: type, expected: dict[str, Any]) -> None:
    parameters = inspect.signature(cls).parameters
    assert {name: p.default for name, p in parameters.items()} == expected


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="eval_every_n_steps"):
        StepBasedEvaluationCallback(0)
    with pytest.raises(ValueError, match="num_eval_steps"):
        LimitEvalStepsCallback(-1)
    with pytest.raises(ValueError, match="decay"):
        ModelEmaCallback(decay=1.5)


# -- ModelEmaCallback ---------------------------------------------------------------------------


def test_ema_is_updated_after_every_update_and_evaluated(tmp_path: Path) -> None:
    decay = 0.8
    record = RecordUpdates()
    ema = ModelEmaCallback(decay=decay, save_path=str(tmp_path / "ema.pt"))
    trainer = make_trainer(record, ema)
    initial = state(trainer.model)
    handler = trainer.callback_handler
    train(trainer, epochs=2)

    assert len(record.weights) == 8  # 4 updates per epoch
    expected = initial
    for weights in record.weights:
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in expected}
    assert ema.ema_model is not None
    averaged = ema.ema_model.module
    torch.testing.assert_close(state(averaged), expected)
    # the trained weights stay in the model (the EMA is not loaded at the end)
    torch.testing.assert_close(state(trainer.model), record.weights[-1], rtol=0, atol=0)

    history = trainer.run_history
    assert len(history.get_metric_values("ema_model_eval_loss_epoch")) == 2
    assert history.get_metric_values("eval_loss_epoch")[-1] == pytest.approx(
        eval_loss(trainer.model)
    )
    assert history.get_latest_metric("ema_model_eval_loss_epoch") == pytest.approx(
        eval_loss(averaged)
    )
    assert not any(name.startswith("ema_model_train") for name in history.get_metric_names())
    assert history.metric_name_prefix == ""
    assert trainer.callback_handler is handler
    assert next(averaged.parameters()).device == trainer.device
    assert not any(p.requires_grad for p in averaged.parameters())


def test_adding_the_ema_does_not_change_training(tmp_path: Path) -> None:
    plain = make_trainer(model=make_dropout_model())
    train(plain)
    with_ema = make_trainer(
        ModelEmaCallback(save_path=str(tmp_path / "ema.pt")), model=make_dropout_model()
    )
    train(with_ema)
    for name, value in plain.model.state_dict().items():
        assert torch.equal(with_ema.model.state_dict()[name], value), name
    for name in ("train_loss_epoch", "eval_loss_epoch"):
        assert with_ema.run_history.get_metric_values(name) == plain.run_history.get_metric_values(
            name
        )


def test_the_best_ema_model_is_saved_without_optimizer_and_loads(tmp_path: Path) -> None:
    path = tmp_path / "ema.pt"
    scripted = [1.0, 0.4, 0.6]

    class ScriptEmaLoss(TrainerCallback):  # runs in the EMA's evaluation only
        def __init__(self) -> None:
            self.calls = 0

        def on_eval_epoch_end(self, trainer, **kwargs):
            self.calls += 1
            values = trainer.run_history.get_metric_values("ema_model_eval_loss_epoch")
            values[-1] = scripted[trainer.run_history.current_epoch - 1]

    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    class Snapshot(TrainerCallback):
        def on_training_run_epoch_end(self, trainer, **kwargs):
            snapshots[trainer.run_history.current_epoch] = state(ema.ema_model.module)

    script = ScriptEmaLoss()
    ema = ModelEmaCallback(decay=0.5, save_path=str(path), callbacks=[script])
    trainer = make_trainer(ema, Snapshot())
    train(trainer, epochs=3)

    assert script.calls == 3
    assert trainer.run_history.get_metric_values("ema_model_eval_loss_epoch") == scripted
    assert ema.state_dict()["best_metric"] == 0.4 and ema.best_metric_epoch == 2
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["ema_model_eval_loss_epoch"] == 0.4 and checkpoint["epoch"] == 2
    assert "optimizer_state_dict" not in checkpoint and "scheduler_state_dict" not in checkpoint
    fresh = make_trainer(seed=5)
    fresh.load_checkpoint(path)
    for name, value in snapshots[2].items():
        assert torch.equal(fresh.model.state_dict()[name], value), name
    assert not torch.equal(snapshots[2]["0.weight"], snapshots[3]["0.weight"])


def test_without_an_eval_set_the_ema_is_saved_every_epoch(tmp_path: Path) -> None:
    path = tmp_path / "ema.pt"
    ema = ModelEmaCallback(decay=0.5, save_path=str(path))
    trainer = make_trainer(ema)
    train(trainer, epochs=2, eval_dataset=None)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["epoch"] == 2
    for name, value in ema.ema_model.module.state_dict().items():
        assert torch.equal(checkpoint["model_state_dict"][name], value), name
    assert not any(name.startswith("ema_model_") for name in trainer.run_history.get_metric_names())


def test_everything_is_restored_when_the_ema_evaluation_fails(tmp_path: Path) -> None:
    class Fail(TrainerCallback):
        def on_eval_step_end(self, trainer, batch, batch_output, **kwargs):
            raise RuntimeError("boom")

    seen: dict[str, Any] = {}

    class Watch(TrainerCallback):
        def on_eval_epoch_start(self, trainer, **kwargs):
            seen["model"] = trainer.model

    ema = ModelEmaCallback(save_path=str(tmp_path / "ema.pt"), callbacks=[Fail()])
    trainer = make_trainer(Watch(), ema)
    trainer.run_history.set_metric_name_prefix("run_")
    handler = trainer.callback_handler
    with pytest.raises(RuntimeError, match="boom"):
        train(trainer, epochs=1, reset_run_history=False)
    assert trainer.run_history.metric_name_prefix == "run_"
    assert trainer.callback_handler is handler
    assert trainer.model is seen["model"]
    assert trainer.model is not ema.ema_model.module


def test_a_resumed_run_continues_the_ema_exactly(tmp_path: Path) -> None:
    states = tmp_path / "states"
    reference = ModelEmaCallback(decay=0.7, save_path=str(tmp_path / "reference.pt"))
    saver = SaveTrainingStateCallback(str(states), save_every_n_steps=6, save_at_end=False)
    first = make_trainer(reference, saver)
    train(first, epochs=3)  # 12 updates; a state after update 6 (in epoch 2)

    resumed_ema = ModelEmaCallback(decay=0.7, save_path=str(tmp_path / "resumed.pt"))
    second = make_trainer(
        resumed_ema, SaveTrainingStateCallback(str(tmp_path / "other"), save_at_end=False), seed=1
    )
    train(second, epochs=3, resume_from=str(states / "step_6"))
    assert second.resumed_from is not None

    for name, value in reference.ema_model.module.state_dict().items():
        assert torch.equal(resumed_ema.ema_model.module.state_dict()[name], value), name
    assert resumed_ema.best_metric == reference.best_metric
    assert resumed_ema.best_metric_epoch == reference.best_metric_epoch
    assert second.run_history.state_dict() == first.run_history.state_dict()
    saved = torch.load(tmp_path / "reference.pt", weights_only=True)
    again = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert saved["epoch"] == again["epoch"]
    for name, value in saved["model_state_dict"].items():
        assert torch.equal(again["model_state_dict"][name], value), name


# -- StepBasedEvaluationCallback ----------------------------------------------------------------


def test_intermediate_evaluations_every_n_updates_with_the_right_values() -> None:
    expected: list[float] = []
    modes: list[bool] = []

    class Direct(TrainerCallback):  # listed before the step-based evaluation
        def on_optimizer_step_end(self, trainer, num_updates=0, **kwargs):
            if num_updates % 3 == 0:
                expected.append(eval_loss(trainer.get_model()))

    class Modes(TrainerCallback):
        def on_train_step_start(self, trainer, **kwargs):
            modes.append(all(module.training for module in trainer.model.modules()))

    counter = CountEvalSteps()
    trainer = make_trainer(
        Direct(), StepBasedEvaluationCallback(3), counter, Modes(), model=make_dropout_model()
    )
    train(trainer, epochs=2)  # 8 updates: evaluations after updates 3 and 6

    values = trainer.run_history.get_metric_values("intermediate_eval_loss")
    assert len(values) == 2 and values == pytest.approx(expected)
    assert [kind for kind, _ in counter.epochs] == [True, False, True, False]
    assert all(steps == 2 for _, steps in counter.epochs)
    assert len(trainer.run_history.get_metric_values("eval_loss_epoch")) == 2
    assert all(modes)  # dropout is active again after each intermediate evaluation


def test_intermediate_evaluations_do_not_change_training() -> None:
    plain = make_trainer(model=make_dropout_model())
    train(plain)
    evaluated = make_trainer(StepBasedEvaluationCallback(1), model=make_dropout_model())
    train(evaluated)
    assert len(evaluated.run_history.get_metric_values("intermediate_eval_loss")) == 8
    for name, value in plain.model.state_dict().items():
        assert torch.equal(evaluated.model.state_dict()[name], value), name
    for name in ("train_loss_epoch", "eval_loss_epoch"):
        assert evaluated.run_history.get_metric_values(name) == plain.run_history.get_metric_values(
            name
        )


def test_modules_keep_their_own_mode_after_an_intermediate_evaluation() -> None:
    model = make_dropout_model()
    frozen_modes: list[bool] = []

    class Freeze(TrainerCallback):
        def on_train_epoch_start(self, trainer, **kwargs):
            trainer.get_model()[2].eval()  # the user keeps the dropout layer off

        def on_train_step_start(self, trainer, **kwargs):
            model = trainer.get_model()
            frozen_modes.append((model.training, model[2].training))

    trainer = make_trainer(Freeze(), StepBasedEvaluationCallback(2), model=model)
    train(trainer, epochs=1)
    assert frozen_modes == [(True, False)] * 4


def test_steps_are_updates_with_gradient_accumulation() -> None:
    counter = CountEvalSteps()
    trainer = make_trainer(StepBasedEvaluationCallback(2), counter)
    train(trainer, epochs=2, gradient_accumulation_steps=2)  # 2 updates per epoch
    assert [kind for kind, _ in counter.epochs] == [True, False, True, False]


def test_without_an_eval_set_step_based_evaluation_warns_and_does_nothing() -> None:
    trainer = make_trainer(StepBasedEvaluationCallback(1))
    with pytest.warns(UserWarning, match="no eval_dataset"):
        train(trainer, epochs=1, eval_dataset=None)
    assert "intermediate_eval_loss" not in trainer.run_history.get_metric_names()


# -- LimitEvalStepsCallback ---------------------------------------------------------------------


@pytest.mark.parametrize("limit_first", [True, False])
def test_only_intermediate_evaluations_are_limited_in_any_order(limit_first: bool) -> None:
    eval_set = make_regression_data(40, seed=1)  # 5 batches
    counter = CountEvalSteps()
    limit, step_based = LimitEvalStepsCallback(2), StepBasedEvaluationCallback(4)
    ordered = (limit, step_based) if limit_first else (step_based, limit)
    trainer = make_trainer(*ordered, counter)
    train(trainer, epochs=1, eval_dataset=eval_set)
    assert counter.epochs == [[True, 2], [False, 5]]
    x, y = eval_set.tensors
    with torch.no_grad():
        model = trainer.model.eval()
        full = float(nn.functional.mse_loss(model(x), y))
        first_16 = float(nn.functional.mse_loss(model(x[:16]), y[:16]))
    # the intermediate evaluation ran after the last update of the epoch: same weights
    assert trainer.run_history.get_latest_metric("intermediate_eval_loss") == pytest.approx(
        first_16
    )
    assert trainer.run_history.get_latest_metric("eval_loss_epoch") == pytest.approx(full)


def test_every_evaluation_is_limited_when_asked() -> None:
    counter = CountEvalSteps()
    trainer = make_trainer(LimitEvalStepsCallback(1, limit_intermediate_only=False), counter)
    train(trainer, epochs=2)
    assert counter.epochs == [[False, 1], [False, 1]]
    assert trainer.run_history.get_latest_metric("eval_loss_epoch") == pytest.approx(
        eval_loss(trainer.model, num_samples=8)
    )
    trainer.evaluate(EVAL, per_device_batch_size=8)
    assert counter.epochs[-1] == [False, 1]


def test_a_limit_larger_than_the_set_runs_every_batch() -> None:
    counter = CountEvalSteps()
    trainer = make_trainer(LimitEvalStepsCallback(50, limit_intermediate_only=False), counter)
    train(trainer, epochs=1)
    assert counter.epochs == [[False, 2]]


@pytest.mark.parametrize(
    ("total", "processes", "shares"),
    [(7, 3, [3, 2, 2]), (2, 3, [1, 1, 0]), (6, 2, [3, 3]), (5, 1, [5])],
)
def test_the_limit_is_a_total_over_processes(total: int, processes: int, shares: list[int]):
    class Process:
        def __init__(self, index: int) -> None:
            self.num_processes, self.process_index = processes, index

    callback = LimitEvalStepsCallback(total)
    got = [callback.eval_batch_limit(Process(i), is_intermediate=True) for i in range(processes)]
    assert got == shares and sum(got) == total
    assert callback.eval_batch_limit(Process(0), is_intermediate=False) is None


def test_a_trainer_can_set_the_limit_itself() -> None:
    class Limited(Trainer):
        def get_eval_batch_limit(self, is_training: bool, is_intermediate: bool) -> int | None:
            return 1

    counter = CountEvalSteps()
    model = make_model()
    trainer = Limited(model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.01), [counter])
    train(trainer, epochs=1)
    assert counter.epochs == [[False, 1]]


def test_a_bad_limit_from_a_callback_is_refused() -> None:
    class Bad(TrainerCallback):
        def eval_batch_limit(self, trainer, **kwargs):
            return -2

    with pytest.raises(ValueError, match=r"Bad\.eval_batch_limit"):
        train(make_trainer(Bad()), epochs=1)


# -- several processes ---------------------------------------------------------------------------

DIST_SCRIPT = Path(__file__).parent / "scripts" / "dist_eval_callbacks.py"


def _run_dist(out: Path, processes: int, batch_size: int) -> list[dict[str, Any]]:
    result = subprocess.run(
        [*launcher(processes), str(DIST_SCRIPT), str(out), str(batch_size)],
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads(path.read_text()) for path in sorted(out.glob("rank*.json"))]


@pytest.mark.multiprocess
def test_two_processes_evaluate_at_the_same_updates_and_limit_in_total(tmp_path: Path) -> None:
    rank0, rank1 = _run_dist(tmp_path / "two", 2, batch_size=2)
    (single,) = _run_dist(tmp_path / "one", 1, batch_size=4)

    assert rank0["num_processes"] == 2
    # the same evaluations, at the same updates, on both processes (4 updates per epoch)
    kinds = [(e["update"], e["intermediate"]) for e in rank0["evals"]]
    assert kinds == [(e["update"], e["intermediate"]) for e in rank1["evals"]]
    assert kinds == [(e["update"], e["intermediate"]) for e in single["evals"]]
    assert [update for update, intermediate in kinds if intermediate] == [2, 4, 6, 8]
    # intermediate evaluations: 3 batches in total (2 + 1), the first 3 batches of the set
    for first, second in zip(rank0["evals"], rank1["evals"], strict=True):
        samples = sorted(first["samples"] + second["samples"])
        assert samples == (list(range(6)) if first["intermediate"] else list(range(10)))
    for evaluation in single["evals"]:
        assert len(evaluation["samples"]) == (6 if evaluation["intermediate"] else 10)
    # every process records the same history and EMA; both match one process
    assert rank0["history"] == rank1["history"] and rank0["ema"] == rank1["ema"]
    assert sorted(rank0["history"]) == sorted(single["history"])
    for name, values in single["history"].items():
        assert rank0["history"][name] == pytest.approx(values, abs=1e-5), name
    for got, expected in zip(rank0["ema"], single["ema"], strict=True):
        assert got == pytest.approx(expected, abs=1e-5)
