"""Issue 11, target 4 ("start-up"): what ``pa_mixins`` costs before and around training,
rather than per step.

1. **Import time.** ``import torch``, ``import accelerate`` and ``import pa_mixins`` (which
   imports torch) each in a fresh interpreter, ``--repeats`` times, interleaved; the time of
   the import statement itself (``perf_counter`` around it) and the whole interpreter run
   (start, import, exit; timed from outside). Medians and the paired ratio
   ``pa_mixins / torch``. The record says whether ``import pa_mixins`` imported accelerate.
2. **Time to the first optimizer step.** bench_loop.py's workload (MLP 784-128-64-10, batch 32,
   50,000 samples) in a fresh process per run, model and data built first, the packages
   already imported. The plain loop: from ``DataLoader(...)`` to the return of its first
   ``optimizer.step()``. The Trainer (default callbacks): from the call of ``train()`` to the
   end of its first update (an ``on_optimizer_step_end`` callback); the run is capped with
   ``max_num_train_steps=1``, which changes nothing before that point. ``Trainer(...)``
   itself is timed separately (``construct``). Both include the first forward/backward pass
   (torch's own first-call costs are on both sides).
3. **Nothing grows with the number of steps.** A tiny MLP (32-64-10, batch 8, 8,000 samples:
   1,000 steps an epoch, 2,000 evaluation samples) trained for 5 epochs with evaluation after
   each, by the Trainer (default callbacks, interval metrics every 50 updates) and by a plain
   loop (reference). After each epoch (after its evaluation) and ``gc.collect()``: in one run
   the resident set size (``/proc/self/statm``; tensors included, but the allocator keeps
   freed pages, so it is the noisier one), in another the memory traced by ``tracemalloc``
   (Python-level allocations, torch's C++ ones made through Python objects included; started
   after the data is built, so the Trainer's lazy imports fall in epoch 1). Growth from the
   end of epoch 1 to the end of the last epoch, per step; the largest growing allocation
   sites and the lengths of the run history's metrics are recorded. Target: the Trainer's
   traced growth per step is less than 1 byte above the plain loop's (torch keeps a few
   bytes per step of its own in both, see the sites in the result). CPython's free lists and
   torch's caches fill up to a bounded size during the first thousands of steps, which
   tracemalloc sees as growth: short runs (``--tiny``, small ``--memory-samples``) show tens
   of bytes per step in both loops, the default 1,000 steps an epoch about 3; judge growth at
   the default sizes.

Usage::

    python benchmarks/bench_startup.py --repeats 7
    python benchmarks/bench_startup.py --tiny --out /tmp/x     # CI: seconds, no timing

Results: ``bench_startup.json`` and ``bench_startup.md`` in ``--out`` (default
``benchmarks/results``). ``--check`` exits 1 when the memory target is missed.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    MARKER,
    REPO_ROOT,
    add_out_argument,
    base_record,
    bench_env,
    header_lines,
    make_eval_dataset,
    make_mlp_workload,
    paired_ratios,
    print_result,
    run_worker,
    write_results,
)

MEMORY_TARGET_BYTES_PER_STEP = 1.0

_IMPORT_CODE = """\
import json, sys, time
start = time.perf_counter()
import {module}
seconds = time.perf_counter() - start
print({marker!r} + json.dumps({{
    "import_s": seconds,
    "modules_loaded": len(sys.modules),
    "accelerate_imported": "accelerate" in sys.modules,
}}))
"""


# ------------------------------------------------------------------------------------------
# 1. import time
# ------------------------------------------------------------------------------------------


def time_import(module: str, timeout: float) -> dict[str, Any]:
    """Import ``module`` in a fresh interpreter: the import's own time and the whole run's."""
    code = _IMPORT_CODE.format(module=module, marker=MARKER)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=bench_env(),
        timeout=timeout,
        cwd=REPO_ROOT,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"import {module} failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in reversed(proc.stdout.splitlines()) if x.startswith(MARKER))
    return {**json.loads(line[len(MARKER) :]), "interpreter_s": wall}


def run_imports(modules: list[str], repeats: int, timeout: float) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modules}
    for rep in range(repeats):
        for module in modules:
            result = time_import(module, timeout)
            runs[module].append(result)
            print(
                f"[{rep + 1}/{repeats}] import {module:12s} {result['import_s'] * 1e3:7.1f} ms "
                f"(interpreter {result['interpreter_s'] * 1e3:7.1f} ms)",
                flush=True,
            )
    summary: dict[str, Any] = {}
    for module, results in runs.items():
        summary[module] = {
            "median_import_s": statistics.median(r["import_s"] for r in results),
            "min_import_s": min(r["import_s"] for r in results),
            "median_interpreter_s": statistics.median(r["interpreter_s"] for r in results),
            "modules_loaded": results[0]["modules_loaded"],
            "accelerate_imported": results[0]["accelerate_imported"],
        }
    if "torch" in runs:
        base = [r["import_s"] for r in runs["torch"]]
        base_wall = [r["interpreter_s"] for r in runs["torch"]]
        for module in modules:
            if module == "torch":
                continue
            s = summary[module]
            s["vs_torch"] = paired_ratios([r["import_s"] for r in runs[module]], base)
            s["interpreter_vs_torch"] = paired_ratios(
                [r["interpreter_s"] for r in runs[module]], base_wall
            )
            s["extra_ms_over_torch"] = (
                s["median_import_s"] - summary["torch"]["median_import_s"]
            ) * 1e3
    return {"summary": summary, "runs": runs}


# ------------------------------------------------------------------------------------------
# 2. time to the first optimizer step (worker side)
# ------------------------------------------------------------------------------------------


def first_step_plain(samples: int, batch_size: int) -> dict[str, Any]:
    """From ``DataLoader(...)`` to the end of the first ``optimizer.step()``."""
    from torch.utils.data import DataLoader

    dataset, model, loss_func, optimizer = make_mlp_workload(samples)
    start = time.perf_counter()
    dl = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)
    model.train()
    for xb, yb in dl:
        optimizer.zero_grad()
        loss = loss_func(model(xb), yb)
        loss.backward()
        optimizer.step()
        break
    return {"first_step_s": time.perf_counter() - start, "construct_s": 0.0}


def first_step_trainer(samples: int, batch_size: int, warm: bool = False) -> dict[str, Any]:
    """From the call of ``train()`` to the end of the first update; ``Trainer(...)`` apart.
    ``import pa_mixins`` leaves accelerate out, so the first ``train()`` of a process imports
    it; ``warm``: accelerate is imported before the timer (what every later ``train()`` of the
    process, or one after a script's own ``import accelerate``, costs)."""
    if warm:
        import accelerate
        import accelerate.data_loader  # noqa: F401
    from pa_mixins import Trainer
    from pa_mixins.callbacks import DEFAULT_CALLBACKS, TrainerCallback

    dataset, model, loss_func, optimizer = make_mlp_workload(samples)
    marks: list[float] = []

    class FirstUpdate(TrainerCallback):
        def on_optimizer_step_end(self, trainer: Any, **kwargs: Any) -> None:
            if not marks:
                marks.append(time.perf_counter())

    construct = time.perf_counter()
    trainer = Trainer(model, loss_func, optimizer, callbacks=(*DEFAULT_CALLBACKS, FirstUpdate()))
    start = time.perf_counter()
    trainer.train(
        train_dataset=dataset,
        num_epochs=1,
        per_device_batch_size=batch_size,
        max_num_train_steps=1,
    )
    return {"first_step_s": marks[0] - start, "construct_s": start - construct}


def _first_step(variant: str, samples: int, batch_size: int) -> dict[str, Any]:
    if variant == "plain":
        return first_step_plain(samples, batch_size)
    return first_step_trainer(samples, batch_size, warm=variant == "trainer_warm")


def run_first_steps(args: argparse.Namespace) -> dict[str, Any]:
    variants = ["plain", "trainer", "trainer_warm"]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for rep in range(args.repeats):
        for variant in variants:
            if args.in_process:
                from pa_mixins.mixins.accelerate import reset_accelerate_state

                reset_accelerate_state()
                result = _first_step(variant, args.samples, args.batch_size)
            else:
                cmd = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--worker",
                    f"first_step_{variant}",
                    "--samples",
                    str(args.samples),
                    "--batch-size",
                    str(args.batch_size),
                ]
                result = run_worker(cmd, timeout=args.timeout)
            runs[variant].append(result)
            print(
                f"[{rep + 1}/{args.repeats}] first step {variant:8s} "
                f"{result['first_step_s'] * 1e3:8.1f} ms (construct {result['construct_s'] * 1e3:.1f} ms)",
                flush=True,
            )
    summary = {
        v: {
            "median_first_step_s": statistics.median(r["first_step_s"] for r in rs),
            "min_first_step_s": min(r["first_step_s"] for r in rs),
            "median_construct_s": statistics.median(r["construct_s"] for r in rs),
        }
        for v, rs in runs.items()
    }
    for trainer in ("trainer", "trainer_warm"):
        summary[trainer]["vs_plain"] = paired_ratios(
            [r["first_step_s"] for r in runs[trainer]], [r["first_step_s"] for r in runs["plain"]]
        )
        summary[trainer]["extra_ms_over_plain"] = (
            summary[trainer]["median_first_step_s"] - summary["plain"]["median_first_step_s"]
        ) * 1e3
    return {"summary": summary, "runs": runs}


