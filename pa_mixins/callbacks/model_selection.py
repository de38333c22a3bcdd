"""Callbacks that select a model by a metric: keep the best weights, stop when progress stops.

Both decide from the run history, whose losses are already reduced over all processes, so on
several processes every process takes the same decision at the same epoch. (A metric that you
record yourself must be the same on every process for that to hold, e.g. computed from
gathered predictions.) Both are stateful: their ``state_dict()`` is saved in training states,
so a resumed run carries on with the same best value and counter.

With several evaluation sets (``eval_dataset`` a dict), each set's loss is
``eval_loss_epoch_<name>`` and there is no ``eval_loss_epoch``: name the set to watch
(``watch_metric="eval_loss_epoch_val"``). Watching the default name then fails when the run
starts, not after its first epoch.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

from pa_mixins.callbacks.core import StopTrainingError, TrainerCallback

if TYPE_CHECKING:
    from pa_mixins.base import BaseTrainer

__all__ = ["EarlyStoppingCallback", "SaveBestModelCallback"]


def check_watch_metric(trainer: BaseTrainer, watch_metric: str, who: str) -> None:
    """Refuse, when the run starts, to watch the loss of the single evaluation set
    (``...eval_loss_epoch``) in a run with several named sets, which records
    ``...eval_loss_epoch_<name>`` instead."""
    names = trainer.eval_set_names
    if names and watch_metric.endswith("eval_loss_epoch"):
        choices = ", ".join(repr(f"{watch_metric}_{name}") for name in names)
        raise ValueError(
            f"{who}(watch_metric={watch_metric!r}): this run has several evaluation sets "
            f"({', '.join(names)}), whose losses are {choices}; pass the one to watch"
        )


class SaveBestModelCallback(TrainerCallback):
    """Save a checkpoint whenever ``watch_metric`` improves (checked at the end of each
    epoch, after evaluation), and load the best one at the end of training.

    :param save_path: the checkpoint file (``.pt``), written atomically with
        ``trainer.save_checkpoint``.
    :param watch_metric: the run-history metric to compare.
    :param greater_is_better: whether a larger value is better.
    :param reset_on_train: forget the best value at the start of each ``train()`` (not when
        the run is resumed from a training state).
    :param save_optimizer: also save the optimizer's state in the checkpoint.
    :param save_scheduler: also save the scheduler's state in the checkpoint.
    :param load_saved_checkpoint: load the best checkpoint at the end of training. As in
        pytorch-accelerated this rolls back the optimizer and scheduler too when they were
        saved (``save_optimizer`` / ``save_scheduler``), so training continued afterwards
        starts consistently from the best point; pass ``save_optimizer=False`` to keep only
        the weights.

    The checkpoint's extra keys are ``{watch_metric: value, "epoch": epoch}`` every time
    (pytorch-accelerated used the key ``"loss"`` after the first save).
    """

    def __init__(
        self,
        save_path: str = "best_model.pt",
        watch_metric: str = "eval_loss_epoch",
        greater_is_better: bool = False,
        reset_on_train: bool = True,
        save_optimizer: bool = True,
        save_scheduler: bool = True,
        load_saved_checkpoint: bool = True,
    ) -> None:
        self.save_path = save_path
        self.watch_metric = watch_metric
        self.greater_is_better = greater_is_better
        self.operator = operator.gt if greater_is_better else operator.lt
        self.reset_on_train = reset_on_train
        self.save_optimizer = save_optimizer
        self.save_scheduler = save_scheduler
        self.load_saved_checkpoint = load_saved_checkpoint
        self.best_metric: float | None = None
        self.best_metric_epoch: int | None = None

    def state_dict(self) -> dict[str, Any]:
        """The best value so far and its epoch (saved in training states)."""
        return {"best_metric": self.best_metric, "best_metric_epoch": self.best_metric_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_metric = state["best_metric"]
        self.best_metric_epoch = state["best_metric_epoch"]

    def _watches_metric(self) -> bool:
        """Whether this callback reads ``watch_metric`` (the EMA callback may not)."""
        return True

    def on_training_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        if self._watches_metric():
            check_watch_metric(trainer, self.watch_metric, type(self).__name__)
        if self.reset_on_train:
            self.best_metric = None
            self.best_metric_epoch = None

    def on_training_run_epoch_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        current = trainer.run_history.get_latest_metric(self.watch_metric)
        if self.best_metric is None or self.operator(current, self.best_metric):
            self.best_metric = current
            self.best_metric_epoch = trainer.run_history.current_epoch
            trainer.save_checkpoint(  # type: ignore[attr-defined]
                save_path=self.save_path,
                checkpoint_kwargs={self.watch_metric: current, "epoch": self.best_metric_epoch},
                save_optimizer=self.save_optimizer,
                save_scheduler=self.save_scheduler,
            )

    def on_training_run_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        if not self.load_saved_checkpoint:
            return
        if self.best_metric is None:
            trainer.print(f"No {self.watch_metric} was recorded: no best checkpoint to load")
            return
        trainer.print(
            f"Loading checkpoint with {self.watch_metric}: {self.best_metric} "
            f"from epoch {self.best_metric_epoch}"
        )
        trainer.load_checkpoint(self.save_path)  # type: ignore[attr-defined]


class EarlyStoppingCallback(TrainerCallback):
    """Stop training when ``watch_metric`` has not improved by more than
    ``early_stopping_threshold`` for ``early_stopping_patience`` epochs (checked at the end of
    each epoch, after evaluation).

    :param early_stopping_patience: epochs without improvement before stopping.
    :param early_stopping_threshold: the smallest absolute change that counts as improvement.
    :param watch_metric: the run-history metric to compare.
    :param greater_is_better: whether a larger value is better.
    :param reset_on_train: forget the best value and the counter at the start of each
        ``train()`` (not when the run is resumed from a training state).
    """

    def __init__(
        self,
        early_stopping_patience: int = 1,
        early_stopping_threshold: float = 0.01,
        watch_metric: str = "eval_loss_epoch",
        greater_is_better: bool = False,
        reset_on_train: bool = True,
    ) -> None:
        self.early_stopping_patience = early_stopping_patience
        self.early_stopping_threshold = early_stopping_threshold
        self.watch_metric = watch_metric
        self.greater_is_better = greater_is_better
        self.operator = operator.gt if greater_is_better else operator.lt
        self.reset_on_train = reset_on_train
        self.early_stopping_patience_counter = 0
        self.best_metric: float | None = None

    def state_dict(self) -> dict[str, Any]:
        """The best value and the patience counter (saved in training states)."""
        return {"best_metric": self.best_metric, "counter": self.early_stopping_patience_counter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_metric = state["best_metric"]
        self.early_stopping_patience_counter = state["counter"]

    def on_training_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        check_watch_metric(trainer, self.watch_metric, type(self).__name__)
        if self.reset_on_train:
            self.best_metric = None
            self.early_stopping_patience_counter = 0

    def on_training_run_epoch_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        current = trainer.run_history.get_latest_metric(self.watch_metric)
        if self.best_metric is None:
            self.best_metric = current
        else:
            improvement = abs(current - self.best_metric)
            if (
                self.operator(current, self.best_metric)
                and improvement > self.early_stopping_threshold
            ):
                trainer.print(f"\nImprovement of {improvement} observed, resetting counter. ")
                self.best_metric = current
                self.early_stopping_patience_counter = 0
            else:
                trainer.print("No improvement above threshold observed, incrementing counter. ")
                self.early_stopping_patience_counter += 1
            trainer.print(
                f"Early stopping counter: {self.early_stopping_patience_counter}/"
                f"{self.early_stopping_patience}"
            )
        if self.early_stopping_patience_counter >= self.early_stopping_patience:
            raise StopTrainingError(
                "Stopping training due to no improvement after "
                f"{self.early_stopping_patience} epochs"
            )
