"""The class-creation check of trainer assemblies (pa_mixins/assembly.py, issue 9 point 5), and
that the order of the capability mixins among themselves does not change what a run does."""

from __future__ import annotations

import importlib.util
import inspect
import json
import pathlib
import sys
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn

import pa_mixins.trainer
from pa_mixins.assembly import check_assembly
from pa_mixins.base import BaseTrainer
from pa_mixins.callbacks import TrainerCallback
from pa_mixins.checkpoint_format import MANIFEST_NAME
from pa_mixins.mixins import (
    AccelerateMixin,
    CheckpointMixin,
    EvaluationMixin,
    GradientAccumulationMixin,
    MixedPrecisionMixin,
    SchedulerMixin,
    TrainingLoopMixin,
)
from pa_mixins.trainer import Trainer
from tests.conftest import REPO_ROOT, make_model, make_regression_data, weights

EXAMPLES = pathlib.Path(REPO_ROOT) / "examples"


# ----------------------------------------------------------------------------------------------
# Wrong assemblies fail when the class is created, naming the fix
# ----------------------------------------------------------------------------------------------


def test_a_capability_after_the_adapter_is_refused_naming_it_and_the_fix() -> None:
    with pytest.raises(TypeError) as raised:

        class Misplaced(AccelerateMixin, EvaluationMixin, TrainingLoopMixin, BaseTrainer):
            pass

    message = str(raised.value)
    assert "Misplaced" in message
    assert "EvaluationMixin" in message and "TrainingLoopMixin" in message
    assert "comes after AccelerateMixin" in message
    # the fix: capabilities first, the adapter and the root last
    assert "AccelerateMixin, BaseTrainer)" in message


def test_a_mixin_listed_after_a_ready_made_trainer_is_refused() -> None:
    # Trainer ends on AccelerateMixin, so a mixin listed after it lands right of the adapter
    # in the MRO, where the adapter's chains would skip it.
    class Logging(BaseTrainer):
        def training_run_start(self) -> None:
            super().training_run_start()

    with pytest.raises(TypeError, match=r"Logging comes after AccelerateMixin") as raised:

        class LateMixin(Trainer, Logging):
            pass

    assert "list the capability mixins first" in str(raised.value)


def test_the_same_mixin_listed_first_is_accepted() -> None:
    class Logging(BaseTrainer):
        pass

    class EarlyMixin(Logging, Trainer):
        pass

    assert EarlyMixin.__mro__.index(Logging) < EarlyMixin.__mro__.index(AccelerateMixin)


def test_accumulation_without_the_loop_is_refused_naming_the_missing_mixin() -> None:
    with pytest.raises(TypeError) as raised:

        class NoLoop(GradientAccumulationMixin, EvaluationMixin, AccelerateMixin, BaseTrainer):
            pass

    message = str(raised.value)
    assert "GradientAccumulationMixin, which needs TrainingLoopMixin" in message
    assert "add TrainingLoopMixin to the bases of NoLoop" in message


@pytest.mark.parametrize(
    ("mixin", "needed"),
    [
        (CheckpointMixin, "TrainingLoopMixin"),
        (SchedulerMixin, "TrainingLoopMixin"),
        (GradientAccumulationMixin, "TrainingLoopMixin"),
    ],
)
def test_each_mixin_that_needs_the_loop_says_so(mixin: type, needed: str) -> None:
    with pytest.raises(TypeError, match=f"{mixin.__name__}, which needs {needed}"):
        type("Assembled", (mixin, AccelerateMixin, BaseTrainer), {})


def test_a_trainer_without_the_adapter_is_refused_naming_it() -> None:
    with pytest.raises(TypeError) as raised:

        class NoAdapter(EvaluationMixin, TrainingLoopMixin, BaseTrainer):
            pass

    message = str(raised.value)
    assert "TrainingLoopMixin, which needs AccelerateMixin" in message
    assert "add AccelerateMixin to the bases of NoAdapter" in message


def test_a_mixin_with_one_trainer_base_is_not_checked() -> None:
    # Mixins are written on their own: what they need is checked in the trainer using them.
    class NeedsTheLoop(GradientAccumulationMixin):
        pass

    class NeedsSomethingElse(BaseTrainer):
        requires = ("SomeOtherMixin",)

    class StandsOnCheckpoints(CheckpointMixin):
        pass

    assert issubclass(NeedsTheLoop, BaseTrainer)
    # ...and checked once assembled
    with pytest.raises(TypeError, match="NeedsSomethingElse, which needs SomeOtherMixin"):

        class Assembled(NeedsSomethingElse, TrainingLoopMixin, AccelerateMixin, BaseTrainer):
            pass

    class Fine(StandsOnCheckpoints, Trainer):
        pass

    assert Fine.__mro__.index(StandsOnCheckpoints) < Fine.__mro__.index(AccelerateMixin)


def _trainer_classes_in(module: ModuleType) -> list[type]:
    return [
        value
        for value in vars(module).values()
        if inspect.isclass(value)
        and issubclass(value, BaseTrainer)
        and value.__module__ == module.__name__
    ]


