"""ModelEmaCallback, StepBasedEvaluationCallback and LimitEvalStepsCallback on several
processes.

Run with ``ACCELERATE_USE_CPU=1 python -m torch.distributed.run --standalone
--nproc_per_node 2 dist_eval_callbacks.py OUT_DIR BATCH_SIZE`` (or plain ``python`` for one
process). The training batch size per process is BATCH_SIZE (use 2 on two processes and 4 on
one: the same updates); evaluation batches hold 2 samples everywhere. Each process writes
OUT_DIR/rank<N>.json with what tests/test_eval_and_ema_callbacks.py compares.
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from pa_mixins import Trainer
from pa_mixins.callbacks import (
    LimitEvalStepsCallback,
    ModelEmaCallback,
    StepBasedEvaluationCallback,
    TrainerCallback,
)


def make_data(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=generator)
    return TensorDataset(x, y, torch.arange(n))


class Record(TrainerCallback):
    """The update count and the sample indices of each evaluation epoch on this process."""

    def __init__(self) -> None:
        self.updates = 0
        self.evals: list[dict[str, Any]] = []

    def on_optimizer_step_end(self, trainer: Any, num_updates: int = 0, **kwargs: Any) -> None:
        self.updates = num_updates

    def on_eval_epoch_start(self, trainer: Any, is_intermediate: bool = False, **kwargs: Any):
        self.evals.append({"update": self.updates, "intermediate": is_intermediate, "samples": []})

    def on_eval_step_end(self, trainer: Any, batch: Any, batch_output: Any, **kwargs: Any) -> None:
        self.evals[-1]["samples"].extend(batch[2].tolist())


class MseLoss(nn.Module):
    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(outputs, targets)


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    batch_size = int(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    record = Record()
    ema = ModelEmaCallback(decay=0.5, save_path=str(out / "ema.pt"))
    trainer = Trainer(
        model,
        MseLoss(),
        torch.optim.SGD(model.parameters(), lr=0.05),
        callbacks=(record, LimitEvalStepsCallback(3), StepBasedEvaluationCallback(2), ema),
    )
    trainer.train(
        make_data(16, seed=3),
        num_epochs=2,
        eval_dataset=make_data(10, seed=1),  # 5 evaluation batches of 2 samples
        per_device_batch_size=batch_size,
        eval_dataloader_kwargs={"batch_size": 2},
        seed=5,
    )
    assert ema.ema_model is not None
    result = {
        "num_processes": trainer.num_processes,
        "history": {
            name: trainer.run_history.get_metric_values(name)
            for name in sorted(trainer.run_history.get_metric_names())
        },
        "evals": record.evals,
        "ema": [value.flatten().tolist() for value in ema.ema_model.module.state_dict().values()],
    }
    (out / f"rank{trainer.process_index}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
