"""The cells and the stacked language model against references written here.

Each cell's book step against NumPy; the fast recurrence (fused projection, hand-written
VJP) against a Python loop of the step, and its gradients against finite differences, in
float64; the model's ``apply`` against ``reference_apply`` and a hand-wired stack, under
every transformation (jvp, jacfwd, grad, both HVP orders); dropout; the bidirectional
layer; a short training of each cell.

Test data comes from NumPy and every JAX function under test is jitted once: eager JAX
ops compile one by one, which would dominate the runtime.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import cells, data, input_pipeline, model, step
from rnn_jax.config import ModelConfig, TrainConfig, from_dict, to_dict

CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("gru", "tanh"), ("lstm", "tanh")]
IDS = ["rnn", "rnn-relu", "gru", "lstm"]
B, T, D, H = 3, 5, 4, 6


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def numpy_step(name, nonlinearity, p, state, X):
    """The book's equations (D2L 9.5, 10.1, 10.2) in float64 NumPy."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    if name == "rnn":
        z = X @ p["W_xh"] + state @ p["W_hh"] + p["b_h"]
        H_ = np.tanh(z) if nonlinearity == "tanh" else np.maximum(z, 0)
        return H_, H_
    if name == "gru":
        Z = _sigmoid(X @ p["W_xz"] + state @ p["W_hz"] + p["b_z"])
        R = _sigmoid(X @ p["W_xr"] + state @ p["W_hr"] + p["b_r"])
        H_tilde = np.tanh(X @ p["W_xh"] + (R * state) @ p["W_hh"] + p["b_h"])
        H_ = Z * state + (1 - Z) * H_tilde
        return H_, H_
    H_, C = state
    I = _sigmoid(X @ p["W_xi"] + H_ @ p["W_hi"] + p["b_i"])
    F = _sigmoid(X @ p["W_xf"] + H_ @ p["W_hf"] + p["b_f"])
    O = _sigmoid(X @ p["W_xo"] + H_ @ p["W_ho"] + p["b_o"])
    C_tilde = np.tanh(X @ p["W_xc"] + H_ @ p["W_hc"] + p["b_c"])
    C = F * C + I * C_tilde
    H_ = O * np.tanh(C)
    return (H_, C), H_


def _normal_like(tree, seed, scale=0.5, dtype=np.float32):
    """NumPy normals shaped like ``tree``'s leaves (biases too, unlike the init)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: (scale * rng.standard_normal(x.shape)).astype(dtype), tree)


def _cell_inputs(cell, seed, dtype=np.float32):
    """Random params, state ``(B, H)`` (or ``(H, C)``) and inputs ``(T, B, D)``."""
    params = jax.eval_shape(lambda key: cell.init(key, D, H), jax.random.key(0))
    state = jax.eval_shape(partial(cell.init_state, B, H))
    X = jax.ShapeDtypeStruct((T, B, D), jnp.float32)
    return _normal_like((params, state, X), seed, dtype=dtype)


def _model_inputs(config, seed=0):
    params = jax.eval_shape(partial(model.init, config), jax.random.key(0))
    params = _normal_like(params, seed, scale=config.sigma)
    tokens = np.random.default_rng(seed).integers(0, config.vocab_size, (B, T), dtype=np.int32)
    state = _normal_like(jax.eval_shape(partial(model.zero_state, config, B)), seed + 1)
    return params, tokens, state


def _loop(cell, params, X, state):
    """The book's step in a Python loop over T (unrolled when traced)."""
    outputs = []
    for t in range(X.shape[0]):
        state, out = cell.step(params, state, X[t])
        outputs.append(out)
    return jnp.stack(outputs), state


def _plain_scan(cell, params, X, state):
    """The book's step in a ``lax.scan`` (plain autodiff in both modes)."""
    state, Ys = jax.lax.scan(lambda s, x: cell.step(params, s, x), state, X)
    return Ys, state


def _close(a, b, atol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-5)


