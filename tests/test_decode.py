"""Decoders against slow references written here.

Every continuation is checked against the teacher-forced logits of ``reference_apply``
(the book's steps, one scan per layer) over the generated text: greedy picks their
argmax; the samplers draw what ``jax.random.categorical`` draws with the same per-step
key from logits filtered in NumPy; beam search returns the exact top K of an exhaustive
enumeration when K is large enough that nothing is pruned before the last step.
"""

from __future__ import annotations

import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import model, sample
from rnn_jax.config import ModelConfig
from rnn_jax.data import Vocab
from rnn_jax.sample import SamplingConfig

V, N = 5, 8
CONFIG = ModelConfig(vocab_size=V, num_hiddens=8, cell="lstm", num_layers=2, sigma=1.0)
_RNG = np.random.default_rng(3)  # a seed whose greedy continuations are not constant
PARAMS = jax.tree.map(
    lambda x: (2 * _RNG.standard_normal(x.shape)).astype(np.float32),
    jax.eval_shape(partial(model.init, CONFIG), jax.random.key(0)),
)
PREFIX = np.array([[1, 2, 3], [4, 4, 1]], np.int32)  # B = 2 prefixes, P = 3


@jax.jit
def reference_log_probs(tokens):
    """Log-probabilities ``(B, T, V)`` of the next token after each of ``tokens``, teacher
    forced through the slow reference model."""
    state = model.zero_state(CONFIG, tokens.shape[0])
    logits, _ = model.reference_apply(CONFIG, PARAMS, tokens, state)
    return jax.nn.log_softmax(logits, axis=-1)


def _continuation_logits(prefix, continuation):
    """The reference logits that predicted each token of ``continuation`` ``(B, N)``."""
    P = prefix.shape[1]
    logits = reference_log_probs(np.concatenate([prefix, continuation], axis=1))
    return np.asarray(logits[:, P - 1 : -1])  # (B, N, V)


def numpy_filter(logits, sampling):
    """Temperature, then top-k / top-p, on one row, written plainly."""
    logits = np.asarray(logits, np.float64) / sampling.temperature
    order = np.argsort(-logits)
    if sampling.strategy == "top-k":
        keep = order[: sampling.top_k]
    elif sampling.strategy == "top-p":
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        mass, keep = 0.0, []
        for i in order:  # most likely first, until the mass reaches p
            keep.append(i)
            mass += probs[i]
            if mass >= sampling.top_p:
                break
    else:
        keep = order
    out = np.full_like(logits, -np.inf)
    out[keep] = logits[keep]
    return out


# ---------------------------------------------------------------- configuration


def test_sampling_config_refuses_out_of_range_values():
    for bad in (
        {"strategy": "nucleus"},
        {"temperature": 0.0},
        {"temperature": -1.0},
        {"strategy": "top-k", "top_k": 0},
        {"strategy": "top-k", "top_k": 2.5},
        {"strategy": "top-k"},  # needs top_k
        {"strategy": "top-p", "top_p": 0.0},
        {"strategy": "top-p", "top_p": 1.5},
        {"strategy": "top-p"},  # needs top_p
        {"strategy": "beam", "beam_size": 0},
    ):
        with pytest.raises(ValueError):
            SamplingConfig(**bad)
    assert SamplingConfig(strategy="top-p", top_p=1.0).top_p == 1.0
    assert hash(SamplingConfig()) == hash(SamplingConfig())


def test_filters_match_numpy():
    logits = np.random.default_rng(1).standard_normal((4, 7)).astype(np.float32) * 2
    for k in (1, 3, 7, 9):
        got = np.asarray(sample.top_k_filter(jnp.asarray(logits), k))
        config = SamplingConfig(strategy="top-k", top_k=min(k, 7))
        np.testing.assert_allclose(got, [numpy_filter(row, config) for row in logits], rtol=1e-6)
    for p in (0.05, 0.5, 0.9, 1.0):
        got = np.asarray(sample.top_p_filter(jnp.asarray(logits), p))
        config = SamplingConfig(strategy="top-p", top_p=p)
        np.testing.assert_allclose(got, [numpy_filter(row, config) for row in logits], rtol=1e-6)
    # temperature comes first: flattening [.5, .3, .2] puts all three in the 0.75-nucleus
    logits = np.log([[0.5, 0.3, 0.2]]).astype(np.float32)
    for temperature, kept in ((1.0, 2), (10.0, 3)):
        config = SamplingConfig(strategy="top-p", top_p=0.75, temperature=temperature)
        got = np.asarray(sample.filter_logits(jnp.asarray(logits), config))
        np.testing.assert_allclose(got, [numpy_filter(logits[0], config)], rtol=1e-6)
        assert np.isfinite(got).sum() == kept


