"""Compute metrics inside the loop, by overriding two trainer hooks (torchmetrics).

    pip install -e ".[examples]"
    python examples/metrics_in_loop.py

The same digits task as ``metrics_in_callback.py``, done the other way: a Trainer subclass
updates the metrics in ``calculate_eval_batch_loss`` and records them in ``eval_epoch_end``.
Choose a subclass when the metrics belong to the model's task; a callback when you want to
add them to any trainer.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset, random_split
from torchmetrics import Accuracy, F1Score, MetricCollection

from pa_mixins import Trainer


class TrainerWithMetrics(Trainer):
    def __init__(self, *args: Any, num_classes: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # An nn.Module attribute of the trainer: the default MoveModulesToDeviceCallback moves
        # it to the trainer's device at the start of each run.
        self.metrics = MetricCollection(
            {
                "accuracy": Accuracy(task="multiclass", num_classes=num_classes),
                "f1": F1Score(task="multiclass", num_classes=num_classes, average="macro"),
            }
        )

    def calculate_eval_batch_loss(self, batch: Any) -> dict[str, Any]:
        # Keep the default loss computation, then use its outputs.
        batch_output = super().calculate_eval_batch_loss(batch)
        self.metrics.update(batch_output["model_outputs"].argmax(dim=-1), batch[1])
        return batch_output

    def eval_epoch_end(self) -> None:
        for name, value in self.metrics.compute().items():
            self.run_history.update_metric(name, value.item())
        self.metrics.reset()
        super().eval_epoch_end()  # end-of-something hooks call super() last


def load_digit_datasets() -> list[Any]:
    """Train / validation / test splits of scikit-learn's 1,797 digits, pixels in [0, 1]."""
    digits = load_digits()
    images = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    return random_split(
        TensorDataset(images, labels), [1200, 300, 297], generator=torch.Generator().manual_seed(0)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()

    train_dataset, eval_dataset, test_dataset = load_digit_datasets()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    trainer = TrainerWithMetrics(
        model,
        loss_func=nn.CrossEntropyLoss(),
        optimizer=torch.optim.AdamW(model.parameters(), lr=3e-3),
        num_classes=10,
    )
    trainer.train(
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        num_epochs=args.epochs,
        per_device_batch_size=32,
        seed=0,
    )
    trainer.evaluate(dataset=test_dataset, per_device_batch_size=64)
    history = trainer.run_history
    trainer.print(
        f"Test accuracy: {history.get_latest_metric('accuracy'):.3f}, "
        f"macro F1: {history.get_latest_metric('f1'):.3f}"
    )


if __name__ == "__main__":
    main()