# ---------------------------------------------------------------- one step, one sequence


@pytest.mark.parametrize(("name", "nonlinearity"), CELLS, ids=IDS)
def test_step_matches_numpy_book_equations(name, nonlinearity):
    cell = cells.get(name, nonlinearity)
    params, state, X = _cell_inputs(cell, seed=0)
    got_state, got_out = jax.jit(cell.step)(params, state, X[0])
    np_state = jax.tree.map(lambda x: np.asarray(x, np.float64), state)
    want_state, want_out = numpy_step(name, nonlinearity, params, np_state, X[0].astype(float))
    _close(got_out, want_out)
    _close(got_state, want_state)
    if nonlinearity == "relu":
        assert (np.asarray(got_out) == 0).any()  # the relu branch was taken


@pytest.mark.parametrize(("name", "nonlinearity"), CELLS, ids=IDS)
def test_fast_recurrence_and_its_gradients_float64(name, nonlinearity):
    """The fast recurrence against a Python loop of the book's step: outputs, final state
    and gradients; then its gradients against central finite differences along random
    directions through every input at once."""
    cell = cells.get(name, nonlinearity)
    with jax.enable_x64(True):
        params, state, X = _cell_inputs(cell, seed=1, dtype=np.float64)
        args = (params, X, state)
        weights = np.random.default_rng(2).standard_normal((T, B, H))

        def loss(args, run):
            Ys, final = run(cell, *args)
            return (weights * Ys).sum() + sum((s**2).sum() for s in jax.tree.leaves(final))

        @partial(jax.jit, static_argnums=1)
        def outputs_and_grads(args, run):
            return run(cell, *args), jax.grad(loss)(args, run)

        (fast, grads), slow = outputs_and_grads(args, cells.scan), outputs_and_grads(args, _loop)
        _close((fast, grads), slow, atol=1e-12)

        def numpy_loss(args):  # the loss from the compiled fast outputs
            Ys, final = outputs_and_grads(args, cells.scan)[0]
            return np.sum(weights * Ys) + sum(np.sum(np.square(s)) for s in jax.tree.leaves(final))

        eps = 1e-6
        for seed in range(3):
            v = _normal_like(args, 10 + seed, scale=1.0, dtype=np.float64)
            plus = jax.tree.map(lambda x, d: x + eps * d, args, v)
            minus = jax.tree.map(lambda x, d: x - eps * d, args, v)
            numeric = (numpy_loss(plus) - numpy_loss(minus)) / (2 * eps)
            products = jax.tree.map(lambda g, d: np.sum(np.asarray(g) * d), grads, v)
            analytic = sum(jax.tree.leaves(products))
            np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_project_tokens_is_the_one_hot_matmul():
    for name in ("rnn", "gru", "lstm"):
        cell = cells.get(name)
        params, _, _ = _cell_inputs(cell, seed=3)
        tokens = np.random.default_rng(0).integers(0, D, (T, B))
        XW = jax.jit(partial(cells.project_tokens, cell))(params, tokens)
        assert XW.shape == (T, B, len(cell.gates) * H)
        one_hot = np.eye(D, dtype=np.float32)[tokens]
        _close(
            XW, one_hot @ cells.fused_input(cell, params)[0] + cells.fused_input(cell, params)[1]
        )


# ---------------------------------------------------------------- the language model

MODELS = [  # the gru's recurrence is held to its book step above; the wiring is shared
    ModelConfig(vocab_size=7, num_hiddens=H, cell="rnn", sigma=0.5),
    ModelConfig(vocab_size=7, num_hiddens=H, cell="lstm", sigma=0.5, num_layers=2, dropout=0.5),
]
MODEL_IDS = ["rnn", "lstm-2-dropout"]


