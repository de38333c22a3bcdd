"""Every script in ``benchmarks/`` runs once at its tiniest size, as CI does, so the scripts
keep working (issue 11: "a CI step runs each benchmark once at tiny sizes"). Nothing about
speed is asserted: only that the script exits with 0 and writes result files that parse.

Each run writes into a temporary folder (``--out`` / ``--results-dir``), never over
``benchmarks/results/``. To add a script, add a line to ``SCRIPTS``;
``test_every_benchmark_script_is_listed`` fails until it is there.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from typing import NamedTuple

import pytest

from tests.conftest import REPO_ROOT, launch_env

BENCHMARKS = pathlib.Path(REPO_ROOT) / "benchmarks"


class BenchScript(NamedTuple):
    """A script, its tiniest arguments (``{out}`` is replaced by the output folder) and the
    result files it must write there."""

    name: str
    args: tuple[str, ...]
    results: tuple[str, ...]


SCRIPTS = [
    BenchScript(
        "bench_loop.py",
        tuple(
            "--samples 640 --repeats 1 --no-pa --variants plain,trainer_default "
            "--results-dir {out}".split()
        ),
        ("bench_loop.json", "bench_loop.md"),
    ),
    BenchScript(  # one workload, two variants: its whole --tiny takes minutes on 2 cores
        "bench_multiprocess.py",
        ("--tiny", "--workloads", "tiny", "--variants", "ddp,trainer", "--out", "{out}"),
        ("bench_multiprocess.json", "bench_multiprocess.md"),
    ),
    BenchScript("calls_per_step.py", ("--steps", "5", "--out", "{out}"), ("calls_per_step.json",)),
    BenchScript(
        "profile_trainer.py",
        ("--samples", "320", "--top", "5", "--out", "{out}"),
        ("profile_trainer.json",),
    ),
    BenchScript("step_parts.py", ("--quick", "--out", "{out}"), ("step_parts.json",)),
    BenchScript(
        "bench_options.py", ("--tiny", "--out", "{out}"), ("bench_options.json", "bench_options.md")
    ),
    BenchScript(
        "bench_startup.py", ("--tiny", "--out", "{out}"), ("bench_startup.json", "bench_startup.md")
    ),
    BenchScript(
        "bench_scale.py", ("--tiny", "--out", "{out}"), ("bench_scale.json", "bench_scale.md")
    ),
    BenchScript(
        "gpu_perf.py",
        ("--device", "cpu", "--tiny", "--out", "{out}"),
        ("gpu_perf.json", "gpu_perf.md"),
    ),
]


def test_every_benchmark_script_is_listed() -> None:
    on_disk = {p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_")}
    listed = {script.name for script in SCRIPTS}
    assert on_disk <= listed, f"add to SCRIPTS in {__file__}: {sorted(on_disk - listed)}"


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_benchmark_script_runs_at_its_tiniest(script: BenchScript, tmp_path: pathlib.Path) -> None:
    path = BENCHMARKS / script.name
    if not path.exists():
        pytest.skip(f"{script.name} is not in this checkout")
    out = tmp_path / "results"
    args = [arg.replace("{out}", str(out)) for arg in script.args]
    proc = subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=launch_env(PYTHONUNBUFFERED="1"),
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in script.results:
        result = out / name
        assert result.is_file(), f"{script.name} did not write {name}:\n{proc.stdout[-2000:]}"
        text = result.read_text()
        if name.endswith(".json"):
            assert isinstance(json.loads(text), dict)
        else:
            assert text.startswith("#"), f"{name} is not a Markdown report"
