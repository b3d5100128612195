"""The linear cells' two scans, ``lax.scan`` against ``lax.associative_scan``: train-step time.

    nice -n 5 .venv/bin/python benchmarks/scan_modes.py --out benchmarks/results/scan_modes
    .venv/bin/python benchmarks/scan_modes.py --quick     # one small shape, a few seconds

For minGRU, minLSTM and the LRU (``rnn_jax.linear_cells``; one layer, H 256, the raw Time
Machine's 71 characters as vocabulary, random tokens) at T in {64, 256, 1024} and B in
{1, 32}: milliseconds per jitted train step (forward, backward and Adam's update, the
state donated and the hidden state carried, as ``step.make_train_step`` trains) with
``scan="sequential"`` and with ``scan="associative"``, and their ratio. Both compute the
same recurrence (``tests/test_linear_cells.py`` holds them equal): the associative scan
has O(log T) depth but does a few times the elementwise work and keeps every level's
intermediates for the backward pass.

Each worker is a fresh process pinned as ``bench.py --threads N`` pins it: one core
(``taskset -c 0`` and XLA's one-thread flags) or two (both cores, XLA's default
threads). Inside a worker each shape's two steps are compiled and called once, then
timed in alternating blocks of at least ``--seconds`` (whole steps, each waited for),
``--blocks`` blocks each, the order flipped every block; a figure is the median block's
ms/step. The machine is shared: only the ratio of two figures taken in the same minutes
means much, and the load average is printed with the table.

The first command took 8.7 minutes here on 2026-12-02 (the 2-core AMD EPYC VM, load
average 4.4-5.3 from other jobs): the associative scan was slower in all 36 settings,
1.13x to 3.72x (the LRU 1.13-1.41x, minGRU 1.54-3.72x, minLSTM 1.59-3.01x), with no
trend towards a win at longer T. The table is in the README ("Recurrences that train in
parallel over time") and ``benchmarks/results/scan_modes/``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import XLA_ONE_THREAD, threads_cpus
from sweep import _cpu as cpu_model

ROOT = Path(__file__).resolve().parents[1]
CELLS = ("mingru", "minlstm", "lru")
SCANS = ("sequential", "associative")
VOCAB = 71  # the raw Time Machine's characters
FULL = {"num_steps": (64, 256, 1024), "batch_sizes": (1, 32), "num_hiddens": 256}
QUICK = {"num_steps": (16,), "batch_sizes": (2,), "num_hiddens": 16}


def worker(cell: str, T: int, B: int, H: int, seconds: float, blocks: int) -> dict:
    """Both scans' train steps for one shape: compile, call once, then alternating blocks."""
    import jax
    import numpy as np

    from rnn_jax import step
    from rnn_jax.config import ModelConfig, TrainConfig

    config = TrainConfig(batch_size=B, num_steps=T, optimizer="adam", lr=1e-3)
    optimizer = step.make_optimizer(config)
    rng = np.random.default_rng(0)
    batch = tuple(jax.device_put(rng.integers(0, VOCAB, (B, T), dtype=np.int32)) for _ in "XY")
    runs, compile_s = {}, {}
    for scan in SCANS:
        model_config = ModelConfig(VOCAB, H, cell=cell, scan=scan)
        state = step.init_train_state(model_config, optimizer, B, jax.random.key(0))
        started = time.perf_counter()
        train_step = step.make_train_step(model_config, optimizer, carry_hidden=True)
        compiled = train_step.lower(state, batch).compile()
        compile_s[scan] = time.perf_counter() - started
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        runs[scan] = [compiled, state]
    ms: dict[str, list[float]] = {scan: [] for scan in SCANS}
    for b in range(2 * blocks):
        scan = SCANS[(b + b // 2) % 2]  # seq assoc, assoc seq, seq assoc, ...
        compiled, state = runs[scan]
        n, started = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - started < seconds:
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics["loss"])
            n += 1
        ms[scan].append(1e3 * (time.perf_counter() - started) / n)
        runs[scan][1] = state
    return {"cell": cell, "T": T, "B": B, "H": H, "ms": ms, "compile_s": compile_s}


def run_worker(cores: int, args: argparse.Namespace, shape: dict) -> list[dict]:
    """One pinned process measuring every cell and shape; its JSON lines."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if cores == 1:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {XLA_ONE_THREAD}".strip()
    cpus = threads_cpus(cores)
    cmd = ["taskset", "-c", cpus] if cpus else []
    cmd += [sys.executable, __file__, "--worker", "--seconds", str(args.seconds)]
    cmd += ["--blocks", str(args.blocks), "--num-hiddens", str(shape["num_hiddens"])]
    cmd += ["--num-steps", *map(str, shape["num_steps"])]
    cmd += ["--batch-sizes", *map(str, shape["batch_sizes"]), "--cells", *args.cells]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def table(results: dict[int, list[dict]]) -> str:
    """ms/step (median block) of each scan and associative / sequential, per cell and shape,
    one column group per core count."""
    cores = sorted(results)
    head = "| cell | T | B | " + " | ".join(
        f"{c} core{'s' if c > 1 else ''}: sequential ms | associative ms | assoc / seq"
        for c in cores
    )
    lines = [head + " |", "|---|---:|---:|" + "---:|---:|---:|" * len(cores)]
    for i, first in enumerate(results[cores[0]]):
        row = f"| {first['cell']} | {first['T']} | {first['B']} |"
        for c in cores:
            med = {scan: statistics.median(v) for scan, v in results[c][i]["ms"].items()}
            ratio = med["associative"] / med["sequential"]
            ratio_text = f"**{ratio:.2f}**" if ratio < 1 else f"{ratio:.2f}"
            row += f" {med['sequential']:.2f} | {med['associative']:.2f} | {ratio_text} |"
        lines.append(row)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one small shape (T 16, B 2, H 16)")
    ap.add_argument("--seconds", type=float, default=0.5, help="least seconds of a block")
    ap.add_argument("--blocks", type=int, default=5, help="timed blocks of each scan")
    ap.add_argument("--cores", type=int, nargs="+", default=[1, 2], help="one worker each")
    ap.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    ap.add_argument("--out", type=Path, default=None, help="write results.md/json here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--num-steps", type=int, nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--batch-sizes", type=int, nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--num-hiddens", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        for cell in args.cells:
            for T in args.num_steps:
                for B in args.batch_sizes:
                    r = worker(cell, T, B, args.num_hiddens, args.seconds, args.blocks)
                    print(json.dumps(r), flush=True)
        return

    shape = QUICK if args.quick else FULL
    if args.quick:
        args.seconds, args.blocks = 0.05, 2
    started = time.perf_counter()
    results, loads = {}, []
    for cores in args.cores:
        loads.append(os.getloadavg()[0])
        results[cores] = run_worker(cores, args, shape)
    loads.append(os.getloadavg()[0])
    wall = time.perf_counter() - started
    text = "\n".join(
        [
            f"{datetime.date.today()}, CPU: {cpu_model()}, nproc {os.cpu_count()}; load average "
            f"(1 min) before each worker and at the end: {', '.join(f'{x:.1f}' for x in loads)}; "
            f"H {shape['num_hiddens']}, V {VOCAB}, Adam; {args.blocks} blocks of >= "
            f"{args.seconds:g} s per scan, the median; {wall:.0f} s in all",
            f"command: {shlex.join(['benchmarks/scan_modes.py', *sys.argv[1:]])}",
            "",
            table(results),
        ]
    )
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.md").write_text(text + "\n", "utf-8")
        raw = {"loads": loads, "wall_s": wall, "results": results}
        (args.out / "results.json").write_text(json.dumps(raw, indent=1) + "\n", "utf-8")


if __name__ == "__main__":
    main()
