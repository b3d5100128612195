"""Data pipeline (D2L 9.2-9.3): corpus statistics, vocabulary, partitions, bad input."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from rnn_jax import cache, data, input_pipeline
from rnn_jax.config import ModelConfig, TrainConfig

# --------------------------------------------------------------------------- corpus


def test_shipped_corpus_matches_book_statistics():
    """D2L 9.2 (current edition): 173,428 char tokens, 28 vocab entries, <unk> at 0."""
    corpus, vocab = data.load_corpus()
    assert corpus.dtype == np.uint8 and corpus.ndim == 1  # the smallest dtype for 28 ids
    assert len(corpus) == 173428
    assert len(vocab) == 28
    assert vocab.idx_to_token[0] == "<unk>" and vocab["<unk>"] == 0
    # Every id is in range and no token of the corpus maps to <unk>.
    assert corpus.min() >= 1 and corpus.max() < len(vocab)
    letters = set("abcdefghijklmnopqrstuvwxyz ")
    assert set(vocab.idx_to_token[1:]) == letters


def test_line_by_line_preprocessing_matches_first_edition_count():
    """D2L first edition cleans each line (strip) and joins them: 170,580 chars."""
    text = data.read_text()
    lines = [re.sub("[^A-Za-z]+", " ", line).strip().lower() for line in text.split("\n")]
    assert len("".join(lines)) == 170580
    # The current edition cleans the whole text at once instead, which gives 173,428.
    assert len(re.sub("[^A-Za-z]+", " ", text).lower()) == 173428


def test_corpus_decodes_to_preprocessed_text():
    """corpus ids -> tokens reproduces the book's ``preprocess`` of the raw text."""
    corpus, vocab = data.load_corpus(max_tokens=5000)
    expected = re.sub("[^A-Za-z]+", " ", data.read_text()).lower()[:5000]
    assert data.decode(corpus, vocab) == expected


def test_max_tokens_truncates_after_building_vocab():
    """The book builds the vocab from the whole text, then keeps the first max_tokens."""
    full, full_vocab = data.load_corpus()
    corpus, vocab = data.load_corpus(max_tokens=10_000)
    assert len(corpus) == 10_000
    assert vocab == full_vocab
    np.testing.assert_array_equal(corpus, full[:10_000])


def test_word_tokens():
    """token='word': one id per whitespace-separated word, ranked by frequency."""
    corpus, vocab = data.load_corpus(token="word")
    words = re.sub("[^A-Za-z]+", " ", data.read_text()).lower().split()
    assert len(corpus) == len(words)
    counts = collections.Counter(words)
    assert len(vocab) == len(counts) + 1  # + <unk>
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    assert vocab.idx_to_token[1:6] == [w for w, _ in ranked[:5]]
    assert vocab.idx_to_token[1] == "the"
    assert data.decode(corpus[:50], vocab, token="word") == " ".join(words[:50])


# --------------------------------------------------------------------------- vocab


def test_vocab_orders_by_frequency_then_alphabetically():
    """<unk> is 0, then tokens by decreasing count, ties alphabetical; ids both ways."""
    vocab = data.Vocab(list("hello world"))
    # counts: l 3, o 2, then ' ' d e h r w once each (sorted)
    assert vocab.idx_to_token == ["<unk>", "l", "o", " ", "d", "e", "h", "r", "w"]
    for i, tok in enumerate(vocab.idx_to_token):
        assert vocab[tok] == i
        assert vocab.to_tokens(i) == tok
        assert vocab.to_tokens(np.int32(i)) == tok
    assert vocab[list("hold")] == [6, 2, 1, 4]
    assert vocab.to_tokens([6, 2, 1, 4]) == list("hold")
    assert vocab["z"] == vocab.unk == 0  # unknown -> <unk>
    assert vocab.unknown(list("hazy")) == ["a", "z", "y"]


def test_vocab_min_freq_maps_rare_tokens_to_unk():
    """Tokens seen fewer than min_freq times are left out and map to <unk>."""
    tokens = list("aaabbc")
    vocab = data.Vocab(tokens, min_freq=2)
    assert vocab.idx_to_token == ["<unk>", "a", "b"]
    assert vocab["c"] == 0
    assert vocab[tokens] == [1, 1, 1, 2, 2, 0]
    assert len(data.Vocab(tokens, min_freq=4)) == 1


def test_vocab_reserved_tokens():
    """Reserved tokens take the ids right after <unk>, before any counted token."""
    vocab = data.Vocab(list("abba"), reserved_tokens=["<pad>", "<bos>", "<unk>"])
    assert vocab.idx_to_token == ["<unk>", "<pad>", "<bos>", "a", "b"]
    assert vocab["<pad>"] == 1 and vocab["<bos>"] == 2 and vocab["a"] == 3
    # A reserved token that also occurs in the text keeps its reserved id only once.
    vocab = data.Vocab(list("abba"), reserved_tokens=["b"])
    assert vocab.idx_to_token == ["<unk>", "b", "a"]


