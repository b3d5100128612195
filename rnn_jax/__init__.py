"""rnn_jax: the recurrent language models of Dive into Deep Learning in pure JAX."""

import ctypes
import os

__version__ = "0.1.0"


def _threads_for_simulated_devices() -> None:
    """Two of XLA's CPU threads per simulated device, set before JAX starts its backend.

    With ``JAX_NUM_CPU_DEVICES=N``, XLA sizes its CPU thread pool at ``max(cores, N)``,
    and a collective (the gradients' all-reduce) holds a pool thread until all N devices
    arrive. The devices' other work shares the same pool, so on 2 cores, 4 simulated
    devices deadlocked there about once in 25 runs under load: XLA aborts the process
    after 40 s. XLA reads the pool's size from ``NPROC`` when it is set; this raises it
    to at least ``2 N``. Real devices (GPU, TPU, one CPU) are not concerned.
    """
    devices, nproc = (os.environ.get(k, "") for k in ("JAX_NUM_CPU_DEVICES", "NPROC"))
    if devices.isdigit() and int(devices) > 1:
        floor = max(os.cpu_count() or 1, 2 * int(devices))
        os.environ["NPROC"] = str(max(int(nproc) if nproc.isdigit() else 0, floor))


def _reuse_freed_memory() -> None:
    """glibc's malloc keeps the large blocks XLA frees, to hand them out again.

    XLA's CPU client allocates a step's temporary buffers as one block (about 35 MB for
    an LSTM at H 256, T 64, B 32). glibc maps any block over 32 MB afresh from the kernel
    and unmaps it when it is freed, so every train step faulted in and zeroed that many
    pages again: 8,562 page faults a step, a third of the step's time at T 64
    (``docs/performance.md``). With ``mmap`` off (``M_MMAP_MAX`` 0; glibc still maps
    when its heap cannot grow) and the heap's free top kept up to 2 GiB
    (``M_TRIM_THRESHOLD``), the block is reused. The process's resident memory stays at
    its peak instead of shrinking.

    XLA runs a step on its own threads, and glibc gives each thread heaps of at most
    64 MB. A block that does not fit beside what a thread's first heap already holds
    (after an evaluation, an LSTM's 34 MB at H 256, T 64) goes to a heap of its own,
    which glibc unmapped as soon as it was empty again: 8,419 page faults a step, 42 ms
    instead of 28. A top pad of 64 MB (``M_TOP_PAD``) makes glibc keep such a heap. A
    block over 64 MB (an LSTM at H 512, T 64) fits in no thread heap and is still mapped
    afresh; one heap for every thread (``M_ARENA_MAX`` 1) would reuse it too, but makes
    compiling slower on several threads, so it is left out (``docs/performance.md``).
    Other C libraries (macOS, musl) are left as they are.
    """
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: its mallopt takes these
        return
    mallopt = libc.mallopt
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4  # <malloc.h>
    mallopt(M_MMAP_MAX, 0)
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    mallopt(M_TOP_PAD, 64 << 20)


_threads_for_simulated_devices()
_reuse_freed_memory()
