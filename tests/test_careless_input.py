"""Issue 13 part 5: careless input, tried as a new user would, gets a clear error before the
first optimizer step instead of a confusing one deep inside the loop (or silent nonsense).

Each test checks the message names the problem and the fix, and that no weight moved.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from pa_mixins import MinimalTrainer, Trainer
from pa_mixins.callbacks import TrainerCallback
from tests.conftest import make_model, make_regression_data, weights


class _CountSteps(TrainerCallback):
    def __init__(self) -> None:
        self.steps = 0

    def on_train_step_start(self, trainer: Any, **kwargs: Any) -> None:
        self.steps += 1


def _trainer(model: nn.Module, **kwargs: Any) -> tuple[Trainer, _CountSteps]:
    counter = _CountSteps()
    options: dict[str, Any] = {
        "loss_func": nn.MSELoss(),
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
    }
    options.update(kwargs)
    return Trainer(model, callbacks=[counter], **options), counter


def _train(trainer: Any, dataset: Any, **kwargs: Any) -> None:
    trainer.train(dataset, num_epochs=1, per_device_batch_size=8, **kwargs)


class _DictDataset(Dataset[dict[str, torch.Tensor]]):
    def __init__(self) -> None:
        self.data = make_regression_data(16)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        x, y = self.data[index]
        return {"x": x, "y": y}


def test_dict_batches_with_the_default_training_loss_say_to_override_the_hook() -> None:
    model = make_model()
    before = weights(model)
    trainer, _ = _trainer(model)
    with pytest.raises(TypeError, match=r"dicts with the keys \['x', 'y'\].*override"):
        _train(trainer, _DictDataset())
    assert all(torch.equal(a, b) for a, b in zip(before, weights(model)))


def test_dict_batches_with_the_default_evaluation_loss_say_to_override_the_hook() -> None:
    trainer, _ = _trainer(make_model())
    with pytest.raises(TypeError, match=r"default calculate_eval_batch_loss.*dicts"):
        trainer.evaluate(_DictDataset())


def test_loss_func_none_with_the_default_hooks_is_refused_by_train_and_evaluate() -> None:
    model = make_model()
    trainer, counter = _trainer(model, loss_func=None)
    with pytest.raises(TypeError, match=r"loss_func is None.*calculate_train_batch_loss"):
        _train(trainer, make_regression_data())
    with pytest.raises(TypeError, match=r"loss_func is None.*calculate_eval_batch_loss"):
        trainer.evaluate(make_regression_data())
    evaluating_only = MinimalTrainer(model, loss_func=None, optimizer=None)
    with pytest.raises(TypeError, match="loss_func is None"):
        evaluating_only.evaluate(make_regression_data())
    assert counter.steps == 0


def test_loss_func_none_is_fine_when_the_hooks_are_overridden() -> None:
    class OwnLoss(Trainer):
        def calculate_train_batch_loss(self, batch: Any) -> dict[str, Any]:
            out = self.model(batch[0])
            loss = ((out - batch[1]) ** 2).mean()
            return {"loss": loss, "model_outputs": out, "batch_size": out.size(0)}

    model = make_model()
    trainer = OwnLoss(model, None, torch.optim.SGD(model.parameters(), lr=0.1), callbacks=())
    _train(trainer, make_regression_data())
    assert len(trainer.run_history.get_metric_values("train_loss_epoch")) == 1
    # evaluation still uses the default eval hook, which needs the loss
    with pytest.raises(TypeError, match="calculate_eval_batch_loss"):
        _train(trainer, make_regression_data(), eval_dataset=make_regression_data())


def test_train_dataset_none_is_named() -> None:
    trainer, _ = _trainer(make_model())
    with pytest.raises(ValueError, match="train_dataset, got None"):
        _train(trainer, None)


def test_optimizer_and_loss_swapped_positionally_are_named() -> None:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model, optimizer, nn.MSELoss(), callbacks=())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"swapped.*Trainer\(model, loss_func, optimizer\)"):
        _train(trainer, make_regression_data())
    with pytest.raises(TypeError, match="swapped"):
        trainer.evaluate(make_regression_data())


def test_every_parameter_frozen_is_refused() -> None:
    model = make_model()
    trainer, counter = _trainer(model)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="every parameter is frozen"):
        _train(trainer, make_regression_data())
    assert counter.steps == 0


def test_some_parameters_frozen_still_train() -> None:
    model = make_model()
    trainer, counter = _trainer(model)
    model[0].requires_grad_(False)
    _train(trainer, make_regression_data())
    assert counter.steps > 0


def test_a_bare_tensor_as_dataset_is_refused_with_the_fix() -> None:
    trainer, _ = _trainer(make_model())
    data = make_regression_data()
    with pytest.raises(TypeError, match=r"train_dataset is a bare tensor.*TensorDataset"):
        _train(trainer, data.tensors[0])
    with pytest.raises(TypeError, match="eval_dataset is a bare tensor"):
        _train(trainer, data, eval_dataset=data.tensors[0])
    with pytest.raises(TypeError, match="dataset is a bare tensor"):
        trainer.evaluate(data.tensors[0])


def test_an_optimizer_over_another_models_parameters_is_refused() -> None:
    model, other = make_model(), make_model(seed=1)
    before = weights(model)
    trainer, counter = _trainer(model, optimizer=torch.optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="belongs to the trainer's model"):
        _train(trainer, make_regression_data())
    assert counter.steps == 0
    assert all(torch.equal(a, b) for a, b in zip(before, weights(model)))


def test_a_second_train_call_passes_the_checks() -> None:
    # after a run the optimizer is the prepared one and the model the unwrapped one: the
    # checks must still see that they belong together
    trainer, counter = _trainer(make_model())
    _train(trainer, make_regression_data())
    _train(trainer, make_regression_data(), reset_run_history=False)
    assert counter.steps == 2 * 8