def test_vocab_json_round_trip():
    """to_json/from_json rebuild the same id <-> token maps."""
    vocab = data.Vocab(list("the time traveller"), min_freq=1, reserved_tokens=["<pad>"])
    text = vocab.to_json()
    json.loads(text)  # plain JSON
    again = data.Vocab.from_json(text)
    assert again == vocab
    assert again.idx_to_token == vocab.idx_to_token
    assert again.token_to_idx == vocab.token_to_idx
    assert again.reserved_tokens == vocab.reserved_tokens
    assert again.min_freq == vocab.min_freq
    assert again != data.Vocab(list("the time"))


def test_encode_refuses_unknown_tokens():
    """``encode`` names every unknown token instead of mapping it to <unk>."""
    vocab = data.Vocab(list("abc"))
    np.testing.assert_array_equal(data.encode("cab", vocab), [3, 1, 2])
    assert data.encode("cab", vocab).dtype == np.int32
    with pytest.raises(ValueError, match=r"2 token\(s\).*'X'.*'!'"):
        data.encode("aXb!X", vocab)


# --------------------------------------------------------------------------- partitions


def _windows_match_corpus(corpus, positions, Xs, Ys, num_steps):
    """Every X row followed by the last Y equals corpus[s : s + T + 1], s its start."""
    starts = positions[..., 0]
    for (k, b), s in np.ndenumerate(starts):
        window = np.concatenate([Xs[k, b], Ys[k, b, -1:]])
        np.testing.assert_array_equal(window, corpus[s : s + num_steps + 1])
        np.testing.assert_array_equal(Xs[k, b, 1:], Ys[k, b, :-1])


@pytest.mark.parametrize("partition", ["random", "sequential"])
def test_batches_are_windows_of_the_corpus(partition):
    """Shapes (K, B, T) int32; Y is X shifted by one token in the real corpus."""
    corpus, _ = data.load_corpus(max_tokens=3000)
    B, T = 4, 7
    positions = np.arange(len(corpus), dtype=np.int32)
    # The same (seed, epoch) cuts the position array exactly as it cuts the corpus.
    Ps, _ = input_pipeline.epoch_batches(positions, B, T, partition, seed=3, epoch=1)
    Xs, Ys = input_pipeline.epoch_batches(corpus, B, T, partition, seed=3, epoch=1)
    assert Xs.dtype == np.int32 and Ys.dtype == np.int32
    assert Xs.shape == Ys.shape == Ps.shape
    assert Xs.shape[1:] == (B, T) and Xs.shape[0] >= 1
    _windows_match_corpus(corpus, Ps, Xs, Ys, T)


def test_sequential_batches_continue_each_other():
    """Row b of minibatch k+1 starts where row b of minibatch k ended (D2L 9.3.3.2)."""
    N, B, T = 1000, 3, 5
    corpus = np.arange(N, dtype=np.int32)
    for offset in range(T):
        Xs, Ys = input_pipeline.sequential_batches(corpus, B, T, offset)
        K = Xs.shape[0]
        assert Xs.shape == (K, B, T) and (N - offset - 1) // (B * T) == K
        assert Xs[0, 0, 0] == offset
        np.testing.assert_array_equal(Xs[1:, :, 0], Xs[:-1, :, -1] + 1)
        np.testing.assert_array_equal(Ys, Xs + 1)
        # Each row is one contiguous stream over all minibatches.
        streams = Xs.transpose(1, 0, 2).reshape(B, K * T)
        np.testing.assert_array_equal(np.diff(streams, axis=1), 1)
    with pytest.raises(ValueError, match="offset"):
        input_pipeline.sequential_batches(corpus, B, T, offset=T)


@pytest.mark.parametrize(("N", "B", "T"), [(1000, 4, 7), (173, 3, 10), (40, 3, 10)])
def test_random_batches_cover_corpus_once(N, B, T):
    """Random partition: disjoint length-T subsequences, each start used once, covering
    all but fewer than B*T + T tokens."""
    corpus = np.arange(N, dtype=np.int32)
    for seed in range(5):
        Xs, Ys = input_pipeline.random_batches(corpus, B, T, np.random.default_rng(seed))
        assert Xs.shape[1:] == (B, T)
        np.testing.assert_array_equal(Ys, Xs + 1)
        np.testing.assert_array_equal(np.diff(Xs, axis=-1), 1)
        starts = Xs[..., 0].ravel()
        assert len(np.unique(starts)) == len(starts)
        assert len(set(starts % T)) == 1  # one offset per epoch: windows never overlap
        covered = np.unique(Xs)
        assert len(covered) == Xs.size
        assert N - len(covered) < B * T + T
        assert Ys.max() < N


