"""pa_mixins.utils: ModelEma, worker_init_fn (with real worker processes), remove_padding,
the process decorators on a single process, LimitBatches and DataLoaderSlice."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pa_mixins import Trainer
from pa_mixins.utils import (
    LIMIT_BATCHES_ENV_VAR,
    DataLoaderSlice,
    LimitBatches,
    ModelEma,
    local_process_zero_first,
    local_process_zero_only,
    remove_padding,
    worker_init_fn,
    world_process_zero_only,
)
from tests.conftest import make_model, make_regression_data

# ----------------------------------------------------------------------------------------------
# ModelEma
# ----------------------------------------------------------------------------------------------


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))


def perturb(model: nn.Module) -> None:
    """Change every parameter and the batch-norm statistics of `model`."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)
    model.train()
    model(torch.randn(8, 3))  # updates running_mean / running_var / num_batches_tracked


def test_model_ema_is_a_frozen_eval_copy():
    model = bn_model()
    ema = ModelEma(model, decay=0.9)
    assert ema.decay == 0.9 and ModelEma(model).decay == 0.9999
    assert ema.module is not model and not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert all(p.requires_grad for p in model.parameters())
    for (name, a), (_, b) in zip(
        ema.module.state_dict().items(), model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
        assert a.data_ptr() != b.data_ptr()


def test_model_ema_update_averages_parameters_and_float_buffers_and_copies_int_buffers():
    model = bn_model()
    ema = ModelEma(model, decay=0.9)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    perturb(model)
    current = model.state_dict()
    ema.update(model)
    for name, value in ema.module.state_dict().items():
        if value.is_floating_point():
            expected = 0.9 * before[name] + 0.1 * current[name]
            assert torch.allclose(value, expected), name
        else:
            assert torch.equal(value, current[name]), name
    assert ema.module.state_dict()["1.num_batches_tracked"].item() == 1
    assert not torch.equal(ema.module[1].running_mean, before["1.running_mean"])
    assert not ema.module.training  # still in eval mode


def test_model_ema_update_fn_can_be_overridden():
    class MaxEma(ModelEma):
        def update_fn(self, ema_model_weights, model_weights):
            return torch.maximum(ema_model_weights, model_weights)

    model = bn_model()
    ema = MaxEma(model)
    with torch.no_grad():
        model[0].weight.fill_(-5.0)
        model[2].weight.fill_(5.0)
    original_first = ema.module[0].weight.clone()
    ema.update(model)
    assert torch.equal(ema.module[0].weight, original_first)
    assert torch.equal(ema.module[2].weight, torch.full_like(ema.module[2].weight, 5.0))


def test_model_ema_set_copies_the_weights_and_forward_uses_the_copy():
    model = bn_model()
    ema = ModelEma(model, decay=0.5)
    perturb(model)
    ema.set(model)
    for name, value in ema.module.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
    model.eval()
    x = torch.randn(5, 3)
    assert torch.allclose(ema(x), model(x))


def test_model_ema_rejects_a_different_model():
    ema = ModelEma(bn_model())
    with pytest.raises(ValueError, match="do not match"):
        ema.update(make_model(features=3))


# ----------------------------------------------------------------------------------------------
# worker_init_fn
# ----------------------------------------------------------------------------------------------


class RandomValues(Dataset):
    """Each item: (worker id, the worker's torch seed mod 2**32, random.random(), np.random)."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> torch.Tensor:
        info = torch.utils.data.get_worker_info()
        assert info is not None
        seed = torch.initial_seed() % 2**32
        values = [info.id, seed, random.random(), np.random.rand()]
        return torch.tensor(values, dtype=torch.float64)


def draw(seed: int) -> torch.Tensor:
    loader = DataLoader(
        RandomValues(),
        batch_size=1,
        num_workers=2,
        worker_init_fn=worker_init_fn,
        generator=torch.Generator().manual_seed(seed),
    )
    return torch.cat(list(loader))


def test_worker_init_fn_seeds_python_and_numpy_reproducibly_and_per_worker():
    first, again, other = draw(7), draw(7), draw(8)
    assert torch.equal(first, again)
    assert not torch.equal(first[:, 2:], other[:, 2:])

    by_worker = {int(w): first[first[:, 0] == w] for w in (0, 1)}
    assert len(by_worker[0]) == len(by_worker[1]) == 3
    assert by_worker[0][0, 2] != by_worker[1][0, 2]  # python random differs per worker
    assert by_worker[0][0, 3] != by_worker[1][0, 3]  # numpy too
    for rows in by_worker.values():
        seed = int(rows[0, 1])
        assert rows[0, 2].item() == random.Random(seed).random()
        assert rows[0, 3].item() == np.random.RandomState(seed).rand()


# ----------------------------------------------------------------------------------------------
# remove_padding
# ----------------------------------------------------------------------------------------------


def test_remove_padding_1d():
    assert torch.equal(remove_padding(torch.tensor([1, -1, 2, -1]), -1), torch.tensor([1, 2]))


def test_remove_padding_keeps_rows_that_are_only_partly_padding():
    padded = torch.tensor([[1, 2], [-1, -1], [-1, 3], [-1, -1]])
    assert torch.equal(remove_padding(padded, -1), torch.tensor([[1, 2], [-1, 3]]))


def test_remove_padding_3d_and_edge_cases():
    padded = torch.zeros(3, 2, 2)
    padded[0, 0, 0] = 1.0
    padded[2, 1, 1] = 2.0
    result = remove_padding(padded, 0.0)
    assert torch.equal(result, padded[[0, 2]])
    no_padding = torch.arange(6).reshape(3, 2)
    assert torch.equal(remove_padding(no_padding, -1), no_padding)
    assert remove_padding(torch.full((4, 3), -1), -1).shape == (0, 3)


# ----------------------------------------------------------------------------------------------
# Process decorators (single process)
# ----------------------------------------------------------------------------------------------

DECORATORS = [local_process_zero_only, local_process_zero_first, world_process_zero_only]


@pytest.mark.parametrize("decorator", DECORATORS, ids=lambda d: d.__name__)
def test_decorators_run_the_function_once_on_a_single_process(decorator):
    calls = []

    @decorator
    def work(x, y=1):
        """Doc."""
        calls.append((x, y))
        return x + y

    assert work(2, y=3) == 5
    assert calls == [(2, 3)]
    assert work.__name__ == "work" and work.__doc__ == "Doc."


@pytest.mark.parametrize("decorator", DECORATORS, ids=lambda d: d.__name__)
def test_decorators_refuse_a_multi_process_launch_without_process_group(decorator, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    calls = []

    @decorator
    def work():
        calls.append(1)

    with pytest.raises(RuntimeError, match="no process group"):
        work()
    assert calls == []  # rank 1 never runs it before the others


# ----------------------------------------------------------------------------------------------
# LimitBatches / DataLoaderSlice
# ----------------------------------------------------------------------------------------------


def test_limit_batches_sets_and_restores_the_environment(monkeypatch):
    assert LIMIT_BATCHES_ENV_VAR == "PT_ACC_LIMIT_BATCHES"
    with LimitBatches(3):
        assert os.environ[LIMIT_BATCHES_ENV_VAR] == "3"
    assert LIMIT_BATCHES_ENV_VAR not in os.environ
    monkeypatch.setenv(LIMIT_BATCHES_ENV_VAR, "7")
    with LimitBatches(2):
        assert os.environ[LIMIT_BATCHES_ENV_VAR] == "2"
    assert os.environ[LIMIT_BATCHES_ENV_VAR] == "7"


def test_limit_batches_shortens_the_epochs_of_a_trainer_created_inside():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with LimitBatches(2):
        trainer = Trainer(model, loss_func=nn.MSELoss(), optimizer=optimizer, callbacks=())
    trainer.train(train_dataset=make_regression_data(n=64), num_epochs=2, per_device_batch_size=8)
    assert trainer.num_updates == 4


def test_dataloader_slice():
    loader = DataLoader(list(range(10)), batch_size=2)
    sliced = DataLoaderSlice(loader, 3)
    assert [batch.tolist() for batch in sliced] == [[0, 1], [2, 3], [4, 5]]
    assert len(sliced) == 3 and sliced.batch_size == 2
    assert len(DataLoaderSlice(loader, 50)) == 5
