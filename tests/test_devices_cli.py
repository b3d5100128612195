"""Several devices and several processes from the shell (issue 10): `--devices N` on
simulated CPU devices, a checkpoint moved between device counts, two processes on
localhost through `jax.distributed`, bfloat16, and the inputs refused.

Devices are simulated with ``JAX_NUM_CPU_DEVICES`` in each subprocess. A mesh trains as
one device does up to float32 reduction order (the mean over B is summed per device,
then across devices), so runs on different device counts are compared within
``RTOL``/``ATOL``, not bitwise (``tests/test_parallel.py`` measures the gaps)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from rnn_jax import checkpoint, report
from tests.ports import free_port
from tests.test_cli import CACHE, assert_one_line_error

ATOL = 1e-5
SMALL = [
    "--max-tokens", "3000", "--num-hiddens", "16", "--batch-size", "8", "--num-steps", "10",
    "--sample-every", "0", "--no-progress", "--save-every", "1",
]  # fmt: skip


def cli(*args: str, devices: int = 4, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_NUM_CPU_DEVICES": str(devices),
        "XDG_CACHE_HOME": str(CACHE),
    }
    return subprocess.run(
        [sys.executable, "-m", "rnn_jax", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def assert_close(a: checkpoint.Restored, b: checkpoint.Restored) -> None:
    assert a.step == b.step
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=ATOL)


@pytest.fixture(scope="module")
def four(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 epochs on 4 devices, straight."""
    run_dir = tmp_path_factory.mktemp("dev") / "four"
    proc = cli("train", "--out", str(run_dir), "--epochs", "3", *SMALL)
    assert proc.returncode == 0, proc.stderr
    return run_dir


def test_checkpoint_moves_between_device_counts(four: Path, tmp_path: Path) -> None:
    """Save on 4 devices after 1 epoch, resume on 2 (said in one line) and on 1, and end
    where the uninterrupted 4-device run ends; one device's run agrees too."""
    for devices in (2, 1):
        run_dir = tmp_path / f"on{devices}"
        assert cli("train", "--out", str(run_dir), "--epochs", "1", *SMALL).returncode == 0
        proc = cli("train", "--resume", str(run_dir), "--epochs", "3", "--devices", str(devices))
        assert proc.returncode == 0, proc.stderr
        notes = [line for line in proc.stdout.splitlines() if "device(s)" in line]
        assert notes == [
            f"note: {run_dir} was saved on 4 device(s) and resumes on {devices}: the same run "
            "up to float32 reduction order"
        ]
        assert_close(checkpoint.restore(four), checkpoint.restore(run_dir))
    one = tmp_path / "one"
    assert cli("train", "--out", str(one), "--epochs", "3", *SMALL, devices=1).returncode == 0
    assert_close(checkpoint.restore(four), checkpoint.restore(one))
    ours, theirs = (report.read_jsonl(d / "metrics.jsonl") for d in (four, one))
    assert [r["train_ppl"] for r in ours] == pytest.approx([r["train_ppl"] for r in theirs])


def test_two_processes_train_as_one(four: Path, tmp_path: Path) -> None:
    """Two processes on localhost (gloo CPU collectives), 2 CPU devices each, each
    building its own rows: the checkpoint they write matches one process's run and
    restores and samples in a single process."""
    port = free_port()
    run_dir = tmp_path / "two"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2"}
    env["XDG_CACHE_HOME"] = str(CACHE)
    train = [sys.executable, "-m", "rnn_jax", "train", "--out", str(run_dir), "--epochs", "3"]
    train += [*SMALL, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    procs = [
        subprocess.Popen(
            [*train, "--process-id", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, (out, err)
    assert "done:" in outs[0][0] and "done:" not in outs[1][0]  # process 0 reports
    assert_close(checkpoint.restore(four), checkpoint.restore(run_dir))
    args = ["sample", "--checkpoint", "--num-chars", "30"]
    mine, theirs = (cli(*args[:2], str(d), *args[2:], devices=1) for d in (run_dir, four))
    assert mine.returncode == 0 and mine.stdout == theirs.stdout


def test_bfloat16_trains_and_checkpoints_float32(tmp_path: Path) -> None:
    run_dir = tmp_path / "bf16"
    proc = cli(
        "train", "--out", str(run_dir), "--epochs", "2", "--compute-dtype", "bfloat16", *SMALL
    )
    assert proc.returncode == 0, proc.stderr
    restored = checkpoint.restore(run_dir, for_training=True)
    leaves = jax.tree.leaves((restored.params, restored.state.opt_state, restored.state.hidden))
    assert {str(x.dtype) for x in leaves if x.dtype.kind == "f"} == {"float32"}
    assert cli("sample", "--checkpoint", str(run_dir), devices=1).returncode == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--devices", "3"], "does not divide by the 3 devices"),
        (["--devices", "0"], "devices"),
        (["--devices", "16"], "only 4 cpu device(s) exist"),
        (["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"], "process"),
        (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "1"], "HOST:PORT"),
        (["--coordinator", "127.0.0.1:9", "--num-processes", "2"], "together"),
    ],
)  # fmt: skip
def test_bad_device_inputs_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    out = tmp_path / "new"
    proc = cli("train", "--out", str(out), *SMALL, *args)
    assert_one_line_error(proc, 2, needle)
    assert not out.exists()


def test_unreachable_coordinator_fails_in_bounded_time(tmp_path: Path) -> None:
    """A client whose coordinator never answers fails with one line, not a hang."""
    port = free_port()  # nothing listens there
    out = tmp_path / "new"
    args = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "1"]
    proc = cli("train", "--out", str(out), *SMALL, *args, "--distributed-timeout", "5")
    assert_one_line_error(proc, 2, "could not reach the coordinator")
    assert not out.exists()
