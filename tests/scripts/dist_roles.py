"""Process roles under a real launch: the decorators, ``trainer.device`` and ``trainer.print``
never pin the processes to "rank 0 of 1".

Run with ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 dist_roles.py
OUT_DIR`` (or torchrun). Each process writes OUT_DIR/rank<N>.json.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import warnings
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from pa_mixins import Trainer
from pa_mixins.callbacks import ConvertSyncBatchNormCallback
from pa_mixins.utils import (
    local_process_zero_first,
    local_process_zero_only,
    world_process_zero_only,
)
from tests.conftest import make_model, make_regression_data


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    result: dict[str, Any] = {"env_rank": rank, "env_world_size": int(os.environ["WORLD_SIZE"])}

    @world_process_zero_only
    def main_only() -> str:
        return "ran"

    # Before any Accelerator: the decorators cannot wait for the others, and say so (instead
    # of creating a PartialState that would make this launch "rank 0 of 1").
    try:
        main_only()
        result["early_decorator"] = "no error"
    except RuntimeError as error:
        result["early_decorator"] = str(error)

    model = make_model()
    trainer = Trainer(model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.05))
    result["device"] = str(trainer.device)
    result["num_processes"] = trainer.num_processes
    result["process_index"] = trainer.process_index
    result["is_world_process_zero"] = trainer.is_world_process_zero
    result["is_local_process_zero"] = trainer.is_local_process_zero
    trainer.print("PRINTED-ONCE-PER-MACHINE")

    result["world_zero_only"] = main_only()

    @local_process_zero_only
    def local_only() -> int:
        return rank

    result["local_zero_only"] = local_only()

    marker = out / "prepared_by_first"

    @local_process_zero_first
    def prepare() -> bool:
        existed = marker.exists()
        marker.touch()
        return existed

    result["found_first_process_file"] = prepare()
    trainer.train(make_regression_data(32), num_epochs=1, per_device_batch_size=4, seed=0)
    result["trained_num_processes"] = trainer.run_config.num_processes
    result["weights"] = [p.detach().flatten().tolist() for p in trainer.model.parameters()]

    # ConvertSyncBatchNormCallback on CPU: SyncBatchNorm cannot train here; it says so.
    torch.manual_seed(0)
    bn_model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    bn_trainer = Trainer(
        bn_model,
        nn.MSELoss(),
        torch.optim.SGD(bn_model.parameters(), lr=0.05),
        callbacks=(ConvertSyncBatchNormCallback,),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bn_trainer.train(make_regression_data(16), num_epochs=1, per_device_batch_size=4)
    result["sync_bn_warnings"] = [
        str(w.message) for w in caught if "SyncBatchNorm" in str(w.message)
    ]
    result["bn_types"] = [type(m).__name__ for m in bn_trainer.model.modules()]
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
