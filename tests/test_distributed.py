"""Issue 6: distributed training that holds (real gloo runs on CPU, one test per behaviour).

Every launch has a timeout, so that a hang fails the test instead of blocking CI.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import pytest
import torch
from torch import nn

from pa_mixins import MinimalTrainer, Trainer
from tests.conftest import REPO_ROOT, make_regression_data

SCRIPTS = pathlib.Path(REPO_ROOT) / "tests" / "scripts"
LAUNCH_TIMEOUT_S = 90


def _env(use_cpu: bool = True, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "PT_ACC"))}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _torchrun(processes: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        *extra,
    ]


def _run(command: list[str], env: dict[str, str] | None = None, timeout: float = LAUNCH_TIMEOUT_S):
    return subprocess.run(
        command, env=env or _env(), capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT
    )


def _results(out_dir: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(out_dir.glob("rank*.json"))]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------------------------
# Exact evaluation, predict, and which samples each process trains on
# ----------------------------------------------------------------------------------------------


@pytest.mark.multiprocess
def test_evaluation_and_predict_on_two_processes_equal_one_process(tmp_path: pathlib.Path) -> None:
    done = _run([*_torchrun(2), str(SCRIPTS / "dist_eval.py"), str(tmp_path)])
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = _results(tmp_path)
    assert rank0["num_processes"] == rank1["num_processes"] == 2

    # Replicas end equal, buffers (BatchNorm running statistics) included.
    assert rank0["state"] == rank1["state"]

    # Training, 9 samples, batch 2, 2 processes: each epoch every sample is seen, the ranks get
    # 3 batches each, and the 12 - 9 = 3 padding samples are the first 3 of the epoch's order.
    for epoch in range(2):
        seen0, seen1 = rank0["train_samples"][epoch], rank1["train_samples"][epoch]
        assert len(seen0) == len(seen1) == 6
        order = [s for i in range(0, 6, 2) for s in (*seen0[i : i + 2], *seen1[i : i + 2])]
        assert sorted(order[:9]) == list(range(9))
        assert order[9:] == order[:3]
    assert rank0["train_samples"][0] != rank0["train_samples"][1]  # reshuffled each epoch

    # Evaluation: no sample twice, none missing, a process may have fewer batches or none.
    for run in (rank0["evaluate_samples"], rank0["eval_samples_in_training"]):
        assert run[0] == [0, 1, 4, 5, 8]
    assert rank1["evaluate_samples"][0] == [2, 3, 6, 7]
    assert rank0["evaluate_samples"][1] == [0] and rank1["evaluate_samples"][1] == []

    for rank in (rank0, rank1):
        # The loss equals one process evaluating the whole set with the final weights.
        assert rank["evaluation_loss"] == pytest.approx(rank["reference_loss"], rel=1e-6)
        assert rank["eval_loss_epoch"][-1] == pytest.approx(rank["reference_loss"], rel=1e-6)
        assert rank["evaluation_loss_one"] == pytest.approx(rank["reference_loss_one"], rel=1e-6)
        # predict(): every output, in dataset order, on every process.
        assert rank["predict"] == pytest.approx(rank["reference_outputs"], abs=1e-6)
        assert rank["predict_no_optimizer"] == pytest.approx(rank["reference_outputs"], abs=1e-6)
        assert rank["predict_one"] == pytest.approx(rank["reference_one"], abs=1e-6)


def test_predict_on_one_process_returns_outputs_in_dataset_order() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    model.train()
    model(torch.randn(16, 4))  # non-trivial running statistics
    data = make_regression_data(11)
    trainer = MinimalTrainer(model, callbacks=())
    predictions = trainer.predict(data, per_device_batch_size=4)
    model.eval()
    with torch.no_grad():
        expected = model(data.tensors[0])
    torch.testing.assert_close(predictions, expected)
    assert trainer.model is model and not model.training


def test_predict_keeps_dict_outputs_and_refuses_a_sampler() -> None:
    class DictModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            out = self.linear(x)
            return {"logits": out, "score": out.sum(dim=1)}

    model = DictModel()
    data = make_regression_data(7)
    trainer = Trainer(model, callbacks=())
    predictions = trainer.predict(data, per_device_batch_size=3)
    assert set(predictions) == {"logits", "score"}
    assert predictions["logits"].shape == (7, 2) and predictions["score"].shape == (7,)
    with torch.no_grad():
        torch.testing.assert_close(predictions["logits"], model.linear(data.tensors[0]))
    with pytest.raises(ValueError, match="dataset order"):
        trainer.predict(data, dataloader_kwargs={"shuffle": True})
    with pytest.raises(ValueError, match="empty"):
        trainer.predict(torch.utils.data.TensorDataset(torch.zeros(0, 4)))


# ----------------------------------------------------------------------------------------------
# Decisions taken together
# ----------------------------------------------------------------------------------------------


@pytest.mark.multiprocess
def test_a_stop_on_one_process_stops_every_process_at_the_same_step(tmp_path: pathlib.Path) -> None:
    done = _run([*_torchrun(2), str(SCRIPTS / "dist_stop.py"), str(tmp_path)])
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = _results(tmp_path)
    assert set(rank0) == set(rank1)
    for name in rank0:
        a, b = rank0[name], rank1[name]
        assert a["num_updates"] == b["num_updates"], name
        assert a["epochs_completed"] == b["epochs_completed"], name
        assert a["metrics"] == b["metrics"], name
        assert a["weights"] == b["weights"], name
        assert a["error"] == b["error"], name  # the same error, raised on every process

    # Raised before the backward pass of micro-batch 3 on process 1: as on one process,
    # steps 0-2 were applied and step 3's update was not.
    assert rank0["step_end"]["num_updates"] == 3
    assert rank0["step_end"]["error_process"] == 1 and rank1["step_end"]["error_process"] is None
    assert rank0["step_end"]["metrics"] == {}
    # Raised after update 5 on process 0.
    assert rank1["optimizer_step_end"]["num_updates"] == 5
    assert rank1["optimizer_step_end"]["error_process"] == 0
    # Process 1's loss is NaN at micro-batch 2; the check one step later stops every process
    # before update 4, and TerminateOnNaNCallback.triggered is set on both.
    assert rank0["nan"]["num_updates"] == 3
    assert rank0["nan"]["nan_triggered"] == rank1["nan"]["nan_triggered"] == [True]
    assert "non-finite" in rank0["nan"]["error"]
    # Raised at the end of epoch 1's training part on process 1: no evaluation of epoch 1.
    assert rank0["train_epoch_end"]["num_updates"] == 16
    assert len(rank0["train_epoch_end"]["metrics"]["train_loss_epoch"]) == 2
    assert len(rank0["train_epoch_end"]["metrics"]["eval_loss_epoch"]) == 1
    # Raised in epoch 0's evaluation on process 0 (which has more batches than process 1).
    assert rank1["eval_step_end"]["num_updates"] == 8
    assert "eval_loss_epoch" not in rank1["eval_step_end"]["metrics"]
    # SIGTERM on process 1 only: both stop at the same safe point and exit with 143.
    assert rank0["sigterm"]["exit_code"] == rank1["sigterm"]["exit_code"] == 143
    assert rank0["sigterm"]["num_updates"] < 24
    if "early_stopping" not in rank0:
        pytest.skip("EarlyStoppingCallback does not exist yet")
    # lr=0: no improvement; patience 2 stops both processes after the third epoch.
    assert len(rank0["early_stopping"]["metrics"]["eval_loss_epoch"]) == 3
    assert "no improvement" in rank0["early_stopping"]["error"]
