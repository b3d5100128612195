"""The cells linear in their state (minGRU, minLSTM, LRU) against references written here.

Each cell's one-step function against the papers' equations in float64 NumPy; the
sequential scan against a Python loop of that step (outputs, final state, gradients) and
float64 finite differences; the associative scan against the sequential one (float32
round-off), with and without a carried state, on odd lengths; the LRU without phases
against a real diagonal recurrence written by hand; the model under every
transformation; the sampler against teacher forcing; and the CLI's whole life of a run.
"""

from __future__ import annotations

import dataclasses
import json
import math
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import cells, checkpoint, cli, input_pipeline, linear_cells, model, sample, sweep
from rnn_jax.config import CELLS, LINEAR_CELLS, ModelConfig, TrainConfig
from tests.test_cells import _all_derivatives, _close, _normal_like
from tests.test_cli import TINY, leaves_digest

B, T, D, H = 3, 7, 4, 6
SCANS = ("sequential", "associative")


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _g(x):
    return np.where(x >= 0, x + 0.5, _sigmoid(x))


def _gelu(x):  # jax.nn.gelu's default, the tanh approximation
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def numpy_step(name, p, state, X):
    """The papers' equations in float64 NumPy: Feng et al. 2024 (minGRU eq. 2-3, minLSTM
    with normalised gates), Orvieto et al. 2023 (the LRU, with this package's GELU output)."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    if name == "mingru":
        Z = _sigmoid(X @ p["W_xz"] + p["b_z"])
        H_ = (1 - Z) * state + Z * _g(X @ p["W_xh"] + p["b_h"])
        return H_, H_
    if name == "minlstm":
        F = _sigmoid(X @ p["W_xf"] + p["b_f"])
        I = _sigmoid(X @ p["W_xi"] + p["b_i"])
        H_ = F / (F + I) * state + I / (F + I) * _g(X @ p["W_xh"] + p["b_h"])
        return H_, H_
    lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
    S = state[0] + 1j * state[1]
    BX = X @ (p["W_xre"] + 1j * p["W_xim"]) + p["b_re"] + 1j * p["b_im"]
    S = lam * S + np.exp(p["gamma_log"]) * BX
    H_ = _gelu((S @ (p["C_re"] + 1j * p["C_im"])).real + X @ p["W_xd"] + p["b_d"])
    return (S.real, S.imag), H_


def _inputs(cell, seed, dtype=np.float32, length=T, carried=True):
    """Random params, a state (positive, as a min-cell's always is; zeros if not
    ``carried``) and inputs ``(length, B, D)``."""
    params = jax.eval_shape(lambda key: cell.init(key, D, H), jax.random.key(0))
    state = jax.eval_shape(partial(cell.init_state, B, H))
    X = jax.ShapeDtypeStruct((length, B, D), jnp.float32)
    params, state, X = _normal_like((params, state, X), seed, dtype=dtype)
    state = jax.tree.map(np.abs if carried else np.zeros_like, state)
    return params, state, X


def _loop(cell, params, X, state):
    outputs = []
    for t in range(X.shape[0]):
        state, out = cell.step(params, state, X[t])
        outputs.append(out)
    return jnp.stack(outputs), state


@pytest.mark.parametrize("name", LINEAR_CELLS)
def test_step_matches_the_papers_equations(name):
    cell = cells.get(name)
    params, state, X = _inputs(cell, seed=0)
    got_state, got_out = jax.jit(cell.step)(params, state, X[0])
    np_state = jax.tree.map(lambda x: np.asarray(x, np.float64), state)
    want_state, want_out = numpy_step(name, params, np_state, X[0].astype(float))
    _close((got_out, got_state), (want_out, want_state))


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("name", LINEAR_CELLS)
def test_scans_equal_a_loop_of_the_step_and_finite_differences_float64(name, scan):
    """Each scan (its forward and its autodiff) against a Python loop of the one-step
    function, and its gradients against central finite differences, in float64."""
    cell = cells.get(name, scan=scan)
    with jax.enable_x64(True):
        args = _inputs(cell, seed=1, dtype=np.float64)
        args = (args[0], args[2], args[1])  # (params, X, state)
        weights = np.random.default_rng(2).standard_normal((T, B, H))

        def loss(args, run):
            Ys, final = run(cell, *args)
            return (weights * Ys).sum() + sum((s**2).sum() for s in jax.tree.leaves(final))

        @partial(jax.jit, static_argnums=1)
        def outputs_and_grads(args, run):
            return run(cell, *args), jax.grad(loss)(args, run)

        (fast, grads), slow = outputs_and_grads(args, cells.scan), outputs_and_grads(args, _loop)
        _close((fast, grads), slow, atol=1e-12)

        eps = 1e-6
        for seed in range(2):
            v = _normal_like(args, 10 + seed, scale=1.0, dtype=np.float64)
            plus = jax.tree.map(lambda x, d: x + eps * d, args, v)
            minus = jax.tree.map(lambda x, d: x - eps * d, args, v)
            numeric = (float(loss(plus, cells.scan)) - float(loss(minus, cells.scan))) / (2 * eps)
            analytic = sum(jax.tree.leaves(jax.tree.map(lambda g, d: np.sum(g * d), grads, v)))
            np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("length", [1, 13])
@pytest.mark.parametrize("name", LINEAR_CELLS)
def test_associative_equals_sequential_float32(name, length):
    """The parallel form against the reference scan: outputs, final state and gradients
    (of the weights, the inputs and the state) to float32 round-off, from a zero state and
    from a carried one."""
    results = {}
    for scan in SCANS:
        cell = cells.get(name, scan=scan)
        weights = np.random.default_rng(4).standard_normal((length, B, H)).astype(np.float32)

        def loss(params, X, state, cell=cell, weights=weights):
            Ys, final = cells.scan(cell, params, X, state)
            return (weights * Ys).sum() + sum((s**2).sum() for s in jax.tree.leaves(final))

        @jax.jit
        def run(*args, cell=cell, loss=loss):
            return cells.scan(cell, *args), jax.grad(loss, (0, 1, 2))(*args)

        for carried in (False, True):
            params, state, X = _inputs(cell, seed=3, length=length, carried=carried)
            results[scan, carried] = run(params, X, state)
    for carried in (False, True):
        _close(results["sequential", carried], results["associative", carried], atol=2e-5)
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(results["associative", carried]))


def test_lru_without_phases_is_a_real_diagonal_recurrence():
    """``max_phase = 0`` makes every eigenvalue real: the LRU is then two real diagonal
    recurrences ``s_t = lambda s_{t-1} + gamma (x_t W + b)``, written here in NumPy."""
    params = linear_cells.lru_init(jax.random.key(5), D, H, max_phase=0.0)
    params = jax.tree.map(np.asarray, params)
    params["b_re"], params["b_im"] = np.full(H, 0.1, np.float32), np.full(H, -0.2, np.float32)
    X = np.random.default_rng(6).standard_normal((T, B, D)).astype(np.float32)
    lam = np.exp(-np.exp(params["nu_log"].astype(np.float64)))
    gamma = np.exp(params["gamma_log"].astype(np.float64))
    s_re, s_im, want = np.zeros((B, H)), np.zeros((B, H)), []
    for x in X.astype(np.float64):
        s_re = lam * s_re + gamma * (x @ params["W_xre"] + params["b_re"])
        s_im = lam * s_im + gamma * (x @ params["W_xim"] + params["b_im"])
        want.append(
            _gelu(
                s_re @ params["C_re"] - s_im @ params["C_im"] + x @ params["W_xd"] + params["b_d"]
            )
        )
    for scan in SCANS:
        cell = cells.get("lru", scan=scan)
        Ys, (S_re, S_im) = jax.jit(partial(cells.scan, cell))(params, X, cell.init_state(B, H))
        _close((Ys, S_re, S_im), (np.stack(want), s_re, s_im), atol=1e-5)
    assert np.all(np.isneginf(params["theta_log"]))  # exp(theta_log) = 0: no phase at all


def test_lru_init_is_the_papers_ring():
    params = linear_cells.lru_init(jax.random.key(0), 5, 4096, r_min=0.5, r_max=0.9, max_phase=1.0)
    lam = np.asarray(linear_cells.lru_eigenvalues(params))
    modulus, phase = np.abs(lam), np.angle(lam)
    assert modulus.min() >= 0.5 and modulus.max() <= 0.9
    assert phase.min() >= 0 and phase.max() <= 1
    # uniform on the ring: |lambda|^2 is uniform on [r_min^2, r_max^2]
    np.testing.assert_allclose(np.mean(modulus**2), (0.25 + 0.81) / 2, rtol=0.02)
    np.testing.assert_allclose(np.exp(params["gamma_log"]), np.sqrt(1 - modulus**2), rtol=1e-5)


# ---------------------------------------------------------------- the language model


def _model(name, scan="associative", num_layers=1, V=7):
    return ModelConfig(
        vocab_size=V, num_hiddens=H, cell=name, scan=scan, num_layers=num_layers, sigma=0.5
    )


@pytest.mark.parametrize("name", LINEAR_CELLS)
def test_every_transformation_of_apply_matches_the_reference_float64(name):
    """``model.apply`` with the associative scan against ``model.reference_apply`` (a plain
    scan of the one-step function) under jvp, jacfwd, grad and both HVP orders."""
    config = _model(name)
    params = _normal_like(jax.eval_shape(partial(model.init, config), jax.random.key(0)), 0)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (B, 5), dtype=np.int32)
    state = jax.tree.map(
        np.abs, _normal_like(jax.eval_shape(partial(model.zero_state, config, B)), 1)
    )
    with jax.enable_x64(True):
        params, state = jax.tree.map(lambda x: np.asarray(x, np.float64), (params, state))
        tangents = _normal_like((params, state), 13, scale=1.0, dtype=np.float64)
        run = jax.jit(partial(_all_derivatives, config), static_argnums=0)
        fast = run(model.apply, params, tokens, state, tangents)
        slow = run(model.reference_apply, params, tokens, state, tangents)
        for k in fast:
            _close(fast[k], slow[k], atol=1e-10)
        assert np.abs(np.asarray(fast["hvp_fwd_rev"][0]["W_hq"])).max() > 1e-3


@pytest.mark.parametrize("name", LINEAR_CELLS)
def test_sampler_steps_equal_teacher_forcing(name):
    """Two layers: the one-token steps the samplers take give the teacher-forced logits of
    the reference, and greedy decoding picks their argmax."""
    config = _model(name, num_layers=2, V=5)
    rng = np.random.default_rng(3)
    params = jax.tree.map(
        lambda x: rng.standard_normal(x.shape).astype(np.float32),
        jax.eval_shape(partial(model.init, config), jax.random.key(0)),
    )
    prefix = np.array([[1, 2, 3], [4, 4, 1]], np.int32)
    out = np.asarray(sample.greedy(config, params, prefix, 6))
    tokens = np.concatenate([prefix, out], axis=1)
    logits, _ = jax.jit(partial(model.reference_apply, config))(
        params, tokens, model.zero_state(config, 2)
    )
    np.testing.assert_array_equal(out, np.asarray(logits[:, 2:-1]).argmax(-1))

    @jax.jit
    def stepped(tokens):
        state, out = model.zero_state(config, 2), []
        for t in range(tokens.shape[1]):
            state, step_logits = model.step(config, params, state, tokens[:, t])
            out.append(step_logits)
        return jnp.stack(out, axis=1)

    np.testing.assert_allclose(stepped(tokens), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", LINEAR_CELLS)
def test_bfloat16_compute_tracks_float32(name):
    """Under ``compute_dtype="bfloat16"`` the logits stay within bfloat16's reach of the
    float32 model's, and the carried state comes back float32."""
    configs = [_model(name, num_layers=2, V=5)]
    configs.append(dataclasses.replace(configs[0], compute_dtype="bfloat16"))
    params = model.init(configs[0], jax.random.key(0))
    tokens = np.random.default_rng(5).integers(0, 5, (B, 9), dtype=np.int32)
    outs = [
        jax.jit(partial(model.apply, c))(params, tokens, model.zero_state(c, B)) for c in configs
    ]
    scale = np.abs(np.asarray(outs[0][0])).max()
    np.testing.assert_allclose(outs[1][0], outs[0][0], atol=0.02 * scale)
    assert {x.dtype for x in jax.tree.leaves(outs[1][1])} == {np.dtype(np.float32)}


