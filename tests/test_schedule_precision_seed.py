"""Issue 3: scheduler stepping and placeholders, mixed precision, seeding."""

from __future__ import annotations

import functools
import random
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from pa_mixins import Trainer, TrainerPlaceholderValues
from pa_mixins.placeholders import replace_trainer_placeholder_values
from tests.conftest import make_model, make_regression_data, weights

P = TrainerPlaceholderValues


def _trainer(
    model: nn.Module | None = None, cls: type[Trainer] = Trainer, **kwargs: Any
) -> Trainer:
    model = model or make_model()
    return cls(
        model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.1), callbacks=(), **kwargs
    )


def test_a_schedule_sized_with_placeholders_ends_exactly_at_the_end_of_training() -> None:
    trainer = _trainer()
    factory = functools.partial(
        torch.optim.lr_scheduler.OneCycleLR,
        max_lr=0.1,
        epochs=P.NUM_EPOCHS,
        steps_per_epoch=P.NUM_UPDATE_STEPS_PER_EPOCH,
    )
    # 20 samples, batch 2 -> 10 micro-batches, 3 per update -> 4 updates per epoch
    trainer.train(
        train_dataset=make_regression_data(20),
        num_epochs=3,
        per_device_batch_size=2,
        gradient_accumulation_steps=3,
        create_scheduler_fn=factory,
    )
    assert trainer.run_config.num_update_steps_per_epoch == 4
    assert trainer.scheduler.last_epoch == 12 == trainer.scheduler.total_steps
    assert trainer.num_updates == 12


def test_placeholder_arithmetic_and_every_member_resolve() -> None:
    trainer = _trainer()
    trainer.train(
        train_dataset=make_regression_data(20),
        eval_dataset=make_regression_data(6),
        num_epochs=2,
        per_device_batch_size=4,
    )
    resolved = replace_trainer_placeholder_values(
        trainer,
        functools.partial(
            dict,
            a=P.NUM_EPOCHS * 5,
            b=P.NUM_UPDATE_STEPS_PER_EPOCH + 1,
            c=2 * P.PER_PROCESS_NUM_UPDATE_STEPS_PER_EPOCH - 1,
            d=P.TRAIN_DATALOADER_LEN,
            e=P.EVAL_DATALOADER_LEN,
            f=100 - P.NUM_EPOCHS,
            g="untouched",
        ),
    )()
    assert resolved == {"a": 10, "b": 6, "c": 9, "d": 5, "e": 2, "f": 98, "g": "untouched"}
    assert P.placeholder_set() == {m.name for m in P}
    assert replace_trainer_placeholder_values(trainer, len) is len


def test_scheduler_steps_once_per_real_update_and_not_after_a_skipped_step() -> None:
    class SkipsEveryOtherStep(Trainer):
        @property
        def optimizer_step_was_skipped(self) -> bool:
            return self.num_updates % 2 == 1

    trainer = _trainer(cls=SkipsEveryOtherStep)
    trainer.train(
        train_dataset=make_regression_data(16),
        num_epochs=1,
        per_device_batch_size=2,
        gradient_accumulation_steps=2,
        create_scheduler_fn=functools.partial(
            torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5
        ),
    )
    assert trainer.num_updates == 4
    assert trainer.scheduler.last_epoch == 2  # updates 0 and 2 stepped it, 1 and 3 were "skipped"


def test_the_scheduler_is_never_given_to_accelerate() -> None:
    trainer = _trainer()
    trainer.train(
        train_dataset=make_regression_data(8),
        num_epochs=1,
        per_device_batch_size=4,
        create_scheduler_fn=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1),
    )
    assert type(trainer.scheduler) is torch.optim.lr_scheduler.StepLR
    assert trainer.accelerator._schedulers == []


def test_bf16_really_autocasts_on_the_cpu() -> None:
    dtypes: list[torch.dtype] = []
    model = make_model()
    model[0].register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    trainer = _trainer(model, mixed_precision="bf16")
    trainer.train(train_dataset=make_regression_data(8), num_epochs=1, per_device_batch_size=4)
    assert trainer.run_config.mixed_precision == "bf16"
    assert dtypes and set(dtypes) == {torch.bfloat16}


def test_precision_from_the_launcher_applies_when_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    trainer = _trainer()
    trainer.train(train_dataset=make_regression_data(8), num_epochs=1, per_device_batch_size=4)
    assert trainer.run_config.mixed_precision == "bf16"


def test_fp16_on_the_cpu_and_fp8_without_backend_fail_clearly() -> None:
    with pytest.raises(ValueError, match=r"fp16.*needs a GPU"):
        _trainer(mixed_precision="fp16").train(train_dataset=make_regression_data(8), num_epochs=1)
    with pytest.raises(ValueError, match="fp8"):
        _trainer(mixed_precision="fp8").train(train_dataset=make_regression_data(8), num_epochs=1)
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        _trainer(mixed_precision="float16")


def test_two_trainers_with_different_precisions_work_one_after_the_other() -> None:
    dtypes: dict[str, list[torch.dtype]] = {"bf16": [], "no": []}
    trainers = {}
    for precision in ("bf16", "no"):
        model = make_model()
        model[0].register_forward_hook(lambda m, a, out, p=precision: dtypes[p].append(out.dtype))
        trainers[precision] = _trainer(model, mixed_precision=precision)
    for _ in range(2):
        for precision, trainer in trainers.items():
            trainer.train(
                train_dataset=make_regression_data(8), num_epochs=1, per_device_batch_size=4
            )
            assert trainer.run_config.mixed_precision == precision
    assert set(dtypes["bf16"]) == {torch.bfloat16} and set(dtypes["no"]) == {torch.float32}


def _run(seed: int | None, global_seed_before: int | None = None) -> list[torch.Tensor]:
    model = make_model()  # seeds torch itself, for equal initial weights
    model.insert(1, nn.Dropout(0.2))  # uses the global torch RNG
    if global_seed_before is not None:
        torch.manual_seed(global_seed_before)
    trainer = _trainer(model)
    trainer.train(
        train_dataset=make_regression_data(32), num_epochs=2, per_device_batch_size=4, seed=seed
    )
    return weights(model)


def test_the_same_seed_gives_the_same_weights_whatever_happened_in_between() -> None:
    first = _run(seed=7, global_seed_before=1)
    random.random()
    np.random.rand()
    second = _run(seed=7, global_seed_before=2)
    other = _run(seed=8, global_seed_before=1)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_without_a_seed_the_run_follows_torchs_global_generator() -> None:
    first = _run(seed=None, global_seed_before=3)
    second = _run(seed=None, global_seed_before=3)
    third = _run(seed=None, global_seed_before=4)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, third))


def test_seeded_dataloader_workers_are_reproducible() -> None:
    class RandomAugmentation(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
        def __init__(self) -> None:
            self.data = make_regression_data(16)

        def __len__(self) -> int:
            return 16

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = self.data[i]
            return x + random.random() + float(np.random.rand()) + torch.rand(1), y

    def run() -> list[torch.Tensor]:
        model = make_model()
        trainer = _trainer(model)
        trainer.train(
            train_dataset=RandomAugmentation(),
            num_epochs=1,
            per_device_batch_size=4,
            seed=5,
            train_dataloader_kwargs={"num_workers": 2},
        )
        return weights(model)

    assert all(torch.equal(a, b) for a, b in zip(run(), run()))


def test_deterministic_switch_turns_on_torchs_deterministic_algorithms() -> None:
    try:
        _trainer().train(
            train_dataset=make_regression_data(8),
            num_epochs=1,
            per_device_batch_size=4,
            seed=1,
            deterministic=True,
        )
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
