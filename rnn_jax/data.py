"""Text -> tokens -> vocabulary -> minibatches (D2L sections 9.2 and 9.3).

Shape legend: N corpus length, B batch_size, T num_steps, K minibatches per epoch.

Everything here is NumPy on the host. A minibatch is a pair ``(X, Y)`` of int32
arrays of shape ``(B, T)`` where ``Y`` holds the token that follows each token of
``X``. The batch axis is always the leading one, so it can be split over devices.

Preprocessing (``preprocess=``):

* ``"book"``: the book's cleaning, every run of characters outside ``A-Za-z`` becomes
  one space, then lowercase (the Time Machine: 173,428 char tokens, 28 entries);
* ``"raw"``: every Unicode code point as in the file (case, digits, punctuation,
  tabs, newlines), except that each ``\\r\\n`` becomes ``\\n``. Word tokens split on
  whitespace with ``str.split()``'s rule (runs of Unicode whitespace, none empty).

A token array is 1-D of the smallest unsigned dtype that holds the vocabulary
(uint8, uint16 or uint32), possibly a read-only memmap from the cache (``_Cache``);
every batch builder returns int32. ``epoch_batches``/``eval_batches`` materialise an
epoch ``(K, B, T)``; ``epoch_plan``/``eval_plan`` build the same minibatches one at a
time from an index plan (the reference and its fast path, held equal by the tests).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import json
import os
import re
import stat
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

TIME_MACHINE = "timemachine.txt"
TOKEN_KINDS = ("char", "word")
PARTITIONS = ("random", "sequential")
PREPROCESS = ("book", "raw")
UNK = "<unk>"
CACHE_VERSION = 1  # bump when the tokenisation or the cache layout changes
_CHUNK = 1 << 22  # code points (or characters) handled at once: bounds the temporaries
_RACY_NS = 2_000_000_000  # a file modified this recently is rehashed on every load


# --------------------------------------------------------------------------- text


def _regular_file(path: Path) -> os.stat_result:
    """``os.stat`` of ``path``, refusing anything but a regular file before it is opened
    (a FIFO would block, ``/dev/zero`` never ends)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"corpus file not found: {path}") from None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"corpus path is a directory, not a text file: {path}")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"corpus path is not a regular file (a device, FIFO or socket): {path}")
    return st


def _read_bytes(path: str | Path | None) -> bytes:
    if path is None:
        return resources.files("rnn_jax").joinpath("assets", TIME_MACHINE).read_bytes()
    _regular_file(Path(path))
    return Path(path).read_bytes()


