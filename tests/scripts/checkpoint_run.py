"""A small real training run that can save, crash, be killed, be stopped and resume.

Run on one process (``python checkpoint_run.py OUT ...``) or two
(``ACCELERATE_USE_CPU=1 python -m torch.distributed.run --standalone --nproc_per_node 2
checkpoint_run.py OUT ...``). The first process writes the final weights and run history to
``OUT`` (a ``.pt`` file).

Shuffling, an eval set, dropout, Adam, a OneCycleLR scheduler built from placeholders and
gradient accumulation (3) are all on.

Options:
  --state-dir D          where states go / are resumed from
  --resume               train(resume_from=D)
  --save-at WHAT[,WHAT]  request states at: epoch:E (end of epoch E), update:N (after
                         update N), step:E:S (after micro-batch S of epoch E); with one
                         moment the state is D, with several D/<moment>
  --crash-after-save     SIGKILL this process as soon as a state is complete on disk
  --periodic N           SaveTrainingStateCallback(D, save_every_n_steps=N, max_checkpoints=2)
  --kill-at-step K       SIGKILL this process at the K-th micro-batch of this run
  --kill-in-write W      SIGKILL this process in the middle of the W-th file written by torch.save
  --signal-at-step K     send SIGTERM to this process at the K-th micro-batch of this run
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import signal
import sys
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from pa_mixins import Trainer, TrainerPlaceholderValues
from pa_mixins.callbacks import SaveTrainingStateCallback, TrainerCallback
from tests.conftest import make_model, make_regression_data


class Scenario(TrainerCallback):
    """Saves, kills and signals at the moments the options name."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.micro_batches = 0

    def _save_if(self, trainer: Any, *moment: Any) -> None:
        wanted = (self.args.save_at or "").split(",")
        name = ":".join(map(str, moment))
        if name in wanted:
            folder = pathlib.Path(self.args.state_dir)
            if len(wanted) > 1:
                folder = folder / name.replace(":", "_")
            trainer.save_training_state(folder, checkpoint_kwargs={"moment": moment[0]})

    def on_train_step_start(self, trainer: Any, **kwargs: Any) -> None:
        self.micro_batches += 1
        if self.micro_batches == self.args.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.micro_batches == self.args.signal_at_step:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_step_end(self, trainer: Any, step: int, **kwargs: Any) -> None:
        self._save_if(trainer, "step", trainer.run_history.current_epoch, step)

    def on_optimizer_step_end(self, trainer: Any, num_updates: int, **kwargs: Any) -> None:
        self._save_if(trainer, "update", num_updates)

    def on_training_run_epoch_end(self, trainer: Any, **kwargs: Any) -> None:
        self._save_if(trainer, "epoch", trainer.run_history.current_epoch)

    def on_training_state_saved(self, trainer: Any, **kwargs: Any) -> None:
        if self.args.crash_after_save:
            os.kill(os.getpid(), signal.SIGKILL)


def kill_in_the_middle_of_write(nth: int) -> None:
    """Make the nth torch.save write half of its bytes, then SIGKILL the process."""
    original = torch.save
    calls = {"n": 0}

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] != nth or not hasattr(f, "write"):
            original(obj, f, *args, **kwargs)
            return
        import io

        buffer = io.BytesIO()
        original(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--state-dir", default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--save-at", default=None)
    parser.add_argument("--crash-after-save", action="store_true")
    parser.add_argument("--periodic", type=int, default=None)
    parser.add_argument("--kill-at-step", type=int, default=None)
    parser.add_argument("--kill-in-write", type=int, default=None)
    parser.add_argument("--signal-at-step", type=int, default=None)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--model-seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.kill_in_write:
        kill_in_the_middle_of_write(args.kill_in_write)

    # A fresh model and optimizer: a resumed run must not depend on their initial values.
    model = nn.Sequential(nn.Dropout(0.1), make_model(seed=args.model_seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    callbacks: list[Any] = [Scenario(args)]
    if args.periodic:
        callbacks.append(
            SaveTrainingStateCallback(
                args.state_dir, save_every_n_steps=args.periodic, max_checkpoints=2
            )
        )
    elif args.signal_at_step:
        callbacks.append(SaveTrainingStateCallback(args.state_dir))
    trainer = Trainer(model, nn.MSELoss(), optimizer, callbacks=callbacks)
    schedule = functools.partial(
        torch.optim.lr_scheduler.OneCycleLR,
        max_lr=0.05,
        epochs=TrainerPlaceholderValues.NUM_EPOCHS,
        steps_per_epoch=TrainerPlaceholderValues.NUM_UPDATE_STEPS_PER_EPOCH,
    )
    trainer.train(
        make_regression_data(args.samples),
        num_epochs=args.epochs,
        eval_dataset=make_regression_data(16, seed=1),
        per_device_batch_size=4,
        gradient_accumulation_steps=3,
        create_scheduler_fn=schedule,
        seed=7 if not args.resume else 12345,  # a resumed run takes its seeds from the state
        resume_from=args.state_dir if args.resume else None,
    )
    if trainer.is_world_process_zero:
        weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        torch.save({"weights": weights, "history": trainer.run_history.state_dict()}, args.out)


if __name__ == "__main__":
    main()
