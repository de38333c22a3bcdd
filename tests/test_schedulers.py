"""Schedulers: curves point by point against formulas written here, state round trips, WSD
checkpoints and continuation, placeholder factories and a real training run."""

from __future__ import annotations

import io
import math
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pa_mixins import Trainer
from pa_mixins.placeholders import (
    PlaceholderExpression,
    TrainerPlaceholderValues,
    replace_trainer_placeholder_values,
)
from pa_mixins.schedulers import (
    CosineLrScheduler,
    SchedulerBase,
    StatefulSchedulerBase,
    WSDLrScheduler,
)
from pa_mixins.schedulers.wsd_scheduler import estimate_checkpoint_steps
from tests.conftest import make_model, make_regression_data


def make_optimizer(*lrs: float) -> torch.optim.Optimizer:
    """An SGD optimizer with one parameter group per learning rate."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs or (1.0,)]
    return torch.optim.SGD(groups, lr=0.5)


def lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    return [group["lr"] for group in optimizer.param_groups]


def curve(scheduler: StatefulSchedulerBase, optimizer: torch.optim.Optimizer, n: int) -> list:
    """The lrs for steps 0..n-1: the value at construction, then after each step()."""
    values = [lrs(optimizer)]
    for _ in range(n - 1):
        scheduler.step()
        values.append(lrs(optimizer))
    return values


def fake_trainer(num_epochs: int, updates_per_epoch: int) -> SimpleNamespace:
    run_config = SimpleNamespace(
        num_epochs=num_epochs,
        num_update_steps_per_epoch=updates_per_epoch,
        num_local_update_steps_per_epoch=updates_per_epoch,
    )
    return SimpleNamespace(run_config=run_config, _train_dataloader=None, _eval_dataloader=None)


# ----------------------------------------------------------------------------------------------
# SchedulerBase / StatefulSchedulerBase
# ----------------------------------------------------------------------------------------------


class HalveEvery(SchedulerBase):
    """Stateless: halve the base value every `period` updates."""

    def __init__(self, optimizer, period=2, param_group_field="lr"):
        super().__init__(optimizer, param_group_field=param_group_field)
        self.period = period

    def get_updated_values(self, num_updates):
        return [base * 0.5 ** (num_updates // self.period) for base in self.base_lr_values]


class Fixed(SchedulerBase):
    def __init__(self, optimizer, value):
        super().__init__(optimizer)
        self.value = value

    def get_updated_values(self, num_updates):
        return self.value


class CountingStateful(StatefulSchedulerBase):
    def __init__(self, optimizer):
        super().__init__(optimizer)
        self.step_update(self._num_updates)

    def get_updated_values(self, num_updates):
        return float(10 + num_updates)

    def state_dict(self):
        return {"num_updates": self._num_updates}

    def load_state_dict(self, state_dict):
        self._num_updates = state_dict["num_updates"]


def test_scheduler_base_step_update_sets_values_per_group():
    optimizer = make_optimizer(1.0, 0.1)
    scheduler = HalveEvery(optimizer, period=2)
    assert scheduler.base_lr_values == [1.0, 0.1]
    assert [g["initial_lr"] for g in optimizer.param_groups] == [1.0, 0.1]
    scheduler.step_update(5)
    assert lrs(optimizer) == pytest.approx([0.25, 0.025])
    assert scheduler.current_values() == lrs(optimizer)


def test_scheduler_base_single_value_applies_to_all_groups_and_none_changes_nothing():
    optimizer = make_optimizer(1.0, 0.1)
    scheduler = Fixed(optimizer, 0.3)
    scheduler.step_update(1)
    assert lrs(optimizer) == [0.3, 0.3]
    scheduler.value = None
    scheduler.step_update(2)
    assert lrs(optimizer) == [0.3, 0.3]


def test_scheduler_base_keeps_existing_initial_value_and_schedules_other_fields():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, weight_decay=0.01)
    optimizer.param_groups[0]["initial_lr"] = 0.4  # left by an earlier scheduler
    HalveEvery(optimizer)
    assert lrs(optimizer) == [0.4]
    scheduler = HalveEvery(optimizer, param_group_field="weight_decay")
    scheduler.step_update(2)
    assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(0.005)
    assert optimizer.param_groups[0]["initial_weight_decay"] == 0.01


def test_scheduler_base_errors():
    with pytest.raises(KeyError, match="momentum_x"):
        HalveEvery(make_optimizer(1.0), param_group_field="momentum_x")
    scheduler = Fixed(make_optimizer(1.0, 0.1), [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="3 values for 2 parameter groups"):
        scheduler.step_update(0)
    with pytest.raises(TypeError):
        SchedulerBase(make_optimizer(1.0))  # type: ignore[abstract]


def test_scheduler_base_state_dict_round_trip_excludes_optimizer():
    scheduler = HalveEvery(make_optimizer(1.0), period=3)
    state = scheduler.state_dict()
    assert "optimizer" not in state and state["period"] == 3
    other = HalveEvery(make_optimizer(2.0), period=7)
    other.load_state_dict(state)
    assert other.period == 3 and other.base_lr_values == [1.0]


def test_stateful_scheduler_counts_completed_updates():
    optimizer = make_optimizer(1.0)
    scheduler = CountingStateful(optimizer)
    assert scheduler._num_updates == 0 and lrs(optimizer) == [10.0]
    scheduler.step()
    scheduler.step()
    assert scheduler._num_updates == 2 and lrs(optimizer) == [12.0]
    with pytest.raises(TypeError):
        StatefulSchedulerBase(make_optimizer(1.0))  # type: ignore[abstract]


# ----------------------------------------------------------------------------------------------
# CosineLrScheduler
# ----------------------------------------------------------------------------------------------


def expected_cosine(total, warmup, cooldown, peak, low, start, k=1.0):
    """The documented curve, built from its three pieces."""
    warm = list(np.linspace(start, peak, warmup)) if warmup > 1 else [start] * warmup
    length = total - warmup - cooldown
    cos = [
        low + (peak - low) * 0.5 * (1 + math.cos(math.pi * (m / length) ** k))
        for m in range(length)
    ]
    return warm + cos + [low] * cooldown


COSINE_CASES = {
    "warmup_and_cooldown": dict(epochs=6, per_epoch=4, warmup=1, cooldown=2, k=1.0),
    "no_warmup_no_cooldown": dict(epochs=3, per_epoch=5, warmup=0, cooldown=0, k=1.0),
    "k_decay_2": dict(epochs=5, per_epoch=3, warmup=2, cooldown=1, k=2.0),
    "one_step_warmup": dict(epochs=4, per_epoch=1, warmup=1, cooldown=1, k=1.0),
}


@pytest.mark.parametrize("case", COSINE_CASES.values(), ids=COSINE_CASES.keys())
def test_cosine_curve_matches_formula_point_by_point(case):
    optimizer = make_optimizer(0.1)
    scheduler = CosineLrScheduler(
        optimizer,
        total_num_epochs=case["epochs"],
        num_update_steps_per_epoch=case["per_epoch"],
        k_decay=case["k"],
        lr_min=0.001,
        num_warmup_epochs=case["warmup"],
        warmup_starting_lr=0.01,
        num_cooldown_epochs=case["cooldown"],
    )
    per = case["per_epoch"]
    total, warmup, cooldown = case["epochs"] * per, case["warmup"] * per, case["cooldown"] * per
    expected = expected_cosine(total, warmup, cooldown, 0.1, 0.001, 0.01, case["k"])
    # two steps past the end: the minimum is held
    got = [values[0] for values in curve(scheduler, optimizer, total + 2)]
    assert got == pytest.approx([*expected, 0.001, 0.001], abs=1e-12)


def test_cosine_warmup_ends_exactly_at_peak_and_cooldown_holds_min_for_its_length():
    optimizer = make_optimizer(0.1)
    scheduler = CosineLrScheduler(
        optimizer, 10, 3, lr_min=0.0, num_warmup_epochs=2, num_cooldown_epochs=3
    )
    got = [values[0] for values in curve(scheduler, optimizer, 30)]
    assert got[0] == 1e-6
    assert got[5] == 0.1 and max(got) == 0.1  # last warmup step (6 - 1) at the peak, never above
    assert got[6] == 0.1  # the cosine starts at the peak
    assert got[20] > 0.0 and got[21:] == [0.0] * 9  # cooldown: exactly 3 epochs x 3 updates


def test_cosine_warmup_ratio_sets_start_and_slope_per_group():
    optimizer = make_optimizer(1.0, 0.2)
    scheduler = CosineLrScheduler(
        optimizer, 3, 4, num_warmup_epochs=1, warmup_starting_lr_ratio=0.5, min_lr_ratio=0.1
    )
    got = curve(scheduler, optimizer, 13)
    # group 0: 0.5 -> 1.0 in 4 steps; group 1: 0.1 -> 0.2 (pytorch-accelerated overshoots here)
    assert [v[0] for v in got[:4]] == pytest.approx([0.5, 2 / 3, 5 / 6, 1.0])
    assert [v[1] for v in got[:4]] == pytest.approx([0.1, 0.4 / 3, 0.5 / 3, 0.2])
    assert max(v[0] for v in got) == pytest.approx(1.0) and max(v[1] for v in got) == 0.2
    # min_lr_ratio: each group ends at 10 % of its own peak
    assert got[12] == pytest.approx([0.1, 0.02])


def test_cosine_without_warmup_starts_at_the_optimizer_lr():
    optimizer = make_optimizer(0.3)
    CosineLrScheduler(optimizer, 2, 5, warmup_starting_lr=0.01)
    assert lrs(optimizer) == [0.3]


def test_cosine_state_dict_round_trip_mid_schedule():
    optimizer = make_optimizer(0.1, 0.05)
    scheduler = CosineLrScheduler(optimizer, 5, 4, num_warmup_epochs=1, num_cooldown_epochs=1)
    for _ in range(7):
        scheduler.step()
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    assert state["num_updates"] == 7

    resumed_optimizer = make_optimizer(0.1, 0.05)
    resumed = CosineLrScheduler(resumed_optimizer, 1, 1)  # other settings: replaced by the state
    resumed.load_state_dict(state)
    assert lrs(resumed_optimizer) == lrs(optimizer)
    for _ in range(15):
        scheduler.step()
        resumed.step()
        assert lrs(resumed_optimizer) == lrs(optimizer)


def test_cosine_loads_state_without_base_lr_values():
    scheduler = CosineLrScheduler(make_optimizer(0.1), 4, 2)
    state = scheduler.state_dict()
    del state["base_lr_values"]
    optimizer = make_optimizer(0.1)
    other = CosineLrScheduler(optimizer, 4, 2)
    state["num_updates"] = 8
    other.load_state_dict(state)
    assert lrs(optimizer) == [1e-6]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(total_num_epochs=0, num_update_steps_per_epoch=3), "positive"),
        (dict(total_num_epochs=2, num_update_steps_per_epoch=0), "positive"),
        (dict(total_num_epochs=2, num_update_steps_per_epoch=3, lr_min=-1.0), "negative"),
        (dict(total_num_epochs=2, num_update_steps_per_epoch=3, min_lr_ratio=-0.1), "negative"),
        (dict(total_num_epochs=2, num_update_steps_per_epoch=3, k_decay=0.0), "k_decay"),
        (dict(total_num_epochs=2, num_update_steps_per_epoch=3, num_warmup_epochs=-1), "negative"),
        (
            dict(
                total_num_epochs=3,
                num_update_steps_per_epoch=2,
                num_warmup_epochs=2,
                num_cooldown_epochs=2,
            ),
            "do not fit",
        ),
    ],
)
def test_cosine_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CosineLrScheduler(make_optimizer(0.1), **kwargs)


def test_cosine_create_scheduler_fn_uses_placeholders():
    factory = CosineLrScheduler.create_scheduler_fn(num_warmup_epochs=1, lr_min=0.0)
    assert isinstance(factory, partial)
    assert factory.keywords["total_num_epochs"] is TrainerPlaceholderValues.NUM_EPOCHS
    assert (
        factory.keywords["num_update_steps_per_epoch"]
        is TrainerPlaceholderValues.NUM_UPDATE_STEPS_PER_EPOCH
    )
    resolved = replace_trainer_placeholder_values(fake_trainer(3, 5), factory)
    optimizer = make_optimizer(0.1)
    scheduler = resolved(optimizer)
    assert isinstance(scheduler, CosineLrScheduler)
    assert (scheduler.total_iterations, scheduler.warmup_iterations) == (15, 5)
    assert scheduler.lr_min == 0.0 and lrs(optimizer) == [1e-6]


class LrRecordingTrainer(Trainer):
    """Records the lr each optimizer update used."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.used_lrs: list[float] = []

    def optimizer_step(self):
        self.used_lrs.append(self.optimizer.param_groups[0]["lr"])
        super().optimizer_step()


