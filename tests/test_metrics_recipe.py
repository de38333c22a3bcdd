"""Issue 12, part 4: the torchmetrics recipe of docs/logging.md gives, on two processes, the
metrics of the whole evaluation set computed in one process (uneven shares and last batches
included), recorded in the run history under its documented names and in the tracker."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
from types import ModuleType

import pytest
import torch
from torch import nn

from pa_mixins.trackers import read_metrics_csv
from tests.conftest import REPO_ROOT, launch_env, torchrun

pytest.importorskip("torchmetrics")
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score  # after the skip

SCRIPT = pathlib.Path(REPO_ROOT) / "tests" / "scripts" / "dist_metrics_recipe.py"


def _load_script() -> ModuleType:
    """The script as a module (its data and sets), without running it."""
    spec = importlib.util.spec_from_file_location("dist_metrics_recipe", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = _load_script()


def _reference(out: pathlib.Path) -> dict[str, float]:
    """The metrics of each whole set, by one process, with the run's final weights."""
    model = nn.Linear(4, script.NUM_CLASSES)
    model.load_state_dict(torch.load(out / "model.pt"))
    values = {}
    for name, (n, seed) in script.SETS.items():
        x, y = script.make_data(n, seed).tensors
        with torch.no_grad():
            logits = model(x)
        accuracy = MulticlassAccuracy(num_classes=script.NUM_CLASSES, average="micro")
        f1 = MulticlassF1Score(num_classes=script.NUM_CLASSES, average="macro")
        values[f"accuracy_{name}"] = float(accuracy(logits, y))
        values[f"f1_{name}"] = float(f1(logits, y))
    return values


@pytest.mark.multiprocess
def test_the_recipe_is_exact_on_two_processes(tmp_path: pathlib.Path) -> None:
    done = subprocess.run(
        [*torchrun(2), str(SCRIPT), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=launch_env(),
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0["processes"] == 2
    assert rank0["history"] == rank1["history"]  # the same values on every process
    history = rank0["history"]

    reference = _reference(tmp_path)
    for name, value in reference.items():
        # two epochs, then evaluate() (another batch size); the last epoch's evaluation and
        # evaluate() ran with the final weights
        assert len(history[name]) == 3
        assert history[name][1:] == pytest.approx([value, value], abs=1e-6), name
    assert set(history) == {
        "train_loss_epoch",
        *(f"eval_loss_epoch_{s}" for s in script.SETS),
        *(f"evaluation_loss_{s}" for s in script.SETS),
        *reference,  # accuracy_<set>, f1_<set>
    }

    # the tracker got them under the same names (evaluate()'s at the last epoch)
    epochs = read_metrics_csv(tmp_path / "runs" / rank0["run_name"] / "metrics.csv")
    for name in reference:
        assert [value for _, value in epochs[name]] == history[name]
