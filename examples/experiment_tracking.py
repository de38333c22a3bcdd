"""Log a run to experiment trackers and draw a picture of it.

    python examples/experiment_tracking.py --log-with csv tensorboard

`log_with=` takes "csv" (no extra package), "tensorboard", "mlflow", "wandb" (offline), a list
of them or "all"; each run gets a folder under `project_dir`. Metrics are logged per epoch and,
every `log_every_n_steps` updates, the interval's loss, learning rate and speed. Then
`python -m pa_mixins.plot RUN_DIR` (the `plot` extra) draws the CSV run to a PNG.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from pa_mixins import Trainer


def make_dataset(num_points: int, seed: int) -> TensorDataset:
    """Two noisy classes in 8 dimensions."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (num_points,), generator=generator)
    x = torch.randn(num_points, 8, generator=generator) + labels.unsqueeze(1) * 1.5
    return TensorDataset(x, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--log-with", nargs="+", default=["csv"])
    parser.add_argument("--project-dir", default="runs")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(
        model,
        nn.CrossEntropyLoss(),
        optimizer,
        log_with=args.log_with,
        project_dir=args.project_dir,
        log_every_n_steps=10,
    )
    trainer.train(
        train_dataset=make_dataset(640, seed=0),
        eval_dataset=make_dataset(160, seed=1),
        num_epochs=args.epochs,
        per_device_batch_size=32,
        seed=0,
    )
    runs = sorted(path for path in Path(args.project_dir).iterdir() if path.is_dir())
    trainer.print(f"Run folders in {args.project_dir}: {[path.name for path in runs]}")


if __name__ == "__main__":
    main()