def test_random_batches_depend_on_seed_and_epoch_only():
    """Same (seed, epoch) -> identical batches; another epoch or seed -> different."""
    corpus = np.arange(5000, dtype=np.int32)
    a = input_pipeline.epoch_batches(corpus, 8, 10, "random", seed=0, epoch=2)
    b = input_pipeline.epoch_batches(corpus, 8, 10, "random", seed=0, epoch=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    for other in [(0, 3), (1, 2)]:
        c = input_pipeline.epoch_batches(corpus, 8, 10, "random", seed=other[0], epoch=other[1])
        n = min(len(a[0]), len(c[0]))
        assert not np.array_equal(a[0][:n], c[0][:n])
    with pytest.raises(ValueError, match="partition"):
        input_pipeline.epoch_batches(corpus, 8, 10, "shuffled", seed=0, epoch=0)


def test_sequential_offset_varies_between_epochs():
    """The sequential partition draws its offset in [0, T) from (seed, epoch)."""
    corpus = np.arange(5000, dtype=np.int32)
    offsets = {
        int(input_pipeline.epoch_batches(corpus, 4, 10, "sequential", seed=0, epoch=e)[0][0, 0, 0])
        for e in range(20)
    }
    assert offsets <= set(range(10)) and len(offsets) > 1


def test_train_val_split_holds_out_the_tail():
    """val is the last int(N * fraction) tokens; 0 gives an empty validation set."""
    corpus = np.arange(1000, dtype=np.int32)
    train, val = input_pipeline.train_val_split(corpus, 0.1)
    np.testing.assert_array_equal(train, np.arange(900))
    np.testing.assert_array_equal(val, np.arange(900, 1000))
    train, val = input_pipeline.train_val_split(corpus, 0.0)
    assert len(train) == 1000 and len(val) == 0
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="val_fraction"):
            input_pipeline.train_val_split(corpus, bad)


@pytest.mark.parametrize("partition", ["random", "sequential"])
def test_validation_tokens_never_reach_training(partition):
    """With distinct positions as tokens, no training X or Y is a validation position."""
    N = 3001
    corpus = np.arange(N, dtype=np.int32)
    train, val = input_pipeline.train_val_split(corpus, 0.15)
    dataset = input_pipeline.Dataset(train, val, data.Vocab(), "char")
    config = TrainConfig(batch_size=4, num_steps=9, partition=partition, max_tokens=None)
    val_positions = set(val.tolist())
    for epoch in range(10):
        Xs, Ys = input_pipeline.train_plan(dataset, config, epoch).materialise()
        assert not val_positions & set(np.unique(Xs).tolist())
        assert not val_positions & set(np.unique(Ys).tolist())
    Xv, Yv = input_pipeline.eval_batches(val, 4, 9)
    assert min(Xv.min(), Yv.min()) >= len(train)


@pytest.mark.parametrize(
    ("N", "B", "T"),
    # N = m B T + 1 is the edge where a large random offset leaves one minibatch fewer
    # than (N - 1) // (B T); B T + T is the shortest corpus allowed.
    [(2000, 8, 10), (161, 8, 10), (1001, 4, 25), (90, 8, 10), (1000, 7, 13), (999, 1, 1)],
)
def test_loop_epoch_batches_has_k_batches_every_epoch(N, B, T):
    """input_pipeline.train_plan gives exactly batches_per_epoch minibatches, any offset."""
    train = np.arange(N, dtype=np.int32)
    dataset = input_pipeline.Dataset(train, train[:0], data.Vocab(), "char")
    K = input_pipeline.batches_per_epoch(N, B, T)
    assert K >= 1
    for partition in ("random", "sequential"):
        for seed in range(4):
            config = TrainConfig(
                batch_size=B, num_steps=T, partition=partition, seed=seed, max_tokens=None
            )
            for epoch in range(12):
                Xs, Ys = input_pipeline.train_plan(dataset, config, epoch).materialise()
                assert Xs.shape == Ys.shape == (K, B, T)
                np.testing.assert_array_equal(Ys, Xs + 1)


def test_eval_batches_score_short_corpora():
    """eval_batches: offset-0 sequential batches; shrinks B and T for short corpora."""
    corpus = np.arange(1000, dtype=np.int32)
    Xs, Ys = input_pipeline.eval_batches(corpus, 4, 10)
    np.testing.assert_array_equal(Xs, input_pipeline.sequential_batches(corpus, 4, 10, 0)[0])
    np.testing.assert_array_equal(Ys, Xs + 1)
    for n in (2, 3, 11, 50):
        Xs, Ys = input_pipeline.eval_batches(np.arange(n, dtype=np.int32), 32, 35)
        assert Xs.shape[0] >= 1 and Xs.size >= 1
        assert Ys.max() < n
        np.testing.assert_array_equal(Ys, Xs + 1)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        input_pipeline.eval_batches(np.arange(1, dtype=np.int32), 4, 10)


# --------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    """A missing corpus file raises FileNotFoundError naming it."""
    path = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        data.load_corpus(path)


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf"])
def test_empty_file(tmp_path, content):
    """A file of no bytes, or of a byte order mark alone, raises ValueError('... is empty')."""
    path = tmp_path / "c.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"c\.txt is empty$"):
        data.load_corpus(path)


