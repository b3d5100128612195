"""Issue 12, "trust nothing on disk": one test per requirement, each naming the fault it
injects and the outcome it expects.

The faults are injected as a user (or the machine) would: bits flipped and files cut in
a checkpoint, two writers on one folder, kill -9, a full disk (a small tmpfs where this
machine lets us mount one, else RLIMIT_FSIZE), signals, odd corpora, torn logs, bad
flags. Processes are the real CLI (``tests.test_cli.rnn_jax``) where the process itself
is under test (exit codes, stderr, signals, the lock); the rest calls ``cli.main``
in-process, which prints and returns exactly what the process would, to keep the file
near two minutes on two cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rnn_jax import checkpoint, cli, data, report
from tests.test_cli import (
    CACHE,
    PAUSE_S,
    TINY,
    assert_one_line_error,
    folder_digest,
    leaves_digest,
    release,
    rnn_jax,
    start_paused,
    wait_paused,
)

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XDG_CACHE_HOME": str(CACHE)}
K = 67  # steps per epoch of TINY
KEYS = ("epoch", "step", "train_ppl", "val_ppl", "grad_norm")


@pytest.fixture(autouse=True)
def _token_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(CACHE))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch run, a checkpoint per epoch (steps 67, 134); copy to change it."""
    run_dir = tmp_path_factory.mktemp("run") / "run"
    proc = rnn_jax("train", "--out", str(run_dir), "--epochs", "2", *TINY)
    assert proc.returncode == 0, proc.stderr
    return run_dir


@pytest.fixture(scope="module")
def straight3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run trained 3 epochs without a stop: what every resumed run must equal."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    proc = rnn_jax("train", "--out", str(run_dir), "--epochs", "3", *TINY)
    assert proc.returncode == 0, proc.stderr
    return run_dir


def copy_of(run_dir: Path, tmp_path: Path, name: str = "run") -> Path:
    target = tmp_path / name
    shutil.copytree(run_dir, target)
    return target


