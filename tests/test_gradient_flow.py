"""``experiments/gradient_flow.py``: its ``--tiny`` run end to end, and its two measures
against direct computations (a Python loop, ``jax.grad`` and ``jax.jacrev``)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import model
from rnn_jax.config import ModelConfig

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "gradient_flow.py"
V, H, B, T = 5, 4, 2, 6


def _load():
    spec = importlib.util.spec_from_file_location("gradient_flow", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gradient_flow = _load()


def test_tiny_run_writes_finite_positive_results(tmp_path):
    gradient_flow.main(["--tiny", "--out", str(tmp_path)])
    assert (tmp_path / "gradient_flow.png").stat().st_size > 1000
    table = (tmp_path / "gradient_flow.md").read_text("utf-8")
    record = json.loads((tmp_path / "gradient_flow.json").read_text("utf-8"))
    assert len(record["curves"]) == 9  # 3 cells x (book init, large init, trained)
    for name, curves in record["curves"].items():
        assert name in table
        length = int(record["args"]["length"])
        assert len(curves["grad"]) == length + 1 and len(curves["jac"]) == length
        for value in curves["grad"] + curves["jac"]:
            assert math.isfinite(value) and value > 0, (name, value)
    assert set(record["training"]) == {"rnn", "gru", "lstm"}


def _inputs(cell: str, seed: int = 0):
    config = ModelConfig(V, H, cell=cell, sigma=0.7)
    params = model.init(config, jax.random.key(seed))
    tokens = np.random.default_rng(seed).integers(0, V, (B, T + 1), dtype=np.int32)
    return config, jax.tree.map(lambda x: np.asarray(x, np.float64), params), tokens


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_perturbation_gradients_equal_direct_grad_through_a_loop(cell):
    """``||dL_T/dh_t||`` from the zero perturbations == ``jax.grad`` of a Python loop that
    restarts at step t from ``h_t`` (the LSTM's ``C_t`` held), for every t."""
    config, params, tokens = _inputs(cell)
    step = model.cell_of(config).step
    X = np.eye(V)[tokens[:, :-1].T]  # (T, B, V)

    def loss_from(t, h_t, c_t):
        state = h_t if cell != "lstm" else (h_t, c_t)
        for s in range(t, T):
            state, _ = step(params["layer_0"], state, X[s])
        h_T = state[0] if cell == "lstm" else state
        logits = h_T @ params["W_hq"] + params["b_q"]
        return -jax.nn.log_softmax(logits)[np.arange(B), tokens[:, -1]].sum()

    with jax.enable_x64(True):
        got = np.asarray(gradient_flow._gradient_norms(config, params, tokens))
        state = model.cell_of(config).init_state(B, H, jnp.float64)
        want = []
        for t in range(T + 1):
            h_t, c_t = state if cell == "lstm" else (state, None)
            grad = jax.grad(loss_from, argnums=1)(t, h_t, c_t)
            want.append(np.linalg.norm(np.asarray(grad), axis=-1).mean())
            if t < T:
                state, _ = step(params["layer_0"], state, X[t])
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert got[-1] > 0 and got[0] > 0


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_jacobian_norms_equal_reverse_mode_through_a_loop(cell):
    """``||dh_t/dh_0||_2`` by ``jacfwd`` of the fast recurrence == by ``jax.jacrev`` of a
    Python loop of the book's step."""
    config, params, tokens = _inputs(cell, seed=1)
    step = model.cell_of(config).step
    X = np.eye(V)[tokens[0, :-1]][:, None]  # (T, 1, V)

    def hiddens(h0):
        state = (h0, jnp.zeros_like(h0)) if cell == "lstm" else h0
        out = []
        for t in range(T):
            state, h = step(params["layer_0"], state, X[t])
            out.append(h[0])
        return jnp.stack(out)  # (T, H)

    with jax.enable_x64(True):
        got = np.asarray(gradient_flow._jacobian_norms(config, params, tokens[0, :-1]))
        J = np.asarray(jax.jacrev(hiddens)(jnp.zeros((1, H))))[:, :, 0, :]  # (T, H, H)
    np.testing.assert_allclose(got, np.linalg.norm(J, ord=2, axis=(1, 2)), rtol=1e-10)
