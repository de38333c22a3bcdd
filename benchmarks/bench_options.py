"""Issue 11, target 2 ("the common options"): each option of ``pa_mixins.Trainer`` against a
hand-written PyTorch loop doing the same work. Target: every trainer variant <= 1.05x its plain
counterpart (median of the paired epoch-time ratios).

Workload (bench_loop.py's): MLP 784-128-64-10 (ReLU), ``CrossEntropyLoss``, ``SGD(lr=0.01)``,
batch 32, 50,000 synthetic training samples, one torch thread, one epoch, ``DataLoader``
(shuffled, no workers) over a ``TensorDataset``.

| option | Trainer | the plain loop (same work) |
|---|---|---|
| ``base`` | no option (the reference pair) | bench_loop's plain loop |
| ``eval`` | ``train(eval_dataset=...)``: 10,000 held-out samples evaluated after the epoch | after the epoch: ``model.eval()``, ``torch.no_grad()``, the same batch size, the loss summed on the device weighted by batch size, its mean read once (``.item()``), ``model.train()`` |
| ``accum`` | ``gradient_accumulation_steps=4`` | each micro-batch's loss divided by the size of its accumulation group (4; the last, shorter group of the epoch by its own size, as the Trainer does), ``optimizer.step()`` + ``zero_grad()`` after each group |
| ``bf16`` | ``Trainer(..., mixed_precision="bf16")`` (Accelerate autocasts the model's forward) | forward and loss under ``torch.autocast("cpu", dtype=torch.bfloat16)``, backward and step outside (PyTorch's AMP recipe) |
| ``sched`` | ``create_scheduler_fn=partial(CosineAnnealingLR, T_max=NUM_UPDATE_STEPS_PER_EPOCH)`` | ``CosineAnnealingLR(optimizer, T_max=len(loader))``, ``scheduler.step()`` after each ``optimizer.step()`` |
| ``sched`` (``trainer_sched_pa``) | ``create_scheduler_fn=CosineLrScheduler.create_scheduler_fn()`` (docs/schedulers.md) | the same plain loop as ``sched`` (torch's scheduler): another implementation of a cosine schedule, reported beside the same-scheduler pair |
| ``save`` | ``SaveTrainingStateCallback(tmp, save_every_n_steps=500, save_at_end=False)`` | every 500 updates ``torch.save({"model": ..., "optimizer": ...})`` to a new file, written aside, flushed with ``os.fsync`` and renamed into place (the durability the Trainer's states have; the Trainer also writes a manifest, the random states and the loop position) |

Decisions for a fair comparison: the Trainers use ``get_default_callbacks(progress_bar=False)``
(``--callbacks`` to change; the bar's cost is bench_loop's business), the hand-written loops
track no training loss (the Trainer's running loss is part of what it adds, as in
bench_loop.py), and every timed region includes everything the run does after its set-up:
hand-written, from the first ``iter(loader)`` to the end of the evaluation (when there is one);
Trainer, its ``_run_epochs`` (run-start and run-end hooks, the epoch, the evaluation, the
epoch's callbacks; a subclass times it, nothing is added per step). The scheduler is created
before the timed region in both. Model, data and optimizer are built before, too.

Each run is one epoch in a fresh subprocess; the variants run interleaved
(a, b, c, ..., a, b, c, ...) for ``--repeats`` repetitions, and each Trainer variant is compared
with its plain counterpart **of the same repetition** (median of those paired ratios; the ratio
of the medians is shown too). ``--in-process`` (and ``--tiny``) runs everything in this process,
for CI: those times are not comparable.

Usage::

    python benchmarks/bench_options.py --repeats 5 [--options eval,bf16] [--check]
    python benchmarks/bench_options.py --tiny --out /tmp/x        # CI: seconds, no timing

Results: ``bench_options.json`` and ``bench_options.md`` in ``--out`` (default
``benchmarks/results``). ``--check`` exits 1 when a Trainer variant is above 1.05x.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    add_out_argument,
    base_record,
    bench_env,
    check_loss,
    get_callbacks,
    header_lines,
    make_eval_dataset,
    make_mlp_workload,
    median_step_us,
    paired_ratios,
    print_result,
    run_worker,
    step_stamp_callback,
    write_results,
)

TARGET_RATIO = 1.05
OPTIONS = ("base", "eval", "accum", "bf16", "sched", "save")

VARIANTS: dict[str, str] = {
    "plain_base": "hand-written loop",
    "trainer_base": "Trainer, no option",
    "plain_eval": "hand-written loop + evaluation after the epoch",
    "trainer_eval": "Trainer, train(eval_dataset=...)",
    "plain_accum": "hand-written loop, gradient accumulation (4)",
    "trainer_accum": "Trainer, gradient_accumulation_steps=4",
    "plain_bf16": 'hand-written loop under torch.autocast("cpu", dtype=torch.bfloat16)',
    "trainer_bf16": 'Trainer(mixed_precision="bf16")',
    "plain_sched": "hand-written loop + torch CosineAnnealingLR stepped per update",
    "trainer_sched": "Trainer, create_scheduler_fn=partial(CosineAnnealingLR, T_max=placeholder)",
    "trainer_sched_pa": "Trainer, create_scheduler_fn=CosineLrScheduler.create_scheduler_fn()",
    "plain_save": "hand-written loop + torch.save(model, optimizer) every N updates (fsync)",
    "trainer_save": "Trainer + SaveTrainingStateCallback(save_every_n_steps=N)",
}

#: each Trainer variant -> the hand-written loop doing the same work
PAIRS: dict[str, str] = {
    "trainer_base": "plain_base",
    "trainer_eval": "plain_eval",
    "trainer_accum": "plain_accum",
    "trainer_bf16": "plain_bf16",
    "trainer_sched": "plain_sched",
    "trainer_sched_pa": "plain_sched",
    "trainer_save": "plain_save",
}


def _option(variant: str) -> str:
    return variant.split("_", 1)[1]


# ------------------------------------------------------------------------------------------
# worker side: the hand-written loops (one function each, written as a user would)
# ------------------------------------------------------------------------------------------


def _plain_base(model: Any, loss_func: Any, optimizer: Any, dl: Any, stamps: list[float]) -> int:
    updates = 0
    for xb, yb in dl:
        stamps.append(time.perf_counter())
        optimizer.zero_grad()
        loss = loss_func(model(xb), yb)
        loss.backward()
        optimizer.step()
        updates += 1
    return updates


def _plain_eval(
    model: Any, loss_func: Any, optimizer: Any, dl: Any, eval_dl: Any, stamps: list[float]
) -> tuple[int, float]:
    import torch

    updates = _plain_base(model, loss_func, optimizer, dl, stamps)
    model.eval()
    total = torch.zeros(())
    count = 0
    with torch.no_grad():
        for xb, yb in eval_dl:
            loss = loss_func(model(xb), yb)
            total += loss * yb.size(0)
            count += yb.size(0)
    eval_loss = (total / count).item()
    model.train()
    return updates, eval_loss


def _plain_accum(
    model: Any, loss_func: Any, optimizer: Any, dl: Any, accum: int, stamps: list[float]
) -> int:
    num_batches = len(dl)
    updates = 0
    optimizer.zero_grad()
    for i, (xb, yb) in enumerate(dl):
        stamps.append(time.perf_counter())
        group_start = i - i % accum
        group_size = min(accum, num_batches - group_start)
        loss = loss_func(model(xb), yb) / group_size
        loss.backward()
        if i - group_start == group_size - 1:
            optimizer.step()
            optimizer.zero_grad()
            updates += 1
    return updates


def _plain_bf16(model: Any, loss_func: Any, optimizer: Any, dl: Any, stamps: list[float]) -> int:
    import torch

    updates = 0
    for xb, yb in dl:
        stamps.append(time.perf_counter())
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_func(model(xb), yb)
        loss.backward()
        optimizer.step()
        updates += 1
    return updates


def _plain_sched(
    model: Any, loss_func: Any, optimizer: Any, dl: Any, scheduler: Any, stamps: list[float]
) -> int:
    updates = 0
    for xb, yb in dl:
        stamps.append(time.perf_counter())
        optimizer.zero_grad()
        loss = loss_func(model(xb), yb)
        loss.backward()
        optimizer.step()
        scheduler.step()
        updates += 1
    return updates


def _durable_save(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` written aside, flushed to disk and renamed into place."""
    import torch

    aside = path.with_name(path.name + ".tmp")
    with open(aside, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(aside, path)


def _plain_save(
    model: Any,
    loss_func: Any,
    optimizer: Any,
    dl: Any,
    save_dir: Path,
    save_every: int,
    stamps: list[float],
) -> tuple[int, int]:
    updates = saves = 0
    for xb, yb in dl:
        stamps.append(time.perf_counter())
        optimizer.zero_grad()
        loss = loss_func(model(xb), yb)
        loss.backward()
        optimizer.step()
        updates += 1
        if updates % save_every == 0:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
            _durable_save(state, save_dir / f"step_{updates}.pt")
            saves += 1
    return updates, saves


def _run_plain(option: str, work: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader

    model, loss_func, optimizer = work["model"], work["loss_func"], work["optimizer"]
    stamps: list[float] = []
    dl = DataLoader(work["dataset"], batch_size=args.batch_size, shuffle=True, num_workers=0)
    eval_dl = DataLoader(work["eval_dataset"], batch_size=args.batch_size, shuffle=False)
    scheduler = None
    if option == "sched":  # created only here: it wraps optimizer.step
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=len(dl))
    model.train()
    saves = 0
    extra: dict[str, Any] = {}
    cpu_start = time.process_time()
    start = time.perf_counter()
    if option == "base":
        updates = _plain_base(model, loss_func, optimizer, dl, stamps)
    elif option == "eval":
        updates, extra["eval_loss"] = _plain_eval(model, loss_func, optimizer, dl, eval_dl, stamps)
    elif option == "accum":
        updates = _plain_accum(model, loss_func, optimizer, dl, args.accumulation, stamps)
    elif option == "bf16":
        updates = _plain_bf16(model, loss_func, optimizer, dl, stamps)
    elif option == "sched":
        updates = _plain_sched(model, loss_func, optimizer, dl, scheduler, stamps)
    elif option == "save":
        updates, saves = _plain_save(
            model, loss_func, optimizer, dl, work["save_dir"], args.save_every, stamps
        )
    else:
        raise ValueError(f"unknown option {option!r}")
    end = time.perf_counter()
    return {
        "epoch_s": end - start,
        "cpu_s": time.process_time() - cpu_start,
        "steps": len(dl),
        "updates": updates,
        "saves": saves,
        "stamps": stamps,
        "final_lr": optimizer.param_groups[0]["lr"],
        **extra,
    }


# ------------------------------------------------------------------------------------------
# worker side: the Trainer
# ------------------------------------------------------------------------------------------


def _run_trainer(option: str, work: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from torch.optim.lr_scheduler import CosineAnnealingLR

    from pa_mixins import Trainer, TrainerPlaceholderValues
    from pa_mixins.callbacks import SaveTrainingStateCallback
    from pa_mixins.schedulers import CosineLrScheduler

    class Timed(Trainer):
        bench: tuple[float, float] = (0.0, 0.0)

        def _run_epochs(self) -> None:
            cpu_start = time.process_time()
            start = time.perf_counter()
            super()._run_epochs()
            self.bench = (time.perf_counter() - start, time.process_time() - cpu_start)

    stamps: list[float] = []
    callbacks: list[Any] = list(get_callbacks(args.callbacks))
    trainer_kwargs: dict[str, Any] = {}
    train_kwargs: dict[str, Any] = {}
    if option == "eval":
        train_kwargs["eval_dataset"] = work["eval_dataset"]
    elif option == "accum":
        train_kwargs["gradient_accumulation_steps"] = args.accumulation
    elif option == "bf16":
        trainer_kwargs["mixed_precision"] = "bf16"
    elif option == "sched":
        train_kwargs["create_scheduler_fn"] = functools.partial(
            CosineAnnealingLR, T_max=TrainerPlaceholderValues.NUM_UPDATE_STEPS_PER_EPOCH
        )
    elif option == "sched_pa":
        train_kwargs["create_scheduler_fn"] = CosineLrScheduler.create_scheduler_fn()
    elif option == "save":
        callbacks.append(
            SaveTrainingStateCallback(
                str(work["save_dir"]), save_every_n_steps=args.save_every, save_at_end=False
            )
        )
    elif option != "base":
        raise ValueError(f"unknown option {option!r}")
    callbacks.append(step_stamp_callback(stamps))
    trainer = Timed(
        work["model"], work["loss_func"], work["optimizer"], callbacks=callbacks, **trainer_kwargs
    )
    trainer.train(
        train_dataset=work["dataset"],
        num_epochs=1,
        per_device_batch_size=args.batch_size,
        **train_kwargs,
    )
    extra: dict[str, Any] = {}
    if option == "eval":
        extra["eval_loss"] = trainer.run_history.get_latest_metric("eval_loss_epoch")
    saves = len(list(Path(work["save_dir"]).glob("step_*"))) if option == "save" else 0
    assert trainer.run_config is not None
    return {
        "epoch_s": trainer.bench[0],
        "cpu_s": trainer.bench[1],
        "steps": len(trainer.train_dataloader),
        "updates": trainer.num_updates,
        "saves": saves,
        "stamps": stamps,
        "final_lr": trainer.optimizer.param_groups[0]["lr"],
        "model": trainer.get_model(),
        **extra,
    }


def worker(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """One epoch of ``variant`` (model, data and optimizer built first, outside the timer)."""
    dataset, model, loss_func, optimizer = make_mlp_workload(args.samples)
    eval_dataset = make_eval_dataset(args.eval_samples)
    with tempfile.TemporaryDirectory(prefix="bench_options_") as save_dir:
        work = {
            "dataset": dataset,
            "eval_dataset": eval_dataset,
            "model": model,
            "loss_func": loss_func,
            "optimizer": optimizer,
            "save_dir": Path(save_dir),
        }
        side, option = variant.split("_", 1)
        run = _run_plain if side == "plain" else _run_trainer
        result = run(option, work, args)
    trained = result.pop("model", model)
    stamps = result.pop("stamps")
    return {
        "variant": variant,
        "median_step_us": median_step_us(stamps),
        "check_loss": check_loss(trained, dataset),
        **result,
    }


# ------------------------------------------------------------------------------------------
# driver side
# ------------------------------------------------------------------------------------------


def _worker_args(args: argparse.Namespace) -> list[str]:
    return [
        "--samples",
        str(args.samples),
        "--eval-samples",
        str(args.eval_samples),
        "--batch-size",
        str(args.batch_size),
        "--accumulation",
        str(args.accumulation),
        "--save-every",
        str(args.save_every),
        "--callbacks",
        args.callbacks,
    ]


def _run_variant(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    if args.in_process:
        from pa_mixins.mixins.accelerate import reset_accelerate_state

        reset_accelerate_state()
        return worker(variant, args)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", variant, *_worker_args(args)]
    return run_worker(cmd, timeout=args.timeout, env=bench_env())


def _summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for variant, results in runs.items():
        epochs = [r["epoch_s"] for r in results]
        steps = results[0]["steps"]
        median = statistics.median(epochs)
        summary[variant] = {
            "description": VARIANTS[variant],
            "runs": len(results),
            "steps_per_epoch": steps,
            "updates": results[0]["updates"],
            "saves": results[0]["saves"],
            "median_epoch_s": median,
            "min_epoch_s": min(epochs),
            "max_epoch_s": max(epochs),
            "us_per_step": median / steps * 1e6,
            "median_cpu_s": statistics.median(r["cpu_s"] for r in results),
            "median_step_us": statistics.median(r["median_step_us"] for r in results),
            "check_loss": statistics.median(r["check_loss"] for r in results),
        }
    for variant, plain in PAIRS.items():
        if variant not in runs or plain not in runs:
            continue
        s = summary[variant]
        mine, theirs = runs[variant], runs[plain]
        s["baseline"] = plain
        s["epoch"] = paired_ratios([r["epoch_s"] for r in mine], [r["epoch_s"] for r in theirs])
        s["cpu"] = paired_ratios([r["cpu_s"] for r in mine], [r["cpu_s"] for r in theirs])
        s["step"] = paired_ratios(
            [r["median_step_us"] for r in mine], [r["median_step_us"] for r in theirs]
        )
        s["overhead_us_per_step"] = (
            (s["median_epoch_s"] - summary[plain]["median_epoch_s"]) / s["steps_per_epoch"] * 1e6
        )
        s["meets_target"] = s["epoch"]["median_paired_ratio"] <= TARGET_RATIO
        # what the option itself costs, on each side, over that side's run without options
        if "trainer_base" in summary and "plain_base" in summary and variant != "trainer_base":
            steps = s["steps_per_epoch"]
            s["option_cost_us_per_step"] = {
                "trainer": (s["median_epoch_s"] - summary["trainer_base"]["median_epoch_s"])
                / steps
                * 1e6,
                "plain": (
                    summary[plain]["median_epoch_s"] - summary["plain_base"]["median_epoch_s"]
                )
                / steps
                * 1e6,
            }
    return summary


def _table(summary: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| Trainer variant | vs | median paired epoch ratio | min-max paired | ratio of medians "
        "| CPU ratio | step ratio | overhead (us/step) | option cost trainer / plain (us/step) "
        "| target <= 1.05x |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for variant, s in summary.items():
        if "baseline" not in s:
            continue
        e = s["epoch"]
        cost = s.get("option_cost_us_per_step")
        cost_text = f"{cost['trainer']:+.1f} / {cost['plain']:+.1f}" if cost else "-"
        lines.append(
            f"| {variant} | {s['baseline']} | **{e['median_paired_ratio']:.3f}x** "
            f"| {e['min_paired_ratio']:.3f}-{e['max_paired_ratio']:.3f} "
            f"| {e['ratio_of_medians']:.3f}x | {s['cpu']['median_paired_ratio']:.3f}x "
            f"| {s['step']['median_paired_ratio']:.3f}x | {s['overhead_us_per_step']:+.1f} "
            f"| {cost_text} | {'met' if s['meets_target'] else 'NOT met'} |"
        )
    lines += [
        "",
        "| variant | median epoch (s) | min-max (s) | us/step | median step (us) | steps | updates "
        "| saves | loss after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for variant, s in summary.items():
        lines.append(
            f"| {variant} | {s['median_epoch_s']:.3f} | {s['min_epoch_s']:.3f}-{s['max_epoch_s']:.3f} "
            f"| {s['us_per_step']:.1f} | {s['median_step_us']:.1f} | {s['steps_per_epoch']} "
            f"| {s['updates']} | {s['saves']} | {s['check_loss']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def _markdown(data: dict[str, Any]) -> str:
    lines = header_lines("bench_options results (issue 11, target 2)", data)
    lines += [
        f"Workload: MLP 784-128-64-10, CrossEntropyLoss, SGD(lr=0.01), batch {data['batch_size']}, "
        f"{data['samples']} training samples ({data['eval_samples']} evaluation samples for "
        f"`eval`), 1 torch thread, one epoch per run; gradient accumulation "
        f"{data['accumulation']}, a save every {data['save_every']} updates; Trainer callbacks "
        f"`{data['callbacks']}`. {data['repeats']} repetitions, variants interleaved, "
        + (
            "**all in one process (--in-process: times not comparable)**."
            if data["in_process"]
            else "each run in a fresh subprocess."
        ),
        "",
        "`median paired epoch ratio`: the Trainer's epoch time over its plain counterpart's in "
        "the same repetition, median over repetitions (the guarded number). `CPU ratio`: the "
        "same with process CPU time; `step ratio`: with the median step-to-step time (robust "
        "to preemption, leaves out per-epoch work such as the evaluation and the saves). "
        "`option cost`: the option's median epoch time minus the no-option run's, per step, "
        "for the Trainer and for the plain loop. `loss after`: the trained model's loss on "
        "the first 1,000 training samples (every variant trains).",
        "",
        _table(data["summary"]),
        f"Target: every Trainer variant <= {TARGET_RATIO:.2f}x its plain counterpart. "
        + (
            "Met by all."
            if all(s.get("meets_target", True) for s in data["summary"].values())
            else "NOT met by: "
            + ", ".join(v for v, s in data["summary"].items() if s.get("meets_target") is False)
            + "."
        ),
        "",
    ]
    lines += [f"* `{v}`: {VARIANTS[v]}" for v in data["summary"]]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--eval-samples", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--accumulation", type=int, default=4)
    parser.add_argument("--save-every", type=int, default=500, help="updates between saves")
    parser.add_argument("--callbacks", choices=("default", "no_pbar", "none"), default="no_pbar")
    parser.add_argument("--options", default=",".join(OPTIONS), help="comma-separated subset")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    parser.add_argument(
        "--in-process", action="store_true", help="no fresh process per run (CI; not for numbers)"
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="CI size: 640 samples, 1 repetition, in-process, a save every 5 updates",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    add_out_argument(parser)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--worker``, one run of it) and write the results."""
    args = _parser().parse_args(argv)
    if args.worker:
        print_result(worker(args.worker, args))
        return 0
    if args.tiny:
        args.samples, args.eval_samples, args.repeats = 640, 160, 1
        args.save_every, args.in_process = 5, True
    options = [o.strip() for o in args.options.split(",") if o.strip()]
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise SystemExit(f"unknown options: {sorted(unknown)} (known: {', '.join(OPTIONS)})")
    if "base" not in options:
        options.insert(0, "base")
    variants = [v for v in VARIANTS if _option(v).removesuffix("_pa") in options]

    data = base_record("bench_options.py", argv)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for rep in range(args.repeats):
        for variant in variants:
            result = _run_variant(variant, args)
            runs[variant].append(result)
            print(
                f"[{rep + 1}/{args.repeats}] {variant:18s} epoch {result['epoch_s']:.3f}s "
                f"cpu {result['cpu_s']:.3f}s median step {result['median_step_us']:.1f}us "
                f"updates {result['updates']} saves {result['saves']}",
                flush=True,
            )
    summary = _summarise(runs)
    print()
    print(_table(summary))
    data.update(
        samples=args.samples,
        eval_samples=args.eval_samples,
        batch_size=args.batch_size,
        accumulation=args.accumulation,
        save_every=args.save_every,
        callbacks=args.callbacks,
        repeats=args.repeats,
        in_process=args.in_process,
        variants=variants,
        target_ratio=TARGET_RATIO,
        summary=summary,
        runs=runs,
    )
    write_results(args.out, "bench_options", data, _markdown)
    missed = [v for v, s in summary.items() if s.get("meets_target") is False]
    if missed:
        print(f"above {TARGET_RATIO:.2f}x: {', '.join(missed)}")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
