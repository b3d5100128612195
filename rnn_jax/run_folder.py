"""A run folder: what it holds, who owns it, and the folder operations of a run's life.

    RUN_DIR/config.json      the configs, the corpus's fingerprint, versions and devices
                             (and a fine-tune's source)
    RUN_DIR/metrics.jsonl    one record per line (``report``)
    RUN_DIR/samples.txt      the samples printed during training
    RUN_DIR/perplexity.png   the book's plot of train and validation perplexity
    RUN_DIR/events/          TensorBoard event files
    RUN_DIR/checkpoints/     Orbax checkpoints (``checkpoint``)
    RUN_DIR/.lock            held by the process that trains in the folder (``RunLock``)
    RUN_DIR/superseded-after-<step>/   checkpoints a resume from an earlier step set aside

``config.json`` is written (``write_config``) and read (``load_config``, ``read_config``)
here only. It says whose the folder is: ``check_own`` refuses a checkpoint it does not
describe (another run's ``checkpoints/`` copied in), and ``enclosing_run`` finds the run
a new folder would lie inside (``check_outside_runs`` refuses it).
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import socket
from pathlib import Path
from typing import Any, TextIO

import jax

import rnn_jax
from rnn_jax import checkpoint, report
from rnn_jax.checkpoint import CHECKPOINTS
from rnn_jax.config import RESUMABLE, ModelConfig, RunConfig, TrainConfig, to_dict
from rnn_jax.files import write_atomic

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SAMPLES = "samples.txt"
PLOT = "perplexity.png"
EVENTS = "events"
LOCK = ".lock"
RUN_FILES = (CONFIG, METRICS, SAMPLES, PLOT, CHECKPOINTS, EVENTS)  # what a run writes


# --------------------------------------------------------------------------- config.json


def write_config(
    run_dir: Path,
    model_config: ModelConfig,
    config: TrainConfig,
    run_config: RunConfig,
    *,
    corpus: dict[str, Any] | None = None,
    init_from: dict[str, Any] | None = None,
) -> None:
    """``config.json``: the model, train and run sections (``rnn-jax train --config``
    reads it back), the corpus's fingerprint (``{"sha256", "size"}``), the versions and
    devices it ran with, and for a fine-tune the ``init_from`` section
    (``transfer.Source``: the source run, step and checkpoint sha256, the tokens kept,
    new and dropped)."""
    payload = {
        "model": to_dict(model_config),
        "train": to_dict(config),
        "run": to_dict(run_config),
        "corpus": corpus,
        "run_info": run_info(),
    }
    if init_from is not None:
        payload["init_from"] = init_from
    write_atomic(run_dir / CONFIG, json.dumps(payload, indent=2) + "\n")


def load_config(run_dir: Path) -> dict[str, Any]:
    """The sections of ``config.json`` as written; ``ValueError`` (one line) when it is
    missing or unreadable: a resume needs the run's own settings, not defaults."""
    path = Path(run_dir) / CONFIG
    try:
        payload = json.loads(path.read_text("utf-8"))
    except OSError as err:
        reason = err.strerror or str(err)
    except ValueError as err:
        reason = f"not JSON: {err}"
    else:
        if isinstance(payload, dict) and all(
            isinstance(payload.get(s, {}), dict) for s in ("model", "train", "run")
        ):
            return payload
        reason = "not an object of sections"
    raise ValueError(
        f"{path} cannot be read ({reason}); it holds the run's own settings: "
        "restore it to resume the run, or start a new one"
    )


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """The sections of ``config.json`` as written, or None when it is missing or unreadable."""
    try:
        return load_config(run_dir)
    except ValueError:
        return None


# What a resume may change, so where config.json and an earlier checkpoint of the same
# run may differ (``run._resumed_configs``).
_MAY_CHANGE = {"model": {"compute_dtype"}, "train": RESUMABLE}


def check_own(
    run_dir: Path,
    step: int,
    model: dict[str, Any],
    train: dict[str, Any],
    corpus: dict[str, Any] | None,
) -> None:
    """Refuse checkpoint ``step`` of ``run_dir`` (its saved ``model`` and ``train``
    configs and ``corpus`` fingerprint) when ``config.json`` describes another run: a
    field no resume changes, or the corpus, differs (another run's ``checkpoints/``
    copied in). A folder without a readable ``config.json`` (checkpoints written by
    ``checkpoint.save`` alone) is not checked. Raises ``CheckpointError``, one line."""
    config = read_config(run_dir)
    if config is None:
        return
    for section, saved in (("model", model), ("train", train)):
        ours = config.get(section) or {}
        for name in sorted(set(saved) & set(ours) - _MAY_CHANGE[section]):
            if json.dumps(saved[name]) != json.dumps(ours[name]):
                _not_own(run_dir, step, f"{section}.{name}", repr(saved[name]), repr(ours[name]))
    ours = config.get("corpus") or {}
    if corpus and ours and corpus.get("sha256") != ours.get("sha256"):
        saved_sha, our_sha = (f"{str(c.get('sha256'))[:12]}..." for c in (corpus, ours))
        _not_own(run_dir, step, "corpus sha256", saved_sha, our_sha)


