"""``python -m rnn_jax`` and the ``rnn-jax`` command: the signal handlers first, then the
command line (``rnn_jax.cli``), whose imports take a tenth of a second."""

import atexit
import contextlib
import os
import sys
import threading

from rnn_jax.signals import exit_while_starting


def main() -> int:
    exit_while_starting()
    from rnn_jax.cli import main as cli_main

    code = cli_main()
    if sys.gettrace() is None and sys.getprofile() is None:  # no debugger, coverage, cProfile
        exit_without_finalizing(code)
    return code


def exit_without_finalizing(code: int) -> None:
    """Exit as Python would, less its finalization: the non-daemon threads stopped and
    joined, the exit handlers run (logging's flush, ``jax.distributed``'s shutdown),
    stdout and stderr flushed; then the process ends, without tearing down every module
    and JAX's runtime one object at a time (0.3 s after a bare ``import jax``, about 0.5 s
    after a run: more than half of the time from a run's last step to its exit). A
    command has closed every file it wrote before it returns."""
    # The first two steps of Python's own exit (Py_FinalizeEx), through the functions it
    # calls: private, but there is no public way to run them. _shutdown first tells
    # the idle workers of concurrent.futures' pools to end, then joins every thread.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to do
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
