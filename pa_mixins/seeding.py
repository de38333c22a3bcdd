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
* A training state holds every process's generator states (:func:`capture_rng_state`), and a
  resumed run puts them back (:func:`restore_rng_state`) at the moment they were saved.
"""

from __future__ import annotations

import os
import random
from typing import Any

import torch

__all__ = [
    "capture_rng_state",
    "draw_seed",
    "restore_rng_state",
    "seed_everything",
    "use_deterministic_algorithms",
]


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


def capture_rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's, torch's CPU and (if in use) CUDA generators, as
    tensors and plain values."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        numpy_state: Any = np.random.get_state()
        _, keys, pos, has_gauss, cached = numpy_state
        state["numpy"] = {
            "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    except ImportError:  # pragma: no cover - numpy comes with accelerate
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back generator states from :func:`capture_rng_state` (the CUDA ones only on the
    same number of devices)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        saved = state["numpy"]
        keys = saved["keys"].numpy().astype(np.uint32)
        np.random.set_state(
            ("MT19937", keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"])
        )
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
