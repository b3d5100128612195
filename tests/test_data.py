"""Data pipeline (D2L 9.2-9.3): corpus statistics, vocabulary, partitions, bad input."""

from __future__ import annotations

import collections
import json
import re

import numpy as np
import pytest

from rnn_jax import data, loop
from rnn_jax.config import ModelConfig, TrainConfig

# --------------------------------------------------------------------------- corpus


def test_shipped_corpus_matches_book_statistics():
    """D2L 9.2 (current edition): 173,428 char tokens, 28 vocab entries, <unk> at 0."""
    corpus, vocab = data.load_corpus()
    assert corpus.dtype == np.int32 and corpus.ndim == 1
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
    Ps, _ = data.epoch_batches(positions, B, T, partition, seed=3, epoch=1)
    Xs, Ys = data.epoch_batches(corpus, B, T, partition, seed=3, epoch=1)
    assert Xs.dtype == np.int32 and Ys.dtype == np.int32
    assert Xs.shape == Ys.shape == Ps.shape
    assert Xs.shape[1:] == (B, T) and Xs.shape[0] >= 1
    _windows_match_corpus(corpus, Ps, Xs, Ys, T)


def test_sequential_batches_continue_each_other():
    """Row b of minibatch k+1 starts where row b of minibatch k ended (D2L 9.3.3.2)."""
    N, B, T = 1000, 3, 5
    corpus = np.arange(N, dtype=np.int32)
    for offset in range(T):
        Xs, Ys = data.sequential_batches(corpus, B, T, offset)
        K = Xs.shape[0]
        assert Xs.shape == (K, B, T) and (N - offset - 1) // (B * T) == K
        assert Xs[0, 0, 0] == offset
        np.testing.assert_array_equal(Xs[1:, :, 0], Xs[:-1, :, -1] + 1)
        np.testing.assert_array_equal(Ys, Xs + 1)
        # Each row is one contiguous stream over all minibatches.
        streams = Xs.transpose(1, 0, 2).reshape(B, K * T)
        np.testing.assert_array_equal(np.diff(streams, axis=1), 1)
    with pytest.raises(ValueError, match="offset"):
        data.sequential_batches(corpus, B, T, offset=T)


@pytest.mark.parametrize(("N", "B", "T"), [(1000, 4, 7), (173, 3, 10), (40, 3, 10)])
def test_random_batches_cover_corpus_once(N, B, T):
    """Random partition: disjoint length-T subsequences, each start used once, covering
    all but fewer than B*T + T tokens."""
    corpus = np.arange(N, dtype=np.int32)
    for seed in range(5):
        Xs, Ys = data.random_batches(corpus, B, T, np.random.default_rng(seed))
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
    a = data.epoch_batches(corpus, 8, 10, "random", seed=0, epoch=2)
    b = data.epoch_batches(corpus, 8, 10, "random", seed=0, epoch=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    for other in [(0, 3), (1, 2)]:
        c = data.epoch_batches(corpus, 8, 10, "random", seed=other[0], epoch=other[1])
        n = min(len(a[0]), len(c[0]))
        assert not np.array_equal(a[0][:n], c[0][:n])
    with pytest.raises(ValueError, match="partition"):
        data.epoch_batches(corpus, 8, 10, "shuffled", seed=0, epoch=0)


def test_sequential_offset_varies_between_epochs():
    """The sequential partition draws its offset in [0, T) from (seed, epoch)."""
    corpus = np.arange(5000, dtype=np.int32)
    offsets = {
        int(data.epoch_batches(corpus, 4, 10, "sequential", seed=0, epoch=e)[0][0, 0, 0])
        for e in range(20)
    }
    assert offsets <= set(range(10)) and len(offsets) > 1


def test_train_val_split_holds_out_the_tail():
    """val is the last int(N * fraction) tokens; 0 gives an empty validation set."""
    corpus = np.arange(1000, dtype=np.int32)
    train, val = data.train_val_split(corpus, 0.1)
    np.testing.assert_array_equal(train, np.arange(900))
    np.testing.assert_array_equal(val, np.arange(900, 1000))
    train, val = data.train_val_split(corpus, 0.0)
    assert len(train) == 1000 and len(val) == 0
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="val_fraction"):
            data.train_val_split(corpus, bad)


@pytest.mark.parametrize("partition", ["random", "sequential"])
def test_validation_tokens_never_reach_training(partition):
    """With distinct positions as tokens, no training X or Y is a validation position."""
    N = 3001
    corpus = np.arange(N, dtype=np.int32)
    train, val = data.train_val_split(corpus, 0.15)
    dataset = loop.Dataset(train, val, data.Vocab(), "char")
    config = TrainConfig(batch_size=4, num_steps=9, partition=partition, max_tokens=None)
    val_positions = set(val.tolist())
    for epoch in range(10):
        Xs, Ys = loop.epoch_batches(dataset, config, epoch)
        assert not val_positions & set(np.unique(Xs).tolist())
        assert not val_positions & set(np.unique(Ys).tolist())
    Xv, Yv = data.eval_batches(val, 4, 9)
    assert min(Xv.min(), Yv.min()) >= len(train)


