"""Train a small classifier on the 8x8 handwritten digits that scikit-learn ships (no download).

    pip install -e ".[examples]"
    python examples/train_digits.py

Runs unchanged on several processes or GPUs, e.g.
``accelerate launch examples/train_digits.py`` or, on a CPU-only machine,
``ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2 examples/train_digits.py``.
"""

from __future__ import annotations

import argparse
import functools

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

from pa_mixins import Trainer, TrainerPlaceholderValues


def digits_datasets(seed: int = 0) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Train / validation / test splits of the 1,797 digits, pixels scaled to [0, 1]."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    return (
        TensorDataset(x[:1200], y[:1200]),
        TensorDataset(x[1200:1500], y[1200:1500]),
        TensorDataset(x[1500:], y[1500:]),
    )


class AccuracyTrainer(Trainer):
    """The everyday Trainer, plus accuracy on the evaluation set (one method overridden)."""

    def eval_epoch_start(self) -> None:
        super().eval_epoch_start()
        self.correct = torch.zeros((), device=self.device)
        self.seen = torch.zeros((), device=self.device)

    def calculate_eval_batch_loss(self, batch):  # type: ignore[no-untyped-def]
        output = super().calculate_eval_batch_loss(batch)
        self.correct += (output["model_outputs"].argmax(dim=1) == batch[1]).sum()
        self.seen += batch[1].numel()
        return output

    def eval_epoch_end(self) -> None:
        accuracy = self.reduce_sum(self.correct) / self.reduce_sum(self.seen)
        self.run_history.update_metric("accuracy", accuracy.item())
        super().eval_epoch_end()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    train_ds, val_ds, test_ds = digits_datasets()
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 10))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    trainer = AccuracyTrainer(model, loss_func=nn.CrossEntropyLoss(), optimizer=optimizer)
    trainer.train(
        train_dataset=train_ds,
        eval_dataset=val_ds,
        num_epochs=args.epochs,
        per_device_batch_size=args.batch_size,
        create_scheduler_fn=functools.partial(
            torch.optim.lr_scheduler.OneCycleLR,
            max_lr=3e-3,
            epochs=TrainerPlaceholderValues.NUM_EPOCHS,
            steps_per_epoch=TrainerPlaceholderValues.NUM_UPDATE_STEPS_PER_EPOCH,
        ),
        seed=args.seed,
    )
    trainer.evaluate(dataset=test_ds, per_device_batch_size=64)
    trainer.print(f"\nTest accuracy: {trainer.run_history.get_latest_metric('accuracy'):.3f}")


if __name__ == "__main__":
    main()
