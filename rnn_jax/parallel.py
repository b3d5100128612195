"""Data parallelism on a device mesh, and the building blocks of a multi-host run.

Shape legend: K minibatches, B batch (global, over all devices), T num_steps, H num_hiddens,
N devices in the mesh, P processes.

One mesh axis, ``"data"``, over N devices. The batch axis B of the inputs ``(B, T)``,
the targets and the carried hidden state ``(B, H)`` (every leaf: the LSTM's ``(H, C)``,
one per layer when stacked) is split into N blocks of B/N rows, one per device; the
parameters, the optimizer state, the step and the key are replicated. The train step is
the one-device step jitted with these shardings (``step.make_train_step(..., mesh)``):
XLA's SPMD partitioner runs every row-wise op on the local rows and turns the mean over
B in the loss, and so the gradients, into a per-device partial sum and an all-reduce.
That is why the numbers match one device only to float32 rounding: the sum over B is
reduced in another order, not bitwise.

The axis is ``AxisType.Auto``, not jax's default ``Explicit``: the step states its
shardings once at the ``jit`` boundary (``in_shardings``/``out_shardings``), and the
partitioner places everything inside, so the model, the loss and the cells stay free of
sharding annotations, run unchanged on one device, and need no ``jax.set_mesh`` context.
Explicit axes would make every op inside the step carry a sharding type and ask for an
``out_sharding`` on each reduction over B.

Several processes (hosts): ``initialize_distributed`` first, then the mesh spans all
devices of all processes; each process holds the rows ``process_rows(B, mesh)`` of every
minibatch (a fixed block of the B streams, so in the sequential partition each process
carries the hidden state of its own rows) and ``put_batch`` assembles the global array
from every process's rows. ``is_main_process`` says who prints and writes files.

How several processes stop. A signal to any one of them stops all of them after the
same step: JAX's preemption notifier (installed by ``jax.distributed.initialize``) takes
SIGTERM, tells every process through the coordination service, and they agree in the
background on the step to stop at, which ``agreed_stop`` asks about after each step for
the cost of a lock (no collective). A process that dies instead makes the next collective
of the others fail: ``lost_process`` tells that failure from any other and says who is
gone. Process 0 is watched besides (``coordinator_watch``): JAX ends the others itself
when the coordination service it hosts is lost, unless they have ended first.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rnn_jax import model
from rnn_jax.config import ModelConfig

AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh ``("data",)`` over the first ``num_devices`` devices of the default
    backend (``None``: all of them, across processes)."""
    available = jax.device_count()
    N = available if num_devices is None else num_devices
    if not _is_int(N) or N < 1:
        raise ValueError(f"the number of devices must be a positive integer, got {N!r}")
    if available < N:
        raise ValueError(f"asked for {N} devices, {available} exist")
    if jax.process_count() > 1 and available != N:
        raise ValueError(
            f"with {jax.process_count()} processes the mesh spans all {available} devices, not {N}"
        )
    return jax.make_mesh((N,), (AXIS,), axis_types=(AxisType.Auto,), devices=jax.devices()[:N])


def num_devices(mesh: Mesh) -> int:
    return mesh.shape[AXIS]


def check_batch(batch_size: int, mesh: Mesh) -> None:
    """Raise ``ValueError`` unless ``batch_size`` divides into the mesh's devices and
    processes."""
    N, P_ = num_devices(mesh), jax.process_count()
    if batch_size % N:
        raise ValueError(f"batch size {batch_size} does not divide by the {N} devices")
    if batch_size % P_:
        raise ValueError(f"batch size {batch_size} does not divide by the {P_} processes")


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split over ``"data"``: for ``(B, T)`` batches and ``(B, H)`` hidden states."""
    return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device: params, optimizer state, step, key, scalars."""
    return NamedSharding(mesh, P())


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
    """The shardings of a ``TrainState`` (arrays or ``jax.ShapeDtypeStruct``s): its
    ``hidden`` leaves split by rows, everything else replicated. A pytree of the same
    structure, for ``jax.jit``'s ``in_shardings``/``out_shardings`` and for restoring a
    checkpoint onto ``mesh``."""
    rows, full = data_sharding(mesh), replicated(mesh)
    shardings = jax.tree.map(lambda _: full, abstract_state)
    return shardings.replace(hidden=jax.tree.map(lambda _: rows, abstract_state.hidden))


def shard_state(state: Any, mesh: Mesh) -> Any:
    """``state`` placed on ``mesh`` by ``state_shardings`` (single-process: from any
    placement; several processes: ``state`` must be global arrays already). Leaves already
    placed so are returned as they are, not copied: copy before a donating step if
    ``state`` is still needed."""
    return jax.device_put(state, state_shardings(state, mesh))