@pytest.mark.parametrize(
    ("N", "B", "T"),
    # N = m B T + 1 is the edge where a large random offset leaves one minibatch fewer
    # than (N - 1) // (B T); B T + T is the shortest corpus allowed.
    [(2000, 8, 10), (161, 8, 10), (1001, 4, 25), (90, 8, 10), (1000, 7, 13), (999, 1, 1)],
)
def test_loop_epoch_batches_has_k_batches_every_epoch(N, B, T):
    """loop.epoch_batches gives exactly batches_per_epoch minibatches, whatever the offset."""
    train = np.arange(N, dtype=np.int32)
    dataset = loop.Dataset(train, train[:0], data.Vocab(), "char")
    K = loop.batches_per_epoch(N, B, T)
    assert K >= 1
    for partition in ("random", "sequential"):
        for seed in range(4):
            config = TrainConfig(
                batch_size=B, num_steps=T, partition=partition, seed=seed, max_tokens=None
            )
            for epoch in range(12):
                Xs, Ys = loop.epoch_batches(dataset, config, epoch)
                assert Xs.shape == Ys.shape == (K, B, T)
                np.testing.assert_array_equal(Ys, Xs + 1)


def test_eval_batches_score_short_corpora():
    """eval_batches: offset-0 sequential batches; shrinks B and T for short corpora."""
    corpus = np.arange(1000, dtype=np.int32)
    Xs, Ys = data.eval_batches(corpus, 4, 10)
    np.testing.assert_array_equal(Xs, data.sequential_batches(corpus, 4, 10, 0)[0])
    np.testing.assert_array_equal(Ys, Xs + 1)
    for n in (2, 3, 11, 50):
        Xs, Ys = data.eval_batches(np.arange(n, dtype=np.int32), 32, 35)
        assert Xs.shape[0] >= 1 and Xs.size >= 1
        assert Ys.max() < n
        np.testing.assert_array_equal(Ys, Xs + 1)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        data.eval_batches(np.arange(1, dtype=np.int32), 4, 10)


# --------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    """A missing corpus file raises FileNotFoundError naming it."""
    path = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        data.load_corpus(path)


@pytest.mark.parametrize("content", [b"", b"   \n\t \r\n"])
def test_empty_or_blank_file(tmp_path, content):
    """Empty and whitespace-only files raise ValueError('... is empty')."""
    path = tmp_path / "blank.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="empty"):
        data.load_corpus(path)


@pytest.mark.parametrize("token", ["char", "word"])
def test_file_without_letters(tmp_path, token):
    """A file with no A-Z/a-z letters leaves nothing to learn: ValueError."""
    path = tmp_path / "digits.txt"
    path.write_text("1234 !!\n56 -- 78\n", "utf-8")
    with pytest.raises(ValueError, match="no letters"):
        data.load_corpus(path, token=token)


def test_non_utf8_file_names_offset(tmp_path):
    """Bytes that are not UTF-8 raise ValueError naming the byte, offset, line, column."""
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"time\ntra\xffveller\n")
    with pytest.raises(ValueError, match=r"0xff at offset 8 \(line 2, column 4\)"):
        data.load_corpus(path)


def test_directory_is_refused(tmp_path):
    with pytest.raises(IsADirectoryError):
        data.read_text(tmp_path)


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
    data.check_batch_sizes(B * T + T, B, T)  # exactly enough
    with pytest.raises(ValueError, match=r"too short.*needs at least 25"):
        data.check_batch_sizes(B * T + T - 1, B, T)
    for fn in (data.sequential_batches, data.random_batches):
        args = (np.random.default_rng(0),) if fn is data.random_batches else ()
        with pytest.raises(ValueError, match="too short"):
            fn(np.arange(24, dtype=np.int32), B, T, *args)

    path = tmp_path / "short.txt"
    path.write_text("the time traveller\n" * 3, "utf-8")  # 57 chars
    config = TrainConfig(corpus=str(path), batch_size=8, num_steps=10, max_tokens=None)
    with pytest.raises(ValueError, match="too short"):
        loop.load_dataset(config)
    # The same file is enough for a smaller minibatch.
    small = TrainConfig(corpus=str(path), batch_size=2, num_steps=10, max_tokens=None)
    dataset = loop.load_dataset(small)
    assert len(dataset.train) + len(dataset.val) == 57


@pytest.mark.parametrize(("B", "T"), [(0, 5), (4, 0), (-1, 5), (4, -3)])
def test_non_positive_batch_sizes(B, T):
    with pytest.raises(ValueError, match="must be positive"):
        data.check_batch_sizes(10_000, B, T)
    with pytest.raises(ValueError, match="must be positive"):
        data.sequential_batches(np.arange(10_000, dtype=np.int32), B, T)


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
        ({"max_tokens": 0}, "max_tokens"),
        ({"lr": -0.1}, "lr"),
        ({"lr": 0.0}, "lr"),
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
