"""The token cache: a tokenised corpus kept on disk, so that a text is read, hashed and
tokenised once (``data.load_text_corpus`` consults it).

Per corpus and tokenising options, an entry is ``<key>.npy`` (the token ids) and
``<key>.json`` (vocabulary, counts, the corpus's fingerprint and options, and the sha256
of the ``.npy`` file, verified on every load). The key is a hash of the corpus's sha256
and size, the options and ``CACHE_VERSION``; an entry whose recorded fingerprint or
options are not those it is loaded for (another corpus's entry copied over it) is
rebuilt, as a damaged one is. Hashing the corpus costs a full read, so ``files/<hash of the
path>.json`` remembers the sha256 against the file's ``(size, mtime_ns, inode, device)``;
a load whose stat matches skips the hashing. A file modified within ``RACY_NS`` of being
hashed is rehashed every time (the "racy git" rule: a file system's coarse clock could
give a later edit of the same size the same mtime).

Writes are atomic (``files.write_atomic``): two runs filling the cache at once are safe.
A damaged entry is deleted and rebuilt, never trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from rnn_jax.files import write_atomic

CACHE_VERSION = 2  # bump when the tokenisation or the cache layout changes (2: BOM dropped)
RACY_NS = 2_000_000_000  # a file modified this recently is rehashed on every load


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/rnn_jax``, else ``~/.cache/rnn_jax``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rnn_jax"


def cache_folder(cache: bool, cache_dir: str | None) -> Path | None:
    """The folder a run's settings (``RunConfig.cache``, ``cache_dir``) name: ``cache_dir``,
    else ``default_cache_dir()``; None when ``cache`` is off (``--no-cache``)."""
    if not cache:
        return None
    return Path(cache_dir) if cache_dir else default_cache_dir()


class CacheFolderError(ValueError):
    """The cache folder cannot be created or written (a file, a read-only disk)."""

    def __init__(self, folder: Path, reason: str) -> None:
        self.folder, self.reason = folder, reason
        super().__init__(f"the token cache folder {folder} cannot be used ({reason})")


def open_cache(cache_dir: str | Path | bool | None) -> TokenCache | None:
    """The cache in ``cache_dir``: ``True`` for ``default_cache_dir()``, ``None`` or
    ``False`` for none. Raises ``CacheFolderError`` when the folder cannot be written."""
    if cache_dir is None or cache_dir is False:
        return None
    return TokenCache(default_cache_dir() if cache_dir is True else Path(cache_dir))


def entry_key(fingerprint: dict[str, Any], options: dict[str, Any]) -> str:
    """The key of a corpus's entry: its ``{"sha256", "size"}`` and the tokenising options."""
    return _digest({**fingerprint, **options, "v": CACHE_VERSION})


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:40]


def stat_key(st: os.stat_result) -> list[int]:
    """What says a file is unchanged since it was hashed: size, mtime, inode, device."""
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]


class TokenCache:
    """The entries and remembered hashes in ``folder`` (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            (folder / "files").mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CacheFolderError(folder, err.strerror or str(err)) from None
        if not all(os.access(p, os.W_OK) for p in (folder, folder / "files")):
            raise CacheFolderError(folder, "not writable")

    def _stat_file(self, path: Path) -> Path:
        return self.folder / "files" / f"{_digest(str(path.resolve()))}.json"

    def known_sha256(self, path: Path, st: os.stat_result) -> str | None:
        """The sha256 remembered for ``path`` if its stat record ``st`` is unchanged since
        (and it was not modified within ``RACY_NS`` of being hashed), else None."""
        try:
            entry = json.loads(self._stat_file(path).read_text("utf-8"))
        except (OSError, ValueError):
            return None
        if entry.get("stat") != stat_key(st):
            return None
        if st.st_mtime_ns >= entry.get("hashed_at_ns", 0) - RACY_NS:
            return None
        return entry.get("sha256")

    def remember_sha256(self, path: Path, st: os.stat_result, sha256: str, at_ns: int) -> None:
        entry = {"path": str(path.resolve()), "stat": stat_key(st), "sha256": sha256}
        entry["hashed_at_ns"] = at_ns
        write_atomic(self._stat_file(path), json.dumps(entry))

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.folder / f"{key}.npy", self.folder / f"{key}.json"

    def load(
        self, key: str, fingerprint: dict[str, Any], options: dict[str, Any]
    ) -> tuple[np.ndarray, dict[str, Any]] | None:
        """The entry's ids (a read-only memmap) and metadata; ``None`` when absent, and
        ``None`` after deleting it when it is corrupt or truncated, or records another
        corpus's ``fingerprint`` or other ``options`` than those of ``key``."""
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
            if meta["fingerprint"] != fingerprint or meta["options"] != options:
                raise ValueError("another corpus's entry")
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
        """Write the entry: the ids first, then the metadata that vouches for them."""
        npy, meta_path = self.paths(key)
        digest = hashlib.sha256()

        def write_tokens(f: BinaryIO) -> None:
            np.lib.format.write_array(_HashingWriter(f, digest), tokens, allow_pickle=False)

        write_atomic(npy, write_tokens)
        meta = {**meta, "tokens_sha256": digest.hexdigest(), "version": CACHE_VERSION}
        write_atomic(meta_path, json.dumps(meta))


class _HashingWriter:
    """A write-only file that also feeds what it writes to a hash."""

    def __init__(self, f: BinaryIO, digest: Any) -> None:
        self.f, self.digest = f, digest

    def write(self, b: bytes) -> int:
        self.digest.update(b)
        return self.f.write(b)