@pytest.mark.parametrize("content", [b"\n" * 5000, b"   \n\t \r\n"])
def test_whitespace_only_file_is_text_to_raw(tmp_path, content):
    """Whitespace is text: raw char tokens keep it (``\\r\\n`` read as ``\\n``); book
    preprocessing says it kept no letter and names raw; raw word tokens are none (the
    minibatch check then says so)."""
    path = tmp_path / "blank.txt"
    path.write_bytes(content)
    corpus, vocab = data.load_corpus(path, preprocess="raw")
    assert data.decode(corpus, vocab) == content.decode().replace("\r\n", "\n")
    with pytest.raises(ValueError, match=r"no letters.*keeps only A-Z: 0 of .*'raw'"):
        data.load_corpus(path)
    assert len(data.load_corpus(path, preprocess="raw", token="word")[0]) == 0


@pytest.mark.parametrize("preprocess", ["raw", "book"])
def test_byte_order_mark_is_dropped(tmp_path, preprocess):
    """A UTF-8 byte order mark (U+FEFF) at the start is dropped, whether from the file or
    the token cache; one later in the text (a zero-width no-break space) is text."""
    text = "the time traveller \ufeff said\n"
    plain, marked = tmp_path / "plain.txt", tmp_path / "marked.txt"
    plain.write_text(text, "utf-8")
    marked.write_bytes(b"\xef\xbb\xbf" + text.encode())
    expected = data.load_corpus(plain, preprocess=preprocess)
    for cache_dir in (None, tmp_path / "cache", tmp_path / "cache"):
        tokens, vocab = data.load_corpus(marked, preprocess=preprocess, cache_dir=cache_dir)
        np.testing.assert_array_equal(tokens, expected[0])
        assert vocab == expected[1]
    assert data.read_text(marked) == text
    assert ("\ufeff" in expected[1].idx_to_token) == (preprocess == "raw")


@pytest.mark.parametrize("token", ["char", "word"])
def test_file_without_letters(tmp_path, token):
    """A file with no A-Z/a-z letters leaves nothing to learn under book preprocessing
    (ValueError saying what it kept and naming raw); raw preprocessing keeps it all."""
    path = tmp_path / "digits.txt"
    path.write_text("1234 !!\n56 -- 78\n", "utf-8")
    with pytest.raises(ValueError, match=r"no letters.*keeps only A-Z: 0 of 17 .*'raw'"):
        data.load_corpus(path, token=token)
    corpus, vocab = data.load_corpus(path, token=token, preprocess="raw")
    assert data.decode(corpus, vocab, token) == (
        "1234 !!\n56 -- 78\n" if token == "char" else "1234 !! 56 -- 78"
    )


def test_non_utf8_file_names_offset(tmp_path):
    """Bytes that are not UTF-8 raise ValueError naming the byte, offset, line, column."""
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"time\ntra\xffveller\n")
    with pytest.raises(ValueError, match=r"0xff at offset 8 \(line 2, column 4\)"):
        data.load_corpus(path)


def test_directory_is_refused(tmp_path):
    with pytest.raises(IsADirectoryError):
        data.read_text(tmp_path)
    with pytest.raises(IsADirectoryError):
        data.load_corpus(tmp_path)


def test_bad_token_and_max_tokens():
    with pytest.raises(ValueError, match="token must be one of"):
        data.load_corpus(token="byte")
    with pytest.raises(ValueError, match="token must be one of"):
        data.tokenize("abc", "byte")
    with pytest.raises(ValueError, match="max_tokens"):
        data.load_corpus(max_tokens=0)


def test_corpus_too_short_for_one_batch(tmp_path):
    """Fewer than B*T + T tokens: ValueError from check_batch_sizes and load_dataset."""
    B, T = 4, 5
    input_pipeline.check_batch_sizes(B * T + T, B, T)  # exactly enough
    with pytest.raises(ValueError, match=r"too short.*needs at least 25"):
        input_pipeline.check_batch_sizes(B * T + T - 1, B, T)
    for fn in (input_pipeline.sequential_batches, input_pipeline.random_batches):
        args = (np.random.default_rng(0),) if fn is input_pipeline.random_batches else ()
        with pytest.raises(ValueError, match="too short"):
            fn(np.arange(24, dtype=np.int32), B, T, *args)

    path = tmp_path / "short.txt"
    path.write_text("the time traveller\n" * 3, "utf-8")  # 57 chars
    config = TrainConfig(corpus=str(path), batch_size=8, num_steps=10, max_tokens=None)
    with pytest.raises(ValueError, match="too short"):
        input_pipeline.load_dataset(config)
    # The same file is enough for a smaller minibatch.
    small = TrainConfig(corpus=str(path), batch_size=2, num_steps=10, max_tokens=None)
    dataset = input_pipeline.load_dataset(small)
    assert len(dataset.train) + len(dataset.val) == 57


