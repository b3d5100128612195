"""The RNN (D2L 9.5): parameters, the fast forward against the book's step, gradients."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from rnn_jax import loss, model
from rnn_jax.config import ModelConfig

V, H, B, T = 11, 16, 3, 7
CONFIG = ModelConfig(vocab_size=V, num_hiddens=H, sigma=0.5)


@pytest.fixture
def params(random_params, book_params):
    """The book's flat params (W_xh, W_hh, b_h, W_hq, b_q), sigma 0.5, non-zero biases."""
    return book_params(random_params(CONFIG, seed=0))


def _tokens(seed: int = 1, batch: int = B, steps: int = T) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, (batch, steps)), jnp.int32)


def _state(seed: int = 2, batch: int = B) -> jax.Array:
    return jnp.asarray(0.5 * np.random.default_rng(seed).standard_normal((batch, H)), jnp.float32)


def _book_loop(params, tokens, h):
    """The book's forward: a Python loop of ``rnn_step`` over one-hot inputs."""
    outputs = []
    for t in range(tokens.shape[1]):
        x = jax.nn.one_hot(tokens[:, t], params["W_xh"].shape[0], dtype=params["W_xh"].dtype)
        h, y = model.rnn_step(params, h, x)
        outputs.append(y)
    return jnp.stack(outputs, axis=1), h


def _book_scan(params, tokens, h):
    """The book's forward as a plain ``lax.scan`` over ``rnn_step`` (autodiff, no custom VJP)."""
    X = jax.nn.one_hot(tokens.T, params["W_xh"].shape[0], dtype=params["W_xh"].dtype)
    h, Ys = jax.lax.scan(lambda h, x: model.rnn_step(params, h, x), h, X)
    return jnp.swapaxes(Ys, 0, 1), h


_forward = jax.jit(model.forward)
_book_loop_jit = jax.jit(_book_loop)


# --------------------------------------------------------------------------- init


def test_init_params_shapes_and_statistics():
    """Book init: W_xh (V,H), W_hh (H,H), b_h (H,), W_hq (H,V), b_q (V,); weights
    N(0, sigma^2), biases zero."""
    Vb, Hb, sigma = 28, 256, 0.01
    params = jax.jit(model.init_params, static_argnums=(1, 2, 3))(jax.random.key(0), Vb, Hb, sigma)
    assert set(params) == {"W_xh", "W_hh", "b_h", "W_hq", "b_q"}
    chex.assert_shape(params["W_xh"], (Vb, Hb))
    chex.assert_shape(params["W_hh"], (Hb, Hb))
    chex.assert_shape(params["b_h"], (Hb,))
    chex.assert_shape(params["W_hq"], (Hb, Vb))
    chex.assert_shape(params["b_q"], (Vb,))
    chex.assert_type(list(params.values()), jnp.float32)
    params = {k: np.asarray(v) for k, v in params.items()}
    assert not params["b_h"].any() and not params["b_q"].any()
    for name in ("W_xh", "W_hh", "W_hq"):
        w = params[name]
        assert abs(w.std() / sigma - 1) < 0.05, name
        assert abs(w.mean()) < 4 * sigma / np.sqrt(w.size), name
    # Three independent draws, not one reused.
    assert np.abs(np.corrcoef(params["W_xh"].ravel(), params["W_hq"].T.ravel())[0, 1]) < 0.1
    assert model.num_params(params) == Vb * Hb + Hb * Hb + Hb + Hb * Vb + Vb


def test_init_by_config():
    """model.init follows the ModelConfig (sizes, sigma); model.zero_state is zeros (B, H)."""
    config = ModelConfig(vocab_size=V, num_hiddens=H, sigma=0.2)
    init = jax.jit(model.init, static_argnums=0)
    params = init(config, jax.random.key(3))
    chex.assert_trees_all_equal(params, init(config, jax.random.key(3)))
    assert model.num_params(params) == V * H + H * H + H + H * V + V
    chex.assert_shape(params["W_hq"], (H, V))
    assert np.asarray(params["W_hq"]).std() == pytest.approx(0.2, rel=0.2)
    h = model.zero_state(config, 5)
    chex.assert_shape(h, (5, H))
    assert h.dtype == jnp.float32 and not np.asarray(h).any()


