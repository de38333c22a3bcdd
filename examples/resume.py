"""Resume a run after a crash: save training states as you go, continue from the newest.

    python examples/resume.py     # kill it at any moment (Ctrl-C, kill -9, a power cut) ...
    python examples/resume.py     # ... and the same command carries on where it stopped

``SaveTrainingStateCallback`` writes a complete training state (weights, optimizer,
scheduler, random generators, data position, run history) every few optimizer updates, and
only ever deletes an old state after a new one is complete on disk. ``train(resume_from=...)``
continues from the newest complete state: the resumed run ends with the same weights as a
run that was never interrupted. Synthetic data; a few seconds on a CPU.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from pa_mixins import Trainer, TrainerPlaceholderValues
from pa_mixins.callbacks import (
    LogMetricsCallback,
    PrintProgressCallback,
    SaveTrainingStateCallback,
    TrainerCallback,
)
from pa_mixins.mixins.checkpointing import list_training_states


class AnnounceSaves(TrainerCallback):
    def on_training_state_saved(self, trainer: Any, output_dir: Any, **kwargs: Any) -> None:
        trainer.print(f"Saved a training state: {output_dir}", flush=True)


def make_dataset(num_samples: int, seed: int) -> TensorDataset:
    # Seeded: the resumed run must train on the same data as the first one.
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, 20, generator=generator)
    y = torch.tanh(x[:, :10].sum(dim=1, keepdim=True) - x[:, 10:].sum(dim=1, keepdim=True))
    return TensorDataset(x, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="resume_run", help="states and the final model")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--save-every-n-steps", type=int, default=50)
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    states = out_dir / "states"

    torch.manual_seed(0)  # the same initial model every time (a resume overwrites it anyway)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 1))
    trainer = Trainer(
        model,
        loss_func=nn.MSELoss(),
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
        callbacks=(
            PrintProgressCallback,
            LogMetricsCallback,
            # a state every N optimizer updates and at the end; keep only the newest two
            SaveTrainingStateCallback(
                states, save_every_n_steps=args.save_every_n_steps, max_checkpoints=2
            ),
            AnnounceSaves,
        ),
    )

    # Resume from the newest complete state if there is one (a half-written one is ignored).
    resume_from = states if list_training_states(states) else None
    trainer.print(f"Resuming from {states}" if resume_from else "Starting a new run")
    trainer.train(
        train_dataset=make_dataset(4096, seed=0),
        eval_dataset=make_dataset(512, seed=1),
        num_epochs=args.epochs,  # the total: a resumed run does only the epochs left
        per_device_batch_size=32,
        create_scheduler_fn=functools.partial(
            torch.optim.lr_scheduler.OneCycleLR,
            max_lr=1e-2,
            epochs=TrainerPlaceholderValues.NUM_EPOCHS,
            steps_per_epoch=TrainerPlaceholderValues.NUM_UPDATE_STEPS_PER_EPOCH,
        ),
        seed=0,  # the first run's seed; a resumed run takes every random state from the state
        resume_from=resume_from,
    )
    trainer.save_checkpoint(out_dir / "model.pt")  # the final weights, portable
    trainer.print(f"Done: final model in {out_dir / 'model.pt'}")


if __name__ == "__main__":
    main()
