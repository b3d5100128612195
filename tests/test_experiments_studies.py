"""The chapter's studies run end to end in a tiny configuration and leave their figures.

Each script runs in-process (``runpy``) with ``--tiny`` (H 8, a few hundred characters,
2 epochs) into a temporary folder; ``minimal_rnns.py`` in a fresh process, because it
sets JAX's compilation cache, which a process reads once. A test of the
randomized-truncation step checks its estimator's two ends: ``keep=1`` is the full
window's gradient and ``keep=0`` regular truncation at the chunk length.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import model, step, sweep
from rnn_jax.config import ModelConfig, TrainConfig
from rnn_jax.loss import cross_entropy

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setattr(sys, "argv", [name, *args])
    return runpy.run_path(str(ROOT / "experiments" / name), run_name="__main__")


def test_clipping_tiny(tmp_path, monkeypatch, capsys) -> None:
    run_script("clipping.py", "--tiny", "--out", str(tmp_path), monkeypatch=monkeypatch)
    table = (tmp_path / "clipping.md").read_text()
    assert sum(line.startswith("| ") for line in table.splitlines()) == 5  # header, 4 thetas
    assert "| none |" in table
    assert (tmp_path / "clipping.png").stat().st_size > 0
    assert (tmp_path / sweep.SWEEP_JSON).exists()


def test_truncation_tiny(tmp_path, monkeypatch, capsys) -> None:
    run_script("truncation.py", "--tiny", "--out", str(tmp_path), monkeypatch=monkeypatch)
    table = (tmp_path / "truncation.md").read_text()
    assert "regular, tau 5" in table and "full BPTT, T 20" in table and "randomized" in table
    assert (tmp_path / "truncation.png").stat().st_size > 0


def test_minimal_rnns_tiny(tmp_path) -> None:
    """Given a calibration (3,000 steps/s: 30 steps in the tiny 0.01 s budget; the real
    one, a pinned child process, costs a second JAX start), every run takes its budget of
    steps and is validated at the common step; the grid's best rate trains seed 1 too."""
    calibration = tmp_path / "calibration.json"
    calibration.write_text(
        json.dumps({"rows": [{"name": "mingru", "calibration_steps_per_s": [3e3]}]})
    )
    cmd = [sys.executable, str(ROOT / "experiments" / "minimal_rnns.py"), "--tiny"]
    cmd += ["--models", "mingru", "--lrs", "0.01", "0.03", "--calibration", str(calibration)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    subprocess.run([*cmd, "--out", str(tmp_path)], check=True, env=env, capture_output=True)
    table = (tmp_path / "minimal_rnns.md").read_text()
    assert "| mingru | 2 |" in table and "| 30 |" in table and "| lr 0.03 |" in table
    assert (tmp_path / "minimal_rnns.png").stat().st_size > 0
    payload = json.loads((tmp_path / "minimal_rnns.json").read_text())
    assert payload["eval_every_steps"] == 15  # 30 steps / 2 validations
    (row,) = payload["rows"]
    assert row["budget_steps"] == 30 and abs(row["params"] - 3000) < 300
    assert [run["lr"] for run in row["grid"]] == [0.01, 0.03]
    best = min(row["grid"], key=lambda run: min(run["val_bpc"]))
    assert row["seeds"][0] == best
    assert row["seeds"][1]["seed"] == 1 and row["seeds"][1]["lr"] == best["lr"]
    for run in row["grid"] + row["seeds"]:
        assert run["steps"] == [15, 30] and all(0 < bpc < 8 for bpc in run["val_bpc"])


def test_randomized_truncation_ends() -> None:
    """keep=1: the plain step over the whole window; keep=0: windows of ``chunk`` steps."""
    namespace = runpy.run_path(str(ROOT / "experiments" / "truncation.py"))
    randomized = namespace["randomized_truncation_step"]
    model_config = ModelConfig(vocab_size=11, num_hiddens=8, sigma=0.3)
    config = TrainConfig(batch_size=2, num_steps=12, lr=0.5, theta=1e9)
    optimizer = sweep.member_optimizer(config)
    state = step.init_train_state(model_config, optimizer, 2, jax.random.key(0))
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.integers(0, 11, (2, 12)), jnp.int32)
    Y = jnp.asarray(rng.integers(0, 11, (2, 12)), jnp.int32)
    kw = {"model_config": model_config, "optimizer": optimizer, "carry_hidden": True}

    def plain(state):
        return step.train_step(state, (X, Y), **kw)[0].params

    def randomized_with(keep):
        return jax.jit(lambda state: randomized(state, (X, Y), chunk=4, keep=keep, **kw)[0].params)

    def cut_by_hand(state):
        """Three windows of 4, the state carried and cut between them."""
        h, grads = state.hidden, []
        for k in range(3):
            x, y = X[:, 4 * k : 4 * k + 4], Y[:, 4 * k : 4 * k + 4]

            def loss(params, h=h, x=x, y=y):
                logits, h_out = model.apply(model_config, params, x, jax.lax.stop_gradient(h))
                return cross_entropy(logits, y) / 3, h_out

            (_, h), g = jax.value_and_grad(loss, has_aux=True)(state.params)
            grads.append(g)
        return jax.tree.map(lambda p, *g: p - 0.5 * sum(g), state.params, *grads)

    for reference, keep in ((plain, 1.0), (cut_by_hand, 0.0)):
        expected = jax.jit(reference)(state)
        got = randomized_with(keep)(state)
        for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
