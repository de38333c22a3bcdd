"""``MixedPrecisionMixin``: choose fp16, bf16 or fp8 per trainer, and fail loudly where the
hardware cannot do what was asked."""

from __future__ import annotations

from typing import Any, ClassVar

from typing_extensions import override

from pa_mixins.base import BaseTrainer

__all__ = ["MIXED_PRECISION_MODES", "MixedPrecisionMixin"]

MIXED_PRECISION_MODES = ("no", "fp16", "bf16", "fp8")


class MixedPrecisionMixin(BaseTrainer):
    """Adds the ``mixed_precision`` constructor option: ``"no"``, ``"fp16"``, ``"bf16"`` or
    ``"fp8"``. Left at ``None``, the precision set by ``accelerate config`` /
    ``accelerate launch --mixed_precision`` applies, so scripts need no change.

    The forward pass runs under autocast (bf16 autocasts on the CPU too); fp16 uses a gradient
    scaler, and an update whose gradients overflowed is skipped together with its scheduler
    step. fp16 on a CPU raises an error (Accelerate would silently run fp32), and so does fp8
    without its backend (Transformer Engine or MS-AMP). Several trainers with different
    settings can be used one after the other in one process.
    """

    init_options: ClassVar[tuple[str, ...]] = ("mixed_precision",)

    def __init__(self, *args: Any, mixed_precision: str | None = None, **kwargs: Any) -> None:
        if mixed_precision is not None and mixed_precision not in MIXED_PRECISION_MODES:
            raise ValueError(
                f"mixed_precision must be one of {MIXED_PRECISION_MODES} or None, "
                f"got {mixed_precision!r}"
            )
        self.requested_mixed_precision = mixed_precision
        super().__init__(*args, **kwargs)

    @override
    def get_accelerator_kwargs(self) -> dict[str, Any]:
        kwargs = super().get_accelerator_kwargs()
        if self.requested_mixed_precision is not None:
            kwargs["mixed_precision"] = self.requested_mixed_precision
        return kwargs

    def _create_accelerator(self) -> Any:
        accelerator = super()._create_accelerator()
        if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
            raise ValueError(
                "mixed_precision='fp16' needs a GPU (or another accelerator with fp16 support): "
                "on the CPU Accelerate would silently train in fp32. Use mixed_precision='bf16' "
                "on the CPU, or 'no'."
            )
        return accelerator
