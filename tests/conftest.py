"""Shared fixtures: tiny real models and data, and a clean Accelerate state per test."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pa_mixins.mixins.accelerate import reset_accelerate_state

# One thread per test process: xdist runs one process per core.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests run only where CUDA is available (the lent GPU machine)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _clean_accelerate_state(monkeypatch: pytest.MonkeyPatch):
    """Accelerate keeps process-wide state; every test starts without it."""
    monkeypatch.delenv("PT_ACC_LIMIT_BATCHES", raising=False)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    reset_accelerate_state()
    yield
    reset_accelerate_state()


def make_regression_data(n: int = 64, features: int = 4, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator)
    w = torch.arange(1, features + 1, dtype=torch.float32)
    y = (x @ w).unsqueeze(1) + 0.1 * torch.randn(n, 1, generator=generator)
    return TensorDataset(x, y)


def make_model(features: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 8), nn.Tanh(), nn.Linear(8, 1))


@pytest.fixture
def regression_data() -> TensorDataset:
    return make_regression_data()


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launch_env(use_cpu: bool = True, **extra: str) -> dict[str, str]:
    """The environment of a training script started in fresh processes: none of this
    process's Accelerate or launcher variables, one thread per process, the repository on the
    path, and ``ACCELERATE_USE_CPU=1`` (what makes a CPU launch of N processes use gloo)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ACCELERATE_", "PT_ACC")) and k not in _LAUNCH_VARIABLES
    }
    env["PYTHONPATH"] = REPO_ROOT
    env["OMP_NUM_THREADS"] = "1"
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "1"
    env.update(extra)
    return env


def torchrun(processes: int, *extra: str) -> list[str]:
    """The command prefix that starts ``processes`` processes on this machine with torchrun."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        *extra,
    ]


def launcher(processes: int) -> list[str]:
    """Plain ``python`` for one process, torchrun for several."""
    return [sys.executable] if processes == 1 else torchrun(processes)
