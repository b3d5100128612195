"""The train step's gradient before and after a change to the recurrences, in one process.

    taskset -c 0 .venv/bin/python benchmarks/forward_mode.py --rounds 11   # ~4 min here
    taskset -c 0 .venv/bin/python benchmarks/forward_mode.py --baseline REV --cells gru

Measures milliseconds per ``jax.value_and_grad`` of the mean cross-entropy through
``model.apply`` (what ``step.train_step`` differentiates) for the rnn at H 512 and the GRU
and LSTM at H 256 (V 28, B 32, T 35). "before" is ``rnn_jax/cells.py`` and
``rnn_jax/model.py`` as they are at ``--baseline`` (default: e6ed034, the last commit with
``jax.custom_vjp`` recurrences), loaded from git into this process; "after" is the working
tree. The two are timed in alternating order, round after round, so that both see the
same machine; only their ratio within a round means anything on a busy machine.

Result here (``taskset -c 0 ... --rounds 11``, 4 minutes; the 2-core machine was shared,
load average 5-9, so the wall clock of the pinned core is about twice its CPU time and
the CPU time is the figure to read), before = e6ed034 (``jax.custom_vjp``), after = the
recurrences as ``custom_jvp`` with the VJP transposed (``cells.vjp_both_modes``):

    | workload   | CPU ms before | CPU ms after | after/before, median of 11 | spread      |
    |------------|---------------|--------------|----------------------------|-------------|
    | rnn H 512  | 23.72         | 23.73        | 0.998                      | 0.948-1.026 |
    | gru H 256  | 20.41         | 20.78        | 1.012                      | 0.975-1.065 |
    | lstm H 256 | 26.24         | 25.92        | 0.987                      | 0.969-1.043 |

The compiled gradients have the same matmuls, in and out of the same two loops. The GRU
is 1-2% slower (1.012, 1.016 and 1.023 in three runs), probably because its reverse
scan now reads its local derivatives (computed once before it: one more ``(T, B, H)``
stream and a pass to make them) instead of recomputing them from ``H_{t-1}``, ``Z``,
``R``, ``H~`` inside it; saving them from the forward scan instead measured no better.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

import rnn_jax
from rnn_jax import model
from rnn_jax.config import ModelConfig
from rnn_jax.loss import cross_entropy

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = (("rnn", 512), ("gru", 256), ("lstm", 256))
V, B, T = 28, 32, 35


def _module_at(rev: str, path: str, name: str) -> types.ModuleType:
    """The source of ``path`` at git revision ``rev``, imported as a module called ``name``."""
    source = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and typing resolve names through sys.modules
    exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
    return module


def baseline_model(rev: str) -> types.ModuleType:
    """``rnn_jax.model`` at ``rev``, bound to ``rnn_jax.cells`` at ``rev``."""
    old_cells = _module_at(rev, "rnn_jax/cells.py", "_baseline_cells")
    current = rnn_jax.cells
    rnn_jax.cells = old_cells  # what the old model's ``from rnn_jax import cells`` binds
    try:
        return _module_at(rev, "rnn_jax/model.py", "_baseline_model")
    finally:
        rnn_jax.cells = current


def gradient_fn(apply: Callable[..., Any], config: ModelConfig) -> Callable[..., Any]:
    """Jitted ``(params, X, Y, h0) -> ((loss, h_T), grads)``, as in ``step.train_step``."""

    def loss_fn(params: Any, X: jax.Array, Y: jax.Array, h0: Any) -> tuple[jax.Array, Any]:
        logits, h_T = apply(config, params, X, h0)
        return cross_entropy(logits, Y), h_T

    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))


def time_ms(fn: Callable[..., Any], args: tuple[Any, ...], n: int) -> tuple[float, float]:
    """Wall and CPU milliseconds per call of ``n`` calls dispatched back to back, waited
    for once. The CPU time (of this process's threads) does not count the time other
    processes take the pinned core from it, so on a busy machine it is the steadier."""
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready([fn(*args) for _ in range(n)])
    return 1e3 * (time.perf_counter() - t0) / n, 1e3 * (time.process_time() - c0) / n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="e6ed034", help="git revision of 'before'")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.5, help="timed seconds per sample")
    parser.add_argument("--cells", nargs="+", default=[c for c, _ in WORKLOADS])
    args = parser.parse_args(argv)
    variants = {"before": baseline_model(args.baseline), "after": model}
    rng = np.random.default_rng(0)
    X, Y = (rng.integers(0, V, (B, T), dtype=np.int32) for _ in range(2))
    print(f"jax {jax.__version__}, baseline {args.baseline}, {args.rounds} rounds")
    print("| workload | clock | before ms | after ms | after/before: median | spread |")
    print("|---|---|---|---|---|---|")
    for cell, H in (w for w in WORKLOADS if w[0] in args.cells):
        config = ModelConfig(V, H, cell=cell)
        params = model.init(config, jax.random.key(0))
        h0 = model.zero_state(config, B)
        fns = {k: gradient_fn(m.apply, config) for k, m in variants.items()}
        grads = {k: jax.block_until_ready(f(params, X, Y, h0)) for k, f in fns.items()}
        diff = max(
            float(np.abs(a - b).max())
            for a, b in zip(*(jax.tree.leaves(g) for g in grads.values()), strict=True)
        )
        assert diff < 1e-4, f"{cell}: before and after disagree by {diff}"
        per_call = time_ms(fns["after"], (params, X, Y, h0), 5)[0]
        n = max(3, round(args.seconds * 1e3 / per_call))
        samples: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
        for r in range(args.rounds):
            order = list(fns) if r % 2 == 0 else list(fns)[::-1]
            for k in order:
                samples[k].append(time_ms(fns[k], (params, X, Y, h0), n))
        for i, clock in enumerate(("wall", "cpu")):
            before = [s[i] for s in samples["before"]]
            after = [s[i] for s in samples["after"]]
            ratios = [a / b for a, b in zip(after, before, strict=True)]
            print(
                f"| {cell} H {H} | {clock} | {statistics.median(before):.3f} "
                f"| {statistics.median(after):.3f} | {statistics.median(ratios):.3f} "
                f"| {min(ratios):.3f}-{max(ratios):.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
