"""``ModelFreezer``: freeze and unfreeze parts of a model for transfer learning.

Two views of a model:

* **layer groups**: the model's direct children (its attributes that are modules), in
  definition order; they are what the index ranges of :meth:`ModelFreezer.freeze` and
  :meth:`ModelFreezer.unfreeze` refer to (negative indices count from the end);
* **layers**: the leaf modules (modules without children), each tagged with its group.

Parameters that a non-leaf module holds directly (e.g. a position embedding next to
sub-modules) belong to the group of that module and are frozen and unfrozen with it;
parameters held directly by the model itself belong to no group and are never changed.
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

from torch import nn

__all__ = ["BN_MODULES", "Layer", "LayerGroup", "ModelFreezer"]

#: batch-norm layers, left trainable by ``freeze`` unless ``freeze_batch_norms=True``
BN_MODULES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
)


class Layer(NamedTuple):
    """A leaf module: ``layer_group_idx`` is its group's ``(index, index - num_groups)``."""

    layer_group_idx: tuple[int, int]
    module: nn.Module
    is_frozen: bool


class LayerGroup(NamedTuple):
    """A direct child of the model: ``layer_group_idx`` is ``(index, index - num_groups)``."""

    layer_group_idx: tuple[int, int]
    module: nn.Module
    is_frozen: bool


class _Unit(NamedTuple):
    """A module whose own parameters are frozen together: a leaf, or a non-leaf module that
    holds parameters directly."""

    group_idx: int
    module: nn.Module
    is_leaf: bool


class ModelFreezer:
    """Freeze and unfreeze a model's layer groups by inclusive index ranges.

    Creating it makes every parameter of the model trainable. Typical use::

        freezer = ModelFreezer(model)
        freezer.freeze()  # everything but the last group
        optimizer = torch.optim.AdamW(freezer.get_trainable_parameters(), lr=1e-3)
        ...  # train the head
        for group in freezer.unfreeze().values():  # the rest
            optimizer.add_param_group({**group, "lr": 1e-4})

    Batch-norm layers (:data:`BN_MODULES`) are left as they are unless
    ``freeze_batch_norms=True``. Note that the trainer puts the whole model in training mode at
    the start of each training epoch, so ``set_modules_as_eval=True`` lasts until then.
    """

    def __init__(self, model: nn.Module, freeze_batch_norms: bool = False) -> None:
        """
        :param model: the model to freeze and unfreeze (all its parameters are unfrozen).
        :param freeze_batch_norms: freeze (and unfreeze) batch-norm layers too.
        """
        self.model = model
        self.freeze_bn = freeze_batch_norms
        model.requires_grad_(True)
        self._layer_groups: list[nn.Module] = list(model.children())
        self.num_groups = len(self._layer_groups)
        self._units: list[_Unit] = []
        for group_idx, group in enumerate(self._layer_groups):
            for module in group.modules():
                is_leaf = next(module.children(), None) is None
                if is_leaf or next(module.parameters(recurse=False), None) is not None:
                    self._units.append(_Unit(group_idx, module, is_leaf))

    def _index_pair(self, group_idx: int) -> tuple[int, int]:
        return group_idx, group_idx - self.num_groups

    def get_layer_groups(self) -> list[LayerGroup]:
        """The model's direct children. A group is frozen if any of its parameters is; a
        group without parameters is "frozen" when it is in eval mode."""
        groups = []
        for group_idx, module in enumerate(self._layer_groups):
            params = list(module.parameters())
            frozen = any(not p.requires_grad for p in params) if params else not module.training
            groups.append(LayerGroup(self._index_pair(group_idx), module, frozen))
        return groups

    def get_layers(self) -> list[Layer]:
        """The model's leaf modules. A layer with parameters is frozen when they are (a layer
        whose parameters disagree raises ``ValueError``); one without is "frozen" when it is
        in eval mode."""
        layers = []
        for unit in self._units:
            if not unit.is_leaf:
                continue
            states = {p.requires_grad for p in unit.module.parameters(recurse=False)}
            if len(states) > 1:
                raise ValueError(
                    f"Layer {unit.module.__class__.__name__} of group {unit.group_idx} has both "
                    "frozen and trainable parameters"
                )
            frozen = (not states.pop()) if states else not unit.module.training
            layers.append(Layer(self._index_pair(unit.group_idx), unit.module, frozen))
        return layers

    def get_trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that are not frozen (to give to the optimizer)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def freeze(
        self, from_index: int = 0, to_index: int = -2, set_modules_as_eval: bool = False
    ) -> None:
        """Freeze the layer groups ``from_index`` to ``to_index`` (inclusive, in either order,
        negative indices from the end). By default all groups but the last.

        :param set_modules_as_eval: also put the frozen layers in eval mode (dropout off,
            batch-norm statistics no longer updated).
        """
        self._set_trainable(from_index, to_index, trainable=False, set_mode=set_modules_as_eval)

    def unfreeze(
        self, from_index: int = -1, to_index: int = 0, set_modules_as_training: bool = True
    ) -> dict[int, dict[str, list[nn.Parameter]]]:
        """Unfreeze the layer groups ``from_index`` to ``to_index`` (inclusive, in either
        order). By default all groups.

        :param set_modules_as_training: also put the unfrozen layers in training mode.
        :return: ``{group_index: {"params": [...]}}`` with the parameters this call unfroze,
            for each group that had some, ready for ``optimizer.add_param_group``.
        """
        changed = self._set_trainable(
            from_index, to_index, trainable=True, set_mode=set_modules_as_training
        )
        return {group_idx: {"params": params} for group_idx, params in sorted(changed.items())}

    def _group_index(self, index: int) -> int:
        """``index`` as a non-negative group index; ``IndexError`` when out of range."""
        if not -self.num_groups <= index < self.num_groups:
            raise IndexError(
                f"Layer group index {index} is out of range for {self.num_groups} groups"
            )
        return index % self.num_groups

    def _set_trainable(
        self, from_index: int, to_index: int, trainable: bool, set_mode: bool
    ) -> dict[int, list[nn.Parameter]]:
        """Set ``requires_grad`` (and, if ``set_mode``, the train/eval mode) of the layers of
        the groups in the range; return the parameters changed, by group."""
        first, last = sorted((self._group_index(from_index), self._group_index(to_index)))
        changed: dict[int, list[nn.Parameter]] = defaultdict(list)
        for unit in self._units:
            if not first <= unit.group_idx <= last:
                continue
            if isinstance(unit.module, BN_MODULES) and not self.freeze_bn:
                continue
            for param in unit.module.parameters(recurse=False):
                if param.requires_grad != trainable:  # a shared parameter is changed once
                    param.requires_grad_(trainable)
                    changed[unit.group_idx].append(param)
            if set_mode:
                unit.module.training = trainable
        return changed
