"""Text -> tokens -> vocabulary -> minibatches (D2L sections 9.2 and 9.3).

Shape legend: N corpus length, B batch_size, T num_steps, K minibatches per epoch.

Everything here is NumPy on the host. A minibatch is a pair ``(X, Y)`` of int32
arrays of shape ``(B, T)`` where ``Y`` holds the token that follows each token of
``X``. The batch axis is always the leading one, so it can be split over devices.
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

TIME_MACHINE = "timemachine.txt"
TOKEN_KINDS = ("char", "word")
PARTITIONS = ("random", "sequential")
UNK = "<unk>"


# --------------------------------------------------------------------------- text


def read_text(path: str | Path | None = None) -> str:
    """Return the raw text of ``path``, or of the shipped Time Machine when ``None``.

    Raises ``FileNotFoundError`` for a missing file, ``IsADirectoryError`` for a folder
    and ``ValueError`` (naming the byte offset, line and column) for bytes that are not
    UTF-8 or for an empty file.
    """
    if path is None:
        return resources.files("rnn_jax").joinpath("assets", TIME_MACHINE).read_text("utf-8")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus file not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"corpus path is a directory, not a text file: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise ValueError(
            f"corpus {path} is not UTF-8: byte 0x{raw[err.start]:02x} at offset {err.start} "
            f"(line {line}, column {column}) cannot be decoded"
        ) from None
    if not text.strip():
        raise ValueError(f"corpus {path} is empty")
    return text


def preprocess(text: str) -> str:
    """The book's cleaning: every run of non-letters becomes one space, then lowercase."""
    return re.sub("[^A-Za-z]+", " ", text).lower()


def tokenize(text: str, token: str = "char") -> list[str]:
    """Split preprocessed text into characters or words."""
    if token == "char":
        return list(text)
    if token == "word":
        return text.split()
    raise ValueError(f"token must be one of {TOKEN_KINDS}, got {token!r}")


# --------------------------------------------------------------------------- vocab


