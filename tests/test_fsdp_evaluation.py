"""Evaluation and prediction under FSDP when the processes get different numbers of batches:
a 2-process CPU (gloo) run of tests/scripts/fsdp_eval_run.py through Accelerate's own FSDP2
preparation (forced on the CPU, as in tests/test_sharded_state.py), with the model sharded
layer by layer, so that every forward pass all-gathers parameters (a collective operation).

It finishes (a process with fewer batches, or none, runs padding passes instead of leaving
the others waiting in their forward pass), and gives what one process of the plain
``Trainer`` gives on the same weights: the evaluation losses (the evaluation after the
training epoch, ``evaluate()``, ``evaluate()`` with a batch limit) within 1e-6 and the
predictions in dataset order. The callbacks see the real batches only. In this process:
without such an engine, evaluation runs no extra collective; the padding batches.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn

from pa_mixins import Trainer
from pa_mixins.callbacks import LimitEvalStepsCallback
from pa_mixins.mixins.evaluation import _InStep
from tests.conftest import REPO_ROOT, launch_env, make_model, make_regression_data, torchrun

SCRIPT = pathlib.Path(REPO_ROOT) / "tests" / "scripts" / "fsdp_eval_run.py"
#: a regression hangs in a forward pass; the script's process group gives up after 60 s
LAUNCH_TIMEOUT_S = 240


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fsdp_eval_run", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("fsdp_eval")
    done = subprocess.run(
        [*torchrun(2), str(SCRIPT), str(out), "--cpu-fsdp", "--without-deepspeed"],
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]


@pytest.fixture(scope="module")
def reference(ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """One process of the plain Trainer on the weights the FSDP run ended with."""
    script = _script()
    model = script.make_model()
    weights = {name: torch.tensor(value) for name, value in ranks[0]["weights"].items()}
    model.load_state_dict(weights)
    sets = script.eval_sets()
    limiter = LimitEvalStepsCallback(1, limit_intermediate_only=False)
    trainer = Trainer(model, nn.MSELoss(), optimizer=None, callbacks=())
    losses = {}
    for name, dataset in sets.items():
        trainer.evaluate(dataset, per_device_batch_size=2)
        losses[name] = trainer.run_history.get_latest_metric("evaluation_loss")
    limited = Trainer(model, nn.MSELoss(), optimizer=None, callbacks=(limiter,))
    limited.evaluate(sets["odd"], per_device_batch_size=2)
    losses["odd_limited"] = limited.run_history.get_latest_metric("evaluation_loss")
    predictions = trainer.predict(sets["odd"], per_device_batch_size=2)
    return {"losses": losses, "predictions": predictions}


@pytest.mark.multiprocess
def test_the_run_is_fsdp_sharded_layer_by_layer_on_two_processes(
    ranks: list[dict[str, Any]],
) -> None:
    for rank in ranks:
        assert rank["distributed_type"] == "DistributedType.FSDP"
        assert rank["model"] == "FSDPSequential"
        assert rank["forward_is_collective"] is True


@pytest.mark.multiprocess
def test_evaluation_equals_one_plain_process_on_the_same_weights(
    ranks: list[dict[str, Any]], reference: dict[str, Any]
) -> None:
    losses = reference["losses"]
    for rank in ranks:  # every process records the same losses
        history = rank["history"]
        assert history["eval_loss_epoch_odd"] == pytest.approx([losses["odd"]], abs=1e-6)
        assert history["eval_loss_epoch_one"] == pytest.approx([losses["one"]], abs=1e-6)
        full, limited = history["evaluation_loss"]
        assert full == pytest.approx(losses["odd"], abs=1e-6)
        assert limited == pytest.approx(losses["odd_limited"], abs=1e-6)


@pytest.mark.multiprocess
def test_predict_equals_one_plain_process_in_dataset_order(
    ranks: list[dict[str, Any]], reference: dict[str, Any]
) -> None:
    for rank in ranks:
        torch.testing.assert_close(
            torch.tensor(rank["predictions"]), reference["predictions"], atol=1e-6, rtol=0
        )


@pytest.mark.multiprocess
def test_processes_run_as_many_forward_passes_and_callbacks_see_real_batches_only(
    ranks: list[dict[str, Any]],
) -> None:
    # odd: 9 samples in batches of 2 dealt out in turn (process 0: 3 batches, 5 samples;
    # process 1: 2, 4); one: process 1 has no batch; the limited evaluate(): process 0 runs 1
    # batch, process 1 none.
    first, second = ranks[0]["epochs"], ranks[1]["epochs"]
    steps = [(epoch["set"], epoch["steps"], epoch["samples"]) for epoch in first]
    assert steps == [("odd", 3, 5), ("one", 1, 1), (None, 3, 5), (None, 1, 2)]
    steps = [(epoch["set"], epoch["steps"], epoch["samples"]) for epoch in second]
    assert steps == [("odd", 2, 4), ("one", 0, 0), (None, 2, 4), (None, 0, 0)]
    assert [epoch["forwards"] for epoch in first] == [3, 1, 3, 1]
    assert [epoch["forwards"] for epoch in second] == [3, 1, 3, 1]
    # predict(): contiguous shares of 5 and 4 samples, 3 batches and 2
    assert ranks[0]["predict_forwards"] == ranks[1]["predict_forwards"] == 3


@pytest.mark.multiprocess
def test_an_iterable_evaluation_set_is_refused_before_anything_runs(
    ranks: list[dict[str, Any]],
) -> None:
    for rank in ranks:
        refusals = rank["refusals"]
        for key in ("evaluate", "train"):
            assert "map-style dataset" in refusals[key]
            assert "IterableDataset" in refusals[key]
        assert rank["epochs_after_refusals"] == 0
        assert rank["train_epochs"] == 1  # the refused train() never started its epoch
        # a second train() of the sharded model: refused with a clear error
        assert "new trainer" in refusals["train_again"]


@pytest.mark.multiprocess
def test_a_new_fsdp_trainer_in_the_same_processes_trains_as_the_first(
    ranks: list[dict[str, Any]],
) -> None:
    # Accelerate's process state said FSDP after the first run, and a second FSDP
    # Accelerator failed to set its plugin up: the adapter derives that state again.
    for rank in ranks:
        assert rank["fresh_history"] == pytest.approx(
            rank["history"]["eval_loss_epoch_one"], abs=1e-6
        )


# -- in this process -----------------------------------------------------------------------


def test_without_a_collective_forward_evaluation_gathers_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One process (as DDP): no agreement on the number of batches, no padding pass.
    def no_gather(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("evaluation gathered")

    monkeypatch.setattr(Trainer, "gather", no_gather)
    trainer = Trainer(make_model(), nn.MSELoss(), optimizer=None, callbacks=())
    trainer.evaluate(make_regression_data(9), per_device_batch_size=2)
    assert trainer.forward_is_collective is False
    assert trainer.predict(make_regression_data(9), per_device_batch_size=2).shape == (9, 1)


def test_padding_repeats_the_last_batch_or_takes_the_spare_one() -> None:
    spares: list[str] = []

    def spare() -> str:
        spares.append("spare")
        return "spare"

    short = _InStep(["a", "b"], own=2, most=4, spare=spare)
    assert list(short) == ["a", "b"]
    assert list(short.padding()) == ["b", "b"]
    longest = _InStep(["a", "b"], own=2, most=2, spare=spare)
    assert list(longest) == ["a", "b"]
    assert list(longest.padding()) == []
    none = _InStep([], own=0, most=3, spare=spare)
    assert list(none) == []
    assert list(none.padding()) == ["spare"] * 3
    assert spares == ["spare"]  # made once, only where needed
    lying = _InStep(["a", "b", "c"], own=2, most=2, spare=spare)
    with pytest.raises(RuntimeError, match="more batches than its length"):
        list(lying)
