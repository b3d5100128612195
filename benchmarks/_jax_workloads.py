"""The rnn_jax side of ``bench.py``: each function measures one workload in this (fresh)
process and returns a dict that ``bench.py --worker`` prints as one JSON line.

Everything goes through the library's public functions (``step.make_train_step``,
``step.make_evaluate``, ``sample.greedy``, ``loop.fit``); nothing here re-implements the
model. Timings are warm: the first call (compilation) is made and timed apart, then a
calibrated number of calls is dispatched back to back and waited for once with
``jax.block_until_ready``, as a training loop that never reads the host would run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import input_pipeline, loop, model, run_folder, sample, step
from rnn_jax.config import ModelConfig, TrainConfig

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "XLA_FLAGS")


def info() -> dict[str, Any]:
    """Versions, device and thread conditions of this worker process."""
    return {
        **run_folder.run_info(),
        "numpy": np.__version__,
        "affinity": len(os.sched_getaffinity(0)),
        "env": {k: os.environ.get(k) for k in THREAD_ENV if k in os.environ},
    }


def _first_and_warm(run: Callable[[int], Any]) -> tuple[float, float]:
    """Seconds of the first call of ``run`` (tracing and compiling included) and of the next."""
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        jax.block_until_ready(run(1))
        times.append(time.perf_counter() - t0)
    return times[0], times[1]


def _rate(run: Callable[[int], Any], units_per_call: float, seconds: float) -> float:
    """Units/s of ``run(n)`` (which dispatches ``n`` calls and returns what to wait for).

    One warm call, then doubling ``n`` until a chunk takes ``seconds / 8``, then one timed
    chunk sized to last about ``seconds``, waited for once at its end.
    """
    jax.block_until_ready(run(1))
    n, dt = 1, 0.0
    while True:
        t0 = time.perf_counter()
        jax.block_until_ready(run(n))
        dt = time.perf_counter() - t0
        if dt >= seconds / 8:
            break
        n *= 2
    n = max(1, round(n * seconds / dt))
    t0 = time.perf_counter()
    jax.block_until_ready(run(n))
    return n * units_per_call / (time.perf_counter() - t0)


def _book_data(batch_size: int = 32) -> tuple[input_pipeline.Dataset, TrainConfig]:
    config = TrainConfig(batch_size=batch_size)
    return input_pipeline.load_dataset(config), config


def train(cell: str, num_hiddens: int, seconds: float, compile_times: bool) -> dict[str, Any]:
    """Tokens/s of the jitted, state-donating train step on the epoch-0 sequential batches."""
    dataset, config = _book_data()
    model_config = ModelConfig(dataset.vocab_size, num_hiddens, cell=cell)
    optimizer = step.make_optimizer(config)
    state = step.init_train_state(model_config, optimizer, config.batch_size, jax.random.key(0))
    Xs, Ys = input_pipeline.train_plan(dataset, config, 0).materialise()
    batches = [(jax.device_put(x), jax.device_put(y)) for x, y in zip(Xs, Ys, strict=True)]
    train_step = step.make_train_step(model_config, optimizer, carry_hidden=True)
    holder = {"state": state, "k": 0}

    def run(n: int) -> Any:
        for _ in range(n):
            holder["state"], _ = train_step(holder["state"], batches[holder["k"] % len(batches)])
            holder["k"] += 1
        return holder["state"]

    out: dict[str, Any] = {}
    first, warm = _first_and_warm(run)
    out["tokens_per_s"] = _rate(run, Xs[0].size, seconds)
    leaves = jax.tree.leaves(holder["state"].params)
    out["params_finite"] = all(bool(jnp.isfinite(leaf).all()) for leaf in leaves)
    if compile_times:
        jax.clear_caches()
        fresh = step.make_train_step(model_config, optimizer, carry_hidden=True)
        t0 = time.perf_counter()
        lowered = fresh.lower(holder["state"], batches[0])
        t1 = time.perf_counter()
        lowered.compile()
        t2 = time.perf_counter()
        out.update(first_call_s=first, warm_call_s=warm, compile_s=first - warm)
        out.update(aot_lower_s=t1 - t0, aot_compile_s=t2 - t1)
    return out


def evaluate(num_hiddens: int, seconds: float) -> dict[str, Any]:
    """Tokens/s of ``make_evaluate`` (forward + summed NLL) over the epoch's K minibatches."""
    dataset, config = _book_data()
    model_config = ModelConfig(dataset.vocab_size, num_hiddens)
    params = model.init(model_config, jax.random.key(0))
    Xs, Ys = (jnp.asarray(a) for a in input_pipeline.train_plan(dataset, config, 0).materialise())
    evaluate_fn = step.make_evaluate(model_config)

    def run(n: int) -> Any:
        return [evaluate_fn(params, Xs, Ys) for _ in range(n)]

    return {"tokens_per_s": _rate(run, Xs.size, seconds), "num_batches": int(Xs.shape[0])}