# ---------------------------------------------------------------- greedy and sampling


def test_step_by_step_logits_equal_teacher_forced():
    tokens = np.random.default_rng(2).integers(0, V, (2, 6), dtype=np.int32)

    @jax.jit
    def stepped(tokens):
        state, out = model.zero_state(CONFIG, 2), []
        for t in range(tokens.shape[1]):
            state, logits = model.step(CONFIG, PARAMS, state, tokens[:, t])
            out.append(jax.nn.log_softmax(logits))
        return jnp.stack(out, axis=1)

    np.testing.assert_allclose(stepped(tokens), reference_log_probs(tokens), atol=1e-5)


def test_greedy_is_the_argmax_of_the_reference():
    out = np.asarray(sample.greedy(CONFIG, PARAMS, PREFIX, N))
    assert out.shape == (2, N) and out.dtype == np.int32
    np.testing.assert_array_equal(out, _continuation_logits(PREFIX, out).argmax(-1))
    assert (out[0] != out[1]).any()  # the two prefixes decode differently


SAMPLERS = [
    SamplingConfig(strategy="temperature", temperature=1.3),
    SamplingConfig(strategy="top-k", top_k=2, temperature=0.8),
    SamplingConfig(strategy="top-p", top_p=0.7, temperature=1.2),
]


@pytest.mark.parametrize("sampling", SAMPLERS, ids=lambda s: s.strategy)
def test_sampling_matches_slow_reference(sampling):
    key = jax.random.key(3)
    out = np.asarray(sample.generate(CONFIG, PARAMS, PREFIX, N, sampling, key))
    logits = _continuation_logits(PREFIX, out)
    for t in range(N):  # step t draws with fold_in(key, t)
        filtered = np.stack([numpy_filter(row, sampling) for row in logits[:, t]])
        step_key = jax.random.fold_in(key, t)
        want = jax.random.categorical(step_key, filtered.astype(np.float32), axis=-1)
        np.testing.assert_array_equal(out[:, t], want)
    # the same key gives the same text; another key another text
    again = sample.generate(CONFIG, PARAMS, PREFIX, N, sampling, key)
    np.testing.assert_array_equal(out, again)
    other = sample.generate(CONFIG, PARAMS, PREFIX, N, sampling, jax.random.key(4))
    assert (np.asarray(other) != out).any()


def test_samples_follow_the_filtered_distribution():
    sampling = SamplingConfig(strategy="top-p", top_p=0.8, temperature=0.7)
    prefixes = np.repeat(PREFIX, 2000, axis=0)  # 2000 copies of each
    first = np.asarray(sample.generate(CONFIG, PARAMS, prefixes, 1, sampling, jax.random.key(5)))
    logits = _continuation_logits(PREFIX, first[::2000])[:, 0]
    for b in range(2):
        filtered = numpy_filter(logits[b], sampling)
        want = np.exp(filtered - filtered.max())
        want /= want.sum()
        freq = np.bincount(first[2000 * b : 2000 * (b + 1), 0], minlength=V) / 2000
        np.testing.assert_allclose(freq, want, atol=0.035)
        assert (freq[want == 0] == 0).all() and (want == 0).any()


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingConfig(strategy="temperature", temperature=1e-4),
        SamplingConfig(strategy="top-k", top_k=1),
        SamplingConfig(strategy="top-p", top_p=1e-3),
        SamplingConfig(strategy="beam", beam_size=1),
    ],
    ids=["temperature-to-0", "top-1", "top-p-to-0", "beam-1"],
)
def test_degenerate_strategies_are_greedy(sampling):
    greedy = sample.greedy(CONFIG, PARAMS, PREFIX, N)
    got = sample.generate(CONFIG, PARAMS, PREFIX, N, sampling, jax.random.key(6))
    np.testing.assert_array_equal(got, greedy)