@pytest.mark.parametrize("config", MODELS, ids=MODEL_IDS)
def test_apply_and_its_gradients_match_the_reference(config):
    params, tokens, state = _model_inputs(config)

    @partial(jax.jit, static_argnums=1)
    def outputs_and_grads(params, fn, key):
        def loss(params):
            logits, final = fn(config, params, tokens, state, key=key)
            return (logits**2).sum() + sum((s**2).sum() for s in jax.tree.leaves(final))

        return fn(config, params, tokens, state, key=key), jax.grad(loss)(params)

    key = jax.random.key(7)  # dropout on; test_dropout_only_with_a_key holds it off without
    fast = outputs_and_grads(params, model.apply, key)
    _close(fast, outputs_and_grads(params, model.reference_apply, key))
    logits, final = fast[0]
    assert logits.shape == (B, T, config.vocab_size)
    assert jax.tree.structure(final) == jax.tree.structure(jax.tree.map(jnp.asarray, state))


def test_rnn_apply_is_the_book_forward():
    config = MODELS[0]
    params, tokens, state = _model_inputs(config)
    flat = {**params["layer_0"], "W_hq": params["W_hq"], "b_q": params["b_q"]}
    fast = jax.jit(partial(model.apply, config))(params, tokens, state)
    _close(fast, jax.jit(model.forward)(flat, tokens, state))
    assert set(params) == {"layer_0", "W_hq", "b_q"}
    assert set(params["layer_0"]) == {"W_xh", "W_hh", "b_h"}


def test_stacked_layer_k_sees_layer_k_minus_1_outputs():
    # V == H, so that the wrong wiring (the raw input fed to every layer) is computable.
    config = ModelConfig(vocab_size=H, num_hiddens=H, cell="lstm", sigma=0.5, num_layers=3)
    params, tokens, state = _model_inputs(config, seed=3)
    cell = model.cell_of(config)

    @partial(jax.jit, static_argnums=0)
    def stack(feed_raw_input, params):
        X = jax.nn.one_hot(tokens.T, H)
        inputs, finals = X, []
        for l in range(3):
            Ys, final = _loop(cell, params[f"layer_{l}"], X if feed_raw_input else inputs, state[l])
            inputs = Ys
            finals.append(final)
        return jnp.swapaxes(inputs @ params["W_hq"] + params["b_q"], 0, 1), tuple(finals)

    @jax.jit
    def apply_and_grads(params):
        out = model.apply(config, params, tokens, state)
        return out, jax.grad(lambda p: model.apply(config, p, tokens, state)[0].sum())(params)

    (logits, final), grads = apply_and_grads(params)
    _close((logits, final), stack(False, params))
    wrong, _ = stack(True, params)
    assert np.abs(np.asarray(logits - wrong)).max() > 1e-3
    # the logits depend on layer 0's weights, through layers 1 and 2
    assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(grads["layer_0"]))


def test_dropout_only_with_a_key():
    config = MODELS[-1]  # 2 layers, dropout 0.5
    no_dropout = ModelConfig(vocab_size=7, num_hiddens=H, cell="lstm", sigma=0.5, num_layers=2)
    params, tokens, state = _model_inputs(config)

    @jax.jit
    def run(params, key_a, key_b):
        eval_logits, _ = model.apply(config, params, tokens, state)
        plain, _ = model.apply(no_dropout, params, tokens, state)
        _, stepped = model.step(config, params, state, tokens[:, 0])
        a, _ = model.apply(config, params, tokens, state, key=key_a)
        b, _ = model.apply(config, params, tokens, state, key=key_b)
        dropped = model._dropout(config, key_a, 0, jnp.ones((200, 50)))
        return eval_logits, plain, stepped, a, b, dropped

    eval_logits, plain, stepped, a, b, dropped = run(params, jax.random.key(1), jax.random.key(2))
    _close(eval_logits, plain)
    _close(stepped, eval_logits[:, 0])
    assert np.abs(np.asarray(a - eval_logits)).max() > 1e-4
    assert np.abs(np.asarray(a - b)).max() > 1e-4
    # inverted dropout: a fraction p of zeros, the rest scaled by 1 / (1 - p)
    dropped = np.asarray(dropped)
    assert abs((dropped == 0).mean() - 0.5) < 0.02
    np.testing.assert_allclose(dropped[dropped != 0], 2.0)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_zero_state_layout(num_layers):
    for name, leaves in (("rnn", 1), ("gru", 1), ("lstm", 2)):
        config = ModelConfig(vocab_size=5, num_hiddens=H, cell=name, num_layers=num_layers)
        state = model.zero_state(config, B)
        assert len(jax.tree.leaves(state)) == leaves * num_layers
        assert all(x.shape == (B, H) and not x.any() for x in jax.tree.leaves(state))
        if num_layers == 1 and name != "lstm":
            assert isinstance(state, jax.Array)  # the book's (B, H), as before