@pytest.mark.parametrize(("B", "T"), [(0, 5), (4, 0), (-1, 5), (4, -3)])
def test_non_positive_batch_sizes(B, T):
    with pytest.raises(ValueError, match="must be positive"):
        input_pipeline.check_batch_sizes(10_000, B, T)
    with pytest.raises(ValueError, match="must be positive"):
        input_pipeline.sequential_batches(np.arange(10_000, dtype=np.int32), B, T)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"vocab_size": 0},
        {"vocab_size": -3},
        {"vocab_size": 28, "num_hiddens": 0},
        {"vocab_size": 28, "num_hiddens": 2.5},
        {"vocab_size": True},
        {"vocab_size": 28, "sigma": 0.0},
        {"vocab_size": 28, "sigma": float("nan")},
        {"vocab_size": 28, "cell": "transformer"},
    ],
)
def test_model_config_refuses_bad_values(kwargs):
    with pytest.raises(ValueError):
        ModelConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"num_steps": -1}, "num_steps"),
        ({"num_epochs": 0}, "num_epochs"),
        ({"num_preds": 0}, "num_preds"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"lr": -0.1}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"theta": 0.0}, "theta"),
        ({"theta": -1.0}, "theta"),
        ({"partition": "shuffled"}, "partition"),
        ({"token": "byte"}, "token"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"sample_every": -1}, "sample_every"),
        ({"eval_every": -1}, "eval_every"),
        ({"eval_every": 1.5}, "eval_every"),
    ],
)
def test_train_config_refuses_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_configs_accept_book_defaults():
    """The book's defaults are valid: batch 32, 35 steps, 512 hiddens, lr 1, theta 1."""
    config = TrainConfig()
    assert (config.batch_size, config.num_steps, config.lr, config.theta) == (32, 35, 1.0, 1.0)
    assert ModelConfig(vocab_size=28).num_hiddens == 512


# --------------------------------------------------------------------------- preprocessing

MIXED = "Ab\tb,\r\nΩω 1 中😀\n"  # tab, CRLF, punctuation, digit, Greek, CJK, an emoji


@pytest.mark.parametrize(
    ("preprocess", "token", "tokens", "order"),
    [
        (
            "raw",
            "char",
            ["A", "b", "\t", "b", ",", "\n", "Ω", "ω", " ", "1", " ", "中", "😀", "\n"],
            ["\n", " ", "b", "\t", ",", "1", "A", "Ω", "ω", "中", "😀"],
        ),
        ("book", "char", ["a", "b", " ", "b", " "], [" ", "b", "a"]),
        ("raw", "word", ["Ab", "b,", "Ωω", "1", "中😀"], ["1", "Ab", "b,", "Ωω", "中😀"]),
        ("book", "word", ["ab", "b"], ["ab", "b"]),
    ],
)
def test_raw_and_book_tokens_of_a_mixed_text(tmp_path, preprocess, token, tokens, order):
    """Raw keeps every code point (CRLF -> LF), words split as str.split(); book keeps
    lowercased A-Z and one space per run of anything else. Vocab: <unk>, then by count,
    ties by code point."""
    path = tmp_path / "mixed.txt"
    path.write_bytes(MIXED.encode("utf-8"))
    corpus = data.load_text_corpus(path, token=token, preprocess=preprocess)
    assert corpus.vocab.idx_to_token == ["<unk>", *order]
    assert corpus.vocab.to_tokens(corpus.tokens) == tokens
    assert corpus.num_chars == len(MIXED) == 15
    assert corpus.kept == len(tokens)
    assert corpus.fingerprint == data.corpus_fingerprint(path)
    assert corpus.fingerprint["size"] == len(MIXED.encode())
    assert data.tokenize(MIXED, token, preprocess=preprocess) == tokens
    np.testing.assert_array_equal(
        data.encode(
            MIXED if preprocess == "raw" else data.decode(corpus.tokens, corpus.vocab, token),
            corpus.vocab,
            token,
            preprocess,
        ),
        corpus.tokens,
    )
    if token == "char" and preprocess == "raw":
        assert data.decode(corpus.tokens, corpus.vocab) == MIXED.replace("\r\n", "\n")


def test_time_machine_raw_statistics():
    """Raw preprocessing of the Time Machine keeps case, digits and punctuation:
    178,966 char tokens, 71 entries; 32,306 words, 6,950 entries."""
    text = data.read_text()
    corpus = data.load_text_corpus(preprocess="raw")
    assert len(corpus.tokens) == len(text.replace("\r\n", "\n")) == 178966
    assert len(corpus.vocab) == 71 and corpus.num_chars == len(text)
    assert data.decode(corpus.tokens, corpus.vocab) == text.replace("\r\n", "\n")
    assert corpus.fingerprint == data.corpus_fingerprint()
    words, vocab = data.load_corpus(preprocess="raw", token="word")
    assert (len(words), len(vocab)) == (32306, 6950)


@pytest.mark.parametrize("token", ["char", "word"])
def test_time_machine_book_equals_the_list_pipeline(token):
    """The vectorised book pipeline gives exactly the old list-and-Counter tokens."""
    tokens = data.tokenize(re.sub("[^A-Za-z]+", " ", data.read_text()).lower(), token)
    corpus, vocab = data.load_corpus(token=token)
    assert vocab == data.Vocab(tokens)
    np.testing.assert_array_equal(corpus, vocab[tokens])


