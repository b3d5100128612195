"""A sweep's two ways to run M members: one vmapped step, or a loop of solo jitted steps.

    /work/main/.venv/bin/python benchmarks/sweep.py --out benchmarks/results/sweep  # 8 min here
    /work/main/.venv/bin/python benchmarks/sweep.py --repeats 1 --seconds 0.5   # a quick look

The book's configuration otherwise (rnn cell, V 28, B 32, T 35, SGD with clipping), at
H 64 and H 256, for M in {4, 16} members that differ in seed and learning rate. ``vmap``
is ``rnn_jax.sweep.make_sweep_step``: one compiled program over stacked states and
``(M, B, T)`` batches. ``loop`` is one compiled solo step (``step.make_train_step`` with
``sweep.member_optimizer``, so the same executable serves every member) called M times
per round on the members' own states, as ``fit_sweep(mode="loop")`` does through
``loop.fit``. Both time warm steps only, and report milliseconds per step per member.

Every sample is a fresh subprocess pinned with ``taskset``: one core (``-c 0``, XLA's
intra-op threads off) or two (``-c 0,1``, XLA's default threads). Inside a worker the two
modes alternate in blocks of ``--seconds``, so each ratio compares times taken under the
same load; rounds repeat the whole grid ``--repeats`` times, alternating the order of the
modes. The table gives the median over rounds of each worker's best block, and the range.

Measured here (2-core AMD EPYC shared with other jobs: load average 6-8, so the absolute
times are 2-3x a quiet machine's; the ratios compare blocks taken under the same load),
the first command above, 480 s:

    | H   | M  | cores | vmap ms/step/member    | loop ms/step/member    | loop / vmap |
    |-----|----|-------|------------------------|------------------------|-------------|
    | 64  | 4  | 1     | 2.322 [2.263-3.362]    | 2.210 [2.139-3.375]    | 0.95        |
    | 64  | 16 | 1     | 2.390 [1.154-4.513]    | 1.999 [0.922-3.938]    | 0.84        |
    | 256 | 4  | 1     | 14.994 [11.187-23.544] | 13.525 [10.718-21.249] | 0.90        |
    | 256 | 16 | 1     | 21.807 [21.723-28.251] | 13.445 [13.066-16.356] | 0.62        |
    | 64  | 4  | 2     | 1.308 [0.911-2.088]    | 1.355 [0.973-1.527]    | 1.04        |
    | 64  | 16 | 2     | 1.778 [1.339-2.411]    | 1.514 [0.968-1.660]    | 0.85        |
    | 256 | 4  | 2     | 12.282 [5.654-18.997]  | 8.940 [6.438-12.596]   | 0.73        |
    | 256 | 16 | 2     | 19.604 [16.552-24.055] | 12.955 [8.714-15.104]  | 0.66        |

The loop of solo steps is faster in 7 of 8 settings, and by the most where the work is
largest (H 256, M 16: 1.5-1.6x; an earlier measurement here found 20 ms against 11 per
member for the same setting): on this CPU prefer ``--sweep loop`` for speed. Re-measured
on 2026-12-02 on a quiet machine (load 1.4-2.0, 298 s; ``results/sweep``): the loop is
faster in 6 of 8 settings (H 256, M 16: 1.8x on 1 and 2 cores), the vmapped step at H 64
on 2 cores (1.2-1.3x). The
vmapped sweep compiles once and keeps every member in one program (one dispatch per
step, one checkpointable state), which is what an accelerator would reward; it is not
faster on two CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
VOCAB = 28  # the Time Machine's characters
BATCH, STEPS = 32, 35  # the book's B and T


def worker(num_hiddens: int, members: int, seconds: float, blocks: int, first: str) -> dict:
    """Time both modes in alternating blocks; the best block of each, ms/step/member."""
    import jax
    import numpy as np

    from rnn_jax import step, sweep
    from rnn_jax.config import ModelConfig, TrainConfig

    model_config = ModelConfig(vocab_size=VOCAB, num_hiddens=num_hiddens)
    config = TrainConfig(batch_size=BATCH, num_steps=STEPS, sample_every=0)
    group = [
        sweep.Member(model_config, dataclasses.replace(config, seed=i, lr=1.0 + i / members))
        for i in range(members)
    ]
    rng = np.random.default_rng(0)
    X = rng.integers(0, VOCAB, (members, BATCH, STEPS), dtype=np.int32)
    Y = rng.integers(0, VOCAB, (members, BATCH, STEPS), dtype=np.int32)
    optimizer = sweep.member_optimizer(config)

    stacked = sweep.init_sweep_state(group)
    vmapped = sweep.make_sweep_step(model_config, optimizer, carry_hidden=True)
    batch = (jax.device_put(X), jax.device_put(Y))
    solo_states = [sweep.unstack(stacked, i) for i in range(members)]
    solo = step.make_train_step(model_config, optimizer, carry_hidden=True)
    solo_batches = [(jax.device_put(X[i]), jax.device_put(Y[i])) for i in range(members)]

    def run_vmap(n: int) -> None:
        nonlocal stacked
        for _ in range(n):
            stacked, _ = vmapped(stacked, batch)
        jax.block_until_ready(stacked)

    def run_loop(n: int) -> None:
        for _ in range(n):
            for i in range(members):
                solo_states[i], _ = solo(solo_states[i], solo_batches[i])
        jax.block_until_ready(solo_states)

    runs = {"vmap": run_vmap, "loop": run_loop}
    for run in runs.values():
        run(2)  # compile and warm up
    best = {mode: float("inf") for mode in runs}
    order = [first, "loop" if first == "vmap" else "vmap"]
    for _ in range(blocks):
        for mode in order:
            n, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                runs[mode](1)
                n += 1
            ms = 1e3 * (time.perf_counter() - started) / (n * members)
            best[mode] = min(best[mode], ms)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="rounds over the whole grid")
    ap.add_argument("--seconds", type=float, default=1.0, help="timed seconds per block")
    ap.add_argument("--blocks", type=int, default=2, help="blocks of each mode per worker")
    ap.add_argument("--hiddens", type=int, nargs="+", default=[64, 256], help="H values")
    ap.add_argument("--members", type=int, nargs="+", default=[4, 16], help="M values")
    ap.add_argument("--out", type=Path, default=None, help="write results.md/json here")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        H, M, blocks, first = args.worker
        print(json.dumps(worker(int(H), int(M), args.seconds, int(blocks), first)))
        return

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    pinnings = {1: ("0", XLA_ONE_THREAD), 2: ("0,1", "")}
    samples: dict[tuple[int, int, int], dict[str, list[float]]] = {}
    started = time.perf_counter()
    loads = []
    for r in range(args.repeats):
        loads.append(os.getloadavg()[0])
        first = "vmap" if r % 2 == 0 else "loop"
        for cores, (cpus, xla) in pinnings.items():
            for H in args.hiddens:
                for M in args.members:
                    worker_env = {**env, "XLA_FLAGS": f"{env.get('XLA_FLAGS', '')} {xla}".strip()}
                    cmd = ["taskset", "-c", cpus, sys.executable, __file__, "--seconds"]
                    cmd += [str(args.seconds), "--worker", str(H), str(M), str(args.blocks), first]
                    out = subprocess.run(
                        cmd, env=worker_env, capture_output=True, text=True, check=True
                    )
                    best = json.loads(out.stdout.strip().splitlines()[-1])
                    entry = samples.setdefault((H, M, cores), {"vmap": [], "loop": []})
                    for mode, ms in best.items():
                        entry[mode].append(ms)
                    print(f"round {r + 1}: H {H} M {M} {cores} core(s): {best}", flush=True)
    wall = time.perf_counter() - started

    lines = [
        "| H | M | cores | vmap ms/step/member | loop ms/step/member | loop / vmap | faster |",
        "|---|---|---|---|---|---|---|",
    ]
    wins = {"vmap": 0, "loop": 0}
    for (H, M, cores), entry in sorted(
        samples.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])
    ):
        med = {mode: statistics.median(v) for mode, v in entry.items()}
        ratio = med["loop"] / med["vmap"]
        faster = "vmap" if ratio > 1 else "loop"
        wins[faster] += 1
        cells = [
            f"{med[m]:.3f} [{min(entry[m]):.3f}-{max(entry[m]):.3f}]" for m in ("vmap", "loop")
        ]
        lines.append(f"| {H} | {M} | {cores} | {cells[0]} | {cells[1]} | {ratio:.2f} | {faster} |")
    overall = max(wins, key=wins.get)
    text = "\n".join(
        [
            f"CPU: {_cpu()}; nproc {os.cpu_count()}; load average (1 min) at each round "
            f"{', '.join(f'{x:.1f}' for x in loads)}; {args.repeats} rounds, "
            f"{args.blocks} blocks of {args.seconds} s per mode per worker; {wall:.0f} s in all",
            "",
            *lines,
            "",
            f"Recommendation on this CPU: --sweep {overall} (faster in {wins[overall]} of "
            f"{sum(wins.values())} settings; a ratio above 1 means the vmapped step is faster).",
        ]
    )
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.md").write_text(text + "\n", "utf-8")
        raw = {f"H{H}-M{M}-cores{c}": v for (H, M, c), v in samples.items()}
        (args.out / "results.json").write_text(json.dumps(raw, indent=2) + "\n", "utf-8")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