# ---------------------------------------------------------------- every transformation

TRANSFORM_MODELS = [
    *(
        ModelConfig(vocab_size=7, num_hiddens=H, cell=name, nonlinearity=nonlinearity, sigma=0.5)
        for name, nonlinearity in CELLS
    ),
    ModelConfig(vocab_size=7, num_hiddens=H, cell="rnn", sigma=0.5, num_layers=2),
]
TRANSFORM_IDS = [*IDS, "rnn-2-layers"]


@pytest.mark.parametrize(("name", "nonlinearity"), CELLS, ids=IDS)
def test_scan_forward_mode_float64(name, nonlinearity):
    """``jax.jvp`` and ``jax.jacfwd`` of ``cells.scan`` (hence of the cell's recurrence,
    with tangents into its weights, ``XW`` and state) equal those of a plain ``lax.scan``
    of the book's step."""
    cell = cells.get(name, nonlinearity)
    with jax.enable_x64(True):
        params, state, X = _cell_inputs(cell, seed=11, dtype=np.float64)
        args = (params, X, state)
        tangents = _normal_like(args, 12, scale=1.0, dtype=np.float64)

        @partial(jax.jit, static_argnums=0)
        def derivatives(run, args, tangents):
            fn = partial(run, cell)
            return jax.jvp(fn, args, tangents), jax.jacfwd(fn, argnums=(0, 1, 2))(*args)

        fast = derivatives(cells.scan, args, tangents)
        slow = derivatives(_plain_scan, args, tangents)
        _close(fast, slow, atol=1e-12)
        assert np.abs(np.asarray(fast[0][1][0])).max() > 1e-3  # a tangent that is not zero


def _all_derivatives(config, fn, params, tokens, state, tangents):
    """Outputs, JVP, Jacobian (forward), gradient, and Hessian-vector products
    forward-over-reverse and reverse-over-forward of ``fn`` (``apply``'s signature)."""
    weights = np.random.default_rng(3).standard_normal((B, T, config.vocab_size))

    def outputs(params, state):
        return fn(config, params, tokens, state)

    def loss(params, state):
        logits, final = outputs(params, state)
        return (weights * logits).sum() + sum((s**2).sum() for s in jax.tree.leaves(final))

    primals = (params, state)
    grad = jax.grad(loss, argnums=(0, 1))
    return {
        "jvp": jax.jvp(outputs, primals, tangents),
        "jacfwd": jax.jacfwd(outputs, argnums=(0, 1))(*primals),
        "grad": grad(*primals),
        "hvp_fwd_rev": jax.jvp(grad, primals, tangents)[1],
        "hvp_rev_fwd": jax.grad(lambda *p: jax.jvp(loss, p, tangents)[1], (0, 1))(*primals),
    }


