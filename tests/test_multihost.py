"""Several processes losing one (issue 20): a failed collective told from other errors,
and the coordinator's process killed mid-run, with two processes on localhost.

A signal to one process and a kill of one during a save, each then resumed bitwise, run
in ``tests/test_fault_campaign.py`` (the campaign's ``--quick`` holds two such trials);
the full campaign draws them at random (``docs/faults.md``). Every wait here is for an
event (a checkpoint folder appearing, a process exiting) and has a deadline."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
from pathlib import Path

import jax
import pytest

from rnn_jax import checkpoint, parallel
from tests.test_cli import CACHE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def campaign():
    """``scripts/fault_campaign.py`` as a module: its ``TwoProcesses`` and ``wait_until``."""
    spec = importlib.util.spec_from_file_location(
        "fault_campaign", ROOT / "scripts/fault_campaign.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_lost_process_is_told_from_other_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gloo's failed collective, a barrier failed on a dead task (reached through the
    errors raised from it) and a lost coordinator name the other process; a damaged
    checkpoint or a NaN does not, nor anything in a run of one process."""
    gloo = ValueError(
        "UNKNOWN: Error dispatching computation: Gloo all-reduce failed: [external/gloo/gloo/"
        "transport/tcp/pair.cc:538] Read error [127.0.0.1]:7389: Connection reset by peer"
    )
    assert parallel.lost_process(gloo) is None  # not joined: one process
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    assert parallel.lost_process(gloo) == (
        "process 1 of 2 is unreachable (Gloo all-reduce failed: Read error "
        "[127.0.0.1]:7389: Connection reset by peer)"
    )
    barrier = RuntimeError("INTERNAL: Barrier failed because: task is set to ERROR: ...")
    try:
        try:
            raise TimeoutError(
                "Timed out while waiting for async_write_complete barrier."
            ) from barrier
        except TimeoutError as err:
            raise checkpoint.CheckpointWriteError(f"saving a checkpoint failed ({err})") from err
    except checkpoint.CheckpointWriteError as wrapped:
        assert "process 1 of 2 is unreachable (INTERNAL: Barrier failed" in parallel.lost_process(
            wrapped
        )
    try:  # a save's own words around gloo's are left out: the line says them once
        try:
            raise ValueError("UNKNOWN: Gloo AllGather failed: Connection closed by peer")
        except ValueError as err:
            raise checkpoint.CheckpointWriteError(
                f"saving a checkpoint failed ({err}); the latest good one is step 70"
            ) from err
    except checkpoint.CheckpointWriteError as wrapped:
        assert parallel.lost_process(wrapped) == (
            "process 1 of 2 is unreachable "
            "(UNKNOWN: Gloo AllGather failed: Connection closed by peer)"
        )
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    socket_closed = RuntimeError("UNAVAILABLE: Socket closed")
    assert parallel.lost_process(socket_closed).startswith("process 0 of 2 (the coordinator)")
    damaged = checkpoint.DamagedCheckpointError(Path("run"), 33, "params", "checksum mismatch")
    assert parallel.lost_process(damaged) is None
    assert parallel.lost_process(FloatingPointError("training loss became nan")) is None


@pytest.mark.parametrize("moment", ["mid-run", "while a save waits"])
def test_the_coordinator_killed(campaign, tmp_path: Path, moment: str) -> None:
    """kill -9 of process 0, which hosts the coordination service, mid-run or while
    process 1 waits for it inside a save (process 0's part of the save never ends):
    process 1 exits 1 with one line naming process 0 and the last good checkpoint, no
    Python traceback, nothing else but JAX's client's fatal error, before or after that
    line: its thread reacts to the same lost connection, and under load it wrote between
    the line and the exit in 2 of 16 runs (``parallel.coordinator_watch`` ends the
    process before that client's abort; without
    the watch, every wait inside a save ended in SIGABRT). Every finished checkpoint is
    intact, and its arrays carry checksums, gathered from both processes, that a restore
    verifies."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XDG_CACHE_HOME": str(CACHE)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the CLI's own choice of JAX's C++ log
    args = ["--out", str(run_dir), *campaign.HOSTS, "--epochs", "1000"]
    metrics, nth = run_dir / "metrics.jsonl", 2
    if moment == "mid-run":
        wrap = None
        first = checkpoint.checkpoint_dir(run_dir) / str(campaign.HOSTS_K)
        ready = first.is_dir
    else:  # process 0 wrote the record after its 2nd save: both wait in the next one
        marker = tmp_path / "saving"
        wrap = {0: [campaign.BLOCK_SAVE, str(marker), str(nth), "hang"]}
        args += ["--distributed-timeout", "10"]

        def ready() -> bool:
            return metrics.exists() and len(metrics.read_text().splitlines()) > nth

    pair = campaign.TwoProcesses(tmp_path / "output", args, env, wrap)
    try:
        campaign.wait_until(lambda: ready() or pair.exited(), 300, f"the moment ({moment})")
        pair.procs[0].kill()
        codes = pair.wait(timeout=120)
    finally:
        pair.close()
    err = pair.text(1, "err")
    assert codes == [-signal.SIGKILL, 1] and "Traceback" not in err, (codes, err)
    steps = checkpoint.finished_steps(run_dir)
    ours = [line for line in err.splitlines() if line.startswith("rnn-jax:")]
    assert len(ours) == 1, err  # JAX's fatal error, if any, may come before or after it
    assert ours[0].startswith("rnn-jax: error: process 0 of 2 (the coordinator) is unreachable")
    assert f"the last good checkpoint is step {steps[-1]}; continue with: rnn-jax train " in ours[0]
    assert f"--resume {run_dir} --coordinator 127.0.0.1:" in ours[0]
    others = [line for line in err.splitlines() if not line.startswith("rnn-jax:")]
    assert all(campaign.JAX_FATAL.match(line) for line in others), err
    if moment != "mid-run":
        assert steps == [campaign.HOSTS_K * k for k in range(1, nth)], steps  # not the hung one
    assert steps and checkpoint.intact_steps(run_dir) == steps
    integrity = checkpoint.checkpoint_dir(run_dir) / str(steps[-1]) / "integrity" / "metadata"
    record = json.loads(integrity.read_text())
    record["arrays"]["params"]["['W_hq']"] = "0" * 64  # two processes' arrays are verified
    integrity.write_text(json.dumps(record))
    with pytest.raises(checkpoint.DamagedCheckpointError, match=r"\['W_hq'\] checksum mismatch"):
        checkpoint.restore(run_dir, step=steps[-1])
