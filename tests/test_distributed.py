"""Issue 6: distributed training that holds (real gloo runs on CPU, one test per behaviour).

Every launch has a timeout, so that a hang fails the test instead of blocking CI.
"""

from __future__ import annotations

import json
import pathlib
import socket
import subprocess
import sys
import time
from typing import Any

import pytest
import torch
from torch import nn

from pa_mixins import MinimalTrainer, Trainer
from pa_mixins.callbacks import ConvertSyncBatchNormCallback
from tests.conftest import REPO_ROOT, launch_env, make_regression_data, torchrun

SCRIPTS = pathlib.Path(REPO_ROOT) / "tests" / "scripts"
LAUNCH_TIMEOUT_S = 90


def _run(command: list[str], env: dict[str, str] | None = None, timeout: float = LAUNCH_TIMEOUT_S):
    return subprocess.run(
        command,
        env=env or launch_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
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
    done = _run([*torchrun(2), str(SCRIPTS / "dist_eval.py"), str(tmp_path)])
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
    done = _run([*torchrun(2), str(SCRIPTS / "dist_stop.py"), str(tmp_path)])
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
    # Process 1's loss is NaN at micro-batch 2; on the CPU the check is immediate, so every
    # process stops before update 3, and TerminateOnNaNCallback.triggered is set on both.
    assert rank0["nan"]["num_updates"] == 2
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
    # lr=0: no improvement; patience 2 stops both processes after the third epoch.
    assert len(rank0["early_stopping"]["metrics"]["eval_loss_epoch"]) == 3
    assert "no improvement" in rank0["early_stopping"]["error"]


# ----------------------------------------------------------------------------------------------
# A process that dies or hangs
# ----------------------------------------------------------------------------------------------


@pytest.mark.multiprocess
@pytest.mark.parametrize("mode", ["kill", "hang"])
def test_a_dead_or_hung_process_ends_the_run_with_an_error(
    tmp_path: pathlib.Path, mode: str
) -> None:
    started = time.monotonic()
    done = _run([*torchrun(2), str(SCRIPTS / "dist_dead.py"), str(tmp_path), mode, "3"])
    elapsed = time.monotonic() - started
    assert done.returncode != 0
    error = (tmp_path / "rank0_error.txt").read_text()
    seconds = float(error.split()[1].rstrip("s"))
    if mode == "kill":
        # The peer's socket closes: process 0 fails at once.
        assert "Connection closed by peer" in error or "Connection reset" in error, error
        assert seconds < 3
    else:
        # Process 1 stops answering: process 0 fails after process_group_timeout (3 s). gloo
        # words it "Timed out ..." or, when the timed-out collective was started without
        # waiting (the stop agreement overlapping the backward pass), "Application timeout
        # caused pair closure".
        assert "Timed out" in error or "Application timeout" in error, error
        assert 2.5 < seconds < 10
    assert elapsed < 60


def test_process_group_timeout_reaches_the_accelerator_and_is_checked() -> None:
    from datetime import timedelta

    from accelerate.utils import InitProcessGroupKwargs

    model = nn.Linear(2, 1)
    (handler,) = Trainer(model).get_accelerator_kwargs()["kwargs_handlers"]
    assert isinstance(handler, InitProcessGroupKwargs)
    assert handler.timeout == timedelta(seconds=1800)
    (handler,) = Trainer(model, process_group_timeout=5).get_accelerator_kwargs()["kwargs_handlers"]
    assert handler.timeout == timedelta(seconds=5)
    mine = InitProcessGroupKwargs(timeout=timedelta(seconds=7))
    trainer = Trainer(model, accelerator_kwargs={"kwargs_handlers": [mine]})
    assert trainer.get_accelerator_kwargs()["kwargs_handlers"] == [mine]
    with pytest.raises(ValueError, match="positive"):
        Trainer(model, process_group_timeout=0)
    with pytest.raises(TypeError, match="seconds"):
        Trainer(model, process_group_timeout="10")


# ----------------------------------------------------------------------------------------------
# Two machines (two launcher invocations on this one)
# ----------------------------------------------------------------------------------------------


@pytest.mark.multiprocess
def test_two_nodes_train_like_one_node_with_two_processes(tmp_path: pathlib.Path) -> None:
    script = str(SCRIPTS.parent / "scripts" / "train_tiny.py")
    args = ["--batch-size", "4", "--epochs", "2", "--samples", "32"]
    port = _free_port()
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                f"--node_rank={node}",
                "--nproc_per_node=1",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                script,
                str(tmp_path / "nodes"),
                *args,
            ],
            env=launch_env(),
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    try:
        outputs = [node.communicate(timeout=LAUNCH_TIMEOUT_S) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    for node, (_, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr[-3000:]
    one_node = _run([*torchrun(2), script, str(tmp_path / "one_node"), *args])
    assert one_node.returncode == 0, one_node.stderr[-3000:]

    rank0, rank1 = _results(tmp_path / "nodes")
    reference = _results(tmp_path / "one_node")[0]
    assert rank0["rank"] == 0 and rank1["rank"] == 1
    assert rank0["num_processes"] == rank1["num_processes"] == 2
    assert rank0["weights"] == rank1["weights"]
    assert rank0["num_updates"] == reference["num_updates"] == 8
    for got, expected in zip(rank0["weights"], reference["weights"]):
        assert got == pytest.approx(expected, abs=1e-6)
    for name, values in reference["history"].items():
        assert rank0["history"][name] == pytest.approx(values, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# Launchers, process roles, utilities
# ----------------------------------------------------------------------------------------------


def _accelerate_launch(*args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", *args]


@pytest.mark.multiprocess
def test_accelerate_launch_roles_decorators_device_and_print(tmp_path: pathlib.Path) -> None:
    command = _accelerate_launch(
        "--multi_gpu", "--num_processes", "2", str(SCRIPTS / "dist_roles.py"), str(tmp_path)
    )
    done = _run(command)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = _results(tmp_path)
    for rank, result in enumerate((rank0, rank1)):
        assert result["env_rank"] == result["process_index"] == rank
        assert result["num_processes"] == result["trained_num_processes"] == 2
        assert result["device"].startswith("cpu")
        # Called before any Accelerator, a decorator explains instead of pinning "rank 0 of 1".
        assert "create the trainer" in result["early_decorator"]
    assert (rank0["is_world_process_zero"], rank1["is_world_process_zero"]) == (True, False)
    assert (rank0["is_local_process_zero"], rank1["is_local_process_zero"]) == (True, False)
    assert (rank0["world_zero_only"], rank1["world_zero_only"]) == ("ran", None)
    assert (rank0["local_zero_only"], rank1["local_zero_only"]) == (0, None)
    # local_process_zero_first: process 0 ran first, process 1 found its file.
    assert (rank0["found_first_process_file"], rank1["found_first_process_file"]) == (False, True)
    assert done.stdout.count("PRINTED-ONCE-PER-MACHINE") == 1
    assert rank0["weights"] == rank1["weights"]
    # SyncBatchNorm cannot train on CPU: the layers stay BatchNorm and a warning says so.
    for result in (rank0, rank1):
        assert "BatchNorm1d" in result["bn_types"] and "SyncBatchNorm" not in result["bn_types"]
        assert len(result["sync_bn_warnings"]) == 1


@pytest.mark.multiprocess
def test_accelerate_launch_without_the_cpu_flag_fails_with_a_clear_message(
    tmp_path: pathlib.Path,
) -> None:
    # On a host without GPUs, `accelerate launch --multi_gpu` alone behaves like plain
    # torchrun (every process alone as rank 0); `--cpu --num_processes 2` starts ONE process,
    # which nothing can tell from a single-process run (documented in docs/scale_out.md).
    command = _accelerate_launch(
        "--multi_gpu", "--num_processes", "2", str(SCRIPTS / "train_tiny.py"), str(tmp_path)
    )
    broken = _run(command, env=launch_env(use_cpu=False))
    assert broken.returncode != 0
    assert "WORLD_SIZE=2" in broken.stderr and "ACCELERATE_USE_CPU=1" in broken.stderr
    assert not list(tmp_path.glob("rank*.json"))


@pytest.mark.multiprocess
def test_notebook_launcher_trains_on_two_cpu_processes(tmp_path: pathlib.Path) -> None:
    port = str(_free_port())
    done = _run([sys.executable, str(SCRIPTS / "dist_notebook.py"), str(tmp_path), port])
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = _results(tmp_path)
    assert rank0["num_processes"] == rank1["num_processes"] == 2
    assert rank0["num_updates"] == 4  # 32 samples / (2 processes x batch 4)
    assert rank0["weights"] == rank1["weights"]


def test_convert_sync_batch_norm_does_nothing_on_one_process() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    trainer = MinimalTrainer(
        model,
        nn.MSELoss(),
        torch.optim.SGD(model.parameters(), lr=0.05),
        callbacks=(ConvertSyncBatchNormCallback,),
    )
    trainer.train(make_regression_data(16), num_epochs=1, per_device_batch_size=4)
    assert isinstance(trainer.model[1], nn.BatchNorm1d)
    assert not isinstance(trainer.model[1], nn.SyncBatchNorm)


@pytest.mark.multiprocess
def test_the_stop_flag_rides_in_ddps_gradient_all_reduce(tmp_path: pathlib.Path) -> None:
    # The communication hook of the stop agreement on CPU processes: bucket 0 carries the
    # flag, the other buckets go through torch's allreduce_hook; the gradients are those of
    # DDP's own all-reduce, bit for bit, and every process gets the number of stops.
    done = _run([*torchrun(2), str(SCRIPTS / "dist_stop_flag.py"), str(tmp_path)])
    assert done.returncode == 0, done.stderr[-3000:]
    results = _results(tmp_path)
    assert len(results) == 2
    for result in results:
        assert 0 in result["buckets"] and max(result["buckets"]) >= 1  # both kinds of bucket
        assert result["difference"] == 0.0
        assert result["sums"] == [0.0, 1.0]
