"""From a run's last step to its exit (issue 17): the seconds after the last train step
until the exit handlers run, and until the process has ended.

    .venv/bin/python benchmarks/end_of_run.py --rounds 3 -- --max-steps 100
    PYTHONPATH=OTHER_TREE .venv/bin/python benchmarks/end_of_run.py ...   # another version

Each round runs ``rnn-jax train --out TMP ARGS --no-progress`` as a process of its own,
through a wrapper that notes the wall time after every train step and in an exit handler
registered first (so it runs last); the parent notes when the process has ended. Prints
one line per round and the ranges. The package is the one ``import rnn_jax`` finds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WRAPPER = """
import atexit, sys, time
times = sys.argv[1]
last = [0.0]
atexit.register(lambda: open(times, "w").write(f"{last[0]} {time.time()}"))
from rnn_jax import loop
step = loop.ModelSteps.__call__
def timed(self, state, k):
    out = step(self, state, k)
    last[0] = time.time()
    return out
loop.ModelSteps.__call__ = timed
sys.argv = ["rnn-jax", *sys.argv[2:]]
from rnn_jax.__main__ import main
sys.exit(main())
"""


def one_round(args: list[str]) -> tuple[float, float]:
    """``(last step -> exit handlers, last step -> exit)`` in seconds."""
    with tempfile.TemporaryDirectory() as scratch:
        times = Path(scratch) / "times"
        command = [sys.executable, "-c", WRAPPER, str(times), "train"]
        command += ["--out", str(Path(scratch) / "run"), *args, "--no-progress"]
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        proc = subprocess.run(  # in the scratch folder: ``-c`` puts the cwd first on sys.path
            command, capture_output=True, text=True, env=env, cwd=scratch, check=False
        )
        ended = time.time()
        if proc.returncode != 0:
            sys.exit(f"end_of_run: the run failed: {proc.stderr.strip()[-500:]}")
        last, handlers = (float(x) for x in times.read_text().split())
    return handlers - last, ended - last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("args", nargs="*", help="rnn-jax train's arguments, after --")
    options = parser.parse_args()
    handlers, exits = [], []
    for i in range(options.rounds):
        to_handlers, to_exit = one_round(options.args)
        handlers.append(to_handlers)
        exits.append(to_exit)
        print(f"round {i + 1}: {to_handlers:.2f} s to the exit handlers, {to_exit:.2f} s to exit")
    import rnn_jax

    print(f"package: {Path(rnn_jax.__file__).parent}")
    print(
        f"last step -> exit handlers {min(handlers):.2f}-{max(handlers):.2f} s, "
        f"-> exit {min(exits):.2f}-{max(exits):.2f} s ({options.rounds} rounds)"
    )


if __name__ == "__main__":
    main()