@pytest.mark.parametrize("config", TRANSFORM_MODELS, ids=TRANSFORM_IDS)
def test_every_transformation_of_apply_matches_the_reference_float64(config):
    """``model.apply`` (the fast recurrences) against ``model.reference_apply`` (a plain
    scan of the book's steps) under jvp, jacfwd, grad and both HVP orders."""
    params, tokens, state = _model_inputs(config)
    with jax.enable_x64(True):
        params, state = jax.tree.map(lambda x: np.asarray(x, np.float64), (params, state))
        tangents = _normal_like((params, state), 13, scale=1.0, dtype=np.float64)
        run = jax.jit(partial(_all_derivatives, config), static_argnums=0)
        fast = run(model.apply, params, tokens, state, tangents)
        slow = run(model.reference_apply, params, tokens, state, tangents)
        for k in fast:
            _close(fast[k], slow[k], atol=1e-11)
        _close(fast["hvp_fwd_rev"], fast["hvp_rev_fwd"], atol=1e-11)  # the Hessian is symmetric
        assert jax.tree.leaves(fast["jacfwd"])[0].dtype == np.float64
        assert np.abs(np.asarray(fast["hvp_fwd_rev"][0]["W_hq"])).max() > 1e-3


def test_step_forward_mode_matches_the_reference_float64():
    """``model.step`` (the sampler's unit) under ``jax.jvp``: the reference's first step."""
    config = ModelConfig(vocab_size=7, num_hiddens=H, cell="lstm", sigma=0.5, num_layers=2)
    params, tokens, state = _model_inputs(config)
    with jax.enable_x64(True):
        params, state = jax.tree.map(lambda x: np.asarray(x, np.float64), (params, state))
        tangents = _normal_like((params, state), 14, scale=1.0, dtype=np.float64)

        @jax.jit
        def both(params, state, tangents):
            def fast(params, state):
                return model.step(config, params, state, tokens[:, 0])

            def slow(params, state):
                logits, state = model.reference_apply(config, params, tokens[:, :1], state)
                return state, logits[:, 0]

            return jax.jvp(fast, (params, state), tangents), jax.jvp(
                slow, (params, state), tangents
            )

        fast, slow = both(params, state, tangents)
        _close(fast, slow, atol=1e-12)


@pytest.mark.parametrize(("name", "matmuls"), [("rnn", 1), ("gru", 2), ("lstm", 1)])
def test_reverse_mode_is_the_hand_written_vjp(name, matmuls):
    """The train step's gradient runs one forward and one reverse scan per layer, and the
    reverse scan holds only the ``dA W_h^T`` matmuls of the hand-written VJP (the weight
    gradient is one matmul after it), not plain autodiff's per-step outer products."""
    config = ModelConfig(vocab_size=7, num_hiddens=H, cell=name, num_layers=2)
    params, tokens, state = _model_inputs(config)

    def loss(params):
        return model.apply(config, params, tokens, state)[0].sum()

    jaxpr = jax.make_jaxpr(jax.grad(loss))(params).jaxpr
    scans = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
    backward = [e for e in scans if e.params["reverse"]]
    assert len(scans) == 4 and len(backward) == 2
    for eqn in backward:
        body = eqn.params["jaxpr"].jaxpr
        assert sum(e.primitive.name == "dot_general" for e in body.eqns) == matmuls


# ---------------------------------------------------------------- bidirectional


@pytest.mark.parametrize("name", ["rnn", "lstm"])
def test_bidirectional_equals_two_manual_scans(name):
    cell = cells.get(name)
    params_f, state_f, X = _cell_inputs(cell, seed=4)
    params_b, state_b, _ = _cell_inputs(cell, seed=5)
    params = {"forward": params_f, "backward": params_b}

    @jax.jit
    def manual(params, X):
        forward, backward = [None] * T, [None] * T
        s_f, s_b = state_f, state_b
        for t in range(T):
            s_f, forward[t] = cell.step(params["forward"], s_f, X[t])
        for t in reversed(range(T)):
            s_b, backward[t] = cell.step(params["backward"], s_b, X[t])
        return jnp.concatenate([jnp.stack(forward), jnp.stack(backward)], axis=-1), (s_f, s_b)

    Y, final = jax.jit(partial(cells.bidirectional, cell))(params, X, (state_f, state_b))
    assert Y.shape == (T, B, 2 * H)
    _close((Y, final), manual(params, X))


