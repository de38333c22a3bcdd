"""Issue 11, target 5 ("scale"): the time of one epoch at 10k, 50k and 250k samples, for the
plain loop and the default ``Trainer``; it should be linear in the data size (nothing in the
loop costs more per step as the epoch grows), and a throughput table (samples/s).

Every run is one of bench_loop.py's workers (``bench_loop.py --worker VARIANT --samples N``:
MLP 784-128-64-10, batch 32, SGD, one torch thread, one epoch, the epoch timed inside the
process), in a fresh subprocess; the sizes and variants are interleaved for ``--repeats``
repetitions. Per size and variant: median epoch time, microseconds per sample, samples per
second; the Trainer / plain paired ratio at each size; and the linearity check, the time per
sample at the largest size over the time per sample at the smallest (target: <= 1.10; per-epoch
fixed costs make the small sizes' per-sample time the larger one, so < 1 is expected).

The 250k-sample dataset takes about 0.8 GB (float32) in its worker.

Throughput on two processes comes from ``bench_multiprocess.py`` (the lead's script): the
table leaves a column for it, filled from ``--multiprocess-json FILE`` when given (a JSON
mapping ``{"<variant>": {"<samples>": samples_per_second}}``), empty otherwise.

Usage::

    python benchmarks/bench_scale.py --repeats 3 [--sizes 10000,50000,250000]
        [--variants plain,trainer_default] [--check]
    python benchmarks/bench_scale.py --tiny --out /tmp/x       # CI: seconds, no timing

Results: ``bench_scale.json`` and ``bench_scale.md`` in ``--out`` (default
``benchmarks/results``). ``--check`` exits 1 when the linearity target is missed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    HERE,
    add_out_argument,
    base_record,
    header_lines,
    paired_ratios,
    run_worker,
    write_results,
)

LINEARITY_TARGET = 1.10
DEFAULT_SIZES = (10_000, 50_000, 250_000)


def _run(variant: str, samples: int, args: argparse.Namespace) -> dict[str, Any]:
    if args.in_process:
        import bench_loop

        from pa_mixins.mixins.accelerate import reset_accelerate_state

        reset_accelerate_state()
        result: dict[str, Any] = bench_loop.worker(variant, samples, args.batch_size)
        return result
    cmd = [
        sys.executable,
        str(HERE / "bench_loop.py"),
        "--worker",
        variant,
        "--samples",
        str(samples),
        "--batch-size",
        str(args.batch_size),
    ]
    return run_worker(cmd, timeout=args.timeout)


def _summarise(
    runs: dict[str, dict[int, list[dict[str, Any]]]], sizes: list[int]
) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for variant, by_size in runs.items():
        rows = {}
        for samples in sizes:
            results = by_size[samples]
            median = statistics.median(r["epoch_s"] for r in results)
            rows[samples] = {
                "median_epoch_s": median,
                "min_epoch_s": min(r["epoch_s"] for r in results),
                "max_epoch_s": max(r["epoch_s"] for r in results),
                "us_per_sample": median / samples * 1e6,
                "samples_per_s": samples / median,
                "steps": results[0]["steps"],
                "median_step_us": statistics.median(r["median_step_us"] for r in results),
            }
            if variant != "plain" and "plain" in runs:
                rows[samples]["vs_plain"] = paired_ratios(
                    [r["epoch_s"] for r in results], [r["epoch_s"] for r in runs["plain"][samples]]
                )
        smallest, largest = rows[sizes[0]], rows[sizes[-1]]
        linearity = largest["us_per_sample"] / smallest["us_per_sample"]
        summary[variant] = {
            "sizes": rows,
            "linearity": linearity,
            "meets_target": linearity <= LINEARITY_TARGET,
        }
    return summary


def _markdown(data: dict[str, Any]) -> str:
    summary, sizes = data["summary"], data["sizes"]
    multi = data.get("multiprocess") or {}
    lines = header_lines("bench_scale results (issue 11, target 5)", data)
    if data["in_process"]:
        lines += ["**In-process run (--tiny / --in-process): times not comparable.**", ""]
    lines += [
        f"Workload: bench_loop.py's (MLP 784-128-64-10, batch {data['batch_size']}, SGD, 1 torch "
        f"thread), one epoch per run, {data['repeats']} repetitions, sizes and variants "
        "interleaved.",
        "",
        "## Time per epoch",
        "",
        "| variant | samples | median epoch (s) | min-max (s) | us/sample | median step (us) "
        "| Trainer / plain (paired) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for variant, s in summary.items():
        for samples in sizes:
            row = s["sizes"][samples]
            ratio = row.get("vs_plain", {}).get("median_paired_ratio")
            lines.append(
                f"| {variant} | {samples:,} | {row['median_epoch_s']:.3f} "
                f"| {row['min_epoch_s']:.3f}-{row['max_epoch_s']:.3f} | {row['us_per_sample']:.2f} "
                f"| {row['median_step_us']:.1f} | {'-' if ratio is None else f'{ratio:.3f}x'} |"
            )
    lines += [
        "",
        f"Linearity (us/sample at {sizes[-1]:,} over us/sample at {sizes[0]:,}; target "
        f"<= {LINEARITY_TARGET:.2f}): "
        + ", ".join(
            f"{v} **{s['linearity']:.3f}** ({'met' if s['meets_target'] else 'NOT met'})"
            for v, s in summary.items()
        )
        + ".",
        "",
        "## Throughput (samples/s)",
        "",
        "| variant | samples | 1 process (this script) | 2 processes (bench_multiprocess.py) |",
        "|---|---:|---:|---:|",
    ]
    for variant, s in summary.items():
        for samples in sizes:
            row = s["sizes"][samples]
            two = multi.get(variant, {}).get(str(samples))
            lines.append(
                f"| {variant} | {samples:,} | {row['samples_per_s']:,.0f} "
                f"| {'-' if two is None else f'{two:,.0f}'} |"
            )
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default=",".join(str(n) for n in DEFAULT_SIZES))
    parser.add_argument(
        "--variants",
        default="plain,trainer_default",
        help="bench_loop.py variants (plain is always run)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument(
        "--multiprocess-json", help="two-process throughput from bench_multiprocess.py"
    )
    parser.add_argument(
        "--in-process", action="store_true", help="no fresh process per run (CI; not for numbers)"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="CI size: 320 and 640 samples, 1 repetition, in-process"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    add_out_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run every size and variant and write the results."""
    args = _parser().parse_args(argv)
    if args.tiny:
        args.sizes, args.repeats, args.in_process = "320,640", 1, True
    sizes = sorted(int(n) for n in args.sizes.split(",") if n.strip())
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "plain" not in variants:
        variants.insert(0, "plain")
    data = base_record("bench_scale.py", argv)
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {v: {n: [] for n in sizes} for v in variants}
    for rep in range(args.repeats):
        for samples in sizes:
            for variant in variants:
                result = _run(variant, samples, args)
                runs[variant][samples].append(result)
                print(
                    f"[{rep + 1}/{args.repeats}] {samples:>8,} samples {variant:18s} "
                    f"epoch {result['epoch_s']:.3f}s ({samples / result['epoch_s']:,.0f} samples/s)",
                    flush=True,
                )
    summary = _summarise(runs, sizes)
    multiprocess = None
    if args.multiprocess_json:
        multiprocess = json.loads(Path(args.multiprocess_json).read_text())
    data.update(
        sizes=sizes,
        variants=variants,
        batch_size=args.batch_size,
        repeats=args.repeats,
        in_process=args.in_process,
        linearity_target=LINEARITY_TARGET,
        multiprocess=multiprocess,
        summary=summary,
        runs={v: {str(n): rs for n, rs in by_size.items()} for v, by_size in runs.items()},
    )
    write_results(args.out, "bench_scale", data, _markdown)
    missed = [v for v, s in summary.items() if not s["meets_target"]]
    for variant, s in summary.items():
        print(f"{variant}: linearity {s['linearity']:.3f} (target <= {LINEARITY_TARGET:.2f})")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
