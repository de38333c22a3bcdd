"""Draw docs/img/run.png: a real run, drawn by ``python -m pa_mixins.plot``.

Trains a small classifier on scikit-learn's 8x8 digits with the CSV tracker, interval metrics
every 10 updates, a one-cycle schedule and the torchmetrics recipe of docs/logging.md (run from
that page, so the picture shows what the page shows), then runs the plot command on the run
folder. Run from anywhere: ``python docs/scripts/plot_run.py`` (needs scikit-learn,
torchmetrics and matplotlib: ``pip install -e ".[test]"``).
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset, random_split

from pa_mixins import Trainer, TrainerPlaceholderValues
from pa_mixins.callbacks import get_default_callbacks

DOCS = Path(__file__).resolve().parents[1]
OUTPUT = DOCS / "img" / "run.png"


def recipe(name: str) -> dict[str, Any]:
    """The namespace of the ``<!-- test: name -->`` block of docs/logging.md, executed."""
    text = (DOCS / "logging.md").read_text()
    block = re.search(rf"<!-- test: {name} -->\n```python\n(.*?)```", text, re.DOTALL)
    assert block is not None, name
    namespace: dict[str, Any] = {"__name__": f"docs_{name}"}
    exec(compile(block.group(1), f"docs/logging.md:{name}", "exec"), namespace)
    return namespace


def main() -> None:
    from torchmetrics.classification import MulticlassAccuracy

    digits = load_digits()
    data = TensorDataset(
        torch.tensor(digits.data, dtype=torch.float32) / 16.0,
        torch.tensor(digits.target, dtype=torch.long),
    )
    train_ds, val_ds, _ = random_split(
        data, [1200, 300, 297], generator=torch.Generator().manual_seed(0)
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    metrics = recipe("torchmetrics-callback")["TorchMetricsCallback"](
        {"accuracy": MulticlassAccuracy(num_classes=10, average="micro")}
    )
    with tempfile.TemporaryDirectory() as runs:
        trainer = Trainer(
            model,
            nn.CrossEntropyLoss(),
            torch.optim.AdamW(model.parameters(), lr=3e-3),
            callbacks=(metrics, *get_default_callbacks(progress_bar=False)),
            log_with="csv",
            project_dir=runs,
            log_every_n_steps=10,
        )
        trainer.train(
            train_dataset=train_ds,
            eval_dataset=val_ds,
            num_epochs=8,
            per_device_batch_size=32,
            seed=0,
            create_scheduler_fn=functools.partial(
                torch.optim.lr_scheduler.OneCycleLR,
                max_lr=3e-3,
                epochs=TrainerPlaceholderValues.NUM_EPOCHS,
                steps_per_epoch=TrainerPlaceholderValues.NUM_UPDATE_STEPS_PER_EPOCH,
            ),
        )
        assert trainer.tracking_callback is not None
        run_dir = Path(runs) / str(trainer.tracking_callback.current_run_name)
        title = "digits: 1,200 training images, batch 32, one-cycle schedule"
        command = ["-m", "pa_mixins.plot", str(run_dir), "-o", str(OUTPUT), "--title", title]
        subprocess.run([sys.executable, *command], check=True)


if __name__ == "__main__":
    main()
