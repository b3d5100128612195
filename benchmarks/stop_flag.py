"""The stop flag's cost per step with two processes on localhost (issue 20): how much a
multi-process run pays, each step, to learn whether a signal asks every process to stop.

    .venv/bin/python benchmarks/stop_flag.py            # starts the two processes itself

Before: ``parallel.any_process(flag)``, one ``process_allgather`` of the flag after every
step (a collective, and the host waits for the step to finish). Now: JAX's preemption
sync point (``parallel.agreed_stop``), a lock per step, no collective. Each of the two
processes (one CPU device each, gloo) trains a tiny GRU (H 16, B 8, T 10) with
``loop.fit`` and no validation, once with neither, once with each flag, in rounds that
put each variant first in turn, timing how long the flag holds the loop each step (the
allgather waits for the step to finish); it also times the bare call, 2,000 times.
Prints medians (and the fastest fit) in microseconds per step. Measured on 2026-12-02
(the 2-core VM, shared with other work, so the fits' times scatter): see
``docs/faults.md``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(process_id: int, port: int, rounds: int, epochs: int) -> None:
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from rnn_jax import actions, loop, parallel
    from rnn_jax.config import ModelConfig, TrainConfig
    from rnn_jax.input_pipeline import load_dataset

    parallel.initialize_distributed(f"127.0.0.1:{port}", 2, process_id)

    class AllGatherFlag(actions.Action):
        """The flag before: one collective after every step."""

        def after_step(self, at: actions.At) -> bool:
            flags = multihost_utils.process_allgather(np.asarray(False, np.int32))
            return bool(np.asarray(flags).any())

    class Timed(actions.Action):
        """A flag whose ``after_step`` is timed: how long it holds the loop each step."""

        def __init__(self, flag: actions.Action) -> None:
            self.flag, self.seconds, self.calls = flag, 0.0, 0

        def start(self, state: object) -> None:
            self.flag.start(state)

        def after_step(self, at: actions.At) -> bool:
            started = time.perf_counter()
            stop = self.flag.after_step(at)
            self.seconds += time.perf_counter() - started
            self.calls += 1
            return stop

    config = TrainConfig(
        max_tokens=3000, batch_size=8, num_steps=10, num_epochs=epochs, eval_every=0,
        sample_every=0,
    )  # fmt: skip
    dataset = load_dataset(config)
    model_config = ModelConfig(vocab_size=dataset.vocab_size, num_hiddens=16, cell="gru")
    mesh = parallel.make_mesh()
    variants = {
        "no flag": list,
        "before: allgather per step": lambda: [Timed(AllGatherFlag())],
        "now: preemption sync point": lambda: [Timed(actions.StopWhen(lambda: None))],
    }
    per_step: dict[str, list[float]] = {name: [] for name in variants}
    in_loop: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % 3 :] + names[: r % 3]:  # each variant first in turn
            flags = variants[name]()
            started = time.perf_counter()
            result = loop.fit(
                model_config, config, dataset, actions=flags, mesh=mesh,
                echo=lambda _: None, progress=False,
            )  # fmt: skip
            jax.block_until_ready(result.state)
            wall = time.perf_counter() - started - result.compile_s
            per_step[name].append(wall / int(result.state.step) * 1e6)
            for flag in flags:
                in_loop[name].append(flag.seconds / flag.calls * 1e6)
    calls = {
        "before: allgather per step": lambda i: multihost_utils.process_allgather(
            np.asarray(False, np.int32)
        ),
        "now: preemption sync point": multihost_utils.reached_preemption_sync_point,
    }
    bare = {}
    for name, call in calls.items():
        started = time.perf_counter()
        for i in range(1, 2001):
            call(i + 10**6)  # ids past any the fits used
        bare[name] = (time.perf_counter() - started) / 2000 * 1e6
    if process_id == 0:
        steps = int(result.state.step)
        base = statistics.median(per_step["no flag"])
        print(f"two processes, {steps} steps per fit, {rounds} rounds (us per step)\n")
        print("| flag | in the loop | the call alone | step (median, fastest) | vs no flag |")
        print("|---|---:|---:|---:|---:|")
        for name, values in per_step.items():
            median, low = statistics.median(values), min(values)
            held = f"{statistics.median(in_loop[name]):.1f}" if in_loop[name] else ""
            alone = f"{bare[name]:.1f}" if name in bare else ""
            print(f"| {name} | {held} | {alone} | {median:.0f}, {low:.0f} | {median - base:+.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6, help="33 steps each")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.port, args.rounds, args.epochs)
        return
    with socket.socket() as s:  # a free port, for the coordinator to bind at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command = [sys.executable, __file__, "--rounds", str(args.rounds), "--epochs", str(args.epochs)]
    procs = [
        subprocess.Popen([*command, "--child", str(i), "--port", str(port)], env=env)
        for i in range(2)
    ]
    sys.exit(max(p.wait() for p in procs))


if __name__ == "__main__":
    main()
