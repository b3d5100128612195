"""A TCP port for a test's coordinator, handed to no other test of the session.

Binding port 0 and closing the socket hands out an ephemeral port, and until the test's
process binds it again any outgoing connection on the machine (another test's
collectives) may take it, or another xdist worker be handed it too. ``free_port`` takes
a port below the kernel's ephemeral range instead, where outgoing connections never
land, reserves it with an exclusive ``flock`` on a file named after it in a folder every
worker shares (held until this process ends, so no two callers share a port), and binds
it once to check that nothing listens there.
"""

from __future__ import annotations

import fcntl
import random
import socket
import tempfile
from pathlib import Path
from typing import TextIO

_HELD: list[TextIO] = []  # the lock files of the ports this process holds


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on and no other caller holds."""
    folder = Path(tempfile.gettempdir()) / "rnn_jax-test-ports"
    folder.mkdir(exist_ok=True)
    end = _ephemeral_start()
    for port in random.Random().sample(range(max(1024, end - 8000), end), 100):
        handle = (folder / str(port)).open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
        except OSError:  # held by another caller, or in use
            handle.close()
            continue
        _HELD.append(handle)
        return port
    raise RuntimeError("no free port below the ephemeral range in 100 tries")
