"""ModelFreezer: layer groups and layers, freezing and unfreezing by index ranges, batch-norm
handling, train/eval modes, and a real two-stage fine-tuning run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pa_mixins import Trainer
from pa_mixins.finetuning import BN_MODULES, Layer, LayerGroup, ModelFreezer
from tests.conftest import make_regression_data, weights


class WithOwnParam(nn.Module):
    """A non-leaf module that also holds a parameter directly."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(8))
        self.linear = nn.Linear(8, 8)

    def forward(self, x):
        return self.linear(x) * self.scale


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input = nn.Linear(4, 8)
        self.block = nn.Sequential(
            nn.Linear(8, 8),
            nn.BatchNorm1d(8),
            nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU()),
        )
        self.custom = WithOwnParam()
        self.output = nn.Linear(8, 1)

    def forward(self, x):
        return self.output(self.custom(self.block(self.input(x))))


def trainable_names(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def all_names(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_parameters()}


BN_NAMES = {"block.1.weight", "block.1.bias", "block.2.1.weight", "block.2.1.bias"}
OUTPUT_NAMES = {"output.weight", "output.bias"}


def test_constructor_unfreezes_everything():
    model = Net()
    model.requires_grad_(False)
    freezer = ModelFreezer(model)
    assert trainable_names(model) == all_names(model)
    assert freezer.num_groups == 4


def test_layer_groups_are_the_direct_children_with_both_indices():
    model = Net()
    groups = ModelFreezer(model).get_layer_groups()
    assert all(isinstance(group, LayerGroup) for group in groups)
    assert [g.layer_group_idx for g in groups] == [(0, -4), (1, -3), (2, -2), (3, -1)]
    assert [g.module for g in groups] == [model.input, model.block, model.custom, model.output]
    assert [g.is_frozen for g in groups] == [False] * 4


def test_layers_are_the_leaf_modules_tagged_with_their_group():
    model = Net()
    layers = ModelFreezer(model).get_layers()
    assert all(isinstance(layer, Layer) for layer in layers)
    assert [layer.module for layer in layers] == [
        model.input,
        model.block[0],
        model.block[1],
        model.block[2][0],
        model.block[2][1],
        model.block[2][2],
        model.custom.linear,
        model.output,
    ]
    assert [layer.layer_group_idx[0] for layer in layers] == [0, 1, 1, 1, 1, 1, 2, 3]
    assert layers[5].layer_group_idx == (1, -3)
    assert not any(layer.is_frozen for layer in layers)


def test_freeze_defaults_to_all_groups_but_the_last_and_skips_batch_norms():
    model = Net()
    freezer = ModelFreezer(model)
    freezer.freeze()
    assert trainable_names(model) == BN_NAMES | OUTPUT_NAMES
    assert [g.is_frozen for g in freezer.get_layer_groups()] == [True, True, True, False]
    trainable = freezer.get_trainable_parameters()
    assert {id(p) for p in trainable} == {
        id(p) for name, p in model.named_parameters() if name in BN_NAMES | OUTPUT_NAMES
    }
    # the parameter held directly by a non-leaf module is frozen with its group
    assert not model.custom.scale.requires_grad


def test_freeze_batch_norms_when_asked():
    model = Net()
    ModelFreezer(model, freeze_batch_norms=True).freeze()
    assert trainable_names(model) == OUTPUT_NAMES


@pytest.mark.parametrize("from_index, to_index", [(1, 2), (2, 1), (-3, -2), (-2, 1)])
def test_freeze_index_ranges_are_inclusive_in_either_order(from_index, to_index):
    model = Net()
    freezer = ModelFreezer(model, freeze_batch_norms=True)
    freezer.freeze(from_index, to_index)
    assert [g.is_frozen for g in freezer.get_layer_groups()] == [False, True, True, False]


def test_freeze_leaves_modes_alone_by_default_and_sets_eval_when_asked():
    model = Net()
    freezer = ModelFreezer(model)
    freezer.freeze()
    assert all(module.training for module in model.modules())

    freezer.freeze(set_modules_as_eval=True)
    assert not model.input.training and not model.block[0].training
    assert not model.block[2][2].training  # the parameter-less ReLU too
    assert model.block[1].training and model.block[2][1].training  # batch norms skipped
    assert model.output.training
    # and the parameters are frozen (pytorch-accelerated unfroze them here)
    assert trainable_names(model) == BN_NAMES | OUTPUT_NAMES
    relu_layer = freezer.get_layers()[5]
    assert relu_layer.module is model.block[2][2] and relu_layer.is_frozen


def test_unfreeze_returns_the_newly_unfrozen_parameters_by_group():
    model = Net()
    freezer = ModelFreezer(model)
    freezer.freeze(set_modules_as_eval=True)
    unfrozen = freezer.unfreeze()
    assert sorted(unfrozen) == [0, 1, 2]  # group 3 was never frozen
    assert unfrozen[0] == {"params": [model.input.weight, model.input.bias]}
    assert [id(p) for p in unfrozen[1]["params"]] == [
        id(p) for p in (*model.block[0].parameters(), *model.block[2][0].parameters())
    ]
    assert {id(p) for p in unfrozen[2]["params"]} == {id(p) for p in model.custom.parameters()}
    assert trainable_names(model) == all_names(model)
    assert all(module.training for module in model.modules() if not list(module.children()))
    assert freezer.unfreeze() == {}


def test_unfreeze_range_and_keeping_eval_mode():
    model = Net()
    freezer = ModelFreezer(model)
    freezer.freeze(0, -1, set_modules_as_eval=True)
    unfrozen = freezer.unfreeze(-1, -2, set_modules_as_training=False)
    assert sorted(unfrozen) == [2, 3]
    assert not model.output.training and not model.custom.linear.training
    assert [g.is_frozen for g in freezer.get_layer_groups()] == [True, True, False, False]


def test_unfrozen_groups_can_be_added_to_an_optimizer():
    model = Net()
    freezer = ModelFreezer(model)
    freezer.freeze()
    optimizer = torch.optim.SGD(freezer.get_trainable_parameters(), lr=0.1)
    for group in freezer.unfreeze().values():
        optimizer.add_param_group({**group, "lr": 0.01})
    assert len(optimizer.param_groups) == 4
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(all_names(model))


def test_shared_parameter_is_returned_once():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.Sequential(shared, nn.ReLU()), nn.Linear(3, 1))
    freezer = ModelFreezer(model)
    freezer.freeze()
    unfrozen = freezer.unfreeze()
    assert list(unfrozen) == [0]
    assert len(unfrozen[0]["params"]) == 2