def _decode(raw: bytes, path: str | Path | None) -> str:
    """UTF-8 bytes -> text, refusing bad bytes (naming offset, line, column) and blank files."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise ValueError(
            f"corpus {path} is not UTF-8: byte 0x{raw[err.start]:02x} at offset {err.start} "
            f"(line {line}, column {column}) cannot be decoded"
        ) from None
    if not text or text.isspace():
        raise ValueError(f"corpus {path} is empty")
    return text


def read_text(path: str | Path | None = None) -> str:
    """Return the raw text of ``path``, or of the shipped Time Machine when ``None``.

    Raises ``FileNotFoundError`` for a missing file, ``IsADirectoryError`` for a folder,
    ``ValueError`` for any other file that is not a regular file (FIFO, device), and
    ``ValueError`` (naming the byte offset, line and column) for bytes that are not
    UTF-8 or for an empty file.
    """
    return _decode(_read_bytes(path), path)


def _check_preprocess(mode: str) -> None:
    if mode not in PREPROCESS:
        raise ValueError(f"preprocess must be one of {PREPROCESS}, got {mode!r}")


def _check_token(token: str) -> None:
    if token not in TOKEN_KINDS:
        raise ValueError(f"token must be one of {TOKEN_KINDS}, got {token!r}")


def preprocess(text: str, mode: str = "book") -> str:
    """``book``: every run of non-letters becomes one space, then lowercase (the regex
    reference for ``book_code_points``); ``raw``: the text with ``\\r\\n`` -> ``\\n``."""
    _check_preprocess(mode)
    if mode == "raw":
        return text.replace("\r\n", "\n")
    return re.sub("[^A-Za-z]+", " ", text).lower()


_preprocess_text = preprocess  # for functions whose ``preprocess`` argument hides it


def code_points(text: str) -> np.ndarray:
    """The Unicode code points of ``text`` as uint32 ``(len(text),)``."""
    return np.frombuffer(text.encode("utf-32-le"), np.uint32)


def book_code_points(cps: np.ndarray, after_letter: bool = True) -> np.ndarray:
    """The book's preprocessing on code points: equals ``code_points(preprocess(text))``
    for ``cps = code_points(text)``, as uint8.

    ``after_letter`` says whether the text before ``cps`` ended in a letter (True at the
    start of a text), so that a text cut into pieces gives the same result piecewise.
    """
    lower = cps | np.uint32(0x20)  # A-Z -> a-z; sets no other code point inside a-z
    letter = (lower >= ord("a")) & (lower <= ord("z"))
    keep = np.empty_like(letter)
    if len(cps):
        # A non-letter survives (as a space) only when it opens a run of non-letters.
        keep[0] = letter[0] or after_letter
        np.logical_or(letter[1:], letter[:-1], out=keep[1:])
    return np.where(letter, lower, np.uint32(ord(" ")))[keep].astype(np.uint8)


def tokenize(text: str, token: str = "char", preprocess: str | None = None) -> list[str]:
    """Split text into characters or words (``str.split()``), after applying
    ``preprocess`` (``None``: the text is already preprocessed)."""
    _check_token(token)
    if preprocess is not None:
        text = _preprocess_text(text, preprocess)
    return list(text) if token == "char" else text.split()


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
        self._build(collections.Counter(tokens), min_freq, reserved_tokens)

    @classmethod
    def from_counts(
        cls, counts: Mapping[str, int], min_freq: int = 0, reserved_tokens: Sequence[str] = ()
    ) -> Vocab:
        """The vocabulary of a text whose token counts are ``counts``."""
        vocab = cls.__new__(cls)
        vocab._build(counts, min_freq, reserved_tokens)
        return vocab

    def _build(
        self, counts: Mapping[str, int], min_freq: int, reserved_tokens: Sequence[str]
    ) -> None:
        self.token_freqs = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
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

    @property
    def dtype(self) -> np.dtype:
        """The smallest unsigned dtype that holds every id."""
        return id_dtype(len(self))

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


def id_dtype(vocab_size: int) -> np.dtype:
    """uint8, uint16 or uint32: the smallest unsigned dtype for ids ``< vocab_size``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise ValueError(f"vocabulary of {vocab_size} tokens is too large")


def encode(text: str, vocab: Vocab, token: str = "char", preprocess: str = "book") -> np.ndarray:
    """Tokens of ``text`` as int32 ids; refuses tokens outside ``vocab``.

    ``book`` takes the text as it is (a prefix must already be lowercase letters and
    spaces); ``raw`` normalises ``\\r\\n`` as the corpus was. Raises ``ValueError``
    naming every unknown token: JAX would otherwise clamp an out-of-range id silently,
    and mapping to ``<unk>`` hides a typo.
    """
    _check_preprocess(preprocess)
    tokens = tokenize(text.replace("\r\n", "\n") if preprocess == "raw" else text, token)
    unknown = vocab.unknown(tokens)
    if unknown:
        lowered = preprocess == "book" and any(t.lower() != t for t in unknown)
        raise ValueError(
            f"prefix {text!r} contains {len(unknown)} token(s) outside the vocabulary: "
            + ", ".join(repr(t) for t in unknown)
            + (" (the corpus was lowercased)" if lowered else "")
        )
    return np.asarray(vocab[tokens], dtype=np.int32)


def decode(ids: Iterable[int], vocab: Vocab, token: str = "char") -> str:
    """Ids -> text: char tokens joined as they are (raw newlines stay newlines), words
    joined with single spaces."""
    return ("" if token == "char" else " ").join(vocab.to_tokens(ids))


