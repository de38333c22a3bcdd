"""Exact distributed evaluation and prediction, and which samples each process trains on.

Run with ``ACCELERATE_USE_CPU=1 python -m torch.distributed.run --standalone
--nproc_per_node 2 dist_eval.py OUT_DIR`` (or plain ``python`` for one process). Each process
writes OUT_DIR/rank<N>.json with what tests/test_distributed.py compares.
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
from pa_mixins.callbacks import TrainerCallback


def make_data(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=generator)
    return TensorDataset(x, y, torch.arange(n))


def make_bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1))


class RecordSamples(TrainerCallback):
    """Which sample indices (third tensor of a batch) this process sees, per phase."""

    def __init__(self) -> None:
        self.train: list[list[int]] = []
        self.eval: list[list[int]] = []

    def on_train_epoch_start(self, trainer: Any, **kwargs: Any) -> None:
        self.train.append([])

    def on_train_step_end(self, trainer: Any, batch: Any, batch_output: Any, **kwargs: Any) -> None:
        self.train[-1].extend(batch[2].tolist())

    def on_eval_epoch_start(self, trainer: Any, **kwargs: Any) -> None:
        self.eval.append([])

    def on_eval_step_end(self, trainer: Any, batch: Any, batch_output: Any, **kwargs: Any) -> None:
        self.eval[-1].extend(batch[2].tolist())


def reference(model: nn.Module, dataset: TensorDataset) -> tuple[float, list[float]]:
    """One process evaluating the whole set with plain PyTorch."""
    x, y, _ = dataset.tensors
    model.eval()
    with torch.no_grad():
        outputs = model(x)
    return nn.functional.mse_loss(outputs, y).item(), outputs.flatten().tolist()


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    torch.set_num_threads(1)
    recorder = RecordSamples()
    model = make_bn_model()
    trainer = Trainer(
        model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.1), callbacks=(recorder,)
    )
    nine, one = make_data(9, seed=1), make_data(1, seed=2)
    # Training: 9 samples, batch 2; evaluation after each epoch on the same 9 samples.
    trainer.train(
        make_data(9, seed=3), num_epochs=2, eval_dataset=nine, per_device_batch_size=2, seed=5
    )
    result: dict[str, Any] = {
        "rank": trainer.process_index,
        "num_processes": trainer.num_processes,
        "train_samples": recorder.train,
        "eval_samples_in_training": recorder.eval,
        "eval_loss_epoch": trainer.run_history.get_metric_values("eval_loss_epoch"),
        "state": {k: v.flatten().tolist() for k, v in trainer.model.state_dict().items()},
    }
    ref_loss, ref_outputs = reference(trainer.model, nine)
    result["reference_loss"], result["reference_outputs"] = ref_loss, ref_outputs
    # evaluate() with an uneven last batch (9 samples, batch 2) and with an empty process.
    recorder.eval.clear()
    trainer.evaluate(nine, per_device_batch_size=2)
    result["evaluation_loss"] = trainer.run_history.get_latest_metric("evaluation_loss")
    result["evaluate_samples"] = recorder.eval
    trainer.evaluate(one, per_device_batch_size=2)
    result["evaluation_loss_one"] = trainer.run_history.get_latest_metric("evaluation_loss")
    result["reference_loss_one"] = reference(trainer.model, one)[0]
    # predict(): all outputs in dataset order, on every process.
    result["predict"] = trainer.predict(nine, per_device_batch_size=2).flatten().tolist()
    result["predict_one"] = trainer.predict(one, per_device_batch_size=4).flatten().tolist()
    result["reference_one"] = reference(trainer.model, one)[1]
    # A trainer without an optimizer predicts the same; dict outputs keep their structure.
    predictor = Trainer(trainer.model, callbacks=())
    result["predict_no_optimizer"] = (
        predictor.predict(nine, per_device_batch_size=3).flatten().tolist()
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{trainer.process_index}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