def main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``rnn-jax ARGS`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code: int, err: str, expected: int, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert code == expected, (code, err)
    assert len(lines) == 1 and lines[0].startswith("rnn-jax: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def same_as_straight(resumed: Path, straight: Path) -> None:
    """Bitwise-equal train state and the same metric records as the uninterrupted run."""
    a = checkpoint.restore(straight, for_training=True)
    b = checkpoint.restore(resumed, for_training=True)
    assert a.step == b.step
    assert leaves_digest(a.state) == leaves_digest(b.state)
    ours, theirs = (
        [{k: r.get(k) for k in KEYS} for r in report.read_jsonl(d / "metrics.jsonl")]
        for d in (resumed, straight)
    )
    assert ours == theirs


def data_file(run_dir: Path, step: int, item: str) -> Path:
    """The item's data file that a restore reads (not the per-process copy)."""
    (path,) = (run_dir / "checkpoints" / str(step) / item / "d").iterdir()
    return path


def flip_bit(path: Path, offset: int | None = None) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 if offset is None else offset] ^= 0x01
    path.write_bytes(bytes(raw))


# ----------------------------------------------------------------- 1. a flipped bit


def test_flipped_bit_is_refused_everywhere_and_step_resumes_exactly(
    trained: Path, straight3: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fault: one bit flipped in the latest checkpoint's params data file. eval, sample
    and train --resume exit 2 with one line naming step 134, params and step 67; info
    marks 134 not intact and says why; --resume --step 67 sets 134 aside, says so, and ends bitwise
    equal to 3 epochs straight."""
    run_dir = copy_of(trained, tmp_path)
    flip_bit(data_file(run_dir, 2 * K, "params"))
    for args in (
        ["eval", "--checkpoint", run_dir],
        ["sample", "--checkpoint", run_dir],
        ["train", "--resume", run_dir, "--epochs", "3", "--no-progress"],
    ):
        proc = rnn_jax(*map(str, args))
        assert_one_line_error(proc, 2, "step 134", "params", "--step 67")
    code, out, _ = main(capsys, "info", run_dir)
    assert code == 0 and re.search(r"\| 134 \|.*\| NO \| latest", out), out
    assert re.search(r"\| 67 \|.*\| yes \|", out), out
    assert "step 134 of" in out and "is damaged: params" in out, out
    proc = rnn_jax("train", "--resume", str(run_dir), "--step", "67", "--epochs", "3")
    assert proc.returncode == 0, proc.stderr
    aside = run_dir / "superseded-after-67"
    assert f"kept in {aside}" in proc.stdout, proc.stdout
    assert (aside / "checkpoints" / "134").is_dir()
    same_as_straight(run_dir, straight3)


# ----------------------------------------------------------------- 2. cut and missing files


def test_truncated_and_missing_files_are_one_line_errors(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Faults: each item's data file cut to half; each metadata file Orbax or we read
    deleted; garbage in Orbax's _CHECKPOINT_METADATA; the largest per-process params
    data file emptied. Each: one line, exit 2, naming step 134, from sample (params, meta) or
    train --resume (the train item); the process run once, the rest in-process; step
    67 still restores."""
    pristine = copy_of(trained, tmp_path, "pristine")
    step_dir = Path("checkpoints") / str(2 * K)
    faults: list[tuple[str, Path]] = []
    for item in ("params", "train"):
        faults.append(("truncate", data_file(pristine, 2 * K, item).relative_to(pristine)))
    for name in (
        "_CHECKPOINT_METADATA",
        "params/_METADATA",
        "params/manifest.ocdbt",
        "train/_METADATA",
        "train/manifest.ocdbt",
        "meta/metadata",
        "integrity/metadata",
    ):
        faults.append(("delete", step_dir / name))
    process_cases = {0, len(faults), len(faults) + 1}  # stderr only a process shows
    faults.append(("garbage", step_dir / "_CHECKPOINT_METADATA"))  # Orbax logs it, too
    shards = sorted((pristine / step_dir / "params" / "ocdbt.process_0" / "d").iterdir())
    largest = max(shards, key=lambda p: p.stat().st_size)
    faults.append(("empty", largest.relative_to(pristine)))  # the other reads orphaned
    for i, (kind, rel) in enumerate(faults):
        run_dir = copy_of(pristine, tmp_path, f"case{i}")
        path = run_dir / rel
        if kind == "truncate":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif kind == "garbage":
            path.write_text('{"not": json')
        elif kind == "empty":
            path.write_bytes(b"")
        else:
            path.unlink()
        # readers restore params only: a fault in the train item is resume's to catch
        reader = ["sample", "--checkpoint", run_dir]
        if rel.parts[2] == "train":
            reader = ["train", "--resume", run_dir, "--epochs", "3", "--no-progress"]
        if i in process_cases:
            assert_one_line_error(rnn_jax(*map(str, reader)), 2, "step 134")
        else:
            code, _, err = main(capsys, *reader)
            one_line(code, err, 2, "step 134")
        assert checkpoint.restore(run_dir, step=K).step == K, (kind, rel)


# ----------------------------------------------------------------- 3. two writers, a reader


READER = """
import sys
from pathlib import Path
from rnn_jax import cli
run, stop = sys.argv[1], Path(sys.argv[2])
print("ready", flush=True)
while not stop.exists():
    print("exit", cli.main(["sample", "--checkpoint", run, "--num-chars", "5"]), flush=True)
"""  # samples (one reader process, so it reads often) until told to stop


def test_second_writer_refused_while_running_and_after(tmp_path: Path) -> None:
    """Faults: writer B on A's --out while A trains (A waits after its first record and
    save, so the race is decided: B fails at once, in use, naming A's pid; B with --resume
    too), B again when A has finished (already holds a run); a reader samples while A
    saves with --keep 1, deleting the step before (exit 0 or one clean line, never a
    traceback). A finishes, and its checkpoints and metrics are what A wrote. The reader
    reads once while A waits at each of its first 3 records (right after a save was
    started): events, not the machine's speed, decide every step."""
    run_dir, pause = tmp_path / "run", tmp_path / "pause"
    args = [*TINY, "--epochs", "12", "--num-hiddens", "32", "--keep", "1"]
    a = start_paused(["train", "--out", str(run_dir), *args], pause, "record")
    lines: list[str] = []
    try:
        wait_paused(a, pause, "record")
        b = rnn_jax("train", "--out", str(run_dir), *args)
        assert_one_line_error(b, 2, "in use", f"pid {a.pid}")
        b = rnn_jax("train", "--resume", str(run_dir), "--epochs", "30")
        assert_one_line_error(b, 2, "in use")
        reader = subprocess.Popen(
            [sys.executable, "-c", READER, str(run_dir), str(tmp_path / "stop")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        assert reader.stdout is not None
        pump = threading.Thread(target=lambda: lines.extend(reader.stdout), daemon=True)
        pump.start()
        for record in (1, 2, 3):
            wait_paused(a, pause, "record", record)
            _wait_for_reads(lines, _reads(lines) + 1)  # a read while A waits after a save
            release(pause, "record", record)
    except BaseException:
        a.kill()
        raise
    finally:
        release(pause, "record", *range(1, 13))
    out, err = a.communicate(timeout=PAUSE_S)
    (tmp_path / "stop").touch()
    reader.wait(timeout=PAUSE_S)
    pump.join(timeout=PAUSE_S)
    reads, errors = "".join(lines), reader.stderr.read()
    reader.stdout.close()
    reader.stderr.close()
    assert a.returncode == 0, (out, err)
    assert reader.returncode == 0 and "Traceback" not in errors, errors
    assert lines[0] == "ready\n", reads
    codes = [int(line[5:]) for line in reads.splitlines() if line.startswith("exit ")]
    assert len(codes) >= 3 and set(codes) <= {0, 2}, reads
    refusals = errors.strip().splitlines()
    assert len(refusals) == codes.count(2), errors
    assert all(line.startswith("rnn-jax: error: ") for line in refusals), errors
    mine = [run_dir / "checkpoints", run_dir / "metrics.jsonl"]
    before = [folder_digest(mine[0]), mine[1].read_bytes()]
    b = rnn_jax("train", "--out", str(run_dir), *args)
    assert_one_line_error(b, 2, "already holds a run", f"--resume {run_dir}")
    assert [folder_digest(mine[0]), mine[1].read_bytes()] == before
    assert checkpoint.restore(run_dir).step == 12 * K


def _reads(lines: list[str]) -> int:
    return sum(line.startswith("exit ") for line in lines)


def _wait_for_reads(lines: list[str], count: int, timeout: float = PAUSE_S) -> None:
    """Until the reader has printed ``count`` "exit" lines (its reads), or fail."""
    deadline = time.monotonic() + timeout
    while _reads(lines) < count:
        assert time.monotonic() < deadline, f"{count} reads not done in {timeout} s: {lines}"
        time.sleep(0.01)


# ----------------------------------------------------------------- 4. kill -9 before a save


def test_kill_before_first_checkpoint_restarts_with_the_same_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fault: SIGKILL while the run waits before its first step (config.json written,
    the step compiled, no checkpoint yet). The folder stays; --resume says to rerun with
    --out (one line, exit 2); the same command restarts it saying so in one line and
    finishes."""
    run_dir, pause = tmp_path / "run", tmp_path / "pause"
    command = ["train", "--out", str(run_dir), "--epochs", "2", *TINY]
    child = start_paused(command, pause, "start")
    wait_paused(child, pause, "start")
    assert (run_dir / "config.json").exists()
    child.kill()
    assert child.wait() == -signal.SIGKILL
    child.communicate()
    assert run_dir.is_dir() and not checkpoint.has_checkpoints(run_dir)
    code, _, err = main(capsys, "train", "--resume", run_dir, "--epochs", "2")
    one_line(code, err, 2, "no finished checkpoint", f"--out {run_dir}")
    proc = rnn_jax(*command)
    assert proc.returncode == 0, proc.stderr
    restart = [line for line in proc.stdout.splitlines() if line.startswith("restarting")]
    assert len(restart) == 1 and str(run_dir) in restart[0], proc.stdout
    assert checkpoint.restore(run_dir).step == 2 * K


# ----------------------------------------------------------------- 5. a full disk


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[bool]:
    """A tmpfs of ``size`` at ``path`` (True), or nothing mounted (False)."""
    path.mkdir()
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk_exits_1_naming_the_last_good_step_and_resumes(tmp_path: Path) -> None:
    """Fault: the disk fills in the second epoch (a 150 KiB tmpfs holds the first
    checkpoint and the logs, not the second; where mount is refused, files over 30 KB
    fail, so the plot after epoch 2 fails). Exit 1, one line naming a step that
    restores, no temporary file or folder left; once space is freed, --resume finishes."""
    disk = tmp_path / "disk"
    with small_disk(disk, "150k") as mounted:
        run_dir = disk / "run"
        limit = None if mounted else 30_000
        args = ["--out", str(run_dir), "--epochs", "3", *TINY]
        proc = rnn_jax("train", *args, max_file_bytes=limit)
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("rnn-jax: ")]
        assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
        good = re.search(r"(?:last|latest) good (?:checkpoint|one) is step (\d+)", errors[0])
        assert good, errors[0]
        assert checkpoint.restore(run_dir).step == int(good.group(1))
        assert not [p for p in run_dir.rglob("*") if "tmp" in p.name], list(run_dir.rglob("*"))
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
        proc = rnn_jax("train", "--resume", str(run_dir), "--no-progress")
        assert proc.returncode == 0, proc.stderr
        assert checkpoint.restore(run_dir).step == 3 * K


FULL_AT_SECOND_RECORD = """
import contextlib, errno, sys
from unittest import mock
from tensorboardX import record_writer
from rnn_jax import cli, report


def full_at_second_record(kind, stack):
    records = []  # the records that reached the file's writer

    def no_space():
        raise OSError(errno.ENOSPC, "No space left on device")

    def counted(append):
        def wrapper(*args, **kwargs):
            records.append(1)
            if kind != "events" and len(records) >= 2:
                no_space()
            return append(*args, **kwargs)

        return wrapper

    if kind != "events":
        name = {"metrics": "append_jsonl", "samples": "append_samples"}[kind]
        stack.enter_context(mock.patch.object(report, name, counted(getattr(report, name))))
        return
    add, write = report.EventWriter.add_record, record_writer.RecordWriter.write
    stack.enter_context(mock.patch.object(report.EventWriter, "add_record", counted(add)))
    full = lambda self, b: no_space() if len(records) >= 2 else write(self, b)  # noqa: E731
    stack.enter_context(mock.patch.object(record_writer.RecordWriter, "write", full))


for kind in ("metrics", "samples", "events"):  # KINDS
    print(f"== {kind}", file=sys.stderr, flush=True)
    with contextlib.ExitStack() as stack:
        full_at_second_record(kind, stack)
        code = cli.main([a.replace("KIND", kind) for a in sys.argv[1:]])
    print(kind, code, flush=True)
"""  # for each file in turn, the disk fills at the run's second record as it is written
KINDS = ("metrics", "samples", "events")


def test_full_disk_while_writing_logs_exits_1(tmp_path: Path) -> None:
    """Fault: the disk fills at the second record just as the run appends to
    metrics.jsonl, samples.txt or its event file (that write fails with ENOSPC; one
    process runs the three). The first record and its checkpoint (step 67) were written.
    Each: exit 1, one line naming the error and step 67, no traceback. (The event file is
    written in the run's thread: tensorboardX's writer thread lost the error, and the run
    hung once its queue filled.)"""
    args = ["train", "--out", str(tmp_path / "KIND"), "--epochs", "3", *TINY]
    proc = subprocess.run(
        [sys.executable, "-c", FULL_AT_SECOND_RECORD, *args, "--sample-every", "1"],
        capture_output=True,
        text=True,
        timeout=PAUSE_S,
        env=ENV,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    ends = [line for line in proc.stdout.splitlines() if line.split()[0] in KINDS]
    assert ends == [f"{kind} 1" for kind in KINDS], proc.stdout
    errors = proc.stderr.split("== ")[1:]
    for kind, error in zip(KINDS, errors, strict=True):
        lines = error.strip().splitlines()
        assert lines[0] == kind and len(lines) == 2, error
        for needle in ("rnn-jax: error: ", "No space left on device", f"step {K}"):
            assert needle in lines[1], (kind, lines[1])
        assert checkpoint.restore(tmp_path / kind).step == K


# ----------------------------------------------------------------- 6, 9. signals mid-run


@pytest.mark.parametrize(
    ("signum", "budget"),
    [
        (signal.SIGHUP, ["--epochs", "12", "--eval-every-steps", "25", "--save-every-steps", "50"]),
        (signal.SIGINT, ["--epochs", "1000", "--max-steps", "1500"]),
    ],
    ids=["sighup-step-records", "sigint-max-steps"],
)
def test_signal_mid_run_saves_and_resumes_exactly(
    tmp_path: Path, signum: signal.Signals, budget: list[str]
) -> None:
    """Fault: SIGHUP (records every 25 steps, saves every 50: it lands between records)
    or SIGINT (a --max-steps budget not a whole number of epochs), sent while the run
    waits after its first record. It stops one step later: saved, exit 128+signal, and
    the resumed run equals one never stopped: state bitwise, and the metric records."""
    run_dir, straight, pause = tmp_path / "run", tmp_path / "straight", tmp_path / "pause"
    args = [*TINY, "--num-hiddens", "48", *budget]
    args[args.index("--save-every") + 1] = "1000"
    child = start_paused(["train", "--out", str(run_dir), *args], pause, "record")
    wait_paused(child, pause, "record")
    child.send_signal(signum)
    release(pause, "record")
    out, err = child.communicate(timeout=PAUSE_S)
    assert child.returncode == 128 + signum, (child.returncode, out, err)
    assert f"continue with: rnn-jax train --resume {run_dir}" in out and err == "", (out, err)
    stopped = checkpoint.restore(run_dir).step
    assert stopped == report.read_jsonl(run_dir / "metrics.jsonl")[0]["step"] + 1
    proc = rnn_jax("train", "--resume", str(run_dir), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    proc = rnn_jax("train", "--out", str(straight), *args)
    assert proc.returncode == 0, proc.stderr
    same_as_straight(run_dir, straight)
    assert stopped < checkpoint.restore(straight).step


# ----------------------------------------------------------------- 7. odd corpora, torn logs


def test_special_file_corpus_is_refused_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Faults: a FIFO (nobody writes to it: reading would hang) and /dev/zero (endless)
    as --corpus. One line, exit 2, no run folder."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for corpus in (fifo, Path("/dev/zero")):
        code, _, err = main(capsys, "train", "--out", tmp_path / "new", "--corpus", corpus, *TINY)
        one_line(code, err, 2, "not a regular file", str(corpus))
        assert not (tmp_path / "new").exists()


def test_torn_last_metrics_line_is_dropped_and_the_run_continues(
    trained: Path, straight3: Path, tmp_path: Path
) -> None:
    """Fault: half a JSON record appended to metrics.jsonl (a crash mid-append). --resume
    drops it and continues; the records then equal the uninterrupted run's."""
    run_dir = copy_of(trained, tmp_path)
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 3, "step": 201, "train_p')
    proc = rnn_jax("train", "--resume", str(run_dir), "--epochs", "3", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    same_as_straight(run_dir, straight3)


def test_bad_middle_metrics_line_is_refused_and_changes_nothing(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fault: line 1 of 2 of metrics.jsonl replaced by garbage. --resume (at the latest
    step, and at an earlier --step, which would set checkpoints aside) is one line
    naming the file and line 1, exit 2, and the folder is as it was."""
    run_dir = copy_of(trained, tmp_path)
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text("{garbage\n" + "".join(lines[1:]))
    before = folder_digest(run_dir)
    for extra in ([], ["--step", str(K)]):
        code, _, err = main(capsys, "train", "--resume", run_dir, "--epochs", "3", *extra)
        one_line(code, err, 2, f"{metrics}, line 1")
        assert folder_digest(run_dir) == before, extra
        assert not list(run_dir.glob("superseded-*"))


# ----------------------------------------------------------------- 8. bad input


def test_bad_flags_are_one_line_exit_2(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Faults: an abbreviated flag, a flag without its value, a seed beyond 64 bits, a
    model too big for memory (refused from an estimate, before allocating, quickly),
    --top-k with greedy decoding, a temperature of nan/inf/0, an empty --out."""
    new = tmp_path / "new"
    sample = ["sample", "--checkpoint", trained]
    cases = [
        (["train", "--out", new, "--l", "0.5"], "unrecognized arguments: --l 0.5"),
        (["train", "--out", new, "--epochs"], "--epochs: expected one argument"),
        (["train", "--out", new, "--seed", "99999999999999999999"], "seed"),
        (["train", "--out", new, *TINY, "--num-hiddens", "100000000"], "GiB"),
        ([*sample, "--strategy", "greedy", "--top-k", "5"], "--top-k does not apply"),
        ([*sample, "--strategy", "temperature", "--temperature", "nan"], "--temperature"),
        ([*sample, "--strategy", "temperature", "--temperature", "inf"], "--temperature"),
        ([*sample, "--strategy", "temperature", "--temperature", "0"], "--temperature"),
        ([*sample, "--seed", "99999999999999999999"], "--seed"),
        (["train", "--out", "", *TINY], "--out must name a folder"),
    ]
    before = folder_digest(trained)
    for args, needle in cases:
        started = time.monotonic()
        code, _, err = main(capsys, *args)
        line = one_line(code, err, 2, needle)
        assert "rnn-jax: error: rnn-jax" not in line, line
        assert time.monotonic() - started < 30, args
        assert not new.exists(), args
    assert folder_digest(trained) == before
    proc = rnn_jax("train", "--out", str(new), "--l", "0.5")  # the real process, once
    assert_one_line_error(proc, 2, "--l 0.5")


def test_changed_corpus_refuses_resume_and_eval_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fault: the corpus file edited after the run trained on it. --resume is one line,
    exit 2, naming the change; eval scores it with a note that it changed."""
    corpus = tmp_path / "corpus.txt"
    text = (Path(cli.__file__).parent / "assets" / "timemachine.txt").read_text()
    corpus.write_text(text[:20_000])
    run_dir = tmp_path / "run"
    proc = rnn_jax("train", "--out", str(run_dir), "--corpus", str(corpus), "--epochs", "1", *TINY)
    assert proc.returncode == 0, proc.stderr
    with corpus.open("a") as f:
        f.write("a line added later\n")
    before = folder_digest(run_dir / "checkpoints")
    code, _, err = main(capsys, "train", "--resume", run_dir, "--epochs", "2")
    one_line(code, err, 2, f"the corpus {corpus} changed")
    assert folder_digest(run_dir / "checkpoints") == before
    code, out, err = main(capsys, "eval", "--checkpoint", run_dir)
    assert code == 0, err
    assert out.startswith(f"note: the training corpus {corpus} changed"), out


# ----------------------------------------------------------------- 10. info, best


def test_info_and_best_step(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No fault: info lists each checkpoint intact with latest/best tags; eval and
    sample --step best read the best one."""
    code, out, _ = main(capsys, "info", trained)
    assert code == 0
    assert re.search(r"\| 67 \| 1 \|.*\| yes \|  \|", out), out
    assert re.search(r"\| 134 \| 2 \|.*\| yes \| latest, best \|", out), out
    best = checkpoint.restore(trained, step="best").step
    code, out, err = main(capsys, "eval", "--checkpoint", trained, "--step", "best")
    assert code == 0 and out.startswith(f"step {best}: perplexity"), (out, err)
    code, out, err = main(capsys, "sample", "--checkpoint", trained, "--step", "best")
    assert code == 0 and out.startswith("time traveller"), (out, err)


# ----------------------------------------------------------------- 11. another run's files


def test_checkpoints_that_are_not_the_runs_own_are_refused_and_nothing_moves(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Faults: checkpoints/ a link to another run's checkpoints/; checkpoints whose
    configs (H) or corpus fingerprint differ from config.json (another run's copied in:
    config.json edited here, which is the same mismatch). eval, sample, info and train
    --resume each exit 2 with one line, and neither folder changes."""
    other = copy_of(trained, tmp_path, "other")
    linked = copy_of(trained, tmp_path, "linked")
    shutil.rmtree(linked / "checkpoints")
    (linked / "checkpoints").symlink_to(other / "checkpoints")
    cases = [(linked, ["links to", str(other / "checkpoints")])]
    for name, section, key, value in (
        ("wider", "model", "num_hiddens", 64),
        ("recut", "corpus", "sha256", "f" * 64),
    ):
        run_dir = copy_of(trained, tmp_path, name)
        config = json.loads((run_dir / "config.json").read_text())
        config.setdefault(section, {})[key] = value
        (run_dir / "config.json").write_text(json.dumps(config))
        cases.append((run_dir, ["not this run's", key, "another run's"]))
    for run_dir, needles in cases:
        before = [folder_digest(run_dir), folder_digest(other)]
        for args in (
            ["eval", "--checkpoint", run_dir],
            ["sample", "--checkpoint", run_dir],
            ["info", run_dir],
            ["train", "--resume", run_dir, "--epochs", "3"],
        ):
            code, _, err = main(capsys, *args)
            one_line(code, err, 2, *needles)
        assert [folder_digest(run_dir), folder_digest(other)] == before, run_dir
    assert_one_line_error(rnn_jax("train", "--resume", str(linked), "--epochs", "3"), 2, "links to")


def test_out_inside_another_run_is_refused(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Faults: --out a run's checkpoints/, a folder below a run folder, a folder below a
    link to a run; a seed sweep's --out inside a run. One line, exit 2, nothing made."""
    run_dir = copy_of(trained, tmp_path)
    (tmp_path / "link").symlink_to(run_dir)
    before = folder_digest(run_dir)
    outs = [run_dir / "checkpoints", run_dir / "sub" / "new", tmp_path / "link" / "new"]
    for out in outs:
        code, _, err = main(capsys, "train", "--out", out, "--epochs", "1", *TINY)
        one_line(code, err, 2, f"--out {out} lies inside the run folder {run_dir}")
    code, _, err = main(capsys, "train", "--seeds", "0,1", "--out", outs[1], *TINY)
    one_line(code, err, 2, "lies inside the run folder")
    assert folder_digest(run_dir) == before and not (run_dir / "sub").exists()


@contextlib.contextmanager
def read_only_folder(path: Path) -> Iterator[bool]:
    """``path`` made a folder this process cannot write (True): mode 555, or for root,
    whom modes do not stop, a read-only tmpfs where mount is allowed; else False."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield True
        path.chmod(0o755)
        return
    command = ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)]
    mounted = subprocess.run(command, capture_output=True, check=False).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def test_unusable_cache_dir_names_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Faults: --cache-dir a file; --cache-dir a read-only folder (and one to be made
    in it). One line naming --cache-dir and --no-cache, exit 2, no run folder."""
    corpus, new = tmp_path / "corpus.txt", tmp_path / "new"
    corpus.write_text(data.read_text()[:3000], "utf-8")
    (tmp_path / "file").write_text("not a folder")
    args = ["train", "--out", new, "--corpus", corpus, "--epochs", "1", *TINY]
    with read_only_folder(tmp_path / "ro") as read_only:
        folders = [tmp_path / "file"]
        if read_only:
            folders += [tmp_path / "ro", tmp_path / "ro" / "sub"]
        for folder in folders:
            code, _, err = main(capsys, *args, "--cache-dir", folder)
            one_line(code, err, 2, f"--cache-dir {folder}: ", "--no-cache")
            assert not new.exists()


def test_unreadable_config_json_refuses_resume(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Faults: config.json cut mid-object, replaced by a list, deleted. --resume is one
    line naming the file, exit 2, nothing changed (before, it resumed with the default
    run settings and wrote them over the run's)."""
    for i, damage in enumerate(("cut", "list", "delete")):
        run_dir = copy_of(trained, tmp_path, f"case{i}")
        config = run_dir / "config.json"
        if damage == "cut":
            config.write_bytes(config.read_bytes()[:100])
        elif damage == "list":
            config.write_text("[]")
        else:
            config.unlink()
        before = folder_digest(run_dir)
        code, _, err = main(capsys, "train", "--resume", run_dir, "--epochs", "3")
        one_line(code, err, 2, f"{config} cannot be read")
        assert folder_digest(run_dir) == before, damage