class Vocab:
    """Token <-> id maps as in the book: ``<unk>`` is id 0, then reserved tokens, then
    tokens by decreasing frequency (ties broken alphabetically, so the order never
    depends on the text's order). Tokens seen fewer than ``min_freq`` times map to
    ``<unk>``."""

    def __init__(
        self,
        tokens: Iterable[str] = (),
        min_freq: int = 0,
        reserved_tokens: Sequence[str] = (),
    ) -> None:
        counter = collections.Counter(tokens)
        self.token_freqs = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
        self.min_freq = min_freq
        self.reserved_tokens = tuple(reserved_tokens)
        idx_to_token = [UNK, *(t for t in self.reserved_tokens if t != UNK)]
        seen = set(idx_to_token)
        for token, freq in self.token_freqs:
            if freq >= min_freq and token not in seen:
                idx_to_token.append(token)
                seen.add(token)
        self._set_tokens(idx_to_token)

    def _set_tokens(self, idx_to_token: Sequence[str]) -> None:
        self.idx_to_token = list(idx_to_token)
        self.token_to_idx = {token: idx for idx, token in enumerate(self.idx_to_token)}

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.idx_to_token == other.idx_to_token

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)}, head={self.idx_to_token[:8]})"

    @property
    def unk(self) -> int:
        return 0

    def __getitem__(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Token(s) -> id(s); unknown tokens map to ``<unk>`` (use ``encode`` to refuse them)."""
        if isinstance(tokens, str):
            return self.token_to_idx.get(tokens, self.unk)
        return [self[token] for token in tokens]

    def to_tokens(self, indices: int | Iterable[int]) -> str | list[str]:
        if isinstance(indices, int | np.integer):
            return self.idx_to_token[int(indices)]
        return [self.idx_to_token[int(i)] for i in indices]

    def unknown(self, tokens: Iterable[str]) -> list[str]:
        """The distinct tokens of ``tokens`` that are not in the vocabulary, in order seen."""
        return list(dict.fromkeys(t for t in tokens if t not in self.token_to_idx))

    def to_json(self) -> str:
        return json.dumps(
            {
                "idx_to_token": self.idx_to_token,
                "min_freq": self.min_freq,
                "reserved_tokens": list(self.reserved_tokens),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        data = json.loads(text)
        vocab = cls(min_freq=data.get("min_freq", 0), reserved_tokens=data["reserved_tokens"])
        vocab._set_tokens(data["idx_to_token"])
        return vocab


def encode(text: str, vocab: Vocab, token: str = "char") -> np.ndarray:
    """Tokens of ``text`` (not preprocessed) as int32 ids; refuses tokens outside ``vocab``.

    Raises ``ValueError`` naming every unknown token: JAX would otherwise clamp an
    out-of-range id silently, and mapping to ``<unk>`` hides a typo.
    """
    tokens = tokenize(text, token)
    unknown = vocab.unknown(tokens)
    if unknown:
        raise ValueError(
            f"prefix {text!r} contains {len(unknown)} token(s) outside the vocabulary: "
            + ", ".join(repr(t) for t in unknown)
            + (" (the corpus was lowercased)" if any(t.lower() != t for t in unknown) else "")
        )
    return np.asarray(vocab[tokens], dtype=np.int32)


def decode(ids: Iterable[int], vocab: Vocab, token: str = "char") -> str:
    return ("" if token == "char" else " ").join(vocab.to_tokens(ids))


def load_corpus(
    path: str | Path | None = None,
    *,
    token: str = "char",
    max_tokens: int | None = None,
    min_freq: int = 0,
) -> tuple[np.ndarray, Vocab]:
    """Read, preprocess and tokenize a text (the shipped Time Machine when ``path`` is
    None). Returns ``(corpus, vocab)`` with ``corpus`` a 1-D int32 array of token ids.

    The vocabulary is built from the whole text before truncation to ``max_tokens``, as
    in the book. On the Time Machine with the defaults: 173,428 tokens, 28 entries.
    """
    if token not in TOKEN_KINDS:
        raise ValueError(f"token must be one of {TOKEN_KINDS}, got {token!r}")
    if max_tokens is not None and max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    tokens = tokenize(preprocess(read_text(path)), token)
    if not [t for t in tokens if t != " "]:
        where = "the shipped corpus" if path is None else str(path)
        raise ValueError(f"corpus {where} has no letters A-Z/a-z left after preprocessing")
    vocab = Vocab(tokens, min_freq=min_freq)
    corpus = np.asarray(vocab[tokens], dtype=np.int32)
    if max_tokens is not None:
        corpus = corpus[:max_tokens]
    return corpus, vocab


# --------------------------------------------------------------------------- splits


def train_val_split(corpus: np.ndarray, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Hold out the tail ``val_fraction`` of the corpus; ``0`` gives an empty validation set."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    num_val = int(len(corpus) * val_fraction)
    cut = len(corpus) - num_val
    return corpus[:cut], corpus[cut:]


# --------------------------------------------------------------------------- partitions


def check_batch_sizes(num_tokens: int, batch_size: int, num_steps: int) -> None:
    """Refuse non-positive sizes, and a corpus shorter than one ``B x T`` minibatch (+1)."""
    if batch_size <= 0 or num_steps <= 0:
        raise ValueError(
            f"batch_size and num_steps must be positive, got {batch_size} and {num_steps}"
        )
    # The random offset can use up to num_steps - 1 tokens; both partitions then need
    # B * T inputs and one more target.
    need = batch_size * num_steps + num_steps
    if num_tokens < need:
        raise ValueError(
            f"corpus has {num_tokens} tokens, too short for one minibatch of batch_size "
            f"{batch_size} x num_steps {num_steps} (needs at least {need})"
        )


def random_batches(
    corpus: np.ndarray, batch_size: int, num_steps: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch of the book's random partition as stacked arrays ``(K, B, T)``.

    A random offset in ``[0, T)`` is dropped, the rest is cut into length-``T``
    subsequences, and those are shuffled into minibatches. Adjacent minibatches do not
    continue each other, so each starts from a zero hidden state.
    """
    check_batch_sizes(len(corpus), batch_size, num_steps)
    offset = int(rng.integers(0, num_steps))
    num_subseqs = (len(corpus) - offset - 1) // num_steps
    starts = offset + num_steps * rng.permutation(num_subseqs)
    num_batches = num_subseqs // batch_size
    starts = starts[: num_batches * batch_size].reshape(num_batches, batch_size)
    window = starts[..., None] + np.arange(num_steps)
    return corpus[window], corpus[window + 1]


def sequential_batches(
    corpus: np.ndarray, batch_size: int, num_steps: int, offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch of the book's sequential partition as stacked arrays ``(K, B, T)``.

    The corpus (after ``offset`` tokens) is cut into ``B`` parallel streams; minibatch
    ``k`` holds the columns ``[k T, (k + 1) T)`` of each stream, so row ``b`` of
    minibatch ``k + 1`` continues row ``b`` of minibatch ``k`` and a hidden state can be
    carried across them.
    """
    check_batch_sizes(len(corpus), batch_size, num_steps)
    if not 0 <= offset < num_steps:
        raise ValueError(f"offset must be in [0, num_steps), got {offset}")
    return _parallel_streams(corpus[offset:], batch_size, num_steps)


def _parallel_streams(
    corpus: np.ndarray, batch_size: int, num_steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``corpus`` into ``B`` streams and those into consecutive ``(K, B, T)`` windows."""
    num_tokens = ((len(corpus) - 1) // batch_size) * batch_size
    Xs = corpus[:num_tokens].reshape(batch_size, -1)
    Ys = corpus[1 : num_tokens + 1].reshape(batch_size, -1)
    num_batches = Xs.shape[1] // num_steps
    shape = (batch_size, num_batches, num_steps)
    Xs = Xs[:, : num_batches * num_steps].reshape(shape).transpose(1, 0, 2)
    Ys = Ys[:, : num_batches * num_steps].reshape(shape).transpose(1, 0, 2)
    return np.ascontiguousarray(Xs), np.ascontiguousarray(Ys)


def epoch_batches(
    corpus: np.ndarray,
    batch_size: int,
    num_steps: int,
    partition: str,
    seed: int,
    epoch: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The minibatches of ``epoch`` as ``(K, B, T)`` arrays, a pure function of
    ``(seed, epoch)`` so that a resumed run sees exactly the batches it would have."""
    rng = np.random.default_rng([seed, epoch])
    if partition == "random":
        return random_batches(corpus, batch_size, num_steps, rng)
    if partition == "sequential":
        return sequential_batches(corpus, batch_size, num_steps, int(rng.integers(0, num_steps)))
    raise ValueError(f"partition must be one of {PARTITIONS}, got {partition!r}")


def iterate(Xs: np.ndarray, Ys: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield the ``(X, Y)`` minibatches of stacked ``(K, B, T)`` arrays, as the book's
    iterators do."""
    yield from zip(Xs, Ys, strict=True)


def eval_batches(
    corpus: np.ndarray, batch_size: int, num_steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sequential minibatches (offset 0) for evaluation; a short corpus gets a smaller
    batch and window so that any corpus of at least two tokens can be scored."""
    if len(corpus) < 2:
        raise ValueError(f"need at least 2 tokens to evaluate, got {len(corpus)}")
    batch_size = max(1, min(batch_size, (len(corpus) - 1) // num_steps))
    num_steps = min(num_steps, (len(corpus) - 1) // batch_size)
    return _parallel_streams(corpus, batch_size, num_steps)


# --------------------------------------------------------------------------- (shim: replaced by the data layer)


@dataclass(frozen=True)
class Corpus:
    tokens: np.ndarray
    vocab: Vocab
    num_chars: int
    preprocess: str
    token: str
    fingerprint: dict
    kept: int
    cached: bool = False


def load_text_corpus(
    path=None, *, token="char", preprocess="book", min_freq=0, cache_dir=None, max_tokens=None
):
    import hashlib

    text = read_text(path)
    raw = text.encode("utf-8")
    tokens = tokenize(preprocess_text(text, preprocess), token)
    if not [t for t in tokens if t != " "]:
        where = "the shipped corpus" if path is None else str(path)
        raise ValueError(f"corpus {where} has no letters A-Z/a-z left after preprocessing")
    vocab = Vocab(tokens, min_freq=min_freq)
    ids = np.asarray(vocab[tokens], dtype=np.int32)
    fp = {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
    return Corpus(
        ids if max_tokens is None else ids[:max_tokens],
        vocab,
        len(text),
        preprocess,
        token,
        fp,
        len(ids),
    )


def preprocess_text(text, preprocess):
    return preprocess_book(text) if preprocess == "book" else text.replace("\r\n", "\n")


preprocess_book = preprocess


class EpochBatches:
    def __init__(self, corpus, batch_size, num_steps, partition, seed, epoch, num_batches=None):
        self.epoch = epoch
        Xs, Ys = epoch_batches(corpus, batch_size, num_steps, partition, seed, epoch)
        self.Xs, self.Ys = Xs[:num_batches], Ys[:num_batches]

    def __len__(self):
        return len(self.Xs)

    def __getitem__(self, k):
        return self.Xs[k], self.Ys[k]


def encode_corpus(path, vocab, token="char", preprocess="book"):
    words = tokenize(preprocess_text(read_text(path), preprocess), token)
    return np.asarray(vocab[words], np.int32)
