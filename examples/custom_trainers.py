"""The two other ways to use pa_mixins: assemble a trainer from mixins, override one method.

    python examples/custom_trainers.py

Synthetic data made in the script; runs in a few seconds on a CPU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from pa_mixins import Trainer
from pa_mixins.base import BaseTrainer
from pa_mixins.callbacks import PrintProgressCallback, TrainerCallback
from pa_mixins.mixins import (
    AccelerateMixin,
    EvaluationMixin,
    GradientAccumulationMixin,
    TrainingLoopMixin,
)


class AccumulatingTrainer(
    GradientAccumulationMixin, EvaluationMixin, TrainingLoopMixin, AccelerateMixin, BaseTrainer
):
    """Way 2: only what this project needs — accumulation, no scheduler or precision option.

    Capability mixins go left of ``TrainingLoopMixin``; the adapter just before the root.
    """


class L2Trainer(Trainer):
    """Way 3: the everyday Trainer with one method overridden (an L2 penalty on the loss)."""

    def __init__(self, *args: Any, weight_decay: float = 1e-3, **kwargs: Any) -> None:
        self.weight_decay = weight_decay
        super().__init__(*args, **kwargs)

    def calculate_train_batch_loss(self, batch: Any) -> dict[str, Any]:
        output = super().calculate_train_batch_loss(batch)
        penalty = sum(p.pow(2).sum() for p in self.model.parameters())
        output["loss"] = output["loss"] + self.weight_decay * penalty
        return output


class LogUpdates(TrainerCallback):
    """A callback on the event pytorch-accelerated lacks: after each optimizer update."""

    def on_optimizer_step_end(self, trainer: Any, num_updates: int, **kwargs: Any) -> None:
        if num_updates % 10 == 0:
            trainer.print(f"update {num_updates}: lr={trainer.optimizer.param_groups[0]['lr']:.4f}")


def make_data(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=generator)
    return TensorDataset(x, (x.sum(dim=1, keepdim=True) > 0).float())


def main() -> None:
    train_ds, val_ds = make_data(512, 0), make_data(128, 1)
    for trainer_cls in (AccumulatingTrainer, L2Trainer):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        trainer = trainer_cls(
            model,
            loss_func=nn.BCEWithLogitsLoss(),
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            callbacks=(PrintProgressCallback, LogUpdates),
        )
        trainer.train(
            train_dataset=train_ds,
            eval_dataset=val_ds,
            num_epochs=2,
            per_device_batch_size=16,
            gradient_accumulation_steps=2,
            seed=0,
        )
        loss = trainer.run_history.get_latest_metric("eval_loss_epoch")
        trainer.print(f"{trainer_cls.__name__}: eval loss {loss:.4f}")


if __name__ == "__main__":
    main()