# ---------------------------------------------------------------- beam search


def _exhaustive(prefix, num_preds, alpha, eos):
    """Every continuation of ``prefix`` ``(P,)``: (tokens, log P, normalised score),
    finished ones (after ``eos``) padded with ``eos`` as beam search pads them."""
    seqs = np.array(list(itertools.product(range(V), repeat=num_preds)), np.int32)
    log_probs = _continuation_logits(np.repeat(prefix[None], len(seqs), 0), seqs)
    per_token = np.take_along_axis(log_probs, seqs[..., None], axis=-1)[..., 0]
    length = np.full(len(seqs), num_preds)
    if eos is not None:
        first = np.where(seqs == eos, np.arange(num_preds), num_preds).min(axis=1)
        canonical = np.array([(s[f + 1 :] == eos).all() for s, f in zip(seqs, first, strict=True)])
        seqs, per_token = seqs[canonical], per_token[canonical]
        length = np.minimum(first[canonical] + 1, num_preds)
    per_token = np.where(np.arange(num_preds) < length[:, None], per_token, 0.0)
    total = per_token.sum(axis=1)
    return seqs, total, total / length**alpha


@pytest.mark.parametrize(("alpha", "eos"), [(0.75, None), (0.75, 2), (1.0, 0)])
def test_beam_search_is_exhaustive_search_when_nothing_is_pruned(alpha, eos):
    num_preds = 3
    K = V ** (num_preds - 1)  # every partial continuation survives until the last step
    tokens, log_probs = sample.beam_search(CONFIG, PARAMS, PREFIX, num_preds, K, alpha, eos)
    assert tokens.shape == (2, K, num_preds) and log_probs.shape == (2, K)
    for b in range(2):
        seqs, total, score = _exhaustive(PREFIX[b], num_preds, alpha, eos)
        best = np.argsort(-score, kind="stable")[:K]
        np.testing.assert_array_equal(tokens[b], seqs[best])
        np.testing.assert_allclose(log_probs[b], total[best], atol=1e-4)


def test_beam_log_probs_are_those_of_its_continuations():
    tokens, log_probs = sample.beam_search(CONFIG, PARAMS, PREFIX, N, 3)
    for k in range(3):
        logits = _continuation_logits(PREFIX, np.asarray(tokens[:, k]))
        want = np.take_along_axis(logits, np.asarray(tokens[:, k])[..., None], -1).sum((1, 2))
        np.testing.assert_allclose(log_probs[:, k], want, atol=1e-4)
    assert (np.diff(np.asarray(log_probs), axis=1) <= 0).all()  # best first
    beam = SamplingConfig(strategy="beam", beam_size=3)
    best = sample.generate(CONFIG, PARAMS, PREFIX, N, beam, jax.random.key(0))
    np.testing.assert_array_equal(best, tokens[:, 0])


# ---------------------------------------------------------------- text


def test_predict_with_a_strategy():
    vocab = Vocab("abcd")  # <unk>, a, b, c, d: V = 5
    assert len(vocab) == V
    prefixes = ["".join(vocab.to_tokens(row)) for row in PREFIX]  # generate() compiled above
    greedy = sample.predict(prefixes, N, CONFIG, PARAMS, vocab)
    want = sample.greedy(CONFIG, PARAMS, PREFIX, N)
    assert greedy == [
        p + "".join(vocab.to_tokens(row)) for p, row in zip(prefixes, want, strict=True)
    ]
    sampling = SAMPLERS[0]
    with pytest.raises(ValueError, match="key"):
        sample.predict(prefixes, N, CONFIG, PARAMS, vocab, sampling=sampling)
    key = jax.random.key(0)
    text = sample.predict(prefixes, N, CONFIG, PARAMS, vocab, sampling=sampling, key=key)
    assert text == sample.predict(prefixes, N, CONFIG, PARAMS, vocab, sampling=sampling, key=key)
    assert text != greedy
