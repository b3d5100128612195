"""``scripts/fault_campaign.py --quick``: the seeded subset of the fault campaign (a
signal at a random moment, corrupted checkpoint files, bad inputs, a full disk, and two
two-process runs: a signal to one, a kill of one during a save) passes every trial."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.test_cli import CACHE

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fault_campaign.py"


def test_quick_campaign_has_no_failures(tmp_path: Path) -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XDG_CACHE_HOME": str(CACHE)}
    command = [sys.executable, str(SCRIPT), "--quick", "--seed", "0", "--work", str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = proc.stdout.split("| category |", 1)[1]
    for category in ("signals", "corruption", "bad input", "disk full", "processes"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {category} |"))
        trials, passed, failed = (int(c) for c in row.strip("|").split("|")[1:])
        assert trials > 0 and passed == trials and failed == 0, row
