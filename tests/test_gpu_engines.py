"""DeepSpeed and FSDP on a GPU (marked ``gpu``: skipped without CUDA; run by
benchmarks/gpu_checks.sh on a lent GPU machine, which installs a carried DeepSpeed wheel).
Each run is a fresh process, as in tests/test_deepspeed.py."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

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
