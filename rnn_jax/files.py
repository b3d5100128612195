"""How this package writes a file so that a crash leaves the old content or the new one,
never a mix: ``write_atomic``, the one writer of whole files (the token cache, a run's
``config.json``, the truncated logs of a resumed run, the plot), and ``write_folder_atomic``,
its twin for a new folder of files (an exported sampler).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: Path, content: bytes | str | Callable[[BinaryIO], object]) -> None:
    """Replace ``path`` with ``content`` (bytes, text written as UTF-8, or a function that
    writes into the binary file it is given) in one step.

    The content goes to a temporary file of its own beside ``path`` (``.<name>.<random>.tmp``),
    is flushed to disk, then renamed over ``path``: a reader sees the old file or the whole
    new one, and two writers of the same path do not clash. On any failure the temporary
    file is removed and the error raised.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # os.open, not tempfile.mkstemp: the file gets the umask's permissions, not 0600.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(content, str):
                f.write(content.encode("utf-8"))
            elif isinstance(content, bytes):
                f.write(content)
            else:
                content(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_folder_atomic(path: Path, contents: Mapping[str, bytes | str]) -> None:
    """Create the folder ``path`` holding ``contents`` (file name -> bytes, or text written
    as UTF-8) in one step.

    The files are written (``write_atomic``) into a temporary folder of its own beside
    ``path`` (``.<name>.<random>.tmp``), which is then renamed to ``path``: a reader sees
    no folder (or the empty one that was there) or the whole new one, never some of its
    files. ``path`` must not exist or be an empty folder; the rename refuses anything else
    (``OSError``). On any failure the temporary folder is removed and the error raised.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    tmp.mkdir()
    try:
        for name, content in contents.items():
            write_atomic(tmp / name, content)
        os.rename(tmp, path)  # replaces an empty folder; fails on a file or a non-empty one
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