# ------------------------------------------------------------------------------------------
# 3. memory after 1 epoch vs after N epochs (worker side)
# ------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    """The resident set size now (``/proc/self/statm``), or the peak where that is missing."""
    try:
        import os

        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _MemoryProbe:
    """After ``gc.collect()``: the resident set size, or (``trace=True``) the memory traced
    by tracemalloc, leaving out tracemalloc's own allocations and this file's; keeps the
    snapshots of the first and the last record."""

    def __init__(self, trace: bool) -> None:
        self.trace = trace
        self.values: list[int] = []
        self.first: Any = None
        self.last: Any = None

    def _snapshot(self) -> Any:
        import tracemalloc

        filters = [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, __file__),
        ]
        return tracemalloc.take_snapshot().filter_traces(filters)

    def warm_up(self) -> None:
        """Filter a snapshot once (the filters' pattern caches then exist before the first
        record)."""
        if self.trace:
            self._snapshot()

    def record(self) -> None:
        gc.collect()
        if not self.trace:
            self.values.append(_rss_bytes())
            return
        snapshot = self._snapshot()
        self.values.append(sum(stat.size for stat in snapshot.statistics("filename")))
        if self.first is None:
            self.first = snapshot
        self.last = snapshot

    def top_growth(self, count: int = 5) -> list[str]:
        if self.first is None or self.last is None:
            return []
        diffs = self.last.compare_to(self.first, "lineno")
        return [str(d) for d in diffs[:count] if d.size_diff > 0]


