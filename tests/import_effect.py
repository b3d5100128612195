"""What ``import rnn_jax`` does to a process (``rnn_jax/__init__.py`` sets XLA's thread
count and glibc's malloc before JAX starts): a program run twice in a fresh interpreter,
as it is and with ``import rnn_jax`` as its first line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def last_words(program: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """The last word ``program`` prints, run ``"alone"`` and after ``"rnn_jax"``'s import."""
    env = {**(os.environ if env is None else env), "PYTHONPATH": str(ROOT)}
    return {
        first: subprocess.run(
            [sys.executable, "-c", prefix + program],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout.split()[-1]
        for first, prefix in (("alone", ""), ("rnn_jax", "import rnn_jax\n"))
    }
