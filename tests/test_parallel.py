"""Data parallelism on a mesh, the checks of its inputs, and bfloat16 compute.

A mesh of N devices must train as one device does, to float32 rounding: the mean over B
is summed per device, then across devices, in another order than on one device, so the
numbers are not bitwise equal. After 3 epochs (66 SGD steps, lr 1) of the tiny models the
losses agree to ``LOSS_RTOL`` and the parameters to ``PARAM_ATOL`` (their weights are
~0.01-1; the largest gaps seen are 6e-7 relative in the losses, 2.4e-7 in the
parameters).

Each device count runs in a subprocess (``JAX_NUM_CPU_DEVICES``): this file is also the
script the subprocesses run (``python tests/test_parallel.py MODE ...``). Two processes
training as one, and a coordinator that does not answer, run through the command line
in ``tests/test_devices_cli.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import input_pipeline, model, parallel, sample, step
from rnn_jax.config import LINEAR_CELLS, ModelConfig, TrainConfig
from tests.import_effect import last_words

ROOT = Path(__file__).resolve().parent.parent
TRAIN = TrainConfig(
    max_tokens=2000, batch_size=8, num_steps=10, num_epochs=3, seed=0, sample_every=0
)
MODELS = {  # name -> (cell, num_layers)
    "rnn": ("rnn", 1),
    "gru": ("gru", 1),
    "lstm": ("lstm", 1),  # bfloat16 (on a mesh, the stack holds the same cell)
    "lstm2": ("lstm", 2),
    "minlstm": ("minlstm", 1),  # with the associative scan over time
}
MESH_MODELS = ("rnn", "gru", "lstm2", "minlstm")
GATHER_MODELS = ("rnn", "gru", "lstm2")
LOSS_RTOL = 1e-5
PARAM_ATOL = 1e-5


def _model_config(
    dataset: input_pipeline.Dataset, name: str, dtype: str = "float32"
) -> ModelConfig:
    cell, layers = MODELS[name]
    return ModelConfig(
        vocab_size=dataset.vocab_size,
        num_hiddens=16,
        cell=cell,
        num_layers=layers,
        compute_dtype=dtype,
        scan="associative" if cell in LINEAR_CELLS else "sequential",
    )


def _train(
    model_config: ModelConfig,
    config: TrainConfig,
    dataset: input_pipeline.Dataset,
    mesh=None,
    state: step.TrainState | None = None,
    programs: list[str] | None = None,
) -> tuple[list[float], step.TrainState]:
    """``config.num_epochs`` epochs as ``loop.fit`` runs them, on ``mesh`` or one device,
    from a copy of ``state`` (or a fresh one): the loss of every step and the final state.
    ``programs`` gets the compiled step's text (from JAX's cache: no second compile)."""
    optimizer = step.make_optimizer(config)
    if state is None:
        key = jax.random.key(config.seed)
        state = step.init_train_state(model_config, optimizer, config.batch_size, key, mesh)
    else:
        state = jax.tree.map(jnp.copy, state)  # the step donates it
        if mesh is not None:
            state = parallel.shard_state(state, mesh)
    train_step = step.make_train_step(
        model_config, optimizer, config.partition == "sequential", mesh
    )
    B = config.batch_size
    start, stop = (0, B) if mesh is None else parallel.process_rows(B, mesh)
    losses = []
    for epoch in range(config.num_epochs):
        Xs, Ys = input_pipeline.train_plan(dataset, config, epoch).materialise()
        state = state.replace(hidden=parallel.zero_hidden(model_config, B, mesh))
        for k in range(len(Xs)):
            X, Y = Xs[k, start:stop], Ys[k, start:stop]
            batch = (X, Y) if mesh is None else parallel.put_batch(X, Y, mesh)
            state, metrics = train_step(state, batch)
            losses.append(metrics["loss"])
            if mesh is not None:
                # Simulated CPU devices share one thread pool: with 8 of them on 2 cores,
                # two steps in flight can starve a collective's rendezvous (XLA aborts).
                jax.block_until_ready(metrics)
    if programs is not None:
        programs.append(train_step.lower(state, batch).compile().as_text())
    return [float(x) for x in jax.device_get(losses)], state


def _evaluate(model_config, config, dataset, params, mesh=None) -> float:
    from rnn_jax import input_pipeline

    Xs, Ys = input_pipeline.eval_batches(dataset.val, config.batch_size, config.num_steps)
    if mesh is not None:
        Xs, Ys = parallel.put_eval_batches(Xs, Ys, mesh)
    nll, count = step.make_evaluate(model_config, mesh)(params, Xs, Ys)
    return float(nll) / int(count)


def _flat(state: step.TrainState) -> dict[str, np.ndarray]:
    """Params and hidden state by path, gathered to the host."""
    leaves = jax.tree_util.tree_leaves_with_path((state.params, state.hidden))
    return {jax.tree_util.keystr(p): np.asarray(jax.device_get(x)) for p, x in leaves}


def _run(mode: str, *args: str, devices: int = 1, timeout: int = 300) -> dict:
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices), "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, __file__, mode, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ subprocess bodies


def child_meshes() -> dict:
    """On 8 devices: the RNN, GRU, 2-layer LSTM and minLSTM (sequential; the LSTM random
    too) on 8 devices, and the 2-layer LSTM on 1 and 2 as well, against the one-device
    step; the validation loss; ``init_train_state`` on a mesh; a batch that does not
    divide; the all-gathers in the 8-device steps."""
    dataset = input_pipeline.load_dataset(TRAIN)
    gaps: dict[str, float] = {"loss": 0.0, "param": 0.0, "eval": 0.0}
    programs: dict[str, list[str]] = {}
    for name in MESH_MODELS:
        model_config = _model_config(dataset, name)
        optimizer = step.make_optimizer(TRAIN)
        init = step.init_train_state(model_config, optimizer, TRAIN.batch_size, jax.random.key(0))
        if name == "lstm2":
            on_mesh = step.init_train_state(
                model_config, optimizer, TRAIN.batch_size, jax.random.key(0), parallel.make_mesh()
            )
            for a, b in zip(_flat(init).values(), _flat(on_mesh).values(), strict=True):
                np.testing.assert_allclose(b, a, rtol=1e-6)  # jit fuses the normal's erf_inv
        # The partition changes only the initial state (carried or zeros), not the cell.
        for partition in ("sequential", "random") if name == "lstm2" else ("sequential",):
            config = dataclasses.replace(TRAIN, partition=partition)
            ref_losses, ref_state = _train(model_config, config, dataset, state=init)
            ref = _flat(ref_state)
            ref_eval = _evaluate(model_config, config, dataset, ref_state.params)
            sizes = (1, 2, 8) if name == "lstm2" and partition == "sequential" else (8,)
            for n in sizes:
                mesh = parallel.make_mesh(n)
                text = programs.setdefault(name, []) if partition == "sequential" else None
                losses, state = _train(model_config, config, dataset, mesh, init, text)
                for leaf in jax.tree.leaves(state.hidden):
                    assert leaf.sharding.spec == parallel.data_sharding(mesh).spec, leaf.sharding
                for leaf in jax.tree.leaves(state.params):
                    assert leaf.sharding.is_fully_replicated
                np.testing.assert_allclose(losses, ref_losses, rtol=LOSS_RTOL, err_msg=name)
                rel = np.abs(np.subtract(losses, ref_losses)) / np.abs(ref_losses)
                gaps["loss"] = max(gaps["loss"], float(rel.max()))
                got = _flat(state)
                for path, value in ref.items():
                    np.testing.assert_allclose(got[path], value, atol=PARAM_ATOL, err_msg=path)
                    gaps["param"] = max(gaps["param"], float(np.abs(got[path] - value).max()))
                if partition == "sequential":
                    val = _evaluate(model_config, config, dataset, state.params, mesh)
                    assert abs(val - ref_eval) <= LOSS_RTOL * ref_eval, (name, n, val, ref_eval)
                    gaps["eval"] = max(gaps["eval"], abs(val - ref_eval) / ref_eval)
    with pytest.raises(ValueError) as err:
        parallel.check_batch(32, parallel.make_mesh(3))
    # The all-gathers in the train step on 8 devices of each cell that calls
    # ``cells._sum_outer`` (the LSTM in a stack): each device should sum its own rows'
    # weight gradients, not gather every row's ``(T, B, .)`` activations and gradients to
    # compute the whole sum (2 all-gathers for the RNN, 4 for the GRU and the stack, before).
    gathers = {name: programs[name][-1].count(" all-gather(") for name in GATHER_MODELS}
    return {"gaps": gaps, "errors": [str(err.value)], "gathers": gathers}


# ------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def dataset() -> input_pipeline.Dataset:
    return input_pipeline.load_dataset(TRAIN)


def test_meshes_of_1_2_8_devices_train_as_one_device():
    result = _run("meshes", devices=8, timeout=400)
    print("largest gaps to one device:", result["gaps"])
    assert result["errors"] == ["batch size 32 does not divide by the 3 devices"]
    assert result["gathers"] == dict.fromkeys(GATHER_MODELS, 0)


def test_bfloat16_tracks_float32(dataset):
    config = dataclasses.replace(TRAIN, num_epochs=2)
    curves = {}
    for dtype in ("float32", "bfloat16"):
        model_config = _model_config(dataset, "lstm", dtype)
        losses, state = _train(model_config, config, dataset)
        K = len(losses) // config.num_epochs
        curves[dtype] = np.mean(np.reshape(losses, (config.num_epochs, K)), axis=1)
        leaves = jax.tree.leaves((state.params, state.opt_state, state.hidden))
        assert {x.dtype for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)} == {
            jnp.dtype(jnp.float32)
        }
    np.testing.assert_allclose(curves["bfloat16"], curves["float32"], rtol=0.02)
    text = sample.predict("time ", 10, model_config, state.params, dataset.vocab)
    assert text.startswith("time ") and len(text) == 15
    assert np.isfinite(_evaluate(model_config, config, dataset, state.params))


def test_bfloat16_runs_the_cells_in_bfloat16(dataset):
    model_config = _model_config(dataset, "gru", "bfloat16")
    params = model.init(model_config, jax.random.key(0))
    tokens = jnp.zeros((2, 3), jnp.int32)

    def loss(params):
        logits, h = model.apply(model_config, params, tokens, model.zero_state(model_config, 2))
        assert logits.dtype == jnp.float32 and h.dtype == jnp.float32
        return logits.sum()

    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
    assert "dot_general" in jaxpr and "bf16[3,2,48]" in jaxpr  # the projected inputs (T, B, 3H)
    grads = jax.grad(loss)(params)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))


def test_bad_meshes_and_addresses():
    with pytest.raises(ValueError, match="positive integer, got 0"):
        parallel.make_mesh(0)
    n = jax.device_count() + 1
    with pytest.raises(ValueError, match=f"asked for {n} devices, {n - 1} exist"):
        parallel.make_mesh(n)
    with pytest.raises(ValueError, match=r"process_id must be in \[0, 2\), got 2"):
        parallel.initialize_distributed("127.0.0.1:1234", 2, 2)
    for address in ("localhost", "127.0.0.1:", "127.0.0.1:99999", "a b:12"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parallel.initialize_distributed(address, 2, 0)
    with pytest.raises(ValueError, match="together"):
        parallel.initialize_distributed("127.0.0.1:1234")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_simulated_devices_get_two_cpu_threads_each():
    """``import rnn_jax`` before JAX starts raises XLA's CPU pool from 4 threads (one per
    simulated device, which deadlocked in collectives) to 8 (``NPROC``)."""
    count = (
        "import os, jax\n"
        "jax.jit(lambda x: x + 1)(1.0).block_until_ready()\n"
        "d = '/proc/self/task'\n"
        "names = [open(f'{d}/{t}/comm').read() for t in os.listdir(d)]\n"
        "print(sum(name.startswith('tf_XLAEigen') for name in names))\n"
    )
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "4"}
    for key in ("XLA_FLAGS", "NPROC"):
        env.pop(key, None)
    threads = last_words(count, env)
    assert int(threads["rnn_jax"]) >= 8
    if len(os.sched_getaffinity(0)) < 8:
        assert int(threads["alone"]) < 8  # XLA's own size: max(cores, devices)


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    body = {"meshes": child_meshes}
    print(json.dumps(body[mode](*rest)))