def test_book_cells_refuse_the_associative_scan(capsys, tmp_path):
    for name in sorted(set(CELLS) - set(LINEAR_CELLS)):
        with pytest.raises(ValueError, match=f"the {name} cell's update is not"):
            ModelConfig(vocab_size=5, cell=name, scan="associative")
        with pytest.raises(ValueError, match="linear in its state"):
            cells.get(name, scan="associative")
    assert (
        cli.main(["train", "--out", str(tmp_path / "r"), "--cell", "gru", "--scan", "associative"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "linear in its state" in err[0], err
    assert not (tmp_path / "r").exists()


def test_a_linear_cell_through_the_command_line(capsys, tmp_path: Path):
    """An LRU with the associative scan and Adam: it trains, stores its scan mode in the
    checkpoint, resumes bitwise, evaluates, samples (greedy, top-p and beam, the sampler's
    three paths; temperature and top-k differ from top-p only in the filter) and shows in
    ``info`` (in this process: each run compiles its own step)."""
    lru = ["--cell", "lru", "--scan", "associative", "--optimizer", "adam", "--lr", "0.01"]
    lru += [*TINY, "--max-tokens", "1500"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert cli.main(["train", "--out", str(straight), "--epochs", "2", *lru]) == 0
    assert cli.main(["train", "--out", str(resumed), "--epochs", "1", *lru]) == 0
    assert cli.main(["train", "--resume", str(resumed), "--epochs", "2"]) == 0
    a, b = checkpoint.restore(straight), checkpoint.restore(resumed)
    assert a.model_config.scan == "associative" and a.model_config.cell == "lru"
    assert leaves_digest(a.state) == leaves_digest(b.state)
    records = [
        [{k: v for k, v in json.loads(line).items() if k not in ("tokens_per_s", "wall_s")}
         for line in (run / "metrics.jsonl").read_text().splitlines()]
        for run in (straight, resumed)
    ]  # fmt: skip
    assert records[0] == records[1] and records[0][-1]["train_ppl"] < records[0][0]["train_ppl"]
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(straight)]) == 0
    assert "perplexity" in capsys.readouterr().out
    strategies = ([], ["--strategy", "top-p", "--top-p", "0.9"], ["--strategy", "beam"])
    for strategy in strategies:
        assert cli.main(["sample", "--checkpoint", str(straight), *strategy]) == 0
        assert capsys.readouterr().out.startswith("time traveller"), strategy
    assert cli.main(["info", str(straight)]) == 0
    assert "model: lru x1 (associative scan), H 16" in capsys.readouterr().out


def test_vmapped_sweep_of_a_linear_cell_equals_its_solo_runs():
    """Two minLSTM members (seed, lr) in one vmapped program against ``loop`` mode."""
    config = TrainConfig(max_tokens=1000, batch_size=4, num_steps=5, num_epochs=1, sample_every=0)
    dataset = input_pipeline.load_dataset(config)
    model_config = ModelConfig(
        vocab_size=dataset.vocab_size, num_hiddens=8, cell="minlstm", scan="associative"
    )
    members = [
        sweep.Member(model_config, dataclasses.replace(config, seed=seed, lr=lr))
        for seed, lr in ((0, 1.0), (1, 2.0))
    ]
    quiet = {"echo": lambda _: None}
    vmapped = sweep.fit_sweep(members, dataset, mode="vmap", **quiet)
    looped = sweep.fit_sweep(members, dataset, mode="loop", **quiet)
    for v, l in zip(vmapped, looped, strict=True):
        for x, y in zip(
            jax.tree.leaves(v.state.params), jax.tree.leaves(l.state.params), strict=True
        ):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=2e-6)
        assert math.isclose(v.history[-1]["train_ppl"], l.history[-1]["train_ppl"], rel_tol=2e-6)
