"""Greedy generation after a prefix (D2L 9.5.4, ``predict_ch8``)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from rnn_jax import data, model, sample
from rnn_jax.config import ModelConfig
from tests.conftest import _random_params

NUM_PREDS = 12


def _book_predict(params, prefix_ids: np.ndarray, num_preds: int, vocab_size: int) -> np.ndarray:
    """The book's predict_ch8 as a Python loop of rnn_step on one-hot inputs: warm the
    state up on the prefix, then feed each argmax prediction back in."""
    batch = prefix_ids.shape[0]
    h = np.zeros((batch, params["W_hh"].shape[0]), np.float32)
    eye = np.eye(vocab_size, dtype=np.float32)
    for t in range(prefix_ids.shape[1]):
        h, y = model.rnn_step(params, h, eye[prefix_ids[:, t]])
    outputs = []
    for _ in range(num_preds):
        token = np.asarray(y).argmax(axis=-1)
        outputs.append(token)
        h, y = model.rnn_step(params, h, eye[token])
    return np.stack(outputs, axis=1)


@pytest.mark.parametrize("batch", [3, 1])
def test_greedy_equals_book_loop(batch, tiny_model_config, random_params, book_params):
    """sample.greedy (a jitted lax.scan) == the book's step-by-step loop, batched and B=1."""
    V = tiny_model_config.vocab_size
    # Weights with sigma 0.5 (not the config's 0.01), so the argmax sequence is non-trivial.
    lively = ModelConfig(vocab_size=V, num_hiddens=tiny_model_config.num_hiddens, sigma=0.5)
    params = random_params(lively, seed=3, bias_scale=0.5)
    prefix = np.random.default_rng(batch).integers(1, V, (batch, 5)).astype(np.int32)
    got = np.asarray(sample.greedy(tiny_model_config, params, prefix, NUM_PREDS))
    want = _book_predict(book_params(params), prefix, NUM_PREDS, V)
    assert got.shape == (batch, NUM_PREDS) and got.dtype == np.int32
    np.testing.assert_array_equal(got, want)
    assert all(len(set(row)) > 2 for row in want)  # a non-trivial sequence


def test_predict_returns_prefix_and_continuation(trained_run, tiny_dataset, tiny_model_config):
    """predict: each prefix followed by num_preds tokens, the greedy ids decoded."""
    result, _, config = trained_run
    params, vocab = result.state.params, tiny_dataset.vocab
    text = sample.predict(
        config.sample_prefix[0], config.num_preds, tiny_model_config, params, vocab
    )
    assert isinstance(text, str)
    assert text.startswith(config.sample_prefix[0])
    assert len(text) == len(config.sample_prefix[0]) + config.num_preds
    ids = sample.greedy(
        tiny_model_config,
        params,
        data.encode(config.sample_prefix[0], vocab)[None],
        config.num_preds,
    )
    assert text[len(config.sample_prefix[0]) :] == data.decode(np.asarray(ids)[0], vocab)

    prefixes = ["time ", "the m", "trave"]
    texts = sample.predict(prefixes, NUM_PREDS, tiny_model_config, params, vocab)
    assert isinstance(texts, list) and len(texts) == 3
    for prefix, out in zip(prefixes, texts, strict=True):
        assert out.startswith(prefix) and len(out) == len(prefix) + NUM_PREDS
    # Generated together or alone, a prefix gets the same continuation.
    alone = sample.predict(prefixes[1], NUM_PREDS, tiny_model_config, params, vocab)
    assert alone == texts[1]


def test_trained_continuation_uses_only_vocab_tokens(trained_run, tiny_dataset, tiny_model_config):
    """A briefly trained model continues "time traveller" with letters and spaces only
    (never <unk>, which the training text does not contain)."""
    result, _, config = trained_run
    vocab = tiny_dataset.vocab
    text = sample.predict(
        config.sample_prefix[0], config.num_preds, tiny_model_config, result.state.params, vocab
    )
    continuation = text[len(config.sample_prefix[0]) :]
    assert len(continuation) == config.num_preds
    assert set(continuation) <= set("abcdefghijklmnopqrstuvwxyz ")
    ids = vocab[list(continuation)]
    assert 0 not in ids  # <unk>


