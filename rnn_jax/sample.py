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
``jax.random.fold_in(key, n)``, so the same key gives the same text. Temperature divides
the logits before top-k/top-p filter them.

``predict`` takes prefixes of any lengths: it runs each group of equal length as one
batch, and gives every row its own key so that the grouping cannot change a row's
text. The rule: with B prefixes, row ``i`` samples with ``row_key = split(key, B)[i]``
(or ``key[i]`` when ``key`` already holds B keys), and its step ``n`` with
``fold_in(row_key, n)`` (``generate_rows``). Prefix ``i`` generated alone with
``key=row_keys[i:i + 1]`` therefore gets exactly the text it gets in the call.

Generation can also run a chunk of tokens at a time (``Generation``, which the command
line's ``sample`` uses to print text as it comes and to stop between chunks): a chunk
is a jitted scan that starts from the state and logits (or beams) the previous one
left (``generate_chunk``). Step ``n``'s key depends on ``n`` alone, not on where a chunk
starts or how long it is, so the chunks give exactly the tokens of one long scan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import model
from rnn_jax.config import ModelConfig, SamplingConfig
from rnn_jax.data import Vocab, decode, encode_prefixes

Carry = tuple[model.State, jax.Array]  # the state after the tokens so far, and logits (B, V)
ALPHA = 0.75  # beam search's length normalisation: score = log P / L^alpha
Pick = Callable[[jax.Array, jax.Array], jax.Array]  # (logits (B, V), step n) -> tokens (B,)

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


# ------------------------------------------------------------------ pickers: logits -> tokens


def _argmax(logits: jax.Array, n: jax.Array) -> jax.Array:
    return jnp.argmax(logits, axis=-1)


def _draw(sampling: SamplingConfig, key: jax.Array) -> Pick:
    """Step ``n`` of every row drawn with the one key ``fold_in(key, n)``."""

    def pick(logits, n):
        return jax.random.categorical(jax.random.fold_in(key, n), filter_logits(logits, sampling))

    return pick


def _draw_rows(sampling: SamplingConfig, row_keys: jax.Array) -> Pick:
    """Step ``n`` of row ``b`` drawn with ``fold_in(row_keys[b], n)``."""

    def pick(logits, n):  # (B, V), ()
        keys = jax.vmap(jax.random.fold_in, (0, None))(row_keys, n)
        return jax.vmap(jax.random.categorical)(keys, filter_logits(logits, sampling))

    return pick


# ------------------------------------------------------------------ decoders


def warm_up(model_config: ModelConfig, params: model.Params, prefix: jax.Array) -> Carry:
    """The state after reading the int ``prefix`` ``(B, P)``, P >= 1, and the logits
    ``(B, V)`` that predict the first generated token."""
    state = model.zero_state(model_config, prefix.shape[0])
    logits, state = model.apply(model_config, params, prefix, state)
    return state, logits[:, -1]


def _continue(
    model_config: ModelConfig, params: model.Params, carry: Carry, pick: Pick, steps: jax.Array
) -> tuple[Carry, jax.Array]:
    """Feed back ``pick(logits, n)`` at each step ``n`` of ``steps`` ``(N,)``: the carry
    after them, and the tokens ``(B, N)``."""

    def body(carry, n):
        state, logits = carry
        token = pick(logits, n).astype(jnp.int32)
        state, logits = model.step(model_config, params, state, token)
        return (state, logits), token

    carry, tokens = jax.lax.scan(body, carry, steps)
    return carry, tokens.T


@partial(jax.jit, static_argnames=("model_config", "num_preds"))
def greedy(
    model_config: ModelConfig, params: model.Params, prefix: jax.Array, num_preds: int
) -> jax.Array:
    """Argmax continuation ``(B, N)`` int32 of the int ``prefix`` ``(B, P)``, P >= 1."""
    carry = warm_up(model_config, params, prefix)
    return _continue(model_config, params, carry, _argmax, jnp.arange(num_preds))[1]


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
    carry = warm_up(model_config, params, prefix)
    pick = _draw(sampling, key)
    return _continue(model_config, params, carry, pick, jnp.arange(num_preds))[1]


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
    drawing step ``n`` with ``fold_in(row_keys[b], n)``: a row's text depends on its
    prefix and its key only, not on the other rows."""
    if not sampling.stochastic:
        raise ValueError(f"generate_rows samples; strategy {sampling.strategy!r} does not")
    carry = warm_up(model_config, params, prefix)
    pick = _draw_rows(sampling, row_keys)
    return _continue(model_config, params, carry, pick, jnp.arange(num_preds))[1]


# ------------------------------------------------------------------ beam search


class Beams(NamedTuple):
    """The K beams of each of B prefixes between steps: the state and next logits of
    each beam (rows ``b K + k``), their log-probabilities and lengths ``(B, K)``, and
    whether each has emitted ``eos``."""

    state: model.State
    logits: jax.Array  # (B K, V)
    scores: jax.Array  # (B, K) log P of each beam; -inf for none yet
    lengths: jax.Array  # (B, K) float
    done: jax.Array  # (B, K) bool


def beam_start(
    model_config: ModelConfig, params: model.Params, prefix: jax.Array, beam_size: int
) -> Beams:
    """One live beam per prefix ``(B, P)`` (K - 1 empty ones beside it), after the prefix."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    B, K = prefix.shape[0], beam_size
    state, logits = warm_up(model_config, params, prefix)

    def repeat(x):  # (B, ...) -> (B K, ...), each prefix's row K times
        return jnp.repeat(x, K, axis=0)

    scores = jnp.full((B, K), -jnp.inf).at[:, 0].set(0.0)
    zeros = jnp.zeros((B, K))
    return Beams(jax.tree.map(repeat, state), repeat(logits), scores, zeros, zeros.astype(bool))


def _beam_continue(
    model_config: ModelConfig,
    params: model.Params,
    beams: Beams,
    steps: jax.Array,
    alpha: float,
    eos: int | None,
) -> tuple[Beams, tuple[jax.Array, jax.Array]]:
    """Beam search over ``steps`` ``(N,)`` (float step numbers, from 0): the beams after
    them, and per step each new beam's parent beam and token, both ``(N, B, K)``."""
    B, K = beams.scores.shape
    V = model_config.vocab_size

    def body(beams, t):
        log_probs = jax.nn.log_softmax(beams.logits, axis=-1).reshape(B, K, V)
        if eos is not None:  # a finished beam only extends with eos, at no cost
            pad = jnp.where(jnp.arange(V) == eos, 0.0, -jnp.inf)
            log_probs = jnp.where(beams.done[..., None], pad, log_probs)
        new_lengths = jnp.where(beams.done, beams.lengths, t + 1.0)  # (B, K)
        candidates = (beams.scores[..., None] + log_probs).reshape(B, K * V)
        normalised = candidates / jnp.repeat(new_lengths, V, axis=1) ** alpha
        _, index = jax.lax.top_k(normalised, K)  # (B, K), best first
        beam, token = index // V, (index % V).astype(jnp.int32)
        scores = jnp.take_along_axis(candidates, index, axis=1)
        lengths = jnp.take_along_axis(new_lengths, beam, axis=1)
        done = jnp.take_along_axis(beams.done, beam, axis=1)
        if eos is not None:
            done = done | (token == eos)
        rows = (jnp.arange(B)[:, None] * K + beam).reshape(-1)  # flat (B K) rows to keep
        state = jax.tree.map(lambda x: x[rows], beams.state)
        state, logits = model.step(model_config, params, state, token.reshape(-1))
        return Beams(state, logits, scores, lengths, done), (beam, token)

    return jax.lax.scan(body, beams, steps)


@jax.jit
def backtrack(parents: jax.Array, tokens: jax.Array) -> jax.Array:
    """The K final beams' tokens ``(B, K, N)``, followed from the last step back through
    each step's ``parents`` and ``tokens`` ``(N, B, K)``."""

    def back(beam, step):
        parents, tokens = step
        return jnp.take_along_axis(parents, beam, axis=1), jnp.take_along_axis(tokens, beam, 1)

    last = jnp.broadcast_to(jnp.arange(parents.shape[2]), parents.shape[1:])
    _, out = jax.lax.scan(back, last, (parents, tokens), reverse=True)  # (N, B, K)
    return jnp.moveaxis(out, 0, -1)


@partial(jax.jit, static_argnames=("model_config", "num_preds", "beam_size", "alpha", "eos"))
def beam_search(
    model_config: ModelConfig,
    params: model.Params,
    prefix: jax.Array,
    num_preds: int,
    beam_size: int,
    alpha: float = ALPHA,
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
    beams = beam_start(model_config, params, prefix, beam_size)
    steps = jnp.arange(num_preds, dtype=jnp.float32)
    beams, (parents, tokens) = _beam_continue(model_config, params, beams, steps, alpha, eos)
    return backtrack(parents, tokens), beams.scores


# ------------------------------------------------------------------ in chunks


@partial(jax.jit, static_argnames=("model_config", "sampling"))
def start_generation(
    model_config: ModelConfig, params: model.Params, prefix: jax.Array, sampling: SamplingConfig
) -> Carry | Beams:
    """What generation after ``prefix`` ``(B, P)`` carries into its first chunk: the
    beams for beam search, else ``warm_up``'s state and logits."""
    if sampling.strategy == "beam":
        return beam_start(model_config, params, prefix, sampling.beam_size)
    return warm_up(model_config, params, prefix)


@partial(jax.jit, static_argnames=("model_config", "num_preds", "sampling"))
def generate_chunk(
    model_config: ModelConfig,
    params: model.Params,
    carry: Carry | Beams,
    start: int | jax.Array,
    num_preds: int,
    sampling: SamplingConfig,
    row_keys: jax.Array | None = None,
) -> tuple[Carry | Beams, Any]:
    """Steps ``start .. start + N - 1`` of a generation from ``carry`` (``start_generation``'s
    or the previous chunk's): the carry after them, and their tokens ``(B, N)`` (greedy,
    or drawn as ``generate_rows`` draws with ``row_keys`` ``(B,)``) or, for beam search,
    each step's parents and tokens ``(N, B, K)`` (``backtrack`` over all chunks' steps
    gives the beams so far). Chunks passed on one carry give one long scan's tokens."""
    if sampling.strategy == "beam":
        steps = start + jnp.arange(num_preds, dtype=jnp.float32)
        return _beam_continue(model_config, params, carry, steps, ALPHA, None)
    pick = _draw_rows(sampling, row_keys) if sampling.stochastic else _argmax
    return _continue(model_config, params, carry, pick, start + jnp.arange(num_preds))


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


def _groups(
    prefixes: list[str],
    vocab: Vocab,
    token: str,
    preprocess: str,
    sampling: SamplingConfig,
    key: jax.Array | None,
) -> list[tuple[np.ndarray, np.ndarray, jax.Array | None]]:
    """The prefixes encoded and grouped by length: per group, its rows (indices into
    ``prefixes``), their ids ``(B_g, P_g)`` and their keys ``(B_g,)`` (None unless the
    strategy samples)."""
    if sampling.stochastic and key is None:
        raise ValueError(f"strategy {sampling.strategy!r} samples, so it needs a PRNG key")
    encoded = encode_prefixes(prefixes, vocab, token, preprocess)
    row_keys = _row_keys(key, len(prefixes)) if sampling.stochastic else None
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    return [
        (
            np.asarray(rows),
            np.stack([encoded[i] for i in rows]),
            None if row_keys is None else row_keys[np.asarray(rows)],
        )
        for rows in by_length.values()
    ]


def continuation_text(ids: Sequence[int] | np.ndarray, vocab: Vocab, token: str) -> str:
    """What generated ``ids`` add to a prefix: char tokens as they are, each word token
    after a space. Pieces of a continuation add up to the whole's text."""
    if len(ids) == 0:
        return ""
    return ("" if token == "char" else " ") + decode(ids, vocab, token)


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
    appended as they are; word tokens are joined with spaces. Each group is one long
    scan: the reference ``Generation``'s chunks are held to.
    """
    single = isinstance(prefixes, str)
    batch = [prefixes] if single else list(prefixes)
    if num_preds <= 0:
        raise ValueError(f"num_preds must be positive, got {num_preds}")
    sampling = sampling or SamplingConfig()
    outputs: list[np.ndarray] = [np.zeros(0, np.int32)] * len(batch)
    for rows, prefix, row_keys in _groups(batch, vocab, token, preprocess, sampling, key):
        if sampling.stochastic:
            ids = generate_rows(model_config, params, prefix, num_preds, sampling, row_keys)
        else:  # greedy and beam ignore the key
            ids = generate(model_config, params, prefix, num_preds, sampling, jax.random.key(0))
        for i, row in zip(rows, np.asarray(ids), strict=True):
            outputs[i] = row
    texts = [
        p + continuation_text(ids, vocab, token) for p, ids in zip(batch, outputs, strict=True)
    ]
    return texts[0] if single else texts


@dataclass
class _Group:
    """One group of equal-length prefixes while a ``Generation`` runs."""

    rows: np.ndarray  # their indices among the prefixes
    carry: Carry | Beams
    row_keys: jax.Array | None  # (B_g,) for the stochastic strategies
    chunks: list[Any] = field(default_factory=list)  # each chunk's ids (B_g, n) or beam steps


class Generation:
    """``predict``, a chunk of tokens at a time (``generate_chunk``).

    ``advance(n)`` generates ``n`` more tokens after every prefix and returns the text
    each gained (beam search returns ``""``: its best beam is known only when it stops);
    ``texts()`` is each prefix and its continuation so far. For the same key, any chunks
    that add up to N give ``predict``'s text for N (tested), so a caller can print the
    text as it comes and stop between chunks.
    """

    def __init__(
        self,
        prefixes: list[str],
        model_config: ModelConfig,
        params: model.Params,
        vocab: Vocab,
        token: str = "char",
        *,
        sampling: SamplingConfig | None = None,
        key: jax.Array | None = None,
        preprocess: str = "book",
    ) -> None:
        self.prefixes = list(prefixes)
        self.model_config, self.params, self.vocab, self.token = model_config, params, vocab, token
        self.sampling = sampling or SamplingConfig()
        self.generated = 0  # tokens after each prefix so far
        self._groups = [
            _Group(rows, start_generation(model_config, params, prefix, self.sampling), keys)
            for rows, prefix, keys in _groups(
                self.prefixes, vocab, token, preprocess, self.sampling, key
            )
        ]

    def advance(self, num_preds: int) -> list[str]:
        """``num_preds`` more tokens after each prefix; returns the text each gained."""
        if num_preds <= 0:
            raise ValueError(f"num_preds must be positive, got {num_preds}")
        gained = [""] * len(self.prefixes)
        for group in self._groups:
            group.carry, out = generate_chunk(
                self.model_config,
                self.params,
                group.carry,
                self.generated,
                num_preds,
                self.sampling,
                group.row_keys,
            )
            if self.sampling.strategy == "beam":
                group.chunks.append(out)
                continue
            group.chunks.append(np.asarray(out))
            for i, ids in zip(group.rows, group.chunks[-1], strict=True):
                gained[i] = continuation_text(ids, self.vocab, self.token)
        self.generated += num_preds
        return gained

    def continuations(self) -> list[np.ndarray]:
        """Each prefix's generated ids ``(generated,)`` so far (beam: the best beam's)."""
        out = [np.zeros(0, np.int32)] * len(self.prefixes)
        for group in self._groups:
            if not group.chunks:
                continue
            if self.sampling.strategy == "beam":
                parents, tokens = (jnp.concatenate(s) for s in zip(*group.chunks, strict=True))
                ids = np.asarray(backtrack(parents, tokens)[:, 0])
            else:
                ids = np.concatenate(group.chunks, axis=1)
            for i, row in zip(group.rows, ids, strict=True):
                out[i] = row
        return out

    def texts(self) -> list[str]:
        """Each prefix followed by its continuation so far (``predict``'s text)."""
        return [
            p + continuation_text(ids, self.vocab, self.token)
            for p, ids in zip(self.prefixes, self.continuations(), strict=True)
        ]