def test_cosine_in_a_real_run_gives_update_n_the_value_for_step_n():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    trainer = LrRecordingTrainer(
        model, loss_func=torch.nn.MSELoss(), optimizer=optimizer, callbacks=()
    )
    trainer.train(
        train_dataset=make_regression_data(n=48),
        num_epochs=3,
        per_device_batch_size=8,
        gradient_accumulation_steps=2,
        create_scheduler_fn=CosineLrScheduler.create_scheduler_fn(
            num_warmup_epochs=1, num_cooldown_epochs=1, lr_min=0.001, warmup_starting_lr=0.005
        ),
    )
    # 6 batches / 2 = 3 updates per epoch, 9 updates
    assert trainer.used_lrs == pytest.approx(expected_cosine(9, 3, 3, 0.05, 0.001, 0.005))
    assert trainer.scheduler._num_updates == 9


# ----------------------------------------------------------------------------------------------
# WSDLrScheduler
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "total, count, expected",
    [
        (100, 1, [100]),
        (100, 2, [50, 100]),
        (200, 3, [50, 100, 200]),
        (200, 4, [25, 50, 100, 200]),
        (1000, 3, [250, 500, 1000]),
        (5, 4, [1, 2, 5]),  # too short for 4 distinct checkpoints
        (1, 3, [1]),
    ],
)
def test_estimate_checkpoint_steps_reach_the_end_of_training(total, count, expected):
    assert estimate_checkpoint_steps(total, count) == expected


