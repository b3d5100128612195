"""The ``rnn-jax`` command driven as a user would: subprocesses, exit codes, stderr,
and the run folder before and after.

Each run uses a tiny model so that a process costs a few seconds, most of it JAX's
import and compilation.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from rnn_jax import checkpoint, cli, data, input_pipeline, report, sample, step
from rnn_jax.loss import perplexity

TINY = [
    "--max-tokens", "3000", "--num-hiddens", "16", "--batch-size", "4", "--num-steps", "10",
    "--sample-every", "0", "--no-progress", "--save-every", "1",
]  # fmt: skip


CACHE = Path(os.environ.get("PYTEST_CACHE_DIR", "/tmp")) / "rnn_jax-test-cache"


def rnn_jax(
    *args: str, timeout: float = 120, max_file_bytes: int | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI; ``max_file_bytes`` makes every larger file write fail as a full disk
    would (RLIMIT_FSIZE with SIGXFSZ ignored, so the write returns EFBIG), set by a wrapper
    that then execs the CLI (a ``preexec_fn`` would fork this multithreaded process)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XDG_CACHE_HOME": str(CACHE)}
    command = [sys.executable, "-m", "rnn_jax", *args]
    if max_file_bytes is not None:
        limit = (
            "import os, resource, signal, sys; "
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({max_file_bytes}, {max_file_bytes})); "
            "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
        )
        command = [sys.executable, "-c", limit, *command[1:]]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def folder_digest(path: Path) -> str:
    """sha256 over every file's relative path and bytes below ``path``."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def leaves_digest(tree: object) -> list[str]:
    """sha256 of every leaf's bytes (PRNG keys through their key data)."""
    return [
        hashlib.sha256(np.asarray(_key_data(leaf)).tobytes()).hexdigest()
        for leaf in jax.tree.leaves(tree)
    ]


def _key_data(leaf: jax.Array) -> jax.Array:
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(leaf)
    return leaf


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("rnn-jax: error: "), lines[0]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


PAUSE_S = 180  # the deadline of every wait on a paused run


def start_paused(args: list[str], pause_dir: Path, *points: str) -> subprocess.Popen[str]:
    """``rnn-jax ARGS`` in a child process that waits at each arrival at the named
    ``points`` (``signals.pause_point``: ``folder``, ``start``, ``record``) until the test
    releases it (``release``), so that the test acts there instead of racing the run."""
    pause_dir.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XDG_CACHE_HOME": str(CACHE),
        "RNN_JAX_PAUSE_AT": ",".join(points),
        "RNN_JAX_PAUSE_DIR": str(pause_dir),
    }
    command = [sys.executable, "-m", "rnn_jax", *args]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def wait_paused(
    child: subprocess.Popen[str], pause_dir: Path, point: str, arrival: int = 1
) -> None:
    """Until ``child`` waits at its ``arrival``-th arrival at ``point``; fails if it
    exits first or ``PAUSE_S`` pass."""
    marker = pause_dir / f"{point}-{arrival}.paused"
    deadline = time.monotonic() + PAUSE_S
    while not marker.exists():
        if child.poll() is not None:
            raise AssertionError(f"exited before pausing at {point}: {child.communicate()}")
        assert time.monotonic() < deadline, f"no pause at {point} #{arrival} in {PAUSE_S} s"
        time.sleep(0.01)


def release(pause_dir: Path, point: str, *arrivals: int) -> None:
    """Let the run go on from (or straight through) these arrivals at ``point``."""
    for arrival in arrivals or (1,):
        (pause_dir / f"{point}-{arrival}.go").touch()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch run; tests that change it copy it first."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    proc = rnn_jax("train", "--out", str(run_dir), "--epochs", "2", *TINY)
    assert proc.returncode == 0, proc.stderr
    return run_dir


def test_train_writes_a_complete_run_folder(trained: Path) -> None:
    """config.json, metrics (one line per epoch), plot and one checkpoint per epoch."""
    for name in ("config.json", "metrics.jsonl", "perplexity.png", "checkpoints"):
        assert (trained / name).exists(), name
    assert len((trained / "metrics.jsonl").read_text().splitlines()) == 2
    restored = checkpoint.restore(trained)
    K = (2700 - 10) // (4 * 10)
    assert restored.step == 2 * K and restored.epoch == 2


