"""Catching SIGTERM and Ctrl-C during a run, so that the trainer can stop at a safe point.

:class:`StopSignals` only records the signal; the trainer polls :attr:`StopSignals.received`
at its safe points and decides there (with the other processes) to stop. A second signal
stops at once: Ctrl-C raises ``KeyboardInterrupt``, SIGTERM is delivered again with the
previous handler in place.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["StopSignals"]


class StopSignals:
    """Handlers for SIGTERM and SIGINT, installed for the duration of a run.

    :param announce: called with a message when the first signal arrives.
    """

    def __init__(self, announce: Callable[[str], None]) -> None:
        self.announce = announce
        #: the name of the signal received since :meth:`install` (``"SIGTERM"`` / ``"SIGINT"``)
        self.received: str | None = None
        self._previous_handlers: dict[int, Any] = {}

    def clear(self) -> None:
        """Forget a signal received earlier."""
        self.received = None

    def install(self) -> None:
        """Forget any earlier signal and catch SIGTERM and SIGINT (in the main thread only)."""
        self.received = None
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
            except (ValueError, OSError):  # pragma: no cover - not settable here
                continue

    def restore(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        for signum, handler in self._previous_handlers.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(signum, handler)
        self._previous_handlers = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # a second signal: stop now
            self.restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        self.received = signal.Signals(signum).name
        self.announce(f"\nReceived {self.received}: stopping at the next safe point")
