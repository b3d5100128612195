"""The Flax twins hold the scratch models' numbers where the equations agree.

The scratch parameters are mapped into ``ConciseLM`` (``nn.RNN`` over Flax's cells):
the tanh and relu RNN and the LSTM give the same logits and final states to 1e-5.
Flax's GRU applies the reset gate after the hidden matmul; it is compared against a
NumPy reference of that variant, and shown to differ from the book's GRU.

The NNX twin ``NNXLM`` (``nnx.RNN`` over NNX's fused cells, the book's candidate in
``BookGRUCell``) gives the scratch model's logits and states for every cell, one and two
layers; the stock ``nnx.GRUCell`` on the same parameters is the reset-after variant.
"""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rnn_jax import cells, flax_twins, model, nnx_twins
from rnn_jax.config import ModelConfig

B, T, V, H = 3, 6, 7, 5


def _inputs(config, seed=0):
    rng = np.random.default_rng(seed)
    like = lambda tree: jax.tree.map(  # noqa: E731
        lambda x: (0.7 * rng.standard_normal(x.shape)).astype(np.float32), tree
    )
    params = like(jax.eval_shape(partial(model.init, config), jax.random.key(0)))
    state = like(jax.eval_shape(partial(model.zero_state, config, B)))
    tokens = rng.integers(0, V, (B, T), dtype=np.int32)
    return params, tokens, state


@partial(jax.jit, static_argnums=0)
def _both(config, params, tokens, state):
    """(scratch logits and state, Flax logits and state mapped back)."""
    scratch = model.apply(config, params, tokens, state)
    logits, carries = flax_twins.ConciseLM(config).apply(
        flax_twins.lm_variables(config, params),
        tokens,
        flax_twins.to_flax_carries(config, state),
    )
    return scratch, (logits, flax_twins.from_flax_carries(config, carries))


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(vocab_size=V, num_hiddens=H, cell="rnn"),
        ModelConfig(vocab_size=V, num_hiddens=H, cell="rnn", nonlinearity="relu", num_layers=2),
        ModelConfig(vocab_size=V, num_hiddens=H, cell="lstm", num_layers=2),
    ],
    ids=["rnn", "rnn-relu-2", "lstm-2"],
)
def test_concise_lm_matches_scratch(config):
    params, tokens, state = _inputs(config)
    scratch, concise = _both(config, params, tokens, state)
    for a, b in zip(jax.tree.leaves(scratch), jax.tree.leaves(concise), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    # the mapped pytree has exactly the structure and shapes Flax's own init makes
    module = flax_twins.ConciseLM(config)
    carries = flax_twins.to_flax_carries(config, state)
    flax_init = jax.eval_shape(module.init, jax.random.key(0), tokens, carries)
    mapped = flax_twins.lm_variables(config, params)
    assert jax.tree.map(np.shape, flax_init) == jax.tree.map(np.shape, mapped)


def _flax_gru_numpy(p, H_, X):
    """Flax's (and cuDNN's) GRU step: the reset gate applied after the hidden matmul."""
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    r = sig(X @ p["ir"]["kernel"] + p["ir"]["bias"] + H_ @ p["hr"]["kernel"])
    z = sig(X @ p["iz"]["kernel"] + p["iz"]["bias"] + H_ @ p["hz"]["kernel"])
    n = np.tanh(
        X @ p["in"]["kernel"] + p["in"]["bias"] + r * (H_ @ p["hn"]["kernel"] + p["hn"]["bias"])
    )
    return (1 - z) * n + z * H_


def test_flax_gru_is_the_reset_after_variant():
    config = ModelConfig(vocab_size=V, num_hiddens=H, cell="gru")
    params, tokens, state = _inputs(config, seed=1)
    (book_logits, _), (flax_logits, flax_state) = _both(config, params, tokens, state)
    # Against a NumPy reference of Flax's equations, on the same mapped weights
    variables = flax_twins.lm_variables(config, params)["params"]
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), variables["layer_0"]["cell"])
    X = np.eye(V)[tokens]  # (B, T, V)
    h, outputs = np.asarray(state, np.float64), []
    for t in range(T):
        h = _flax_gru_numpy(p, h, X[:, t])
        outputs.append(h)
    head = variables["head"]
    want = np.stack(outputs, axis=1) @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
    np.testing.assert_allclose(flax_logits, want, atol=1e-5)
    np.testing.assert_allclose(flax_state, h, atol=1e-5)
    # ... and the book's GRU, from the same weights, is a different function
    assert np.abs(np.asarray(flax_logits - book_logits)).max() > 1e-2


def test_flax_gru_hidden_bias_is_mapped():
    """Flax's extra candidate bias b_hn is zero in the map and used when set."""
    config = ModelConfig(vocab_size=V, num_hiddens=H, cell="gru")
    params, _, _ = _inputs(config, seed=2)
    cell_vars = flax_twins.cell_variables(config, params["layer_0"])
    np.testing.assert_array_equal(cell_vars["hn"]["bias"], np.zeros(H))
    np.testing.assert_array_equal(cell_vars["in"]["bias"], params["layer_0"]["b_h"])
    np.testing.assert_array_equal(cell_vars["hz"]["kernel"], params["layer_0"]["W_hz"])


