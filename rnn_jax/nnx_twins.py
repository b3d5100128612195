"""Twins of the scratch models in Flax NNX, Flax's current API (beside the ``flax.linen``
twins of ``rnn_jax.flax_twins``).

Shape legend: B batch, T time, V vocab_size, H num_hiddens, L num_layers, G gate blocks.

``NNXLM`` is the language model of ``rnn_jax.model`` as an ``nnx.Module``: one-hot tokens,
``num_layers`` ``nnx.RNN``s over ``nnx.SimpleCell`` / ``BookGRUCell`` /
``nnx.OptimizedLSTMCell`` with ``nnx.Dropout`` between them (masks drawn from the
``rngs`` a call is given, none without), and an ``nnx.Linear`` head. ``from_scratch``
builds one holding a scratch parameter pytree, so the tests can hold the two equal.

NNX's cells fuse their gates: one input-side ``dense_i`` ``(D, G H)`` and one hidden-side
``dense_h`` ``(H, G H)`` per cell, the blocks in the order ``NNX_GATES`` lists (in Flax's
gate letters, those of the linen cells' names). The copy takes the linen map
(``flax_twins.cell_variables``: which book weight is which Flax gate, which side holds the
bias) and lays its blocks side by side. Where the conventions differ:

* LSTM: Flax's gates are ``i, f, g, o`` (``g`` the book's candidate ``c``), one bias per
  gate kept on the hidden side, the carry ``(C, H)`` where the book has ``(H, C)``
  (``flax_twins.to_flax_carries`` swaps it). Same equations: ``nnx.OptimizedLSTMCell``
  is used as it is.
* GRU: ``nnx.GRUCell``, like linen's, cuDNN's and ``torch.nn.GRU``, applies the reset
  gate *after* the hidden matmul, and, unlike linen's, has no hidden-side bias at all:

      book:  H~ = tanh(X W_xh + b_h + (R * H) W_hh)
      NNX:   n  = tanh(X W_in + b_in + R * (H W_hn))

  These are different functions of the same weights, so the twin's GRU is
  ``BookGRUCell``: ``nnx.GRUCell``'s parameters and layout (``r, z, n``), with the book's
  candidate in its ``__call__``. The stock cell loads the same parameters and the tests
  compare it against a reference of its own equations.
* RNN: ``nnx.SimpleCell`` is the book's cell, its bias on the input side.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rnn_jax import flax_twins
from rnn_jax.config import ModelConfig

# NNX's fused blocks, in order, as Flax gate letters ("" for the RNN's single block)
NNX_GATES = {"rnn": ("",), "gru": ("r", "z", "n"), "lstm": ("i", "f", "g", "o")}


class BookGRUCell(nnx.GRUCell):
    """``nnx.GRUCell`` with the book's candidate: the reset gate applied *before* the
    hidden matmul, ``n = tanh(X W_in + b_in + (R * H) W_hn)`` (D2L 10.2)."""

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = carry  # (B, H)
        xi_r, xi_z, xi_n = jnp.split(self.dense_i(inputs), 3, axis=-1)
        W_hrz, W_hn = jnp.split(self.dense_h.kernel[...], [2 * self.hidden_features], axis=1)
        hh_r, hh_z = jnp.split(h @ W_hrz, 2, axis=-1)
        r = self.gate_fn(xi_r + hh_r)
        z = self.gate_fn(xi_z + hh_z)
        n = self.activation_fn(xi_n + (r * h) @ W_hn)
        new_h = (1.0 - z) * n + z * h
        return new_h, new_h


def nnx_cell(config: ModelConfig, in_features: int, *, rngs: nnx.Rngs) -> nnx.RNNCellBase:
    """The NNX cell of the twin for ``config.cell``, ``in_features`` -> ``num_hiddens``."""
    H = config.num_hiddens
    if config.cell == "rnn":
        activation = jnp.tanh if config.nonlinearity == "tanh" else jax.nn.relu
        return nnx.SimpleCell(in_features, H, activation_fn=activation, rngs=rngs)
    if config.cell == "gru":
        return BookGRUCell(in_features, H, rngs=rngs)
    return nnx.OptimizedLSTMCell(in_features, H, rngs=rngs)


class NNXLM(nnx.Module):
    """One-hot tokens -> ``num_layers`` NNX RNNs -> linear head, with dropout between layers."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        V, H = config.vocab_size, config.num_hiddens
        self.config = config
        self.layers = nnx.List(
            nnx.RNN(nnx_cell(config, V if l == 0 else H, rngs=rngs), return_carry=True, rngs=False)
            for l in range(config.num_layers)
        )
        self.dropout = nnx.Dropout(config.dropout)
        self.head = nnx.Linear(H, V, rngs=rngs)

    def __call__(
        self, tokens: jax.Array, carries: tuple[Any, ...], *, rngs: nnx.Rngs | None = None
    ) -> tuple[jax.Array, tuple[Any, ...]]:
        """Logits ``(B, T, V)`` for ``tokens`` ``(B, T)`` and the final carries (one per
        layer, in Flax's layout: ``flax_twins.to_flax_carries``). With ``rngs``
        (training) dropout is applied between the layers; without, it is not."""
        X = jax.nn.one_hot(tokens, self.config.vocab_size)
        new_carries = []
        for l, rnn in enumerate(self.layers):
            if l > 0:
                X = self.dropout(X, deterministic=rngs is None, rngs=rngs)
            carry, X = rnn(X, initial_carry=carries[l])
            new_carries.append(carry)
        return self.head(X), tuple(new_carries)


def cell_params(config: ModelConfig, params: dict[str, jax.Array]) -> dict[str, Any]:
    """One layer's scratch parameters (book names) as an NNX cell's fused ``dense_i`` and
    ``dense_h``: the linen map's blocks side by side, in ``NNX_GATES`` order."""
    linen = flax_twins.cell_variables(config, params)
    bias_side = "h" if config.cell == "lstm" else "i"  # NNX's cells have one bias side
    out: dict[str, Any] = {}
    for side in ("i", "h"):
        blocks = [linen[side + gate] for gate in NNX_GATES[config.cell]]
        out[f"dense_{side}"] = {"kernel": jnp.concatenate([b["kernel"] for b in blocks], 1)}
        if side == bias_side:
            out[f"dense_{side}"]["bias"] = jnp.concatenate([b["bias"] for b in blocks])
    return out


def lm_params(config: ModelConfig, params: dict[str, Any]) -> dict[str, Any]:
    """The scratch model's parameters (``rnn_jax.model.init`` layout) as ``NNXLM``'s
    parameters, a pure dict (``nnx.to_pure_dict`` layout)."""
    return {
        "layers": {
            l: {"cell": cell_params(config, params[f"layer_{l}"])} for l in range(config.num_layers)
        },
        "head": {"kernel": jnp.asarray(params["W_hq"]), "bias": jnp.asarray(params["b_q"])},
    }


def from_scratch(config: ModelConfig, params: dict[str, Any]) -> NNXLM:
    """An ``NNXLM`` holding the scratch parameters ``params`` (Flax's initializers are
    never run: the module is built abstractly, then filled)."""
    lm = nnx.eval_shape(lambda: NNXLM(config, rngs=nnx.Rngs(0)))
    state = nnx.state(lm, nnx.Param)
    nnx.replace_by_pure_dict(state, lm_params(config, params))
    nnx.update(lm, state)
    return lm
