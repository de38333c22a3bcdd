"""The torchmetrics recipe of docs/logging.md, run on several processes with two evaluation
sets whose sizes do not divide evenly (tests/test_metrics_recipe.py).

Run with ``ACCELERATE_USE_CPU=1 python -m torch.distributed.run --standalone
--nproc_per_node 2 dist_metrics_recipe.py OUT_DIR``. Each process writes OUT_DIR/rank<N>.json
(its run history); the first also writes the final weights (OUT_DIR/model.pt) and the run's
CSV tracker folder under OUT_DIR/runs.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score  # noqa: E402

from pa_mixins import Trainer  # noqa: E402

NUM_CLASSES = 3


def recipe() -> Any:
    """The ``TorchMetricsCallback`` class of docs/logging.md, as written there."""
    text = (ROOT / "docs" / "logging.md").read_text()
    block = re.search(r"<!-- test: torchmetrics-callback -->\n```python\n(.*?)```", text, re.DOTALL)
    assert block is not None
    namespace: dict[str, Any] = {"__name__": "docs_torchmetrics_callback"}
    exec(compile(block.group(1), "docs/logging.md", "exec"), namespace)
    return namespace["TorchMetricsCallback"]


def make_data(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()  # three classes, learnable
    return TensorDataset(x, y)


SETS = {"val": (37, 1), "small": (5, 2)}  # samples, seed: 37 = 19 + 18 on two processes


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    callback = recipe()(
        {
            "accuracy": MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro"),
            "f1": MulticlassF1Score(num_classes=NUM_CLASSES, average="macro"),
        }
    )
    torch.manual_seed(0)
    model = nn.Linear(4, NUM_CLASSES)
    trainer = Trainer(
        model,
        nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=0.2),
        callbacks=(callback,),
        log_with="csv",
        project_dir=out / "runs",
    )
    eval_sets = {name: make_data(n, seed) for name, (n, seed) in SETS.items()}
    trainer.train(
        train_dataset=make_data(40, 0),
        eval_dataset=eval_sets,
        num_epochs=2,
        per_device_batch_size=4,
        seed=0,
    )
    trainer.evaluate(per_device_batch_size=3)  # the same sets, another batch size
    history = {
        name: [float(v) for v in trainer.run_history.get_metric_values(name)]
        for name in sorted(trainer.run_history.get_metric_names())
    }
    tracking = trainer.tracking_callback
    assert tracking is not None
    result = {
        "history": history,
        "processes": trainer.num_processes,
        "run_name": tracking.current_run_name,
    }
    (out / f"rank{trainer.process_index}.json").write_text(json.dumps(result))
    if trainer.is_world_process_zero:
        torch.save(trainer.get_model().state_dict(), out / "model.pt")


if __name__ == "__main__":
    main()
