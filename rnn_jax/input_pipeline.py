"""The input pipeline: a corpus -> train/validation splits -> the minibatches of each
epoch (D2L 9.3's random and sequential partitions), and the ``Dataset`` a run trains on.

Shape legend: N corpus length, B batch_size, T num_steps, K minibatches per epoch.

A minibatch is a pair ``(X, Y)`` of int32 arrays of shape ``(B, T)`` where ``Y`` holds
the token that follows each token of ``X``. The batch axis is always the leading one,
so it can be split over devices. ``epoch_batches``/``eval_batches`` materialise an epoch
``(K, B, T)`` (the references); ``epoch_plan``/``eval_plan`` build the same minibatches
one at a time from an index plan (the fast path, held equal by the tests), which is
what a run trains on: memory is the token array and one epoch's plan, never a copy.

An epoch's minibatches are a pure function of ``(seed, epoch)``, so a resumed run sees
exactly the batches it would have; K (``batches_per_epoch``) is the same for every
epoch and both partitions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rnn_jax import data
from rnn_jax.config import PARTITIONS, TrainConfig

# --------------------------------------------------------------------------- splits


def train_val_split(corpus: np.ndarray, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Hold out the tail ``val_fraction`` of the corpus; ``0`` gives an empty validation set."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    num_val = int(len(corpus) * val_fraction)
    cut = len(corpus) - num_val
    return corpus[:cut], corpus[cut:]


# --------------------------------------------------------------------------- partitions


def check_batch_sizes(num_tokens: int, batch_size: int, num_steps: int, note: str = "") -> None:
    """Refuse non-positive sizes, and a corpus shorter than one ``B x T`` minibatch (+1).

    ``note`` (e.g. ``Corpus.note``: what preprocessing kept) is added to the too-short
    error.
    """
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
            + (f"; {note}" if note else "")
        )


def batches_per_epoch(num_tokens: int, batch_size: int, num_steps: int) -> int:
    """K, the same for every epoch and both partitions (whatever the random offset)."""
    return (num_tokens - num_steps) // (batch_size * num_steps)


def _random_starts(num_tokens: int, num_steps: int, rng: np.random.Generator) -> np.ndarray:
    """The random partition's shuffled window starts, flat; the draws of ``random_batches``."""
    offset = int(rng.integers(0, num_steps))
    num_subseqs = (num_tokens - offset - 1) // num_steps
    return offset + num_steps * rng.permutation(num_subseqs)