def test_sample_in_fresh_processes_matches_in_process_restore(trained: Path) -> None:
    """Two fresh processes print the same continuations as restoring here and sampling."""
    prefixes = ["--prefix", "time traveller", "--prefix", "the time machi"]
    args = ["sample", "--checkpoint", str(trained), *prefixes, "--num-chars", "40"]
    first, second = rnn_jax(*args), rnn_jax(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    restored = checkpoint.restore(trained)
    expected = sample.predict(
        ["time traveller", "the time machi"],
        40,
        restored.model_config,
        restored.params,
        restored.vocab,
    )
    assert first.stdout.splitlines() == expected


def test_eval_in_fresh_process_matches_in_process_perplexity(trained: Path) -> None:
    """`rnn-jax eval` reports the perplexity the library computes on the validation split."""
    proc = rnn_jax("eval", "--checkpoint", str(trained))
    assert proc.returncode == 0, proc.stderr
    restored = checkpoint.restore(trained)
    corpus, _ = data.load_corpus(max_tokens=3000)
    _, val = input_pipeline.train_val_split(corpus, 0.1)
    Xs, Ys = input_pipeline.eval_batches(val, 4, 10)
    nll, count = step.make_evaluate(restored.model_config)(restored.params, Xs, Ys)
    assert f"perplexity {perplexity(nll, count):.3f}" in proc.stdout


def test_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path: Path) -> None:
    """2 epochs, then --resume to 4, equals 4 epochs straight: params and optimizer state."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert rnn_jax("train", "--out", str(straight), "--epochs", "4", *TINY).returncode == 0
    assert rnn_jax("train", "--out", str(resumed), "--epochs", "2", *TINY).returncode == 0
    proc = rnn_jax("train", "--resume", str(resumed), "--epochs", "4", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    a = checkpoint.restore(straight, for_training=True)
    b = checkpoint.restore(resumed, for_training=True)
    assert a.step == b.step
    assert leaves_digest(a.state) == leaves_digest(b.state)
    metrics = (resumed / "metrics.jsonl").read_text().splitlines()
    assert [int(line.split('"epoch": ')[1].split(",")[0]) for line in metrics] == [1, 2, 3, 4]


def test_signal_saves_exits_and_resumes_exactly(tmp_path: Path) -> None:
    """SIGTERM during training (sent while the run waits after its first record and
    save, at step 67) finishes the next step, saves it, exits 128+15; resuming then ends
    bitwise equal to a run never interrupted, metrics included. (SIGHUP and SIGINT, the
    same way, in ``tests/test_run.py``: with records every 25 steps, and a step budget.)"""
    signum = signal.SIGTERM
    run_dir, straight, pause = tmp_path / "run", tmp_path / "straight", tmp_path / "pause"
    long = ["--epochs", "30", "--num-hiddens", "48"]
    args = ["train", "--out", str(run_dir), *TINY, *long]
    args[args.index("--save-every") + 1] = "1000"  # the first epoch, the signal and the end save
    child = start_paused(args, pause, "record")
    wait_paused(child, pause, "record")
    child.send_signal(signum)
    release(pause, "record")
    out, err = child.communicate(timeout=PAUSE_S)
    assert child.returncode == 128 + signum, (child.returncode, out, err)
    assert "--resume" in out and err == "", (out, err)
    assert checkpoint.restore(run_dir).step == 68
    proc = rnn_jax("train", "--resume", str(run_dir), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    proc = rnn_jax("train", "--out", str(straight), *TINY, *long)
    assert proc.returncode == 0, proc.stderr
    a = checkpoint.restore(straight, for_training=True)
    b = checkpoint.restore(run_dir, for_training=True)
    assert a.step == b.step == 30 * 67
    assert leaves_digest(a.state) == leaves_digest(b.state)
    keys = ("epoch", "step", "train_ppl", "val_ppl", "grad_norm")
    ours, theirs = (
        [{k: r[k] for k in keys} for r in report.read_jsonl(d / "metrics.jsonl")]
        for d in (run_dir, straight)
    )
    assert ours == theirs  # the interrupted epoch's record included


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_before_training_leaves_no_folder(tmp_path: Path, signum: signal.Signals) -> None:
    """A signal while the run starts (sent while it waits with its data loaded and
    checked and its folder made, before the step compiles) exits 128+signum with one
    line and leaves no run folder behind."""
    run_dir, pause = tmp_path / "run", tmp_path / "pause"
    child = start_paused(["train", "--out", str(run_dir), "--epochs", "3", *TINY], pause, "folder")
    wait_paused(child, pause, "folder")
    assert (run_dir / ".lock").exists()
    child.send_signal(signum)
    release(pause, "folder")
    out, err = child.communicate(timeout=PAUSE_S)
    assert child.returncode == 128 + signum, (child.returncode, out, err)
    assert out.startswith("data:"), out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "before training started" in lines[0], err
    assert not run_dir.exists()


WHILE_IMPORTING = """
import builtins, os, sys
real_import, signum = builtins.__import__, int(sys.argv[1])
def hooked(name, *args, **kwargs):  # the signal lands while rnn_jax.cli is imported
    if name == "rnn_jax.cli":
        os.kill(os.getpid(), signum)
    return real_import(name, *args, **kwargs)
