"""Callbacks that change when and how much the trainer evaluates during training:
:class:`StepBasedEvaluationCallback` (an evaluation every N optimizer updates) and
:class:`LimitEvalStepsCallback` (a cap on the batches an evaluation runs).

Both work on several processes: the step-based evaluation runs at the same update on every
process (the update count is the same everywhere), and the limit counts batches over all
processes together.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from pa_mixins.callbacks.core import TrainerCallback
from pa_mixins.checks import require_positive_int
from pa_mixins.seeding import capture_rng_state, restore_rng_state

if TYPE_CHECKING:
    from pa_mixins.base import BaseTrainer

__all__ = ["LimitEvalStepsCallback", "StepBasedEvaluationCallback"]


class StepBasedEvaluationCallback(TrainerCallback):
    """Run an intermediate evaluation epoch over the evaluation set every
    ``eval_every_n_steps`` optimizer updates, inside the training epochs.

    :param eval_every_n_steps: evaluate after every N-th optimizer update. A step is an
        **optimizer update** (not a micro-batch): with gradient accumulation,
        ``gradient_accumulation_steps`` micro-batches make one step. Updates are counted over
        the whole run (not per epoch, and across a resume), so the evaluations come after
        updates N, 2N, 3N, ... (an update that ends an epoch included).

    Each evaluation is the trainer's own evaluation epoch with ``is_intermediate=True``: the
    ``on_eval_epoch_start`` / ``on_eval_step_*`` / ``on_eval_epoch_end`` events fire (with
    ``is_intermediate=True``) and the mean loss is recorded as ``intermediate_eval_loss``.
    Unlike pytorch-accelerated, which deleted that metric right after it was logged, the
    values **stay in the run history**, one per evaluation, oldest first (so several per
    epoch, which a resumed run keeps too).

    Fixes compared with pytorch-accelerated:

    * it runs after the update (``on_optimizer_step_end``) and counts updates, where
      pytorch-accelerated counted micro-batches within each epoch and evaluated between a
      micro-batch's forward and backward passes;
    * afterwards every module is put back in the mode it had (pytorch-accelerated left the
      model in eval mode, switching dropout and batch-norm updates off for the rest of the
      epoch); a submodule that you had put in eval mode stays so;
    * the training epoch's running loss is not touched (evaluation has its own tracker), and
      the random generators are restored after it, so a run with intermediate evaluations
      trains exactly as the same run without them;
    * on several processes every process evaluates at the same update.

    With several evaluation sets (``eval_dataset`` a dict), each intermediate evaluation
    evaluates every set, in order, recording ``intermediate_eval_loss_<name>``.

    Without an evaluation set it does nothing (with a warning at the start of training).
    Combine with :class:`LimitEvalStepsCallback` to evaluate only part of the set; the order
    of the two callbacks does not matter.
    """

    def __init__(self, eval_every_n_steps: int) -> None:
        require_positive_int("eval_every_n_steps", eval_every_n_steps)
        self.eval_every_n_steps = eval_every_n_steps

    def on_training_run_start(self, trainer: BaseTrainer, **kwargs: Any) -> None:
        if trainer.eval_dataset is None:
            warnings.warn(
                "StepBasedEvaluationCallback: train() got no eval_dataset, so there are no "
                "intermediate evaluations",
                stacklevel=2,
            )

    def on_optimizer_step_end(
        self, trainer: BaseTrainer, num_updates: int = 0, **kwargs: Any
    ) -> None:
        if num_updates % self.eval_every_n_steps != 0 or trainer.eval_dataset is None:
            return
        model = trainer.model
        modes = [(module, module.training) for module in model.modules()]
        rng = capture_rng_state()
        try:
            trainer.run_evaluation_epoch(is_intermediate=True)  # type: ignore[attr-defined]
        finally:
            restore_rng_state(rng)
            for module, training in modes:
                module.training = training


class LimitEvalStepsCallback(TrainerCallback):
    """Evaluate only the first ``num_eval_steps`` batches of the evaluation set, in
    intermediate evaluations (see :class:`StepBasedEvaluationCallback`) or in every
    evaluation.

    :param num_eval_steps: the number of evaluation batches to run, **in total over all
        processes**. They are the first ``num_eval_steps`` batches of the evaluation set as one
        process would see them: Accelerate hands a set's batches to the processes in turn, so
        on ``P`` processes process ``i`` runs ``num_eval_steps // P`` batches, plus one if
        ``i < num_eval_steps % P``, and the recorded loss is (up to float rounding) the one a
        single process gets from those batches. (pytorch-accelerated gave each process
        ``num_eval_steps // P`` batches, none at all when ``num_eval_steps < P``.)
        With several evaluation sets, the limit applies to each set.
    :param limit_intermediate_only: limit intermediate evaluations only (the default); with
        ``False``, every evaluation epoch is limited: the one after each training epoch and
        ``evaluate()``'s too.

    The limit is a real one: the evaluation loop runs exactly that many batches (fewer if the
    set has fewer). pytorch-accelerated's version replaced a loader that its loop no longer
    read, so it limited nothing. It answers the trainer's
    :meth:`~pa_mixins.mixins.evaluation.EvaluationMixin.get_eval_batch_limit` question through
    :meth:`eval_batch_limit`, so its place in the list of callbacks does not matter.

    The evaluation of :class:`~pa_mixins.callbacks.ModelEmaCallback` runs only the callbacks
    given to it: pass a ``LimitEvalStepsCallback`` there to limit that one as well.
    """

    def __init__(self, num_eval_steps: int, limit_intermediate_only: bool = True) -> None:
        require_positive_int("num_eval_steps", num_eval_steps)
        self.num_eval_steps = num_eval_steps
        self.limit_intermediate_only = limit_intermediate_only

    def eval_batch_limit(
        self, trainer: BaseTrainer, is_intermediate: bool = False, **kwargs: Any
    ) -> int | None:
        """The number of batches this process runs in the evaluation epoch that is starting,
        or ``None`` when this epoch is not limited."""
        if self.limit_intermediate_only and not is_intermediate:
            return None
        share, extra = divmod(self.num_eval_steps, trainer.num_processes)
        return share + (1 if trainer.process_index < extra else 0)
