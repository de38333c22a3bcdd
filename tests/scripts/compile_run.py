"""Train the tiny model with ``compile=`` on one process or several and write what
tests/test_compile.py compares to OUT_DIR/rank<N>.json.

``ACCELERATE_USE_CPU=1 python -m torch.distributed.run --nproc_per_node 2 compile_run.py OUT_DIR
--backend eager --batch-size 4 --accumulation 2``
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from pa_mixins import Trainer, TrainerCallback
from tests.conftest import make_model, make_regression_data


class RecordModels(TrainerCallback):
    """Records the class names of the model the training and evaluation steps run."""

    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = {"train": set(), "eval": set()}

    @staticmethod
    def _names(model: nn.Module) -> str:
        inner = getattr(model, "_orig_mod", None)
        return type(model).__name__ + ("" if inner is None else f"({type(inner).__name__})")

    def on_train_step_start(self, trainer: Any, **kwargs: Any) -> None:
        self.seen["train"].add(self._names(trainer.model))

    def on_eval_step_start(self, trainer: Any, **kwargs: Any) -> None:
        self.seen["eval"].add(self._names(trainer.model))


class SaveAfterFirstEpoch(TrainerCallback):
    """Saves a checkpoint in the middle of the run (every process calls save_checkpoint)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer: Any, **kwargs: Any) -> None:
        if trainer.run_history.current_epoch == 1:
            trainer.save_checkpoint(self.path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--backend", default=None, help="compile with this backend (else off)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--checkpoint", default=None, help="save one here after the 1st epoch")
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = make_model()
    recorder = RecordModels()
    trainer = Trainer(
        model,
        nn.MSELoss(),
        torch.optim.SGD(model.parameters(), lr=0.05),
        callbacks=(recorder,)
        + (() if args.checkpoint is None else (SaveAfterFirstEpoch(args.checkpoint),)),
        compile=None if args.backend is None else {"backend": args.backend},
    )
    trainer.train(
        train_dataset=make_regression_data(64),
        # 9 samples: the processes evaluate different numbers of batches
        eval_dataset=make_regression_data(9, seed=1),
        num_epochs=args.epochs,
        per_device_batch_size=args.batch_size,
        gradient_accumulation_steps=args.accumulation,
        seed=11,
    )
    result = {
        "rank": trainer.process_index,
        "num_processes": trainer.num_processes,
        "model_is_the_users": trainer.model is model,
        "seen": {phase: sorted(names) for phase, names in recorder.seen.items()},
        "weights": [p.detach().flatten().tolist() for p in model.parameters()],
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
