"""An exponential moving average (EMA) of the model's weights: kept up to date after every
optimizer update, evaluated after each epoch and saved when it improves."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from pa_mixins.callbacks.core import CallbackHandler
from pa_mixins.callbacks.model_selection import SaveBestModelCallback
from pa_mixins.seeding import capture_rng_state, restore_rng_state
from pa_mixins.utils import ModelEma

if TYPE_CHECKING:
    from pa_mixins.base import BaseTrainer

__all__ = ["ModelEmaCallback"]


class ModelEmaCallback(SaveBestModelCallback):
    """Keep an exponential moving average of the model's weights, evaluate it after each
    epoch and save the best one.

    :param decay: the weight of the old average at each update:
        ``ema = decay * ema + (1 - decay) * weights`` (the rule of ``model_ema.update_fn``).
    :param evaluate_during_training: evaluate the EMA model on the evaluation set after each
        epoch's evaluation and save it to ``save_path`` when ``watch_metric`` improves. With
        ``False``, or when ``train()`` has no evaluation set, the EMA model is saved to
        ``save_path`` at the end of every epoch instead.
    :param save_path: the checkpoint file of the EMA weights (written with
        ``trainer.save_checkpoint``, without optimizer or scheduler state; its extra keys are
        ``{watch_metric: value, "epoch": epoch}``, or ``{"epoch": epoch}`` without evaluation).
        Load it with ``trainer.load_checkpoint(save_path)``.
    :param watch_metric: the run-history metric that decides which EMA model is the best.
    :param greater_is_better: whether a larger ``watch_metric`` is better.
    :param model_ema: the class that keeps the average, called as
        ``model_ema(model, decay=decay)``: :class:`~pa_mixins.utils.ModelEma` or a subclass
        (e.g. with another ``update_fn``).
    :param callbacks: the callbacks of the EMA model's evaluation epochs (classes or
        instances), e.g. one that records metrics; the trainer's own callbacks do not run
        during them.

    **When.** The average is created from the unwrapped model at the start of every
    ``train()`` (on the trainer's device, frozen, in eval mode) and updated after **every
    optimizer update** (``on_optimizer_step_end``); ``decay`` is therefore per update. After
    each epoch's evaluation (not after intermediate ones, nor in ``evaluate()``) the trainer's
    own evaluation epoch runs once more, with the EMA model in place of ``trainer.model``,
    this callback's ``callbacks`` in place of the trainer's, and the run history's metric
    prefix extended with ``"ema_model_"``: the EMA loss is recorded as
    ``ema_model_eval_loss_epoch``, next to ``eval_loss_epoch``. ``trainer.model``, the callback
    handler, the prefix and the random generators are restored afterwards, even if an error
    is raised, so adding this callback does not change how the model trains.

    **At the end of training** the EMA weights are *not* loaded into the model (as in
    pytorch-accelerated): ``trainer.model`` keeps the trained weights, which match the
    optimizer's state. The average is :attr:`ema_model` (its ``.module`` is the averaged
    model) and the best one is in ``save_path``.

    **Resume.** :meth:`state_dict` holds the EMA weights, the best value and its epoch, so a
    run resumed from a training state continues the same average bit for bit. As in
    pytorch-accelerated the best value is not reset by a new ``train()`` call: a new average
    replaces the saved file only when it beats the best one so far.

    Fixes compared with pytorch-accelerated: the average was updated once per epoch (so
    ``decay`` was per epoch; with the same value the average now covers a much shorter
    stretch of training: about ``1 / (1 - decay)`` updates), it was evaluated on the
    trainer's device only when evaluating, without an evaluation set it failed instead of
    saving every epoch, the trainer's model and callbacks were not restored after an error,
    and its state was not saved in training states.

    Order: the EMA evaluation runs in this callback's ``on_eval_epoch_end``, so callbacks
    listed after it (loggers) see the ``ema_model_`` metrics of the epoch; callbacks listed
    before it do not.
    """

    def __init__(
        self,
        decay: float = 0.99,
        evaluate_during_training: bool = True,
        save_path: str = "ema_model.pt",
        watch_metric: str = "ema_model_eval_loss_epoch",
        greater_is_better: bool = False,
        model_ema: Callable[..., ModelEma] = ModelEma,
        callbacks: Iterable[Any] = (),
    ) -> None:
        super().__init__(
            save_path=save_path,
            watch_metric=watch_metric,
            greater_is_better=greater_is_better,
            reset_on_train=False,
            save_optimizer=False,
            save_scheduler=False,
            load_saved_checkpoint=False,
        )
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be between 0 and 1, got {decay!r}")
        self.decay = decay
        self.evaluate_during_training = evaluate_during_training
        self.model_ema_cls = model_ema
        self.callback_handler = CallbackHandler(callbacks)
        #: the average (``None`` before the first ``train()``); ``.module`` is the EMA model
        self.ema_model: ModelEma | None = None
        self._track_prefix = "ema_model_"
        self._in_training = False
        self._pending_state: dict[str, Any] | None = None

    # -- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The EMA weights (a CPU copy; ``None`` before training), the best value and its
        epoch (saved in training states)."""
        state = super().state_dict()
        ema = self.ema_model
        state["ema_model"] = (
            None
            if ema is None
            else {
                name: tensor.detach().to("cpu", copy=True)
                for name, tensor in ema.state_dict().items()
            }
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._pending_state = state.get("ema_model")
        self._apply_pending_state()

    def _apply_pending_state(self) -> None:
        if self._pending_state is not None and self.ema_model is not None:
            self.ema_model.load_state_dict(self._pending_state)
            self._pending_state = None

    # -- events -----------------------------------------------------------------------------------

    def _watches_metric(self) -> bool:
        return self.evaluate_during_training

    def on_training_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        super().on_training_run_start(trainer)
        model = trainer.get_model(keep_torch_compile=False)
        self.ema_model = self.model_ema_cls(model, decay=self.decay).to(trainer.device)
        self._apply_pending_state()  # a state loaded before this run started
        self._in_training = True

    def on_optimizer_step_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        if self.ema_model is not None:
            self.ema_model.update(trainer.get_model(keep_torch_compile=False))

    def on_eval_epoch_end(
        self, trainer: BaseTrainer, is_intermediate: bool = False, **kwargs: Any
    ) -> None:
        if (
            not self.evaluate_during_training
            or is_intermediate
            or not self._in_training
            or self.ema_model is None
        ):
            return
        trainer.print("\nEvaluating the EMA model")
        rng = capture_rng_state()
        try:
            trainer.run_evaluation_epoch(  # type: ignore[attr-defined]
                is_intermediate=False,
                model=self.ema_model.module,
                callback_handler=self.callback_handler,
                metric_prefix=self._track_prefix,
            )
        finally:
            restore_rng_state(rng)

    def on_training_run_epoch_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        if self.ema_model is None:
            return
        with trainer.substitute(model=self.ema_model.module):
            if self.evaluate_during_training and trainer.eval_dataset is not None:
                super().on_training_run_epoch_end(trainer)
            else:
                trainer.save_checkpoint(  # type: ignore[attr-defined]
                    save_path=self.save_path,
                    checkpoint_kwargs={"epoch": trainer.run_history.current_epoch},
                    save_optimizer=False,
                    save_scheduler=False,
                )

    def on_training_run_end(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        """The EMA weights are not loaded into the model (see the class docstring)."""
        self._in_training = False

    def on_evaluation_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        self._in_training = False