def zero_hidden(model_config: ModelConfig, batch_size: int, mesh: Mesh | None = None) -> Any:
    """``model.zero_state`` ``(B, H)`` leaves, made split by rows over ``mesh`` (on every
    process at once); exactly ``model.zero_state`` without a mesh. The loop's fresh state
    at each epoch."""
    if mesh is None:
        return model.zero_state(model_config, batch_size)
    return _zeros_on(mesh)(model_config, batch_size)


@functools.cache
def _zeros_on(mesh: Mesh) -> Callable[[ModelConfig, int], Any]:
    return jax.jit(model.zero_state, static_argnums=(0, 1), out_shardings=data_sharding(mesh))


def process_rows(batch_size: int, mesh: Mesh) -> tuple[int, int]:
    """``(start, stop)``: the block of the B rows this process's devices hold on ``mesh``
    (all of them with one process), derived from the sharding so that it holds whatever
    order ``make_mesh`` put the devices in."""
    index_map = data_sharding(mesh).addressable_devices_indices_map((batch_size,))
    blocks = sorted({(s[0].start or 0, s[0].stop or batch_size) for s in index_map.values()})
    start, stop = blocks[0][0], blocks[-1][1]
    covered = sum(b - a for a, b in blocks)
    if covered != stop - start:
        raise ValueError(f"this process's rows of the batch are not contiguous: {blocks}")
    return start, stop


def put_batch(X: np.ndarray, Y: np.ndarray, mesh: Mesh) -> tuple[jax.Array, jax.Array]:
    """This process's rows ``X, Y`` ``(B / P, T)`` (``process_rows``) -> the global
    minibatch ``(B, T)`` split by rows over ``mesh``. With one process they are all B
    rows and this is a ``device_put``."""
    sharding = data_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put((X, Y), sharding)
    global_shape = (X.shape[0] * jax.process_count(), *X.shape[1:])
    return tuple(  # type: ignore[return-value]
        jax.make_array_from_process_local_data(sharding, np.asarray(A), global_shape)
        for A in (X, Y)
    )


def eval_sharding(batch_size: int, mesh: Mesh) -> NamedSharding:
    """``(K, B, T)`` validation batches: split along B when it divides by the devices,
    replicated otherwise."""
    spec = P(None, AXIS) if batch_size % num_devices(mesh) == 0 else P()
    return NamedSharding(mesh, spec)


def put_eval_batches(Xs: np.ndarray, Ys: np.ndarray, mesh: Mesh) -> tuple[jax.Array, jax.Array]:
    """The whole validation split ``(K, B, T)``, which every process holds, placed by
    ``eval_sharding`` (each device reads its own block from the host arrays)."""
    sharding = eval_sharding(Xs.shape[1], mesh)
    return tuple(  # type: ignore[return-value]
        jax.make_array_from_callback(A.shape, sharding, lambda index, A=A: A[index])
        for A in (np.asarray(Xs), np.asarray(Ys))
    )


# ------------------------------------------------------------------ several processes