def restore_own(run_dir: Path, step: int | str | None = None) -> checkpoint.Restored:
    """``checkpoint.restore``, once ``config.json`` vouched that the checkpoint is this
    run's (``check_own``): what ``eval``, ``sample``, ``info``, ``export`` and
    ``--init-from`` read."""
    restored = checkpoint.restore(run_dir, step=step)
    model, train = to_dict(restored.model_config), to_dict(restored.train_config)
    check_own(Path(run_dir), restored.step, model, train, restored.corpus)
    return restored


def _not_own(run_dir: Path, step: int, what: str, saved: str, ours: str) -> None:
    raise checkpoint.CheckpointError(
        f"checkpoint step {step} in {run_dir} is not this run's: its {what} is {saved}, "
        f"{CONFIG}'s {ours}; are {CHECKPOINTS}/ another run's?"
    )


def enclosing_run(path: Path) -> Path | None:
    """The run folder ``path`` would lie inside (its ``checkpoints/``, a sweep's folder,
    below a link to one), or None. A run folder holds a ``config.json`` with
    ``run_info`` (``write_config``), or the lock file beside what a run writes."""
    for parent in Path(path).absolute().resolve().parents:
        config = read_config(parent) or {}
        if "run_info" in config or ((parent / LOCK).is_file() and holds_run(parent)):
            return parent
    return None


def check_outside_runs(run_dir: Path) -> None:
    """Refuse a new run folder inside another run's (its checkpoints/, a sweep's folder)."""
    enclosing = enclosing_run(run_dir)
    if enclosing is not None:
        raise ValueError(
            f"--out {run_dir} lies inside the run folder {enclosing}; choose a folder outside it"
        )


def make_folder(run_dir: Path) -> bool:
    """``mkdir -p run_dir``; whether it did not exist before."""
    try:
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create run folder {run_dir}: {err.strerror or err}") from None
    return created


def run_info() -> dict[str, Any]:
    """Versions and devices, written beside the config so a run can be reproduced."""
    device = jax.devices()[0]
    return {
        "rnn_jax": rnn_jax.__version__,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": f"{device.platform}:{device.device_kind}",
        "num_devices": jax.device_count(),
        "num_processes": jax.process_count(),
    }


# --------------------------------------------------------------------------- the owner


class RunLock:
    """One writer per run folder: an exclusive ``flock`` on ``RUN_DIR/.lock`` that names
    its owner (pid and host). Taken before the folder is inspected and held until the
    run ends; the kernel releases it when the process dies, whatever kills it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._handle: TextIO | None = None

    def acquire(self) -> None:
        path = self.run_dir / LOCK
        try:
            handle = path.open("a+")
        except OSError as err:
            raise ValueError(f"cannot write to run folder {self.run_dir}: {err.strerror}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise ValueError(
                f"run folder {self.run_dir} is in use by {owner}; wait for it or use another --out"
            ) from None
        self._handle = handle

    def claim(self) -> None:
        """Name this process as the owner (once the checks passed: a refused command
        leaves the folder, lock file included, as it was)."""
        assert self._handle is not None, "claim() after acquire()"
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self._handle.flush()

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def owner(run_dir: Path) -> str | None:
    """Who holds the folder's lock right now ("pid N on HOST"), or None."""
    path = run_dir / LOCK
    if not path.exists():
        return None
    with path.open("r") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "another process"
    return None


# --------------------------------------------------------------------------- the files


def holds_run(run_dir: Path) -> bool:
    """Whether a run wrote anything into ``run_dir``."""
    return run_dir.is_dir() and any((run_dir / name).exists() for name in RUN_FILES)


def clear_run_files(run_dir: Path) -> None:
    """Remove what a run writes (not the lock), for a restart of a dead folder."""
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for tmp in run_dir.glob("*.tmp*"):
        tmp.unlink()


def truncate_logs(run_dir: Path, step: int) -> None:
    """Drop what a run folder logged after ``step`` (a resumed run logs it again)."""
    report.truncate_metrics(run_dir / METRICS, step)
    report.truncate_samples(run_dir / SAMPLES, step)


def set_aside_after(run_dir: Path, step: int) -> tuple[list[int], Path | None]:
    """Move the checkpoints after ``step`` (a run resumed from an earlier one) out of the
    manager's way, into ``RUN_DIR/superseded-after-<step>/``, with the logs they wrote:
    kept, never deleted by the resumed run, restorable with ``--checkpoint`` on that
    folder. Returns the steps moved and the folder (None when nothing was later)."""
    later = [s for s in checkpoint.finished_steps(run_dir) if s > step]
    if not later:
        return [], None
    run_dir = Path(run_dir)
    target = run_dir / f"superseded-after-{step}"
    n = 1
    while target.exists():
        n += 1
        target = run_dir / f"superseded-after-{step}-{n}"
    (target / CHECKPOINTS).mkdir(parents=True)
    for name in (CONFIG, METRICS, SAMPLES):
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, target / name)
    for s in later:
        (checkpoint.checkpoint_dir(run_dir) / str(s)).rename(target / CHECKPOINTS / str(s))
    return later, target