def test_estimate_checkpoint_steps_errors():
    with pytest.raises(ValueError):
        estimate_checkpoint_steps(0, 2)
    with pytest.raises(ValueError):
        estimate_checkpoint_steps(10, 0)


def sqrt_decay(t, low):
    return low + (1 - low) * (1 - math.sqrt(t))


def inverse_decay(t, low):
    return 1.0 / (t / low + (1 - t))


def expected_wsd(periods, warmup, start, peak, low, decay=sqrt_decay):
    """`periods`: (start, end, decay_steps) of each period; returns the curve up to the end."""
    values = []
    for period_start, period_end, decay_steps in periods:
        for n in range(period_start, period_end):
            if n < warmup:
                values.append(list(np.linspace(start, peak, warmup))[n])
            elif n < period_end - decay_steps:
                values.append(peak)
            else:
                t = (n - (period_end - decay_steps) + 1) / decay_steps
                values.append(peak * decay(t, low))
    return values


@pytest.mark.parametrize("inverse", [False, True], ids=["sqrt", "inverse_proportional"])
def test_wsd_single_checkpoint_curve(inverse):
    optimizer = make_optimizer(0.2)
    scheduler = WSDLrScheduler(
        optimizer,
        total_steps=20,
        num_warmup_steps=4,
        decay_phase_ratio=0.25,
        lr_min=0.1,
        warmup_starting_lr=0.02,
        use_inverse_sqrt_decay=not inverse,
    )
    decay = inverse_decay if inverse else sqrt_decay
    expected = expected_wsd([(0, 20, 5)], 4, 0.02, 0.2, 0.1, decay)
    got = [v[0] for v in curve(scheduler, optimizer, 23)]
    assert got == pytest.approx(expected + [0.02] * 3)
    assert got[3] == 0.2 and max(got) == 0.2  # warmup ends at the peak
    assert got[19] == pytest.approx(0.02)  # the last update of the run is at the minimum
    assert got[14] == 0.2 and got[15] < 0.2  # decay starts at the pre-decay step 15