def test_bidirectional_output_sees_the_future():
    """Why it is no next-token language model: output t depends on x_{t+1}."""
    cell = cells.get("gru")
    params = {"forward": _cell_inputs(cell, 6)[0], "backward": _cell_inputs(cell, 7)[0]}
    _, state, X = _cell_inputs(cell, 8)
    first = lambda X: cells.bidirectional(cell, params, X, (state, state))[0][0]  # noqa: E731
    dY0_dX = jax.jit(jax.jacobian(first))(X)  # (B, 2H, T, B, D)
    assert np.abs(np.asarray(dY0_dX[:, :, 1])).max() > 0  # output 0 reads x_1


# ---------------------------------------------------------------- config and training


def test_model_config_fields_validate_and_round_trip():
    config = ModelConfig(vocab_size=28, cell="lstm", num_layers=2, dropout=0.2)
    assert from_dict(ModelConfig, to_dict(config)) == config
    assert hash(config) == hash(ModelConfig(vocab_size=28, cell="lstm", num_layers=2, dropout=0.2))
    assert ModelConfig(vocab_size=28, nonlinearity="relu").nonlinearity == "relu"
    for bad in (
        {"num_layers": 0},
        {"num_layers": 1.5},
        {"dropout": 1.0},
        {"dropout": -0.1},
        {"nonlinearity": "sigmoid"},
        {"cell": "gru", "nonlinearity": "relu"},
        {"cell": "transformer"},
    ):
        with pytest.raises(ValueError):
            ModelConfig(vocab_size=28, **bad)
    with pytest.raises(ValueError):
        cells.get("lstm", "relu")


@pytest.mark.parametrize(
    ("config", "partition"),
    [
        (ModelConfig(vocab_size=28, num_hiddens=32, cell="rnn"), "sequential"),
        (ModelConfig(vocab_size=28, num_hiddens=32, cell="gru"), "random"),
        (
            ModelConfig(vocab_size=28, num_hiddens=32, cell="lstm", num_layers=2, dropout=0.1),
            "random",
        ),
    ],
    ids=["rnn", "gru", "lstm-2-dropout"],
)
def test_short_training_lowers_perplexity(config, partition):
    """Six epochs of the real train step on 3,000 tokens take the training perplexity
    from about V = 28 to well below it."""
    corpus, vocab = data.load_corpus(max_tokens=3000)
    assert len(vocab) == config.vocab_size
    optimizer = step.make_optimizer(TrainConfig(lr=4.0))
    state = step.init_train_state(config, optimizer, 16, jax.random.key(0))
    train = step.make_train_step(config, optimizer, carry_hidden=partition == "sequential")
    losses = []
    for epoch in range(6):
        Xs, Ys = input_pipeline.epoch_batches(corpus, 16, 16, partition, 0, epoch)
        state = state.replace(hidden=model.zero_state(config, 16))
        epoch_losses = []
        for X, Y in zip(Xs, Ys, strict=True):
            state, metrics = train(state, (X, Y))
            epoch_losses.append(metrics["loss"])  # of the parameters before the update
        losses.append(np.asarray(epoch_losses))
    before, after = np.exp(losses[0][0]), np.exp(losses[-1].mean())
    assert before > 25 and after < 0.7 * before, (before, after)


def test_registry_is_the_config_table():
    """``cells.REGISTRY`` implements exactly the cells of ``config.GATES``, each with those
    gate blocks: the one table a new cell adds a line to."""
    from rnn_jax.config import CELLS, GATES

    assert tuple(cells.REGISTRY) == CELLS
    for name in CELLS:
        cell = cells.get(name)
        assert cell.name == name and cell.gates == GATES[name]
        assert ModelConfig(vocab_size=5, cell=name).num_gates == len(GATES[name])
    with pytest.raises(ValueError, match="cell must be one of"):
        cells.get("transformer")
