"""Evaluation and prediction of an ``FSDPTrainer`` whose processes get different numbers of
evaluation batches, for tests/test_fsdp_evaluation.py. Start it with torchrun, two processes
(on the CPU with ``--cpu-fsdp --without-deepspeed``: see tests/scripts/fsdp_run.py).

``fsdp_eval_run.py OUT_DIR [--cpu-fsdp] [--without-deepspeed]``: a small MLP, sharded layer by
layer (``size_based_wrap``, so each forward pass all-gathers the layers' parameters), trains
one epoch and is evaluated after it on two sets: ``odd`` (9 samples, batch 2: process 0 gets 3
batches, process 1 gets 2) and ``one`` (1 sample: process 1 gets none). Then ``evaluate()`` of
``odd``, the same with ``LimitEvalStepsCallback(1)`` (process 0 runs one batch, process 1
none, though its loader has some), and ``predict()`` of ``odd`` (contiguous shares of 5 and 4
samples: 3 batches and 2). Last, an ``IterableDataset`` given to ``evaluate()`` and as
``train()``'s evaluation set (of a new trainer), both refused before anything runs, and a
second ``train()`` of the trained trainer, refused; the new trainer then trains as the first
one did (a second FSDP ``Accelerator`` in the same processes).

Each process writes ``OUT_DIR/rank<i>.json``: the run history, for each evaluation epoch (in
order) its set, the evaluation steps and samples its callbacks saw and the model's forward
passes, the predictions, the refusals' messages, the new trainer's evaluation loss and
(process 0) the full weights after training.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

#: the samples of each evaluation set
EVAL_SAMPLES = {"odd": 9, "one": 1}


def make_model() -> nn.Sequential:
    """The model, with fixed weights (three linear layers: with ``min_num_params=50`` FSDP
    shards the first two on their own, the rest with the root)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1)
    )


def make_data(num_samples: int, seed: int) -> torch.utils.data.TensorDataset:
    """``num_samples`` regression samples (8 features, their sum as the target)."""
    x = torch.randn(num_samples, 8, generator=torch.Generator().manual_seed(seed))
    return torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))


def eval_sets() -> dict[str, torch.utils.data.TensorDataset]:
    """The evaluation sets by name."""
    return {name: make_data(size, seed=10 + size) for name, size in EVAL_SAMPLES.items()}


