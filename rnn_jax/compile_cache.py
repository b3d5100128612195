"""JAX's persistent compilation cache beside the token cache: a second run of the same
shapes loads its compiled programs (the train step, evaluation, sampling) from disk
instead of compiling them again.

``use_compilation_cache(folder)`` points JAX at ``<folder>/xla`` for the rest of the
process; the command line calls it where a run uses the token cache (``--no-cache``: no
cache of either kind). A library caller is unaffected unless it calls it. A program is
looked up by a hash of its lowered module, the devices and the compile options (JAX's
``cache_key``), so a changed model, shape or JAX version compiles anew, and a loaded
executable computes what a fresh compile would, bit for bit.

JAX's own file cache writes an entry in place (``Path.write_bytes``), so another process
could read half of it, and a write that fails (a full disk) is reported as a warning on
stderr. The entries here are written as the token cache's are (``files.write_atomic``):
a reader sees none or all of an entry, and a write that fails leaves no entry, silently;
many processes (the test suite's) share one folder safely. That cache is installed where
JAX keeps its own (``jax._src.compilation_cache._cache``, private, the same from jax 0.4
to 0.11); ``tests/test_startup.py`` fails if a JAX moves it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import jax
from jax._src import compilation_cache as jax_compilation_cache
from jax._src.lru_cache import LRUCache

from rnn_jax.files import write_atomic

SUBFOLDER = "xla"  # in the token cache's folder
# Every program is cached: JAX's default threshold (1 s of compiling) would leave out
# most of a small model's programs on CPU, and any threshold makes what is cached depend
# on the machine's load; loading even a tiny program is faster than compiling it.
MIN_COMPILE_S = 0.0


class _AtomicFileCache(LRUCache):
    """JAX's file cache (no size limit, no eviction) with atomic, failure-silent writes."""

    def put(self, key: str, value: bytes) -> None:
        path = self.path / f"{key}-cache"  # the name LRUCache.get reads
        if not path.exists():
            with contextlib.suppress(OSError):  # no entry: the next run compiles again
                write_atomic(path, value)


def use_compilation_cache(folder: Path) -> Path | None:
    """Compile through the persistent cache in ``folder / SUBFOLDER`` from now on in this
    process; call it before the first compile. Returns the cache's folder, or None when
    it cannot be created (nothing is cached then) or a cache was set up already."""
    path = Path(folder) / SUBFOLDER
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    with jax_compilation_cache._cache_initialized_mutex:
        if jax_compilation_cache._cache_initialized:
            return None
        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)
        jax_compilation_cache._cache = _AtomicFileCache(str(path), max_size=-1)
        jax_compilation_cache._cache_initialized = True
    return path
