"""Sharded training states (pa_mixins.sharded_state, FSDPMixin) on real 2-process CPU (gloo)
runs started by torchrun; what is resumed is resumed by a fresh pair of processes.

* FSDPTrainer through Accelerate's own FSDP2 preparation (tests/scripts/fsdp_run.py
  ``--cpu-fsdp``: Accelerate chooses FSDP on GPUs only, the script makes it do so on CPU
  processes): it trains like the plain Trainer; a state requested inside an accumulation
  group, resumed, ends exactly like the uninterrupted run; the export loads into a plain
  model.
* Raw FSDP2 (``fully_shard``, tests/scripts/sharded_state_run.py, run in the same processes
  after the trainer to save two launches): save, train on; loaded again, the same updates give
  the same weights and optimizer state (an empty optimizer state and a parameter without state
  included); the state of two processes loads in one process into a plain model; the full
  export loads into a plain module.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import warnings
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn

from tests.conftest import REPO_ROOT, launch_env, torchrun

pytestmark = pytest.mark.multiprocess

SCRIPTS = pathlib.Path(REPO_ROOT) / "tests" / "scripts"
TRAINER_ARGS = [
    "--cpu-fsdp",
    "--without-deepspeed",
    "--scheduler",
    "--accumulation",
    "3",
    "--clip-norm",
    "1.0",
]


def _raw_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "sharded_state_run", SCRIPTS / "sharded_state_run.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trainer_run(out: pathlib.Path, name: str, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [
            *torchrun(2),
            str(SCRIPTS / "fsdp_run.py"),
            str(out / f"{name}.json"),
            *TRAINER_ARGS,
            *args,
        ],
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result: dict[str, Any] = json.loads((out / f"{name}.json").read_text())
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("fsdp")
    raw = out / "raw"
    raw.mkdir()
    states, export = str(out / "states"), str(out / "model.pt")
    first = _trainer_run(
        out,
        "first",
        "--plain-first",
        *("--save-at-update", "5", "--state-dir", states, "--export", export),
        *("--reload-check", str(out / "other.pt")),
        *("--raw-train", str(raw)),
    )
    resumed = _trainer_run(out, "resumed", "--resume-from", states, "--raw-resume", str(raw))
    return {"out": out, "raw": raw, "first": first, "resumed": resumed}


def _load(path: pathlib.Path) -> dict[str, Any]:
    loaded: dict[str, Any] = torch.load(path, weights_only=True)
    return loaded


def _assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert set(a["weights"]) == set(b["weights"])
    for name, weight in a["weights"].items():
        torch.testing.assert_close(b["weights"][name], weight, atol=1e-6, rtol=0)
    assert set(a["optimizer"]) == set(b["optimizer"])
    for name, state in a["optimizer"].items():
        assert set(state) == set(b["optimizer"][name])
        for key, value in state.items():
            torch.testing.assert_close(
                torch.as_tensor(b["optimizer"][name][key]),
                torch.as_tensor(value),
                atol=1e-6,
                rtol=0,
            )


# -- FSDPTrainer ---------------------------------------------------------------------------


def test_fsdp_trainer_runs_on_accelerates_fsdp2_preparation(runs: dict[str, Any]) -> None:
    first = runs["first"]
    assert first["distributed_type"] == "DistributedType.FSDP"
    assert first["model"].startswith("FSDP")  # fully_shard's class
    assert first["optimizer"] == "AcceleratedOptimizer"
    assert first["num_processes"] == 2
    # 44 samples, 2 processes, batch 2: 11 micro-batches per epoch, groups 3, 3, 3, 2.
    assert first["updates"] == list(range(1, 13))


def test_fsdp_trainer_trains_like_the_plain_trainer(runs: dict[str, Any]) -> None:
    # Accumulation with a short last group, clipping by norm and a scheduler: the same run
    # as the plain Trainer (DDP) on the same two processes.
    first, plain = runs["first"], runs["first"]["plain"]
    assert plain["distributed_type"] == "DistributedType.MULTI_CPU"
    assert first["updates"] == plain["updates"]
    assert first["lrs"] == pytest.approx(plain["lrs"])
    assert first["train_loss"] == pytest.approx(plain["train_loss"], abs=1e-6)
    for name, weight in plain["weights"].items():
        torch.testing.assert_close(
            torch.tensor(first["weights"][name]), torch.tensor(weight), atol=1e-6, rtol=0
        )


def test_fsdp_trainer_resumes_exactly_from_a_state_requested_inside_a_group(
    runs: dict[str, Any],
) -> None:
    first, resumed = runs["first"], runs["resumed"]
    manifest = json.loads((runs["out"] / "states" / "pa_state.json").read_text())
    # Requested inside the group of update 6 (epoch 1), written at its end.
    assert manifest["position"] == {
        "phase": "train",
        "epoch": 1,
        "next_step": 6,
        "num_updates": 6,
        "max_steps_reached": False,
    }
    engine_files = {name for name in manifest["files"] if name.startswith("engine.1/")}
    assert engine_files == {
        "engine.1/.metadata",
        "engine.1/pa_sharded.json",
        "engine.1/__0_0.distcp",  # every process wrote its shards
        "engine.1/__1_0.distcp",
    }
    assert resumed["updates"] == list(range(7, 13))
    assert resumed["lrs"] == pytest.approx(first["lrs"][6:])
    assert resumed["train_loss"] == pytest.approx(first["train_loss"], abs=1e-6)
    for name, weight in first["weights"].items():
        torch.testing.assert_close(
            torch.tensor(resumed["weights"][name]), torch.tensor(weight), atol=1e-6, rtol=0
        )


def test_fsdp_trainer_export_loads_into_a_plain_model(runs: dict[str, Any]) -> None:
    checkpoint = torch.load(runs["out"] / "model.pt", weights_only=True)
    assert "optimizer_state_dict" not in checkpoint  # it lives in training states
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))
    model.load_state_dict(checkpoint["model_state_dict"])  # strict: full-size weights
    for name, weight in model.state_dict().items():
        torch.testing.assert_close(weight, torch.tensor(runs["first"]["weights"][name]))


def test_fsdp_trainer_loads_a_portable_checkpoint_into_its_shards(runs: dict[str, Any]) -> None:
    # load_checkpoint (e.g. SaveBestModelCallback's reload at the end of a run) after an FSDP
    # run: complete weights go into the sharded model.
    torch.manual_seed(123)
    other = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))
    reloaded = runs["first"]["reloaded"]
    assert set(reloaded) == set(other.state_dict())
    for name, weight in other.state_dict().items():
        torch.testing.assert_close(torch.tensor(reloaded[name]), weight)
        assert not torch.allclose(torch.tensor(runs["first"]["weights"][name]), weight)


# -- raw FSDP2 -----------------------------------------------------------------------------


def test_a_sharded_state_loads_to_the_same_weights_and_optimizer_state(
    runs: dict[str, Any],
) -> None:
    raw = runs["raw"]
    uninterrupted = _load(raw / "uninterrupted.pt")
    _assert_same_state(uninterrupted, _load(raw / "resumed3.pt"))
    # The parameter that never had a gradient has no optimizer state, after loading too.
    assert "unused.weight" not in uninterrupted["optimizer"]
    assert "head.weight" in uninterrupted["optimizer"]
    index = json.loads((raw / "state3" / "pa_sharded.json").read_text())
    assert "unused.weight" not in index["optimizer_state"]
    assert {p.name for p in (raw / "state3").glob("*.distcp")} == {
        "__0_0.distcp",
        "__1_0.distcp",
    }


def test_a_state_saved_before_the_first_update_leaves_the_optimizer_without_state(
    runs: dict[str, Any],
) -> None:
    # Taking the state must not start the optimizer (Adam's step count would be off by one).
    raw = runs["raw"]
    uninterrupted = _load(raw / "uninterrupted.pt")
    resumed = _load(raw / "resumed0.pt")
    assert uninterrupted["empty_after_save"] and resumed["no_state_after_load"]
    index = json.loads((raw / "state0" / "pa_sharded.json").read_text())
    assert index["optimizer_state"] == []
    _assert_same_state(uninterrupted, resumed)


def test_a_state_of_two_processes_loads_in_one_process_into_a_plain_model(
    runs: dict[str, Any],
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP: no process group, "loading in a single process"
        loaded = _raw_script().load_plain(runs["raw"])
    _assert_same_state(_load(runs["raw"] / "at_save.pt"), loaded)


def test_the_full_export_loads_into_a_plain_module(runs: dict[str, Any]) -> None:
    raw = runs["raw"]
    export = torch.load(raw / "export.pt", weights_only=True)["model_state_dict"]
    model = _raw_script().Net()
    model.load_state_dict(export)  # strict: every full-size tensor, buffers included
    for name, weight in _load(raw / "uninterrupted.pt")["weights"].items():
        assert export[name].device.type == "cpu"
        torch.testing.assert_close(export[name], weight, atol=0, rtol=0)