_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_]+):(\d{1,5})$")


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int = 60,
    heartbeat_timeout_s: int = 100,
) -> None:
    """Join a multi-process run: ``jax.distributed.initialize``, before any other JAX call.

    With all three ``None``, jax detects them (TPU pods, Slurm, Open MPI, or the
    ``JAX_COORDINATOR_ADDRESS`` environment variables). Otherwise ``coordinator`` is
    process 0's ``HOST:PORT``, which process 0 serves and every process connects to.
    CPU devices talk through gloo collectives. A coordinator that cannot be reached
    raises ``RuntimeError`` after ``timeout_s`` seconds. A process that sends no
    heartbeat for ``heartbeat_timeout_s`` seconds is declared dead by the coordination
    service, which then ends every other process (JAX's own fatal error), the bound on
    how long a process waits for a peer that hangs. The preemption service (SIGTERM ->
    ``agreed_stop``) is switched on.
    """
    given = (coordinator, num_processes, process_id)
    if any(v is not None for v in given) and any(v is None for v in given):
        raise ValueError("give the coordinator, num_processes and process_id together, or none")
    if coordinator is not None:
        if not _ADDRESS.match(coordinator) or not 0 < int(coordinator.rsplit(":", 1)[1]) < 65536:
            raise ValueError(
                f"coordinator must be HOST:PORT with a port in 1-65535, got {coordinator!r}"
            )
        if not _is_int(num_processes) or num_processes < 1:
            raise ValueError(f"num_processes must be a positive integer, got {num_processes!r}")
        if not _is_int(process_id) or not 0 <= process_id < num_processes:
            raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id!r}")
    for name, value in (("timeout_s", timeout_s), ("heartbeat_timeout_s", heartbeat_timeout_s)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if coordinator is not None and process_id != 0:
        _wait_for(coordinator, timeout_s)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_enable_preemption_service", True)
    try:
        jax.distributed.initialize(
            coordinator,
            num_processes,
            process_id,
            initialization_timeout=timeout_s,
            heartbeat_timeout_seconds=heartbeat_timeout_s,
        )
    except Exception as err:  # jax raises XlaRuntimeError (a RuntimeError) with a long log
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = f" at {coordinator}" if coordinator else ""
        raise RuntimeError(
            f"could not join the distributed run{where} within {timeout_s} s: {first}"
        ) from err


def _wait_for(coordinator: str, timeout_s: int) -> None:
    """Wait until ``coordinator`` accepts TCP connections. jax's client aborts the whole
    process (a fatal log, not an exception) when it cannot register in time, so a
    coordinator that never comes up is caught here first, as an exception."""
    host, port = coordinator.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1):
                return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"could not reach the coordinator {coordinator} within {timeout_s} s: "
                    f"{err.strerror or err}"
                ) from None
            time.sleep(0.2)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_main_process() -> bool:
    """Process 0: the one that prints and writes files."""
    return jax.process_index() == 0


def check_devices(devices: int | None, batch_size: int) -> None:
    """What ``make_mesh(devices)`` and ``check_batch`` would refuse, said before anything
    is made: the count (``None``: all devices) exists and divides the batch."""
    available = jax.device_count()
    count = available if devices is None else devices
    if not _is_int(count) or count < 1:
        raise ValueError(f"--devices must be a positive integer, got {count!r}")
    if count > available:
        kind = jax.devices()[0].platform
        raise ValueError(f"--devices {count}: only {available} {kind} device(s) exist")
    if batch_size % count:
        raise ValueError(f"--batch-size {batch_size} does not divide by the {count} devices")
    if batch_size % jax.process_count():
        raise ValueError(
            f"--batch-size {batch_size} does not divide by the {jax.process_count()} processes"
        )


def distributed_requested(coordinator: str | None, num_processes: int | None) -> bool:
    """Whether this process should join a multi-process run: the flags say so, or the
    environment of a cluster launcher does (``JAX_COORDINATOR_ADDRESS``, Slurm with
    several tasks, a multi-host TPU slice), where ``jax.distributed.initialize()``
    discovers the rest."""
    import os

    if coordinator is not None or num_processes is not None:
        return True
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return True
    return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def mesh_for(devices: int | None) -> Mesh | None:
    """The run's mesh: ``None`` on one device (the book's path, bitwise what it always
    was), else ``make_mesh`` over ``devices`` (``None``: all)."""
    N = jax.device_count() if devices is None else devices
    return None if N == 1 else make_mesh(N)


def host_copy(tree: Any) -> Any:
    """Every leaf's whole value as a NumPy array on this host, from this process's
    devices, or gathered from every process for arrays spread over several (a collective:
    all processes call it)."""
    if all(getattr(leaf, "is_fully_addressable", True) for leaf in jax.tree.leaves(tree)):
        return jax.tree.map(np.array, jax.device_get(tree))  # own copies, never views
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def agreed_stop(received: int | None, sync_id: int) -> int | None:
    """Whether to stop here: the number of the signal that asks it, or None to go on.
    Asked before the first step (``sync_id`` 1) and after every step (2, 3, ...: one more
    at each call, on every process).

    One process: the signal it ``received``, if any. Several (``jax.distributed``): JAX's
    preemption sync point, the same answer on every process: it is reached at the id
    that JAX's notifier and its background protocol agreed on once any process was sent
    SIGTERM (every process reports the last id it asked about; the largest plus one
    wins); asking costs a lock. There one collective says which signal it was (the first
    process's that saw one in Python; SIGTERM if none did: JAX's notifier took it).
    """
    if not jax.distributed.is_initialized():
        return received
    from jax.experimental import multihost_utils

    if not multihost_utils.reached_preemption_sync_point(sync_id):
        return None
    seen = multihost_utils.process_allgather(np.asarray(received or 0, np.int32))
    return next((int(s) for s in np.ravel(seen) if s), int(signal.SIGTERM))


_WATCHES = itertools.count()  # one key per watch; every process counts the same
_KEPT: list[socket.socket] = []  # process 0's listening ends, open until it exits


