"""Benchmark guard: per-step overhead of ``pa_mixins.Trainer`` against hand-written loops.

Same model, data and optimizer for every variant:

* ``plain``               hand-written PyTorch loop (the baseline)
* ``accelerate``          hand-written Accelerate loop (``Accelerator()``, ``prepare``,
                          ``accelerator.backward``)
* ``trainer_default``     ``pa_mixins.Trainer`` with its default callbacks (tqdm progress bar
                          included)
* ``trainer_no_pbar``     ``pa_mixins.Trainer`` with ``get_default_callbacks(progress_bar=False)``
* ``trainer_no_callbacks`` ``pa_mixins.Trainer`` with ``callbacks=()``
* ``trainer_csv``         ``trainer_no_pbar`` writing its run to the CSV tracker
  (``log_with="csv"``, interval metrics every 50 updates; issue 12: within 5% of
  ``trainer_no_pbar``)
* ``pa_default``          pytorch-accelerated's ``Trainer`` with its defaults, run by the
                          interpreter given with ``--pa-python`` (skipped when it cannot import
                          ``pytorch_accelerated``)
* ``plain_compile``       ``plain`` on ``torch.compile(model)`` (opt-in: ``--variants``)
* ``trainer_compile``     ``trainer_no_pbar`` with ``compile=True`` (opt-in: ``--variants``);
                          both compile variants compile (inductor) inside the timed epoch

Workload: MLP 784-128-64-10 (ReLU), ``CrossEntropyLoss``, ``SGD(lr=0.01)``, batch 32, 50,000
synthetic samples (``torch.randn`` with a fixed seed, random int labels), one torch thread,
one epoch. The variants run interleaved (a, b, c, ..., a, b, c, ...) for ``--repeats``
repetitions, each run in a fresh subprocess, so Accelerate's process-wide state and warm
caches never leak from one run to the next.

Two times are taken inside each subprocess, both excluding imports and data creation:

* ``epoch_s`` (the guarded number): the training epoch only. Hand-written loops: from
  ``iter(dataloader)`` to the last optimizer step. Trainers: the trainer's own
  ``_run_train_epoch`` call (a subclass times it; nothing is added per step), which also
  includes the epoch's callbacks and the read of the epoch's mean loss.
* ``total_s``: setup + epoch. Hand-written loops: ``DataLoader(...)`` (and ``Accelerator()``
  + ``prepare``) + the epoch. Trainers: ``Trainer(...)`` + ``trainer.train(...)``.

Usage::

    /work/venv/bin/python benchmarks/bench_loop.py --repeats 5

Results: ``benchmarks/results/bench_loop.json`` and ``benchmarks/results/bench_loop.md``.
Target: ``trainer_default`` median epoch time <= 1.10 x ``plain`` (exit status 1 with
``--check`` when it is above).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine_info

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
MARKER = "BENCH_RESULT "
TARGET_RATIO = 1.10
DEFAULT_PA_PYTHON = "/tmp/pavenv/bin/python"

VARIANTS = {
    "plain": "hand-written PyTorch loop",
    "accelerate": "hand-written Accelerate loop",
    "trainer_default": "pa_mixins.Trainer, default callbacks (tqdm bar)",
    "trainer_no_pbar": "pa_mixins.Trainer, get_default_callbacks(progress_bar=False)",
    "trainer_no_callbacks": "pa_mixins.Trainer, callbacks=()",
    "trainer_csv": "pa_mixins.Trainer, no bar, log_with='csv' (a temporary project_dir)",
    "pa_default": "pytorch-accelerated 0.1.x Trainer, defaults",
    "plain_compile": "hand-written PyTorch loop on torch.compile(model) (compiles in the epoch)",
    "trainer_compile": "pa_mixins.Trainer, no bar, compile=True (compiles in the epoch)",
}
#: run only when named in --variants (the first step compiles with inductor: seconds)
OPT_IN_VARIANTS = ("plain_compile", "trainer_compile")


# ------------------------------------------------------------------------------------------
# worker side (runs in a fresh subprocess; imports only what its variant needs)
# ------------------------------------------------------------------------------------------


def _make_workload(num_samples: int):
    import torch
    from torch import nn

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(num_samples, 784, generator=generator)
    y = torch.randint(0, 10, (num_samples,), generator=generator)
    dataset = torch.utils.data.TensorDataset(x, y)
    torch.manual_seed(0)
    if os.environ.get("BENCH_LOOP_WORKLOAD") == "tiny":  # pure per-step cost
        x = x[:, :32].contiguous()
        dataset = torch.utils.data.TensorDataset(x, y)
        model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))
    else:
        model = nn.Sequential(
            nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
        )
    loss_func = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    return dataset, model, loss_func, optimizer


def _check_loss(model, dataset) -> float:
    """Loss of the trained model on the first 1,000 samples (sanity: all variants train)."""
    import torch

    x, y = dataset.tensors
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model(x[:1000]), y[:1000]))


def _run_plain(dataset, model, loss_func, optimizer, batch_size, stamps):
    from torch.utils.data import DataLoader

    t_total = time.perf_counter()
    dl = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)
    model.train()
    c_epoch = time.process_time()
    t_epoch = time.perf_counter()
    steps = 0
    for xb, yb in dl:
        stamps.append(time.perf_counter())
        optimizer.zero_grad()
        loss = loss_func(model(xb), yb)
        loss.backward()
        optimizer.step()
        steps += 1
    end = time.perf_counter()
    cpu = time.process_time() - c_epoch
    return end - t_epoch, cpu, end - t_total, steps, model


def _run_accelerate(dataset, model, loss_func, optimizer, batch_size, stamps):
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    t_total = time.perf_counter()
    dl = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)
    accelerator = Accelerator()
    model, optimizer, dl = accelerator.prepare(model, optimizer, dl)
    model.train()
    c_epoch = time.process_time()
    t_epoch = time.perf_counter()
    steps = 0
    for xb, yb in dl:
        stamps.append(time.perf_counter())
        optimizer.zero_grad()
        loss = loss_func(model(xb), yb)
        accelerator.backward(loss)
        optimizer.step()
        steps += 1
    end = time.perf_counter()
    cpu = time.process_time() - c_epoch
    return end - t_epoch, cpu, end - t_total, steps, accelerator.unwrap_model(model)


def _stamp_callback(base, stamps):
    """A callback that records the time at the start of every training step (added last, so
    it costs one more no-op-sized call per step, like the hand-written loops' stamp)."""

    class StepStamp(base):
        def on_train_step_start(self, trainer, **kwargs):
            stamps.append(time.perf_counter())

    return StepStamp()


def _timed_subclass(trainer_cls):
    class Timed(trainer_cls):
        def _run_train_epoch(self, train_dl):
            cpu_start = time.process_time()
            start = time.perf_counter()
            result = super()._run_train_epoch(train_dl)
            self.bench_epoch_times.append(time.perf_counter() - start)
            self.bench_epoch_cpu.append(time.process_time() - cpu_start)
            self.bench_steps = len(train_dl)
            return result

    return Timed


def _run_pa_mixins(
    dataset, model, loss_func, optimizer, batch_size, callbacks, stamps, **trainer_options
):
    from pa_mixins import Trainer
    from pa_mixins.callbacks import TrainerCallback

    callbacks = (*callbacks, _stamp_callback(TrainerCallback, stamps))

    Timed = _timed_subclass(Trainer)
    t_total = time.perf_counter()
    trainer = Timed(model, loss_func, optimizer, callbacks=callbacks, **trainer_options)
    trainer.bench_epoch_times = []
    trainer.bench_epoch_cpu = []
    trainer.train(train_dataset=dataset, num_epochs=1, per_device_batch_size=batch_size)
    end = time.perf_counter()
    return (
        trainer.bench_epoch_times[0],
        trainer.bench_epoch_cpu[0],
        end - t_total,
        trainer.bench_steps,
        trainer.model,
    )


def _run_pytorch_accelerated(dataset, model, loss_func, optimizer, batch_size, stamps):
    from pytorch_accelerated import Trainer
    from pytorch_accelerated.callbacks import TrainerCallback
    from pytorch_accelerated.trainer import DEFAULT_CALLBACKS

    callbacks = (*DEFAULT_CALLBACKS, _stamp_callback(TrainerCallback, stamps))

    Timed = _timed_subclass(Trainer)
    t_total = time.perf_counter()
    trainer = Timed(model, loss_func, optimizer, callbacks=callbacks)
    trainer.bench_epoch_times = []
    trainer.bench_epoch_cpu = []
    trainer.train(train_dataset=dataset, num_epochs=1, per_device_batch_size=batch_size)
    end = time.perf_counter()
    return (
        trainer.bench_epoch_times[0],
        trainer.bench_epoch_cpu[0],
        end - t_total,
        trainer.bench_steps,
        trainer.get_model(),
    )


def worker(variant: str, num_samples: int, batch_size: int) -> dict:
    dataset, model, loss_func, optimizer = _make_workload(num_samples)
    stamps: list[float] = []
    if variant == "plain":
        epoch_s, cpu_s, total_s, steps, trained = _run_plain(
            dataset, model, loss_func, optimizer, batch_size, stamps
        )
    elif variant == "accelerate":
        epoch_s, cpu_s, total_s, steps, trained = _run_accelerate(
            dataset, model, loss_func, optimizer, batch_size, stamps
        )
    elif variant == "plain_compile":
        import torch

        epoch_s, cpu_s, total_s, steps, _ = _run_plain(
            dataset, torch.compile(model), loss_func, optimizer, batch_size, stamps
        )
        trained = model
    elif variant.startswith("trainer_"):
        from pa_mixins.callbacks import DEFAULT_CALLBACKS, get_default_callbacks

        callbacks = {
            "trainer_default": DEFAULT_CALLBACKS,
            "trainer_no_pbar": get_default_callbacks(progress_bar=False),
            "trainer_no_callbacks": (),
            "trainer_csv": get_default_callbacks(progress_bar=False),
            "trainer_compile": get_default_callbacks(progress_bar=False),
        }[variant]
        with tempfile.TemporaryDirectory() as project_dir:
            options = {
                "trainer_csv": {"log_with": "csv", "project_dir": project_dir},
                "trainer_compile": {"compile": True},
            }.get(variant, {})
            epoch_s, cpu_s, total_s, steps, trained = _run_pa_mixins(
                dataset,
                model,
                loss_func,
                optimizer,
                batch_size,
                callbacks,
                stamps,
                **options,
            )
    elif variant == "pa_default":
        epoch_s, cpu_s, total_s, steps, trained = _run_pytorch_accelerated(
            dataset, model, loss_func, optimizer, batch_size, stamps
        )
    else:
        raise ValueError(f"unknown variant {variant!r}")
    durations = sorted(b - a for a, b in itertools.pairwise(stamps))
    return {
        "variant": variant,
        "median_step_us": statistics.median(durations) * 1e6,
        "epoch_s": epoch_s,
        "cpu_s": cpu_s,
        "total_s": total_s,
        "steps": steps,
        "check_loss": _check_loss(trained, dataset),
    }


# ------------------------------------------------------------------------------------------
# driver side
# ------------------------------------------------------------------------------------------


def _python_for(variant: str, args: argparse.Namespace) -> str:
    return args.pa_python if variant == "pa_default" else sys.executable


def _run_variant(variant: str, args: argparse.Namespace) -> dict:
    cmd = [
        _python_for(variant, args),
        str(Path(__file__).resolve()),
        "--worker",
        variant,
        "--samples",
        str(args.samples),
        "--batch-size",
        str(args.batch_size),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # the pytorch-accelerated interpreter must not see this checkout's pa_mixins
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    if proc.returncode != 0:
        raise RuntimeError(
            f"variant {variant} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER) :])
    raise RuntimeError(
        f"variant {variant} printed no result:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )


def _probe(python: str, code: str) -> str | None:
    try:
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _versions(python: str, modules: list[str]) -> dict | None:
    code = (
        "import json, sys, importlib\n"
        "out = {'python': sys.version.split()[0]}\n"
        f"for m in {modules!r}:\n"
        "    mod = importlib.import_module(m)\n"
        "    out[m] = getattr(mod, '__version__', '?')\n"
        "print(json.dumps(out))\n"
    )
    text = _probe(python, code)
    return json.loads(text) if text else None


def _summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    summary: dict[str, dict] = {}
    plain = statistics.median(r["epoch_s"] for r in runs["plain"])
    plain_min = min(r["epoch_s"] for r in runs["plain"])
    plain_cpu = statistics.median(r["cpu_s"] for r in runs["plain"])
    plain_total = statistics.median(r["total_s"] for r in runs["plain"])
    plain_step = statistics.median(r["median_step_us"] for r in runs["plain"])
    for variant, results in runs.items():
        epochs = [r["epoch_s"] for r in results]
        cpus = [r["cpu_s"] for r in results]
        totals = [r["total_s"] for r in results]
        steps = results[0]["steps"]
        median = statistics.median(epochs)
        median_cpu = statistics.median(cpus)
        step_us = statistics.median(r["median_step_us"] for r in results)
        summary[variant] = {
            "description": VARIANTS[variant],
            "runs": len(results),
            "steps_per_epoch": steps,
            "median_epoch_s": median,
            "min_epoch_s": min(epochs),
            "max_epoch_s": max(epochs),
            "ratio_to_plain": median / plain,
            "min_ratio_to_plain": min(epochs) / plain_min,
            "us_per_step": median / steps * 1e6,
            "overhead_us_per_step": (median - plain) / steps * 1e6,
            "median_cpu_s": median_cpu,
            "cpu_ratio_to_plain": median_cpu / plain_cpu,
            "cpu_overhead_us_per_step": (median_cpu - plain_cpu) / steps * 1e6,
            "median_step_us": step_us,
            "step_ratio_to_plain": step_us / plain_step,
            "step_overhead_us": step_us - plain_step,
            "median_total_s": statistics.median(totals),
            "total_ratio_to_plain": statistics.median(totals) / plain_total,
            "check_loss": statistics.median(r["check_loss"] for r in results),
        }
    return summary


def _table(summary: dict[str, dict]) -> str:
    header = (
        "| variant | median epoch (s) | ratio to plain | min-max epoch (s) | median step (us) "
        "| step ratio | step overhead (us) | CPU ratio | setup+epoch ratio | loss after |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for variant, s in summary.items():
        rows.append(
            f"| {variant} | {s['median_epoch_s']:.3f} | **{s['ratio_to_plain']:.3f}x** "
            f"| {s['min_epoch_s']:.3f}-{s['max_epoch_s']:.3f} | {s['median_step_us']:.1f} "
            f"| {s['step_ratio_to_plain']:.3f}x | {s['step_overhead_us']:+.1f} "
            f"| {s['cpu_ratio_to_plain']:.3f}x | {s['total_ratio_to_plain']:.3f}x | {s['check_loss']:.4f} |"
        )
    return header + "\n".join(rows) + "\n"


def _fmt_load(load) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def _write_markdown(path: Path, data: dict) -> None:
    m = data["machine"]
    v = data["versions"]
    pa = data.get("pa_versions")
    s = data["summary"]
    verdict = s["trainer_default"]["ratio_to_plain"]
    lines = [
        "# bench_loop results",
        "",
        f"Date (UTC): {data['date_utc']}",
        "",
        f"Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable), "
        f"{m['platform']}; no GPU used. Load average (1/5/15 min) before the runs "
        f"{_fmt_load(data['load_average_1_5_15min']['before'])}, after "
        f"{_fmt_load(data['load_average_1_5_15min']['after'])} (other work on the machine adds noise).",
        "",
        f"Versions (pa_mixins runs): python {v['python']}, torch {v['torch']}, "
        f"accelerate {v['accelerate']}, pa_mixins {v.get('pa_mixins', '?')}.",
    ]
    if pa:
        lines.append(
            f"Versions (pytorch-accelerated run, `{data['pa_python']}`): python {pa['python']}, "
            f"torch {pa['torch']}, accelerate {pa['accelerate']}, "
            f"pytorch-accelerated {pa['pytorch_accelerated']}."
        )
    lines += [
        "",
        f"Command: `{data['command']}`",
        "",
        f"Workload: MLP 784-128-64-10 (ReLU), CrossEntropyLoss, SGD(lr=0.01), batch "
        f"{data['batch_size']}, {data['samples']} synthetic samples, 1 torch thread, 1 epoch "
        f"per run; {data['repeats']} repetitions, variants interleaved, each run in a fresh "
        "subprocess.",
        "",
        "`median epoch` is the wall time of the training epoch only (the guarded number). "
        "`median step` is the median over runs of each run's median step-to-step time (a "
        "timestamp at the start of every step: inline in the hand-written loops, an "
        "`on_train_step_start` callback added last in the trainers); a step preempted by other "
        "work does not move it, so it is the robust per-step comparison on a busy machine "
        "(it leaves out per-epoch work and rare slow steps such as tqdm refreshes). "
        "`CPU` is the process CPU time of the epoch "
        "(less sensitive to other load on the machine; for pa_default it leaves out its "
        "DataLoader worker processes); `setup+epoch` adds "
        "`DataLoader`/`Accelerator`/`prepare` (hand-written) or `Trainer(...)` + everything in "
        "`train()` (trainers). `loss after` is the trained model's loss on the first 1,000 "
        "samples (sanity check that every variant trains).",
        "",
        _table(s),
        f"Target: trainer_default <= {TARGET_RATIO:.2f}x plain. Measured: {verdict:.3f}x "
        f"({'met' if verdict <= TARGET_RATIO else 'NOT met'}).",
        "",
    ]
    for variant, desc in VARIANTS.items():
        if variant in s:
            lines.append(f"* `{variant}`: {desc}")
    if data.get("skipped"):
        lines.append("")
        lines.append(f"Skipped: {data['skipped']}")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="repetitions of every variant (default 5)"
    )
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--variants",
        default=",".join(v for v in VARIANTS if v not in OPT_IN_VARIANTS),
        help=f"comma-separated subset (default: all but {', '.join(OPT_IN_VARIANTS)})",
    )
    parser.add_argument(
        "--pa-python",
        default=DEFAULT_PA_PYTHON,
        help="interpreter with pytorch-accelerated installed (pa_default variant)",
    )
    parser.add_argument("--no-pa", action="store_true", help="skip the pytorch-accelerated variant")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"exit 1 when trainer_default is above {TARGET_RATIO}x plain",
    )
    parser.add_argument(
        "--workload",
        choices=("small", "tiny"),
        default="small",
        help="small: MLP 784-128-64-10 (default); tiny: MLP 32-16-10 (pure per-step cost)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workload == "tiny":  # the workers (fresh subprocesses) inherit it
        os.environ["BENCH_LOOP_WORKLOAD"] = "tiny"

    if args.worker:
        result = worker(args.worker, args.samples, args.batch_size)
        print(MARKER + json.dumps(result), flush=True)
        return 0

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {sorted(unknown)}")
    if "plain" not in variants:
        variants.insert(0, "plain")
    skipped = None
    pa_versions = None
    if "pa_default" in variants:
        pa_versions = (
            None
            if args.no_pa
            else _versions(args.pa_python, ["torch", "accelerate", "pytorch_accelerated"])
        )
        if pa_versions is None:
            variants.remove("pa_default")
            skipped = (
                "pa_default (--no-pa)"
                if args.no_pa
                else f"pa_default ({args.pa_python} cannot import pytorch_accelerated)"
            )
            print(f"skipping {skipped}", file=sys.stderr)

    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for rep in range(args.repeats):
        for variant in variants:
            result = _run_variant(variant, args)
            runs[variant].append(result)
            print(
                f"[{rep + 1}/{args.repeats}] {variant:22s} epoch {result['epoch_s']:.3f}s "
                f"cpu {result['cpu_s']:.3f}s median step {result['median_step_us']:.1f}us "
                f"total {result['total_s']:.3f}s",
                flush=True,
            )

    summary = _summarise(runs)
    table = _table(summary)
    print()
    print(table)
    ratio = summary["trainer_default"]["ratio_to_plain"] if "trainer_default" in summary else None

    command = "python benchmarks/bench_loop.py " + " ".join(sys.argv[1:] if argv is None else argv)
    data = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "command": command.strip(),
        "machine": machine_info(),
        "versions": _versions(sys.executable, ["torch", "accelerate", "pa_mixins"]),
        "pa_python": args.pa_python,
        "pa_versions": pa_versions,
        "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()},
        "samples": args.samples,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "variants": variants,
        "skipped": skipped,
        "target_ratio": TARGET_RATIO,
        "summary": summary,
        "runs": runs,
    }
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "bench_loop.json").write_text(json.dumps(data, indent=2) + "\n")
    if "trainer_default" in summary:
        _write_markdown(results_dir / "bench_loop.md", data)
    print(f"wrote {results_dir / 'bench_loop.json'} and bench_loop.md")
    if ratio is not None:
        print(f"trainer_default / plain = {ratio:.3f}x (target <= {TARGET_RATIO:.2f}x)")
        if args.check and ratio > TARGET_RATIO:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