def test_predict_refuses_bad_input(tiny_dataset, tiny_model_config, random_params):
    """Unknown characters (named, with the lowercasing hint in book mode only), empty
    prefixes, a wrong number of keys and num_preds <= 0 raise ValueError before anything
    runs."""
    params, vocab = random_params(tiny_model_config), tiny_dataset.vocab
    with pytest.raises(ValueError, match=r"'T'.*'!' \(the corpus was lowercased\)"):
        sample.predict("The time!", 5, tiny_model_config, params, vocab)
    with pytest.raises(ValueError, match=r"'T'.*'!'$"):
        sample.predict("The time!", 5, tiny_model_config, params, vocab, preprocess="raw")
    hot = sample.SamplingConfig(strategy="temperature")
    with pytest.raises(ValueError, match="one key or 2 keys"):
        keys = jax.random.split(jax.random.key(0), 3)
        sample.predict(["a", "b"], 5, tiny_model_config, params, vocab, sampling=hot, key=keys)
    with pytest.raises(ValueError, match="at least one token"):
        sample.predict("", 5, tiny_model_config, params, vocab)
    with pytest.raises(ValueError, match="at least one prefix"):
        sample.predict([], 5, tiny_model_config, params, vocab)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="num_preds must be positive"):
            sample.predict("time", bad, tiny_model_config, params, vocab)


def test_encode_prefixes_word_tokens():
    """encode_prefixes with word tokens: one int32 array of ids per prefix, any lengths."""
    vocab = data.Vocab(["the", "time", "traveller", "the", "time", "machine"])
    ids = sample.encode_prefixes(["the time", "time machine"], vocab, token="word")
    np.testing.assert_array_equal(ids, [[vocab["the"], vocab["time"]], vocab[["time", "machine"]]])
    assert all(i.dtype == np.int32 for i in ids)
    ids = sample.encode_prefixes(["the", "time machine"], vocab, token="word")
    assert [len(i) for i in ids] == [1, 2]


@pytest.mark.parametrize(
    "sampling",
    [sample.SamplingConfig(), sample.SamplingConfig(strategy="top-k", top_k=5, temperature=1.5)],
    ids=["greedy", "top-k"],
)
def test_unequal_prefixes_equal_separate_calls(sampling, tiny_dataset, tiny_model_config):
    """Prefixes of different lengths in one call get exactly what one call per prefix
    gets: greedy, and a sampler whose row i draws with split(key, B)[i]."""
    V = tiny_dataset.vocab_size
    lively = ModelConfig(vocab_size=V, num_hiddens=tiny_model_config.num_hiddens, sigma=0.5)
    params = _random_params(lively)
    vocab = tiny_dataset.vocab
    prefixes = ["time", "a", "they"]  # a group of length 4 (two rows) and one of length 1
    key = jax.random.key(7)
    together = sample.predict(
        prefixes, NUM_PREDS, tiny_model_config, params, vocab, sampling=sampling, key=key
    )
    row_keys = jax.random.split(key, len(prefixes))
    for i, prefix in enumerate(prefixes):
        alone = sample.predict(
            [prefix],
            NUM_PREDS,
            tiny_model_config,
            params,
            vocab,
            sampling=sampling,
            key=row_keys[i : i + 1],
        )
        assert alone == [together[i]]
        assert together[i].startswith(prefix)
    # The same key given as B keys is the same call.
    again = sample.predict(
        prefixes, NUM_PREDS, tiny_model_config, params, vocab, sampling=sampling, key=row_keys
    )
    assert again == together
    if sampling.stochastic:  # rows with the same prefix still draw differently
        twins = sample.predict(
            ["time", "time"],
            NUM_PREDS,
            tiny_model_config,
            params,
            vocab,
            sampling=sampling,
            key=key,
        )
        assert len(set(twins)) > 1


def test_raw_prefixes_keep_their_characters(tiny_model_config):
    """Raw mode: any code point of the vocabulary (capitals, digits, newlines) encodes,
    CRLF as LF, and char decoding gives the text as is."""
    vocab = data.Vocab(list("The 1st line.\nΩ second\n"))
    ids = sample.encode_prefixes(["The\r\nΩ", "1st"], vocab, preprocess="raw")
    assert data.decode(ids[0], vocab) == "The\nΩ" and data.decode(ids[1], vocab) == "1st"
    config = ModelConfig(vocab_size=len(vocab), num_hiddens=8, sigma=0.5)
    params = _random_params(config)
    text = sample.predict("The\n", 30, config, params, vocab, preprocess="raw")
    assert text.startswith("The\n") and len(text.replace("<unk>", "?")) == 4 + 30
