"""The console: the ``pa_mixins`` logger, its verbosity switch, and how numbers are shown.

Metrics printed by the default callbacks are rounded to :data:`SIGNIFICANT_DIGITS`
significant digits (:func:`format_number`). The lines of interval logging (every N optimizer
updates, see :class:`~pa_mixins.callbacks.IntervalMetricsCallback`) go through Python's
``logging`` under the ``pa_mixins`` logger at ``INFO``, from the main process only. Like any
library, ``pa_mixins`` installs no handler by itself: your own logging configuration
(``logging.basicConfig(level=logging.INFO)``) shows them, or::

    import pa_mixins
    pa_mixins.set_verbosity("info")     # a line per interval on stderr
    pa_mixins.set_verbosity("warning")  # quiet again (the default)

Nothing here runs at import time (no logger is created until one is used).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Mapping
from typing import IO, Any

__all__ = [
    "LOGGER_NAME",
    "SIGNIFICANT_DIGITS",
    "format_metrics",
    "format_number",
    "get_logger",
    "set_verbosity",
]

#: The name of the library's logger (its children: ``pa_mixins.<module>``).
LOGGER_NAME = "pa_mixins"
#: How many significant digits the console shows of a metric.
SIGNIFICANT_DIGITS = 4

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def get_logger() -> logging.Logger:
    """The ``pa_mixins`` logger."""
    return logging.getLogger(LOGGER_NAME)


class _ConsoleHandler(logging.StreamHandler):
    """Writes each record as one line; while a tqdm bar is drawn, through ``tqdm.write`` so
    that the line does not cut the bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            tqdm_class = _active_tqdm()
            if tqdm_class is not None:
                tqdm_class.write(message, file=self.stream)
            else:
                self.stream.write(message + self.terminator)
                self.flush()
        except Exception:  # the logging module's own policy for failing handlers
            self.handleError(record)


def _active_tqdm() -> Any:
    """tqdm's class if tqdm is imported and a bar is open, else ``None``."""
    tqdm_module = sys.modules.get("tqdm")
    tqdm_class = getattr(tqdm_module, "tqdm", None)
    instances = getattr(tqdm_class, "_instances", None)
    return tqdm_class if instances else None


def set_verbosity(level: int | str = "info", stream: IO[str] | None = None) -> None:
    """Show the ``pa_mixins`` logger's messages of ``level`` and above on ``stream``
    (default: stderr), one line each.

    ``"info"`` shows the interval-logging lines; ``"warning"`` (the default of a process that
    never called this) hides them again. Calling it again changes the level (and the stream,
    if given) of the same handler. Only the main process logs interval lines, so the other
    processes stay quiet whatever their level.

    :param level: ``"debug"``, ``"info"``, ``"warning"``, ``"error"``, ``"critical"`` or a
        ``logging`` level number.
    :param stream: where the lines go.
    """
    if isinstance(level, str):
        if level.lower() not in _LEVELS:
            raise ValueError(f"Unknown verbosity {level!r}: use one of {sorted(_LEVELS)}")
        level = _LEVELS[level.lower()]
    logger = get_logger()
    handler = next((h for h in logger.handlers if isinstance(h, _ConsoleHandler)), None)
    if handler is None:
        handler = _ConsoleHandler(stream if stream is not None else sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False  # one line, not a second one from the root logger
    elif stream is not None:
        handler.setStream(stream)
    logger.setLevel(level)


def format_number(value: Any, digits: int = SIGNIFICANT_DIGITS) -> str:
    """``value`` for the console: integers as they are, other numbers with ``digits``
    significant digits (``0.9367``, ``1.235e-05``; large values as whole numbers, ``12346``),
    one-element tensors as their number, anything else as ``str(value)``."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    number = _as_float(value)
    if number is None:
        return str(value)
    if not math.isfinite(number) or number == 0:
        return f"{number:g}"
    if 10**digits <= abs(number) < 1e15:
        return f"{number:.0f}"
    return f"{number:.{digits}g}"


def _as_float(value: Any) -> float | None:
    if isinstance(value, float):
        return value
    item = getattr(value, "item", None)
    numel = getattr(value, "numel", None)
    if callable(item) and callable(numel):
        try:
            if numel() == 1:
                result = item()
                return float(result) if isinstance(result, (int, float)) else None
        except (TypeError, ValueError, RuntimeError):
            return None
    return None


def format_metrics(metrics: Mapping[str, Any], digits: int = SIGNIFICANT_DIGITS) -> str:
    """``name: value`` pairs joined by ``" | "``, values through :func:`format_number`."""
    return " | ".join(f"{name}: {format_number(value, digits)}" for name, value in metrics.items())
