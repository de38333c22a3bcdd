"""Checkpoint files and training states: round trips, atomicity, security and bad input."""

from __future__ import annotations

import builtins
import errno
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from pa_mixins import Trainer
from pa_mixins.callbacks import SaveTrainingStateCallback, TrainerCallback
from pa_mixins.mixins.checkpointing import (
    MANIFEST_NAME,
    CheckpointError,
    UnsafeCheckpointError,
    list_training_states,
)
from pa_mixins.trainer import MinimalTrainer
from tests.conftest import make_model, make_regression_data


def make_trainer(seed: int = 0, features: int = 4, callbacks: tuple = ()) -> Trainer:
    model = make_model(features=features, seed=seed)
    return Trainer(
        model, nn.MSELoss(), torch.optim.Adam(model.parameters(), lr=0.01), callbacks=callbacks
    )


def train(trainer: Trainer, epochs: int = 1, **kwargs) -> None:
    trainer.train(make_regression_data(32), epochs, per_device_batch_size=8, seed=3, **kwargs)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture
def saved_state(tmp_path: Path) -> tuple[Trainer, Path]:
    trainer = make_trainer()
    train(trainer)
    trainer.save_training_state(tmp_path / "state", checkpoint_kwargs={"note": "hello", "n": 3})
    return trainer, tmp_path / "state"


