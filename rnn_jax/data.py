"""Text -> tokens -> vocabulary (D2L sections 9.2 and 9.3): reading a file, the book's
or the raw preprocessing, char and word tokens, ``Vocab``, and a whole corpus as a token
array (``load_text_corpus``, through the token cache of ``rnn_jax.cache``).

Shape legend: N corpus length.

Everything here is NumPy on the host. Preprocessing (``preprocess=``):

* ``"book"``: the book's cleaning, every run of characters outside ``A-Za-z`` becomes
  one space, then lowercase (the Time Machine: 173,428 char tokens, 28 entries);
* ``"raw"``: every Unicode code point as in the file (case, digits, punctuation,
  tabs, newlines), except that each ``\\r\\n`` becomes ``\\n``. Word tokens split on
  whitespace with ``str.split()``'s rule (runs of Unicode whitespace, none empty).

In both, a UTF-8 byte order mark at the start of the file (U+FEFF, which some editors
write) marks the encoding, is not text, and is dropped.

A token array is 1-D of the smallest unsigned dtype that holds the vocabulary
(uint8, uint16 or uint32), possibly a read-only memmap from the cache. Minibatches are
built from it by ``rnn_jax.input_pipeline``.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import os
import re
import stat
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from rnn_jax.cache import entry_key, open_cache, stat_key

TIME_MACHINE = "timemachine.txt"
TOKEN_KINDS = ("char", "word")
PREPROCESS = ("book", "raw")
UNK = "<unk>"
_CHUNK = 1 << 22  # code points (or characters) handled at once: bounds the temporaries


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
    """UTF-8 bytes -> text, refusing bad bytes (naming offset, line, column) and empty
    files. A byte order mark (U+FEFF) at the start marks the encoding and is not text:
    it is dropped. Whitespace is text (``raw`` keeps it; ``book`` says it kept no letter)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise ValueError(
            f"corpus {path} is not UTF-8: byte 0x{raw[err.start]:02x} at offset {err.start} "
            f"(line {line}, column {column}) cannot be decoded"
        ) from None
    if not text:
        raise ValueError(f"corpus {path} is empty")
    return text