def _random_text(rng, n):
    # U+212A (Kelvin sign) lowercases to "k" but is not in [A-Za-z]
    pool = [*"aZbYq  \t\n\r\n.,'-09", "é", "Ω", "ж", "中", "😀", "\u2028", "K", "\u212a"]
    return "".join(rng.choice(pool, size=n))


def test_book_code_points_equal_the_regex():
    """The vectorised book preprocessing equals the regex, whole and cut in pieces."""
    text = data.read_text()
    got = data.book_code_points(data.code_points(text)).tobytes().decode("ascii")
    assert got == data.preprocess(text, "book")
    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 7, 100, 1000):
        for _ in range(5):
            text = _random_text(rng, n)
            want = data.preprocess(text, "book")
            cps = data.code_points(text)
            assert data.book_code_points(cps).tobytes().decode("ascii") == want
            cut = int(rng.integers(0, n + 1))
            first = data.book_code_points(cps[:cut])
            after = cut == 0 or (text[cut - 1].isascii() and text[cut - 1].isalpha())
            rest = data.book_code_points(cps[cut:], after_letter=after)
            assert (first.tobytes() + rest.tobytes()).decode("ascii") == want


@pytest.mark.parametrize("token", ["char", "word"])
@pytest.mark.parametrize("preprocess", ["book", "raw"])
def test_vectorised_tokenising_equals_list_reference(tmp_path, monkeypatch, preprocess, token):
    """Chunked, vectorised tokenising (chunks of 7 here) == Vocab(list of tokens)."""
    monkeypatch.setattr(data, "_CHUNK", 7)
    rng = np.random.default_rng(1)
    path = tmp_path / "random.txt"
    for n in (5, 60, 500):
        text = _random_text(rng, n) + " abc"
        path.write_bytes(text.encode())
        for min_freq in (0, 3):
            corpus, vocab = data.load_corpus(
                path, token=token, preprocess=preprocess, min_freq=min_freq
            )
            tokens = data.tokenize(text, token, preprocess=preprocess)
            want = data.Vocab(tokens, min_freq=min_freq)
            assert vocab == want
            assert corpus.dtype == np.uint8
            np.testing.assert_array_equal(corpus, want[tokens])


def test_id_dtype_is_the_smallest_unsigned():
    assert data.id_dtype(256) == np.uint8 and data.id_dtype(257) == np.uint16
    assert data.id_dtype(65536) == np.uint16 and data.id_dtype(65537) == np.uint32


def test_too_short_error_says_what_preprocessing_kept(tmp_path):
    """A corpus that book preprocessing shrank below one minibatch says so."""
    path = tmp_path / "greek.txt"
    path.write_text("Ελληνικά και λίγα English words. " * 20, "utf-8")
    corpus = data.load_text_corpus(path)
    assert "keeps only A-Z: 240 of 660 characters" in corpus.note
    with pytest.raises(ValueError, match=r"too short.*keeps only A-Z.*preprocess='raw'"):
        input_pipeline.check_batch_sizes(len(corpus.tokens), 32, 35, note=corpus.note)
    raw = data.load_text_corpus(path, preprocess="raw")
    assert raw.kept == 660 and "raw preprocessing kept all 660" in raw.note