class Evil:
    """Unpickling this creates a marker file (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


# -- portable checkpoints ---------------------------------------------------------------------


def test_checkpoint_round_trip_with_extra_kwargs(tmp_path: Path) -> None:
    trainer = make_trainer()
    train(trainer)
    trainer.save_checkpoint(tmp_path / "model.pt", checkpoint_kwargs={"epoch": 3, "score": 0.5})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
    other = make_trainer(seed=1)
    loaded = other.load_checkpoint(tmp_path / "model.pt")
    assert same_weights(other.model, trainer.model)
    assert loaded["epoch"] == 3 and loaded["score"] == 0.5
    assert "optimizer_state_dict" in loaded
    assert (
        other.optimizer.state_dict()["state"].keys()
        == trainer.optimizer.state_dict()["state"].keys()
    )


def test_checkpoint_without_optimizer_and_compile_prefix_stripped(tmp_path: Path) -> None:
    trainer = make_trainer()
    train(trainer)
    trainer.save_checkpoint(tmp_path / "m.pt", save_optimizer=False)
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert "optimizer_state_dict" not in raw
    compiled = {
        "model_state_dict": {f"_orig_mod.{k}": v for k, v in raw["model_state_dict"].items()}
    }
    torch.save(compiled, tmp_path / "compiled.pt")
    other = make_trainer(seed=1)
    other.load_checkpoint(tmp_path / "compiled.pt")
    assert same_weights(other.model, trainer.model)


def test_checkpoint_refuses_objects_that_need_code_to_load(tmp_path: Path) -> None:
    trainer = make_trainer()
    with pytest.raises(TypeError, match="plain values"):
        trainer.save_checkpoint(tmp_path / "m.pt", checkpoint_kwargs={"bad": object()})
    assert not (tmp_path / "m.pt").exists()


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    trainer = make_trainer()
    torch.save(
        {"model_state_dict": trainer.model.state_dict(), "x": Evil(marker)}, tmp_path / "evil.pt"
    )
    with pytest.raises(UnsafeCheckpointError, match="Refusing"):
        trainer.load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_checkpoint_of_another_model_changes_nothing(tmp_path: Path) -> None:
    make_trainer(features=6).save_checkpoint(tmp_path / "m.pt")
    trainer = make_trainer()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(CheckpointError, match="does not fit this model"):
        trainer.load_checkpoint(tmp_path / "m.pt")
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


# -- training states ----------------------------------------------------------------------------


def test_training_state_round_trip(saved_state: tuple[Trainer, Path]) -> None:
    trainer, state = saved_state
    manifest = json.loads((state / MANIFEST_NAME).read_text())
    assert manifest["num_processes"] == 1 and manifest["position"]["phase"] == "epoch_start"
    assert sorted(manifest["files"]) == ["rank0.1.pt", "trainer.1.pt"]
    other = make_trainer(seed=1)
    metadata = other.load_training_state(state)
    assert metadata == {"current_epoch": 2, "note": "hello", "n": 3}
    assert same_weights(other.model, trainer.model)


def test_saving_again_replaces_the_state_atomically(saved_state: tuple[Trainer, Path]) -> None:
    trainer, state = saved_state
    train(trainer, reset_run_history=False)
    trainer.save_training_state(state)
    manifest = json.loads((state / MANIFEST_NAME).read_text())
    assert manifest["generation"] == 2
    assert sorted(p.name for p in state.iterdir()) == [MANIFEST_NAME, "rank0.2.pt", "trainer.2.pt"]


def test_resume_from_a_folder_takes_the_newest_complete_state(tmp_path: Path) -> None:
    trainer = make_trainer()
    train(trainer)
    trainer.save_training_state(tmp_path / "a")
    train(trainer, epochs=2, reset_run_history=False)
    trainer.save_training_state(tmp_path / "b")
    (tmp_path / "c").mkdir()  # newer, but half-written: files without a manifest
    (tmp_path / "c" / "trainer.1.pt").write_bytes(b"garbage")
    assert [p.name for p, _ in list_training_states(tmp_path)] == ["a", "b"]
    other = make_trainer(seed=1)
    train(other, epochs=1, resume_from=str(tmp_path))
    assert other.resumed_from == str(tmp_path / "b")


def test_continuing_a_finished_run_with_more_epochs(tmp_path: Path) -> None:
    reference = make_trainer()
    train(reference, epochs=3)
    first = make_trainer()
    train(first, epochs=2)
    first.save_training_state(tmp_path / "s")
    epochs = []

    class Record(TrainerCallback):
        def on_train_epoch_start(self, trainer, **kwargs):
            epochs.append(trainer.run_history.current_epoch)

    resumed = make_trainer(seed=7, callbacks=(Record(),))
    train(resumed, epochs=3, resume_from=str(tmp_path / "s"))
    assert epochs == [3]
    assert same_weights(resumed.model, reference.model)
    assert resumed.run_history.state_dict() == reference.run_history.state_dict()


def test_non_plain_checkpoint_kwargs_are_refused_at_save(tmp_path: Path) -> None:
    trainer = make_trainer()
    with pytest.raises(TypeError, match="plain values"):
        trainer.save_training_state(tmp_path / "s", checkpoint_kwargs={"f": lambda: 1})
    assert not (tmp_path / "s").exists()


def test_resume_from_needs_the_checkpoint_mixin() -> None:
    model = make_model()
    trainer = MinimalTrainer(
        model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.1), callbacks=()
    )
    with pytest.raises(TypeError, match="CheckpointMixin"):
        trainer.train(make_regression_data(16), 1, resume_from="x")


# -- security -----------------------------------------------------------------------------------


def test_a_state_with_a_malicious_pickle_is_refused_and_runs_nothing(
    saved_state: tuple[Trainer, Path], tmp_path: Path
) -> None:
    _, state = saved_state
    marker = tmp_path / "pwned"
    payload = torch.load(state / "trainer.1.pt", weights_only=True)
    payload["checkpoint_kwargs"] = {"x": Evil(marker)}
    torch.save(payload, state / "trainer.1.pt")
    manifest = json.loads((state / MANIFEST_NAME).read_text())
    manifest["files"]["trainer.1.pt"] = (state / "trainer.1.pt").stat().st_size
    (state / MANIFEST_NAME).write_text(json.dumps(manifest))
    trainer = make_trainer(seed=1)
    with pytest.raises(UnsafeCheckpointError, match="nothing in it was run"):
        train(trainer, resume_from=str(state))
    with pytest.raises(UnsafeCheckpointError):
        trainer.load_training_state(state)
    assert not marker.exists()


# -- bad input ------------------------------------------------------------------------------------


def test_resume_from_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(make_trainer(), resume_from=str(tmp_path / "nope"))


def test_resume_from_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is empty"):
        train(make_trainer(), resume_from=str(tmp_path))


def test_resume_from_a_half_written_state(saved_state: tuple[Trainer, Path]) -> None:
    _, state = saved_state
    data = (state / "rank0.1.pt").read_bytes()
    (state / "rank0.1.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="half-written"):
        train(make_trainer(seed=1), resume_from=str(state))
    (state / MANIFEST_NAME).unlink()
    with pytest.raises(CheckpointError, match=f"no {MANIFEST_NAME}"):
        train(make_trainer(seed=1), resume_from=str(state))
    with pytest.raises(CheckpointError, match="no complete training state"):
        train(make_trainer(seed=1), resume_from=str(state.parent))


def test_resume_with_another_model_changes_nothing(saved_state: tuple[Trainer, Path]) -> None:
    _, state = saved_state
    trainer = make_trainer(features=6)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        trainer.train(
            make_regression_data(32, features=6), 1, per_device_batch_size=8, resume_from=str(state)
        )


def test_resume_with_another_number_of_processes(saved_state: tuple[Trainer, Path]) -> None:
    _, state = saved_state
    manifest = json.loads((state / MANIFEST_NAME).read_text())
    manifest["num_processes"] = 2
    (state / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"saved by 2 process\(es\); this run has 1"):
        train(make_trainer(seed=1), resume_from=str(state))


def test_resume_with_another_batch_size(saved_state: tuple[Trainer, Path]) -> None:
    _, state = saved_state
    trainer = make_trainer(seed=1)
    with pytest.raises(CheckpointError, match="batches per epoch"):
        trainer.train(make_regression_data(32), 1, per_device_batch_size=4, resume_from=str(state))


def test_unwritable_path_names_the_problem(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="Cannot write a training state"):
        make_trainer().save_training_state(tmp_path / "file" / "state")


def test_full_disk_keeps_the_previous_state(
    saved_state: tuple[Trainer, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer, state = saved_state
    before = sorted(p.name for p in state.iterdir())
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(CheckpointError, match=r"No space left on device.*unchanged"):
        trainer.save_training_state(state)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in state.iterdir()) == before
    make_trainer(seed=1).load_training_state(state)  # still a good state


def test_full_disk_during_periodic_saves_deletes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    states = tmp_path / "states"
    callback = SaveTrainingStateCallback(
        states, save_every_n_steps=2, save_at_end=False, max_checkpoints=1
    )
    trainer = make_trainer(callbacks=(callback,))
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:  # the first state goes through, the second hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(CheckpointError, match="No space left"):
        train(trainer, epochs=2)
    assert [p.name for p, _ in list_training_states(states)] == ["step_2"]
