"""``CompileMixin``: run the model through ``torch.compile``, as a constructor option.

``Trainer(model, loss_func, optimizer, compile=True)`` compiles with ``torch.compile``'s
defaults (the inductor backend); ``compile={...}`` passes keyword arguments to it, e.g.
``{"mode": "max-autotune"}`` or ``{"backend": "aot_eager", "fullgraph": True}``. Off by default
(``False`` / ``None``): the trainer then runs exactly as without this mixin.

The option is plain data, checked here when the trainer is created (a wrong type, an unknown
key, a mode, backend or inductor option that ``torch.compile`` refuses, a model that is
already compiled), and handed to the adapter through ``get_accelerator_kwargs`` (key
``"torch_compile"``). The adapter compiles the prepared model of each ``train()`` /
``evaluate()`` / ``predict()`` last, after the DDP wrapper and mixed precision (PyTorch's
recommended order), and removes that wrapper again when the run ends: ``trainer.model`` and
``get_model()`` are your module, and checkpoints and training states hold its plain weight names
(no ``_orig_mod.`` prefix), so they load with and without compile. Runs on an engine that owns
the model (DeepSpeed, FSDP, XLA) are refused with compile on, when the run starts.

The adapter calls ``torch.compile`` itself instead of handing Accelerate a ``dynamo_plugin``
(Accelerate 1.15 keeps that plugin in its process-wide state, so a later trainer of the process
would compile too; turns TF32 matrix products on for the whole process on CUDA without mixed
precision; and its unwrapping points a compiled DDP wrapper at the module inside it).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn
from typing_extensions import override

from pa_mixins.base import BaseTrainer

__all__ = ["CompileMixin"]

#: the key of :meth:`~pa_mixins.base.BaseTrainer.get_accelerator_kwargs` the options travel in
COMPILE_KWARGS_KEY = "torch_compile"

_EXAMPLE = "{'mode': 'reduce-overhead', 'fullgraph': True, 'backend': 'inductor'}"


def _torch_compile_keys() -> tuple[str, ...]:
    """The keyword arguments of the installed ``torch.compile`` (all but the model)."""
    return tuple(name for name in inspect.signature(torch.compile).parameters if name != "model")


def _nothing(x: Any) -> Any:
    return x


def _check_types(options: Mapping[str, Any]) -> None:
    for key in ("fullgraph", "disable"):
        if key in options and not isinstance(options[key], bool):
            raise TypeError(f"compile[{key!r}] must be True or False, got {options[key]!r}")
    if "dynamic" in options and options["dynamic"] not in (True, False, None):
        raise TypeError(
            f"compile['dynamic'] must be True, False or None, got {options['dynamic']!r}"
        )
    if "mode" in options and not isinstance(options["mode"], (str, type(None))):
        raise TypeError(f"compile['mode'] must be a string or None, got {options['mode']!r}")
    backend = options.get("backend")
    if backend is not None and not (isinstance(backend, str) or callable(backend)):
        raise TypeError(
            f"compile['backend'] must be a backend name (e.g. 'inductor', 'aot_eager', "
            f"'eager'), a callable or None, got {backend!r}"
        )
    if "options" in options and not isinstance(options["options"], (Mapping, type(None))):
        raise TypeError(
            f"compile['options'] must be a dict of backend options or None, got "
            f"{options['options']!r}"
        )


def check_compile_option(compile: bool | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``torch.compile`` keyword arguments that the ``compile`` option asks for: ``None``
    for off (``False`` / ``None``), ``{}`` (``torch.compile``'s defaults) for ``True``, a copy
    of a dict. Raises a ``TypeError`` or ``ValueError`` naming the problem for anything else,
    and for what ``torch.compile`` itself refuses (checked by creating, not running, a
    compiled function: an unknown mode or backend, ``mode`` with ``options``, an unknown
    inductor option)."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return {}
    if not isinstance(compile, Mapping):
        raise TypeError(
            f"compile must be True, False, None or a dict of torch.compile keyword arguments "
            f"(e.g. {_EXAMPLE}), got {compile!r}"
        )
    allowed = _torch_compile_keys()
    unknown = [key for key in compile if key not in allowed]
    if unknown:
        raise ValueError(
            f"compile has unknown key(s) {', '.join(repr(key) for key in unknown)}: "
            f"torch.compile takes {', '.join(allowed)}"
        )
    options = dict(compile)
    _check_types(options)
    try:
        torch.compile(_nothing, **options)
    except Exception as error:
        raise ValueError(f"torch.compile refuses compile={options!r}: {error}") from error
    return options


def _is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` is a ``torch.compile`` wrapper or was compiled in place
    (``model.compile()``)."""
    return hasattr(model, "_orig_mod") or getattr(model, "_compiled_call_impl", None) is not None


class CompileMixin(BaseTrainer):
    """Adds the ``compile`` constructor option: run the model through ``torch.compile`` (see
    the module docstring). Owns ``compile_options``; extends ``get_accelerator_kwargs``. The
    adapter (``AccelerateMixin``) compiles the prepared model and removes the wrapper at the
    end of each run.

    :param compile: ``True`` for ``torch.compile``'s defaults, a dict of its keyword arguments
        (``mode``, ``fullgraph``, ``dynamic``, ``backend``, ``options``, ...), or ``False`` /
        ``None`` (default) for no compilation.

    Example::

        trainer = Trainer(model, loss_func, optimizer, compile={"mode": "max-autotune"})
    """

    init_options: ClassVar[tuple[str, ...]] = ("compile",)
    requires: ClassVar[tuple[str, ...]] = ("AccelerateMixin",)

    def __init__(
        self,
        *args: Any,
        compile: bool | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        options = check_compile_option(compile)
        #: the ``torch.compile`` keyword arguments of the ``compile`` option; ``None``: off
        self.compile_options = options
        super().__init__(*args, **kwargs)
        if options is not None and _is_compiled(self.model):
            raise ValueError(
                "compile= was given, but the model is already compiled (torch.compile(model) or "
                "model.compile()): pass the plain module with compile=..., or leave compile off"
            )

    @override
    def get_accelerator_kwargs(self) -> dict[str, Any]:
        kwargs = super().get_accelerator_kwargs()
        if self.compile_options is not None:
            kwargs[COMPILE_KWARGS_KEY] = dict(self.compile_options)
        return kwargs
