"""Stop decisions taken together on several processes, one scenario per ``train()``.

Run with ``ACCELERATE_USE_CPU=1 python -m torch.distributed.run --standalone
--nproc_per_node 2 dist_stop.py OUT_DIR``. Each process writes OUT_DIR/rank<N>.json: for each
scenario the updates done, the epoch reached, the metrics recorded, the weights and the stop
error that this process saw.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from pa_mixins import Trainer
from pa_mixins.callbacks import (
    EarlyStoppingCallback,
    StopTrainingError,
    TerminateOnNaNCallback,
    TrainerCallback,
)
from tests.conftest import make_model, make_regression_data


class StopWhen(TrainerCallback):
    """Raise StopTrainingError from ``event`` on process ``rank`` when ``condition`` holds."""

    def __init__(self, event: str, rank: int, condition: Callable[..., bool]) -> None:
        self.event, self.rank, self.condition = event, rank, condition
        setattr(self, event, self._maybe_stop)

    def _maybe_stop(self, trainer: Any, **kwargs: Any) -> None:
        if trainer.process_index == self.rank and self.condition(trainer, **kwargs):
            raise StopTrainingError(f"stopped by {self.event} on process {self.rank}")


class Record(TrainerCallback):
    def __init__(self) -> None:
        self.error: str | None = None
        self.error_process: int | None = None

    def on_stop_training_error(self, trainer: Any, **kwargs: Any) -> None:
        error = kwargs.get("error")
        self.error = str(error)
        self.error_process = getattr(error, "process_index", None)


class NanOnRank1(Trainer):
    """Rank 1's loss becomes NaN at update 2 (0-based micro-batch 2 of epoch 0)."""

    def calculate_train_batch_loss(self, batch: Any) -> dict[str, Any]:
        output = super().calculate_train_batch_loss(batch)
        if self.process_index == 1 and self.num_updates == 2:
            output["loss"] = output["loss"] * float("nan")
        return output


def run(name: str, callbacks: tuple[Any, ...], trainer_cls: type = Trainer, **train: Any) -> dict:
    model = make_model()
    record = Record()
    trainer = trainer_cls(
        model,
        nn.MSELoss(),
        torch.optim.SGD(model.parameters(), lr=train.pop("lr", 0.05)),
        callbacks=(*callbacks, record),
    )
    exit_code = None
    try:
        trainer.train(
            make_regression_data(32),
            num_epochs=train.pop("num_epochs", 3),
            eval_dataset=make_regression_data(9, seed=1),
            per_device_batch_size=2,
            seed=3,
            **train,
        )
    except SystemExit as exit_:
        exit_code = exit_.code
    history = trainer.run_history
    return {
        "num_updates": trainer.num_updates,
        "epochs_completed": trainer.epochs_completed,
        "metrics": {n: history.get_metric_values(n) for n in sorted(history.get_metric_names())},
        "weights": [p.detach().flatten().tolist() for p in trainer.model.parameters()],
        "error": record.error,
        "error_process": record.error_process,
        "exit_code": exit_code,
        "nan_triggered": [c.triggered for c in callbacks if isinstance(c, TerminateOnNaNCallback)],
    }


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    results: dict[str, Any] = {}
    # 32 samples, batch 2 on 2 processes: 8 updates per epoch.
    results["step_end"] = run(
        "step_end", (StopWhen("on_train_step_end", 1, lambda t, step, **_: step == 3),)
    )
    results["optimizer_step_end"] = run(
        "optimizer_step_end",
        (StopWhen("on_optimizer_step_end", 0, lambda t, num_updates, **_: num_updates == 5),),
    )
    results["nan"] = run("nan", (TerminateOnNaNCallback(),), trainer_cls=NanOnRank1)
    results["train_epoch_end"] = run(
        "train_epoch_end",
        (StopWhen("on_train_epoch_end", 1, lambda t, **_: t.epochs_completed == 1),),
    )
    results["eval_step_end"] = run(
        "eval_step_end", (StopWhen("on_eval_step_end", 0, lambda t, **_: True),)
    )
    # lr=0: the eval loss never improves, so patience 2 stops after epoch 3 of 6.
    results["early_stopping"] = run(
        "early_stopping",
        (EarlyStoppingCallback(early_stopping_patience=2),),
        lr=0.0,
        num_epochs=6,
    )

    class SigtermOnRank1(TrainerCallback):
        def on_optimizer_step_end(self, trainer: Any, num_updates: int, **kwargs: Any) -> None:
            if trainer.process_index == 1 and num_updates == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    results["sigterm"] = run("sigterm", (SigtermOnRank1(),))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