# --------------------------------------------------------------------------- tokenising


def _char_chunks(text: str, mode: str) -> Iterator[np.ndarray]:
    """The preprocessed code points of ``text``, ``_CHUNK`` characters at a time."""
    after_letter = True
    for start in range(0, len(text), _CHUNK):
        cps = code_points(text[start : start + _CHUNK])
        if mode == "book":
            out = book_code_points(cps, after_letter)
            after_letter = bool(len(cps)) and (int(cps[-1]) | 0x20) in range(97, 123)
            yield out
        else:
            yield cps


def _tokenize_chars(text: str, mode: str, min_freq: int) -> tuple[np.ndarray, Vocab]:
    """Char ids and vocabulary in two vectorised passes and no per-token Python.

    Pass 1 counts code points (``bincount``) and stores each chunk as provisional ids
    (the order of first appearance, so usually uint8); pass 2 maps those to the
    vocabulary's ids through a lookup table.
    """
    if mode == "raw" and "\r" in text:
        text = text.replace("\r\n", "\n")
    counts = np.zeros(0x110000, np.int64)
    provisional = np.full(0x110000, -1, np.int64)
    first_seen: list[np.ndarray] = []
    num_seen = 0
    pieces = []
    for cps in _char_chunks(text, mode):
        chunk_counts = np.bincount(cps)
        counts[: len(chunk_counts)] += chunk_counts
        present = np.flatnonzero(chunk_counts)
        new = present[provisional[present] < 0]
        provisional[new] = np.arange(num_seen, num_seen + len(new))
        num_seen += len(new)
        first_seen.append(new)
        pieces.append(provisional[cps].astype(id_dtype(num_seen)))
    seen = np.concatenate(first_seen)
    vocab = Vocab.from_counts({chr(c): int(counts[c]) for c in seen}, min_freq=min_freq)
    lookup = np.asarray([vocab[chr(c)] for c in seen], vocab.dtype)  # provisional -> id
    ids = np.empty(sum(map(len, pieces)), vocab.dtype)
    at = 0
    for i in range(len(pieces)):
        piece, pieces[i] = pieces[i], None  # free each piece once mapped
        ids[at : at + len(piece)] = lookup[piece]
        at += len(piece)
    return ids, vocab


def _word_chunks(text: str) -> Iterator[str]:
    """``text`` cut at spaces or newlines, so that each word lies inside one piece."""
    start = 0
    while start < len(text):
        stop = start + _CHUNK
        cuts = [i for i in (text.find(" ", stop), text.find("\n", stop)) if i >= 0]
        stop = min(cuts) if cuts and stop < len(text) else len(text)
        yield text[start:stop]
        start = stop


def _tokenize_words(text: str, mode: str, min_freq: int) -> tuple[np.ndarray, Vocab]:
    """Word ids and vocabulary with no Python bytecode per token: ``str.split`` per
    chunk, then one C ``map`` of ``dict.setdefault`` that gives each word the position
    of its first occurrence; ``searchsorted`` turns those into provisional ids (the
    order of first appearance) and ``bincount`` counts them."""
    if mode == "book":
        text = b"".join(c.tobytes() for c in _char_chunks(text, "book")).decode("ascii")
    first_position: dict[str, int] = {}  # word -> where it first occurs, in insertion order
    counts = np.zeros(0, np.int64)
    pieces = []
    seen = 0
    for chunk in _word_chunks(text):
        words = chunk.split()
        positions = map(first_position.setdefault, words, itertools.count(seen))
        first = np.fromiter(positions, np.int64, len(words))
        seen += len(words)
        firsts = np.fromiter(first_position.values(), np.int64, len(first_position))
        provisional = np.searchsorted(firsts, first)  # firsts is increasing
        chunk_counts = np.bincount(provisional, minlength=len(firsts))
        chunk_counts[: len(counts)] += counts
        counts = chunk_counts
        pieces.append(provisional.astype(id_dtype(len(firsts))))
    vocab = Vocab.from_counts(dict(zip(first_position, counts.tolist(), strict=True)), min_freq)
    lookup = np.fromiter(
        map(vocab.token_to_idx.get, first_position, itertools.repeat(0)),
        vocab.dtype,
        len(first_position),
    )
    ids = np.concatenate([lookup[p] for p in pieces]) if pieces else np.zeros(0, vocab.dtype)
    return ids, vocab