def test_non_regular_files_are_refused_before_reading(tmp_path):
    """A FIFO or a device is refused by path (opening a FIFO would block)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for bad in (fifo, Path("/dev/zero")):
        for load in (data.load_corpus, data.read_text, data.corpus_fingerprint):
            with pytest.raises(ValueError, match=re.escape(str(bad))):
                load(bad)


# --------------------------------------------------------------------------- cache


def _write(path, text):
    path.write_bytes(text.encode("utf-8"))
    old = time.time_ns() - 10_000_000_000  # not "racy": the stat fast path applies
    os.utime(path, ns=(old, old))


def test_cache_round_trip_and_stat_fast_path(tmp_path, monkeypatch):
    """A second load comes from the cache (a read-only memmap equal to a fresh
    tokenisation) without reading or hashing the corpus when its stat is unchanged."""
    path, cache = tmp_path / "tm.txt", tmp_path / "cache"
    _write(path, data.read_text()[:20000])
    fresh = data.load_text_corpus(path, token="word", preprocess="raw")
    first = data.load_text_corpus(path, token="word", preprocess="raw", cache_dir=cache)
    assert not fresh.cached and not first.cached

    def no_read(path):
        raise AssertionError("the corpus was read")

    monkeypatch.setattr(data, "_read_bytes", no_read)
    again = data.load_text_corpus(path, token="word", preprocess="raw", cache_dir=cache)
    assert again.cached and isinstance(again.tokens, np.memmap)
    assert not again.tokens.flags.writeable
    np.testing.assert_array_equal(again.tokens, fresh.tokens)
    assert again.tokens.dtype == fresh.tokens.dtype == np.uint16
    assert again.vocab == fresh.vocab
    for field in ("num_chars", "kept", "fingerprint", "note", "preprocess", "token"):
        assert getattr(again, field) == getattr(fresh, field), field
    short = data.load_text_corpus(
        path, token="word", preprocess="raw", cache_dir=cache, max_tokens=10
    )
    np.testing.assert_array_equal(short.tokens, fresh.tokens[:10])


def test_cache_misses_on_changed_bytes_or_options(tmp_path, monkeypatch):
    """Same size, same mtime, other bytes, of a file hashed within ``RACY_NS`` of its
    mtime (the clock is set to 1 s after it, however slow this machine is): a miss
    (content hash). Other options: a miss."""
    path, cache = tmp_path / "c.txt", tmp_path / "cache"
    path.write_text("the time traveller " * 10, "utf-8")
    hashed_at = os.stat(path).st_mtime_ns + 1_000_000_000
    monkeypatch.setattr(data, "time", SimpleNamespace(time_ns=lambda: hashed_at))
    assert not data.load_text_corpus(path, cache_dir=cache).cached
    assert data.load_text_corpus(path, cache_dir=cache).cached
    st = os.stat(path)
    path.write_text("the time travellex " * 10, "utf-8")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed = data.load_text_corpus(path, cache_dir=cache)
    assert not changed.cached and "x" in changed.vocab.idx_to_token
    for options in ({"preprocess": "raw"}, {"token": "word"}, {"min_freq": 2}):
        assert not data.load_text_corpus(path, cache_dir=cache, **options).cached
        assert data.load_text_corpus(path, cache_dir=cache, **options).cached


@pytest.mark.parametrize("damage", ["flip", "truncate", "meta"])
def test_corrupt_cache_is_detected_and_rebuilt(tmp_path, damage):
    """One flipped byte, a truncated token file or broken metadata: rebuilt, not trusted."""
    path, cache = tmp_path / "c.txt", tmp_path / "cache"
    path.write_text(data.read_text()[:5000], "utf-8")
    fresh = data.load_text_corpus(path, cache_dir=cache)
    (npy,) = cache.glob("*.npy")
    blob = bytearray(npy.read_bytes())
    if damage == "flip":
        blob[-100] ^= 0x01
        npy.write_bytes(bytes(blob))
    elif damage == "truncate":
        npy.write_bytes(bytes(blob[:-7]))
    else:
        npy.with_suffix(".json").write_text("{not json", "utf-8")
    rebuilt = data.load_text_corpus(path, cache_dir=cache)
    assert not rebuilt.cached
    np.testing.assert_array_equal(rebuilt.tokens, fresh.tokens)
    again = data.load_text_corpus(path, cache_dir=cache)
    assert again.cached
    np.testing.assert_array_equal(again.tokens, fresh.tokens)


def test_another_corpus_entry_in_its_place_is_rebuilt(tmp_path):
    """Fault: both files of corpus B's valid entry copied over corpus A's (checksums
    intact). A is rebuilt from its own text, not read as B."""
    cache_dir = tmp_path / "cache"
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(data.read_text()[:5000], "utf-8")
    b.write_text("abc\n" * 50, "utf-8")
    fresh = data.load_text_corpus(a, cache_dir=cache_dir, preprocess="raw")
    other = data.load_text_corpus(b, cache_dir=cache_dir, preprocess="raw")
    options = {"preprocess": "raw", "token": "char", "min_freq": 0}
    ours = cache.TokenCache(cache_dir).paths(cache.entry_key(fresh.fingerprint, options))
    theirs = cache.TokenCache(cache_dir).paths(cache.entry_key(other.fingerprint, options))
    for mine, swapped in zip(ours, theirs, strict=True):
        mine.write_bytes(swapped.read_bytes())
    rebuilt = data.load_text_corpus(a, cache_dir=cache_dir, preprocess="raw")
    assert not rebuilt.cached and rebuilt.fingerprint == fresh.fingerprint
    np.testing.assert_array_equal(rebuilt.tokens, fresh.tokens)
    assert rebuilt.vocab == fresh.vocab
    assert data.load_text_corpus(a, cache_dir=cache_dir, preprocess="raw").cached


def test_two_processes_fill_the_cache_at_once(tmp_path):
    """Concurrent fills (atomic replace) both succeed and agree; the entry is then valid."""
    path, cache = tmp_path / "c.txt", tmp_path / "cache"
    path.write_text(data.read_text() * 3, "utf-8")
    code = (
        "import sys, hashlib; from rnn_jax import data; "
        "c = data.load_text_corpus(sys.argv[1], preprocess='raw', cache_dir=sys.argv[2]); "
        "print(hashlib.sha256(c.tokens.tobytes()).hexdigest())"
    )
    root = Path(data.__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(path), str(cache)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    assert outs[0][0] == outs[1][0]
    corpus = data.load_text_corpus(path, preprocess="raw", cache_dir=cache)
    assert corpus.cached
    assert hashlib.sha256(corpus.tokens.tobytes()).hexdigest() == outs[0][0].strip()
    assert not list(cache.glob(".*.tmp"))


def test_default_cache_dir(tmp_path, monkeypatch):
    """cache_dir=True: $XDG_CACHE_HOME/rnn_jax, else ~/.cache/rnn_jax; None: no cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_cache_dir() == tmp_path / "xdg" / "rnn_jax"
    path = tmp_path / "c.txt"
    path.write_text("the time traveller " * 10, "utf-8")
    data.load_text_corpus(path, cache_dir=None)
    assert not (tmp_path / "xdg").exists()
    data.load_text_corpus(path, cache_dir=True)
    assert data.load_text_corpus(path, cache_dir=True).cached
    assert list((tmp_path / "xdg" / "rnn_jax").glob("*.npy"))
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.default_cache_dir() == tmp_path / "home" / ".cache" / "rnn_jax"


