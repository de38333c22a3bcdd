"""Issue 11, target 7: ``pa_mixins.Trainer`` against a hand-written loop on a GPU, as one
prepared script (under 5 minutes on one H100/H200; Python 3.12, torch 2.11, accelerate 1.15
there). It also runs on the CPU at tiny sizes (``--device cpu --tiny``), skipping the
CUDA-only checks, so CI keeps it working.

Models (built from the configs below; nothing is downloaded):

* ``mlp``: 784-1024-1024-10 (ReLU), batch 256, random features;
* ``transformer``: token embedding + learned positions, ``nn.TransformerEncoder`` (4 pre-norm
  layers, d_model 256, 4 heads, feed-forward 1024, dropout 0.1), mean pooling, a linear head;
  sequences of 128 random tokens (vocabulary 1,000), batch 32, 10 classes.

Both: ``CrossEntropyLoss``, ``AdamW(lr=1e-3)``, a ``TensorDataset`` on the host, one epoch =
``--steps`` steps.

What is measured:

1. **Step time, Trainer / plain loop**, per model, in fp32 and bf16, ``compile`` off (and on:
   ``--compile``, bf16 only by default, last since it is the slowest). The plain loop:
   ``DataLoader(shuffle=True, num_workers=0, pin_memory=True)``, batches moved with
   ``.to(device, non_blocking=True)``, ``zero_grad()``, forward and loss under
   ``torch.autocast(device, dtype=torch.bfloat16)`` for bf16, ``backward()``, ``step()``. The
   Trainer: ``Trainer(model, loss, optimizer, callbacks=get_default_callbacks(
   progress_bar=False), mixed_precision="no"|"bf16")``, ``train(...,
   train_dataloader_kwargs={"num_workers": 0})`` (the same loader settings as the plain loop;
   on a GPU its default would start worker processes, which only add inter-process copies for
   data already in memory). One warm-up epoch, then ``--repeats`` timed epochs on each side
   (the Trainer: one ``train()`` of ``1 + repeats`` epochs, each ``_run_train_epoch`` timed by
   a subclass); every timed epoch starts and ends with ``torch.cuda.synchronize()``. The ratio
   is of the median epoch times.
   ``compile`` on: the plain loop trains ``torch.compile(model)``; the Trainer gets
   ``Trainer(..., compile=True)`` when it has that option (checked first: without it the
   Trainer side is skipped and the record says so).
2. **Peak memory** (``torch.cuda.max_memory_allocated``, from a reset after the previous
   run was freed, minus what was allocated before the model was built) of each side's timing
   run.
3. **Device-to-host synchronisations per step** (CUDA only), per model, in fp32, bf16 and fp16,
   with ``compile`` off. ``torch.cuda.set_sync_debug_mode`` is switched on at the first
   ``on_train_step_start`` of an epoch (a callback added last) and off in ``train_epoch_end``
   (before the epoch's one read of its mean loss), so it covers every step and only the steps:

   * ``strict`` (fp32, bf16): mode ``"error"``, interval metrics off
     (``log_every_n_steps=None``, since they read the device once per interval by design):
     passes when the epoch runs through; otherwise the error and the Python frames that
     caused it are recorded;
   * ``counted`` (fp32, bf16, fp16): mode ``"warn"``, the default ``log_every_n_steps=50``;
     the warnings are counted per step and by the line that made them (fp16: the gradient
     scaler reads its inf check once per update, the one allowed sync);
   * both again with Accelerate's ``DataLoaderConfiguration(non_blocking=True)`` (through
     ``accelerator_kwargs``), which shows whether a sync comes from the loader's blocking
     host-to-device copy (a blocking copy waits for the queued GPU work, so it is flagged);
   * the plain loop, counted, for reference.

   On the CPU the same code runs as a dry run (one model, fp32; no sync can be seen there),
   so CI keeps it working.

Every section is timed and the script stops starting new ones after ``--budget-s`` seconds
(default 240); the results are written after each section, so a killed run keeps the finished
ones.

Usage::

    python benchmarks/gpu_perf.py                           # on the GPU host, ~3-4 minutes
    python benchmarks/gpu_perf.py --device cpu --tiny --out /tmp/x    # CI (seconds)
    # options: --models mlp --precisions bf16 --compile off|on|auto --steps 100 --repeats 5

Results: ``gpu_perf.json`` and ``gpu_perf.md`` in ``--out`` (default ``benchmarks/results``;
``gpu_checks.sh`` passes its output folder).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_out_argument, base_record, header_lines, write_results

#: the model configs; ``--tiny`` uses the ``tiny`` ones
CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "mlp": {"in_features": 784, "hidden": (1024, 1024), "classes": 10, "batch": 256},
        "transformer": {
            "vocab": 1000,
            "seq_len": 128,
            "d_model": 256,
            "nhead": 4,
            "layers": 4,
            "ff": 1024,
            "dropout": 0.1,
            "classes": 10,
            "batch": 32,
        },
    },
    "tiny": {
        "mlp": {"in_features": 32, "hidden": (16,), "classes": 10, "batch": 8},
        "transformer": {
            "vocab": 50,
            "seq_len": 8,
            "d_model": 16,
            "nhead": 2,
            "layers": 1,
            "ff": 32,
            "dropout": 0.1,
            "classes": 10,
            "batch": 4,
        },
    },
}


# ------------------------------------------------------------------------------------------
# models and data
# ------------------------------------------------------------------------------------------


def build_model(name: str, cfg: dict[str, Any]) -> Any:
    """The model of ``name`` from its config (seeded)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if name == "mlp":
        layers: list[nn.Module] = []
        width = cfg["in_features"]
        for size in cfg["hidden"]:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        return nn.Sequential(*layers, nn.Linear(width, cfg["classes"]))

    class SmallTransformer(nn.Module):
        """Embedding + positions, a TransformerEncoder, mean pooling, a linear head."""

        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(cfg["vocab"], cfg["d_model"])
            self.pos = nn.Parameter(torch.zeros(1, cfg["seq_len"], cfg["d_model"]))
            layer = nn.TransformerEncoderLayer(
                cfg["d_model"],
                cfg["nhead"],
                cfg["ff"],
                dropout=cfg["dropout"],
                batch_first=True,
                norm_first=True,
            )
            self.encoder = nn.TransformerEncoder(layer, cfg["layers"], enable_nested_tensor=False)
            self.head = nn.Linear(cfg["d_model"], cfg["classes"])

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder(self.embed(tokens) + self.pos)
            return self.head(hidden.mean(dim=1))

    return SmallTransformer()


