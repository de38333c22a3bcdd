"""The check that runs when a trainer class is created: a wrong assembly fails at once, with
the fix in the message, instead of training differently from what its author meant.

A class is checked as a trainer when the Accelerate adapter is among its classes or when it
combines two or more trainer classes in its bases; a mixin (one trainer base) is not, so
mixins can be written on their own. A trainer:

* includes every mixin that one of its classes names in ``requires``;
* has the adapter (``AccelerateMixin``) after every capability in its MRO, just before
  ``BaseTrainer``: the adapter ends the chains it takes part in (it creates the Accelerator
  that ``MixedPrecisionMixin`` checks, and its ``accelerator_kwargs`` win), so a capability
  placed after it would be silently skipped.
"""

from __future__ import annotations

__all__ = ["ADAPTER_NAME", "check_assembly"]

ADAPTER_NAME = "AccelerateMixin"


def _is_trainer_assembly(cls: type, root: type) -> bool:
    names = {klass.__name__ for klass in cls.__mro__}
    trainer_bases = [base for base in cls.__bases__ if issubclass(base, root)]
    return ADAPTER_NAME in names or len(trainer_bases) >= 2


def check_assembly(cls: type, root: type) -> None:
    """Raise a ``TypeError`` naming the fix when ``cls`` (a subclass of ``root``, the
    ``BaseTrainer``) is an assembled trainer that lacks a mixin one of its classes needs, or
    places a capability after the adapter."""
    if not _is_trainer_assembly(cls, root):
        return
    mro = cls.__mro__
    names = [klass.__name__ for klass in mro]
    for klass in mro:
        for needed in klass.__dict__.get("requires", ()):
            if needed not in names:
                raise TypeError(
                    f"{cls.__name__} includes {klass.__name__}, which needs {needed}: add "
                    f"{needed} to the bases of {cls.__name__} (capabilities first, "
                    f"{ADAPTER_NAME} and BaseTrainer last)"
                )
    if ADAPTER_NAME not in names:
        return
    adapter = mro[names.index(ADAPTER_NAME)]
    after = [
        klass
        for klass in mro[names.index(ADAPTER_NAME) + 1 :]
        if issubclass(klass, root) and klass is not root and klass not in adapter.__mro__
    ]
    if after:
        misplaced = ", ".join(klass.__name__ for klass in after)
        raise TypeError(
            f"In {cls.__name__}, {misplaced} comes after {ADAPTER_NAME} in the method "
            f"resolution order, where the adapter would skip it: list the capability mixins "
            f"first and {ADAPTER_NAME}, BaseTrainer last, e.g. class {cls.__name__}("
            f"{', '.join(k.__name__ for k in after)}, ..., {ADAPTER_NAME}, BaseTrainer)"
        )
