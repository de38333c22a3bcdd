"""``notebook_launcher(fn, num_processes=2)`` on CPU: forks 2 gloo processes that train.

``dist_notebook.py OUT_DIR``: each forked process writes OUT_DIR/rank<N>.json.
"""

from __future__ import annotations

import json
import pathlib
import sys

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from pa_mixins import Trainer, notebook_launcher
from tests.conftest import make_model, make_regression_data


def train(out_dir: str) -> None:
    torch.set_num_threads(1)
    model = make_model()
    trainer = Trainer(
        model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.05), callbacks=()
    )
    trainer.train(make_regression_data(32), num_epochs=1, per_device_batch_size=4, seed=0)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "num_processes": trainer.num_processes,
        "num_updates": trainer.num_updates,
        "weights": [p.detach().flatten().tolist() for p in trainer.model.parameters()],
    }
    (out / f"rank{trainer.process_index}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    notebook_launcher(train, args=(sys.argv[1],), num_processes=2, use_port=sys.argv[2])