# --------------------------------------------------------------------------- forward


def test_forward_equals_book_loop(params):
    """Gather + hoisted input projection + custom-VJP scan == a loop of rnn_step."""
    tokens, h0 = _tokens(), _state()
    logits, h_T = _forward(params, tokens, h0)
    chex.assert_shape(logits, (B, T, V))
    chex.assert_shape(h_T, (B, H))
    chex.assert_trees_all_close(
        (logits, h_T), _book_loop_jit(params, tokens, h0), rtol=1e-5, atol=1e-5
    )
    # Not vacuous: the initial state matters.
    other, _ = _forward(params, tokens, jnp.zeros_like(h0))
    assert not np.allclose(other[:, 0], logits[:, 0], atol=1e-3)


def test_apply_and_step_compute_the_book_rnn(random_params, book_params):
    """The config-level apply and step (the sampler's unit, on ids) == rnn_step."""
    params = random_params(CONFIG, seed=5)
    tokens, h0 = _tokens(), _state()
    logits, h_T = jax.jit(model.apply, static_argnums=0)(CONFIG, params, tokens, h0)
    ref = _book_loop_jit(book_params(params), tokens, h0)
    chex.assert_trees_all_close((logits, h_T), ref, rtol=1e-5, atol=1e-5)

    token = jnp.array([0, 5, V - 1], jnp.int32)
    h1, y1 = jax.jit(model.step, static_argnums=0)(CONFIG, params, h0, token)
    ref_y, ref_h = _book_loop_jit(book_params(params), token[:, None], h0)
    chex.assert_trees_all_close((h1, y1), (ref_h, ref_y[:, 0]), rtol=1e-5, atol=1e-5)


def test_two_matmuls_equal_concatenated_matmul(params):
    """x W_xh + h W_hh + b == [x, h] @ [W_xh; W_hh] + b (one matmul on the concatenation)."""
    h = np.asarray(_state())
    x = np.eye(V, dtype=np.float32)[[1, 4, 9]]
    new_h, logits = model.rnn_step(params, h, x)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    W = np.concatenate([p["W_xh"], p["W_hh"]], axis=0)  # (V + H, H)
    ref_h = np.tanh(np.concatenate([x, h], axis=1) @ W + p["b_h"])
    chex.assert_trees_all_close(new_h, ref_h.astype(np.float32), rtol=1e-5, atol=1e-6)
    ref_y = ref_h @ p["W_hq"] + p["b_q"]
    chex.assert_trees_all_close(logits, ref_y.astype(np.float32), rtol=1e-5, atol=1e-5)


def test_one_hot_matmul_equals_row_gather(params):
    """one_hot(x) @ W_xh == W_xh[x], the identity forward's gather relies on."""
    tokens = _tokens()
    W = params["W_xh"]
    chex.assert_trees_all_close(jax.nn.one_hot(tokens, V) @ W, W[tokens], rtol=0, atol=1e-7)


def test_forward_under_jit_and_batch_one(params):
    """forward under jit with a batch of one gives the book loop's result for that row
    (and the batched result's row); a single step (T = 1) works."""
    tokens, h0 = _tokens(), _state()
    batched = _forward(params, tokens, h0)
    one_logits, one_h = _forward(params, tokens[1:2], h0[1:2])
    chex.assert_shape(one_logits, (1, T, V))
    chex.assert_shape(one_h, (1, H))
    chex.assert_trees_all_close(
        (one_logits, one_h), (batched[0][1:2], batched[1][1:2]), rtol=1e-5, atol=1e-5
    )
    chex.assert_trees_all_close(
        (one_logits, one_h), _book_loop_jit(params, tokens[1:2], h0[1:2]), rtol=1e-5, atol=1e-5
    )
    step_logits, step_h = _forward(params, tokens[:, :1], h0)
    ref_h, ref_y = model.rnn_step(params, h0, jax.nn.one_hot(tokens[:, 0], V))
    chex.assert_trees_all_close((step_logits[:, 0], step_h), (ref_y, ref_h), atol=1e-5)


