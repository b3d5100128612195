"""The book's RNN language models as pure functions over parameter pytrees (D2L 9.5, 10.1-10.3).

Shape legend: B batch, T time (num_steps), V vocab_size, H num_hiddens, L num_layers.

    h_t = tanh(x_t W_xh + h_{t-1} W_hh + b_h)      x_t one-hot (B, V), h_t (B, H)
    y_t = h_t W_hq + b_q                           y_t logits (B, V)

``rnn_step`` is that equation, written as in the book. ``forward`` computes the same
numbers faster, and the tests hold the two equal:

* the input side ``x_t W_xh + b_h`` does not depend on ``h``, so it is done for all
  ``T`` steps before the scan, as a row gather of ``W_xh`` (``one_hot(x) @ W == W[x]``);
* only ``h_{t-1} W_hh`` and ``tanh`` stay inside ``jax.lax.scan``;
* the head ``h_t W_hq + b_q`` is one matmul over all steps after the scan;
* the backward pass of the scan (``_recurrence``'s hand-written VJP) returns the gradient
  of ``W_hh`` as one ``(H, T B) @ (T B, H)`` matmul after the reverse scan, rather than
  summing ``T`` small outer products inside it; forward mode (``jax.jvp``, ``jacfwd``)
  runs that VJP transposed (see ``rnn_jax/cells.py``).

``init``, ``zero_state``, ``apply`` and ``step`` build the model a ``ModelConfig``
describes (any cell of ``rnn_jax.cells``, stacked, with dropout between layers) the same
fast way; ``reference_apply`` is its slow twin over the book's steps. These four are what
the train step, evaluation, sampling and checkpoints call.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rnn_jax import cells
from rnn_jax.config import ModelConfig

Params = dict[str, Any]  # book names -> arrays; stacked models nest one dict per layer
Hidden = jax.Array  # (B, H)
State = Any  # Hidden, (H, C) for the LSTM, or a tuple of one per layer
Tokens = jax.Array  # (B, T) int32
Logits = jax.Array  # (B, T, V)


def init_params(key: jax.Array, vocab_size: int, num_hiddens: int, sigma: float = 0.01) -> Params:
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
    """One step of the book: ``x`` one-hot ``(B, V)`` -> (``h`` ``(B, H)``, logits ``(B, V)``)."""
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


def _recurrence(W_hh: jax.Array, XW: jax.Array, h0: Hidden) -> tuple[jax.Array, Hidden]:
    """``h_t = tanh(XW_t + h_{t-1} W_hh)``: all ``h_t`` ``(T, B, H)`` and ``h_T`` (fast VJP)."""
    return cells.activation_recurrence("tanh", W_hh, XW, h0)


# ---------------------------------------------------------------- by configuration
#
# The language model any ``ModelConfig`` describes: ``num_layers`` cells of one kind
# (``cells.REGISTRY``: the book's rnn, gru, lstm; mingru, minlstm, lru), layer 0 fed the
# one-hot tokens and layer k the outputs of layer k-1 (D2L 10.3), then the head
# ``H W_hq + b_q`` on the last layer.
#
# Params: {"layer_0": {book names of the cell}, ..., "layer_{L-1}": {...}, "W_hq", "b_q"}.
# State: the cell's state (``(B, H)``; the lstm's ``(H, C)``, the lru's ``(Re S, Im S)``)
# for one layer, a tuple of one per layer for several.


def cell_of(config: ModelConfig) -> cells.Cell:
    return cells.get(config.cell, config.nonlinearity, config.scan)


def init(config: ModelConfig, key: jax.Array) -> Params:
    """Parameters of the model ``config`` describes.

    ``config.init="normal"``: the book's weights ~ N(0, sigma^2), biases zero.
    ``"uniform"``: PyTorch's defaults, every cell weight and bias ~ U(-1/sqrt(H),
    1/sqrt(H)) (``cells.init_gates``), and the head ``W_hq``, ``b_q`` ~ the same
    U(-1/sqrt(H), 1/sqrt(H)), which is ``nn.Linear(H, V)``'s init (fan-in H).
    """
    cell = cell_of(config)
    V, H, L = config.vocab_size, config.num_hiddens, config.num_layers
    *layer_keys, k_hq = jax.random.split(key, L + 1)
    params: Params = {
        f"layer_{l}": cell.init(k, V if l == 0 else H, H, config.sigma, init=config.init)
        for l, k in enumerate(layer_keys)
    }
    if config.init == "uniform":
        k_w, k_b = jax.random.split(k_hq)
        bound = 1 / H**0.5
        params["W_hq"] = jax.random.uniform(k_w, (H, V), minval=-bound, maxval=bound)
        params["b_q"] = jax.random.uniform(k_b, (V,), minval=-bound, maxval=bound)
        return params
    params["W_hq"] = config.sigma * jax.random.normal(k_hq, (H, V))
    params["b_q"] = jnp.zeros((V,))
    return params


def zero_state(config: ModelConfig, batch_size: int) -> State:
    """The zero state for a batch of ``batch_size`` (one per layer when stacked)."""
    cell = cell_of(config)
    # A fresh array per layer: the train step donates the state, and a buffer shared by
    # two leaves cannot be donated twice.
    H, L = config.num_hiddens, config.num_layers
    return _unstack(config, tuple(cell.init_state(batch_size, H) for _ in range(L)))


def apply(
    config: ModelConfig,
    params: Params,
    tokens: Tokens,
    state: State,
    *,
    key: jax.Array | None = None,
) -> tuple[Logits, State]:
    """Run the model over ``tokens`` ``(B, T)`` from ``state``: logits ``(B, T, V)``, state.

    The fast path: each layer's input projection is hoisted out of its scan (a gather of
    the fused ``W_x`` rows for the one-hot layer 0), the cell's recurrence has a
    hand-written VJP (which also serves ``jax.jvp``, transposed), and the head is one
    matmul after the last scan. With ``key`` (training) and
    ``config.dropout > 0``, dropout is applied to the outputs of every layer but the last.

    With ``config.compute_dtype`` bfloat16 the cells' weights (``W_*``, ``b_*``) and
    ``state`` are cast to bfloat16 on the way in, so the projections and recurrences
    (forward and custom VJP) run in bfloat16 and the gradients come back float32 through
    the casts (the cells of ``linear_cells`` run their recurrences in float32); the head
    multiplies bfloat16 operands into float32 logits, and the returned state has
    ``state``'s dtype (float32 from ``zero_state``).
    """
    cell = cell_of(config)
    compute = jnp.dtype(config.compute_dtype)
    mixed = compute != jnp.float32
    if mixed:
        out_dtypes = jax.tree.map(lambda x: x.dtype, state)
        params = {
            k: _cast_weights(v, compute) if k.startswith("layer_") else v for k, v in params.items()
        }
        state = _cast(state, compute)
    states = _stack(config, state)
    new_states = []
    Hs = None
    for l in range(config.num_layers):
        layer = params[f"layer_{l}"]
        if l == 0:
            XW = cells.project_tokens(cell, layer, tokens.T)  # (T, B, G H)
        else:
            XW = cells.project(cell, layer, _dropout(config, key, l - 1, Hs))
        Hs, layer_state = cell.recurrence(layer, XW, states[l])  # (T, B, H)
        new_states.append(layer_state)
    if mixed:
        W_hq = params["W_hq"].astype(compute)
        logits = jnp.matmul(Hs, W_hq, preferred_element_type=jnp.float32) + params["b_q"]
        new_state = jax.tree.map(jnp.astype, _unstack(config, tuple(new_states)), out_dtypes)
        return jnp.swapaxes(logits, 0, 1), new_state
    logits = Hs @ params["W_hq"] + params["b_q"]  # (T, B, V)
    return jnp.swapaxes(logits, 0, 1), _unstack(config, tuple(new_states))


def _cast_weights(layer: Params, dtype: jnp.dtype) -> Params:
    """The matmul weights and biases ``W_*``, ``b_*`` of a layer cast to ``dtype``; the rest
    (the LRU's eigenvalues and output projection, used inside its recurrence) as they are."""
    return {k: v.astype(dtype) if k[:2] in ("W_", "b_") else v for k, v in layer.items()}


def _cast(tree: Any, dtype: jnp.dtype) -> Any:
    return jax.tree.map(lambda x: x.astype(dtype), tree)


def reference_apply(
    config: ModelConfig,
    params: Params,
    tokens: Tokens,
    state: State,
    *,
    key: jax.Array | None = None,
) -> tuple[Logits, State]:
    """``apply`` written plainly (the slow reference): per layer, a ``lax.scan`` of the
    book's ``cell.step`` on one-hot inputs, the same dropout masks, the head per step."""
    cell = cell_of(config)
    states = _stack(config, state)
    X = jax.nn.one_hot(tokens.T, config.vocab_size, dtype=params["W_hq"].dtype)  # (T, B, V)
    new_states = []
    for l in range(config.num_layers):
        if l > 0:
            X = _dropout(config, key, l - 1, X)
        layer = params[f"layer_{l}"]
        layer_state, X = jax.lax.scan(lambda s, x, p=layer: cell.step(p, s, x), states[l], X)
        new_states.append(layer_state)
    logits = jax.vmap(lambda h: h @ params["W_hq"] + params["b_q"])(X)
    return jnp.swapaxes(logits, 0, 1), _unstack(config, tuple(new_states))


def step(
    config: ModelConfig, params: Params, state: State, token: jax.Array
) -> tuple[State, jax.Array]:
    """One step on ``token`` ``(B,)`` int, the sampler's unit: (state, logits ``(B, V)``)."""
    logits, state = apply(config, params, token[:, None], state)
    return state, logits[:, 0]


def _dropout(config: ModelConfig, key: jax.Array | None, layer: int, X: jax.Array) -> jax.Array:
    """Inverted dropout on layer ``layer``'s outputs; the identity without ``key``."""
    if key is None or config.dropout == 0:
        return X
    keep = 1 - config.dropout
    mask = jax.random.bernoulli(jax.random.fold_in(key, layer), keep, X.shape)
    return jnp.where(mask, X / keep, 0).astype(X.dtype)


def _stack(config: ModelConfig, state: State) -> tuple[State, ...]:
    return (state,) if config.num_layers == 1 else tuple(state)


def _unstack(config: ModelConfig, states: tuple[State, ...]) -> State:
    return states[0] if config.num_layers == 1 else states


def num_params(params: Params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
