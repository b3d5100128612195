"""Generation after a prefix (D2L 9.5.4 ``predict_ch8``, 10.8 beam search), as jitted scans.

Shape legend: B prefixes generated together, P prefix length, N num_preds, V vocab,
K beam_size.

The prefix warms the state up (one ``apply`` over it, itself a scan); its last logits
give the first prediction, and each prediction is fed back for the next. A decoder picks
each token from the logits:

* greedy: the argmax;
* temperature: a sample from ``softmax(logits / temperature)``;
* top-k: the same, restricted to the ``k`` most likely tokens;
* top-p (nucleus): restricted to the smallest set of most likely tokens whose
  probability reaches ``p``;
* beam: the ``K`` best continuations by length-normalised log-probability.

Sampling is reproducible: ``generate`` draws step ``n`` of the whole batch with
``jax.random.split(key, N)[n]``, so the same key gives the same text. Temperature divides
the logits before top-k/top-p filter them.

``predict`` takes prefixes of any lengths: it runs each group of equal length as one
batch, and gives every row its own key so that the grouping cannot change a row's
text. The rule: with B prefixes, row ``i`` samples with ``row_key = split(key, B)[i]``
(or ``key[i]`` when ``key`` already holds B keys), and its step ``n`` with
``split(row_key, N)[n]`` (``generate_rows``). Prefix ``i`` generated alone with
``key=row_keys[i:i + 1]`` therefore gets exactly the text it gets in the call.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import model
from rnn_jax.config import ModelConfig, SamplingConfig
from rnn_jax.data import Vocab, decode, encode_prefixes

# ------------------------------------------------------------------ filters on logits (..., V)


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """``logits`` with all but the ``k`` largest of each row set to ``-inf``."""
    if k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
    """``logits`` restricted to the nucleus: the most likely tokens, in order, until their
    probability reaches ``p`` (the most likely token is always kept)."""
    if p >= 1:
        return logits
    probs = jax.nn.softmax(logits, axis=-1)
    sorted_probs = -jnp.sort(-probs, axis=-1)  # descending
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    kept = jnp.sum(mass_before < p, axis=-1, keepdims=True)  # >= 1
    threshold = jnp.take_along_axis(sorted_probs, kept - 1, axis=-1)
    return jnp.where(probs < threshold, -jnp.inf, logits)


def filter_logits(logits: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """The logits a stochastic strategy samples from: scaled by temperature, then filtered."""
    logits = logits / sampling.temperature
    if sampling.strategy == "top-k":
        logits = top_k_filter(logits, sampling.top_k)
    elif sampling.strategy == "top-p":
        logits = top_p_filter(logits, sampling.top_p)
    return logits


# ------------------------------------------------------------------ decoders


def _decode(model_config, params, prefix, num_preds, pick, keys):
    """Feed back ``pick(logits (B, V), key) -> (B,)`` for N steps after the prefix."""
    state = model.zero_state(model_config, prefix.shape[0])
    logits, state = model.apply(model_config, params, prefix, state)

    def body(carry, key):
        state, logits = carry
        token = pick(logits, key).astype(prefix.dtype)
        state, logits = model.step(model_config, params, state, token)
        return (state, logits), token

    _, tokens = jax.lax.scan(body, (state, logits[:, -1]), keys, length=num_preds)
    return tokens.T


@partial(jax.jit, static_argnames=("model_config", "num_preds"))
def greedy(
    model_config: ModelConfig, params: model.Params, prefix: jax.Array, num_preds: int
) -> jax.Array:
    """Argmax continuation ``(B, N)`` of the int ``prefix`` ``(B, P)``, P >= 1."""

    def pick(logits, key):
        return jnp.argmax(logits, axis=-1)

    return _decode(model_config, params, prefix, num_preds, pick, None)


@partial(jax.jit, static_argnames=("model_config", "num_preds", "sampling"))
def generate(
    model_config: ModelConfig,
    params: model.Params,
    prefix: jax.Array,
    num_preds: int,
    sampling: SamplingConfig,
    key: jax.Array,
) -> jax.Array:
    """Continuation ``(B, N)`` int of ``prefix`` ``(B, P)`` by ``sampling``'s strategy.

    ``key`` drives the stochastic strategies (greedy and beam ignore it); beam returns
    the best of its ``beam_size`` continuations.
    """
    if sampling.strategy == "greedy":
        return greedy(model_config, params, prefix, num_preds)
    if sampling.strategy == "beam":
        return beam_search(model_config, params, prefix, num_preds, sampling.beam_size)[0][:, 0]

    def pick(logits, key):
        return jax.random.categorical(key, filter_logits(logits, sampling), axis=-1)

    keys = jax.random.split(key, num_preds)
    return _decode(model_config, params, prefix, num_preds, pick, keys)


@partial(jax.jit, static_argnames=("model_config", "num_preds", "sampling"))
def generate_rows(
    model_config: ModelConfig,
    params: model.Params,
    prefix: jax.Array,
    num_preds: int,
    sampling: SamplingConfig,
    row_keys: jax.Array,
) -> jax.Array:
    """Continuation ``(B, N)`` of ``prefix`` ``(B, P)`` by a stochastic strategy, row ``b``
    drawing step ``n`` with ``split(row_keys[b], N)[n]``: a row's text depends on its
    prefix and its key only, not on the other rows."""
    if not sampling.stochastic:
        raise ValueError(f"generate_rows samples; strategy {sampling.strategy!r} does not")

    def pick(logits, keys):  # (B, V), (B,)
        filtered = filter_logits(logits, sampling)
        return jax.vmap(lambda k, row: jax.random.categorical(k, row))(keys, filtered)

    keys = jax.vmap(lambda k: jax.random.split(k, num_preds))(row_keys)  # (B, N)
    return _decode(model_config, params, prefix, num_preds, pick, keys.T)


@partial(jax.jit, static_argnames=("model_config", "num_preds", "beam_size", "alpha", "eos"))
def beam_search(
    model_config: ModelConfig,
    params: model.Params,
    prefix: jax.Array,
    num_preds: int,
    beam_size: int,
    alpha: float = 0.75,
    eos: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The ``K = beam_size`` best continuations of each prefix (D2L 10.8.3).

    Returns tokens ``(B, K, N)`` and their log-probabilities ``(B, K)``, best first.
    Candidates are ranked by the length-normalised score ``log P / L^alpha``, where a
    continuation's length ``L`` stops growing once it emits ``eos`` (after which it is
    padded with ``eos`` at no cost). Without ``eos`` every continuation has length N and
    the ranking is by log-probability. When fewer than K continuations exist, the rest
    have log-probability ``-inf``. With ``K >= V^(N-1)`` nothing is pruned before the
    last step, so the result is the exact top K; K = 1 is greedy.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    B, K, V = prefix.shape[0], beam_size, model_config.vocab_size
    state = model.zero_state(model_config, B)
    logits, state = model.apply(model_config, params, prefix, state)

    def repeat(x):  # (B, ...) -> (B K, ...), each prefix's row K times
        return jnp.repeat(x, K, axis=0)

    state = jax.tree.map(repeat, state)
    scores = jnp.full((B, K), -jnp.inf).at[:, 0].set(0.0)  # one live beam to start
    carry = (state, repeat(logits[:, -1]), scores, jnp.zeros((B, K)), jnp.zeros((B, K), bool))

    def body(carry, t):
        state, logits, scores, lengths, done = carry
        log_probs = jax.nn.log_softmax(logits, axis=-1).reshape(B, K, V)
        if eos is not None:  # a finished beam only extends with eos, at no cost
            pad = jnp.where(jnp.arange(V) == eos, 0.0, -jnp.inf)
            log_probs = jnp.where(done[..., None], pad, log_probs)
        new_lengths = jnp.where(done, lengths, t + 1.0)  # (B, K)
        candidates = (scores[..., None] + log_probs).reshape(B, K * V)
        normalised = candidates / jnp.repeat(new_lengths, V, axis=1) ** alpha
        _, index = jax.lax.top_k(normalised, K)  # (B, K), best first
        beam, token = index // V, (index % V).astype(prefix.dtype)
        scores = jnp.take_along_axis(candidates, index, axis=1)
        lengths = jnp.take_along_axis(new_lengths, beam, axis=1)
        done = jnp.take_along_axis(done, beam, axis=1)
        if eos is not None:
            done = done | (token == eos)
        rows = (jnp.arange(B)[:, None] * K + beam).reshape(-1)  # flat (B K) rows to keep
        state = jax.tree.map(lambda x: x[rows], state)
        state, logits = model.step(model_config, params, state, token.reshape(-1))
        return (state, logits, scores, lengths, done), (beam, token)

    (_, _, scores, _, _), (beams, tokens) = jax.lax.scan(
        body, carry, jnp.arange(num_preds, dtype=jnp.float32)
    )

    def backtrack(beam, step):  # follow each final beam's parents from the last step back
        parents, tokens = step
        return jnp.take_along_axis(parents, beam, axis=1), jnp.take_along_axis(tokens, beam, 1)

    last = jnp.broadcast_to(jnp.arange(K), (B, K))
    _, tokens = jax.lax.scan(backtrack, last, (beams, tokens), reverse=True)  # (N, B, K)
    return jnp.moveaxis(tokens, 0, -1), scores


# ------------------------------------------------------------------ text in, text out


def _row_keys(key: jax.Array, num_rows: int) -> jax.Array:
    """``num_rows`` keys: ``split(key, num_rows)`` for one key, ``key`` itself for a
    ``(num_rows,)`` array of keys (raw uint32 keys are wrapped first)."""
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    if key.shape == ():
        return jax.random.split(key, num_rows)
    if key.shape != (num_rows,):
        raise ValueError(f"key must be one key or {num_rows} keys, got shape {key.shape}")
    return key


def predict(
    prefixes: str | list[str],
    num_preds: int,
    model_config: ModelConfig,
    params: model.Params,
    vocab: Vocab,
    token: str = "char",
    *,
    sampling: SamplingConfig | None = None,
    key: jax.Array | None = None,
    preprocess: str = "book",
) -> str | list[str]:
    """The book's ``predict_ch8``: each prefix followed by its continuation, greedy unless
    ``sampling`` says otherwise (the stochastic strategies need ``key``: one key, or one
    per prefix; see the module docstring for the per-row rule).

    Prefixes may differ in length: each group of equal length runs as one batch, and a
    prefix gets the same text whichever prefixes share the call. ``preprocess`` is the
    corpus's (``"book"`` or ``"raw"``), for ``encode``'s checks. Char tokens are
    appended as they are; word tokens are joined with spaces.
    """
    single = isinstance(prefixes, str)
    batch = [prefixes] if single else list(prefixes)
    if num_preds <= 0:
        raise ValueError(f"num_preds must be positive, got {num_preds}")
    sampling = sampling or SamplingConfig()
    if sampling.stochastic and key is None:
        raise ValueError(f"strategy {sampling.strategy!r} samples, so it needs a PRNG key")
    encoded = encode_prefixes(batch, vocab, token, preprocess)
    row_keys = _row_keys(key, len(batch)) if sampling.stochastic else None
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        groups.setdefault(len(ids), []).append(i)
    outputs: list[np.ndarray] = [np.zeros(0, np.int32)] * len(batch)
    for rows in groups.values():
        prefix = np.stack([encoded[i] for i in rows])
        if sampling.stochastic:
            ids = generate_rows(
                model_config, params, prefix, num_preds, sampling, row_keys[np.asarray(rows)]
            )
        else:  # greedy and beam ignore the key
            ids = generate(model_config, params, prefix, num_preds, sampling, jax.random.key(0))
        for i, row in zip(rows, np.asarray(ids), strict=True):
            outputs[i] = row
    sep = "" if token == "char" else " "
    texts = [p + sep + decode(row, vocab, token) for p, row in zip(batch, outputs, strict=True)]
    return texts[0] if single else texts
