"""The stop flag carried in DDP's gradient all-reduce (``pa_mixins.distributed.carry_stop_flag``)
on a model whose gradients fill several buckets: the gradients equal those of DDP's own
all-reduce, and the flags' sum comes back.

``dist_stop_flag.py OUT_DIR``, under torchrun with 2 processes (gloo): each process writes
OUT_DIR/rank<R>.json with the indices of the buckets the hook reduced, the largest gradient
difference and the flag sums of two backward passes (process 1 holds a stop in the second).
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import pa_mixins.distributed as distributed
from pa_mixins.callback_base import StopTrainingError

BUCKETS: list[int] = []
_hook = distributed._stop_flag_hook


def counting_hook(carrier: Any, bucket: Any) -> Any:
    BUCKETS.append(bucket.index())
    return _hook(carrier, bucket)


counting_hook.__annotations__ = _hook.__annotations__
distributed._stop_flag_hook = counting_hook  # type: ignore[assignment]


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 600), nn.ReLU(), nn.Linear(600, 600), nn.Linear(600, 4))
    twin = nn.Sequential(nn.Linear(16, 600), nn.ReLU(), nn.Linear(600, 600), nn.Linear(600, 4))
    twin.load_state_dict(model.state_dict())
    # 1.4 MB of weights in buckets of at most 1 MB: bucket 0 and others both run.
    carried = DistributedDataParallel(model, bucket_cap_mb=1)
    plain = DistributedDataParallel(twin, bucket_cap_mb=1)
    carrier = distributed.carry_stop_flag(carried)
    assert carrier is not None
    sums = []
    difference = 0.0
    for step in range(2):
        x = torch.randn(8, 16, generator=torch.Generator().manual_seed(10 * step + rank))
        carrier.arm(StopTrainingError("stop") if step == 1 and rank == 1 else None)
        carried(x).square().mean().backward()
        plain(x).square().mean().backward()
        sums.append(carrier.take()[1])
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            assert a.grad is not None and b.grad is not None
            difference = max(difference, float((a.grad - b.grad).abs().max()))
    record = {"sums": sums, "difference": difference, "buckets": BUCKETS}
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
