"""Experiment trackers: a CSV file (no extra package), TensorBoard, MLflow and W&B.

No tracker is on by default: a run writes tracker files only when you ask for it (drop-in
users of pytorch-accelerated get no new files). Add a :class:`TrackingCallback`::

    from pa_mixins import Trainer
    from pa_mixins.callbacks import get_default_callbacks
    from pa_mixins.trackers import TrackingCallback

    tracking = TrackingCallback("csv", project_dir="runs")  # or ["csv", "tensorboard"], "all"
    trainer = Trainer(model, loss_func, optimizer,
                      callbacks=(*get_default_callbacks(), tracking))
    trainer.train(...)          # runs/<run name>/metrics.csv and config.json

Where each tracker writes, under ``project_dir``, and how to look at it:

* ``csv``: ``<run>/metrics.csv`` and ``<run>/config.json``; pandas, a spreadsheet, or
  ``python -m pa_mixins.plot runs/<run>``;
* ``tensorboard``: ``<run>/events.out.tfevents.*``; ``tensorboard --logdir runs``;
* ``mlflow``: ``mlflow.db`` (a SQLite store) and ``mlartifacts/``;
  ``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``;
* ``wandb``: ``wandb/offline-run-*``; ``wandb sync runs/wandb/offline-run-*`` (offline by
  default).

The optional packages are imported only when a run starts; creating a tracker whose package is
missing raises ``ImportError`` at once, naming the extra to install
(``pip install 'pa_mixins[tensorboard]'``, ``[mlflow]``, ``[wandb]``, or ``[trackers]`` for all
three).

Write your own tracker by subclassing :class:`Tracker` (``start`` / ``log_metrics`` /
``finish``) and passing an instance.
"""

from __future__ import annotations

from pa_mixins.trackers.base import DEFAULT_PROJECT_DIR, Tracker
from pa_mixins.trackers.callback import (
    EPOCH_TIME,
    LEARNING_RATE,
    TrackingCallback,
    trainer_hyperparameters,
)
from pa_mixins.trackers.csv_tracker import CSVTracker, read_metrics_csv
from pa_mixins.trackers.mlflow_tracker import MLflowTracker
from pa_mixins.trackers.registry import (
    TRACKERS,
    LogWith,
    TrackerSpec,
    available_trackers,
    make_trackers,
)
from pa_mixins.trackers.tensorboard_tracker import TensorBoardTracker
from pa_mixins.trackers.wandb_tracker import WandbTracker

__all__ = [
    "DEFAULT_PROJECT_DIR",
    "EPOCH_TIME",
    "LEARNING_RATE",
    "TRACKERS",
    "CSVTracker",
    "LogWith",
    "MLflowTracker",
    "TensorBoardTracker",
    "Tracker",
    "TrackerSpec",
    "TrackingCallback",
    "WandbTracker",
    "available_trackers",
    "make_trackers",
    "read_metrics_csv",
    "trainer_hyperparameters",
]