# --------------------------------------------------------------------------- gradients


def _mean_ce(forward, params, h0, tokens, targets):
    logits, h_T = forward(params, tokens, h0)
    # h_T enters the loss too, so the cotangent of the final state is exercised.
    return loss.cross_entropy(logits, targets) + 0.1 * jnp.sum(h_T**2)


def test_gradients_match_finite_differences_float64():
    """jax.grad through forward (custom VJP), w.r.t. params and h0, == central
    finite differences, in float64."""
    Vs, Hs, Bs, Ts = 5, 4, 2, 4
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, Vs, (Bs, Ts)).astype(np.int32)
    targets = rng.integers(0, Vs, (Bs, Ts)).astype(np.int32)
    shapes = {"W_xh": (Vs, Hs), "W_hh": (Hs, Hs), "b_h": (Hs,), "W_hq": (Hs, Vs), "b_q": (Vs,)}
    params = {k: 0.5 * rng.standard_normal(s) for k, s in shapes.items()}  # float64
    h0 = 0.5 * rng.standard_normal((Bs, Hs))
    with jax.enable_x64(True):

        @jax.jit
        def grads_and_numeric(args):
            def f(args):
                return _mean_ce(model.forward, args[0], args[1], tokens, targets)

            flat, unravel = ravel_pytree(args)
            eps = 1e-6
            steps = jnp.concatenate([jnp.eye(flat.size), -jnp.eye(flat.size)]) * eps
            plus, minus = jnp.split(jax.vmap(lambda d: f(unravel(flat + d)))(steps), 2)
            return jax.grad(f)(args), unravel((plus - minus) / (2 * eps))

        grads, numeric = grads_and_numeric((params, h0))
        chex.assert_type(jax.tree.leaves((grads, numeric)), jnp.float64)
        grads, numeric = jax.device_get((grads, numeric))
    chex.assert_trees_all_close(grads, numeric, rtol=1e-6, atol=1e-9)
    # Not vacuous: every block of the gradient (5 params and h0) is non-zero.
    assert len(jax.tree.leaves(grads)) == 6
    for g in jax.tree.leaves(grads):
        assert np.abs(g).max() > 1e-4


def test_custom_vjp_matches_plain_scan_gradients(params):
    """Gradients (params and h0) of the fast path == those of lax.scan over rnn_step
    with one-hot inputs (plain autodiff, no custom VJP), in float32."""
    h0 = _state()
    tokens, targets = _tokens(4, steps=12), _tokens(5, steps=12)

    @jax.jit
    def both(params, h0):
        def grads(forward):
            fn = lambda p, h: _mean_ce(forward, p, h, tokens, targets)  # noqa: E731
            return jax.value_and_grad(fn, (0, 1))(params, h0)

        return grads(model.forward), grads(_book_scan)

    fast, plain = both(params, h0)
    chex.assert_trees_all_close(fast, plain, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(fast[1][0]["W_hh"])).max() > 1e-3


def test_forward_mode_matches_plain_scan_float64(params):
    """``jax.jvp`` and ``jax.jacfwd`` of ``forward`` (the recurrence's forward rule is its
    hand-written VJP transposed) == those of ``lax.scan`` over ``rnn_step``, in float64."""
    tokens = _tokens(6)
    with jax.enable_x64(True):
        primals = jax.tree.map(lambda x: np.asarray(x, np.float64), (params, _state()))
        rng = np.random.default_rng(7)
        tangents = jax.tree.map(lambda x: rng.standard_normal(x.shape), primals)

        @jax.jit
        def both(primals, tangents):
            def derivatives(forward):
                fn = lambda p, h: forward(p, tokens, h)  # noqa: E731
                return jax.jvp(fn, primals, tangents), jax.jacfwd(fn, (0, 1))(*primals)

            return derivatives(model.forward), derivatives(_book_scan)

        fast, plain = both(primals, tangents)
    chex.assert_trees_all_close(fast, plain, rtol=1e-10, atol=1e-12)
    assert np.abs(np.asarray(fast[0][1][0])).max() > 1e-3
