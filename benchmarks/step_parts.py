"""Real (unprofiled) cost, in microseconds, of each piece of per-step work the Trainer adds
over a hand-written loop, measured one by one with ``timeit`` on the bench_loop model.

cProfile (``profile_trainer.py``) says *where* the extra calls are; this says what each costs
without a profiler's per-call tax. Each number is the best of several ``timeit`` repeats
(robust to other load on the machine).

Usage::

    python benchmarks/step_parts.py [--quick] [--out DIR]

``--quick`` runs each timing 20x fewer times, 3 repeats (CI: the script works; numbers rough);
``--out DIR`` also writes them to ``DIR/step_parts.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_loop import _make_workload

#: (divisor of ``number``, repeats) of every timing; ``--quick`` makes them (20, 3)
_RUNS = {"divisor": 1, "repeat": 7}


def best_us(stmt, number: int = 20_000, repeat: int = 7) -> float:
    number = max(number // _RUNS["divisor"], 1)
    repeat = min(repeat, _RUNS["repeat"])
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number * 1e6


def main(argv: list[str] | None = None) -> None:
    """Time each piece, print, and with ``--out`` write ``step_parts.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20x fewer runs, 3 repeats (CI)")
    parser.add_argument("--out", default=None, help="also write DIR/step_parts.json")
    args = parser.parse_args(argv)
    if args.quick:
        _RUNS.update(divisor=20, repeat=3)

    import torch

    from pa_mixins import Trainer
    from pa_mixins.callbacks import DEFAULT_CALLBACKS, CallbackHandler, get_default_callbacks
    from pa_mixins.callbacks.defaults import ProgressBarCallback, TerminateOnNaNCallback
    from pa_mixins.checks import check_batch_output
    from pa_mixins.tracking import LossTracker

    dataset, model, loss_func, optimizer = _make_workload(2_000)
    xb, yb = dataset.tensors[0][:32], dataset.tensors[1][:32]
    loss = loss_func(model(xb), yb)
    loss.backward()  # gradients exist, as during training
    batch_output = {"loss": loss, "model_outputs": None, "batch_size": 32}

    trainer = Trainer(model, loss_func, optimizer, callbacks=DEFAULT_CALLBACKS)
    trainer.train(
        train_dataset=torch.utils.data.TensorDataset(xb, yb), num_epochs=1, per_device_batch_size=32
    )
    model = trainer.model

    rows: list[tuple[str, float]] = []

    def add(name: str, stmt, **kw) -> None:
        rows.append((name, best_us(stmt, **kw)))

    # reference: the hand-written step's own pieces
    add(
        "reference: forward+loss+backward+SGD step+zero_grad (plain step)",
        lambda: (optimizer.zero_grad(), loss_func(model(xb), yb).backward(), optimizer.step()),
        number=500,
    )

    tracker = LossTracker()
    add("LossTracker.update(loss, 32)", lambda: tracker.update(loss, 32))
    total = torch.zeros((), dtype=torch.float32)
    add(
        "  alternative: total.add_(loss.detach(), alpha=32) + int count",
        lambda: total.add_(loss.detach(), alpha=32),
    )

    nan_cb = TerminateOnNaNCallback()
    add(
        "TerminateOnNaNCallback.on_train_step_end (isfinite + all + bool)",
        lambda: nan_cb.on_train_step_end(trainer, batch=None, batch_output=batch_output),
    )
    import math

    add("  alternative on CPU: math.isfinite(loss.item())", lambda: math.isfinite(loss.item()))

    pbar_cb = ProgressBarCallback()
    from tqdm.auto import tqdm

    pbar_cb.pbar = tqdm(total=10**9, disable=False, leave=False, file=open("/dev/null", "w"))
    add(
        "ProgressBarCallback.on_train_step_end (tqdm.update)",
        lambda: pbar_cb.on_train_step_end(trainer, batch=None, batch_output=batch_output),
    )
    pbar_cb.pbar.close()

    handler_default = CallbackHandler(get_default_callbacks(progress_bar=False))
    add(
        "call_event('on_train_step_start') over default callbacks (all no-ops)",
        lambda: handler_default.call_event("on_train_step_start", trainer),
    )
    add(
        "call_event('on_optimizer_step_end', num_updates=1) (all no-ops)",
        lambda: handler_default.call_event("on_optimizer_step_end", trainer, num_updates=1),
    )
    handler_nan_only = CallbackHandler([TerminateOnNaNCallback])
    nan_method = handler_nan_only.callbacks[0].on_train_step_end
    add(
        "call_event('on_train_step_end', ...) dispatch cost, default callbacks minus the work",
        lambda: handler_default.call_event(
            "on_train_step_end", trainer, batch_output=batch_output, batch=None, step=0
        ),
    )
    rows[-1] = (
        rows[-1][0],
        rows[-1][1] - best_us(lambda: nan_method(trainer, batch=None, batch_output=batch_output)),
    )
    empty = CallbackHandler(())
    add(
        "call_event(...) with callbacks=()",
        lambda: empty.call_event("on_train_step_start", trainer),
    )

    add(
        "grads = [p.grad for p in model.parameters() if p.grad is not None] (accumulation mixin)",
        lambda: [p.grad for p in model.parameters() if p.grad is not None],
    )

    def with_nullcontext():
        with nullcontext():
            pass

    add("with nullcontext(): (per step in _run_train_epoch)", with_nullcontext)
    add("is_update_step(step)", lambda: trainer.is_update_step(3))
    add("loss_for_backward(batch_output)", lambda: trainer.loss_for_backward(batch_output))
    add("check_batch_output(batch_output)", lambda: check_batch_output(batch_output, "x"))
    trainer.run_config = trainer.run_config  # kept from the run
    add("_clip_gradients() (no clipping configured)", lambda: trainer._clip_gradients())
    add("after_optimizer_step() (no scheduler)", lambda: trainer.after_optimizer_step())
    add("optimizer.zero_grad() (torch)", lambda: optimizer.zero_grad(), number=5000)

    width = max(len(name) for name, _ in rows)
    print(f"{'piece':<{width}}  us/call")
    for name, us in rows:
        print(f"{name:<{width}}  {us:7.2f}")
    if args.out is not None:
        path = Path(args.out) / "step_parts.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"quick": args.quick, "us_per_call": dict(rows)}
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
