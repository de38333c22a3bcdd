"""Argument and return-value checks shared by the loops: each error names the problem."""

from __future__ import annotations

from typing import Any

__all__ = ["check_batch_output", "require_positive_int", "require_positive_number"]


def require_positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    """Raise a ``ValueError`` unless ``value`` is an ``int`` >= 1 (or ``None`` if allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def require_positive_number(name: str, value: Any) -> None:
    """Raise a ``ValueError`` unless ``value`` is ``None`` or a number > 0."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def check_batch_output(batch_output: Any, hook: str) -> None:
    """Raise a ``ValueError`` naming ``hook`` unless ``batch_output`` is a dict with ``loss``
    and ``batch_size`` (what the loops read)."""
    if isinstance(batch_output, dict) and "loss" in batch_output and "batch_size" in batch_output:
        return
    found = sorted(batch_output) if isinstance(batch_output, dict) else type(batch_output).__name__
    raise ValueError(
        f"{hook} must return a dict with the keys 'loss', 'model_outputs' and 'batch_size'; "
        f"got {found}"
    )
