"""Train with DeepSpeed ZeRO, configured in code, and export the full weights.

    python examples/deepspeed_training.py --zero-stage 3

Needs the `deepspeed` extra (`pip install "pa_mixins[deepspeed]"`). On a machine without GPUs
DeepSpeed runs on one CPU process (pa_mixins picks its CPU backend); on GPUs launch the same
script with `accelerate launch --num_processes N examples/deepspeed_training.py`. The batch
size, gradient accumulation and clipping given to train() are written into DeepSpeed's config,
so the run trains exactly like the plain Trainer would.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from pa_mixins import DeepSpeedTrainer


def make_dataset(num_points: int, seed: int) -> TensorDataset:
    """Targets are a fixed random linear function of 16 features, plus a little noise."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_points, 16, generator=generator)
    true_weights = torch.linspace(-1, 1, 16).unsqueeze(1)
    return TensorDataset(
        x, x @ true_weights + 0.05 * torch.randn(num_points, 1, generator=generator)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--zero-stage", type=int, default=2, choices=(0, 1, 2, 3))
    args = parser.parse_args()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    # Any DeepSpeed setting goes in deepspeed_config (a dict or a JSON file); what train()
    # decides (batch sizes, accumulation, clipping) is filled in from its arguments.
    trainer = DeepSpeedTrainer(
        model, nn.MSELoss(), optimizer, zero_stage=args.zero_stage, deepspeed_config={}
    )
    trainer.train(
        train_dataset=make_dataset(512, seed=0),
        eval_dataset=make_dataset(128, seed=1),
        num_epochs=args.epochs,
        per_device_batch_size=16,
        gradient_accumulation_steps=2,
        gradient_clip_norm=1.0,
        seed=0,
    )

    # The engine shards the weights under ZeRO-3: save_checkpoint gathers them into one
    # portable file, which loads into the plain model with weights_only=True.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        trainer.save_checkpoint(path)
        plain = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
        plain.load_state_dict(torch.load(path, weights_only=True)["model_state_dict"])
    eval_loss = trainer.run_history.get_latest_metric("eval_loss_epoch")
    trainer.print(f"ZeRO-{args.zero_stage}: eval loss {eval_loss:.4f}; exported weights loaded")


if __name__ == "__main__":
    main()
