"""The same script on one process or several: what changes, and what does not.

    python examples/two_processes.py                                   # one process
    ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2 examples/two_processes.py

(On GPUs: ``accelerate launch --multi_gpu --num_processes 2 examples/two_processes.py``.)
Nothing in the script depends on the number of processes. The launcher starts one copy per
process; the trainer gives each process its share of every epoch's batches, averages the
gradients across processes, and reduces the losses it records, so every process has the
same model and the same run history. Uses scikit-learn's digits; a few seconds on a CPU.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset, random_split

from pa_mixins import Trainer
from pa_mixins.callbacks import LogMetricsCallback, PrintProgressCallback, TrainerCallback


class ShowShares(TrainerCallback):
    """Each process says how many batches it runs per epoch (plain print: every process)."""

    def on_training_run_start(self, trainer: Any, **kwargs: Any) -> None:
        config = trainer.run_config
        print(
            f"[process {trainer.process_index} of {trainer.num_processes}] "
            f"{config.num_update_steps_per_epoch} updates per epoch "
            f"of {config.train_per_device_batch_size} samples",
            flush=True,
        )


def load_digit_datasets() -> list[Any]:
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
    torch.manual_seed(0)  # the model starts the same on every process
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    trainer = Trainer(
        model,
        loss_func=nn.CrossEntropyLoss(),
        optimizer=torch.optim.AdamW(model.parameters(), lr=3e-3),
        callbacks=(ShowShares, PrintProgressCallback, LogMetricsCallback),
    )
    # per_device_batch_size is per process: on 2 processes each update sees 2 x 32 samples
    trainer.train(
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        num_epochs=args.epochs,
        per_device_batch_size=32,
        seed=0,
    )

    # predict() splits the work between the processes and gives every process all the
    # outputs, in dataset order; every process must call it.
    logits = trainer.predict(test_dataset, per_device_batch_size=64)
    labels = torch.stack([label for _, label in test_dataset]).to(logits.device)
    accuracy = (logits.argmax(dim=1) == labels).float().mean().item()

    # trainer.print prints once per machine (on its first process), print on every process.
    # (To write a file once for the whole run, test trainer.is_world_process_zero.)
    trainer.print(f"Test accuracy: {accuracy:.3f} ({len(logits)} predictions)")
    print(f"[process {trainer.process_index}] final accuracy {accuracy:.3f}", flush=True)


if __name__ == "__main__":
    main()