def test_parameters_of_the_model_itself_are_not_in_any_group():
    model = Net()
    model.temperature = nn.Parameter(torch.ones(1))
    freezer = ModelFreezer(model)
    freezer.freeze(0, -1)
    assert model.temperature.requires_grad


def test_layer_with_mixed_parameter_states_raises():
    model = Net()
    freezer = ModelFreezer(model)
    model.input.bias.requires_grad_(False)
    with pytest.raises(ValueError, match="both frozen and trainable"):
        freezer.get_layers()
    # freeze still works on such a layer
    freezer.freeze(0, 0)
    assert not model.input.weight.requires_grad


def test_out_of_range_indices_raise():
    freezer = ModelFreezer(Net())
    with pytest.raises(IndexError):
        freezer.freeze(0, 4)
    with pytest.raises(IndexError):
        freezer.unfreeze(-5)


def test_batch_norm_modules():
    assert BN_MODULES == (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def test_two_stage_fine_tuning_run():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    freezer = ModelFreezer(model)
    freezer.freeze()
    optimizer = torch.optim.SGD(freezer.get_trainable_parameters(), lr=0.05)
    trainer = Trainer(model, loss_func=nn.MSELoss(), optimizer=optimizer, callbacks=())
    data = make_regression_data(n=32)
    body_before, head_before = weights(model[0]), weights(model[2])
    trainer.train(train_dataset=data, num_epochs=1, per_device_batch_size=8)
    assert all(torch.equal(a, b) for a, b in zip(body_before, weights(model[0]), strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(head_before, weights(model[2]), strict=True))

    for group in freezer.unfreeze().values():
        optimizer.add_param_group({**group, "lr": 0.01})
    trainer.train(
        train_dataset=data, num_epochs=1, per_device_batch_size=8, reset_run_history=False
    )
    assert not any(torch.equal(a, b) for a, b in zip(body_before, weights(model[0]), strict=True))