def memory_run(
    variant: str, samples: int, eval_samples: int, batch_size: int, epochs: int, trace: bool
) -> dict[str, Any]:
    """Train the tiny MLP for ``epochs`` epochs (evaluating after each) and record the memory
    after every epoch: the RSS, or with ``trace`` the memory traced by tracemalloc (whose
    own tables and snapshots would inflate the RSS: the two come from separate runs)."""
    import tracemalloc

    import torch
    from torch.utils.data import DataLoader

    dataset, model, loss_func, optimizer = make_mlp_workload(samples, in_features=32, hidden=(64,))
    eval_dataset = make_eval_dataset(eval_samples, in_features=32)
    probe = _MemoryProbe(trace)
    history: dict[str, int] = {}
    if trace:
        tracemalloc.start()
        probe.warm_up()
    if variant == "plain":
        dl = DataLoader(dataset, batch_size=batch_size, shuffle=True)
        eval_dl = DataLoader(eval_dataset, batch_size=batch_size)
        losses: list[float] = []
        for _ in range(epochs):
            model.train()
            for xb, yb in dl:
                optimizer.zero_grad()
                loss_func(model(xb), yb).backward()
                optimizer.step()
            model.eval()
            total = torch.zeros(())
            with torch.no_grad():
                for xb, yb in eval_dl:
                    total += loss_func(model(xb), yb) * yb.size(0)
            losses.append((total / len(eval_dataset)).item())
            probe.record()
        steps = len(dl)
    else:
        from pa_mixins import Trainer
        from pa_mixins.callbacks import DEFAULT_CALLBACKS, TrainerCallback

        class Probe(TrainerCallback):
            def on_training_run_epoch_end(self, trainer: Any, **kwargs: Any) -> None:
                probe.record()

        trainer = Trainer(model, loss_func, optimizer, callbacks=(*DEFAULT_CALLBACKS, Probe()))
        trainer.train(
            train_dataset=dataset,
            eval_dataset=eval_dataset,
            num_epochs=epochs,
            per_device_batch_size=batch_size,
        )
        steps = len(trainer.train_dataloader)
        history = {
            name: len(trainer.run_history.get_metric_values(name))
            for name in sorted(trainer.run_history.get_metric_names())
        }
    if trace:
        tracemalloc.stop()
    growth = probe.values[-1] - probe.values[0]
    return {
        "variant": variant,
        "measure": "traced" if trace else "rss",
        "epochs": epochs,
        "steps_per_epoch": steps,
        "bytes_after_each_epoch": probe.values,
        "growth_bytes": growth,
        "growth_bytes_per_step": growth / max(steps * (epochs - 1), 1),
        "top_growth_sites": probe.top_growth(),
        "run_history_lengths": history,
    }