builtins.__import__ = hooked
sys.argv = ["rnn-jax", *sys.argv[2:]]
from rnn_jax.__main__ import main
sys.exit(main())
"""


@pytest.mark.parametrize("command", [["info", "runs/none"], ["export", "runs/none"]])
def test_signal_while_the_command_line_imports_is_one_line(command: list[str]) -> None:
    """The entry point (``rnn-jax``, ``python -m rnn_jax``) installs its handlers before
    it imports ``rnn_jax.cli``: a SIGINT there exits 130 with one line, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-c", WHILE_IMPORTING, str(int(signal.SIGINT)), *command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 130, (proc.returncode, proc.stderr)
    assert proc.stderr == "rnn-jax: SIGINT; stopped while starting\n"


def test_second_writer_is_refused(trained: Path, tmp_path: Path) -> None:
    """While one process holds the run folder, `train --resume` on it fails at once."""
    import fcntl

    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    before = folder_digest(run_dir / "checkpoints")
    with (run_dir / ".lock").open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = rnn_jax("train", "--resume", str(run_dir), "--epochs", "3")
    assert_one_line_error(proc, 2, "in use")
    assert folder_digest(run_dir / "checkpoints") == before


def test_nan_loss_stops_with_the_step_window(tmp_path: Path) -> None:
    """An infinite learning rate turns the loss NaN: exit 1, the step window named,
    no checkpoint of the broken state."""
    run_dir = tmp_path / "run"
    diverge = ["--lr", "1e30", "--theta", "1e30"]
    proc = rnn_jax("train", "--out", str(run_dir), "--epochs", "3", *diverge, *TINY)
    assert_one_line_error(proc, 1, "between steps 1 and 67")
    assert not any((run_dir / "checkpoints").glob("[0-9]*"))


def test_kill_during_save_keeps_the_previous_checkpoint(trained: Path, tmp_path: Path) -> None:
    """kill -9 while Orbax writes (a save held before its commit, as Orbax's own tests
    hold one: its files written to the temporary folder, not renamed) leaves the earlier
    checkpoints restorable."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    steps_before = sorted(
        int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()
    )
    script = f"""
import asyncio, jax
from pathlib import Path
from orbax.checkpoint._src.path import atomicity
from rnn_jax import checkpoint

async def hold(self, *args, **kwargs):  # the step's files are written, the commit waits
    print("writing", flush=True)
    await asyncio.sleep(3600)

atomicity.AtomicRenameTemporaryPath.finalize = hold
run = Path({str(run_dir)!r})
restored = checkpoint.restore(run, for_training=True)
big = jax.random.normal(jax.random.key(0), (256, 1024))
state = restored.state.replace(params={{**restored.params, "big": big}}, step=restored.step + 1)
manager = checkpoint.open_manager(run, checkpoint.CheckpointConfig(keep=100))
checkpoint.save(manager, state, epoch=restored.epoch, model_config=restored.model_config,
                train_config=restored.train_config, vocab=restored.vocab)
