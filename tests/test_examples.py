"""The examples run as a newcomer runs them, in a fresh process (fewer epochs, smaller data).

Each test checks what the example claims to show, not only that it exits cleanly.
"""

from __future__ import annotations

import csv
import pathlib
import re
import signal
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT, launch_env, torchrun

EXAMPLES = pathlib.Path(REPO_ROOT) / "examples"


def _env() -> dict[str, str]:
    # this repository's package, one thread, none of this process's Accelerate settings
    return launch_env(use_cpu=False, PYTHONUNBUFFERED="1")


def _run(script: str, *args: str, prefix: tuple[str, ...] = (sys.executable,)) -> str:
    result = subprocess.run(
        [*prefix, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env() if prefix == (sys.executable,) else launch_env(),
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def _values(out: str, metric: str) -> list[float]:
    """The values LogMetricsCallback printed for ``metric``, in order."""
    return [float(v) for v in re.findall(rf"^{metric}: (\S+)$", out, flags=re.MULTILINE)]


def _number_after(out: str, text: str) -> float:
    return float(re.findall(rf"{re.escape(text)}\s*(-?[\d.]+)", out)[-1])


def test_digits_example_trains_and_reports_test_accuracy() -> None:
    out = _run("train_digits.py", "--epochs", "3")
    assert out.count("train_loss_epoch") == 3 and "evaluation_loss" in out
    assert _number_after(out, "Test accuracy:") > 0.8


def test_custom_trainers_example_runs() -> None:
    out = _run("custom_trainers.py")
    assert "AccumulatingTrainer: eval loss" in out and "L2Trainer: eval loss" in out
    assert "update 10:" in out


def test_minimal_training_learns_the_line() -> None:
    out = _run("minimal_training.py", "--epochs", "5")
    weight, bias = (float(v) for v in re.findall(r"Learned y = (\S+)x (\S+) ", out)[0])
    assert weight == pytest.approx(3, abs=0.05) and bias == pytest.approx(-1, abs=0.05)
    assert len(_values(out, "eval_loss_epoch")) == 5


def test_metrics_in_callback_records_every_evaluation() -> None:
    out = _run("metrics_in_callback.py", "--epochs", "2")
    # two epochs' evaluations, then evaluate() on the test set
    for metric in ("accuracy", "precision", "recall"):
        values = _values(out, metric)
        assert len(values) == 3 and all(0 <= v <= 1 for v in values), (metric, values)
    assert _number_after(out, "Test accuracy:") == pytest.approx(
        _values(out, "accuracy")[-1], abs=1e-3
    )
    assert _number_after(out, "Test accuracy:") > 0.8


def test_metrics_in_loop_records_every_evaluation() -> None:
    out = _run("metrics_in_loop.py", "--epochs", "2")
    assert len(_values(out, "accuracy")) == len(_values(out, "f1")) == 3
    assert _number_after(out, "Test accuracy:") > 0.8
    assert _number_after(out, "macro F1:") > 0.8


def test_custom_callback_event_reaches_the_callback_that_handles_it() -> None:
    out = _run("custom_callback_event.py", "--epochs", "2")
    norms = _values(out, "train_max_grad_norm")
    assert len(norms) == 2 and all(n > 0 for n in norms)
    summary = out.split("Largest gradient norm per epoch:")[1].split()
    assert [float(n.rstrip(",")) for n in summary] == pytest.approx(norms, abs=1e-3)


def test_transfer_learning_trains_only_the_head_then_everything() -> None:
    out = _run(
        "transfer_learning.py",
        "--pretrain-epochs", "3", "--head-epochs", "2", "--finetune-epochs", "2",
    )  # fmt: skip
    trainable, total = (int(v) for v in re.findall(r"Stage 1: training (\d+) of (\d+)", out)[0])
    # the new head (32 * 5 + 5) and the batch norms (left trainable by default: 2 * (16 + 32))
    assert trainable == 165 + 96 and total > 5 * trainable
    assert "Frozen convolution unchanged: True" in out
    # stage 2 continues the run history: 2 + 2 epochs of the new task
    assert len(_values(out, "eval_loss_epoch")) == 4 and "Starting epoch 4" in out
    assert _number_after(out, "Accuracy after stage 2:") > 0.5


def test_progressive_resizing_trains_at_each_size_in_one_run_history() -> None:
    out = _run(
        "progressive_resizing.py",
        "--sizes", "8", "16", "--epochs-per-size", "2", "1", "--num-images", "300",
    )  # fmt: skip
    assert "Training with 8x8 images" in out and "Training with 16x16 images" in out
    assert len(_values(out, "train_loss_epoch")) == 3 and "Starting epoch 3" in out
    assert "Trained 3 epochs" in out


def test_hf_transformer_example_learns_the_made_up_reviews() -> None:
    out = _run("hf_transformer.py", "--epochs", "3", "--num-reviews", "1000")
    assert len(_values(out, "accuracy")) == 3
    assert _number_after(out, "Eval accuracy:") > 0.9


def test_ema_example_evaluates_saves_and_reloads_the_average(tmp_path: pathlib.Path) -> None:
    save_path = tmp_path / "ema.pt"
    out = _run("ema.py", "--epochs", "3", "--save-path", str(save_path))
    ema_losses = _values(out, "ema_model_eval_loss_epoch")
    model_losses = _values(out, "eval_loss_epoch")
    assert len(ema_losses) == len(model_losses) == 3
    assert ema_losses[-1] < model_losses[-1]  # what the example is there to show
    assert save_path.exists()
    # the reloaded file is the best average of the run
    assert _values(out, "evaluation_loss") == [pytest.approx(min(ema_losses), rel=1e-5)]


@pytest.mark.multiprocess
def test_two_processes_example_under_torchrun() -> None:
    out = _run("two_processes.py", "--epochs", "2", prefix=tuple(torchrun(2)))
    # 1,200 samples, 32 per process and update: 19 updates per process and epoch
    assert "[process 0 of 2] 19 updates per epoch" in out
    assert "[process 1 of 2] 19 updates per epoch" in out
    finals = re.findall(r"\[process (\d)\] final accuracy (\S+)", out)
    assert sorted(rank for rank, _ in finals) == ["0", "1"]
    assert finals[0][1] == finals[1][1]  # every process has every prediction
    assert out.count("Test accuracy:") == 1 and "(297 predictions)" in out
    assert _number_after(out, "Test accuracy:") > 0.7


def _model_weights(path: pathlib.Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model_state_dict"]


def test_resume_example_killed_mid_run_ends_like_an_uninterrupted_run(
    tmp_path: pathlib.Path,
) -> None:
    options = ("--epochs", "3", "--save-every-n-steps", "20")
    uninterrupted = tmp_path / "uninterrupted"
    _run("resume.py", "--out-dir", str(uninterrupted), *options)

    # The same command, killed with SIGKILL (no chance to save anything) as soon as the first
    # training state is complete: 20 updates out of 3 x 128.
    killed = tmp_path / "killed"
    command = [sys.executable, str(EXAMPLES / "resume.py"), "--out-dir", str(killed), *options]
    with open(tmp_path / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=_env(), cwd=REPO_ROOT
        )
        assert process.stdout is not None
        printed = []
        for line in process.stdout:
            printed.append(line)
            if line.startswith("Saved a training state"):
                process.send_signal(signal.SIGKILL)
                break
        process.stdout.close()
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(printed)
    assert "step_20" in printed[-1]
    assert not (killed / "model.pt").exists()

    out = _run("resume.py", "--out-dir", str(killed), *options)  # the same command again
    assert "Resuming from" in out and "Starting epoch 1" in out  # the killed epoch goes on

    resumed, expected = (
        _model_weights(killed / "model.pt"),
        _model_weights(uninterrupted / "model.pt"),
    )
    assert resumed.keys() == expected.keys()
    for name in expected:
        assert torch.equal(resumed[name], expected[name]), name


def test_deepspeed_example_trains_on_zero3_and_exports_full_weights() -> None:
    out = _run("deepspeed_training.py", "--zero-stage", "3", "--epochs", "2")
    assert "ZeRO-3: eval loss" in out and "exported weights loaded" in out
    assert len(_values(out, "eval_loss_epoch")) == 2


def test_experiment_tracking_example_writes_a_csv_run(tmp_path: pathlib.Path) -> None:
    out = _run("experiment_tracking.py", "--epochs", "2", "--project-dir", str(tmp_path / "runs"))
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name in out
    with (run / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [row["step"] for row in rows] == ["1", "2"]
    assert float(rows[-1]["eval_loss_epoch"]) == pytest.approx(
        _values(out, "eval_loss_epoch")[-1], rel=1e-3
    )
