"""How this package writes a file so that a crash leaves the old content or the new one,
never a mix: ``write_atomic``, the one writer of whole files (the token cache, a run's
``config.json``, the truncated logs of a resumed run, the plot).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
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
