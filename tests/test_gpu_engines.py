"""DeepSpeed and FSDP on a GPU (marked ``gpu``: skipped without CUDA; run by
benchmarks/gpu_checks.sh on a lent GPU machine, which installs a carried DeepSpeed wheel).
Each run is a fresh process, as in tests/test_deepspeed.py; FSDP runs are started by torchrun
with one process (Accelerate sets FSDP up only under a launcher)."""

from __future__ import annotations

import json
import pathlib
import subprocess
from typing import Any

import pytest
import torch
from torch import nn

from tests.conftest import REPO_ROOT, launch_env, torchrun
from tests.test_deepspeed import ACCUMULATION, _assert_same_run, _run

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_on_a_gpu_trains_resumes_and_exports(tmp_path: pathlib.Path, stage: int) -> None:
    pytest.importorskip("deepspeed")  # the GPU host gets it from a carried wheel
    common = ["--stage", str(stage), "--scheduler", *ACCUMULATION]
    plain = _run(tmp_path, "plain", "--trainer", "plain", "--scheduler", *ACCUMULATION)
    full = _run(tmp_path, "full", *common, "--export", "model.pt")
    assert full["engine"] == "DeepSpeedEngine"
    _assert_same_run(full, plain, atol=1e-4)  # GPU kernels: close, not bit-equal
    _run(tmp_path, "first", *common, "--save-at-update", "5", "--state-dir", "states")
    resumed = _run(tmp_path, "resumed", *common, "--resume-from", "states")
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], abs=1e-5)
    for name, weight in full["weights"].items():
        torch.testing.assert_close(
            torch.tensor(resumed["weights"][name]), torch.tensor(weight), atol=1e-5, rtol=0
        )
    checkpoint = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(checkpoint["model_state_dict"]) == set(plain["weights"])


def test_zero2_in_bf16_trains_close_to_fp32(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("deepspeed")
    config = json.dumps({"bf16": {"enabled": True}})
    fp32 = _run(tmp_path, "fp32", "--stage", "2", *ACCUMULATION)
    bf16 = _run(tmp_path, "bf16", "--stage", "2", "--config", config, *ACCUMULATION)
    assert bf16["train_loss"] == pytest.approx(fp32["train_loss"], rel=0.05)


def test_a_deepspeed_fp16_overflow_skips_the_update_and_its_scheduler_step(
    tmp_path: pathlib.Path,
) -> None:
    # A loss scale of 2**20 overflows fp16 gradients at first: DeepSpeed skips those steps
    # and halves the scale (hysteresis 1) until the steps go through. A skipped update still
    # fires on_optimizer_step_end (counted, as in pytorch-accelerated) but does not step the
    # scheduler: StepLR(step_size=2, gamma=0.5) has stepped once per update that was applied.
    pytest.importorskip("deepspeed")
    fp16 = {"enabled": True, "initial_scale_power": 20, "hysteresis": 1, "loss_scale_window": 100}
    config = json.dumps({"fp16": fp16})
    run = _run(tmp_path, "fp16", "--stage", "2", "--scheduler", "--epochs", "6", "--config", config)
    skipped = run["skipped"]
    assert any(skipped), "no step overflowed: the test needs a larger initial scale"
    assert not all(skipped)
    assert run["updates"] == list(range(1, run["num_updates"] + 1))
    applied = 0
    for lr, was_skipped in zip(run["lrs"], skipped, strict=True):
        applied += not was_skipped
        assert lr == pytest.approx(0.02 * 0.5 ** (applied // 2))


# -- FSDP2 (FSDPTrainer) on one GPU ------------------------------------------------------------

FSDP_SCRIPT = pathlib.Path(REPO_ROOT) / "tests" / "scripts" / "fsdp_run.py"
# DeepSpeed is left out of the FSDP runs (see fsdp_run.py's without_deepspeed).
FSDP_ARGS = ["--without-deepspeed", "--scheduler", *ACCUMULATION]


def _fsdp_run(tmp_path: pathlib.Path, name: str, *args: str) -> dict[str, Any]:
    out = tmp_path / f"{name}.json"
    done = subprocess.run(
        [*torchrun(1), str(FSDP_SCRIPT), str(out), *FSDP_ARGS, *args],
        env=launch_env(use_cpu=False),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _assert_resumed(
    tmp_path: pathlib.Path, full: dict[str, Any], resumed: dict[str, Any], atol: float
) -> None:
    manifest = json.loads((tmp_path / "states" / "pa_state.json").read_text())
    done = manifest["position"]["num_updates"]
    assert any(name.startswith("engine.1/") for name in manifest["files"])
    assert resumed["updates"] == full["updates"][done:]
    assert resumed["lrs"] == pytest.approx(full["lrs"][done:])
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], abs=atol)
    for name, weight in full["weights"].items():
        torch.testing.assert_close(
            torch.tensor(resumed["weights"][name]), torch.tensor(weight), atol=atol, rtol=0
        )


def test_fsdp2_on_a_gpu_trains_resumes_and_exports(tmp_path: pathlib.Path) -> None:
    # 44 samples, batch 2, accumulation 3: 22 micro-batches, 8 updates per epoch. The state is
    # requested inside the group after update 5 and written at the group's end.
    full = _fsdp_run(
        tmp_path,
        "full",
        "--plain-first",
        *("--save-at-update", "5", "--state-dir", "states", "--export", "model.pt"),
    )
    assert full["distributed_type"] == "DistributedType.FSDP"
    assert full["model"].startswith("FSDP")  # fully_shard's class
    assert full["optimizer"] == "AcceleratedOptimizer"
    plain = full["plain"]
    assert full["updates"] == plain["updates"] == list(range(1, 25))
    _assert_same_run(full, plain, atol=1e-4)  # GPU kernels: close, not bit-equal

    resumed = _fsdp_run(tmp_path, "resumed", "--resume-from", "states")
    _assert_resumed(tmp_path, full, resumed, atol=1e-5)

    checkpoint = torch.load(tmp_path / "model.pt", weights_only=True)
    assert "optimizer_state_dict" not in checkpoint  # it lives in training states
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))
    model.load_state_dict(checkpoint["model_state_dict"])  # strict: full-size CPU weights
    for name, weight in model.state_dict().items():
        torch.testing.assert_close(weight, torch.tensor(full["weights"][name]))


def test_fsdp2_in_bf16_resumes_and_trains_close_to_fp32(tmp_path: pathlib.Path) -> None:
    bf16 = ["--mixed-precision", "bf16"]
    full = _fsdp_run(
        tmp_path, "full", "--plain-first", *bf16, "--save-at-update", "5", "--state-dir", "states"
    )
    assert full["train_loss"] == pytest.approx(full["plain"]["train_loss"], rel=0.05)
    resumed = _fsdp_run(tmp_path, "resumed", *bf16, "--resume-from", "states")
    _assert_resumed(tmp_path, full, resumed, atol=1e-4)
