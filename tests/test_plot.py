"""Issue 12, part 3: a picture of the run, from a run folder's CSV and from a run history.

The PNG files are opened and checked: their size (one 600 x 350 pixel panel per metric group,
two per row) and that each panel holds the curves drawn in it (pixels of matplotlib's first
colours), not a blank image. Skipped without matplotlib (in the ``test`` extra).
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from pa_mixins import Trainer
from pa_mixins.plot import group_metrics, main, plot_run_history
from pa_mixins.trackers import TrackingCallback
from pa_mixins.tracking import InMemoryRunHistory
from tests.conftest import REPO_ROOT, launch_env, make_model, make_regression_data

pytest.importorskip("matplotlib")
from matplotlib.image import imread  # after the skip

PANEL = (350, 600)  # height, width in pixels
BLUE = (0x1F, 0x77, 0xB4)  # matplotlib's first line colour (C0)
ORANGE = (0xFF, 0x7F, 0x0E)  # its second (C1)


def _train(callbacks: tuple[object, ...] = (), num_epochs: int = 3) -> Trainer:
    model = make_model()
    trainer = Trainer(
        model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.05), callbacks=callbacks
    )
    trainer.train(
        train_dataset=make_regression_data(32),
        eval_dataset=make_regression_data(16, seed=1),
        num_epochs=num_epochs,
        per_device_batch_size=8,
        create_scheduler_fn=lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9),
        seed=0,
    )
    return trainer


def _image(path: pathlib.Path) -> np.ndarray:
    image = imread(str(path))
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    return np.asarray(image[..., :3] * 255, dtype=np.float64)


def _panel(image: np.ndarray, row: int, column: int) -> np.ndarray:
    height, width = PANEL
    return image[row * height : (row + 1) * height, column * width : (column + 1) * width]


def _pixels_of(panel: np.ndarray, colour: tuple[int, int, int]) -> int:
    distance = np.abs(panel - np.array(colour, dtype=np.float64)).max(axis=2)
    return int((distance < 12).sum())


def _assert_drawn(panel: np.ndarray, colours: tuple[tuple[int, int, int], ...]) -> None:
    assert panel.var() > 0
    for colour in colours:
        assert _pixels_of(panel, colour) > 50, colour


def test_plot_command_draws_a_run_folder(tmp_path: pathlib.Path) -> None:
    callback = TrackingCallback("csv", tmp_path / "runs", log_epoch_time=False)
    _train((callback,))
    run_dir = tmp_path / "runs" / str(callback.current_run_name)
    out = tmp_path / "pictures" / "run.png"

    done = subprocess.run(
        [sys.executable, "-m", "pa_mixins.plot", str(run_dir), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=launch_env(use_cpu=False),
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)

    image = _image(out)
    # two panels side by side: the losses (train and eval) and the learning rate
    assert image.shape[:2] == (PANEL[0], 2 * PANEL[1])
    _assert_drawn(_panel(image, 0, 0), (BLUE, ORANGE))
    _assert_drawn(_panel(image, 0, 1), (BLUE,))
    assert _pixels_of(_panel(image, 0, 1), ORANGE) == 0


def test_plot_main_writes_next_to_the_csv_by_default_and_reports_a_missing_file(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    callback = TrackingCallback("csv", tmp_path, log_learning_rate=False, log_epoch_time=False)
    _train((callback,), num_epochs=2)
    run_dir = tmp_path / str(callback.current_run_name)

    assert main([str(run_dir)]) == 0
    image = _image(run_dir / "metrics.png")
    assert image.shape[:2] == PANEL  # the losses only
    _assert_drawn(image, (BLUE, ORANGE))

    assert main([str(tmp_path / "nothing_here")]) == 1
    assert "No metrics file" in capsys.readouterr().err


def test_a_run_folder_with_interval_metrics_gets_their_panels_against_updates(
    tmp_path: pathlib.Path,
) -> None:
    model = make_model()
    trainer = Trainer(
        model,
        nn.MSELoss(),
        torch.optim.SGD(model.parameters(), lr=0.05),
        callbacks=(),
        log_with="csv",
        project_dir=tmp_path,
        log_every_n_steps=2,
    )
    trainer.train(
        train_dataset=make_regression_data(32),
        eval_dataset=make_regression_data(16, seed=1),
        num_epochs=3,
        per_device_batch_size=8,
        create_scheduler_fn=lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9),
    )
    assert trainer.tracking_callback is not None
    run_dir = tmp_path / str(trainer.tracking_callback.current_run_name)
    assert main([str(run_dir)]) == 0
    image = _image(run_dir / "metrics.png")
    # per epoch: loss, epoch_time, learning rate; per interval: loss, samples/s, updates/s,
    # learning rate: 7 panels, two per row
    assert image.shape[:2] == (4 * PANEL[0], 2 * PANEL[1])
    for index in range(7):
        _assert_drawn(_panel(image, index // 2, index % 2), (BLUE,))
    assert _pixels_of(_panel(image, 3, 1), BLUE) == 0  # the eighth panel is hidden


def test_plot_run_history_draws_a_trainer_history(tmp_path: pathlib.Path) -> None:
    trainer = _train()
    path = plot_run_history(trainer.run_history, tmp_path / "history.png")
    image = _image(path)
    assert image.shape[:2] == PANEL  # train and eval loss, together
    _assert_drawn(image, (BLUE, ORANGE))


def test_plot_run_history_gives_each_other_metric_and_the_learning_rate_a_panel(
    tmp_path: pathlib.Path,
) -> None:
    history = InMemoryRunHistory()
    for epoch in range(4):
        history.update_metric("train_loss_epoch", 1.0 / (epoch + 1))
        history.update_metric("accuracy", torch.tensor(0.5 + 0.1 * epoch))
        history.update_metric("learning_rate", 0.1 * 0.5**epoch)
        history.update_metric("notes", "not a number")
    image = _image(plot_run_history(history, tmp_path / "history.png"))
    # loss, accuracy, learning rate: two rows of two panels, the fourth one hidden
    assert image.shape[:2] == (2 * PANEL[0], 2 * PANEL[1])
    for row, column in ((0, 0), (0, 1), (1, 0)):
        _assert_drawn(_panel(image, row, column), (BLUE,))
    assert _panel(image, 1, 1).var() == 0


def test_group_metrics_puts_losses_together_and_the_learning_rate_last() -> None:
    assert group_metrics(
        ["learning_rate", "eval_loss_epoch", "accuracy", "train_loss_epoch", "f1"]
    ) == [
        ("loss", ["train_loss_epoch", "eval_loss_epoch"]),
        ("accuracy", ["accuracy"]),
        ("f1", ["f1"]),
        ("learning rate", ["learning_rate"]),
    ]
    assert group_metrics(["learning_rate_group_0", "learning_rate_group_1"]) == [
        ("learning rate", ["learning_rate_group_0", "learning_rate_group_1"])
    ]
