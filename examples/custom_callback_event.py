"""Fire an event of your own from a trainer hook, and handle it in a callback.

    python examples/custom_callback_event.py

The trainer below fires ``on_gradients_ready`` before each optimizer update, with the norm of
the gradients. Any callback may define a method of that name; callbacks that do not (here,
the default ones) are skipped. ``GradientNormMonitor`` keeps the largest norm of each epoch
in the run history, where ``LogMetricsCallback`` prints it. Synthetic data; a few seconds.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from pa_mixins import Trainer
from pa_mixins.callbacks import DEFAULT_CALLBACKS, TrainerCallback


class TrainerWithGradientEvent(Trainer):
    def optimizer_step(self) -> None:
        # Called once per optimizer update, when the update's gradients are complete: after
        # gradient accumulation and clipping, and averaged over the processes of a
        # multi-process run (with fp16 mixed precision and no clipping they still carry the
        # loss scale).
        norms = [p.grad.norm() for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.linalg.vector_norm(torch.stack(norms))
        # The first argument is the trainer, as for every event; the rest are keywords.
        self.callback_handler.call_event("on_gradients_ready", self, grad_norm=grad_norm)
        super().optimizer_step()


class GradientNormMonitor(TrainerCallback):
    """Handles the custom event like any built-in one: a method with the event's name."""

    def on_train_epoch_start(self, trainer: Any, **kwargs: Any) -> None:
        self.largest = torch.zeros(())

    def on_gradients_ready(self, trainer: Any, grad_norm: torch.Tensor, **kwargs: Any) -> None:
        # stay on the device: .item() here would wait for it at every update
        self.largest = torch.maximum(self.largest.to(grad_norm.device), grad_norm.detach())

    def on_train_epoch_end(self, trainer: Any, **kwargs: Any) -> None:
        # a name with "train" in it: LogMetricsCallback prints it with the training loss
        trainer.run_history.update_metric("train_max_grad_norm", self.largest.item())


def make_dataset(num_samples: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, 10, generator=generator)
    y = (x[:, :5].sum(dim=1) > x[:, 5:].sum(dim=1)).long()  # two classes
    return TensorDataset(x, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    trainer = TrainerWithGradientEvent(
        model,
        loss_func=nn.CrossEntropyLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        # the monitor before LogMetricsCallback, so its metric is printed in the same epoch
        callbacks=(GradientNormMonitor, *DEFAULT_CALLBACKS),
    )
    trainer.train(
        train_dataset=make_dataset(1024, seed=0),
        eval_dataset=make_dataset(256, seed=1),
        num_epochs=args.epochs,
        per_device_batch_size=32,
        seed=0,
    )
    norms = trainer.run_history.get_metric_values("train_max_grad_norm")
    trainer.print("Largest gradient norm per epoch: " + ", ".join(f"{n:.3f}" for n in norms))


if __name__ == "__main__":
    main()
