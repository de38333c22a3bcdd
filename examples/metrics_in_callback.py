"""Compute metrics in a callback, without subclassing the Trainer (torchmetrics).

    pip install -e ".[examples]"
    python examples/metrics_in_callback.py

Classifies the 8x8 handwritten digits that scikit-learn ships; prints accuracy, precision and
recall after every evaluation epoch. The callback also works on several processes:
torchmetrics combines the counts of every process when it computes.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset, random_split
from torchmetrics import Accuracy, MetricCollection, Precision, Recall

from pa_mixins import Trainer
from pa_mixins.callbacks import DEFAULT_CALLBACKS, TrainerCallback


class ClassificationMetricsCallback(TrainerCallback):
    """Updates the metrics with every evaluation batch; records them once per epoch."""

    def __init__(self, num_classes: int) -> None:
        self.metrics = MetricCollection(
            {
                "accuracy": Accuracy(task="multiclass", num_classes=num_classes),
                "precision": Precision(task="multiclass", num_classes=num_classes, average="macro"),
                "recall": Recall(task="multiclass", num_classes=num_classes, average="macro"),
            }
        )

    # A callback is not moved to the device by the trainer: move the metrics ourselves.
    def on_training_run_start(self, trainer: Any, **kwargs: Any) -> None:
        self.metrics.to(trainer.device)

    def on_evaluation_run_start(self, trainer: Any, **kwargs: Any) -> None:
        self.metrics.to(trainer.device)

    # Called after each evaluation batch with what calculate_eval_batch_loss returned.
    def on_eval_step_end(self, trainer: Any, batch: Any, batch_output: Any, **kwargs: Any) -> None:
        predictions = batch_output["model_outputs"].argmax(dim=-1)
        self.metrics.update(predictions, batch[1])

    # Record the epoch's values in the run history, where LogMetricsCallback finds them.
    def on_eval_epoch_end(self, trainer: Any, **kwargs: Any) -> None:
        for name, value in self.metrics.compute().items():
            trainer.run_history.update_metric(name, value.item())
        self.metrics.reset()


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

    trainer = Trainer(
        model,
        loss_func=nn.CrossEntropyLoss(),
        optimizer=torch.optim.AdamW(model.parameters(), lr=3e-3),
        # our callback first, so that LogMetricsCallback (a default) prints what it recorded
        callbacks=(ClassificationMetricsCallback(num_classes=10), *DEFAULT_CALLBACKS),
    )
    trainer.train(
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        num_epochs=args.epochs,
        per_device_batch_size=32,
        seed=0,
    )
    # evaluate() runs one evaluation epoch: the callback measures the test set too
    trainer.evaluate(dataset=test_dataset, per_device_batch_size=64)
    trainer.print(f"Test accuracy: {trainer.run_history.get_latest_metric('accuracy'):.3f}")


if __name__ == "__main__":
    main()
