"""Generation after a prefix (D2L 9.5.4, ``predict_ch8``), as jitted ``lax.scan``s.

Shape legend: B prefixes generated together, P prefix length, N num_preds, V vocab.

The prefix warms the hidden state up (one ``apply`` over it, itself a scan); its last
logits give the first prediction, and each prediction is fed back for the next.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import model
from rnn_jax.config import ModelConfig
from rnn_jax.data import Vocab, decode, encode


@partial(jax.jit, static_argnames=("model_config", "num_preds"))
def greedy(
    model_config: ModelConfig, params: model.Params, prefix: jax.Array, num_preds: int
) -> jax.Array:
    """Argmax continuation ``(B, N)`` of the int ``prefix`` ``(B, P)``, P >= 1."""
    state = model.zero_state(model_config, prefix.shape[0])
    logits, state = model.apply(model_config, params, prefix, state)
    first = jnp.argmax(logits[:, -1], axis=-1).astype(prefix.dtype)

    def body(carry, _):
        state, token = carry
        state, logits = model.step(model_config, params, state, token)
        next_token = jnp.argmax(logits, axis=-1).astype(token.dtype)
        return (state, next_token), token

    _, tokens = jax.lax.scan(body, (state, first), None, length=num_preds)
    return tokens.T


def encode_prefixes(prefixes: list[str], vocab: Vocab, token: str = "char") -> np.ndarray:
    """Prefixes -> int32 ``(B, P)``; refuses unknown tokens and unequal lengths."""
    if not prefixes:
        raise ValueError("need at least one prefix")
    encoded = [encode(p, vocab, token) for p in prefixes]
    lengths = {len(e) for e in encoded}
    if 0 in lengths:
        raise ValueError("a prefix must hold at least one token")
    if len(lengths) > 1:
        raise ValueError(
            f"prefixes generated together must have equal lengths, got {sorted(lengths)}"
        )
    return np.stack(encoded)


def predict(
    prefixes: str | list[str],
    num_preds: int,
    model_config: ModelConfig,
    params: model.Params,
    vocab: Vocab,
    token: str = "char",
) -> str | list[str]:
    """The book's ``predict_ch8``: each prefix followed by its greedy continuation."""
    single = isinstance(prefixes, str)
    batch = [prefixes] if single else list(prefixes)
    if num_preds <= 0:
        raise ValueError(f"num_preds must be positive, got {num_preds}")
    out = np.asarray(greedy(model_config, params, encode_prefixes(batch, vocab, token), num_preds))
    sep = "" if token == "char" else " "
    texts = [p + sep + decode(row, vocab, token) for p, row in zip(batch, out, strict=True)]
    return texts[0] if single else texts
