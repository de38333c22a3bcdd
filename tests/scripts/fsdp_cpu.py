"""FSDP asked for on two CPU processes (``ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2``),
where Accelerate would silently train with plain DDP: each process writes the error it got to
OUT_DIR/rank<r>.txt (``fsdp_cpu.py OUT_DIR``)."""

from __future__ import annotations

import os
import pathlib
import sys

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from pa_mixins import FSDPTrainer
from tests.conftest import make_model, make_regression_data


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    model = make_model()
    trainer = FSDPTrainer(
        model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.1), callbacks=()
    )
    rank = os.environ.get("RANK", "0")
    try:
        trainer.train(make_regression_data(16), num_epochs=1, per_device_batch_size=4)
        message = "trained"
    except RuntimeError as error:
        message = f"{type(error).__name__}: {error}"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.txt").write_text(message)


if __name__ == "__main__":
    main()
