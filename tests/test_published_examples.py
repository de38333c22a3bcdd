"""pytorch-accelerated's published examples run with pa_mixins after the import change.

The adapted copies live in ``tests/published_examples/``; each says what was changed (the
import, and data made in the script instead of a download).
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest

from pa_mixins.callbacks import (
    CallbackHandler,
    CallbackMethodNotImplementedError,
    PrintProgressCallback,
    TerminateOnNaNCallback,
    TrainerCallback,
)
from tests.published_examples import (
    custom_callback_event,
    hf_bert_glue_mrpc,
    progressive_resizing,
    train_with_metrics_in_callback,
    train_with_metrics_in_loop,
)


def test_custom_callback_event_example_runs_and_fires_the_event(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # examples/core/custom_callback_event.py fires "verify_train_batch", which only one of its
    # five callbacks defines; the four others must be skipped, not raise AttributeError.
    calls: list[Any] = []
    published = custom_callback_event.VerifyBatchCallback.verify_train_batch

    def counting(self: Any, trainer: Any, xb: Any, yb: Any) -> None:
        calls.append(trainer)
        published(self, trainer, xb, yb)  # the example's own shape assertions

    monkeypatch.setattr(custom_callback_event.VerifyBatchCallback, "verify_train_batch", counting)
    custom_callback_event.main()

    steps_per_epoch = custom_callback_event.SPLIT[0] // 32  # drop_last=True
    assert len(calls) == 8 * steps_per_epoch
    trainer = calls[0]
    assert isinstance(trainer, custom_callback_event.TrainerWithCustomCallbackEvent)
    assert len(trainer.run_history.get_metric_values("train_loss_epoch")) == 8
    assert len(trainer.run_history.get_metric_values("eval_loss_epoch")) == 8
    assert "train_loss_epoch" in capsys.readouterr().out  # LogMetricsCallback printed


@pytest.mark.parametrize(
    "example",
    [train_with_metrics_in_callback, train_with_metrics_in_loop],
    ids=lambda m: m.__name__,
)
def test_metrics_examples_record_metrics_for_every_evaluation(example: Any) -> None:
    # examples/core/train_with_metrics_in_{callback,loop}.py: torchmetrics updated per
    # evaluation batch (in a callback / in calculate_eval_batch_loss), recorded per epoch; the
    # loop version relies on MoveModulesToDeviceCallback and does not call super() in
    # eval_epoch_end.
    trainer = example.main()
    history = trainer.run_history
    # evaluate() keeps the training history (pytorch-accelerated reset it, issue 12 part 7):
    # one value per training epoch's evaluation, then the final evaluate()'s
    assert history.get_metric_names() >= {"evaluation_loss", "accuracy", "precision", "recall"}
    epochs = len(history.get_metric_values("train_loss_epoch"))
    assert epochs >= 1 and len(history.get_metric_values("evaluation_loss")) == 1
    for name in ("accuracy", "precision", "recall"):
        values = history.get_metric_values(name)
        assert len(values) == epochs + 1
        assert all(0 <= float(value) <= 1 for value in values)


def test_hf_bert_example_runs_with_loss_func_none_and_its_own_scheduler() -> None:
    # examples/nlp/hf_bert_glue_mrpc.py: dict batches, loss_func=None with both batch-loss
    # hooks overridden, create_scheduler overridden to read len(self._train_dataloader) and
    # run_config, a gathered metric, eval batch size from eval_dataloader_kwargs; batch_size=32
    # turns on gradient accumulation (2 micro-batches of 16).
    trainer = hf_bert_glue_mrpc.main(batch_size=32)
    history = trainer.run_history
    assert len(history.get_metric_values("train_loss_epoch")) == 3
    metrics = history.get_metric_values("metrics")
    assert len(metrics) == 3 and all(0 <= m["accuracy"] <= 1 for m in metrics)
    assert trainer.run_config.gradient_accumulation_steps == 2
    assert trainer.run_config.eval_per_device_batch_size == hf_bert_glue_mrpc.EVAL_BATCH_SIZE
    assert trainer.scheduler is not None


def test_progressive_resizing_example_trains_all_stages(tmp_path: Any) -> None:
    # examples/vision/transfer_learning/progressive_resizing.py: three train() calls on one
    # trainer with reset_run_history=False, early stopping and the best model saved; its
    # accuracy callback moves the metric to ``trainer._eval_dataloader.device``.
    trainer = progressive_resizing.main(save_path=str(tmp_path / "best_model.pt"))
    history = trainer.run_history
    # every epoch asked for trains (2 + 2 + 1), unless early stopping ends a stage
    assert 3 <= len(history.get_metric_values("train_loss_epoch")) <= 5
    assert len(history.get_metric_values("accuracy")) == len(
        history.get_metric_values("eval_loss_epoch")
    )
    assert (tmp_path / "best_model.pt").exists()


def test_the_run_loaders_say_their_device_on_one_cpu_process() -> None:
    # the loaders are not prepared on one CPU process (the fast path), yet user code reads
    # ``trainer._train_dataloader.device`` / ``trainer._eval_dataloader.device``
    import torch
    from torch.utils.data import TensorDataset

    from pa_mixins import Trainer

    seen: dict[str, Any] = {}

    class ReadDevice(TrainerCallback):
        def on_training_run_start(self, trainer: Any, **kwargs: Any) -> None:
            seen["train"] = trainer._train_dataloader.device
            seen["eval"] = trainer._eval_dataloader.device

    model = torch.nn.Linear(2, 1)
    data = TensorDataset(torch.randn(8, 2), torch.randn(8, 1))
    trainer = Trainer(
        model,
        torch.nn.MSELoss(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        callbacks=[ReadDevice()],
    )
    trainer.train(data, eval_dataset=data, num_epochs=1, per_device_batch_size=4)
    assert seen == {"train": trainer.device, "eval": trainer.device}
    assert type(trainer._train_dataloader).__name__ == "DeviceDataLoader"  # not wrapped


class _Recorder(TrainerCallback):
    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def any_name_at_all(self, trainer: Any, **kwargs: Any) -> None:
        self.seen.append(("any_name_at_all", kwargs))

    def on_my_event(self, trainer: Any, **kwargs: Any) -> None:
        self.seen.append(("on_my_event", kwargs))


@pytest.mark.parametrize("event", ["any_name_at_all", "on_my_event", "nobody_handles_this"])
def test_a_custom_event_of_any_name_skips_callbacks_that_do_not_define_it(event: str) -> None:
    recorder = _Recorder()
    handler = CallbackHandler([TerminateOnNaNCallback, recorder, PrintProgressCallback])
    handler.call_event(event, trainer=None, value=1)
    expected = [] if event == "nobody_handles_this" else [(event, {"value": 1})]
    assert recorder.seen == expected


def test_a_missing_public_name_is_both_signals() -> None:
    callback = TerminateOnNaNCallback()
    # the handler's signal, as in pytorch-accelerated ...
    with pytest.raises(CallbackMethodNotImplementedError):
        _ = callback.verify_train_batch
    # ... and still an AttributeError, so probing for an optional method works
    with pytest.raises(AttributeError, match="verify_train_batch"):
        _ = callback.verify_train_batch
    assert not hasattr(callback, "state_dict")
    assert getattr(callback, "eval_batch_limit", "absent") == "absent"


def test_private_and_dunder_names_raise_a_plain_attribute_error() -> None:
    callback = _Recorder()
    for name in ("_private", "__deepcopy_me__"):
        with pytest.raises(AttributeError) as raised:
            getattr(callback, name)
        assert not isinstance(raised.value, CallbackMethodNotImplementedError)
    # copy and pickle probe dunder names on the instance
    callback.seen.append(("x", {}))
    assert copy.deepcopy(callback).seen == callback.seen
    assert pickle.loads(pickle.dumps(callback)).seen == callback.seen