def build_dataset(name: str, cfg: dict[str, Any], steps: int) -> Any:
    """``steps`` batches of random inputs and labels, on the host."""
    import torch

    n = steps * cfg["batch"]
    generator = torch.Generator().manual_seed(0)
    if name == "mlp":
        x = torch.randn(n, cfg["in_features"], generator=generator)
    else:
        x = torch.randint(0, cfg["vocab"], (n, cfg["seq_len"]), generator=generator)
    y = torch.randint(0, cfg["classes"], (n,), generator=generator)
    return torch.utils.data.TensorDataset(x, y)


def trainer_supports_compile() -> bool:
    """Whether this ``pa_mixins.Trainer`` takes ``compile=True`` (a newer option)."""
    from torch import nn

    from pa_mixins import Trainer

    try:
        Trainer(nn.Linear(1, 1), nn.MSELoss(), None, callbacks=(), compile=True)
    except TypeError:
        return False
    return True


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


class Device:
    """The device and its synchronisation / memory calls (no-ops on the CPU)."""

    def __init__(self, name: str) -> None:
        import torch

        self.torch = torch
        self.type = name
        self.device = torch.device(name)
        self.cuda = name == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.empty_cache()

    def reset_peak(self) -> int:
        """Reset the peak and return what is allocated now."""
        if not self.cuda:
            return 0
        self.free()
        self.torch.cuda.reset_peak_memory_stats()
        return int(self.torch.cuda.memory_allocated())

    def peak_since(self, base: int) -> int | None:
        if not self.cuda:
            return None
        return int(self.torch.cuda.max_memory_allocated()) - base

    def set_sync_debug_mode(self, mode: str | int) -> None:
        """``torch.cuda.set_sync_debug_mode`` on CUDA; nothing on the CPU (the CPU dry run
        goes through the same code and can see no syncs)."""
        if self.cuda:
            self.torch.cuda.set_sync_debug_mode(mode)

    def autocast(self, precision: str) -> Any:
        if precision == "bf16":
            return self.torch.autocast(self.type, dtype=self.torch.bfloat16)
        if precision == "fp16":
            return self.torch.autocast(self.type, dtype=self.torch.float16)
        return contextlib.nullcontext()


def _frames(error: BaseException, keep: int = 6) -> list[str]:
    """The innermost frames of ``error``'s traceback, as ``file:line in function``."""
    frames = traceback.extract_tb(error.__traceback__)[-keep:]
    return [f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in frames]