class Stream(torch.utils.data.IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """An iterable evaluation set (refused under FSDP on several processes)."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        data = make_data(4, seed=3)
        for index in range(len(data)):
            yield data[index]


def _load_fsdp_run() -> Any:
    path = pathlib.Path(__file__).with_name("fsdp_run.py")
    spec = importlib.util.spec_from_file_location("fsdp_run", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(out: pathlib.Path) -> None:
    from pa_mixins import FSDPTrainer
    from pa_mixins.callbacks import LimitEvalStepsCallback, TrainerCallback

    class Record(TrainerCallback):
        """Counts, per evaluation epoch, the steps and samples the callbacks see and the
        model's forward passes; sets the batch limit of ``limiter`` when there is one."""

        def __init__(self) -> None:
            self.epochs: list[dict[str, Any]] = []
            self.forwards = 0
            self.limiter: LimitEvalStepsCallback | None = None
            self.train_epochs = 0

        def count_forward(self, *args: Any) -> None:
            self.forwards += 1

        def on_train_epoch_start(self, trainer: Any, **kwargs: Any) -> None:
            self.train_epochs += 1

        def on_eval_epoch_start(self, trainer: Any, **kwargs: Any) -> None:
            self.forwards = 0
            self.epochs.append({"set": trainer.eval_set_name, "steps": 0, "samples": 0})

        def on_eval_step_end(
            self, trainer: Any, batch: Any, batch_output: dict[str, Any], **kwargs: Any
        ) -> None:
            self.epochs[-1]["steps"] += 1
            self.epochs[-1]["samples"] += int(batch_output["batch_size"])

        def on_eval_epoch_end(self, trainer: Any, **kwargs: Any) -> None:
            self.epochs[-1]["forwards"] = self.forwards

        def eval_batch_limit(self, trainer: Any, **kwargs: Any) -> int | None:
            return (
                None if self.limiter is None else self.limiter.eval_batch_limit(trainer, **kwargs)
            )

    record = Record()
    model = make_model()
    model.register_forward_pre_hook(record.count_forward)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.02)
    trainer = FSDPTrainer(
        model,
        nn.MSELoss(),
        optimizer,
        callbacks=(record,),
        fsdp_config={"auto_wrap_policy": "size_based_wrap", "min_num_params": 50},
        process_group_timeout=60,  # a hang fails in a minute
    )
    sets = eval_sets()
    trainer.train(
        make_data(12, seed=0), num_epochs=1, eval_dataset=sets, per_device_batch_size=2, seed=1
    )
    trainer.evaluate(sets["odd"], per_device_batch_size=2)
    record.limiter = LimitEvalStepsCallback(1, limit_intermediate_only=False)
    trainer.evaluate(sets["odd"], per_device_batch_size=2)  # evaluation_loss's second value
    record.limiter = None
    forwards_before = record.forwards
    predictions = trainer.predict(sets["odd"], per_device_batch_size=2)
    predict_forwards = record.forwards - forwards_before
    history = {
        name: trainer.run_history.get_metric_values(name)
        for name in trainer.run_history.get_metric_names()
    }
    weights = trainer.full_model_state_dict()  # every process takes part

    refusals = {}
    epochs_before = len(record.epochs)
    try:
        trainer.evaluate(Stream(), per_device_batch_size=2)
    except ValueError as error:
        refusals["evaluate"] = str(error)
    try:
        trainer.train(make_data(12, seed=0), num_epochs=1)
    except RuntimeError as error:
        refusals["train_again"] = str(error)
    # A new trainer in the same processes (a second FSDP Accelerator): an iterable evaluation
    # set is refused before the first training epoch.
    fresh_model = make_model()
    fresh = FSDPTrainer(
        fresh_model,
        nn.MSELoss(),
        torch.optim.AdamW(fresh_model.parameters(), lr=0.02),
        callbacks=(record,),
        fsdp_config={"auto_wrap_policy": "size_based_wrap", "min_num_params": 50},
    )
    try:
        fresh.train(make_data(12, seed=0), num_epochs=1, eval_dataset=Stream())
    except ValueError as error:
        refusals["train"] = str(error)
    epochs, train_epochs = list(record.epochs), record.train_epochs
    # Then it trains as the first one did (a second FSDP Accelerator in these processes).
    fresh.train(
        make_data(12, seed=0),
        num_epochs=1,
        eval_dataset={"one": sets["one"]},
        per_device_batch_size=2,
        seed=1,
    )
    result = {
        "model": type(trainer.model).__name__,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "forward_is_collective": trainer.forward_is_collective,
        "history": history,
        "fresh_history": fresh.run_history.get_metric_values("eval_loss_epoch_one"),
        "epochs": epochs,
        "predictions": predictions.tolist(),
        "predict_forwards": predict_forwards,
        "weights": {name: tensor.tolist() for name, tensor in weights.items()},
        "refusals": refusals,
        "epochs_after_refusals": len(epochs) - epochs_before,
        "train_epochs": train_epochs,
    }
    (out / f"rank{trainer.process_index}.json").write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--cpu-fsdp", action="store_true")
    parser.add_argument("--without-deepspeed", action="store_true")
    args = parser.parse_args()
    fsdp_run = _load_fsdp_run()
    if args.cpu_fsdp:
        fsdp_run.force_fsdp_on_cpu()
    if args.without_deepspeed:
        fsdp_run.without_deepspeed()
    run(pathlib.Path(args.out))


if __name__ == "__main__":
    main()
