"""Python function calls per training step of the default ``Trainer``: a deterministic measure
of the per-step overhead, unaffected by a busy machine (wall-clock benchmarks are not).

Trains the same tiny MLP (32-16-10, batch 32, SGD) twice, for N and 3N steps, under
``sys.setprofile``, and prints the calls per step (the difference divided by 2N) by the
package whose code is called. Compare two checkouts by running it with each on PYTHONPATH::

    PYTHONPATH=. python benchmarks/calls_per_step.py [--steps 50] [--callbacks default|none]
        [--log-every N|none] [--log-with csv] [--out DIR]

``--out DIR`` also writes the counts to ``DIR/calls_per_step.json``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import nn


def _group(filename: str) -> str:
    for marker in ("/pa_mixins/", "/torch/", "/accelerate/", "/tqdm/"):
        if marker in filename:
            return marker.strip("/")
    return "other"


def count_calls(
    num_steps: int, callbacks: str, log_every: int | None = 50, log_with: str | None = None
) -> collections.Counter[str]:
    from pa_mixins import Trainer
    from pa_mixins.callbacks import get_default_callbacks

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    inputs, targets = torch.randn(num_steps * 32, 32), torch.randint(0, 10, (num_steps * 32,))
    dataset = torch.utils.data.TensorDataset(inputs, targets)
    chosen = get_default_callbacks(progress_bar=False) if callbacks == "default" else ()
    options: dict[str, Any] = {"log_every_n_steps": log_every}
    if log_with is not None:
        options.update(log_with=log_with, project_dir=tempfile.mkdtemp())
    trainer = Trainer(model, nn.CrossEntropyLoss(), optimizer, callbacks=chosen, **options)
    counts: collections.Counter[str] = collections.Counter()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            counts[_group(frame.f_code.co_filename)] += 1

    with contextlib.redirect_stdout(io.StringIO()):
        sys.setprofile(profile)
        try:
            trainer.train(dataset, num_epochs=1, per_device_batch_size=32)
        finally:
            sys.setprofile(None)
    return counts


def main(argv: list[str] | None = None) -> None:
    """Count, print, and with ``--out`` write ``calls_per_step.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--callbacks", choices=("default", "none"), default="default")
    parser.add_argument(
        "--log-every", default="50", help="log_every_n_steps (interval metrics), or 'none'"
    )
    parser.add_argument("--log-with", default=None, help="a tracker, e.g. csv (default: none)")
    parser.add_argument("--out", default=None, help="also write DIR/calls_per_step.json")
    args = parser.parse_args(argv)
    every = None if args.log_every == "none" else int(args.log_every)
    options = (args.callbacks, every, args.log_with)
    count_calls(args.steps, *options)  # warm-up: first-use imports and caches
    short = count_calls(args.steps, *options)
    long = count_calls(3 * args.steps, *options)
    per_step = {k: (long[k] - short[k]) / (2 * args.steps) for k in set(short) | set(long)}
    for group, value in sorted(per_step.items(), key=lambda item: -item[1]):
        print(f"{group:12s} {value:8.2f} calls/step")
    print(f"{'total':12s} {sum(per_step.values()):8.2f} calls/step")
    if args.out is not None:
        path = Path(args.out) / "calls_per_step.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "steps": args.steps,
            "callbacks": args.callbacks,
            "log_every_n_steps": every,
            "log_with": args.log_with,
            "calls_per_step": dict(sorted(per_step.items(), key=lambda item: -item[1])),
            "total_calls_per_step": sum(per_step.values()),
        }
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
