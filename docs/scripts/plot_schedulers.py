"""Plot the learning-rate curves of pa_mixins' schedulers into docs/img/schedulers.png.

Run from anywhere: ``python docs/scripts/plot_schedulers.py`` (needs the ``docs`` extra:
``pip install -e .[docs]``). Each point is the lr that optimizer update ``n`` uses.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from pa_mixins.schedulers import CosineLrScheduler, WSDLrScheduler
from pa_mixins.schedulers.scheduler_base import StatefulSchedulerBase

OUTPUT = Path(__file__).resolve().parents[1] / "img" / "schedulers.png"
PEAK_LR = 0.1


def new_optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=PEAK_LR)


def lr_curve(scheduler: StatefulSchedulerBase, num_updates: int) -> list[float]:
    """The lr used by updates 0..num_updates-1 (step the scheduler after each, as the trainer
    does)."""
    values = []
    for _ in range(num_updates):
        values.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.step()
    return values


def main() -> None:
    epochs, per_epoch = 10, 20
    total = epochs * per_epoch
    panels = {
        "CosineLrScheduler (1 warmup epoch, 2 cooldown epochs)": lr_curve(
            CosineLrScheduler(
                new_optimizer(),
                epochs,
                per_epoch,
                lr_min=0.005,
                num_warmup_epochs=1,
                num_cooldown_epochs=2,
            ),
            total,
        ),
        "CosineLrScheduler, k_decay=2 (no warmup)": lr_curve(
            CosineLrScheduler(new_optimizer(), epochs, per_epoch, k_decay=2.0, lr_min=0.005),
            total,
        ),
        "WSDLrScheduler (1 checkpoint, sqrt decay)": lr_curve(
            WSDLrScheduler(
                new_optimizer(),
                total_steps=total,
                num_warmup_steps=None,
                decay_phase_ratio=0.2,
                lr_min=0.05,
            ),
            total,
        ),
        "WSDLrScheduler (3 checkpoints, inverse-proportional decay)": lr_curve(
            WSDLrScheduler(
                new_optimizer(),
                total_steps=total,
                num_warmup_steps=10,
                decay_phase_ratio=0.2,
                lr_min=0.05,
                num_checkpoints=3,
                use_inverse_sqrt_decay=False,
            ),
            total,
        ),
    }
    figure, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True, sharey=True)
    for axis, (title, values) in zip(axes.flat, panels.items(), strict=True):
        axis.plot(range(total), values, linewidth=1.5)
        axis.set_title(title, fontsize=9)
        axis.grid(alpha=0.3)
    for axis in axes[1]:
        axis.set_xlabel("optimizer update n")
    for axis in axes[:, 0]:
        axis.set_ylabel("learning rate")
    figure.tight_layout()
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUTPUT, dpi=80)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