def generate(
    num_hiddens: int,
    batch_size: int,
    num_chars: int,
    prefix: str,
    seconds: float,
    compile_times: bool,
) -> dict[str, Any]:
    """Chars/s of ``sample.greedy``: ``batch_size * num_chars`` generated chars per call
    (the prefix is not counted, as in the peer; its warm-up is inside the timed call)."""
    dataset, _ = _book_data()
    model_config = ModelConfig(dataset.vocab_size, num_hiddens)
    params = model.init(model_config, jax.random.key(0))
    encoded = sample.encode_prefixes([prefix] * batch_size, dataset.vocab, dataset.token)
    prefixes = jnp.asarray(encoded)

    def run(n: int) -> Any:
        return [sample.greedy(model_config, params, prefixes, num_chars) for _ in range(n)]

    out: dict[str, Any] = {}
    first, warm = _first_and_warm(run)
    out["chars_per_s"] = _rate(run, batch_size * num_chars, seconds)
    if compile_times:
        jax.clear_caches()
        t0 = time.perf_counter()
        lowered = sample.greedy.lower(model_config, params, prefixes, num_chars)
        t1 = time.perf_counter()
        lowered.compile()
        t2 = time.perf_counter()
        out.update(first_call_s=first, warm_call_s=warm, compile_s=first - warm)
        out.update(aot_lower_s=t1 - t0, aot_compile_s=t2 - t1)
    return out


def matmul(shapes: list[tuple[int, int, int]], seconds: float) -> dict[str, Any]:
    """GFLOP/s of a chain ``x <- x @ W`` of float32 ``(m, k) @ (k, k)`` products, in JAX
    and in NumPy (its BLAS), for each shape."""
    out: dict[str, Any] = {}
    for m, k, n in shapes:
        assert k == n, "a chain needs a square W"
        out[f"jax_{m}x{k}x{n}_gflops"], out[f"numpy_{m}x{k}x{n}_gflops"] = _chain(m, k, seconds)
    return out


def _chain(m: int, k: int, seconds: float) -> tuple[float, float]:
    """Each product waits for the last, like the recurrence; the JAX chain is one jitted
    ``fori_loop`` so per-call dispatch does not count; ``W`` is orthogonal so the values
    neither blow up nor go denormal."""
    rng = np.random.default_rng(0)
    W = np.linalg.qr(rng.standard_normal((k, k)))[0].astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    flops = 2 * m * k * k
    iters = max(1, int(2e9 // flops))  # about 2 GFLOP per call
    chain = jax.jit(lambda x, W: jax.lax.fori_loop(0, iters, lambda _, x: x @ W, x))
    xj, Wj = jnp.asarray(x), jnp.asarray(W)
    jax_rate = _rate(lambda r: [chain(xj, Wj) for _ in range(r)], flops * iters, seconds / 2)

    def numpy_chain(calls: int) -> None:
        y = x
        for _ in range(calls * iters):
            y = y @ W

    numpy_chain(1)
    t0 = time.perf_counter()
    numpy_chain(1)
    calls = max(1, round(seconds / 2 / (time.perf_counter() - t0)))
    t0 = time.perf_counter()
    numpy_chain(calls)
    numpy_rate = calls * flops * iters / (time.perf_counter() - t0)
    return jax_rate / 1e9, numpy_rate / 1e9


def e2e(epochs: int) -> dict[str, Any]:
    """Wall time of the book's run: ``loop.fit`` as ``experiments/book_rnn.py`` calls it."""
    config = TrainConfig(num_epochs=epochs)
    t0 = time.perf_counter()
    dataset = input_pipeline.load_dataset(config)
    model_config = ModelConfig(dataset.vocab_size, 512)
    result = loop.fit(model_config, config, dataset, echo=lambda _: None, progress=False)
    wall = time.perf_counter() - t0
    last = result.history[-1]
    K = input_pipeline.batches_per_epoch(len(dataset.train), config.batch_size, config.num_steps)
    tokens = epochs * K * config.batch_size * config.num_steps
    train_s = sum(r["wall_s"] for r in result.history)
    prediction = sample.predict(
        "time traveller", 50, model_config, result.state.params, dataset.vocab
    )
    return {
        "wall_s": wall,
        "train_loop_s": train_s,
        "compile_s": result.compile_s,
        "tokens_per_s": tokens / wall,
        "perplexity": last["train_ppl"],
        "val_perplexity": last["val_ppl"],
        "epochs": epochs,
        "sample": prediction,
    }
