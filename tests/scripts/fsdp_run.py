"""An FSDPTrainer run (or the plain Trainer's, for reference), for tests/test_sharded_state.py
(CPU) and tests/test_gpu_engines.py (GPU). Start it with torchrun, one process per device
(Accelerate sets FSDP up only under a launcher).

``fsdp_run.py OUT.json [--trainer fsdp|plain] [--plain-first] [--accumulation A]
[--clip-norm C] [--save-at-update N --state-dir D] [--resume-from D] [--epochs E]
[--export PATH] [--reload-check PATH] [--scheduler] [--mixed-precision P]``: trains a small MLP with a fixed seed;
the first process writes the run's losses, update count, learning rates and final weights (as
lists) to OUT.json. ``--plain-first``: the plain ``Trainer`` trains the same run first, in the
same processes, in fp32 (saving, resuming and exporting nothing); its record is OUT.json's
``plain``. ``--reload-check PATH``: after the run, ``load_checkpoint`` of a fresh model's
weights (written to PATH) into the sharded model; OUT.json's ``reloaded`` is what the model
then holds (the trained weights are loaded back from ``--export`` afterwards).

``--raw-train DIR`` / ``--raw-resume DIR``: afterwards, in the same processes, run
tests/scripts/sharded_state_run.py's ``train`` / ``resume`` (raw ``fully_shard``) into DIR.

``--without-deepspeed``: see :func:`without_deepspeed`.

``--cpu-fsdp``: Accelerate sets FSDP up on GPUs only (on CPU processes it silently trains with
DDP, which the adapter refuses). For the CPU tests this flag makes Accelerate's state say FSDP
on CPU processes (gloo), so that Accelerate's own FSDP2 preparation (``fully_shard``, the
optimizer's parameters switched to the shards, ``AcceleratedOptimizer``) runs unchanged.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
from functools import partial
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))


def force_fsdp_on_cpu() -> None:
    """Make Accelerate's state FSDP where it would set CPU processes up as MULTI_CPU."""
    import accelerate.state as accelerate_state
    from accelerate.utils import DistributedType

    original = accelerate_state.AcceleratorState.__init__

    def init(self: Any, *args: Any, fsdp_plugin: Any = None, **kwargs: Any) -> None:
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            # AcceleratorState() copies the process state in again each time it is created.
            accelerate_state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    accelerate_state.AcceleratorState.__init__ = init  # type: ignore[method-assign]


def without_deepspeed() -> None:
    """Accelerate's FSDP2 preparation imports DeepSpeed, when installed, only to recognise
    its engine when unwrapping the model (seven seconds per process on the test machine; a
    wheel carried without its dependencies may not import at all): these runs have none."""
    import accelerate.utils.other as accelerate_other

    accelerate_other.is_deepspeed_available = lambda: False  # type: ignore[attr-defined]


def load_script(name: str) -> Any:
    """A module of tests/scripts, by its path."""
    path = pathlib.Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train(args: argparse.Namespace, kind: str) -> dict[str, Any] | None:
    """Train a fresh model with the ``kind`` of trainer (``"fsdp"`` or ``"plain"``); the run's
    record on the first process, ``None`` on the others."""
    from pa_mixins import FSDPTrainer, Trainer
    from pa_mixins.callbacks import TrainerCallback

    engine = kind == "fsdp"

    class Record(TrainerCallback):
        """Requests a training state inside an accumulation group once ``save_at_update``
        updates are done, and records each update's count and learning rate."""

        def __init__(self) -> None:
            self.save_at_update = args.save_at_update if engine else None
            self.updates: list[int] = []
            self.lrs: list[float] = []

        def on_optimizer_step_end(self, trainer: Any, num_updates: int, **kwargs: Any) -> None:
            self.updates.append(num_updates)
            self.lrs.append(trainer.optimizer.param_groups[0]["lr"])

        def on_train_step_end(self, trainer: Any, step: int, **kwargs: Any) -> None:
            if self.save_at_update is not None and trainer.num_updates == self.save_at_update:
                if step % 3 == 0:  # mid-group when accumulating 3
                    trainer.save_training_state(args.state_dir)
                    self.save_at_update = None

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(44, 8, generator=generator)
    data = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.02)
    record = Record()
    options: dict[str, Any] = {"callbacks": (record,)}
    if args.mixed_precision and engine:
        options["mixed_precision"] = args.mixed_precision
    trainer_class = FSDPTrainer if engine else Trainer
    trainer = trainer_class(model, nn.MSELoss(), optimizer, **options)
    scheduler = partial(torch.optim.lr_scheduler.StepLR, step_size=2, gamma=0.5)
    trainer.train(
        data,
        num_epochs=args.epochs,
        per_device_batch_size=2,
        gradient_accumulation_steps=args.accumulation,
        gradient_clip_norm=args.clip_norm,
        create_scheduler_fn=scheduler if args.scheduler else None,
        resume_from=args.resume_from if engine else None,
        seed=1,
    )
    if args.export and engine:
        trainer.save_checkpoint(args.export)
    reloaded = None
    if args.reload_check and engine:
        # load_checkpoint into the sharded model: other weights (a fresh model's) come back.
        torch.manual_seed(123)
        other = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))
        path = pathlib.Path(args.reload_check)
        if trainer.is_world_process_zero:
            torch.save({"model_state_dict": other.state_dict()}, path)
        trainer.wait_for_everyone()
        trainer.load_checkpoint(path, load_optimizer=False)
        reloaded = {k: v.tolist() for k, v in trainer.full_model_state_dict().items()}
        if args.export:  # put the trained weights back for the record below
            trainer.load_checkpoint(args.export, load_optimizer=False)
    weights = trainer.full_model_state_dict()  # every process takes part
    if not trainer.is_world_process_zero:
        return None
    return {
        "train_loss": trainer.run_history.get_metric_values("train_loss_epoch"),
        "num_updates": trainer.num_updates,
        "updates": record.updates,
        "lrs": record.lrs,
        "weights": {name: tensor.tolist() for name, tensor in weights.items()},
        "reloaded": reloaded,
        "model": type(trainer.model).__name__,
        "optimizer": type(trainer.optimizer).__name__,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "num_processes": trainer.num_processes,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--trainer", choices=("fsdp", "plain"), default="fsdp")
    parser.add_argument("--plain-first", action="store_true")
    parser.add_argument("--cpu-fsdp", action="store_true")
    parser.add_argument("--without-deepspeed", action="store_true")
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--clip-norm", type=float, default=None)
    parser.add_argument("--save-at-update", type=int, default=None)
    parser.add_argument("--state-dir", default=None)
    parser.add_argument("--resume-from", default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--export", default=None)
    parser.add_argument("--reload-check", default=None)
    parser.add_argument("--scheduler", action="store_true")
    parser.add_argument("--mixed-precision", default=None)
    parser.add_argument("--raw-train", default=None)
    parser.add_argument("--raw-resume", default=None)
    args = parser.parse_args()
    if args.cpu_fsdp:
        force_fsdp_on_cpu()
    if args.without_deepspeed:
        without_deepspeed()
    plain = train(args, "plain") if args.plain_first else None
    result = train(args, args.trainer)
    if args.raw_train or args.raw_resume:
        raw = load_script("sharded_state_run")
        if args.raw_train:
            raw.train(pathlib.Path(args.raw_train))
        if args.raw_resume:
            raw.resume(pathlib.Path(args.raw_resume))
    if result is not None:
        result["plain"] = plain
        pathlib.Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
