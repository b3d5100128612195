"""The book's RNN language model as pure functions over a parameter pytree (D2L 9.5).

Shape legend: B batch, T time (num_steps), V vocab_size, H num_hiddens.

    h_t = tanh(x_t W_xh + h_{t-1} W_hh + b_h)      x_t one-hot (B, V), h_t (B, H)
    y_t = h_t W_hq + b_q                           y_t logits (B, V)

``rnn_step`` is that equation, written as in the book. ``forward`` computes the same
numbers faster, and the tests hold the two equal:

* the input side ``x_t W_xh + b_h`` does not depend on ``h``, so it is done for all
  ``T`` steps before the scan, as a row gather of ``W_xh`` (``one_hot(x) @ W == W[x]``);
* only ``h_{t-1} W_hh`` and ``tanh`` stay inside ``jax.lax.scan``;
* the head ``h_t W_hq + b_q`` is one matmul over all steps after the scan;
* the backward pass of the scan (``_recurrence``'s custom VJP) returns the gradient of
  ``W_hh`` as one ``(H, T B) @ (T B, H)`` matmul after the reverse scan, rather than
  summing ``T`` small outer products inside it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnn_jax.config import ModelConfig

Params = dict[str, jax.Array]
Hidden = jax.Array  # (B, H)
Tokens = jax.Array  # (B, T) int32
Logits = jax.Array  # (B, T, V)


def init_params(
    key: jax.Array, vocab_size: int, num_hiddens: int, sigma: float = 0.01
) -> Params:
    """The book's parameters: weights ~ N(0, sigma^2), biases zero."""
    k_xh, k_hh, k_hq = jax.random.split(key, 3)
    V, H = vocab_size, num_hiddens
    return {
        "W_xh": sigma * jax.random.normal(k_xh, (V, H)),
        "W_hh": sigma * jax.random.normal(k_hh, (H, H)),
        "b_h": jnp.zeros((H,)),
        "W_hq": sigma * jax.random.normal(k_hq, (H, V)),
        "b_q": jnp.zeros((V,)),
    }


def init_state(batch_size: int, num_hiddens: int, dtype: jnp.dtype = jnp.float32) -> Hidden:
    """The zero hidden state ``(B, H)``."""
    return jnp.zeros((batch_size, num_hiddens), dtype)


def rnn_step(params: Params, h: Hidden, x: jax.Array) -> tuple[Hidden, jax.Array]:
    """One step of the book: ``x`` one-hot ``(B, V)`` -> (new ``h`` ``(B, H)``, logits ``(B, V)``)."""
    h = jnp.tanh(x @ params["W_xh"] + h @ params["W_hh"] + params["b_h"])
    return h, h @ params["W_hq"] + params["b_q"]


def forward(params: Params, tokens: Tokens, state: Hidden) -> tuple[Logits, Hidden]:
    """Run the RNN over ``tokens`` ``(B, T)`` from ``state`` ``(B, H)``.

    Returns the logits ``(B, T, V)`` of the next token at every step and the final
    hidden state ``(B, H)``.
    """
    XW = params["W_xh"][tokens.T] + params["b_h"]  # (T, B, H): x_t W_xh + b_h for all t
    Hs, state = _recurrence(params["W_hh"], XW, state)  # (T, B, H)
    logits = Hs @ params["W_hq"] + params["b_q"]  # (T, B, V)
    return jnp.swapaxes(logits, 0, 1), state


@jax.custom_vjp
def _recurrence(W_hh: jax.Array, XW: jax.Array, h0: Hidden) -> tuple[jax.Array, Hidden]:
    """``h_t = tanh(XW_t + h_{t-1} W_hh)`` for t = 1..T; returns all ``h_t`` ``(T, B, H)`` and ``h_T``."""
    return _recurrence_fwd(W_hh, XW, h0)[0]


def _recurrence_fwd(W_hh, XW, h0):
    def step(h, xw):
        h = jnp.tanh(xw + h @ W_hh)
        return h, h

    h_T, Hs = jax.lax.scan(step, h0, XW)
    return (Hs, h_T), (W_hh, Hs, h0)


def _recurrence_bwd(residuals, cotangents):
    W_hh, Hs, h0 = residuals
    dHs, dh_T = cotangents

    def step(dh, h_and_dh):
        h, dh_out = h_and_dh
        dz = (dh + dh_out) * (1 - h * h)  # through tanh: d tanh(z) = 1 - tanh(z)^2
        return dz @ W_hh.T, dz

    dh0, dZ = jax.lax.scan(step, dh_T, (Hs, dHs), reverse=True)
    H_prev = jnp.concatenate([h0[None], Hs[:-1]])  # h_{t-1} for every t
    dW_hh = jnp.einsum("tbi,tbj->ij", H_prev, dZ)
    return dW_hh, dZ, dh0


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


# ---------------------------------------------------------------- by configuration


def init(config: ModelConfig, key: jax.Array) -> Params:
    """Parameters of the model ``config`` describes."""
    return init_params(key, config.vocab_size, config.num_hiddens, config.sigma)


def zero_state(config: ModelConfig, batch_size: int) -> Hidden:
    """The zero hidden state for a batch of ``batch_size``."""
    return init_state(batch_size, config.num_hiddens)


def apply(
    config: ModelConfig, params: Params, tokens: Tokens, state: Hidden
) -> tuple[Logits, Hidden]:
    """``forward`` of the model ``config`` describes."""
    del config  # one cell so far; the config will select it
    return forward(params, tokens, state)


def step(
    config: ModelConfig, params: Params, state: Hidden, token: jax.Array
) -> tuple[Hidden, jax.Array]:
    """One step on ``token`` ``(B,)`` int: the sampler's unit. Returns (state, logits ``(B, V)``)."""
    del config
    h = jnp.tanh(params["W_xh"][token] + state @ params["W_hh"] + params["b_h"])
    return h, h @ params["W_hq"] + params["b_q"]


def num_params(params: Params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