# --------------------------------------------------------------------------- batches on demand


@pytest.mark.parametrize("partition", ["random", "sequential"])
@pytest.mark.parametrize(("N", "B", "T"), [(3000, 4, 7), (161, 8, 10), (1001, 4, 25), (999, 1, 1)])
def test_epoch_plan_equals_materialised_batches(partition, N, B, T):
    """plan[k] == epoch_batches(...)[k] bit for bit (K as the loop truncates), int32;
    rows [a:b] built alone == rows [a:b] of the whole batch."""
    corpus, _ = data.load_corpus(max_tokens=N)  # uint8 ids
    K = input_pipeline.batches_per_epoch(N, B, T)
    assert input_pipeline.batches_per_epoch(N, B, T) == K
    for seed in range(3):
        for epoch in range(3):
            Xs, Ys = input_pipeline.epoch_batches(corpus, B, T, partition, seed, epoch)
            plan = input_pipeline.epoch_plan(corpus, B, T, partition, seed, epoch)
            assert len(plan) == K
            got_X, got_Y = plan.materialise()
            assert got_X.dtype == got_Y.dtype == np.int32
            np.testing.assert_array_equal(got_X, Xs[:K])
            np.testing.assert_array_equal(got_Y, Ys[:K])
            for a, b in {(0, 1), (B // 2, B), (B - 1, B)}:
                part = input_pipeline.epoch_plan(corpus, B, T, partition, seed, epoch, rows=(a, b))
                X, Y = part[K - 1]
                np.testing.assert_array_equal(X, Xs[K - 1, a:b])
                np.testing.assert_array_equal(Y, Ys[K - 1, a:b])


def test_epoch_plan_holds_only_the_index_plan(tmp_path):
    """Memory: the plan's arrays are the starts (K, B) at most, never (K, B, T) copies,
    and a memmapped corpus is gathered from, not loaded."""
    path = tmp_path / "c.txt"
    path.write_text(data.read_text(), "utf-8")
    corpus, _ = data.load_corpus(path, cache_dir=tmp_path / "cache")
    corpus, _ = data.load_corpus(path, cache_dir=tmp_path / "cache")
    assert isinstance(corpus, np.memmap)
    B, T = 32, 35
    K = input_pipeline.batches_per_epoch(len(corpus), B, T)
    for partition in ("random", "sequential"):
        plan = input_pipeline.epoch_plan(corpus, B, T, partition, seed=0, epoch=0)
        arrays = [v for k, v in vars(plan).items() if isinstance(v, np.ndarray) and k != "tokens"]
        assert sum(a.nbytes for a in arrays) <= K * B * 8 + (T + 1) * 8
        X, Y = plan[0]
        assert X.shape == Y.shape == (B, T) and X.dtype == np.int32
        Xs, Ys = input_pipeline.epoch_batches(
            corpus, B, T, partition, 0, 0
        )  # the memmap works there too
        np.testing.assert_array_equal(Y, Ys[0])
        np.testing.assert_array_equal(plan[-1][0], Xs[K - 1])
    with pytest.raises(IndexError):
        plan[K]
    with pytest.raises(ValueError, match="rows"):
        input_pipeline.epoch_plan(corpus, B, T, "random", 0, 0, rows=(3, 3))


@pytest.mark.parametrize(("N", "B", "T"), [(1000, 4, 10), (2, 32, 35), (50, 32, 35), (777, 3, 8)])
def test_eval_plan_equals_eval_batches(N, B, T):
    """eval_plan == eval_batches (shrunk B and T for short corpora), also for the first
    eval_tokens tokens and for row slices."""
    corpus = (np.arange(N) % 251).astype(np.uint8)
    for eval_tokens in (None, N // 2 + 2, N):
        Xs, Ys = input_pipeline.eval_batches(corpus, B, T, eval_tokens=eval_tokens)
        plan = input_pipeline.eval_plan(corpus, B, T, eval_tokens=eval_tokens)
        assert len(plan) == len(Xs) and (plan.batch_size, plan.num_steps) == Xs.shape[1:]
        X, Y = plan.materialise()
        np.testing.assert_array_equal(X, Xs)
        np.testing.assert_array_equal(Y, Ys)
        b = plan.batch_size
        rows = input_pipeline.eval_plan(corpus, B, T, eval_tokens=eval_tokens, rows=(b - 1, b))
        np.testing.assert_array_equal(rows.materialise()[1], Ys[:, b - 1 : b])
    with pytest.raises(ValueError, match="eval_tokens"):
        input_pipeline.eval_plan(corpus, B, T, eval_tokens=1)
