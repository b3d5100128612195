"""SIGINT, SIGTERM and SIGHUP during a run: noted, then acted on where it is safe.

The handlers only set a flag. While the run starts up, ``Signals.check`` turns the flag
into ``Interrupted`` between stages (raising from the handler itself could land inside
JAX's backend start-up, which swallows or wraps it); once training runs, the loop's
``actions.StopWhen`` stops after the current step, and the run saves and exits
``128 + signum``. This module imports nothing but the standard library, so the command
line installs the handlers before anything imports JAX.

Several processes stop together through JAX's preemption notifier, which
``jax.distributed.initialize`` installs for SIGTERM (in C++: Python's SIGTERM handler
is no longer called). Once a process has joined, ``Signals.share`` hands every
signal to it: SIGINT and SIGHUP are noted, then raised again as SIGTERM, and
``parallel.agreed_stop`` tells every process when to stop and which signal it was.
"""

from __future__ import annotations

import os
import signal
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(Exception):  # noqa: N818 (it is what happened, not an error)
    """A signal arrived before training started; exit status 128 + ``signum``."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


class Signals:
    """The flag the handlers set: ``received`` is the first signal's number, or None.

    A context manager: entering installs the handlers, leaving restores the old ones.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.training = False
        self.shared = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Signals:
        for s in SIGNALS:
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum
            if self.shared:
                os.kill(os.getpid(), signal.SIGTERM)  # to JAX's notifier

    def share(self) -> None:
        """This process joined others (``jax.distributed``): from now on a signal stops
        them all at a step they agree on, even before training starts (module docstring);
        ``check`` no longer raises."""
        self.shared = True
        if self.received is not None:  # it arrived while joining
            os.kill(os.getpid(), signal.SIGTERM)

    def start_training(self) -> None:
        """Called before the first step: a signal from here on stops the loop after a
        step (and is saved); one before it abandons the start-up."""
        self.check()
        self.training = True

    def check(self) -> None:
        """Raise ``Interrupted`` if a signal arrived while the run was starting."""
        if self.received is not None and not self.training and not self.shared:
            name = signal.Signals(self.received).name
            raise Interrupted(self.received, f"{name} before training started; stopped")

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
