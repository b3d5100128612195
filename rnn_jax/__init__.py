"""rnn_jax: the recurrent language models of Dive into Deep Learning in pure JAX."""

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


_threads_for_simulated_devices()
