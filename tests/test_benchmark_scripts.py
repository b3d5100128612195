"""The GPU check's scripts still run: ``benchmarks/gpu.sh`` parses (and passes shellcheck
where it is installed), ``benchmarks/gpu_workloads.py`` measures one tiny workload on the
CPU and prints its JSON line, and its ``--record``/``--table`` helpers turn measurements,
failed ones included, into the results table; ``benchmarks/scan_modes.py --quick`` times
both scans of one small shape on one pinned core and makes its table. No timing is
asserted. 27 s here with the machine busy (and 8-18 s for the scan modes), most of it
importing JAX and compiling."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU_SH = ROOT / "benchmarks" / "gpu.sh"
WORKLOADS = ROOT / "benchmarks" / "gpu_workloads.py"
SCAN_MODES = ROOT / "benchmarks" / "scan_modes.py"


@pytest.fixture(scope="module")
def workloads():
    spec = importlib.util.spec_from_file_location("gpu_workloads", WORKLOADS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_sh_parses() -> None:
    subprocess.run(["bash", "-n", str(GPU_SH)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_gpu_sh_shellcheck() -> None:
    subprocess.run(["shellcheck", str(GPU_SH)], check=True)


def test_gpu_workloads_measures_one_tiny_workload(tmp_path) -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    cmd = [sys.executable, str(WORKLOADS), "--workload", "train", "--cell", "rnn"]
    cmd += ["--num-hiddens", "8", "--batch-size", "4", "--dtype", "bfloat16", "--seconds", "0.2"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, cwd=ROOT)
    record = json.loads(out.stdout.strip().splitlines()[-1])
    assert record["impl"] == "rnn_jax" and record["dtype"] == "bfloat16"
    assert record["tokens_per_s"] > 0 and record["compile_s"] >= 0 and record["params_finite"]


def test_record_and_table(workloads) -> None:
    same = ["workload=train", "cell=rnn", "num_hiddens=8", "batch_size=4"]
    ours = workloads.record(
        'noise\n{"tokens_per_s": 200.0, "compile_s": 1.5}\n',
        ["impl=rnn_jax", *same, "dtype=float32"],
    )
    peer = workloads.record('{"tokens_per_s": 100.0}', ["impl=nn.RNN", *same, "dtype=float32"])
    failed = workloads.record("Traceback\nRuntimeError: no GPU\n", ["impl=book-scratch", *same])
    assert ours["num_hiddens"] == 8 and ours["tokens_per_s"] == 200.0
    assert failed["error"] == "RuntimeError: no GPU"
    text = workloads.table([ours, peer, failed], "Test GPU")
    assert "GPU: Test GPU" in text
    assert "| train rnn H8 | float32 | 4 | 200 | 1.50 | nn.RNN | 100 | 2.00x |" in text
    assert "book-scratch (failed: RuntimeError: no GPU)" in text


def test_scan_modes_quick(tmp_path) -> None:
    """One small shape of one cell on one pinned core: both scans timed, the table made."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(SCAN_MODES), "--quick", "--cores", "1", "--cells", "mingru"]
    subprocess.run([*cmd, "--out", str(tmp_path)], check=True, env=env, capture_output=True)
    assert "| mingru | 16 | 2 |" in (tmp_path / "results.md").read_text()
    (result,) = json.loads((tmp_path / "results.json").read_text())["results"]["1"]
    assert all(len(ms) == 2 and min(ms) > 0 for ms in result["ms"].values())