checkpoint.close(manager)
"""
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "writing"
    child.kill()
    child.wait()
    child.stdout.close()
    assert list((run_dir / "checkpoints").glob(f"{steps_before[-1] + 1}.orbax-checkpoint-tmp*"))
    restored = checkpoint.restore(run_dir, step=steps_before[-1])
    assert restored.step == steps_before[-1]
    again = rnn_jax("sample", "--checkpoint", str(run_dir), "--step", str(steps_before[-1]))
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("epochs", [2, 3], ids=["last-save-fails", "mid-run-save-fails"])
def test_failed_checkpoint_write_exits_1_and_keeps_the_last_good_one(
    tmp_path: Path, epochs: int
) -> None:
    """A save that cannot be written (files over 256 KiB refused, as on a full disk) stops
    the run with exit 1 and one error line naming the last good checkpoint, whether it
    fails at the end (seen at close) or mid-run (seen at the next save); that checkpoint
    is unchanged and still samples."""
    run_dir = tmp_path / "run"
    wide = [*TINY, "--num-hiddens", "512"]  # W_hh alone is 1 MiB
    assert rnn_jax("train", "--out", str(run_dir), "--epochs", "1", *wide).returncode == 0
    good = checkpoint.restore(run_dir).step
    before = folder_digest(run_dir / "checkpoints" / str(good))
    proc = rnn_jax(
        "train", "--resume", str(run_dir), "--epochs", str(epochs), "--no-progress",
        max_file_bytes=256 * 1024,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("rnn-jax: error: ") == 1, proc.stderr
    ours = proc.stderr.split("rnn-jax: error: ")[1].split("\n")[0]
    needles = ("saving a checkpoint failed", "File too large", f"latest good one is step {good}")
    for needle in needles:
        assert needle in ours, (needle, ours)
    # No other error is reported. The one residue: tensorstore, from native threads, may
    # print "Event loop is closed" tracebacks when Orbax has closed its event loop after
    # the first failed write while the save's other writes were in flight (a race inside
    # Orbax that the CLI cannot intercept; see the closing note of issue 5).
    tracebacks = proc.stderr.count("Traceback (most recent call last):")
    assert tracebacks == proc.stderr.count("RuntimeError: Event loop is closed"), proc.stderr
    assert "ERROR:absl" not in proc.stderr, proc.stderr
    assert checkpoint.restore(run_dir).step == good
    assert folder_digest(run_dir / "checkpoints" / str(good)) == before
    again = rnn_jax("sample", "--checkpoint", str(run_dir))
    assert again.returncode == 0, again.stderr


def test_mismatched_metadata_is_refused(trained: Path) -> None:
    """Restoring with a different model config or vocabulary names the field and values."""
    restored = checkpoint.restore(trained)
    other = type(restored.model_config)(vocab_size=restored.model_config.vocab_size, num_hiddens=32)
    with pytest.raises(checkpoint.CheckpointError, match=r"'num_hiddens': saved 16, expected 32"):
        checkpoint.restore(trained, expect_model=other)
    vocab = data.Vocab(list("abc"))
    with pytest.raises(checkpoint.CheckpointError, match="vocab"):
        checkpoint.restore(trained, expect_vocab=vocab)


def test_tampered_shapes_are_refused(trained: Path, tmp_path: Path) -> None:
    """A checkpoint whose config no longer matches its arrays is refused before restoring."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    latest = max(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    meta_files = [
        p for p in (run_dir / "checkpoints" / str(latest) / "meta").rglob("*") if p.is_file()
    ]
    assert meta_files
    for meta in meta_files:
        meta.write_text(meta.read_text().replace('"num_hiddens": 16', '"num_hiddens": 24'))
    proc = rnn_jax("sample", "--checkpoint", str(run_dir))
    assert_one_line_error(proc, 2, "params", "saved [", "expected [")


SAMPLE = ["sample", "--checkpoint", "{run}"]
BAD_INPUTS = [
    (["sample", "--checkpoint", "{missing}"], "not found"),
    (["sample", "--checkpoint", "{run}/config.json"], "is a file"),
    (["sample", "--checkpoint", "{empty}"], "no checkpoints"),
    (["sample", "--checkpoint", "{run}", "--step", "5"], "no checkpoint at step 5"),
    (["sample", "--checkpoint", "{run}", "--prefix", "Time Traveller!"], "'T', '!'"),
    (["sample", "--checkpoint", "{run}", "--num-chars", "0"], "--num-chars"),
    ([*SAMPLE, "--strategy", "temperature", "--temperature", "0"], "temperature must be"),
    ([*SAMPLE, "--strategy", "top-k", "--top-k", "0"], "top_k must be"),
    ([*SAMPLE, "--strategy", "top-p", "--top-p", "1.5"], "top_p must be in (0, 1]"),
    ([*SAMPLE, "--strategy", "beam", "--beam-size", "0"], "beam_size"),
    (["train", "--out", "{new}", "--cell", "gru", "--nonlinearity", "relu"], "rnn cell only"),
    (["train", "--out", "{new}", "--dropout", "1.5"], "dropout must be in [0, 1)"),
    (["eval", "--checkpoint", "{run}", "--corpus", "{missing}"], "not found"),
    (["train", "--out", "{run}"], "already holds a run"),
    (["train", "--resume", "{run}", "--num-hiddens", "32"], "--num-hiddens 32 differs"),
    (["train", "--resume", "{run}", "--lr", "0.5"], "--lr 0.5 differs"),
    (["train", "--out", "{new}", "--corpus", "{missing}"], "not found"),
    (["train", "--out", "{new}", "--corpus", "{empty_file}"], "empty"),
    (["train", "--out", "{new}", "--corpus", "{digits}", "--preprocess", "book"], "no letters"),
    (["train", "--out", "{new}", "--corpus", "{latin1}"], "not UTF-8: byte 0xe9 at offset 9"),
    (["train", "--out", "{new}", "--corpus", "{short}"], "too short"),
    (["train", "--out", "{new}", "--batch-size", "0"], "batch_size"),
    (["train", "--out", "{new}", "--num-steps", "-3"], "num_steps"),
    (["train", "--out", "{new}", "--num-hiddens", "0"], "num_hiddens"),
    (["train", "--out", "{new}", "--lr", "-1"], "lr must be a positive number"),
    (["train", "--out", "{new}", "--eval-every", "-2"], "eval_every must be an integer >= 0"),
    (["train", "--out", "{short}/sub"], "cannot create run folder"),
]  # fmt: skip
# One of each stage, also run as a process of its own: the parser, a reader's checkpoint,
# the corpus, the resumed run's settings, the train configuration's checks.
IN_A_PROCESS = ("--num-chars", "not found", "not UTF-8", "--num-hiddens 32", "lr must be")


