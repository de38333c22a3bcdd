"""``WSDLrScheduler``: Warmup-Stable-Decay learning rates (arXiv 2410.05192), with
intermediate checkpoints and continuation from a checkpoint."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, cast

import torch

from pa_mixins.placeholders import TrainerPlaceholderValues
from pa_mixins.schedulers.scheduler_base import Count, StatefulSchedulerBase, linear_warmup

__all__ = ["DEFAULT_WARMUP_FRACTION", "WSDLrScheduler", "estimate_checkpoint_steps"]

#: the fraction of the run used for warmup when ``num_warmup_steps`` is ``None``
DEFAULT_WARMUP_FRACTION = 0.1

#: the largest ``decay_phase_ratio`` accepted with several checkpoints
MAX_MULTI_CHECKPOINT_DECAY_RATIO = 1 / 3


def estimate_checkpoint_steps(total_steps: int, num_checkpoints: int = 3) -> list[int]:
    """Checkpoint steps spaced geometrically and ending at ``total_steps``: each is twice the
    one before, e.g. 3 checkpoints for 200 steps -> ``[50, 100, 200]``, 2 for 100 ->
    ``[50, 100]``, 1 -> ``[total_steps]``.

    When ``total_steps`` is too small for ``num_checkpoints`` distinct positive steps, the
    repeated (or zero) ones are dropped, so fewer checkpoints are returned.
    """
    if total_steps < 1 or num_checkpoints < 1:
        raise ValueError(
            f"total_steps and num_checkpoints must be positive, got {total_steps} and "
            f"{num_checkpoints}"
        )
    steps: list[int] = []
    for index in range(num_checkpoints):
        step = total_steps // 2 ** (num_checkpoints - 1 - index)
        if step > 0 and (not steps or step > steps[-1]):
            steps.append(step)
    return steps


def _resolve_total_steps(
    num_epochs: int | None, num_update_steps_per_epoch: int | None, total_steps: int | None
) -> int:
    """The length of the schedule from either ``total_steps`` or epochs x steps per epoch."""
    from_epochs = num_epochs is not None or num_update_steps_per_epoch is not None
    if total_steps is not None and from_epochs:
        raise ValueError(
            "Give either num_epochs and num_update_steps_per_epoch, or total_steps, not both"
        )
    if total_steps is None:
        if num_epochs is None or num_update_steps_per_epoch is None:
            raise ValueError(
                "Give num_epochs and num_update_steps_per_epoch, or total_steps: the length of "
                "the schedule is unknown"
            )
        total_steps = num_epochs * num_update_steps_per_epoch
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    return int(total_steps)


class WSDLrScheduler(StatefulSchedulerBase):
    """Warmup-Stable-Decay: a linear warmup, a long stable phase at the peak lr, and a short
    decay before each checkpoint, so that a usable model exists at every checkpoint.

    Steps are numbers of updates completed (see :mod:`pa_mixins.schedulers.scheduler_base`).
    The run is cut into periods that end at the checkpoint steps
    (:func:`estimate_checkpoint_steps`; one checkpoint = the end of training). A period from
    ``s`` to checkpoint ``e`` has ``d = int((e - s) * decay_phase_ratio)`` decay steps that
    start at its pre-decay step ``p = e - d``. For a group with peak lr ``lr_max``:

    * warmup, ``0 <= n < W``: linear from ``warmup_starting_lr`` at ``n = 0`` to ``lr_max``
      at ``n = W - 1`` (not in a continuation run);
    * stable, ``n < p``: ``lr_max``;
    * decay, ``p <= n < e``, with ``t = (n - p + 1) / d`` (so ``t = 1`` at the period's last
      update ``e - 1``, and the model saved at the checkpoint has taken its last update at the
      minimum): ``lr_max * (lr_min + (1 - lr_min) * (1 - sqrt(t)))`` when
      ``use_inverse_sqrt_decay`` (the default; the name is pytorch-accelerated's, the formula
      is the "sqrt" one), else the paper's ``lr_max / (t / lr_min + 1 - t)``.

    A new period starts again at ``lr_max``; after the last checkpoint the lr stays at
    ``lr_min * lr_max``. ``lr_min`` is a fraction of each group's peak lr.

    Continuation (``is_continuation_from_checkpoint=True``): the run is a new segment of
    ``total_steps`` updates that continues from a checkpoint of an earlier run. Load the
    earlier scheduler's state with :meth:`load_state_dict`: the peak lrs, ``lr_min``, decay
    ratio, decay formula and number of checkpoints come from it, while the length, the update
    counter (0) and the checkpoints are this segment's, which starts with a stable phase (no
    warmup). To resume an interrupted run exactly (whatever its kind), create the scheduler
    with ``is_continuation_from_checkpoint=False`` and load its state: everything, the counter
    included, is restored.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        num_epochs: int | None = None,
        num_update_steps_per_epoch: int | None = None,
        total_steps: int | None = None,
        num_warmup_steps: int | None = 0,
        decay_phase_ratio: float = 0.1,
        lr_min: float = 1e-6,
        warmup_starting_lr: float = 1e-6,
        use_inverse_sqrt_decay: bool = True,
        num_checkpoints: int = 1,
        is_continuation_from_checkpoint: bool = False,
    ) -> None:
        """
        :param optimizer: the optimizer; each group's current lr is its peak lr.
        :param num_epochs: epochs in the run (with ``num_update_steps_per_epoch``).
        :param num_update_steps_per_epoch: optimizer updates per epoch (per process).
        :param total_steps: the number of updates of the run, instead of the two above.
        :param num_warmup_steps: warmup updates; ``None`` for
            :data:`DEFAULT_WARMUP_FRACTION` of the run (capped at the first pre-decay step).
        :param decay_phase_ratio: the fraction of each period spent decaying (at most 1/3
            with several checkpoints).
        :param lr_min: the final lr as a fraction of each group's peak lr.
        :param warmup_starting_lr: the lr of every group at step 0 of the warmup.
        :param use_inverse_sqrt_decay: ``True`` for the sqrt decay, ``False`` for the paper's
            inverse-proportional decay.
        :param num_checkpoints: the number of checkpoints (periods ending in a decay).
        :param is_continuation_from_checkpoint: this run continues from a checkpoint whose
            scheduler state will be loaded (see the class docstring).
        """
        super().__init__(optimizer)
        total_steps = _resolve_total_steps(num_epochs, num_update_steps_per_epoch, total_steps)
        if not 0 <= decay_phase_ratio <= 1:
            raise ValueError(f"decay_phase_ratio must be between 0 and 1, got {decay_phase_ratio}")
        if lr_min < 0:
            raise ValueError(f"lr_min must not be negative, got {lr_min}")
        if num_checkpoints < 1:
            raise ValueError(f"num_checkpoints must be positive, got {num_checkpoints}")
        if num_checkpoints > 1 and decay_phase_ratio > MAX_MULTI_CHECKPOINT_DECAY_RATIO:
            raise ValueError(
                f"decay_phase_ratio {decay_phase_ratio} is too large for {num_checkpoints} "
                f"checkpoints: at most {MAX_MULTI_CHECKPOINT_DECAY_RATIO:.2f} is allowed"
            )
        if warmup_starting_lr > max(self.base_lr_values):
            raise ValueError(
                f"warmup_starting_lr ({warmup_starting_lr}) exceeds the largest peak lr "
                f"({max(self.base_lr_values)})"
            )
        self.total_steps = total_steps
        self.decay_phase_ratio = decay_phase_ratio
        self.lr_min = lr_min
        self.warmup_starting_lr = warmup_starting_lr
        self.use_inverse_sqrt_decay = use_inverse_sqrt_decay
        self.num_checkpoints = num_checkpoints
        self.is_continuation_from_checkpoint = is_continuation_from_checkpoint
        #: the latest pre-decay step the schedule has reached (``None`` before the first)
        self.previous_checkpoint_step: int | None = None
        self._compute_checkpoints()
        first_pre_decay = self.checkpoint_decay_info[0]["pre_decay_step"]
        if num_warmup_steps is None:
            num_warmup_steps = min(int(DEFAULT_WARMUP_FRACTION * total_steps), first_pre_decay)
        num_warmup_steps = int(num_warmup_steps)
        if num_warmup_steps < 0:
            raise ValueError(f"num_warmup_steps must not be negative, got {num_warmup_steps}")
        if not is_continuation_from_checkpoint and num_warmup_steps > first_pre_decay:
            raise ValueError(
                f"The {num_warmup_steps} warmup steps run into the first decay phase, which "
                f"starts at step {first_pre_decay}"
            )
        self.num_warmup_steps = num_warmup_steps
        self.step_update(self._num_updates)

    # -- checkpoints and phases ----------------------------------------------------------------

    def _compute_checkpoints(self) -> None:
        """Set ``checkpoint_steps`` and ``checkpoint_decay_info`` from the settings."""
        self.checkpoint_steps = estimate_checkpoint_steps(self.total_steps, self.num_checkpoints)
        self.checkpoint_decay_info: list[dict[str, int]] = []
        period_start = 0
        for checkpoint in self.checkpoint_steps:
            decay_steps = int((checkpoint - period_start) * self.decay_phase_ratio)
            self.checkpoint_decay_info.append(
                {
                    "period_start": period_start,
                    "period_end": checkpoint,
                    "decay_steps": decay_steps,
                    "pre_decay_step": checkpoint - decay_steps,
                }
            )
            period_start = checkpoint

    def get_checkpoint_steps(self) -> list[int]:
        """The steps (numbers of updates completed) at which a period ends and its decayed
        model should be saved."""
        return list(self.checkpoint_steps)

    def get_decay_info(self) -> list[dict[str, int]]:
        """One dict per period: ``period_start``, ``period_end`` (its checkpoint step),
        ``decay_steps`` and ``pre_decay_step`` (the step at which its decay starts, where a
        model for continuation should be saved)."""
        return [dict(info) for info in self.checkpoint_decay_info]

    def get_phase_info(self, num_updates: int) -> dict[str, int]:
        """The period that ``num_updates`` completed updates are in: the first whose end is at
        or after ``num_updates`` (so at a checkpoint step it is the period that just ended),
        else the last one."""
        for info in self.checkpoint_decay_info:
            if info["period_end"] >= num_updates:
                return dict(info)
        return dict(self.checkpoint_decay_info[-1])

    def get_current_step(self) -> int:
        """The number of optimizer updates completed (the scheduler's step)."""
        return self._num_updates

    def get_current_phase_info(self) -> dict[str, int]:
        """:meth:`get_phase_info` for the current step."""
        return self.get_phase_info(self._num_updates)

    def _period_of_update(self, num_updates: int) -> dict[str, int]:
        """The period that contains update number ``num_updates`` (counting from 0)."""
        for info in self.checkpoint_decay_info:
            if num_updates < info["period_end"]:
                return info
        return self.checkpoint_decay_info[-1]

    # -- values ----------------------------------------------------------------------------------

    def _decay_factor(self, progress: float) -> float:
        """The fraction of the peak lr after ``progress`` (in (0, 1]) of a decay phase."""
        if self.use_inverse_sqrt_decay:
            return self.lr_min + (1.0 - self.lr_min) * (1.0 - math.sqrt(progress))
        # 1 / (t / lr_min + 1 - t), written so that lr_min = 0 gives 0
        return self.lr_min / (progress + self.lr_min * (1.0 - progress))

    def get_updated_values(self, num_updates: int) -> list[float]:
        """The lr of each group for step ``num_updates`` (see the class docstring)."""
        num_updates = max(num_updates, 0)
        if not self.is_continuation_from_checkpoint and num_updates < self.num_warmup_steps:
            return [
                linear_warmup(self.warmup_starting_lr, lr_max, num_updates, self.num_warmup_steps)
                for lr_max in self.base_lr_values
            ]
        info = self._period_of_update(num_updates)
        if info["decay_steps"] == 0 or num_updates < info["pre_decay_step"]:
            return list(self.base_lr_values)
        progress = min((num_updates - info["pre_decay_step"] + 1) / info["decay_steps"], 1.0)
        factor = self._decay_factor(progress)
        return [lr_max * factor for lr_max in self.base_lr_values]

    def step_update(self, num_updates: int) -> None:
        """Apply the values for step ``num_updates`` and record a pre-decay step reached."""
        super().step_update(num_updates)
        info = self._period_of_update(num_updates)
        if info["decay_steps"] and num_updates >= info["pre_decay_step"]:
            self.previous_checkpoint_step = info["pre_decay_step"]

    # -- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The settings, checkpoints, peak lrs and the update counter (``num_updates``)."""
        return {
            "param_group_field": self.param_group_field,
            "base_lr_values": list(self.base_lr_values),
            "total_steps": self.total_steps,
            "num_warmup_steps": self.num_warmup_steps,
            "decay_phase_ratio": self.decay_phase_ratio,
            "lr_min": self.lr_min,
            "warmup_starting_lr": self.warmup_starting_lr,
            "use_inverse_sqrt_decay": self.use_inverse_sqrt_decay,
            "num_checkpoints": self.num_checkpoints,
            "checkpoint_steps": list(self.checkpoint_steps),
            "checkpoint_decay_info": self.get_decay_info(),
            "is_continuation_from_checkpoint": self.is_continuation_from_checkpoint,
            "previous_checkpoint_step": self.previous_checkpoint_step,
            "num_updates": self._num_updates,
        }

    #: what a continuation run takes from the loaded state (the rest is its own)
    _CONTINUED_SETTINGS = (
        "base_lr_values",
        "decay_phase_ratio",
        "lr_min",
        "use_inverse_sqrt_decay",
        "num_checkpoints",
    )
    #: what an ordinary load restores
    _RESTORED_SETTINGS = (
        *_CONTINUED_SETTINGS,
        "total_steps",
        "num_warmup_steps",
        "warmup_starting_lr",
        "is_continuation_from_checkpoint",
        "previous_checkpoint_step",
    )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` (or from pytorch-accelerated's
        ``WSDLrScheduler``) and set the lr for the current step.

        In a continuation run only the settings of the earlier run's schedule are taken (see
        the class docstring); otherwise everything is restored, the update counter included.
        """
        if self.is_continuation_from_checkpoint:
            keys: tuple[str, ...] = self._CONTINUED_SETTINGS
            self.previous_checkpoint_step = None
        else:
            keys = self._RESTORED_SETTINGS
            self._num_updates = state_dict.get("num_updates", self._num_updates)
        for key in keys:
            if key in state_dict:
                setattr(self, key, state_dict[key])
        self.base_lr_values = list(self.base_lr_values)
        self._compute_checkpoints()
        self.step_update(self._num_updates)

    @classmethod
    def create_scheduler_fn(
        cls,
        total_num_epochs: Count = TrainerPlaceholderValues.NUM_EPOCHS,
        num_update_steps_per_epoch: Count = (
            TrainerPlaceholderValues.PER_PROCESS_NUM_UPDATE_STEPS_PER_EPOCH
        ),
        num_warmup_epochs: float | None = None,
        decay_phase_ratio: float = 0.1,
        lr_min: float = 1e-6,
        warmup_starting_lr: float = 1e-6,
        use_inverse_sqrt_decay: bool = True,
        num_checkpoints: int = 1,
        is_continuation_from_checkpoint: bool = False,
    ) -> partial[WSDLrScheduler]:
        """Return a ``functools.partial`` that takes the optimizer and creates the scheduler,
        for ``Trainer.train(create_scheduler_fn=...)``. The epoch count and updates per epoch
        default to placeholders the trainer resolves; ``num_warmup_epochs`` is converted to
        updates with the same updates per epoch (``None``: :data:`DEFAULT_WARMUP_FRACTION` of
        the run). The other arguments are those of the constructor."""
        num_warmup_steps = (
            None if num_warmup_epochs is None else num_update_steps_per_epoch * num_warmup_epochs
        )
        factory = cast(Callable[..., WSDLrScheduler], cls)
        return partial(
            factory,
            num_epochs=total_num_epochs,
            num_update_steps_per_epoch=num_update_steps_per_epoch,
            num_warmup_steps=num_warmup_steps,
            decay_phase_ratio=decay_phase_ratio,
            lr_min=lr_min,
            warmup_starting_lr=warmup_starting_lr,
            use_inverse_sqrt_decay=use_inverse_sqrt_decay,
            num_checkpoints=num_checkpoints,
            is_continuation_from_checkpoint=is_continuation_from_checkpoint,
        )