def run_memory(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for trace in (False, True):
        for variant in ("plain", "trainer"):
            sizes = (
                args.memory_samples,
                args.memory_eval_samples,
                args.memory_batch_size,
                args.memory_epochs,
            )
            if args.in_process:
                from pa_mixins.mixins.accelerate import reset_accelerate_state

                reset_accelerate_state()
                result = memory_run(variant, *sizes, trace=trace)
            else:
                cmd = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--worker",
                    f"memory_{variant}" + ("_traced" if trace else ""),
                    "--memory-samples",
                    str(args.memory_samples),
                    "--memory-eval-samples",
                    str(args.memory_eval_samples),
                    "--memory-batch-size",
                    str(args.memory_batch_size),
                    "--memory-epochs",
                    str(args.memory_epochs),
                ]
                result = run_worker(cmd, timeout=args.timeout)
            results[f"{variant}_{result['measure']}"] = result
            print(
                f"memory {variant:8s} {result['measure']:6s} growth {result['growth_bytes']:+d} B "
                f"({result['growth_bytes_per_step']:+.3f} B/step) over {result['epochs'] - 1} "
                f"epochs of {result['steps_per_epoch']} steps",
                flush=True,
            )
    excess = (
        results["trainer_traced"]["growth_bytes_per_step"]
        - results["plain_traced"]["growth_bytes_per_step"]
    )
    results["trainer_excess_traced_bytes_per_step"] = excess
    results["meets_target"] = excess < MEMORY_TARGET_BYTES_PER_STEP
    return results


# ------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------


