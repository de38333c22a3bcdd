"""Raw FSDP2 (``fully_shard``) on CPU processes (gloo) with pa_mixins.sharded_state, for
tests/test_sharded_state.py.

``sharded_state_run.py OUT_DIR MODE`` under ``torchrun --nproc_per_node N`` (tests/scripts/
fsdp_run.py also runs ``train`` and ``resume`` after its trainer, in the same processes, to
save the time of a launch), or in one process without a process group (:func:`load_plain`):

* ``train``: 6 AdamW updates of a small sharded model, each process on its own batches;
  saves the sharded state before the first update (``OUT_DIR/state0``) and after the third
  (``OUT_DIR/state3``), writes the full export ``OUT_DIR/export.pt`` at the end.
* ``resume``: fresh models and optimizers load ``state3`` and ``state0`` and train the
  remaining updates.

The first process writes ``OUT_DIR/<name>.pt``: full weights and optimizer state (gathered),
``weights_only``-loadable.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from pa_mixins.sharded_state import (
    full_model_state_dict,
    load_sharded_state,
    save_sharded_state,
)

UPDATES = 6
SAVE_AFTER = 3


class Net(nn.Module):
    """Two shardable blocks and a head; ``unused`` never gets a gradient (no optimizer state)."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.block2 = nn.Sequential(nn.Linear(16, 16), nn.ReLU())
        self.head = nn.Linear(16, 1)
        self.unused = nn.Linear(3, 3)
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.block1(x))) * self.scale


def build(shard: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = Net()
    if shard:
        from torch.distributed.fsdp import fully_shard

        fully_shard(model.block1)
        fully_shard(model.block2)
        fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    return model, optimizer


def update(model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    generator = torch.Generator().manual_seed(1000 * step + dist.get_rank())
    x = torch.randn(4, 8, generator=generator)
    loss = nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Full weights and optimizer state (on the first process; collective)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    optim = get_optimizer_state_dict(model, optimizer, options=options)
    return {"weights": full_model_state_dict(model), "optimizer": optim.get("state", {})}


def write(out: pathlib.Path, name: str, data: dict[str, Any]) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        torch.save(data, out / f"{name}.pt")


def train(out: pathlib.Path) -> None:
    model, optimizer = build(shard=True)
    save_sharded_state(out / "state0", model, optimizer, write_index=dist.get_rank() == 0)
    empty_after_save = not optimizer.state
    for step in range(UPDATES):
        update(model, optimizer, step)
        if step + 1 == SAVE_AFTER:
            write(out, "at_save", snapshot(model, optimizer))
            save_sharded_state(out / "state3", model, optimizer, write_index=dist.get_rank() == 0)
    final = snapshot(model, optimizer)
    final["empty_after_save"] = empty_after_save
    write(out, "uninterrupted", final)
    export = full_model_state_dict(model, keep=dist.get_rank() == 0)
    if dist.get_rank() == 0:
        torch.save({"model_state_dict": export}, out / "export.pt")
    else:
        assert not export, "only the keeping process holds the export"


def resume(out: pathlib.Path) -> None:
    model, optimizer = build(shard=True)
    load_sharded_state(out / "state3", model, optimizer)
    for step in range(SAVE_AFTER, UPDATES):
        update(model, optimizer, step)
    write(out, "resumed3", snapshot(model, optimizer))

    model, optimizer = build(shard=True)
    load_sharded_state(out / "state0", model, optimizer)
    no_state_after_load = not optimizer.state
    for step in range(UPDATES):
        update(model, optimizer, step)
    resumed0 = snapshot(model, optimizer)
    resumed0["no_state_after_load"] = no_state_after_load
    write(out, "resumed0", resumed0)


def load_plain(out: pathlib.Path) -> dict[str, Any]:
    """``state3`` loaded into a plain model and optimizer, in this process (no process group:
    DCP reads every shard)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model, optimizer = build(shard=False)
    load_sharded_state(out / "state3", model, optimizer)
    return {
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
        "optimizer": get_optimizer_state_dict(model, optimizer)["state"],
    }


def main() -> None:
    out, mode = pathlib.Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    {"train": train, "resume": resume}[mode](out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
