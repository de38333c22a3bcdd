"""Issue 3: real 2-process CPU (gloo) runs started by torchrun."""

from __future__ import annotations

import json
import pathlib
import subprocess

import pytest

from tests.conftest import REPO_ROOT, launch_env, launcher

SCRIPT = pathlib.Path(REPO_ROOT) / "tests" / "scripts" / "train_tiny.py"

pytestmark = pytest.mark.multiprocess


def _run(
    out_dir: pathlib.Path, processes: int, *args: str, use_cpu: bool = True
) -> subprocess.CompletedProcess[str]:
    command = [*launcher(processes), str(SCRIPT), str(out_dir), *args]
    env = launch_env(use_cpu=use_cpu)
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=240, cwd=REPO_ROOT
    )


def _results(out_dir: pathlib.Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(out_dir.glob("rank*.json"))]


def test_two_processes_agree_and_match_one_process_with_twice_the_batch(
    tmp_path: pathlib.Path,
) -> None:
    two = _run(tmp_path / "two", 2, "--batch-size", "4", "--accumulation", "2", "--epochs", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    one = _run(tmp_path / "one", 1, "--batch-size", "8", "--accumulation", "2", "--epochs", "2")
    assert one.returncode == 0, one.stderr[-3000:]
    rank0, rank1 = _results(tmp_path / "two")
    (single,) = _results(tmp_path / "one")

    assert rank0["num_processes"] == rank1["num_processes"] == 2
    assert rank0["weights"] == rank1["weights"]  # replicas stay identical
    assert rank0["history"] == rank1["history"]  # losses are reduced over processes
    # 64 samples / (2 processes x batch 4) = 8 micro-batches per process, 2 per update.
    assert rank0["updates_per_epoch"] == single["updates_per_epoch"] == 4
    assert rank0["num_updates"] == 8
    # The schedule sized with placeholders ends exactly at the end of training.
    assert rank0["scheduler_steps"] == rank0["scheduler_total"] == 8
    assert rank0["final_lr"] == pytest.approx(0.0, abs=1e-12)
    # Same data order, batch 2b on one process = batch b on two processes.
    for w2, w1 in zip(rank0["weights"], single["weights"]):
        assert w2 == pytest.approx(w1, abs=1e-5)
    for name in ("train_loss_epoch", "eval_loss_epoch"):
        assert rank0["history"][name] == pytest.approx(single["history"][name], rel=1e-5)


def test_max_num_train_steps_counts_the_same_updates_on_one_and_two_processes(
    tmp_path: pathlib.Path,
) -> None:
    two = _run(tmp_path / "two", 2, "--batch-size", "4", "--max-steps", "5", "--epochs", "10")
    assert two.returncode == 0, two.stderr[-3000:]
    one = _run(tmp_path / "one", 1, "--batch-size", "8", "--max-steps", "5", "--epochs", "10")
    assert one.returncode == 0, one.stderr[-3000:]
    for result in (*_results(tmp_path / "two"), *_results(tmp_path / "one")):
        assert result["num_updates"] == 5
        assert result["num_epochs"] == 1  # 8 updates per epoch: 5 fit in the first
        assert result["scheduler_steps"] == 5


def test_a_launch_that_lost_its_processes_fails_with_a_clear_message(
    tmp_path: pathlib.Path,
) -> None:
    # Without ACCELERATE_USE_CPU, a CPU-only torchrun launch leaves every process at rank 0 of 1.
    broken = _run(tmp_path / "broken", 2, "--epochs", "1", use_cpu=False)
    assert broken.returncode != 0
    assert "WORLD_SIZE=2" in broken.stderr and "ACCELERATE_USE_CPU=1" in broken.stderr
    assert not list((tmp_path / "broken").glob("rank*.json"))
