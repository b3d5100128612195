"""SIGINT, SIGTERM and SIGHUP during a run: noted, then acted on where it is safe.

The handlers only set a flag. While the run starts up, ``Signals.check`` turns the flag
into ``Interrupted`` between stages (raising from the handler itself could land inside
JAX's backend start-up, which swallows or wraps it); once training runs, the loop's
``actions.StopWhen`` stops after the current step, and the run saves and exits
``128 + signum``.

The commands that only read a run folder (``eval``, ``sample``, ``info``) have nothing
to save: ``ReaderSignals`` ends them at once, except while they work in chunks, which
stop after the current chunk and keep what they did. This module imports nothing but
the standard library, so the command line installs the handlers before anything
imports JAX.

``pause_point`` is a test hook: a run that a test asks to (``$RNN_JAX_PAUSE_AT``) waits at
named points of its life cycle, so that the test signals, kills or reads it there
instead of racing it.

Several processes stop together through JAX's preemption notifier, which
``jax.distributed.initialize`` installs for SIGTERM (in C++: Python's SIGTERM handler
is no longer called). Once a process has joined, ``Signals.share`` hands every
signal to it: SIGINT and SIGHUP are noted, then raised again as SIGTERM, and
``parallel.agreed_stop`` tells every process when to stop and which signal it was.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

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


class ReaderSignals(Signals):
    """The handlers of a command that only reads (``eval``, ``sample``, ``info``).

    Outside ``chunks()``, a signal ends the process at once: one line on stderr, exit
    status 128 + signum. The command has written nothing it could lose, and raising from
    the handler instead could land inside JAX (a garbage-collection callback, the
    backend's start-up), which prints it as a traceback. Inside ``chunks()`` a signal is
    only noted (``received``): the work stops after its current chunk and keeps what it
    did.
    """

    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command
        self.in_chunks = False

    def _handle(self, signum: int, frame: Any) -> None:
        super()._handle(signum, frame)
        if not self.in_chunks:
            exit_now(signum, f"{self.command} stopped")

    @contextlib.contextmanager
    def chunks(self) -> Iterator[None]:
        """While inside, a signal stops the work after its current chunk."""
        self.in_chunks = True
        try:
            yield
        finally:
            self.in_chunks = False


def exit_while_starting() -> None:
    """Until a command installs its own handlers: a signal ends the process at once with
    one line (nothing is written yet), instead of Python's ``KeyboardInterrupt``
    traceback in the middle of an import. The entry point calls it first."""
    for s in SIGNALS:
        signal.signal(s, lambda signum, frame: exit_now(signum, "stopped while starting"))


def python_defaults() -> None:
    """Python's own handling again (``KeyboardInterrupt`` for SIGINT), for the commands
    that install no handlers of their own (``export``)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


def exit_now(signum: int, what: str) -> NoReturn:
    """Flush stdout, say ``SIGNAME; what`` on stderr in one line and exit 128 + signum,
    without unwinding (nothing on the way out can print a traceback)."""
    say_and_exit(f"rnn-jax: {signal.Signals(signum).name}; {what}", 128 + signum)


def say_and_exit(line: str, status: int) -> NoReturn:
    """Flush stdout, write ``line`` to stderr in one write and end the process at once
    with ``status``. Another thread's output cannot split the line, but can still come
    just before or after it (a lost process's JAX client prints its fatal error from a
    thread of its own)."""
    # A closed pipe, or a write that a signal interrupted (a reentrant flush), keeps
    # stdout's buffer back; the exit goes on.
    with contextlib.suppress(OSError, RuntimeError, ValueError):
        sys.stdout.flush()
    os.write(2, f"{line}\n".encode())
    os._exit(status)


# --------------------------------------------------------------------------- a test hook

PAUSE_AT, PAUSE_DIR = "RNN_JAX_PAUSE_AT", "RNN_JAX_PAUSE_DIR"
PAUSE_TIMEOUT_S = 600  # a test that never releases the run fails it, later
_arrivals: dict[str, int] = {}


def pause_requested() -> bool:
    """Whether the environment names any pause point (``pause_point``)."""
    return bool(os.environ.get(PAUSE_AT))


def pause_point(name: str) -> None:
    """Wait at the point ``name`` when ``$RNN_JAX_PAUSE_AT`` (comma-separated) names it;
    otherwise return at once. Each arrival N (from 1) at a named point writes
    ``$RNN_JAX_PAUSE_DIR/<name>-<N>.paused`` and waits until ``<name>-<N>.go`` appears
    there; signals are handled meanwhile. The points (one process): ``folder`` (a new
    run's folder made and locked, nothing trained), ``start`` (``config.json`` written,
    the step compiled, before the first step), ``record`` (after each record's actions,
    its save included)."""
    if name not in os.environ.get(PAUSE_AT, "").split(","):
        return
    _arrivals[name] = arrival = _arrivals.get(name, 0) + 1
    folder = Path(os.environ[PAUSE_DIR])
    (folder / f"{name}-{arrival}.paused").touch()
    deadline = time.monotonic() + PAUSE_TIMEOUT_S
    while not (folder / f"{name}-{arrival}.go").exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"pause point {name} #{arrival} not released in {PAUSE_TIMEOUT_S} s")
        time.sleep(0.01)