def test_bidirectional_matches_flax_bidirectional():
    config = ModelConfig(vocab_size=V, num_hiddens=H, cell="lstm")
    cell = cells.get("lstm")
    rng = np.random.default_rng(3)
    params = jax.eval_shape(lambda k: cells.init_bidirectional(cell, k, V, H), jax.random.key(0))
    params = jax.tree.map(lambda x: (0.7 * rng.standard_normal(x.shape)).astype(np.float32), params)
    X = rng.standard_normal((B, T, V)).astype(np.float32)
    zeros = cell.init_state(B, H)
    layer = nn.Bidirectional(
        nn.RNN(flax_twins.flax_cell(config)), nn.RNN(flax_twins.flax_cell(config))
    )
    variables = {
        "params": {
            "forward_rnn": {"cell": flax_twins.cell_variables(config, params["forward"])},
            "backward_rnn": {"cell": flax_twins.cell_variables(config, params["backward"])},
        }
    }

    @jax.jit
    def both(params, variables, X):
        ours, _ = cells.bidirectional(cell, params, jnp.swapaxes(X, 0, 1), (zeros, zeros))
        return jnp.swapaxes(ours, 0, 1), layer.apply(variables, X)

    ours, theirs = both(params, variables, X)
    assert ours.shape == (B, T, 2 * H)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(vocab_size=V, num_hiddens=H, cell="rnn"),
        ModelConfig(vocab_size=V, num_hiddens=H, cell="rnn", nonlinearity="relu", num_layers=2),
        ModelConfig(vocab_size=V, num_hiddens=H, cell="gru"),
        ModelConfig(vocab_size=V, num_hiddens=H, cell="gru", num_layers=2, dropout=0.5),
        ModelConfig(vocab_size=V, num_hiddens=H, cell="lstm"),
        ModelConfig(vocab_size=V, num_hiddens=H, cell="lstm", num_layers=2),
    ],
    ids=["rnn", "rnn-relu-2", "gru", "gru-2-dropout", "lstm", "lstm-2"],
)
def test_nnx_lm_matches_scratch(config):
    params, tokens, state = _inputs(config, seed=4)
    scratch = model.apply(config, params, tokens, state)
    lm = nnx_twins.from_scratch(config, params)
    logits, carries = lm(tokens, flax_twins.to_flax_carries(config, state))
    nnx_out = (logits, flax_twins.from_flax_carries(config, carries))
    for a, b in zip(jax.tree.leaves(scratch), jax.tree.leaves(nnx_out), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    # the copied parameters are all the model's state, with the structure and shapes
    # NNX's own init makes
    fresh = nnx.eval_shape(lambda: nnx_twins.NNXLM(config, rngs=nnx.Rngs(0)))
    assert jax.tree.map(np.shape, nnx.to_pure_dict(nnx.state(fresh))) == jax.tree.map(
        np.shape, nnx_twins.lm_params(config, params)
    )
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(nnx.state(lm)))
    if config.dropout:  # dropout between the layers, with rngs only
        dropped, _ = lm(tokens, flax_twins.to_flax_carries(config, state), rngs=nnx.Rngs(1))
        assert np.abs(np.asarray(dropped - logits)).max() > 1e-3


def test_nnx_gru_is_the_reset_after_variant():
    """The stock ``nnx.GRUCell``, on the parameters ``BookGRUCell`` holds, computes Flax's
    equations (linen's with ``b_hn`` zero), not the book's."""
    config = ModelConfig(vocab_size=V, num_hiddens=H, cell="gru")
    params, tokens, state = _inputs(config, seed=5)

    def layer(cell_class):  # built abstractly (no init drawn), then filled
        cell = nnx.eval_shape(lambda: cell_class(V, H, rngs=nnx.Rngs(0)))
        return nnx.RNN(cell, return_carry=True, rngs=False)

    stock, book = layer(nnx.GRUCell), layer(nnx_twins.BookGRUCell)
    fused = nnx_twins.cell_params(config, params["layer_0"])
    for rnn in (stock, book):
        rnn_state = nnx.state(rnn, nnx.Param)
        nnx.replace_by_pure_dict(rnn_state, {"cell": fused})
        nnx.update(rnn, rnn_state)
    X = jax.nn.one_hot(tokens, V)
    stock_state, stock_out = stock(X, initial_carry=state)
    _, book_out = book(X, initial_carry=state)
    # Against a NumPy reference of Flax's equations, on the per-gate (linen) weights
    p = jax.tree.map(
        lambda x: np.asarray(x, np.float64), flax_twins.cell_variables(config, params["layer_0"])
    )
    h, outputs = np.asarray(state, np.float64), []
    for t in range(T):
        h = _flax_gru_numpy(p, h, np.asarray(X[:, t], np.float64))
        outputs.append(h)
    np.testing.assert_allclose(stock_out, np.stack(outputs, axis=1), atol=1e-5)
    np.testing.assert_allclose(stock_state, h, atol=1e-5)
    # ... and the book's candidate, from the same weights, is a different function
    assert np.abs(np.asarray(stock_out - book_out)).max() > 1e-2