def test_wsd_several_checkpoints_restart_at_the_peak_and_groups_scale():
    optimizer = make_optimizer(1.0, 0.5)
    scheduler = WSDLrScheduler(
        optimizer,
        num_epochs=4,
        num_update_steps_per_epoch=10,
        decay_phase_ratio=0.3,
        lr_min=0.0,
        num_checkpoints=3,
        num_warmup_steps=0,
    )
    assert scheduler.get_checkpoint_steps() == [10, 20, 40]
    expected = expected_wsd([(0, 10, 3), (10, 20, 3), (20, 40, 6)], 0, 0.0, 1.0, 0.0)
    got = curve(scheduler, optimizer, 40)
    assert [v[0] for v in got] == pytest.approx(expected)
    assert [v[1] for v in got] == pytest.approx([0.5 * e for e in expected])
    assert got[9][0] == 0.0 and got[10][0] == 1.0


def test_wsd_inverse_decay_with_zero_minimum():
    optimizer = make_optimizer(1.0)
    scheduler = WSDLrScheduler(
        optimizer, total_steps=10, decay_phase_ratio=0.5, lr_min=0.0, use_inverse_sqrt_decay=False
    )
    got = [v[0] for v in curve(scheduler, optimizer, 11)]
    assert got[:5] == [1.0] * 5 and got[5:] == [0.0] * 6


