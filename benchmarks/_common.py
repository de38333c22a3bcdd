"""What the benchmark scripts share: the bench_loop workload, running a worker in a fresh
subprocess, the machine and version record, paired-ratio statistics and writing results.

Not a benchmark itself (``tests/test_benchmark_scripts.py`` runs every other script here).
Only the standard library is imported at module level, so a script can time ``import torch``
after importing this module.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
RESULTS_DIR = HERE / "results"
MARKER = "BENCH_RESULT "


# ------------------------------------------------------------------------------------------
# workload (the bench_loop one)
# ------------------------------------------------------------------------------------------


def make_mlp_workload(
    num_samples: int,
    in_features: int = 784,
    hidden: Sequence[int] = (128, 64),
    num_classes: int = 10,
    lr: float = 0.01,
    seed: int = 0,
) -> tuple[Any, Any, Any, Any]:
    """``(dataset, model, loss_func, optimizer)``: ``num_samples`` synthetic samples
    (``torch.randn`` features, random int labels, fixed seed), an MLP
    ``in_features-hidden...-num_classes`` with ReLUs, ``CrossEntropyLoss`` and ``SGD(lr)``.
    With the defaults this is bench_loop.py's workload. Sets one torch thread."""
    import torch
    from torch import nn

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, in_features, generator=generator)
    y = torch.randint(0, num_classes, (num_samples,), generator=generator)
    dataset = torch.utils.data.TensorDataset(x, y)
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    model = nn.Sequential(*layers, nn.Linear(width, num_classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return dataset, model, nn.CrossEntropyLoss(), optimizer


def make_eval_dataset(num_samples: int, in_features: int = 784, seed: int = 1) -> Any:
    """A held-out synthetic set shaped like :func:`make_mlp_workload`'s (another seed)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, in_features, generator=generator)
    y = torch.randint(0, 10, (num_samples,), generator=generator)
    return torch.utils.data.TensorDataset(x, y)


def check_loss(model: Any, dataset: Any, count: int = 1000) -> float:
    """Loss of ``model`` on the first ``count`` samples (sanity: every variant trains)."""
    import torch

    x, y = dataset.tensors
    was_training = model.training
    model.eval()
    with torch.no_grad():
        value = float(torch.nn.functional.cross_entropy(model(x[:count]).float(), y[:count]))
    model.train(was_training)
    return value


def median_step_us(stamps: Sequence[float]) -> float:
    """Median time between consecutive step-start timestamps, in microseconds (0 if fewer
    than two)."""
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return statistics.median(gaps) * 1e6 if gaps else 0.0


def step_stamp_callback(stamps: list[float]) -> Any:
    """A ``pa_mixins`` callback recording ``time.perf_counter()`` at the start of every
    training step (add it last: it costs one no-op-sized call per step, like the inline stamp
    of the hand-written loops)."""
    from pa_mixins.callbacks import TrainerCallback

    class StepStamp(TrainerCallback):
        def on_train_step_start(self, trainer: Any, **kwargs: Any) -> None:
            stamps.append(time.perf_counter())

    return StepStamp()


def get_callbacks(name: str) -> tuple[Any, ...]:
    """The trainer callbacks by name: ``default`` (tqdm bar included), ``no_pbar``
    (``get_default_callbacks(progress_bar=False)``) or ``none``."""
    from pa_mixins.callbacks import DEFAULT_CALLBACKS, get_default_callbacks

    if name == "default":
        return tuple(DEFAULT_CALLBACKS)
    if name == "no_pbar":
        return tuple(get_default_callbacks(progress_bar=False))
    if name == "none":
        return ()
    raise ValueError(f"unknown callbacks {name!r} (default, no_pbar or none)")


# ------------------------------------------------------------------------------------------
# fresh subprocesses
# ------------------------------------------------------------------------------------------


def bench_env(**extra: str) -> dict[str, str]:
    """The environment of a worker: one thread, this checkout's ``pa_mixins`` first on the
    path, none of the parent's Accelerate settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "PT_ACC"))}
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    env.update(extra)
    return env


def run_worker(
    cmd: Sequence[str], timeout: float = 900, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run ``cmd`` (a worker that prints ``MARKER + json`` as its last result line) in a fresh
    process and return the parsed result; raise with the output's tail if it fails."""
    proc = subprocess.run(
        list(cmd),
        capture_output=True,
        text=True,
        env=env if env is not None else bench_env(),
        timeout=timeout,
        cwd=REPO_ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed (exit {proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            result: dict[str, Any] = json.loads(line[len(MARKER) :])
            return result
    raise RuntimeError(
        f"{' '.join(cmd)} printed no result:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )


def print_result(result: dict[str, Any]) -> None:
    """The worker side of :func:`run_worker`."""
    print(MARKER + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------


def paired_ratios(values: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
    """Ratios of runs made in the same repetition (``values[i] / baseline[i]``): their
    median (the robust number on a busy machine: both runs of a pair saw about the same load),
    min and max, and the ratio of the medians and of the minima."""
    pairs = [v / b for v, b in zip(values, baseline) if b > 0]
    return {
        "median_paired_ratio": statistics.median(pairs) if pairs else float("nan"),
        "min_paired_ratio": min(pairs) if pairs else float("nan"),
        "max_paired_ratio": max(pairs) if pairs else float("nan"),
        "ratio_of_medians": statistics.median(values) / statistics.median(baseline),
        "ratio_of_minima": min(values) / min(baseline),
    }


# ------------------------------------------------------------------------------------------
# record and results
# ------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU model, logical and usable CPUs, platform."""
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "cpu_model": cpu_model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "platform": platform.platform(),
    }


def versions(distributions: Sequence[str] = ("torch", "accelerate", "pa_mixins")) -> dict[str, str]:
    """Python's and the installed distributions' versions (read from their metadata, nothing
    imported; ``pa_mixins`` from this checkout's ``_version.py`` when not installed)."""
    out = {"python": sys.version.split()[0]}
    for name in distributions:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    if out.get("pa_mixins") == "not installed":
        namespace: dict[str, Any] = {}
        exec((REPO_ROOT / "pa_mixins" / "_version.py").read_text(), namespace)
        out["pa_mixins"] = str(namespace.get("__version__", "?"))
    return out


def load_average() -> list[float]:
    """The 1/5/15-minute load averages (zeros where the platform has none)."""
    try:
        return list(os.getloadavg())
    except OSError:
        return [0.0, 0.0, 0.0]


def fmt_load(load: Sequence[float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def header_lines(title: str, data: dict[str, Any]) -> list[str]:
    """The Markdown lines every result file starts with: title, date, machine, load,
    versions, command."""
    m = data["machine"]
    v = data["versions"]
    load = data["load_average_1_5_15min"]
    return [
        f"# {title}",
        "",
        f"Date (UTC): {data['date_utc']}",
        "",
        f"Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable), "
        f"{m['platform']}. Load average (1/5/15 min) before the runs {fmt_load(load['before'])}, "
        f"after {fmt_load(load['after'])} (other work on the machine adds noise).",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        f"Command: `{data['command']}`",
        "",
    ]


def base_record(script: str, argv: Sequence[str] | None) -> dict[str, Any]:
    """Date, command, machine, versions and the load average before the runs."""
    args = sys.argv[1:] if argv is None else list(argv)
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "command": f"python benchmarks/{script} {' '.join(args)}".strip(),
        "machine": machine_info(),
        "versions": versions(),
        "load_average_1_5_15min": {"before": load_average(), "after": None},
    }


def write_results(
    out_dir: str | os.PathLike[str],
    name: str,
    data: dict[str, Any],
    markdown: Callable[[dict[str, Any]], str] | None = None,
) -> list[Path]:
    """Write ``<out_dir>/<name>.json`` (and ``<name>.md`` from ``markdown(data)``), with the
    load average after the runs filled in. Returns the paths written."""
    if "load_average_1_5_15min" in data:
        data["load_average_1_5_15min"]["after"] = load_average()
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.json"]
    paths[0].write_text(json.dumps(data, indent=2) + "\n")
    if markdown is not None:
        paths.append(folder / f"{name}.md")
        paths[1].write_text(markdown(data))
    print("wrote " + " and ".join(str(p) for p in paths))
    return paths


def add_out_argument(parser: Any) -> None:
    """``--out DIR``: where the results go (default ``benchmarks/results``)."""
    parser.add_argument(
        "--out",
        "--results-dir",
        dest="out",
        default=str(RESULTS_DIR),
        help="folder for the JSON and Markdown results (default benchmarks/results)",
    )