def _markdown(data: dict[str, Any]) -> str:
    lines = header_lines("bench_startup results (issue 11, target 4)", data)
    if data["in_process"]:
        lines += ["**In-process run (--tiny / --in-process): times not comparable.**", ""]
    imports = data["imports"]["summary"]
    lines += [
        f"## Import time ({data['repeats']} fresh interpreters each, interleaved)",
        "",
        "| module | median import (ms) | min (ms) | median interpreter run (ms) | paired ratio to "
        "torch | extra over torch (ms) | modules loaded | accelerate imported |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for module, s in imports.items():
        ratio = s.get("vs_torch", {}).get("median_paired_ratio")
        extra = s.get("extra_ms_over_torch")
        lines.append(
            f"| {module} | {s['median_import_s'] * 1e3:.1f} | {s['min_import_s'] * 1e3:.1f} "
            f"| {s['median_interpreter_s'] * 1e3:.1f} "
            f"| {'-' if ratio is None else f'**{ratio:.3f}x**'} "
            f"| {'-' if extra is None else f'{extra:+.1f}'} | {s['modules_loaded']} "
            f"| {'yes' if s['accelerate_imported'] else 'no'} |"
        )
    first = data["first_step"]["summary"]
    trainer, warm = first["trainer"], first["trainer_warm"]
    lines += [
        "",
        f"## Time to the first optimizer step ({data['repeats']} runs each, "
        f"{data['samples']} samples, batch {data['batch_size']})",
        "",
        "| loop | median (ms) | min (ms) | `Trainer(...)` (ms) |",
        "|---|---:|---:|---:|",
        f"| plain: `DataLoader(...)` to the first `optimizer.step()` | "
        f"{first['plain']['median_first_step_s'] * 1e3:.1f} | "
        f"{first['plain']['min_first_step_s'] * 1e3:.1f} | - |",
        f"| Trainer: `train()` to the end of the first update | "
        f"{trainer['median_first_step_s'] * 1e3:.1f} | {trainer['min_first_step_s'] * 1e3:.1f} | "
        f"{trainer['median_construct_s'] * 1e3:.1f} |",
        f"| Trainer, accelerate already imported (any later `train()`) | "
        f"{warm['median_first_step_s'] * 1e3:.1f} | {warm['min_first_step_s'] * 1e3:.1f} | "
        f"{warm['median_construct_s'] * 1e3:.1f} |",
        "",
        f"Trainer / plain: **{trainer['vs_plain']['median_paired_ratio']:.2f}x** (median of paired "
        f"ratios), {trainer['extra_ms_over_plain']:+.1f} ms; accelerate already imported: "
        f"**{warm['vs_plain']['median_paired_ratio']:.2f}x**, "
        f"{warm['extra_ms_over_plain']:+.1f} ms. The first `train()` of a process imports "
        "accelerate, which `import pa_mixins` no longer does.",
        "",
    ]
    memory = data["memory"]
    lines += [
        "## Memory after epoch 1 vs after the last epoch",
        "",
        "| loop | measure | epochs x steps | growth (B) | per step (B) |",
        "|---|---|---|---:|---:|",
    ]
    for key in ("plain_rss", "trainer_rss", "plain_traced", "trainer_traced"):
        m = memory[key]
        lines.append(
            f"| {m['variant']} | {m['measure']} | {m['epochs']} x {m['steps_per_epoch']} "
            f"| {m['growth_bytes']:+d} | {m['growth_bytes_per_step']:+.3f} |"
        )
    t = memory["trainer_traced"]
    lines += [
        "",
        f"Target: the Trainer's traced memory grows by less than {MEMORY_TARGET_BYTES_PER_STEP:g} "
        "byte per step more than the plain loop's (torch itself keeps a few bytes per step "
        f"in both): **{'met' if memory['meets_target'] else 'NOT met'}** "
        f"({memory['trainer_excess_traced_bytes_per_step']:+.3f} B/step). Run history lengths "
        f"after {t['epochs']} epochs: "
        + ", ".join(f"`{k}` {v}" for k, v in t["run_history_lengths"].items())
        + ".",
        "",
        "Largest growing allocation sites (tracemalloc, end of epoch 1 to the end of the last):",
        "",
    ]
    for key in ("plain_traced", "trainer_traced"):
        lines.append(f"* {memory[key]['variant']}:")
        sites = memory[key]["top_growth_sites"]
        lines += [f"  * `{site}`" for site in sites] or ["  * none"]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--modules", default="torch,accelerate,pa_mixins")
    parser.add_argument("--samples", type=int, default=50_000, help="first-step workload")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--memory-samples", type=int, default=8_000)
    parser.add_argument("--memory-eval-samples", type=int, default=2_000)
    parser.add_argument("--memory-batch-size", type=int, default=8)
    parser.add_argument("--memory-epochs", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="first step and memory in this process (CI; the imports still run fresh)",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="CI size: 1 repetition, tiny data, in-process"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    add_out_argument(parser)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the three measurements (or, with ``--worker``, one run) and write the results."""
    args = _parser().parse_args(argv)
    if args.worker:
        if args.worker.startswith("first_step_"):
            variant = args.worker.removeprefix("first_step_")
            print_result(_first_step(variant, args.samples, args.batch_size))
        else:
            name = args.worker.removeprefix("memory_")
            print_result(
                memory_run(
                    name.removesuffix("_traced"),
                    args.memory_samples,
                    args.memory_eval_samples,
                    args.memory_batch_size,
                    args.memory_epochs,
                    trace=name.endswith("_traced"),
                )
            )
        return 0
    if args.tiny:
        args.repeats, args.modules, args.samples = 1, "torch,pa_mixins", 640
        args.memory_samples, args.memory_eval_samples, args.memory_epochs = 160, 40, 3
        args.in_process = True
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    data = base_record("bench_startup.py", argv)
    data.update(
        repeats=args.repeats,
        samples=args.samples,
        batch_size=args.batch_size,
        in_process=args.in_process,
        imports=run_imports(modules, args.repeats, args.timeout),
        first_step=run_first_steps(args),
        memory=run_memory(args),
    )
    write_results(args.out, "bench_startup", data, _markdown)
    return 1 if args.check and not data["memory"]["meets_target"] else 0


if __name__ == "__main__":
    sys.exit(main())