# --------------------------------------------------------------------------- corpus


@dataclass(frozen=True, eq=False)
class Corpus:
    """A tokenised text and where it came from."""

    tokens: np.ndarray  # (N,) unsigned ids (uint8/16/32), maybe a read-only memmap
    vocab: Vocab
    num_chars: int  # characters (code points) in the file, before preprocessing
    preprocess: str  # "book" or "raw"
    token: str  # "char" or "word"
    fingerprint: dict[str, Any]  # {"sha256", "size"} of the file's bytes
    kept: int  # tokens after preprocessing, before max_tokens
    cached: bool  # True when the tokens came from the cache
    note: str = ""  # what preprocessing kept, for error messages

    def check_batch_sizes(self, num_tokens: int, batch_size: int, num_steps: int) -> None:
        """``check_batch_sizes`` with a too-short error that says what preprocessing kept."""
        check_batch_sizes(num_tokens, batch_size, num_steps, note=self.note)


def _note(mode: str, token: str, num_chars: int, kept_letters: int, kept: int) -> str:
    if mode == "book":
        return (
            f"book preprocessing keeps only A-Z: {kept_letters:,} of {num_chars:,} "
            f"characters remained; use preprocess='raw'"
        )
    return f"raw preprocessing kept all {num_chars:,} characters as {kept:,} {token} tokens"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/rnn_jax``, else ``~/.cache/rnn_jax``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rnn_jax"


def corpus_fingerprint(path: str | Path | None = None) -> dict[str, Any]:
    """``{"sha256", "size"}`` of the bytes of ``path`` (streamed; the shipped corpus when
    None)."""
    if path is None:
        raw = _read_bytes(None)
        return {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
    _regular_file(Path(path))
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            size += len(block)
    return {"sha256": digest.hexdigest(), "size": size}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:40]


