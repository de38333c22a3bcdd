"""A DeepSpeed run on one CPU process, for tests/test_deepspeed.py (each run in a fresh
process: DeepSpeed sets up process-wide state).

``deepspeed_run.py OUT.json --stage S [--trainer deepspeed|plain] [--accumulation A]
[--clip-norm C] [--save-at-update N --state-dir D] [--resume-from D] [--epochs E]
[--export PATH] [--scheduler]``: trains a small MLP with a fixed seed and writes the run's
losses, update count, learning rates and final weights (as lists) to OUT.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from functools import partial
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from pa_mixins import DeepSpeedTrainer, Trainer
from pa_mixins.callbacks import TrainerCallback


class Record(TrainerCallback):
    """Saves a training state after a given update (inside an accumulation group when the
    update count is reached mid-group: the save is requested at micro-batch level) and records
    the learning rate, the update count and whether the step was skipped (fp16 overflow) at
    each on_optimizer_step_end."""

    def __init__(self, save_at_update: int | None, state_dir: str | None) -> None:
        self.save_at_update = save_at_update
        self.state_dir = state_dir
        self.updates: list[int] = []
        self.lrs: list[float] = []
        self.skipped: list[bool] = []

    def on_optimizer_step_end(self, trainer: Any, num_updates: int, **kwargs: Any) -> None:
        self.updates.append(num_updates)
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"])
        self.skipped.append(bool(trainer.optimizer_step_was_skipped))

    def on_train_step_end(self, trainer: Any, step: int, **kwargs: Any) -> None:
        if self.save_at_update is not None and trainer.num_updates == self.save_at_update:
            if step % 3 == 0:  # mid-group when accumulating 3 (the state is written after it)
                trainer.save_training_state(self.state_dir)
                self.save_at_update = None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--stage", type=int, default=2)
    parser.add_argument(
        "--trainer", choices=("deepspeed", "plain", "everyday"), default="deepspeed"
    )
    parser.add_argument("--try-state", action="store_true", help="record the error of a state")
    parser.add_argument(
        "--after", action="store_true", help="evaluate, predict and train again after training"
    )
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--clip-norm", type=float, default=None)
    parser.add_argument("--clip-value", type=float, default=None)
    parser.add_argument("--save-at-update", type=int, default=None)
    parser.add_argument("--state-dir", default=None)
    parser.add_argument("--resume-from", default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--export", default=None)
    parser.add_argument("--scheduler", action="store_true")
    parser.add_argument("--config", default=None, help="a DeepSpeed config as JSON text")
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(44, 8, generator=generator)
    data = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.02)
    record = Record(args.save_at_update, args.state_dir)
    if args.trainer in ("plain", "everyday"):
        trainer: Trainer = Trainer(model, nn.MSELoss(), optimizer, callbacks=(record,))
    else:
        config = json.loads(args.config) if args.config else None
        trainer = DeepSpeedTrainer(
            model,
            nn.MSELoss(),
            optimizer,
            callbacks=(record,),
            zero_stage=args.stage,
            deepspeed_config=config,
        )
    scheduler = partial(torch.optim.lr_scheduler.StepLR, step_size=2, gamma=0.5)
    trainer.train(
        data,
        num_epochs=args.epochs,
        per_device_batch_size=4,
        gradient_accumulation_steps=args.accumulation,
        gradient_clip_norm=args.clip_norm,
        gradient_clip_value=args.clip_value,
        create_scheduler_fn=scheduler if args.scheduler else None,
        resume_from=args.resume_from,
        seed=1,
    )
    if args.export:
        trainer.save_checkpoint(args.export)
    after: dict[str, Any] = {}
    if args.after:
        trainer.evaluate(data, per_device_batch_size=4)
        after["evaluation_loss"] = trainer.run_history.get_latest_metric("evaluation_loss")
        after["predictions"] = trainer.predict(data, per_device_batch_size=4).tolist()
        try:
            trainer.train(data, num_epochs=1, per_device_batch_size=4)
        except RuntimeError as error:
            after["second_train"] = str(error)
    state_error = ""
    if args.try_state:
        try:
            trainer.save_training_state("state")
        except NotImplementedError as error:
            state_error = str(error)
    weights = trainer.full_model_state_dict()
    result = {
        "train_loss": trainer.run_history.get_metric_values("train_loss_epoch"),
        "num_updates": trainer.num_updates,
        "updates": record.updates,
        "lrs": record.lrs,
        "skipped": record.skipped,
        "weights": {name: tensor.tolist() for name, tensor in weights.items()},
        "engine": type(trainer.engine).__name__,
        "state_error": state_error,
        "after": after,
    }
    pathlib.Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