def test_every_class_of_the_package_passes() -> None:
    ready_made = _trainer_classes_in(pa_mixins.trainer)
    assert {cls.__name__ for cls in ready_made} == {
        "Trainer",
        "MinimalTrainer",
        "TrainerWithTimmScheduler",
        "DeepSpeedTrainer",
        "FSDPTrainer",
    }
    stack, seen = [BaseTrainer], []
    while stack:
        cls = stack.pop()
        if cls.__module__.startswith("pa_mixins") and cls not in seen:
            seen.append(cls)
        stack.extend(cls.__subclasses__())
    for cls in {*ready_made, *seen}:
        check_assembly(cls, BaseTrainer)


def _import_example(path: pathlib.Path) -> ModuleType:
    """Import an example as a module (its ``if __name__ == "__main__"`` part does not run)."""
    name = f"_pa_mixins_example_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


EXAMPLE_FILES = sorted(EXAMPLES.glob("*.py"))


def test_the_examples_are_found() -> None:
    assert len(EXAMPLE_FILES) >= 2
    assert "custom_trainers.py" in {path.name for path in EXAMPLE_FILES}


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[path.stem for path in EXAMPLE_FILES])
def test_every_trainer_class_of_the_examples_passes(path: pathlib.Path) -> None:
    # Importing creates the classes, which runs the check; a missing package of the test
    # extra fails here rather than being skipped.
    module = _import_example(path)
    for cls in _trainer_classes_in(module):
        check_assembly(cls, BaseTrainer)


def test_the_custom_assembly_of_the_examples_is_checked() -> None:
    classes = {
        cls.__name__: cls
        for cls in _trainer_classes_in(_import_example(EXAMPLES / "custom_trainers.py"))
    }
    assert issubclass(classes["AccumulatingTrainer"], AccelerateMixin)


# ----------------------------------------------------------------------------------------------
# The order of the capability mixins does not change the run
# ----------------------------------------------------------------------------------------------


class AccumulationFirst(
    GradientAccumulationMixin,
    CheckpointMixin,
    SchedulerMixin,
    MixedPrecisionMixin,
    EvaluationMixin,
    TrainingLoopMixin,
    AccelerateMixin,
    BaseTrainer,
):
    """Trainer's mixins with accumulation left of checkpointing (the order that used to write
    a state requested at micro-batch 0 of a group at the end of the group)."""


class CapabilitiesReversed(
    TrainingLoopMixin,
    EvaluationMixin,
    GradientAccumulationMixin,
    MixedPrecisionMixin,
    SchedulerMixin,
    CheckpointMixin,
    AccelerateMixin,
    BaseTrainer,
):
    """Trainer's capability mixins in the reverse order, the loop first."""


class SaveAtFirstMicroBatch(TrainerCallback):
    """Asks for a training state at micro-batch 0 (the first of an accumulation group) of the
    first epoch, as SaveTrainingStateCallback would from ``on_train_step_end``."""

    def __init__(self, output_dir: pathlib.Path) -> None:
        self.output_dir = output_dir
        self.requested = False

    def on_train_step_end(self, trainer: Any, step: int, **kwargs: Any) -> None:
        if step == 0 and not self.requested:
            self.requested = True
            trainer.save_training_state(self.output_dir)


def _train(cls: type, output_dir: pathlib.Path) -> tuple[list[torch.Tensor], dict[str, Any]]:
    model = make_model()
    trainer = cls(
        model,
        nn.MSELoss(),
        torch.optim.SGD(model.parameters(), lr=0.05),
        callbacks=[SaveAtFirstMicroBatch(output_dir)],
    )
    # 10 samples, batch 2: 5 micro-batches per epoch, groups of 2, 2 and a last one of 1
    trainer.train(
        train_dataset=make_regression_data(10),
        eval_dataset=make_regression_data(4, seed=1),
        num_epochs=2,
        per_device_batch_size=2,
        gradient_accumulation_steps=2,
        create_scheduler_fn=lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5),
        seed=3,
    )
    manifest = json.loads((output_dir / MANIFEST_NAME).read_text())
    return weights(trainer.model), manifest["position"]


@pytest.mark.parametrize("reordered", [AccumulationFirst, CapabilitiesReversed])
def test_the_order_of_the_capability_mixins_does_not_change_the_run(
    tmp_path: pathlib.Path, reordered: type
) -> None:
    reference_weights, reference_position = _train(Trainer, tmp_path / "trainer")
    other_weights, other_position = _train(reordered, tmp_path / "reordered")

    # written at the end of micro-batch 0, inside the open group, in both
    assert reference_position == other_position
    assert reference_position["phase"] == "train"
    assert reference_position["epoch"] == 0
    assert reference_position["next_step"] == 1
    assert reference_position["num_updates"] == 0
    for expected, got in zip(reference_weights, other_weights, strict=True):
        assert torch.equal(expected, got)