def _write_atomic(path: Path, write) -> None:
    """``write(file)`` into a temp file beside ``path``, fsync, then ``os.replace``: a
    reader sees the old file or the whole new one, and concurrent writers do not clash."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]


class _Cache:
    """The token cache: per corpus and options, ``<key>.npy`` (the ids) and ``<key>.json``
    (vocabulary, counts, and the sha256 of the ``.npy`` file, verified on every load).

    The key is a hash of the corpus's sha256 and size, ``preprocess``, ``token``,
    ``min_freq`` and ``CACHE_VERSION``. Hashing the corpus costs a full read, so
    ``files/<hash of the path>.json`` remembers the sha256 against the file's
    ``(size, mtime_ns, inode, device)``; a load whose stat matches skips the hashing. A
    file modified within ``_RACY_NS`` of being hashed is rehashed every time (the
    "racy git" rule: a file system's coarse clock could give a later edit of the same
    size the same mtime).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        (folder / "files").mkdir(parents=True, exist_ok=True)

    def _stat_file(self, path: Path) -> Path:
        return self.folder / "files" / f"{_digest(str(path.resolve()))}.json"

    def known_sha256(self, path: Path, st: os.stat_result) -> str | None:
        try:
            entry = json.loads(self._stat_file(path).read_text("utf-8"))
        except (OSError, ValueError):
            return None
        if entry.get("stat") != _stat_key(st):
            return None
        if st.st_mtime_ns >= entry.get("hashed_at_ns", 0) - _RACY_NS:
            return None
        return entry.get("sha256")

    def remember_sha256(self, path: Path, st: os.stat_result, sha256: str, at_ns: int) -> None:
        entry = {"path": str(path.resolve()), "stat": _stat_key(st), "sha256": sha256}
        entry["hashed_at_ns"] = at_ns
        _write_atomic(self._stat_file(path), lambda f: f.write(json.dumps(entry).encode()))

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.folder / f"{key}.npy", self.folder / f"{key}.json"

    def load(self, key: str) -> tuple[np.ndarray, dict[str, Any]] | None:
        """The entry's ids (a read-only memmap) and metadata; ``None`` when absent, and
        ``None`` after deleting it when it is corrupt or truncated."""
        npy, meta_path = self.paths(key)
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text("utf-8"))
            digest = hashlib.sha256()
            with open(npy, "rb") as f:
                while block := f.read(1 << 24):
                    digest.update(block)
            if meta["version"] != CACHE_VERSION or digest.hexdigest() != meta["tokens_sha256"]:
                raise ValueError("checksum mismatch")
            tokens = np.load(npy, mmap_mode="r")
            if tokens.shape != (meta["kept"],) or tokens.dtype != np.dtype(meta["dtype"]):
                raise ValueError("shape or dtype mismatch")
        except (OSError, ValueError, KeyError, TypeError):
            for p in (npy, meta_path):
                with contextlib.suppress(OSError):
                    p.unlink()
            return None
        return tokens, meta

    def store(self, key: str, tokens: np.ndarray, meta: dict[str, Any]) -> None:
        npy, meta_path = self.paths(key)
        digest = hashlib.sha256()

        def write_tokens(f):
            np.lib.format.write_array(_HashingWriter(f, digest), tokens, allow_pickle=False)

        _write_atomic(npy, write_tokens)
        meta = {**meta, "tokens_sha256": digest.hexdigest(), "version": CACHE_VERSION}
        _write_atomic(meta_path, lambda f: f.write(json.dumps(meta).encode()))


class _HashingWriter:
    """A write-only file that also feeds what it writes to a hash."""

    def __init__(self, f, digest) -> None:
        self.f, self.digest = f, digest

    def write(self, b) -> int:
        self.digest.update(b)
        return self.f.write(b)


def _cache_for(cache_dir: str | Path | bool | None) -> _Cache | None:
    if cache_dir is None or cache_dir is False:
        return None
    return _Cache(default_cache_dir() if cache_dir is True else Path(cache_dir))


