"""Two processes on the CPU (gloo): ``pa_mixins.Trainer`` against hand-written DDP loops.

Issue 11, target 3: on 2 processes the Trainer takes at most 1.05x a hand-written DDP loop
with the same sampler, on the small and the tiny workload.

Variants (every one trains the same model on the same data, batch 32 per process):

* ``ddp``         hand-written loop: ``DistributedDataParallel(model)``, a ``DataLoader`` with a
                  ``DistributedSampler`` (shuffled, ``set_epoch``), ``loss.backward()``,
                  ``optimizer.step()`` (the baseline)
* ``ddp_agree``   ``ddp`` plus what the Trainer's stop agreement costs: a one-integer
                  all-reduce per update, started (``async_op=True``) before the backward pass
                  and waited for before the optimizer step
* ``accelerate``  hand-written Accelerate loop: ``Accelerator()``, ``prepare(model, optimizer,
                  dataloader)``, ``accelerator.backward``
* ``trainer``     ``pa_mixins.Trainer`` with its default callbacks (the progress bar on the
                  main process)
* ``trainer_no_pbar`` the same with ``get_default_callbacks(progress_bar=False)``

Workloads: ``small`` MLP 784-128-64-10, ``tiny`` MLP 32-16-10 (pure per-step cost); ReLU,
``CrossEntropyLoss``, ``SGD(lr=0.01)``, synthetic data (``torch.randn``, fixed seed), one torch
thread per process, one epoch.

Each run is one ``ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2`` launch; the
variants run interleaved for ``--repeats`` rounds. Inside, every process times its training
epoch only (hand-written loops: from ``iter(dataloader)`` to the last optimizer step; trainers:
their ``_run_train_epoch`` call, through a subclass, so nothing is added per step), and the
slowest process's time counts. Ratios are medians of each round's ratio to that round's
``ddp`` run (paired, so a busy moment of the machine hits both).

Usage::

    python benchmarks/bench_multiprocess.py --repeats 5
    python benchmarks/bench_multiprocess.py --tiny --out /tmp/bench   # a quick check

Results: ``bench_multiprocess.json`` and ``bench_multiprocess.md`` in ``--out``
(default ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import machine_info, paired_ratios, versions

HERE = Path(__file__).resolve().parent
MARKER = "BENCH_RESULT "
TARGET_RATIO = 1.05

VARIANTS = {
    "ddp": "hand-written DDP loop, DistributedSampler",
    "ddp_agree": "ddp + a 1-int flag all-reduce per update, started before backward",
    "accelerate": "hand-written Accelerate loop",
    "trainer": "pa_mixins.Trainer, default callbacks",
    "trainer_no_pbar": "pa_mixins.Trainer, get_default_callbacks(progress_bar=False)",
}
WORKLOADS = {"small": (784, 128, 64, 10), "tiny": (32, 16, 10)}


# ------------------------------------------------------------------------------------------
# worker side: one process of a torchrun launch
# ------------------------------------------------------------------------------------------


def _workload(name: str, num_samples: int):
    import torch
    from torch import nn

    torch.set_num_threads(1)
    sizes = WORKLOADS[name]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(num_samples, sizes[0], generator=generator)
    y = torch.randint(0, sizes[-1], (num_samples,), generator=generator)
    dataset = torch.utils.data.TensorDataset(x, y)
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for n_in, n_out in itertools.pairwise(sizes):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    return dataset, model, nn.CrossEntropyLoss(), optimizer


def _run_ddp(dataset, model, loss_func, optimizer, batch_size, agree: bool = False):
    import torch
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler

    torch.distributed.init_process_group("gloo")
    model = DistributedDataParallel(model)
    sampler = DistributedSampler(dataset, shuffle=True, seed=0)
    dl = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=0)
    sampler.set_epoch(0)
    model.train()
    start = time.perf_counter()
    steps = 0
    for xb, yb in dl:
        optimizer.zero_grad()
        loss = loss_func(model(xb), yb)
        if agree:
            flag = torch.zeros(1, dtype=torch.int32)
            work = torch.distributed.all_reduce(flag, async_op=True)
        loss.backward()
        if agree:
            work.wait()
            if int(flag.item()):
                break
        optimizer.step()
        steps += 1
    return time.perf_counter() - start, steps


def _run_accelerate(dataset, model, loss_func, optimizer, batch_size):
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    accelerator = Accelerator()
    dl = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)
    model, optimizer, dl = accelerator.prepare(model, optimizer, dl)
    model.train()
    start = time.perf_counter()
    steps = 0
    for xb, yb in dl:
        optimizer.zero_grad()
        loss = loss_func(model(xb), yb)
        accelerator.backward(loss)
        optimizer.step()
        steps += 1
    return time.perf_counter() - start, steps


def _run_trainer(dataset, model, loss_func, optimizer, batch_size, progress_bar: bool):
    from pa_mixins import Trainer
    from pa_mixins.callbacks import get_default_callbacks

    class Timed(Trainer):
        epoch_s = 0.0
        steps = 0

        def _run_train_epoch(self, train_dl):
            start = time.perf_counter()
            super()._run_train_epoch(train_dl)
            Timed.epoch_s = time.perf_counter() - start
            Timed.steps = len(train_dl)

    trainer = Timed(
        model,
        loss_func,
        optimizer,
        callbacks=get_default_callbacks(progress_bar=progress_bar),
    )
    trainer.train(train_dataset=dataset, num_epochs=1, per_device_batch_size=batch_size)
    return Timed.epoch_s, Timed.steps


def worker(variant: str, workload: str, num_samples: int, batch_size: int) -> None:
    import torch

    dataset, model, loss_func, optimizer = _workload(workload, num_samples)
    if variant in ("ddp", "ddp_agree"):
        epoch_s, steps = _run_ddp(
            dataset, model, loss_func, optimizer, batch_size, variant == "ddp_agree"
        )
    elif variant == "accelerate":
        epoch_s, steps = _run_accelerate(dataset, model, loss_func, optimizer, batch_size)
    elif variant in ("trainer", "trainer_no_pbar"):
        epoch_s, steps = _run_trainer(
            dataset, model, loss_func, optimizer, batch_size, variant == "trainer"
        )
    else:
        raise ValueError(f"unknown variant {variant!r}")
    slowest = torch.tensor([epoch_s], dtype=torch.float64)
    torch.distributed.all_reduce(slowest, op=torch.distributed.ReduceOp.MAX)
    if torch.distributed.get_rank() == 0:
        result = {"variant": variant, "epoch_s": float(slowest), "steps": steps}
        print(MARKER + json.dumps(result), flush=True)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


# ------------------------------------------------------------------------------------------
# driver side
# ------------------------------------------------------------------------------------------


def _launch(variant: str, workload: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(Path(__file__).resolve()),
        "--worker",
        variant,
        "--workload",
        workload,
        "--samples",
        str(args.samples),
        "--batch-size",
        str(args.batch_size),
    ]
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])
        ),
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER) and proc.returncode == 0:
            return json.loads(line[len(MARKER) :])
    raise RuntimeError(
        f"{variant}/{workload} failed (exit {proc.returncode}):\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )


def _summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    baseline = [b["epoch_s"] for b in runs["ddp"]]
    summary = {}
    for variant, results in runs.items():
        epochs = [r["epoch_s"] for r in results]
        steps = results[0]["steps"]
        median = statistics.median(epochs)
        summary[variant] = {
            "description": VARIANTS[variant],
            "runs": len(results),
            "updates_per_process": steps,
            "median_epoch_s": median,
            **paired_ratios(epochs, baseline),
            "us_per_update": median / steps * 1e6,
            "overhead_us_per_update": (median - statistics.median(baseline)) / steps * 1e6,
        }
    return summary


def _table(summaries: dict[str, dict[str, dict]]) -> str:
    lines = [
        "| workload | variant | median epoch (s) | paired ratio to ddp | us per update "
        "| overhead (us per update) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for workload, summary in summaries.items():
        for variant, s in summary.items():
            lines.append(
                f"| {workload} | {variant} | {s['median_epoch_s']:.3f} "
                f"| **{s['median_paired_ratio']:.3f}x** | {s['us_per_update']:.0f} "
                f"| {s['overhead_us_per_update']:+.0f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workload", default="small", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=20_000, help="total, both processes")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--tiny", action="store_true", help="one quick round: the script works")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--check", action="store_true", help=f"exit 1 above {TARGET_RATIO}x")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.workload, args.samples, args.batch_size)
        return 0
    if args.tiny:
        args.repeats, args.samples = 1, 640
    variants = args.variants.split(",")
    if "ddp" not in variants:
        variants.insert(0, "ddp")
    summaries: dict[str, dict[str, dict]] = {}
    all_runs: dict[str, dict[str, list[dict]]] = {}
    for workload in args.workloads.split(","):
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for round_index in range(args.repeats):
            for variant in variants:
                result = _launch(variant, workload, args)
                runs[variant].append(result)
                print(
                    f"[{workload} {round_index + 1}/{args.repeats}] {variant}: "
                    f"{result['epoch_s']:.3f} s",
                    flush=True,
                )
        all_runs[workload] = runs
        summaries[workload] = _summarise(runs)
    table = _table(summaries)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bench_multiprocess.py " + " ".join(sys.argv[1:])
    payload = {
        "date": time.strftime("%Y-%m-%d"),
        "command": command.strip(),
        "machine": {**machine_info(), **versions()},
        "samples": args.samples,
        "summary": summaries,
        "runs": all_runs,
    }
    (args.out / "bench_multiprocess.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / "bench_multiprocess.md").write_text(
        f"# 2 processes, CPU (gloo)\n\n{time.strftime('%Y-%m-%d')}, `{command.strip()}`, "
        f"{json.dumps(payload['machine'])}\n\n{table}"
    )
    if args.check:
        worst = max(
            s[v]["median_paired_ratio"] for s in summaries.values() for v in s if v != "ddp"
        )
        return 1 if worst > TARGET_RATIO else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
