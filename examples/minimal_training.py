"""The smallest complete run: a model, a loss function, an optimizer and a Trainer.

    python examples/minimal_training.py

Learns the line y = 3x - 1 from noisy points made in the script; a few seconds on a CPU.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import TensorDataset

from pa_mixins import Trainer


def make_dataset(num_points: int, seed: int) -> TensorDataset:
    """Points on y = 3x - 1 with a little noise. Each item is an ``(input, target)`` pair,
    which is what the Trainer's default loss step expects."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(num_points, 1, generator=generator) * 4 - 2
    y = 3 * x - 1 + 0.1 * torch.randn(num_points, 1, generator=generator)
    return TensorDataset(x, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()

    train_dataset, eval_dataset = make_dataset(1024, seed=0), make_dataset(256, seed=1)

    # Plain PyTorch objects: the Trainer only needs them, not a special model class.
    model = nn.Linear(1, 1)
    loss_func = nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    trainer = Trainer(model, loss_func=loss_func, optimizer=optimizer)
    # One call runs every epoch: training, then evaluation on eval_dataset. Progress bars and
    # the loss of each epoch are printed by the default callbacks.
    trainer.train(
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        num_epochs=args.epochs,
        per_device_batch_size=32,
        seed=0,  # seeds every random generator and the shuffling, for a repeatable run
    )

    # The metrics of the run are kept in the run history.
    eval_loss = trainer.run_history.get_latest_metric("eval_loss_epoch")
    weight, bias = model.weight.item(), model.bias.item()
    trainer.print(f"Learned y = {weight:.2f}x {bias:+.2f} (eval loss {eval_loss:.4f})")


if __name__ == "__main__":
    main()
