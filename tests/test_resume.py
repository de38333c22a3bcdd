"""Exact resume, proved in fresh processes: a run saved (then crashed, killed or stopped) and
resumed ends with the weights and run history of the run never interrupted.

Every run uses shuffling, an eval set, dropout, Adam, a scheduler from placeholders and
gradient accumulation (tests/scripts/checkpoint_run.py).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from pa_mixins.mixins.checkpointing import list_training_states
from tests.conftest import REPO_ROOT, launch_env, launcher

SCRIPT = os.path.join(REPO_ROOT, "tests", "scripts", "checkpoint_run.py")


def run_script(
    *args: str, processes: int = 1, timeout: int = 120
) -> subprocess.CompletedProcess[str]:
    command = [*launcher(processes), SCRIPT, *args]
    env = launch_env()
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def completed(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def assert_same_run(resumed: dict, reference: dict, atol: float = 0.0) -> None:
    assert resumed["weights"].keys() == reference["weights"].keys()
    for name, value in reference["weights"].items():
        if atol == 0.0:
            assert torch.equal(resumed["weights"][name], value), name
        else:
            torch.testing.assert_close(resumed["weights"][name], value, atol=atol, rtol=0)
    if atol == 0.0:
        assert resumed["history"] == reference["history"]
    else:
        assert resumed["history"]["current_epoch"] == reference["history"]["current_epoch"]
        for name, values in reference["history"]["metrics"].items():
            assert resumed["history"]["metrics"][name] == pytest.approx(values, abs=atol)


MOMENTS = [
    "epoch:1",  # an epoch end
    "update:6",  # an update in mid-epoch (epoch 2, after micro-batch 5)
    "step:2:4",  # inside an accumulation group (epoch 2, micro-batches 3 and 4 done)
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The uninterrupted run; it also saves a state at each of the MOMENTS (saving changes
    nothing in the run)."""
    folder = tmp_path_factory.mktemp("reference")
    out = folder / "full.pt"
    completed(
        run_script(str(out), "--state-dir", str(folder / "states"), "--save-at", ",".join(MOMENTS))
    )
    return {**load(out), "states": folder / "states"}


# 40 samples, batch 4: 10 micro-batches per epoch, updates after micro-batches 2, 5, 8 and 9.
@pytest.mark.parametrize("moment", MOMENTS)
def test_resume_in_a_fresh_process_gives_the_uninterrupted_run(
    tmp_path: Path, reference: dict, moment: str
) -> None:
    state = reference["states"] / moment.replace(":", "_")
    out = tmp_path / "resumed.pt"
    completed(run_script(str(out), "--state-dir", str(state), "--resume", "--model-seed", "99"))
    assert_same_run(load(out), reference)


def test_crash_right_after_a_save_then_resume(tmp_path: Path, reference: dict) -> None:
    state = tmp_path / "state"
    crashed = run_script(
        str(tmp_path / "x.pt"),
        "--state-dir",
        str(state),
        "--save-at",
        "step:1:7",
        "--crash-after-save",
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert not (tmp_path / "x.pt").exists()
    out = tmp_path / "resumed.pt"
    completed(run_script(str(out), "--state-dir", str(state), "--resume"))
    assert_same_run(load(out), reference)


def test_killed_at_random_moments_then_resumed_gives_the_uninterrupted_run(
    tmp_path: Path, reference: dict
) -> None:
    rng = random.Random()
    # 30 micro-batches in groups of 3 per epoch (3, 3, 3, 1): 12 updates, a state every 2.
    kill_at_step = rng.randint(7, 20)  # after the first state (update 2 = micro-batch 6)
    # In the middle of a state's files: the resumed run still writes at least two states
    # (updates 10 and 12) of at least two files each. (Up to 28 and 6 before: a kill at
    # micro-batch 28 left fewer than 6 writes, and the second run then finished.)
    kill_in_write = rng.randint(1, 4)
    note = f"kill_at_step={kill_at_step}, kill_in_write={kill_in_write}"
    states = tmp_path / "states"
    common = ("--state-dir", str(states), "--periodic", "2")

    first = run_script(str(tmp_path / "1.pt"), *common, "--kill-at-step", str(kill_at_step))
    assert first.returncode == -signal.SIGKILL, note + first.stderr[-2000:]
    assert list_training_states(states), note

    second = run_script(
        str(tmp_path / "2.pt"), *common, "--resume", "--kill-in-write", str(kill_in_write)
    )
    assert second.returncode == -signal.SIGKILL, note + second.stderr[-2000:]
    complete = list_training_states(states)
    assert complete, note
    assert len(complete) <= 2, note  # max_checkpoints=2, and never fewer than one

    out = tmp_path / "resumed.pt"
    completed(run_script(str(out), *common, "--resume", "--model-seed", "5"))
    assert_same_run(load(out), reference)


def test_sigterm_saves_at_a_safe_point_runs_the_end_hooks_and_resumes(
    tmp_path: Path, reference: dict
) -> None:
    states = tmp_path / "states"
    stopped = run_script(
        str(tmp_path / "x.pt"), "--state-dir", str(states), "--signal-at-step", "14"
    )
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert "Received SIGTERM" in stopped.stdout
    names = [path.name for path, _ in list_training_states(states)]
    assert len(names) == 1 and names[0].startswith("interrupted_step_"), names
    assert not (states / "final").exists()  # the stop is not the end of the run
    out = tmp_path / "resumed.pt"
    completed(run_script(str(out), "--state-dir", str(states), "--resume"))
    assert_same_run(load(out), reference)


@pytest.mark.multiprocess
def test_two_processes_resume_inside_an_accumulation_group(tmp_path: Path) -> None:
    # 44 samples on 2 processes of batch 4: 6 batches each, the last completed from the start
    # of the data, so the resumed epoch's skipped batches are loaded and dropped.
    size = ("--samples", "44")
    full = tmp_path / "full.pt"
    state = tmp_path / "state"
    saving = ("--state-dir", str(state), "--save-at", "step:2:1")
    completed(run_script(str(full), *size, *saving, processes=2, timeout=180))
    assert (state / "pa_state.json").exists()
    out = tmp_path / "resumed.pt"
    completed(
        run_script(str(out), *size, "--state-dir", str(state), "--resume", processes=2, timeout=180)
    )
    assert_same_run(load(out), load(full), atol=1e-6)
