"""The research workflow (issue 11): TensorBoard events, `rnn-jax info`, config files,
`--step best`, the README's Python, `--help`, and the book experiment's run folder."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rnn_jax import checkpoint, report
from tests.test_cli import TINY, assert_one_line_error, leaves_digest, rnn_jax

ROOT = Path(__file__).resolve().parents[1]


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of a scalar, as TensorBoard reads the run's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "events"), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.fixture(scope="module")
def run3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-epoch run, one checkpoint per epoch."""
    run_dir = tmp_path_factory.mktemp("wf") / "run"
    proc = rnn_jax("train", "--out", str(run_dir), "--epochs", "3", *TINY)
    assert proc.returncode == 0, proc.stderr
    return run_dir


def test_tensorboard_events_match_the_metrics(run3: Path) -> None:
    records = report.read_jsonl(run3 / "metrics.jsonl")
    train = scalars(run3, "train/perplexity")
    assert [s for s, _ in train] == [r["step"] for r in records]
    assert [v for _, v in train] == pytest.approx([r["train_ppl"] for r in records], rel=1e-6)
    val = scalars(run3, "val/perplexity")
    assert [v for _, v in val] == pytest.approx([r["val_ppl"] for r in records], rel=1e-6)
    assert len(scalars(run3, "val/bits_per_char")) == 3
    assert [v for _, v in scalars(run3, "train/lr")] == [1.0, 1.0, 1.0]
    assert len(scalars(run3, "train/grad_norm")) == 3


def test_resume_from_an_earlier_step_purges_later_events(run3: Path, tmp_path: Path) -> None:
    """Resuming from step 67 (--step) rewrites steps 134, 201 without duplicates in
    TensorBoard, sets the later checkpoints aside, and ends bitwise where the run ended."""
    run_dir = tmp_path / "run"
    shutil.copytree(run3, run_dir)
    proc = rnn_jax("train", "--resume", str(run_dir), "--step", "67", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "superseded-after-67" in proc.stdout
    steps = [s for s, _ in scalars(run_dir, "train/perplexity")]
    assert steps == [67, 134, 201]
    assert [r["step"] for r in report.read_jsonl(run_dir / "metrics.jsonl")] == [67, 134, 201]
    a = checkpoint.restore(run3, for_training=True)
    b = checkpoint.restore(run_dir, for_training=True)
    assert leaves_digest(a.state) == leaves_digest(b.state)
    aside = checkpoint.finished_steps(run_dir / "superseded-after-67")
    assert aside == [134, 201]


def test_info_lists_checkpoints_latest_and_best(run3: Path) -> None:
    proc = rnn_jax("info", str(run3))
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [int(r.split("|")[1]) for r in rows] == [67, 134, 201]
    assert "latest" in rows[-1] and all("yes" in r for r in rows)
    assert sum("best" in r for r in rows) == 1
    best = checkpoint.restore(run3, step="best").step
    for command in ("eval", "sample"):
        proc = rnn_jax(command, "--checkpoint", str(run3), "--step", "best")
        assert proc.returncode == 0, proc.stderr
        assert command == "sample" or f"step {best}:" in proc.stdout, proc.stdout


def test_config_file_reruns_a_run_bitwise(run3: Path, tmp_path: Path) -> None:
    """`--config RUN/config.json --out NEW` trains the same run again, bit for bit."""
    again = tmp_path / "again"
    proc = rnn_jax("train", "--config", str(run3 / "config.json"), "--out", str(again))
    assert proc.returncode == 0, proc.stderr
    a = checkpoint.restore(run3, for_training=True)
    b = checkpoint.restore(again, for_training=True)
    assert a.step == b.step and leaves_digest(a.state) == leaves_digest(b.state)


def test_toml_config_flags_override_and_unknown_keys_refused(tmp_path: Path) -> None:
    config = tmp_path / "study.toml"
    config.write_text(
        "# rnn-jax train --config study.toml: a 1-epoch study\n"
        "[model]\nnum_hiddens = 16\ncell = 'gru'\n"
        "[train]\nmax_tokens = 3000\nbatch_size = 4\nnum_steps = 10\nnum_epochs = 5\n"
        "sample_every = 0\n[run]\ntensorboard = false\n"
    )
    out = tmp_path / "run"
    proc = rnn_jax(
        "train", "--config", str(config), "--epochs", "1", "--out", str(out), "--no-progress"
    )
    assert proc.returncode == 0, proc.stderr
    restored = checkpoint.restore(out)
    assert restored.model_config.cell == "gru" and restored.train_config.num_epochs == 1
    assert not (out / "events").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlearning_rate = 0.1\n")
    proc = rnn_jax("train", "--config", str(bad), "--out", str(tmp_path / "x"))
    assert_one_line_error(proc, 2, "unknown key train.learning_rate")
    assert not (tmp_path / "x").exists()


def test_help_shows_each_default_once() -> None:
    proc = rnn_jax("train", "--help")
    assert proc.returncode == 0
    assert "(default: None)" not in proc.stdout
    entries: dict[str, str] = {}
    flag = None
    for line in proc.stdout.splitlines():
        match = re.match(r"^  (--[a-z-]+)", line)
        if match:
            flag = match.group(1)
            entries[flag] = line
        elif flag and line.startswith("    "):
            entries[flag] += " " + line.strip()
        else:
            flag = None
    for flag in ("--batch-size", "--lr", "--preprocess", "--max-steps", "--optimizer", "--keep"):
        assert entries[flag].count("(default:") == 1, (flag, entries[flag])


def test_readme_python_blocks_run_as_written(tmp_path: Path) -> None:
    """Every fenced Python block of the README runs, in a fresh process, as written (but
    the export snippet, a script of arguments that tests/test_export.py runs)."""
    readme = (ROOT / "README.md").read_text("utf-8")
    readme = re.sub(
        r"<!-- export-snippet -->.*?<!-- /export-snippet -->", "", readme, flags=re.DOTALL
    )
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    assert blocks
    for block in blocks:
        proc = subprocess.run(
            [sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, block + proc.stderr


def test_book_experiment_leaves_a_run_folder_to_sample(tmp_path: Path) -> None:
    out = tmp_path / "book"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiments" / "book_rnn.py"),
            "--out",
            str(out),
            "--epochs",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    sampled = rnn_jax("sample", "--checkpoint", str(out), "--num-chars", "10")
    assert sampled.returncode == 0 and sampled.stdout.startswith("time traveller")


def test_epoch_lines_are_written_above_the_progress_bar() -> None:
    """The loop and the run print through ``tqdm.write``, which clears the bar, prints,
    and redraws it below (``print`` wrote the line onto the bar)."""
    import inspect

    from tqdm.auto import tqdm

    from rnn_jax import loop, run

    assert inspect.signature(loop.fit).parameters["echo"].default == tqdm.write
    assert run.TrainRequest().echo == tqdm.write
    assert inspect.signature(run.train).parameters["echo"].default == tqdm.write
