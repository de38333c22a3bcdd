"""Where does a ``pa_mixins.Trainer`` step spend its time beyond a hand-written loop?

Runs the bench_loop workload (fewer samples by default) once with the plain loop and once with
the Trainer, each under cProfile restricted to the training epoch, and prints per-step costs
(microseconds per step) of the functions in ``pa_mixins``, ``accelerate``, ``tqdm`` and the
Python parts of ``torch`` that differ between the two.

cProfile adds a fixed cost to every Python call, so absolute numbers are inflated for code made
of many small calls; use the ranking and call counts, and ``bench_loop.py`` for real times.

Usage::

    python benchmarks/profile_trainer.py [--samples 20000] [--callbacks default|no_pbar|none]
        [--out DIR]

``--out DIR`` also writes the numbers to ``DIR/profile_trainer.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_loop import _make_workload


def _profile_plain(samples: int, batch_size: int):
    from torch.utils.data import DataLoader

    dataset, model, loss_func, optimizer = _make_workload(samples)
    dl = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)
    model.train()
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    steps = 0
    for xb, yb in dl:
        optimizer.zero_grad()
        loss = loss_func(model(xb), yb)
        loss.backward()
        optimizer.step()
        steps += 1
    prof.disable()
    return prof, steps, time.perf_counter() - start


def _profile_trainer(samples: int, batch_size: int, callbacks_name: str):
    from pa_mixins import Trainer
    from pa_mixins.callbacks import DEFAULT_CALLBACKS, get_default_callbacks

    callbacks = {
        "default": DEFAULT_CALLBACKS,
        "no_pbar": get_default_callbacks(progress_bar=False),
        "none": (),
    }[callbacks_name]
    dataset, model, loss_func, optimizer = _make_workload(samples)
    prof = cProfile.Profile()
    box: dict = {}

    class Profiled(Trainer):
        def _run_train_epoch(self, train_dl):
            box["steps"] = len(train_dl)
            start = time.perf_counter()
            prof.enable()
            try:
                return super()._run_train_epoch(train_dl)
            finally:
                prof.disable()
                box["wall"] = time.perf_counter() - start

    trainer = Profiled(model, loss_func, optimizer, callbacks=callbacks)
    trainer.train(train_dataset=dataset, num_epochs=1, per_device_batch_size=batch_size)
    return prof, box["steps"], box["wall"]


def _rows(prof: cProfile.Profile, steps: int) -> dict[tuple, tuple]:
    stats = pstats.Stats(prof)
    out = {}
    for (filename, line, name), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        out[(filename, line, name)] = (nc / steps, tt / steps * 1e6, ct / steps * 1e6)
    return out


def _short(filename: str) -> str:
    for marker in ("pa_mixins/", "accelerate/", "tqdm/", "torch/"):
        idx = filename.rfind(marker)
        if idx >= 0:
            return filename[idx:]
    return filename


def main(argv: list[str] | None = None) -> None:
    """Profile both loops, print, and with ``--out`` write ``profile_trainer.json``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--callbacks", choices=["default", "no_pbar", "none"], default="default")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--out", default=None, help="also write DIR/profile_trainer.json")
    args = parser.parse_args(argv)

    plain_prof, plain_steps, plain_wall = _profile_plain(args.samples, args.batch_size)
    tr_prof, tr_steps, tr_wall = _profile_trainer(args.samples, args.batch_size, args.callbacks)
    plain = _rows(plain_prof, plain_steps)
    trainer = _rows(tr_prof, tr_steps)
    print(
        f"profiled wall per step: plain {plain_wall / plain_steps * 1e6:.1f} us, "
        f"trainer ({args.callbacks}) {tr_wall / tr_steps * 1e6:.1f} us"
    )
    tot_plain = sum(r[1] for r in plain.values())
    tot_tr = sum(r[1] for r in trainer.values())
    print(
        f"sum of tottime per step: plain {tot_plain:.1f} us, trainer {tot_tr:.1f} us, "
        f"difference {tot_tr - tot_plain:+.1f} us\n"
    )

    print("Functions by extra self time per step (trainer minus plain), us/step:")
    print(
        f"{'calls/step':>10} {'self us':>8} {'plain us':>8} {'extra us':>8} {'cum us':>8}  function"
    )
    diffs = []
    for key, (nc, tt, ct) in trainer.items():
        p = plain.get(key, (0.0, 0.0, 0.0))
        diffs.append((tt - p[1], key, nc, tt, p[1], ct))
    for key, (_nc, plain_tt, _ct) in plain.items():
        if key not in trainer:
            diffs.append((-plain_tt, key, 0.0, 0.0, plain_tt, 0.0))
    diffs.sort(key=lambda d: -abs(d[0]))
    for extra, (filename, line, name), nc, tt, ptt, ct in diffs[: args.top]:
        print(
            f"{nc:10.2f} {tt:8.2f} {ptt:8.2f} {extra:+8.2f} {ct:8.2f}  {_short(filename)}:{line}({name})"
        )

    print("\npa_mixins / accelerate / tqdm functions in the trainer epoch, by cumulative us/step:")
    print(f"{'calls/step':>10} {'self us':>8} {'cum us':>8}  function")
    ours = [
        (ct, nc, tt, key)
        for key, (nc, tt, ct) in trainer.items()
        if any(m in key[0] for m in ("pa_mixins", "accelerate", "tqdm"))
    ]
    ours.sort(key=lambda r: -r[0])
    for ct, nc, tt, (filename, line, name) in ours[: args.top]:
        print(f"{nc:10.2f} {tt:8.2f} {ct:8.2f}  {_short(filename)}:{line}({name})")

    if args.out is not None:
        path = Path(args.out) / "profile_trainer.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "samples": args.samples,
            "batch_size": args.batch_size,
            "callbacks": args.callbacks,
            "profiled_us_per_step": {
                "plain": plain_wall / plain_steps * 1e6,
                "trainer": tr_wall / tr_steps * 1e6,
            },
            "tottime_us_per_step": {"plain": tot_plain, "trainer": tot_tr},
            "extra_self_time": [
                {
                    "function": f"{_short(filename)}:{line}({name})",
                    "calls_per_step": nc,
                    "self_us": tt,
                    "plain_us": ptt,
                    "extra_us": extra,
                    "cum_us": ct,
                }
                for extra, (filename, line, name), nc, tt, ptt, ct in diffs[: args.top]
            ],
            "ours_by_cumulative": [
                {
                    "function": f"{_short(filename)}:{line}({name})",
                    "calls_per_step": nc,
                    "self_us": tt,
                    "cum_us": ct,
                }
                for ct, nc, tt, (filename, line, name) in ours[: args.top]
            ],
        }
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
