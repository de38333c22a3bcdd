"""Keep an exponential moving average (EMA) of the weights with ``ModelEmaCallback``.

    python examples/ema.py

With a large, constant learning rate the weights jump around the minimum from one update to
the next; their average sits closer to it. The callback updates the average after every
optimizer update, evaluates it after each epoch (``ema_model_eval_loss_epoch``, printed next
to ``eval_loss_epoch``) and saves the best average to a file. Synthetic data; a few seconds.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import TensorDataset

from pa_mixins import Trainer
from pa_mixins.callbacks import LogMetricsCallback, ModelEmaCallback, PrintProgressCallback


def make_dataset(num_samples: int, seed: int) -> TensorDataset:
    """A noisy linear target: the noise makes each mini-batch's gradient point elsewhere."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, 16, generator=generator)
    weights = torch.linspace(-1, 1, 16, dtype=torch.float32)
    y = x @ weights + 0.5 * torch.randn(num_samples, generator=generator)
    return TensorDataset(x, y.unsqueeze(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--save-path", default="ema_model.pt", help="where the best EMA goes")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = nn.Linear(16, 1)
    ema = ModelEmaCallback(
        decay=0.95,  # per update: the average covers about the last 1 / (1 - 0.95) = 20
        save_path=args.save_path,
    )
    trainer = Trainer(
        model,
        loss_func=nn.MSELoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.2),
        # the EMA callback before LogMetricsCallback, so the EMA loss is printed too
        callbacks=(ema, PrintProgressCallback, LogMetricsCallback),
    )
    eval_dataset = make_dataset(1000, seed=1)
    trainer.train(
        train_dataset=make_dataset(2000, seed=0),
        eval_dataset=eval_dataset,
        num_epochs=args.epochs,
        per_device_batch_size=16,
        seed=0,
    )

    history = trainer.run_history
    trainer.print(
        f"Last epoch: model eval loss {history.get_latest_metric('eval_loss_epoch'):.4f}, "
        f"EMA eval loss {history.get_latest_metric('ema_model_eval_loss_epoch'):.4f}"
    )

    # trainer.model keeps the trained weights; the average is ema.ema_model.module, and the
    # best average is in the file. To use it, load it into the model:
    trainer.load_checkpoint(args.save_path, load_optimizer=False, load_scheduler=False)
    trainer.evaluate(dataset=eval_dataset, per_device_batch_size=256)
    best = trainer.run_history.get_latest_metric("evaluation_loss")
    trainer.print(f"Best EMA weights loaded from {args.save_path}: eval loss {best:.4f}")


if __name__ == "__main__":
    main()
