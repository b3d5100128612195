"""Concise twins of the scratch models, built from Flax's cells (the book's "concise
implementation" sections, D2L 9.6, 10.1.2, 10.2.2, 10.3.2).

Shape legend: B batch, T time, V vocab_size, H num_hiddens, L num_layers.

``ConciseLM`` is the language model of ``rnn_jax.model`` written with ``flax.linen``:
``nn.RNN`` over ``nn.SimpleCell`` / ``nn.GRUCell`` / ``nn.LSTMCell``, one per layer, and
an ``nn.Dense`` head. ``lm_variables`` maps the scratch parameter pytree into it, so the
tests can hold the two equal.

Where the equations agree, the map is one-to-one: the tanh (or relu) RNN and the LSTM
(Flax names the LSTM's gates ``ii/hi, if/hf, io/ho, ig/hg``, keeps one bias per gate on
the hidden side and its carry as ``(C, H)``, not the book's ``(H, C)``). The GRU differs:
Flax, like cuDNN and ``torch.nn.GRU``, applies the reset gate *after* the hidden matmul,

    book:  H~ = tanh(X W_xh + (R * H) W_hh + b_h)
    Flax:  n  = tanh(X W_in + b_in + R * (H W_hn + b_hn))

so the candidate has an extra bias ``b_hn`` (set to zero by the map), and the two cells
give different numbers from the same weights. Flax's form lets all three hidden-side
matmuls run as one; the book's needs ``R`` before its candidate's matmul. The tests
compare Flax's GRU against a reference of Flax's equations instead.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnn_jax.config import ModelConfig

# book gate suffix -> Flax's (input-side, hidden-side) Dense names, per cell
FLAX_NAMES = {
    "rnn": {"h": ("i", "h")},
    "gru": {"z": ("iz", "hz"), "r": ("ir", "hr"), "h": ("in", "hn")},
    "lstm": {"i": ("ii", "hi"), "f": ("if", "hf"), "o": ("io", "ho"), "c": ("ig", "hg")},
}


def flax_cell(config: ModelConfig, **kwargs: Any) -> nn.RNNCellBase:
    """Flax's cell for ``config.cell``, ``num_hiddens`` wide (``kwargs`` go to the module)."""
    H = config.num_hiddens
    if config.cell == "rnn":
        activation = jnp.tanh if config.nonlinearity == "tanh" else nn.relu
        return nn.SimpleCell(features=H, activation_fn=activation, **kwargs)
    if config.cell == "gru":
        return nn.GRUCell(features=H, **kwargs)
    return nn.LSTMCell(features=H, **kwargs)


class ConciseLM(nn.Module):
    """One-hot tokens -> ``num_layers`` Flax RNNs -> dense head, with dropout between layers."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self, tokens: jax.Array, carries: tuple[Any, ...], *, deterministic: bool = True
    ) -> tuple[jax.Array, tuple[Any, ...]]:
        """Logits ``(B, T, V)`` for ``tokens`` ``(B, T)`` and the final carries (one per
        layer, in Flax's layout). Dropout needs an rng ``"dropout"`` when not deterministic.
        """
        config = self.config
        X = jax.nn.one_hot(tokens, config.vocab_size)
        new_carries = []
        for l in range(config.num_layers):
            if l > 0:
                X = nn.Dropout(config.dropout, deterministic=deterministic)(X)
            cell = flax_cell(config, parent=None)  # adopted by the RNN as its "cell"
            rnn = nn.RNN(cell, return_carry=True, name=f"layer_{l}")
            carry, X = rnn(X, initial_carry=carries[l])
            new_carries.append(carry)
        return nn.Dense(config.vocab_size, name="head")(X), tuple(new_carries)


def cell_variables(config: ModelConfig, params: dict[str, jax.Array]) -> dict[str, Any]:
    """One layer's scratch parameters (book names) as Flax's cell parameters."""
    out: dict[str, Any] = {}
    for gate, (name_x, name_h) in FLAX_NAMES[config.cell].items():
        out[name_x] = {"kernel": params[f"W_x{gate}"]}
        out[name_h] = {"kernel": params[f"W_h{gate}"]}
        b = params[f"b_{gate}"]
        if config.cell == "lstm":  # Flax keeps the LSTM's biases on the hidden side
            out[name_h]["bias"] = b
        else:
            out[name_x]["bias"] = b
    if config.cell == "gru":  # Flax's candidate has a hidden-side bias the book has not
        out["hn"]["bias"] = jnp.zeros_like(params["b_h"])
    return out


def lm_variables(config: ModelConfig, params: dict[str, Any]) -> dict[str, Any]:
    """The scratch model's parameters (``rnn_jax.model.init`` layout) as ``ConciseLM``'s."""
    tree: dict[str, Any] = {
        f"layer_{l}": {"cell": cell_variables(config, params[f"layer_{l}"])}
        for l in range(config.num_layers)
    }
    tree["head"] = {"kernel": params["W_hq"], "bias": params["b_q"]}
    return {"params": tree}


def to_flax_carries(config: ModelConfig, state: Any) -> tuple[Any, ...]:
    """A scratch state (``rnn_jax.model.zero_state`` layout) as Flax carries, one per layer."""
    states = (state,) if config.num_layers == 1 else tuple(state)
    if config.cell == "lstm":
        return tuple((C, H) for H, C in states)
    return states


def from_flax_carries(config: ModelConfig, carries: tuple[Any, ...]) -> Any:
    """The inverse of ``to_flax_carries``."""
    if config.cell == "lstm":
        carries = tuple((H, C) for C, H in carries)
    return carries[0] if config.num_layers == 1 else tuple(carries)
