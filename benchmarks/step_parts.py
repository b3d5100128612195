"""Where an LSTM train step's time goes on a CPU, and what a step over 64 MB pays for
XLA's asynchronous dispatch (issue 17).

    taskset -c 0 .venv/bin/python benchmarks/step_parts.py parts             # ~1 min here
    .venv/bin/python benchmarks/step_parts.py dispatch --cpu 0 --rounds 3   # ~2 min here
    .venv/bin/python benchmarks/step_parts.py dispatch --cpu 0,1 --cell rnn --hiddens 512 --steps 35

``parts``: the one-layer LSTM's pieces, each jitted alone on random data (B 32, H
``--hiddens``, T ``--steps``; the best of 9 timings of 50 calls): the three matmuls of a
time step inside a ``lax.scan`` of T (``h W_h``, ``dA W_h^T``, and the weight gradient's
``(H, T B) @ (T B, 4H)`` divided by T), the forward recurrence (``cells._lstm_fwd``, with
and without the residuals it saves), the reverse one (``cells._lstm_bwd``, with and
without its weight gradient), and the whole train step on the book's data (V 28, SGD).
It prints each in ms and what is left of the step once the three matmuls are taken out.

``dispatch``: the same train step (``--cell``), in fresh processes, with JAX's CPU client
asynchronous (its default: a step runs on the client's own thread) and synchronous
(``jax.config.update("jax_cpu_enable_async_dispatch", False)``: on the calling thread),
alternating: tokens/s (the best of 4 timings of 10 steps), the step's temporaries
(``memory_analysis``) and the minor page faults per step. glibc gives a thread other
than the main one heaps of at most 64 MB, and maps a larger block afresh every time; the
main thread's heap keeps it (``rnn_jax/__init__.py``). Every process runs pinned to
``--cpu`` (``taskset``). ``parts`` runs where it is started: pin it with ``taskset``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _best_ms(f, *args, calls: int = 50, timings: int = 9) -> float:
    """``f(*args)`` jitted: the best of ``timings`` timings of ``calls`` calls, in ms."""
    import jax

    jitted = jax.jit(f)
    return _time_steps(lambda _: jitted(*args), calls, timings) * 1e3


def _book_step(cell: str, num_hiddens: int, num_steps: int):
    """The jitted train step of ``cell`` on the book's data (V 28, B 32, SGD at lr 1), its
    first minibatch and the tokens it holds."""
    import dataclasses

    import jax

    sys.path.insert(0, str(HERE))
    import _jax_workloads

    from rnn_jax import input_pipeline, step
    from rnn_jax.config import ModelConfig

    dataset, config = _jax_workloads._book_data()
    config = dataclasses.replace(config, num_steps=num_steps)
    model_config = ModelConfig(dataset.vocab_size, num_hiddens, cell=cell)
    optimizer = step.make_optimizer(config)
    state = step.init_train_state(model_config, optimizer, config.batch_size, jax.random.key(0))
    Xs, Ys = input_pipeline.train_plan(dataset, config, 0).materialise()
    batch = (jax.device_put(Xs[0]), jax.device_put(Ys[0]))
    train_step = step.make_train_step(model_config, optimizer, carry_hidden=True)
    return train_step, state, batch, Xs[0].size


def parts(args: argparse.Namespace) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rnn_jax import cells

    T, B, H = args.steps, 32, args.hiddens
    rng = np.random.default_rng(0)
    W_h = jnp.asarray(rng.standard_normal((H, 4 * H), np.float32) * H**-0.5)
    XW = jnp.asarray(rng.standard_normal((T, B, 4 * H), np.float32))
    state = (jnp.zeros((B, H)), jnp.zeros((B, H)))
    (Hs, _), residuals = jax.jit(cells._lstm_fwd)(W_h, XW, state)
    cotangents = (jnp.ones_like(Hs), state)
    dA = jnp.asarray(rng.standard_normal((T, B, 4 * H), np.float32))

    def scan_of(matmul):  # T dependent products, as the recurrences run them
        def f(W, xs):
            return jax.lax.scan(lambda h, x: (matmul(h, W) + x, None), xs[0], xs)[0]

        return f

    W_h_T = jnp.asarray(np.asarray(W_h).T.copy())
    rows = {
        "h W_h, T steps": _best_ms(scan_of(lambda h, W: (h @ W)[:, :H]), W_h, XW[..., :H]),
        "dA W_h^T, T steps": _best_ms(scan_of(lambda d, W: jnp.tile(d @ W, 4)), W_h_T, XW),
        "weight gradient": _best_ms(cells._sum_outer, Hs, dA),
    }
    matmuls = sum(rows.values())
    rows["forward (cells._lstm_fwd)"] = _best_ms(cells._lstm_fwd, W_h, XW, state)
    rows["forward, outputs only"] = _best_ms(lambda *a: cells._lstm_fwd(*a)[0], W_h, XW, state)
    rows["reverse (cells._lstm_bwd)"] = _best_ms(cells._lstm_bwd, residuals, cotangents)
    rows["reverse, no weight gradient"] = _best_ms(
        lambda r, c: cells._lstm_bwd(r, c)[1:], residuals, cotangents
    )
    train_step, state, batch, tokens = _book_step("lstm", H, T)
    holder = {"state": state}

    def run_step(_):
        holder["state"], metrics = train_step(holder["state"], batch)
        return metrics

    rows["train step (book data, V 28)"] = _time_steps(run_step, 50, 9) * 1e3
    flops = 3 * 2 * T * B * H * 4 * H
    print(f"LSTM H {H}, T {T}, B 32, one layer; CPUs {sorted(os.sched_getaffinity(0))}\n")
    print("| part | ms |")
    print("|---|---:|")
    for name, ms in rows.items():
        print(f"| {name} | {ms:.2f} |")
    step_ms = rows["train step (book data, V 28)"]
    print(
        f"\nthe three matmuls: {matmuls:.2f} ms ({flops / matmuls / 1e6:.0f} GFLOP/s); the rest "
        f"of the step: {step_ms - matmuls:.2f} ms; the step: {tokens / step_ms * 1e3:,.0f} tokens/s"
    )


def _time_steps(run, calls: int, timings: int) -> float:
    """Seconds a call of ``run(i)``: the best of ``timings`` timings of ``calls`` calls,
    after one untimed call."""
    import jax

    jax.block_until_ready(run(0))
    best = float("inf")
    for _ in range(timings):
        started = time.perf_counter()
        for i in range(calls):
            out = run(i)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - started) / calls)
    return best


def dispatch_worker(args: argparse.Namespace) -> None:
    import resource

    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", args.mode == "async")
    train_step, state, batch, tokens = _book_step(args.cell, args.hiddens, args.steps)
    compiled = train_step.lower(state, batch).compile()
    holder = {"state": state}

    def run(_):
        holder["state"], metrics = compiled(holder["state"], batch)
        return metrics

    _time_steps(run, 3, 1)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = _time_steps(run, 10, 4)  # 41 steps
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 41
    temp = compiled.memory_analysis().temp_size_in_bytes
    print(json.dumps({"tokens_per_s": tokens / seconds, "faults": faults, "temp": temp}))


def dispatch(args: argparse.Namespace) -> None:
    results: dict[str, list[dict]] = {"async": [], "sync": []}
    for r in range(args.rounds):
        for mode in ("async", "sync") if r % 2 == 0 else ("sync", "async"):
            command = [sys.executable, __file__, "dispatch-worker", "--mode", mode]
            command += ["--cell", args.cell, "--hiddens", str(args.hiddens)]
            command += ["--steps", str(args.steps)]
            pin = ["taskset", "-c", args.cpu] if args.cpu else []
            out = subprocess.run([*pin, *command], capture_output=True, text=True, check=True)
            results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    cores = args.cpu or "all"
    print(f"{args.cell} H {args.hiddens}, T {args.steps}, B 32, V 28, SGD; CPUs {cores}\n")
    print("| dispatch | tokens/s (median, range) | temporaries | page faults a step |")
    print("|---|---:|---:|---:|")
    for mode, rows in results.items():
        rates = [row["tokens_per_s"] for row in rows]
        faults = statistics.median(row["faults"] for row in rows)
        print(
            f"| {mode} | {statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) "
            f"| {rows[0]['temp'] / 2**20:.0f} MB | {faults:,.0f} |"
        )
    ratios = [s["tokens_per_s"] / a["tokens_per_s"] for a, s in zip(*results.values(), strict=True)]
    print(f"\nsync / async per round: {', '.join(f'{x:.2f}' for x in ratios)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("parts", "dispatch", "dispatch-worker"))
    parser.add_argument("--cell", default="lstm", choices=("rnn", "gru", "lstm"))
    parser.add_argument("--hiddens", type=int, help="H (parts: 256; dispatch: 512)")
    parser.add_argument("--steps", type=int, help="T (parts: 35; dispatch: 64)")
    parser.add_argument("--rounds", type=int, default=3, help="dispatch: alternations")
    parser.add_argument("--cpu", default="", help="dispatch: taskset CPU list (0, or 0,1)")
    parser.add_argument("--mode", choices=("async", "sync"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    parts_run = args.what == "parts"
    args.hiddens = args.hiddens or (256 if parts_run else 512)
    args.steps = args.steps or (35 if parts_run else 64)
    {"parts": parts, "dispatch": dispatch, "dispatch-worker": dispatch_worker}[args.what](args)


if __name__ == "__main__":
    main()