@contextlib.contextmanager
def coordinator_watch(on_lost: Callable[[str], None], timeout_s: int = 60) -> Iterator[None]:
    """While the block runs, every process but process 0 of a multi-process run calls
    ``on_lost(what)`` (``process 0 of P (the coordinator) is unreachable (...)``, as
    ``lost_process`` says it), from a background thread, the moment process 0 is gone; it
    is meant to print a line and end the process. All processes enter the block together.

    Why a thread: process 0 hosts the coordination service, and when it dies JAX's client
    ends every other process with its own fatal error (SIGABRT) as soon as its poll of the
    service fails. A failed collective usually reaches ``lost_process`` first; a process
    that waits in a save's barrier never does (docs/faults.md). Here process 0 listens on
    a port of its own (published in the coordination service's key-value store) and the
    others connect to it; nothing is ever sent, and when process 0 dies its kernel closes
    the connections, which wakes this thread at the moment JAX's client learns it too.
    Process 0 keeps its end open until it exits (after JAX's shutdown barrier, when the
    others have left the block), so a finished run is never taken for a lost one. A port
    that cannot be reached (a firewall) leaves the watch off, as before it existed.
    """
    if not jax.distributed.is_initialized() or jax.process_count() == 1:
        yield
        return
    from jax._src import distributed  # the client's key-value store: no public API

    client, key = distributed.global_state.client, f"rnn_jax/coordinator_watch/{next(_WATCHES)}"
    armed = threading.Event()
    if jax.process_index() == 0:
        family = socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET
        server = socket.create_server(
            ("", 0),
            family=family,
            backlog=jax.process_count(),
            dualstack_ipv6=family == socket.AF_INET6,
        )
        _KEPT.append(server)  # the others' connections wait in its queue
        client.key_value_set(key, str(server.getsockname()[1]))
        yield
        return
    port = int(client.blocking_key_value_get(key, timeout_s * 1000))
    host = distributed.global_state.coordinator_address.rsplit(":", 1)[0].strip("[]")
    try:
        connection = socket.create_connection((host, port), timeout=min(timeout_s, 5))
        connection.settimeout(None)
    except OSError:
        yield
        return

    def watch() -> None:
        try:
            connection.recv(1)
            detail = "its connection closed"
        except OSError as err:
            detail = f"its connection failed: {err.strerror or err}"
        if armed.is_set():
            on_lost(f"{process_name(0)} is unreachable ({detail})")

    armed.set()
    threading.Thread(target=watch, name="rnn_jax-coordinator-watch", daemon=True).start()
    try:
        yield
    finally:
        armed.clear()


# Failures of a collective or of the coordination service that mean a process is gone:
# gloo's "Connection reset/closed by peer" at once, a barrier that timed out waiting for
# it (a save's), a barrier or key-value call once the coordination service has declared
# the process dead or is itself gone.
_LOST = re.compile(
    r"Gloo .*failed|Connection (reset|closed|refused)|heartbeat|Barrier (failed|timed out)|"
    r"UNAVAILABLE|coordination service",
    re.IGNORECASE,
)


# What that failure's first line says besides: XLA's wrappers and gloo's source location.
_NOISE = re.compile(
    r"(INTERNAL: |UNKNOWN: )?(Error dispatching computation: )+|\[external/[^\]]*\] ?"
)


def lost_process(err: BaseException) -> str | None:
    """None unless ``err`` (or an error it was raised from) is a failed collective or
    coordination call of a multi-process run; then which process is unreachable and the
    failure, in words. With two processes it is the other one (process 0 hosts the
    coordination service); with more, only the failure's own words can tell (gloo names
    the peer's address)."""
    if not jax.distributed.is_initialized():
        return None
    cause, seen, link = None, set(), err
    while link is not None and id(link) not in seen:  # the innermost failure that says so
        seen.add(id(link))
        cause = link if _LOST.search(str(link)) else cause
        link = link.__cause__ or link.__context__
    if cause is None:
        return None
    P = jax.process_count()
    who = process_name(1 - jax.process_index()) if P == 2 else f"another of the {P} processes"
    detail = _NOISE.sub("", str(cause).strip().splitlines()[0])
    detail = detail if len(detail) <= 200 else detail[:197] + "..."
    return f"{who} is unreachable ({detail})"


def process_name(index: int) -> str:
    """``process I of P``, and ``(the coordinator)`` for process 0, which hosts JAX's
    coordination service."""
    return f"process {index} of {jax.process_count()}{' (the coordinator)' if index == 0 else ''}"