def _bench_trainer_class() -> Any:
    """A ``Trainer`` subclass that times each training epoch (synchronising before and after)
    and calls ``self.bench_close()``, when set, first thing in ``train_epoch_end``."""
    from pa_mixins import Trainer

    class BenchTrainer(Trainer):
        bench_device: Device | None = None
        bench_epoch_s: list[float]
        bench_close: Callable[[], None] | None = None

        def _run_train_epoch(self, train_dl: Any) -> None:
            assert self.bench_device is not None
            self.bench_device.sync()
            start = time.perf_counter()
            super()._run_train_epoch(train_dl)
            self.bench_device.sync()
            self.bench_epoch_s.append(time.perf_counter() - start)

        def train_epoch_end(self) -> None:
            if self.bench_close is not None:
                self.bench_close()
            super().train_epoch_end()

    return BenchTrainer


# ------------------------------------------------------------------------------------------
# 1 + 2: step time and peak memory
# ------------------------------------------------------------------------------------------


def time_plain(
    dev: Device, name: str, cfg: dict[str, Any], precision: str, compile_: bool, args: Any
) -> dict[str, Any]:
    """Warm-up epoch + ``repeats`` timed epochs of the hand-written loop."""
    import torch
    from torch.utils.data import DataLoader

    dataset = build_dataset(name, cfg, args.steps)
    base = dev.reset_peak()
    model = build_model(name, cfg).to(dev.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if compile_:
        model = torch.compile(model)
    loss_func = torch.nn.CrossEntropyLoss()
    dl = DataLoader(
        dataset, batch_size=cfg["batch"], shuffle=True, num_workers=0, pin_memory=dev.cuda
    )
    model.train()
    epochs: list[float] = []
    start_all = time.perf_counter()
    for epoch in range(1 + args.repeats):
        dev.sync()
        start = time.perf_counter()
        for xb, yb in dl:
            xb = xb.to(dev.device, non_blocking=True)
            yb = yb.to(dev.device, non_blocking=True)
            optimizer.zero_grad()
            with dev.autocast(precision):
                loss = loss_func(model(xb), yb)
            loss.backward()
            optimizer.step()
        dev.sync()
        if epoch > 0:
            epochs.append(time.perf_counter() - start)
    result = {
        "epoch_s": epochs,
        "median_epoch_s": statistics.median(epochs),
        "median_step_ms": statistics.median(epochs) / len(dl) * 1e3,
        "steps": len(dl),
        "peak_memory_bytes": dev.peak_since(base),
        "wall_s": time.perf_counter() - start_all,
        "final_loss": float(loss.detach().float()),
    }
    del model, optimizer, dl
    dev.free()
    return result


def time_trainer(
    dev: Device, name: str, cfg: dict[str, Any], precision: str, compile_: bool, args: Any
) -> dict[str, Any]:
    """One ``train()`` of a warm-up epoch + ``repeats`` timed epochs."""
    import torch

    from pa_mixins.callbacks import get_default_callbacks

    dataset = build_dataset(name, cfg, args.steps)
    base = dev.reset_peak()
    model = build_model(name, cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    options: dict[str, Any] = {"mixed_precision": "no" if precision == "fp32" else precision}
    if compile_:
        options["compile"] = True
    cls = _bench_trainer_class()
    trainer = cls(
        model,
        torch.nn.CrossEntropyLoss(),
        optimizer,
        callbacks=get_default_callbacks(progress_bar=False),
        **options,
    )
    trainer.bench_device = dev
    trainer.bench_epoch_s = []
    start_all = time.perf_counter()
    trainer.train(
        train_dataset=dataset,
        num_epochs=1 + args.repeats,
        per_device_batch_size=cfg["batch"],
        train_dataloader_kwargs={"num_workers": 0},
    )
    epochs = trainer.bench_epoch_s[1:]
    steps = len(trainer.train_dataloader)
    result = {
        "epoch_s": epochs,
        "median_epoch_s": statistics.median(epochs),
        "median_step_ms": statistics.median(epochs) / steps * 1e3,
        "steps": steps,
        "peak_memory_bytes": dev.peak_since(base),
        "wall_s": time.perf_counter() - start_all,
        "final_loss": trainer.run_history.get_latest_metric("train_loss_epoch"),
    }
    del trainer, model, optimizer
    dev.free()
    return result


def timing_case(
    dev: Device, name: str, precision: str, compile_: bool, args: Any, with_trainer: bool
) -> dict[str, Any]:
    cfg = CONFIGS["tiny" if args.tiny else "full"][name]
    case: dict[str, Any] = {"model": name, "precision": precision, "compile": compile_}
    case["plain"] = time_plain(dev, name, cfg, precision, compile_, args)
    if not with_trainer:
        case["trainer"] = None
        case["note"] = "Trainer has no compile option (yet): Trainer side skipped"
        return case
    case["trainer"] = time_trainer(dev, name, cfg, precision, compile_, args)
    plain, trainer = case["plain"], case["trainer"]
    case["step_ratio"] = trainer["median_epoch_s"] / plain["median_epoch_s"]
    case["min_epoch_ratio"] = min(trainer["epoch_s"]) / min(plain["epoch_s"])
    if plain["peak_memory_bytes"] and trainer["peak_memory_bytes"] is not None:
        case["peak_memory_ratio"] = trainer["peak_memory_bytes"] / plain["peak_memory_bytes"]
    return case


# ------------------------------------------------------------------------------------------
# 3: synchronisations per step (CUDA)
# ------------------------------------------------------------------------------------------


def _sync_site(record: warnings.WarningMessage) -> str:
    return f"{Path(record.filename).name}:{record.lineno}"


def _is_sync_warning(record: warnings.WarningMessage) -> bool:
    return "synchroniz" in str(record.message)


def sync_check_trainer(
    dev: Device, name: str, precision: str, mode: str, non_blocking: bool, args: Any
) -> dict[str, Any]:
    """One epoch of ``--sync-steps`` steps of the Trainer with sync debug mode ``mode``
    ("error" or "warn") on from the first step's start to ``train_epoch_end``."""
    import torch

    from pa_mixins.callbacks import TrainerCallback, get_default_callbacks

    cfg = CONFIGS["tiny" if args.tiny else "full"][name]
    dataset = build_dataset(name, cfg, args.sync_steps)
    model = build_model(name, cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = {"open": False, "steps": 0}

    class OpenWindow(TrainerCallback):
        def on_train_step_start(self, trainer: Any, **kwargs: Any) -> None:
            state["steps"] += 1
            if not state["open"]:
                dev.set_sync_debug_mode(mode)
                state["open"] = True

    def close() -> None:
        dev.set_sync_debug_mode(0)
        state["open"] = False

    options: dict[str, Any] = {"mixed_precision": "no" if precision == "fp32" else precision}
    if mode == "error":
        options["log_every_n_steps"] = None
    if non_blocking:
        from accelerate import DataLoaderConfiguration

        options["accelerator_kwargs"] = {
            "dataloader_config": DataLoaderConfiguration(non_blocking=True)
        }
    cls = _bench_trainer_class()
    trainer = cls(
        model,
        torch.nn.CrossEntropyLoss(),
        optimizer,
        callbacks=(*get_default_callbacks(progress_bar=False), OpenWindow()),
        **options,
    )
    trainer.bench_device = dev
    trainer.bench_epoch_s = []
    trainer.bench_close = close
    result: dict[str, Any] = {
        "model": name,
        "precision": precision,
        "mode": "strict" if mode == "error" else "counted",
        "loop": "trainer",
        "loader_non_blocking": non_blocking,
        "dry_run": not dev.cuda,
    }
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        try:
            trainer.train(
                train_dataset=dataset,
                num_epochs=1,
                per_device_batch_size=cfg["batch"],
                train_dataloader_kwargs={"num_workers": 0},
            )
            result["passed"] = True
        except Exception as error:  # the sync debug error, or anything else: recorded
            result["passed"] = False
            result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            result["frames"] = _frames(error)
        finally:
            close()
    syncs = [r for r in records if _is_sync_warning(r)]
    result["steps"] = state["steps"]
    result["syncs"] = len(syncs)
    result["syncs_per_step"] = len(syncs) / max(state["steps"], 1)
    result["sites"] = dict(collections.Counter(_sync_site(r) for r in syncs).most_common(8))
    del trainer, model, optimizer
    dev.free()
    return result


def sync_check_plain(dev: Device, name: str, precision: str, args: Any) -> dict[str, Any]:
    """The hand-written loop's syncs per step (mode "warn", after the first batch)."""
    import torch
    from torch.utils.data import DataLoader

    cfg = CONFIGS["tiny" if args.tiny else "full"][name]
    dataset = build_dataset(name, cfg, args.sync_steps)
    model = build_model(name, cfg).to(dev.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_func = torch.nn.CrossEntropyLoss()
    dl = DataLoader(dataset, batch_size=cfg["batch"], shuffle=True, pin_memory=dev.cuda)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    steps = 0
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        try:
            for xb, yb in dl:
                if steps == 0:
                    dev.set_sync_debug_mode("warn")
                steps += 1
                xb = xb.to(dev.device, non_blocking=True)
                yb = yb.to(dev.device, non_blocking=True)
                optimizer.zero_grad()
                with dev.autocast(precision):
                    loss = loss_func(model(xb), yb)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
        finally:
            dev.set_sync_debug_mode(0)
    syncs = [r for r in records if _is_sync_warning(r)]
    result = {
        "model": name,
        "precision": precision,
        "mode": "counted",
        "loop": "plain",
        "loader_non_blocking": True,
        "dry_run": not dev.cuda,
        "passed": True,
        "steps": steps,
        "syncs": len(syncs),
        "syncs_per_step": len(syncs) / max(steps, 1),
        "sites": dict(collections.Counter(_sync_site(r) for r in syncs).most_common(8)),
    }
    del model, optimizer, dl
    dev.free()
    return result


# ------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def _markdown(data: dict[str, Any]) -> str:
    lines = header_lines("gpu_perf results (issue 11, target 7)", data)
    lines += [
        f"Device: {data['device_name']}. Steps per epoch {data['steps']}, {data['repeats']} timed "
        f"epochs after a warm-up epoch, configs `{data['size']}`. Trainer `compile` option: "
        f"{'present' if data['trainer_has_compile'] else 'absent'}.",
        "",
        "## Step time and peak memory, Trainer vs plain loop",
        "",
        "| model | precision | compile | plain step (ms) | Trainer step (ms) | Trainer / plain "
        "| plain peak (MiB) | Trainer peak (MiB) | memory ratio |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case in data["timing"]:
        plain, trainer = case["plain"], case["trainer"]
        if trainer is None:
            lines.append(
                f"| {case['model']} | {case['precision']} | {case['compile']} "
                f"| {plain['median_step_ms']:.3f} | - | - | {_mib(plain['peak_memory_bytes'])} "
                f"| - | - |"
            )
            continue
        memory_ratio = case.get("peak_memory_ratio")
        lines.append(
            f"| {case['model']} | {case['precision']} | {case['compile']} "
            f"| {plain['median_step_ms']:.3f} | {trainer['median_step_ms']:.3f} "
            f"| **{case['step_ratio']:.3f}x** | {_mib(plain['peak_memory_bytes'])} "
            f"| {_mib(trainer['peak_memory_bytes'])} "
            f"| {'-' if memory_ratio is None else f'{memory_ratio:.3f}x'} |"
        )
    lines += ["", "## Device-to-host synchronisations per step", ""]
    if data["sync"] and data["sync"][0].get("dry_run"):
        lines += ["**CPU dry run: the checks' code ran, but no sync can be seen on a CPU.**", ""]
    if not data["sync"]:
        lines.append("Not measured.")
    else:
        lines += [
            "| loop | model | precision | mode | loader non_blocking | steps | syncs | per step "
            "| result | where |",
            "|---|---|---|---|---|---:|---:|---:|---|---|",
        ]
        for s in data["sync"]:
            where = ", ".join(f"{k} x{v}" for k, v in s["sites"].items())
            if not s["passed"]:
                where = f"{s.get('error', '')} at {' <- '.join(reversed(s.get('frames', [])))}"
            lines.append(
                f"| {s['loop']} | {s['model']} | {s['precision']} | {s['mode']} "
                f"| {s['loader_non_blocking']} | {s['steps']} | {s['syncs']} "
                f"| {s['syncs_per_step']:.3f} | {'pass' if s['passed'] else 'FAIL'} | {where} |"
            )
        lines += [
            "",
            "Target: zero syncs per step for the Trainer in fp32 and bf16 (`strict` passes); "
            "fp16: the gradient scaler's one read per update.",
        ]
    lines += [
        "",
        "Sections (seconds): "
        + ", ".join(f"{k} {v:.1f}" for k, v in data["section_s"].items())
        + ".",
    ]
    if data["skipped"]:
        lines += ["", "Skipped: " + "; ".join(data["skipped"]) + "."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--tiny", action="store_true", help="tiny models, few steps (CI)")
    parser.add_argument("--models", default="mlp,transformer")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="the compile-on cases (auto: on for CUDA, off for the CPU)",
    )
    parser.add_argument("--compile-precisions", default="bf16")
    parser.add_argument("--steps", type=int, default=150, help="steps per epoch")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per side")
    parser.add_argument("--sync-steps", type=int, default=30, help="steps of each sync check")
    parser.add_argument("--no-sync", action="store_true", help="skip the sync checks")
    parser.add_argument(
        "--budget-s", type=float, default=240, help="start no new section after this long"
    )
    add_out_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the sections within the budget and write the results after each."""
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    import torch

    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    dev = Device(name)
    if not dev.cuda:
        torch.set_num_threads(1)  # a shared CI machine: no thread contention
    if args.tiny:
        args.steps, args.repeats, args.sync_steps = min(args.steps, 6), min(args.repeats, 2), 6
    compile_on = args.compile == "on" or (args.compile == "auto" and dev.cuda)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    has_compile = trainer_supports_compile()

    data = base_record("gpu_perf.py", argv)
    data["versions"]["torch_runtime"] = torch.__version__
    data.update(
        device=name,
        device_name=torch.cuda.get_device_name() if dev.cuda else "CPU",
        size="tiny" if args.tiny else "full",
        configs=CONFIGS["tiny" if args.tiny else "full"],
        steps=args.steps,
        repeats=args.repeats,
        trainer_has_compile=has_compile,
        timing=[],
        sync=[],
        section_s={},
        skipped=[],
    )

    def save() -> None:
        write_results(args.out, "gpu_perf", data, _markdown)

    def section(label: str, run: Callable[[], Any], into: list[Any]) -> None:
        if time.perf_counter() - started > args.budget_s:
            data["skipped"].append(f"{label} (time budget)")
            return
        start = time.perf_counter()
        try:
            into.append(run())
        except Exception as error:  # recorded, and the other sections still run
            data["skipped"].append(f"{label} failed: {type(error).__name__}: {error}"[:400])
            traceback.print_exc()
        data["section_s"][label] = time.perf_counter() - start
        print(f"[{time.perf_counter() - started:6.1f}s] {label}", flush=True)
        save()

    for model in models:
        for precision in precisions:
            section(
                f"time {model} {precision}",
                lambda m=model, p=precision: timing_case(dev, m, p, False, args, True),
                data["timing"],
            )
    if not args.no_sync:
        # on the CPU a dry run of the same code (one model, fp32): no syncs to see
        sync_models = models if dev.cuda else models[:1]
        sync_precisions = ("fp32", "bf16", "fp16") if dev.cuda else ("fp32",)
        for model in sync_models:
            for precision in sync_precisions:
                modes = ("error", "warn") if precision != "fp16" else ("warn",)
                for mode in modes:
                    for non_blocking in (False, True):
                        section(
                            f"sync {model} {precision} {mode} non_blocking={non_blocking}",
                            lambda m=model, p=precision, md=mode, nb=non_blocking: (
                                sync_check_trainer(dev, m, p, md, nb, args)
                            ),
                            data["sync"],
                        )
                section(
                    f"sync plain {model} {precision}",
                    lambda m=model, p=precision: sync_check_plain(dev, m, p, args),
                    data["sync"],
                )
    if not dev.cuda:
        data["skipped"].append(
            "peak memory and sync detection (CUDA only; the sync checks ran as a CPU dry run)"
        )
    if compile_on:
        compile_precisions = [p.strip() for p in args.compile_precisions.split(",") if p.strip()]
        for model in models:
            for precision in compile_precisions:
                section(
                    f"time {model} {precision} compile",
                    lambda m=model, p=precision: timing_case(dev, m, p, True, args, has_compile),
                    data["timing"],
                )
    else:
        data["skipped"].append("compile on (--compile off, or auto on the CPU)")
    data["total_s"] = time.perf_counter() - started
    save()
    for case in data["timing"]:
        if case.get("trainer"):
            print(
                f"{case['model']:12s} {case['precision']:5s} compile={case['compile']!s:5s} "
                f"Trainer / plain {case['step_ratio']:.3f}x"
            )
    for s in data["sync"]:
        print(
            f"sync {s['loop']:7s} {s['model']:12s} {s['precision']:5s} {s['mode']:8s} "
            f"non_blocking={s['loader_non_blocking']!s:5s} {s['syncs_per_step']:.3f}/step "
            f"{'pass' if s['passed'] else 'FAIL: ' + s.get('error', '')}"
        )
    failed = [s for s in data["skipped"] if "failed" in s]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