def test_wsd_introspection_helpers():
    optimizer = make_optimizer(1.0)
    scheduler = WSDLrScheduler(
        optimizer, total_steps=40, decay_phase_ratio=0.25, num_checkpoints=2, num_warmup_steps=2
    )
    info = scheduler.get_decay_info()
    assert info == [
        {"period_start": 0, "period_end": 20, "decay_steps": 5, "pre_decay_step": 15},
        {"period_start": 20, "period_end": 40, "decay_steps": 5, "pre_decay_step": 35},
    ]
    info[0]["period_end"] = 99
    scheduler.get_checkpoint_steps().append(7)
    assert scheduler.get_decay_info()[0]["period_end"] == 20
    assert scheduler.get_checkpoint_steps() == [20, 40]

    assert scheduler.get_phase_info(0)["period_end"] == 20
    assert scheduler.get_phase_info(20)["period_end"] == 20  # the period that just ended
    assert scheduler.get_phase_info(21)["period_end"] == 40
    assert scheduler.get_phase_info(500)["period_end"] == 40

    assert scheduler.get_current_step() == 0
    assert scheduler.previous_checkpoint_step is None
    for _ in range(15):
        scheduler.step()
    assert scheduler.get_current_step() == 15
    assert scheduler.get_current_phase_info()["pre_decay_step"] == 15
    assert scheduler.previous_checkpoint_step == 15
    for _ in range(6):
        scheduler.step()
    assert scheduler.get_current_phase_info()["period_start"] == 20
    assert scheduler.previous_checkpoint_step == 15


def test_wsd_state_dict_keeps_the_counter_and_resumes_mid_schedule():
    optimizer = make_optimizer(0.1, 0.3)
    scheduler = WSDLrScheduler(
        optimizer, total_steps=30, num_warmup_steps=3, decay_phase_ratio=0.3, lr_min=0.05
    )
    for _ in range(23):
        scheduler.step()
    state = scheduler.state_dict()
    assert state["num_updates"] == 23 and "optimizer" not in state

    resumed_optimizer = make_optimizer(0.1, 0.3)
    resumed = WSDLrScheduler(resumed_optimizer, total_steps=30, num_warmup_steps=3)
    resumed.load_state_dict(state)
    assert resumed.get_current_step() == 23
    assert lrs(resumed_optimizer) == lrs(optimizer)
    for _ in range(9):
        scheduler.step()
        resumed.step()
        assert lrs(resumed_optimizer) == pytest.approx(lrs(optimizer))


def test_wsd_continuation_starts_a_new_stable_segment_from_the_loaded_schedule():
    first_optimizer = make_optimizer(0.4)
    first = WSDLrScheduler(
        first_optimizer, total_steps=40, num_warmup_steps=4, decay_phase_ratio=0.25, lr_min=0.1
    )
    for _ in range(30):  # the pre-decay checkpoint
        first.step()
    saved = first.state_dict()

    # the new run's optimizer holds another lr; the schedule's peak comes from the state
    optimizer = make_optimizer(0.9)
    continued = WSDLrScheduler(
        optimizer,
        total_steps=8,
        num_warmup_steps=3,
        decay_phase_ratio=0.1,
        lr_min=0.5,
        is_continuation_from_checkpoint=True,
    )
    continued.load_state_dict(saved)
    assert continued.get_current_step() == 0
    assert continued.total_steps == 8 and continued.get_checkpoint_steps() == [8]
    assert continued.decay_phase_ratio == 0.25 and continued.lr_min == 0.1
    assert continued.previous_checkpoint_step is None
    got = [v[0] for v in curve(continued, optimizer, 8)]
    # no warmup: stable at the loaded peak, then int(8 * 0.25) = 2 decay steps
    assert got == pytest.approx(expected_wsd([(0, 8, 2)], 0, 0.0, 0.4, 0.1))

    # resuming the interrupted continuation run exactly: an ordinary load restores everything
    for _ in range(3):
        continued.step()
    mid_state = continued.state_dict()
    resumed_optimizer = make_optimizer(0.9)
    resumed = WSDLrScheduler(resumed_optimizer, total_steps=100)
    resumed.load_state_dict(mid_state)
    assert resumed.get_current_step() == continued.get_current_step()
    assert resumed.is_continuation_from_checkpoint and resumed.total_steps == 8
    assert lrs(resumed_optimizer) == pytest.approx(lrs(optimizer))


