"""SaveTrainingStateCallback, SaveBestModelCallback, EarlyStoppingCallback and
WSDCheckpointCallback through the real trainer."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from torch import nn

from pa_mixins import Trainer
from pa_mixins.callbacks import (
    EarlyStoppingCallback,
    SaveBestModelCallback,
    SaveTrainingStateCallback,
    TrainerCallback,
    WSDCheckpointCallback,
)
from pa_mixins.mixins.checkpointing import list_training_states
from pa_mixins.schedulers import WSDLrScheduler
from tests.conftest import make_model, make_regression_data


def make_trainer(*callbacks, seed: int = 0, lr: float = 0.01) -> Trainer:
    model = make_model(seed=seed)
    return Trainer(
        model, nn.MSELoss(), torch.optim.Adam(model.parameters(), lr=lr), callbacks=callbacks
    )


def train(trainer: Trainer, epochs: int = 3, **kwargs) -> None:
    trainer.train(
        make_regression_data(32),
        epochs,
        eval_dataset=make_regression_data(16, seed=1),
        per_device_batch_size=8,
        seed=3,
        **kwargs,
    )


class SetEvalLoss(TrainerCallback):
    """Replace the recorded eval loss by scripted values (to drive the selection callbacks)."""

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def on_eval_epoch_end(self, trainer, **kwargs):
        epoch = trainer.run_history.current_epoch
        trainer.run_history.get_metric_values("eval_loss_epoch")[-1] = self.values[epoch - 1]


# -- SaveTrainingStateCallback -----------------------------------------------------------------


def test_steps_are_optimizer_updates_and_retention_keeps_the_newest(tmp_path: Path) -> None:
    callback = SaveTrainingStateCallback(tmp_path, save_every_n_steps=3, max_checkpoints=2)
    trainer = make_trainer(callback)
    # 4 micro-batches per epoch, accumulation 2: 2 updates per epoch, 6 in 3 epochs
    train(trainer, gradient_accumulation_steps=2)
    names = [path.name for path, _ in list_training_states(tmp_path)]
    assert names == ["step_6", "final"]
    assert callback.state_dict() == {"global_step": 6}


def test_epoch_states_and_their_names(tmp_path: Path) -> None:
    trainer = make_trainer(
        SaveTrainingStateCallback(tmp_path, save_every_n_epochs=2, save_at_end=False)
    )
    train(trainer, epochs=4)
    assert [path.name for path, _ in list_training_states(tmp_path)] == ["epoch_2", "epoch_4"]
    assert (
        trainer.load_training_state(tmp_path / "epoch_2")["global_step"] == 8
    )  # 4 updates per epoch


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="save_every_n_steps"):
        SaveTrainingStateCallback(save_every_n_steps=0)


def test_the_counter_continues_across_a_resume(tmp_path: Path) -> None:
    first = SaveTrainingStateCallback(tmp_path, save_every_n_steps=4, save_at_end=False)
    train(make_trainer(first), epochs=2)  # 8 updates
    second = SaveTrainingStateCallback(tmp_path, save_every_n_steps=4, save_at_end=False)
    train(make_trainer(second, seed=1), epochs=3, resume_from=str(tmp_path / "step_4"))
    assert second.state_dict() == {"global_step": 12}
    assert [path.name for path, _ in list_training_states(tmp_path)] == [
        "step_4",
        "step_8",
        "step_12",
    ]


# -- EarlyStoppingCallback ----------------------------------------------------------------------


def test_early_stopping_stops_after_patience() -> None:
    stopper = EarlyStoppingCallback(early_stopping_patience=2, early_stopping_threshold=0.1)
    trainer = make_trainer(SetEvalLoss([1.0, 0.95, 0.5, 0.45, 0.44, 0.3]), stopper)
    train(trainer, epochs=6)
    # epoch 2: +1, epoch 3: improvement (reset), 4: +1, 5: +1 -> stop
    assert len(trainer.run_history.get_metric_values("eval_loss_epoch")) == 5
    assert stopper.state_dict() == {"best_metric": 0.5, "counter": 2}


def test_early_stopping_resumes_with_its_counter(tmp_path: Path) -> None:
    values = [1.0, 0.95, 0.5, 0.45, 0.44, 0.3]
    saver = SaveTrainingStateCallback(tmp_path, save_every_n_epochs=1, save_at_end=False)
    train(make_trainer(SetEvalLoss(values), EarlyStoppingCallback(2, 0.1), saver), epochs=6)
    stopper = EarlyStoppingCallback(2, 0.1)  # reset_on_train=True: a resume still restores
    resumed = make_trainer(SetEvalLoss(values), stopper, seed=1)
    with pytest.warns(UserWarning, match="SaveTrainingStateCallback"):  # not in this run
        train(resumed, epochs=6, resume_from=str(tmp_path / "epoch_4"))
    assert stopper.state_dict() == {"best_metric": 0.5, "counter": 2}
    assert len(resumed.run_history.get_metric_values("eval_loss_epoch")) == 5


def test_state_of_a_callback_the_resumed_run_lacks_is_ignored_with_a_warning(
    tmp_path: Path,
) -> None:
    train(make_trainer(EarlyStoppingCallback(5)), epochs=1)
    trainer = make_trainer(EarlyStoppingCallback(5))
    train(trainer, epochs=1)
    trainer.save_training_state(tmp_path / "s")
    with pytest.warns(
        UserWarning, match="EarlyStoppingCallback callback, which this run does not have"
    ):
        train(make_trainer(seed=1), epochs=2, resume_from=str(tmp_path / "s"))


# -- SaveBestModelCallback ----------------------------------------------------------------------


def test_save_best_saves_improvements_and_reloads_the_best(tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    saved_weights = {}

    class Snapshot(TrainerCallback):
        def on_training_run_epoch_end(self, trainer, **kwargs):
            saved_weights[trainer.run_history.current_epoch] = {
                k: v.clone() for k, v in trainer.get_model().state_dict().items()
            }

    best = SaveBestModelCallback(save_path=str(path))
    trainer = make_trainer(SetEvalLoss([1.0, 0.4, 0.6]), Snapshot(), best)
    train(trainer, epochs=3)
    assert best.best_metric == 0.4 and best.best_metric_epoch == 2
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["eval_loss_epoch"] == 0.4 and checkpoint["epoch"] == 2
    assert "optimizer_state_dict" in checkpoint
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, saved_weights[2][name])  # rolled back to the best epoch


def test_save_best_without_reload(tmp_path: Path) -> None:
    best = SaveBestModelCallback(
        save_path=str(tmp_path / "b.pt"), load_saved_checkpoint=False, save_optimizer=False
    )
    trainer = make_trainer(SetEvalLoss([1.0, 0.4, 0.6]), best)
    train(trainer, epochs=3)
    assert "optimizer_state_dict" not in torch.load(tmp_path / "b.pt", weights_only=True)
    assert best.state_dict() == {"best_metric": 0.4, "best_metric_epoch": 2}


# -- WSDCheckpointCallback ----------------------------------------------------------------------


def test_wsd_checkpoints_before_and_after_the_decay(tmp_path: Path) -> None:
    schedule = functools.partial(
        WSDLrScheduler, total_steps=12, num_warmup_steps=2, decay_phase_ratio=0.25
    )
    trainer = make_trainer(WSDCheckpointCallback(save_dir=str(tmp_path)))
    train(trainer, epochs=3, create_scheduler_fn=schedule)  # 4 updates per epoch: 12 updates
    assert (tmp_path / "checkpoint_9_wsd_pre_decay" / "pa_state.json").exists()
    post = torch.load(tmp_path / "checkpoint_12_wsd_post_decay.pt", weights_only=True)
    assert post["step"] == 12 and post["checkpoint_type"] == "wsd_post_decay"
    pre = make_trainer(seed=1).load_training_state(tmp_path / "checkpoint_9_wsd_pre_decay")
    assert pre["step"] == 9 and pre["checkpoint_type"] == "wsd_pre_decay"


def test_wsd_needs_a_wsd_scheduler(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="get_checkpoint_steps"):
        train(make_trainer(WSDCheckpointCallback(save_dir=str(tmp_path))), epochs=1)