def bad_input_places(tmp_path: Path, trained: Path) -> dict[str, Path]:
    """The folders and files ``BAD_INPUTS`` name, made below ``tmp_path``."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty_file.txt").write_bytes(b"")
    (tmp_path / "digits.txt").write_text("1234 5678 !!!\n")
    (tmp_path / "latin1.txt").write_bytes("hello caf\u00e9".encode("latin-1"))
    (tmp_path / "short.txt").write_text("a short text")
    places = {
        "run": trained,
        "missing": tmp_path / "missing",
        "empty": tmp_path / "empty",
        "new": tmp_path / "new",
        "empty_file": tmp_path / "empty_file.txt",
        "digits": tmp_path / "digits.txt",
        "latin1": tmp_path / "latin1.txt",
        "short": tmp_path / "short.txt",
    }
    return places


@pytest.mark.parametrize(("args", "needle"), BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    """In this process (``cli.main``, a tenth of the time of a process of its own)."""
    places = bad_input_places(tmp_path, trained)
    before = folder_digest(trained)
    capsys.readouterr()
    code = cli.main([a.format(**places) for a in args])
    out, err = capsys.readouterr()
    assert_one_line_error(subprocess.CompletedProcess(args, code, out, err), 2, needle)
    assert folder_digest(trained) == before
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("args", "needle"), [case for case in BAD_INPUTS if case[1].startswith(IN_A_PROCESS)]
)
def test_bad_input_in_a_process_of_its_own(
    trained: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    """The same through ``python -m rnn_jax``: nothing else (a warning, a log line of JAX
    or Orbax) reaches stderr."""
    places = bad_input_places(tmp_path, trained)
    before = folder_digest(trained)
    proc = rnn_jax(*[a.format(**places) for a in args])
    assert_one_line_error(proc, 2, needle)
    assert folder_digest(trained) == before
    assert not (tmp_path / "new").exists()


def test_help_documents_every_option_with_its_default() -> None:
    proc = rnn_jax("train", "--help")
    assert proc.returncode == 0
    flags = "--corpus --token --max-tokens --num-hiddens --batch-size --num-steps --lr --theta "
    flags += "--epochs --partition --seed --out --resume --save-every --keep --cell --num-layers"
    for flag in flags.split():
        assert flag in proc.stdout, flag
    assert "(default: 32)" in proc.stdout
    assert "(default: 35; for your own --corpus: 64)" in proc.stdout  # config.OWN_TEXT


def test_every_cell_trains_and_samples_from_the_shell(tmp_path: Path) -> None:
    """A 2-layer LSTM run folder restores in a fresh process; a seeded top-p sample
    repeats exactly and a beam search prints one line per prefix."""
    run_dir = tmp_path / "lstm"
    lstm = ["--cell", "lstm", "--num-layers", "2"]
    proc = rnn_jax("train", "--out", str(run_dir), "--epochs", "1", *lstm, *TINY)
    assert proc.returncode == 0, proc.stderr
    restored = checkpoint.restore(run_dir)
    assert (restored.model_config.cell, restored.model_config.num_layers) == ("lstm", 2)
    top_p = ["sample", "--checkpoint", str(run_dir), "--strategy", "top-p", "--top-p", "0.9"]
    top_p += ["--seed", "3"]
    first, second = rnn_jax(*top_p), rnn_jax(*top_p)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.startswith("time traveller")
    beam = rnn_jax(
        "sample", "--checkpoint", str(run_dir), "--strategy", "beam", "--num-chars", "10"
    )
    assert beam.returncode == 0, beam.stderr
    assert len(beam.stdout.splitlines()) == 1