def load_text_corpus(
    path: str | Path | None = None,
    *,
    token: str = "char",
    max_tokens: int | None = None,
    min_freq: int = 0,
    preprocess: str = "book",
    cache_dir: str | Path | bool | None = None,
) -> Corpus:
    """Read, preprocess and tokenise a text (the shipped Time Machine when ``path`` is
    None) into a ``Corpus``.

    The vocabulary is built from the whole text before truncation to ``max_tokens``, as
    in the book. ``cache_dir``: a folder for the token cache, ``True`` for
    ``default_cache_dir()``, ``None``/``False`` for no cache (the shipped corpus is
    never cached: it tokenises in milliseconds). A cached corpus comes back as a
    read-only memmap; see ``_Cache`` for how entries are keyed and verified.
    """
    _check_token(token)
    _check_preprocess(preprocess)
    if max_tokens is not None and max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    if isinstance(min_freq, bool) or not isinstance(min_freq, int) or min_freq < 0:
        raise ValueError(f"min_freq must be a non-negative integer, got {min_freq!r}")
    options = {"preprocess": preprocess, "token": token, "min_freq": min_freq}
    cache = None if path is None else _cache_for(cache_dir)
    st = None if path is None else _regular_file(Path(path))

    def finish(tokens, vocab, meta, cached):
        return Corpus(
            tokens=tokens if max_tokens is None else tokens[:max_tokens],
            vocab=vocab,
            num_chars=meta["num_chars"],
            preprocess=preprocess,
            token=token,
            fingerprint=meta["fingerprint"],
            kept=meta["kept"],
            cached=cached,
            note=meta["note"],
        )

    # With a cache, the corpus's sha256 comes from the stat record when it can (no
    # read), else from reading the file; either finds the entry.
    raw = None
    sha256 = None if cache is None else cache.known_sha256(Path(path), st)
    if sha256 is None:
        hashed_at = time.time_ns()
        raw = _read_bytes(path)
        sha256 = hashlib.sha256(raw).hexdigest()
    fingerprint = {"sha256": sha256, "size": st.st_size if raw is None else len(raw)}
    key = _digest({**fingerprint, **options, "v": CACHE_VERSION})
    hit = None if cache is None else cache.load(key)
    if hit is not None:
        if raw is not None and _stat_key(os.stat(path)) == _stat_key(st):
            cache.remember_sha256(Path(path), st, sha256, hashed_at)
        return finish(hit[0], Vocab.from_json(hit[1]["vocab"]), hit[1], True)
    if raw is None:  # the stat record was right but the entry is gone: read after all
        hashed_at = time.time_ns()
        raw = _read_bytes(path)
        fingerprint = {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
        key = _digest({**fingerprint, **options, "v": CACHE_VERSION})
    text = _decode(raw, "the shipped corpus" if path is None else path)
    del raw
    tokenize_ = _tokenize_chars if token == "char" else _tokenize_words
    tokens, vocab = tokenize_(text, preprocess, min_freq)
    num_chars = len(text)
    del text
    letters = 0
    if preprocess == "book":
        space = vocab.token_to_idx.get(" ", -1)
        letters = int(np.count_nonzero(tokens != space)) if token == "char" else len(tokens)
        if letters == 0:
            where = "the shipped corpus" if path is None else str(path)
            raise ValueError(
                f"corpus {where} has no letters A-Z/a-z left: "
                + _note(preprocess, token, num_chars, letters, len(tokens))
            )
    meta = {
        "fingerprint": fingerprint,
        "num_chars": num_chars,
        "kept": len(tokens),
        "note": _note(preprocess, token, num_chars, letters, len(tokens)),
        "dtype": tokens.dtype.str,
        "options": options,
        "vocab": vocab.to_json(),
    }
    if cache is not None:
        try:
            cache.store(key, tokens, meta)
            if _stat_key(os.stat(path)) == _stat_key(st):  # unchanged while it was read
                cache.remember_sha256(Path(path), st, fingerprint["sha256"], hashed_at)
        except OSError as err:  # a full or read-only disk costs the cache, not the load
            warnings.warn(f"could not write the token cache in {cache.folder}: {err}", stacklevel=2)
    return finish(tokens, vocab, meta, False)


def load_corpus(
    path: str | Path | None = None,
    *,
    token: str = "char",
    max_tokens: int | None = None,
    min_freq: int = 0,
    preprocess: str = "book",
    cache_dir: str | Path | bool | None = None,
) -> tuple[np.ndarray, Vocab]:
    """``(corpus, vocab)`` of ``load_text_corpus``: ``corpus`` a 1-D unsigned array of
    token ids. On the Time Machine with the defaults: 173,428 tokens, 28 entries."""
    corpus = load_text_corpus(
        path,
        token=token,
        max_tokens=max_tokens,
        min_freq=min_freq,
        preprocess=preprocess,
        cache_dir=cache_dir,
    )
    return corpus.tokens, corpus.vocab


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
    """K, the same for every epoch and both partitions (whatever the random offset);
    ``loop.batches_per_epoch``."""
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


def iterate(Xs: np.ndarray, Ys: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield the ``(X, Y)`` minibatches of stacked ``(K, B, T)`` arrays, as the book's
    iterators do."""
    yield from zip(Xs, Ys, strict=True)


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


def encode_corpus(
    path: str | Path, vocab: Vocab, token: str = "char", preprocess: str = "book"
) -> np.ndarray:
    """The tokens of another text as ids of ``vocab`` (a trained model's), preprocessed
    as that model's corpus was; tokens outside it score as ``<unk>``. ``(N,)`` int32."""
    tokens = tokenize(read_text(path), token, preprocess)
    return np.asarray(vocab[tokens], np.int32)