def read_text(path: str | Path | None = None) -> str:
    """Return the raw text of ``path``, or of the shipped Time Machine when ``None``.

    Raises ``FileNotFoundError`` for a missing file, ``IsADirectoryError`` for a folder,
    ``ValueError`` for any other file that is not a regular file (FIFO, device), and
    ``ValueError`` (naming the byte offset, line and column) for bytes that are not
    UTF-8 or for an empty file. A leading byte order mark is dropped.
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


def encode_prefixes(
    prefixes: list[str], vocab: Vocab, token: str = "char", preprocess: str = "book"
) -> list[np.ndarray]:
    """Prefixes -> one int32 ``(P_i,)`` array each (lengths may differ); refuses unknown
    tokens (``encode``'s rules for ``preprocess``) and empty prefixes."""
    if not prefixes:
        raise ValueError("need at least one prefix")
    encoded = [encode(p, vocab, token, preprocess) for p in prefixes]
    if any(len(e) == 0 for e in encoded):
        raise ValueError("a prefix must hold at least one token")
    return encoded


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


def _note(mode: str, token: str, num_chars: int, kept_letters: int, kept: int) -> str:
    if mode == "book":
        return (
            f"book preprocessing keeps only A-Z: {kept_letters:,} of {num_chars:,} "
            f"characters remained; use preprocess='raw'"
        )
    return f"raw preprocessing kept all {num_chars:,} characters as {kept:,} {token} tokens"


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
    ``cache.default_cache_dir()``, ``None``/``False`` for no cache (the shipped corpus is
    never cached: it tokenises in milliseconds). A cached corpus comes back as a
    read-only memmap; ``rnn_jax.cache`` says how entries are keyed and verified.
    """
    _check_token(token)
    _check_preprocess(preprocess)
    if max_tokens is not None and max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    if isinstance(min_freq, bool) or not isinstance(min_freq, int) or min_freq < 0:
        raise ValueError(f"min_freq must be a non-negative integer, got {min_freq!r}")
    options = {"preprocess": preprocess, "token": token, "min_freq": min_freq}
    cache = None if path is None else open_cache(cache_dir)
    st = None if path is None else _regular_file(Path(path))

    # With a cache, the corpus's sha256 comes from the stat record when it can (no
    # read), else from reading the file; either finds the entry.
    raw, hashed_at = None, 0
    sha256 = None if cache is None else cache.known_sha256(Path(path), st)
    if sha256 is None:
        hashed_at, raw = time.time_ns(), _read_bytes(path)
        sha256 = hashlib.sha256(raw).hexdigest()
    fingerprint = {"sha256": sha256, "size": st.st_size if raw is None else len(raw)}
    key = entry_key(fingerprint, options)
    hit = None if cache is None else cache.load(key, fingerprint, options)
    if hit is not None:
        if raw is not None and _unchanged(path, st):
            cache.remember_sha256(Path(path), st, sha256, hashed_at)
        tokens, meta = hit
        return _corpus(tokens, Vocab.from_json(meta["vocab"]), meta, True, max_tokens)
    if raw is None:  # the stat record was right but the entry is gone: read after all
        hashed_at, raw = time.time_ns(), _read_bytes(path)
        fingerprint = {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
    text = _decode(raw, "the shipped corpus" if path is None else path)
    del raw  # the bytes are not needed while the text is tokenised
    tokens, vocab, meta = _tokenize_text(text, path, fingerprint, options)
    del text
    if cache is not None:
        try:
            cache.store(entry_key(fingerprint, options), tokens, meta)
            if _unchanged(path, st):  # unchanged while it was read
                cache.remember_sha256(Path(path), st, fingerprint["sha256"], hashed_at)
        except OSError as err:  # a full or read-only disk costs the cache, not the load
            warnings.warn(f"could not write the token cache in {cache.folder}: {err}", stacklevel=2)
    return _corpus(tokens, vocab, meta, False, max_tokens)


def _unchanged(path: str | Path, st: os.stat_result) -> bool:
    return stat_key(os.stat(path)) == stat_key(st)


def _tokenize_text(
    text: str, path: str | Path | None, fingerprint: dict[str, Any], options: dict[str, Any]
) -> tuple[np.ndarray, Vocab, dict[str, Any]]:
    """A corpus's text -> ``(tokens, vocab, meta)``, ``meta`` what the cache keeps beside
    the tokens. Refuses a text the book's preprocessing leaves no letter of."""
    preprocess, token = options["preprocess"], options["token"]
    tokenize_ = _tokenize_chars if token == "char" else _tokenize_words
    tokens, vocab = tokenize_(text, preprocess, options["min_freq"])
    num_chars = len(text)
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
    return tokens, vocab, meta


def _corpus(
    tokens: np.ndarray, vocab: Vocab, meta: dict[str, Any], cached: bool, max_tokens: int | None
) -> Corpus:
    options = meta["options"]
    return Corpus(
        tokens=tokens if max_tokens is None else tokens[:max_tokens],
        vocab=vocab,
        num_chars=meta["num_chars"],
        preprocess=options["preprocess"],
        token=options["token"],
        fingerprint=meta["fingerprint"],
        kept=meta["kept"],
        cached=cached,
        note=meta["note"],
    )


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


def encode_corpus(
    path: str | Path, vocab: Vocab, token: str = "char", preprocess: str = "book"
) -> np.ndarray:
    """The tokens of another text as ids of ``vocab`` (a trained model's), preprocessed
    as that model's corpus was; tokens outside it score as ``<unk>``. ``(N,)`` int32."""
    tokens = tokenize(read_text(path), token, preprocess)
    return np.asarray(vocab[tokens], np.int32)
