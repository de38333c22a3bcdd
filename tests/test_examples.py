"""The examples run as a newcomer runs them (fewer epochs)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

EXAMPLES = pathlib.Path(REPO_ROOT) / "examples"


def _run(script: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_digits_example_trains_and_reports_test_accuracy() -> None:
    pytest.importorskip("sklearn")
    out = _run("train_digits.py", "--epochs", "3")
    assert out.count("train_loss_epoch") == 3 and "evaluation_loss" in out
    accuracy = float(out.rsplit("Test accuracy:", 1)[1].split()[0])
    assert accuracy > 0.8


def test_custom_trainers_example_runs() -> None:
    out = _run("custom_trainers.py")
    assert "AccumulatingTrainer: eval loss" in out and "L2Trainer: eval loss" in out
    assert "update 10:" in out