def random_batches(
    corpus: np.ndarray, batch_size: int, num_steps: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch of the book's random partition as stacked int32 arrays ``(K, B, T)``.

    A random offset in ``[0, T)`` is dropped, the rest is cut into length-``T``
    subsequences, and those are shuffled into minibatches. Adjacent minibatches do not
    continue each other, so each starts from a zero hidden state.
    """
    check_batch_sizes(len(corpus), batch_size, num_steps)
    starts = _random_starts(len(corpus), num_steps, rng)
    num_batches = len(starts) // batch_size
    starts = starts[: num_batches * batch_size].reshape(num_batches, batch_size)
    window = starts[..., None] + np.arange(num_steps)
    return corpus[window].astype(np.int32), corpus[window + 1].astype(np.int32)


def sequential_batches(
    corpus: np.ndarray, batch_size: int, num_steps: int, offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch of the book's sequential partition as stacked int32 arrays ``(K, B, T)``.

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
    return Xs.astype(np.int32), Ys.astype(np.int32)


def epoch_batches(
    corpus: np.ndarray,
    batch_size: int,
    num_steps: int,
    partition: str,
    seed: int,
    epoch: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The minibatches of ``epoch`` as int32 ``(K, B, T)`` arrays, a pure function of
    ``(seed, epoch)`` so that a resumed run sees exactly the batches it would have.

    This materialises the whole epoch; ``EpochPlan`` builds the same batches one at a
    time (this is its reference)."""
    rng = np.random.default_rng([seed, epoch])
    if partition == "random":
        return random_batches(corpus, batch_size, num_steps, rng)
    if partition == "sequential":
        return sequential_batches(corpus, batch_size, num_steps, int(rng.integers(0, num_steps)))
    raise ValueError(f"partition must be one of {PARTITIONS}, got {partition!r}")


def _eval_sizes(num_tokens: int, batch_size: int, num_steps: int) -> tuple[int, int]:
    if num_tokens < 2:
        raise ValueError(f"need at least 2 tokens to evaluate, got {num_tokens}")
    batch_size = max(1, min(batch_size, (num_tokens - 1) // num_steps))
    num_steps = min(num_steps, (num_tokens - 1) // batch_size)
    return batch_size, num_steps


def _eval_tokens(corpus: np.ndarray, eval_tokens: int | None) -> np.ndarray:
    if eval_tokens is None:
        return corpus
    if eval_tokens < 2:
        raise ValueError(f"eval_tokens must be at least 2, got {eval_tokens}")
    return corpus[:eval_tokens]


def eval_batches(
    corpus: np.ndarray, batch_size: int, num_steps: int, *, eval_tokens: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Sequential int32 minibatches ``(K, B, T)`` (offset 0) for evaluation of the first
    ``eval_tokens`` tokens (all when None); a short corpus gets a smaller batch and
    window so that any corpus of at least two tokens can be scored."""
    corpus = _eval_tokens(corpus, eval_tokens)
    batch_size, num_steps = _eval_sizes(len(corpus), batch_size, num_steps)
    return _parallel_streams(corpus, batch_size, num_steps)


class EpochPlan:
    """One epoch's minibatches, built on demand: ``plan[k]`` is the int32 ``(X, Y)`` of
    shape ``(rows, T)`` equal to minibatch ``k`` of the materialised reference
    (``epoch_batches``, or ``eval_batches`` for ``eval_plan``), restricted to ``rows``.

    It holds only the index plan: the random partition's window starts ``(K, B)``, or
    the sequential partition's offset and stream length ``L`` (row ``b`` of minibatch
    ``k`` starts at ``offset + b L + k T``). Memory is the token array plus that plan.
    ``rows = (row_start, row_stop)`` builds only those rows of every minibatch, e.g. a
    host's share of the batch axis.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        num_steps: int,
        num_batches: int,
        *,
        starts: np.ndarray | None = None,
        offset: int = 0,
        stream_len: int = 0,
        rows: tuple[int, int] | None = None,
    ) -> None:
        row_start, row_stop = (0, batch_size) if rows is None else rows
        if not 0 <= row_start < row_stop <= batch_size:
            raise ValueError(f"rows must satisfy 0 <= start < stop <= {batch_size}, got {rows}")
        self.tokens, self.batch_size, self.num_steps = tokens, batch_size, num_steps
        self.num_batches, self.rows = num_batches, (row_start, row_stop)
        self.offset, self.stream_len = offset, stream_len
        self._starts = None if starts is None else starts[:num_batches, row_start:row_stop]
        self._window = np.arange(num_steps + 1)

    def __len__(self) -> int:
        return self.num_batches

    def starts(self, k: int) -> np.ndarray:
        """Where each row of minibatch ``k`` starts in ``tokens``, ``(rows,)`` int64."""
        if not -self.num_batches <= k < self.num_batches:
            raise IndexError(f"minibatch {k} out of range for {self.num_batches}")
        k %= self.num_batches
        if self._starts is not None:
            return self._starts[k]
        rows = np.arange(*self.rows, dtype=np.int64)
        return self.offset + rows * self.stream_len + k * self.num_steps

    def batch(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Minibatch ``k`` as int32 ``(X, Y)``, each ``(rows, T)``."""
        window = self.tokens[self.starts(k)[:, None] + self._window].astype(np.int32)
        return window[:, :-1], window[:, 1:]

    __getitem__ = batch

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return (self.batch(k) for k in range(self.num_batches))

    def materialise(self) -> tuple[np.ndarray, np.ndarray]:
        """All minibatches stacked, ``(K, rows, T)`` each (for tests and small corpora)."""
        Xs, Ys = zip(*self, strict=True)
        return np.stack(Xs), np.stack(Ys)


def epoch_plan(
    corpus: np.ndarray,
    batch_size: int,
    num_steps: int,
    partition: str,
    seed: int,
    epoch: int,
    *,
    rows: tuple[int, int] | None = None,
) -> EpochPlan:
    """The on-demand twin of ``epoch_batches`` (the same draws from ``(seed, epoch)``),
    truncated to ``K = batches_per_epoch(N, B, T)`` minibatches as the loop trains on."""
    check_batch_sizes(len(corpus), batch_size, num_steps)
    rng = np.random.default_rng([seed, epoch])
    K = batches_per_epoch(len(corpus), batch_size, num_steps)
    if partition == "random":
        starts = _random_starts(len(corpus), num_steps, rng)
        starts = starts[: K * batch_size].reshape(K, batch_size)
        return EpochPlan(corpus, batch_size, num_steps, K, starts=starts, rows=rows)
    if partition == "sequential":
        offset = int(rng.integers(0, num_steps))
        stream_len = (len(corpus) - offset - 1) // batch_size
        return EpochPlan(
            corpus, batch_size, num_steps, K, offset=offset, stream_len=stream_len, rows=rows
        )
    raise ValueError(f"partition must be one of {PARTITIONS}, got {partition!r}")


def eval_plan(
    corpus: np.ndarray,
    batch_size: int,
    num_steps: int,
    *,
    eval_tokens: int | None = None,
    rows: tuple[int, int] | None = None,
) -> EpochPlan:
    """The on-demand twin of ``eval_batches`` (same shrinking of B and T, all its K
    minibatches); ``plan.batch_size``/``plan.num_steps`` are the sizes it settled on."""
    corpus = _eval_tokens(corpus, eval_tokens)
    batch_size, num_steps = _eval_sizes(len(corpus), batch_size, num_steps)
    stream_len = (len(corpus) - 1) // batch_size
    K = stream_len // num_steps
    return EpochPlan(corpus, batch_size, num_steps, K, stream_len=stream_len, rows=rows)


# --------------------------------------------------------------------------- the dataset


@dataclass(frozen=True)
class Dataset:
    """What a run trains and validates on, and where it came from."""

    train: np.ndarray  # (N_train,) token ids (an unsigned int array, maybe memory-mapped)
    val: np.ndarray  # (N_val,) the held-out tail; may be empty
    vocab: data.Vocab
    token: str
    preprocess: str = "book"
    fingerprint: dict[str, Any] = field(default_factory=dict)  # the corpus file's sha256, size
    num_chars: int = 0  # characters in the file, before preprocessing
    num_tokens: int = 0  # tokens after preprocessing, before max_tokens

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


def load_dataset(config: TrainConfig, cache_dir: str | bool | None = None) -> Dataset:
    """Corpus -> train/validation split, checked to hold at least one minibatch.

    ``cache_dir``: the token cache (``True``: the default folder; ``None``: none); see
    ``data.load_text_corpus``.
    """
    corpus = data.load_text_corpus(
        config.corpus,
        token=config.token,
        preprocess=config.preprocess,
        min_freq=config.min_freq,
        cache_dir=cache_dir,
    )
    tokens = corpus.tokens
    if config.max_tokens is not None:
        tokens = tokens[: config.max_tokens]
    train, val = train_val_split(tokens, config.val_fraction)
    check_batch_sizes(len(train), config.batch_size, config.num_steps, note=corpus.note)
    return Dataset(
        train,
        val,
        corpus.vocab,
        config.token,
        config.preprocess,
        dict(corpus.fingerprint),
        corpus.num_chars,
        corpus.kept,
    )


def describe_data(config: TrainConfig, dataset: Dataset) -> str:
    """The start-of-run summary: where the text came from, what preprocessing kept, and
    how many tokens train and validate."""
    source = config.corpus or "the shipped Time Machine"
    used = len(dataset.train) + len(dataset.val)
    cut = "" if used == dataset.num_tokens else f", the first {used:,} used"
    return (
        f"data: {source}: {dataset.num_chars:,} characters, {dataset.preprocess} preprocessing "
        f"-> {dataset.num_tokens:,} {dataset.token} tokens{cut}, "
        f"vocabulary {dataset.vocab_size:,}; "
        f"{len(dataset.train):,} train / {len(dataset.val):,} validation tokens"
    )


def steps_per_epoch(config: TrainConfig, dataset: Dataset) -> int:
    """K of the training split."""
    return batches_per_epoch(len(dataset.train), config.batch_size, config.num_steps)


def total_steps(config: TrainConfig, dataset: Dataset) -> int:
    """The step budget: ``num_epochs`` epochs, or ``max_steps`` if fewer."""
    steps = config.num_epochs * steps_per_epoch(config, dataset)
    return steps if config.max_steps is None else min(steps, config.max_steps)


def train_plan(
    dataset: Dataset, config: TrainConfig, epoch: int, rows: tuple[int, int] | None = None
) -> EpochPlan:
    """The K minibatches of ``epoch`` of the training split, built on demand
    (``plan[k] -> (X, Y)`` int32 ``(B, T)``); ``rows`` builds only those rows (a
    process's share of the batch)."""
    return epoch_plan(
        dataset.train,
        config.batch_size,
        config.num_steps,
        config.partition,
        config.seed,
        epoch,
        rows=rows,
    )


def validation_tokens(config: TrainConfig, dataset: Dataset) -> np.ndarray:
    """The tokens a run validates on: the validation split, cut to ``eval_tokens``."""
    return dataset.val if config.eval_tokens is None else dataset.val[: config.eval_tokens]


def default_prefixes(dataset: Dataset) -> list[str]:
    """The samples' prefixes when the config names none: the first tokens of the
    validation split (or of the training split)."""
    source = dataset.val if len(dataset.val) >= 2 else dataset.train
    count = 16 if dataset.token == "char" else 3
    ids = np.asarray(source[:count])
    return [data.decode(ids, dataset.vocab, dataset.token)]


def sample_prefixes(config: TrainConfig, dataset: Dataset) -> list[str]:
    """The prefixes a run's samples continue: the config's, else ``default_prefixes``."""
    return list(config.sample_prefix) if config.sample_prefix else default_prefixes(dataset)
