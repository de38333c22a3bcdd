"""Train a tiny model and write what the tests compare to OUT_DIR/rank<N>.json.

Run on one process (`python train_tiny.py OUT_DIR ...`) or several
(`ACCELERATE_USE_CPU=1 python -m torch.distributed.run --nproc_per_node 2 train_tiny.py OUT_DIR ...`).
Options: --batch-size B --accumulation A --epochs E --max-steps M --samples N.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from pa_mixins import Trainer, TrainerPlaceholderValues
from tests.conftest import make_model, make_regression_data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    trainer = Trainer(model, nn.MSELoss(), optimizer, callbacks=())
    schedule = functools.partial(
        torch.optim.lr_scheduler.LinearLR,
        start_factor=1.0,
        end_factor=0.0,
        total_iters=TrainerPlaceholderValues.NUM_EPOCHS
        * TrainerPlaceholderValues.NUM_UPDATE_STEPS_PER_EPOCH,
    )
    trainer.train(
        train_dataset=make_regression_data(args.samples),
        eval_dataset=make_regression_data(9, seed=1),
        num_epochs=args.epochs,
        per_device_batch_size=args.batch_size,
        gradient_accumulation_steps=args.accumulation,
        max_num_train_steps=args.max_steps,
        create_scheduler_fn=schedule,
        seed=11,
    )
    config = trainer.run_config
    result = {
        "rank": trainer.process_index,
        "num_processes": trainer.num_processes,
        "weights": [p.detach().flatten().tolist() for p in trainer.model.parameters()],
        "num_updates": trainer.num_updates,
        "updates_per_epoch": config.num_update_steps_per_epoch,
        "num_epochs": config.num_epochs,
        "scheduler_steps": trainer.scheduler.last_epoch,
        "scheduler_total": trainer.scheduler.total_iters,
        "final_lr": optimizer.param_groups[0]["lr"],
        "history": {
            name: trainer.run_history.get_metric_values(name)
            for name in sorted(trainer.run_history.get_metric_names())
        },
    }
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{trainer.process_index}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
