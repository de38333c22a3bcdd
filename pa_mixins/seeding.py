"""Seeding policy.

* Importing ``pa_mixins`` seeds nothing, and no run uses a fixed seed it was not given.
* ``train(seed=s)`` seeds Python's, NumPy's and torch's generators on every process with
  ``s + process_index`` (so random augmentations differ between processes), shuffles the
  data with an order that depends only on ``(s, epoch)`` and is the same on every process,
  and seeds the dataloader workers from it. It happens at the start of every ``train()``, so
  two runs with the same seed give the same weights whatever the program did in between.
* Without a seed, the data order is drawn from torch's global generator (the first process's,
  shared with the others), so ``torch.manual_seed`` before ``train()`` makes a run repeatable,
  as in a plain PyTorch loop.
* ``train(deterministic=True)`` also asks torch for deterministic algorithms (an error is
  raised by an operation that has none).
"""

from __future__ import annotations

import os
import random

import torch

__all__ = ["draw_seed", "seed_everything", "use_deterministic_algorithms"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (all devices') random generators."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy comes with accelerate
        pass
    torch.manual_seed(seed)


def draw_seed() -> int:
    """A seed drawn from torch's global generator."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def use_deterministic_algorithms(enabled: bool) -> None:
    """Switch torch's deterministic mode (and cuDNN's autotuner) on or off."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = False if enabled else torch.backends.cudnn.benchmark