def test_wsd_continuation_has_no_warmup_even_before_loading():
    optimizer = make_optimizer(0.3)
    WSDLrScheduler(
        optimizer, total_steps=10, num_warmup_steps=20, is_continuation_from_checkpoint=True
    )
    assert lrs(optimizer) == [0.3]


def test_wsd_default_warmup_is_ten_percent_capped_at_the_first_decay():
    assert (
        WSDLrScheduler(make_optimizer(1.0), total_steps=200, num_warmup_steps=None).num_warmup_steps
        == 20
    )
    short = WSDLrScheduler(
        make_optimizer(1.0), total_steps=100, num_warmup_steps=None, decay_phase_ratio=0.95
    )
    assert short.num_warmup_steps == 5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_epochs=2, num_update_steps_per_epoch=5, total_steps=10), "not both"),
        (dict(num_epochs=2, total_steps=10), "not both"),
        (dict(num_epochs=2), "unknown"),
        (dict(), "unknown"),
        (dict(total_steps=0), "positive"),
        (dict(total_steps=10, decay_phase_ratio=1.5), "between 0 and 1"),
        (dict(total_steps=10, lr_min=-0.1), "negative"),
        (dict(total_steps=10, num_checkpoints=0), "positive"),
        (dict(total_steps=100, num_checkpoints=2, decay_phase_ratio=0.4), "too large"),
        (dict(total_steps=10, warmup_starting_lr=2.0), "exceeds"),
        (dict(total_steps=10, num_warmup_steps=10), "run into the first decay"),
        (dict(total_steps=10, num_warmup_steps=-1), "negative"),
    ],
)
def test_wsd_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WSDLrScheduler(make_optimizer(1.0), **kwargs)


def test_wsd_create_scheduler_fn_resolves_per_process_placeholders():
    factory = WSDLrScheduler.create_scheduler_fn(num_warmup_epochs=2, num_checkpoints=2)
    assert isinstance(factory, partial)
    assert factory.keywords["num_epochs"] is TrainerPlaceholderValues.NUM_EPOCHS
    per_process = TrainerPlaceholderValues.PER_PROCESS_NUM_UPDATE_STEPS_PER_EPOCH
    assert factory.keywords["num_update_steps_per_epoch"] is per_process
    assert isinstance(factory.keywords["num_warmup_steps"], PlaceholderExpression)
    scheduler = replace_trainer_placeholder_values(fake_trainer(10, 7), factory)(
        make_optimizer(1.0)
    )
    assert (scheduler.total_steps, scheduler.num_warmup_steps) == (70, 14)
    assert scheduler.get_checkpoint_steps() == [35, 70]

    default = WSDLrScheduler.create_scheduler_fn()
    assert default.keywords["num_warmup_steps"] is None
    scheduler = replace_trainer_placeholder_values(fake_trainer(10, 7), default)(
        make_optimizer(1.0)
    )
    assert scheduler.num_warmup_steps == 7

    explicit = WSDLrScheduler.create_scheduler_fn(3, 4, num_warmup_epochs=1)
    assert explicit.keywords["num_warmup_steps"] == 4


def test_wsd_in_a_real_run_ends_at_the_minimum():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    trainer = LrRecordingTrainer(
        model, loss_func=torch.nn.MSELoss(), optimizer=optimizer, callbacks=()
    )
    trainer.train(
        train_dataset=make_regression_data(n=40),
        num_epochs=2,
        per_device_batch_size=8,
        create_scheduler_fn=WSDLrScheduler.create_scheduler_fn(
            num_warmup_epochs=1, decay_phase_ratio=0.2, lr_min=0.1, warmup_starting_lr=0.01
        ),
    )
    expected = expected_wsd([(0, 10, 2)], 5, 0.01, 0.05, 0.1)
    assert trainer.used_lrs == pytest.approx(expected)
    assert trainer.used_lrs[-1] == pytest.approx(0.005)
    assert trainer.scheduler.get_current_step() == 10
