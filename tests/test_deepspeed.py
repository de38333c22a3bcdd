"""DeepSpeed on one CPU process: every ZeRO stage trains exactly like the plain Trainer (same
losses and weights, accumulation with a short last group and clipping by norm included),
resumes exactly in a fresh process, and exports full weights; and what DeepSpeed cannot do is
refused before training starts. Each DeepSpeed run is a fresh process
(tests/scripts/deepspeed_run.py): DeepSpeed sets up process-wide state."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest
import torch
from torch import nn

from pa_mixins import DeepSpeedTrainer, Trainer
from pa_mixins.engines import (
    EngineSettings,
    prepare_deepspeed_environment,
    reconcile_deepspeed_config,
)
from tests.conftest import REPO_ROOT, make_model, make_regression_data

SCRIPT = pathlib.Path(REPO_ROOT) / "tests" / "scripts" / "deepspeed_run.py"
ACCUMULATION = ["--accumulation", "3", "--clip-norm", "1.0"]  # 11 batches: groups 3, 3, 3, 2


def _run(
    tmp_path: pathlib.Path, name: str, *args: str, env_extra: dict[str, str] | None = None
) -> dict[str, Any]:
    out = tmp_path / f"{name}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "DS_"))}
    for launcher_variable in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(launcher_variable, None)
    env.update(env_extra or {})
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _assert_same_run(a: dict[str, Any], b: dict[str, Any], atol: float = 1e-6) -> None:
    assert a["num_updates"] == b["num_updates"]
    assert a["updates"] == b["updates"]
    assert a["train_loss"] == pytest.approx(b["train_loss"], abs=atol)
    assert a["lrs"] == pytest.approx(b["lrs"])
    for name, weight in a["weights"].items():
        torch.testing.assert_close(
            torch.tensor(weight), torch.tensor(b["weights"][name]), atol=atol, rtol=0
        )


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _run(
        tmp_path_factory.mktemp("plain"),
        "plain",
        "--trainer",
        "plain",
        "--scheduler",
        *ACCUMULATION,
    )


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_every_zero_stage_trains_like_the_plain_trainer(
    tmp_path: pathlib.Path, plain_run: dict[str, Any], stage: int
) -> None:
    run = _run(tmp_path, "ds", "--stage", str(stage), "--scheduler", *ACCUMULATION)
    assert run["engine"] == "DeepSpeedEngine"
    # One optimizer update, scheduler step and on_optimizer_step_end per accumulation group.
    assert run["updates"] == list(range(1, 13))
    _assert_same_run(run, plain_run)


def test_cpu_offload_of_the_optimizer_trains_like_the_plain_trainer(
    tmp_path: pathlib.Path, plain_run: dict[str, Any]
) -> None:
    config = {
        "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
        "zero_force_ds_cpu_optimizer": False,  # a torch optimizer, not DeepSpeedCPUAdam
    }
    run = _run(
        tmp_path,
        "offload",
        "--stage",
        "2",
        "--scheduler",
        "--config",
        json.dumps(config),
        *ACCUMULATION,
    )
    _assert_same_run(run, plain_run)


@pytest.mark.parametrize("stage", [2, 3])
def test_a_resumed_run_ends_exactly_like_the_uninterrupted_one(
    tmp_path: pathlib.Path, plain_run: dict[str, Any], stage: int
) -> None:
    # Saved in epoch 2, requested inside an accumulation group: under DeepSpeed the state is
    # written at the end of the group (the engine's checkpoint cannot hold an open group).
    common = ["--stage", str(stage), "--scheduler", *ACCUMULATION]
    _run(tmp_path, "first", *common, "--save-at-update", "5", "--state-dir", "states")
    manifest = json.loads((tmp_path / "states" / "pa_state.json").read_text())
    assert manifest["position"] == {
        "phase": "train",
        "epoch": 1,
        "next_step": 6,
        "num_updates": 6,
        "max_steps_reached": False,
    }
    assert any(name.startswith("engine.1/") for name in manifest["files"])
    resumed = _run(tmp_path, "resumed", *common, "--resume-from", "states")
    assert resumed["updates"] == list(range(7, 13))
    assert resumed["lrs"] == pytest.approx(plain_run["lrs"][6:])
    assert resumed["train_loss"] == pytest.approx(plain_run["train_loss"], abs=1e-6)
    for name, weight in plain_run["weights"].items():
        torch.testing.assert_close(
            torch.tensor(resumed["weights"][name]), torch.tensor(weight), atol=1e-6, rtol=0
        )


def test_zero3_export_holds_the_full_weights_and_loads_into_a_plain_model(
    tmp_path: pathlib.Path,
) -> None:
    run = _run(tmp_path, "zero3", "--stage", "3", "--export", "model.pt", "--epochs", "1")
    checkpoint = torch.load(tmp_path / "model.pt", weights_only=True)
    assert "optimizer_state_dict" not in checkpoint  # it lives in training states
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))
    model.load_state_dict(checkpoint["model_state_dict"])  # strict: every full-size weight
    for name, weight in model.state_dict().items():
        torch.testing.assert_close(weight, torch.tensor(run["weights"][name]))


def test_evaluate_and_predict_after_a_zero3_run_use_its_engine(tmp_path: pathlib.Path) -> None:
    run = _run(tmp_path, "after", "--stage", "3", "--epochs", "1", "--after")
    # The model in eval mode (no dropout) over the data: the loss of the predictions.
    predictions = torch.tensor(run["after"]["predictions"])
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(44, 8, generator=generator)
    expected = nn.functional.mse_loss(predictions, x.sum(dim=1, keepdim=True)).item()
    assert predictions.shape == (44, 1)
    assert run["after"]["evaluation_loss"] == pytest.approx(expected, rel=1e-5)
    assert "cannot be set up a second time" in run["after"]["second_train"]


# -- refused before training starts (in this process: nothing reaches DeepSpeed) -------------


def _deepspeed_trainer(**options: Any) -> DeepSpeedTrainer:
    model = make_model()
    return DeepSpeedTrainer(
        model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.1), callbacks=(), **options
    )


def test_clipping_by_value_is_refused_before_training() -> None:
    with pytest.raises(ValueError, match=r"gradient_clip_value.*norm only"):
        _deepspeed_trainer(zero_stage=2).train(
            make_regression_data(8), num_epochs=1, gradient_clip_value=1.0
        )


@pytest.mark.parametrize(
    ("config", "train_kwargs", "key"),
    [
        ({"gradient_accumulation_steps": 2}, {}, "gradient_accumulation_steps"),
        ({"train_micro_batch_size_per_gpu": 16}, {"per_device_batch_size": 4}, "train_micro"),
        ({"gradient_clipping": 1.0}, {}, "gradient_clipping"),  # no silent clipping at 1.0
        ({"gradient_clipping": 1.0}, {"gradient_clip_norm": 0.5}, "gradient_clipping"),
    ],
)
def test_a_config_value_that_contradicts_train_is_refused(
    config: dict[str, Any], train_kwargs: dict[str, Any], key: str
) -> None:
    with pytest.raises(ValueError, match=key):
        _deepspeed_trainer(deepspeed_config=config).train(
            make_regression_data(8), num_epochs=1, **train_kwargs
        )


def test_the_config_gets_the_trainer_settings_where_it_says_auto_or_nothing() -> None:
    config: dict[str, Any] = {"gradient_clipping": "auto", "zero_optimization": {"stage": 3}}
    settings = EngineSettings(
        micro_batch_size=4,
        accumulation_steps=3,
        clip_norm=None,
        clip_value=None,
        dataset_has_length=True,
    )
    reconcile_deepspeed_config(config, settings, num_processes=2)
    assert config["train_micro_batch_size_per_gpu"] == 4
    assert config["gradient_accumulation_steps"] == 3
    assert config["train_batch_size"] == 24  # from the real number of processes
    assert config["gradient_clipping"] == 0.0  # train() did not ask for clipping
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    reconcile_deepspeed_config(config, settings, num_processes=2)  # idempotent


def test_zero_stage_and_config_files_are_checked(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    assert _deepspeed_trainer(deepspeed_config=str(path)).deepspeed_config == {
        "zero_optimization": {"stage": 1}
    }
    with pytest.raises(ValueError, match="conflicts"):
        _deepspeed_trainer(deepspeed_config=str(path), zero_stage=2)
    with pytest.raises(ValueError, match="zero_stage must be"):
        _deepspeed_trainer(zero_stage=4)
    with pytest.raises(ValueError, match="Cannot read the DeepSpeed config"):
        _deepspeed_trainer(deepspeed_config=str(tmp_path / "missing.json"))


def test_accumulation_needs_a_dataset_with_a_length() -> None:
    class Stream(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter(make_regression_data(8))

    with pytest.raises(ValueError, match="dataset with a length"):
        _deepspeed_trainer().train(
            Stream(), num_epochs=1, max_num_train_steps=2, gradient_accumulation_steps=2
        )


def test_several_cpu_processes_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("the refusal is for machines without GPUs")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    with pytest.raises(RuntimeError, match="several CPU processes"):
        prepare_deepspeed_environment()


def test_the_everyday_trainer_under_an_accelerate_deepspeed_launch(
    tmp_path: pathlib.Path,
) -> None:
    # What `accelerate launch --use_deepspeed --zero_stage 2` sets: the everyday Trainer runs
    # on the engine unchanged and gets the same config reconciliation; training states of such
    # a run need DeepSpeedTrainer, and say so.
    launch = {
        "ACCELERATE_USE_DEEPSPEED": "true",
        "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
        "DS_ACCELERATOR": "cpu",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29561",
    }
    plain = _run(tmp_path, "plain", "--trainer", "plain", "--clip-norm", "1.0")
    run = _run(
        tmp_path,
        "launched",
        "--trainer",
        "everyday",
        "--clip-norm",
        "1.0",
        "--try-state",
        env_extra=launch,
    )
    assert run["engine"] == "DeepSpeedEngine"
    assert "DeepSpeedTrainer" in run["state_error"]
    _assert_same_run(run, plain)


def test_fsdp_on_a_machine_without_gpus_is_refused_not_replaced_by_ddp() -> None:
    if torch.cuda.is_available():
        pytest.skip("the refusal is for machines without GPUs")
    from pa_mixins import FSDPTrainer

    model = make_model()
    trainer = FSDPTrainer(
        model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.1), callbacks=()
    )
    with pytest.raises(RuntimeError, match="FSDP needs GPUs"):
        trainer.train(make_regression_data(8), num_epochs=1)
    # Accelerate marks the whole process as FSDP when given the plugin: a later trainer in the
    # same process must not inherit that.
    assert "ACCELERATE_USE_FSDP" not in os.environ
    plain = Trainer(model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.1), callbacks=())
    plain.train(make_regression_data(8), num_epochs=1)
    assert plain.num_updates == 1


@pytest.mark.multiprocess
def test_fsdp_on_two_cpu_processes_is_refused_on_every_process(tmp_path: pathlib.Path) -> None:
    # Measured: under this launch Accelerate gives MULTI_CPU and a DDP model for an FSDP plugin.
    if torch.cuda.is_available():
        pytest.skip("the refusal is for machines without GPUs")
    from tests.conftest import launch_env, torchrun

    script = pathlib.Path(REPO_ROOT) / "tests" / "scripts" / "fsdp_cpu.py"
    done = subprocess.run(
        [*torchrun(2), str(script), str(tmp_path)],
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert "FSDP needs GPUs" in message and "MULTI_CPU" in message, message
