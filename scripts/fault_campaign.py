"""A seeded fault campaign against the ``rnn-jax`` command (issue 12, "trust nothing on disk").

    PYTHONPATH=. python scripts/fault_campaign.py --seed 0          # full: 731 s here
    PYTHONPATH=. python scripts/fault_campaign.py --quick --seed 0  # a subset: about 70 s
    PYTHONPATH=. python scripts/fault_campaign.py --only processes  # one category
    PYTHONPATH=. python scripts/fault_campaign.py --only readers    # about 2 min

(here: 2 shared cores, a tiny model; every trial is one or more real CLI processes.)

Six categories, each trial a fault and the outcome the CLI owes the user:

    signals     kill -9 / SIGINT / SIGTERM / SIGHUP at a random moment of a run (compiling,
                training, saving): the exit status is 137 / 128+signal (or 0 if it had
                finished); the folder then finishes with ``--resume`` (a checkpoint was
                written) or the same command (none was); the result is bitwise equal to an
                uninterrupted run, state and metric records
    corruption  one file of a finished run's latest checkpoint flipped, truncated, deleted,
                emptied or (JSON) replaced by garbage: exit 2 with one line naming the step,
                or exit 0 with exactly the perplexity (or resumed state) of the intact run;
                never a traceback; the previous step still restores, unchanged
    bad input   a table of argument lists: exit code, one line, the needle, nothing written
    disk full   RLIMIT_FSIZE at several sizes (and small tmpfs mounts where this machine
                allows): exit 1 with one line naming the last good step that restores (or
                exit 2 / 1 before any checkpoint, the folder restartable); no temporary
                file left; every finished checkpoint intact; the folder then finishes
    processes   two processes on localhost (``TwoProcesses``), at a random moment after
                the first checkpoint: SIGTERM, SIGINT or SIGHUP to one (both exit
                128+signal, one checkpoint at one step, nothing on stderr), kill -9 of one
                (process 0 hosts the coordinator), kill -9 of one while a save is in
                flight (the survivor exits 1 with one line naming the lost process and the
                last good step, no traceback); every finished checkpoint intact, the in-
                flight one never finished; the folder then resumes, alternately on two
                processes and on one (two devices), bitwise equal to an uninterrupted run
    readers     (full only, not ``--quick``) a run with ``--keep 1`` saving every 2, 3 or
                5 steps (the seed orders them), which deletes the step before at each
                save, sampled all along by a reader (one process, ``cli.main`` in a loop,
                from the first finished checkpoint until the run exits): the run exits 0,
                its final state, validation records and checkpoints as a run without a
                reader; at least 20 reads, each exit 0 or exit 2 with one line saying the
                checkpoint vanished (``VANISHED``); nothing else on the reader's stderr
                (no Orbax "Failed to read Metadata file" record, no asyncio "exception
                was never retrieved", no traceback)

Prints a markdown table (category, trials, passed, failed) and the failing cases; exits
1 if any failed. ``tests/test_fault_campaign.py`` runs ``--quick``.

Result (full, seed 0, 555 s): signals 8/8, corruption 105/105, bad input 21/21, disk
full 9/9 passed. Its first run, before the fixes it prompted, failed 5 corruption trials
(Orbax's log of a damaged ``_CHECKPOINT_METADATA``, orphaned read coroutines printed as
tracebacks); a SIGTERM landing after training killed the process with no report.
Processes (``--only processes``, 187 s, 2026-12-03): 16/16. Before
``parallel.coordinator_watch`` (481 s): 13/16, the 3 failures JAX's own fatal error
ending a survivor whose coordinator was killed while it waited inside a save; before the
thread-pool fix of ``rnn_jax/__init__.py``, one more, an abort of XLA's CPU thread pool
in a resume on two simulated devices (docs/faults.md, "Several processes").
Readers (``--only readers``, 125 s, 2026-12-03): 3/3, 1,926 reads (610, 386, 930), none
refused (an earlier run, 128 s: 3/3, 2,072 reads; with 30 epochs a trial, 169 s: 3/3,
2,528 reads, one of them exit 2 "holds no finished checkpoint"). The races it looks for
are rare (a few in 1,500 reads by hand), so one pass is no proof; a failure is.
All six (full, seed 0, 731 s, 2026-12-03): signals 8/8, corruption 101/101, bad input
21/21, disk full 9/9, processes 16/16, readers 3/3 (1,917 reads, none refused).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--max-tokens", "3000", "--num-hiddens", "16", "--batch-size", "4", "--num-steps", "10",
    "--sample-every", "0", "--no-progress", "--save-every", "1",
]  # fmt: skip
K = 67  # steps per epoch of TINY
KEYS = ("epoch", "step", "train_ppl", "val_ppl", "grad_norm")
SIGNALS = (signal.SIGKILL, signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# JAX's client's own fatal error, printed (C++, whatever the log level) the moment it
# loses the coordination service (process 0 killed): rnn-jax cannot replace it.
JAX_FATAL = re.compile(
    r"^(F\d{4} .* client\.h:\d+\] Terminating process because the JAX distributed service"
    r"|Additional GRPC error information from remote target coordination_service"
    r"|:UNKNOWN:Error received from peer)"
)
HOSTS = [*TINY, "--batch-size", "8"]  # two processes of 4 rows each
HOSTS_K = 33  # steps per epoch of HOSTS
HOSTS_FAULTS = ("signal", "kill", "kill during a save", "kill while a save waits")

# ``python -c BLOCK_SAVE MARKER N HOW train ...``: the CLI, whose N-th save stays in
# flight: once this process has written its part, before the processes agree it is
# complete, the marker file appears and, with HOW "stop", the whole process stops
# (SIGSTOP: a host that freezes mid-save, the others soon wait for it in a collective);
# with "hang", its part of the save never ends while it trains on (the others wait for
# it in the next save's barrier).
BLOCK_SAVE = """
import os, runpy, signal, sys, threading
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # as the CLI sets it, before JAX loads
from orbax.checkpoint._src.checkpointers import async_checkpointer
marker, nth, how = sys.argv.pop(1), int(sys.argv.pop(1)), sys.argv.pop(1)
commit, saves = async_checkpointer._background_wait_for_commit_futures, []
def blocked(*args, **kwargs):
    saves.append(1)
    if len(saves) == nth:
        open(marker, "w").close()
        if how == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
        threading.Event().wait()
    return commit(*args, **kwargs)
async_checkpointer._background_wait_for_commit_futures = blocked
sys.argv[0] = "rnn_jax"
runpy.run_module("rnn_jax", run_name="__main__", alter_sys=True)
"""

# ``python -c READER RUN STOP``: samples RUN's latest checkpoint in one process (so it
# reads often: compiled once), printing each exit status, until the file STOP appears.
READER = """
import sys
from pathlib import Path
from rnn_jax import cli
run, stop = sys.argv[1], Path(sys.argv[2])
print("ready", flush=True)
while not stop.exists():
    print("exit", cli.main(["sample", "--checkpoint", run, "--num-chars", "5"]), flush=True)
"""
READERS_EPOCHS = 24  # a run of 30-60 s here (with its reader), saving every few steps
READERS_CADENCES = (2, 3, 5)  # --save-every-steps, drawn by the seed
READERS_MIN_READS = 20
STREAMS = ("train.out", "train.err", "reads.out", "reads.err")  # a trial's output files
# The lines a read may end with (exit 2) when the checkpoint it picked vanished under it
# (rnn_jax/checkpoint.py): every other stderr line of the reader is a failure.
VANISHED = re.compile(
    r"^rnn-jax: error: (?:"
    r"(?P<none>\S+ holds no finished checkpoint)"
    r"|(?P<changing>the checkpoints of \S+ kept changing while being read)"
    r"|(?P<listing>cannot list the checkpoints of \S+: .*)"
    r"|(?P<deleted>checkpoint step \d+ of \S+ was deleted while being read)"
    r")$"
)


@dataclass
class Trial:
    category: str
    name: str
    problem: str | None = None  # None: passed


class TwoProcesses:
    """``rnn-jax train ARGS`` as processes 0 and 1 of one run on localhost, one CPU device
    each, their output in ``folder/{0,1}.{out,err}`` (readable while they run).

    The coordinator's port stays reserved while the pair lives: it is bound here with
    SO_REUSEPORT, which the coordination service's gRPC server shares, so no other
    program (another test's pair) is handed it meanwhile. ``wrap`` runs a process under
    a ``python -c`` wrapper (``BLOCK_SAVE`` and its arguments).
    """

    def __init__(
        self,
        folder: Path,
        args: list[str],
        env: dict[str, str],
        wrap: dict[int, list[str]] | None = None,
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = socket.socket()
        self.port.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.port.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{self.port.getsockname()[1]}"
        env = {**env, "JAX_NUM_CPU_DEVICES": "1"}
        self.procs: list[subprocess.Popen[bytes]] = []
        for i in range(2):
            hosts = ["--coordinator", address, "--num-processes", "2", "--process-id", str(i)]
            command = [sys.executable, "-m", "rnn_jax", "train", *args, *hosts]
            if wrap and i in wrap:
                command = [sys.executable, "-c", *wrap[i], *command[3:]]
            with open(self.path(i, "out"), "wb") as out, open(self.path(i, "err"), "wb") as err:
                self.procs.append(subprocess.Popen(command, stdout=out, stderr=err, env=env))
        self.ended: list[float | None] = [None, None]

    def path(self, i: int, stream: str) -> Path:
        return self.folder / f"{i}.{stream}"

    def exited(self) -> bool:
        """Whether either process has exited."""
        return any(proc.poll() is not None for proc in self.procs)

    def text(self, i: int, stream: str) -> str:
        return self.path(i, stream).read_text(errors="replace")

    def wait(self, timeout: float) -> list[int | None]:
        """Wait until both exited (None for one still running at the deadline); notes
        when each did (``ended``, ``time.monotonic()``, within 10 ms)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, proc in enumerate(self.procs):
                if self.ended[i] is None and proc.poll() is not None:
                    self.ended[i] = time.monotonic()
            if all(t is not None for t in self.ended):
                break
            time.sleep(0.01)
        return [proc.poll() for proc in self.procs]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.port.close()


def wait_until(condition: object, timeout: float, what: str) -> None:
    """Poll ``condition()`` every 10 ms until it is true; ``TimeoutError`` naming
    ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout:.0f} s")
        time.sleep(0.01)


class Campaign:
    def __init__(self, work: Path, seed: int, quick: bool) -> None:
        self.work, self.quick = work, quick
        self.rng = random.Random(seed)
        self.trials: list[Trial] = []
        cache = os.environ.get("XDG_CACHE_HOME") or str(work / "cache")
        self.env = {
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            "XDG_CACHE_HOME": cache,
            "PYTHONPATH": str(ROOT),
        }
        self.env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the CLI's own choice of JAX's C++ log
        self.count = 0
        self.references: dict[int, Path] = {}  # epochs -> an uninterrupted run on 2 devices
        self.seconds: dict[str, list[float]] = {}  # from a fault to a process's exit
        self.jax_fatal = 0  # survivors that printed JAX's fatal error before their line
        self.reads: list[int] = []  # readers: reads per trial
        self.refusals: dict[str, int] = {}  # readers: exit-2 lines by kind

    # ------------------------------------------------------------------ helpers

    def path(self, name: str) -> Path:
        self.count += 1
        return self.work / f"{self.count:03d}-{name}"

    def command(self, args: list[str], max_file_bytes: int | None = None) -> list[str]:
        cli = [sys.executable, "-m", "rnn_jax", *map(str, args)]
        if max_file_bytes is None:
            return cli
        limit = (
            "import os, resource, signal, sys; "
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({max_file_bytes}, {max_file_bytes})); "
            "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
        )
        return [sys.executable, "-c", limit, *cli[1:]]

    def cli(
        self,
        *args: object,
        max_file_bytes: int | None = None,
        timeout: float = 300,
        devices: int = 1,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(list(map(str, args)), max_file_bytes),
            capture_output=True,
            text=True,
            env={**self.env, "JAX_NUM_CPU_DEVICES": str(devices)},
            timeout=timeout,
            check=False,
        )

    def record(self, category: str, name: str, problem: str | None) -> None:
        self.trials.append(Trial(category, name, problem))
        mark = "ok  " if problem is None else "FAIL"
        print(f"  {mark} {category}: {name}" + (f": {problem}" if problem else ""), flush=True)

    # ------------------------------------------------------------------ checks

    @staticmethod
    def error_line(proc: subprocess.CompletedProcess[str], code: int) -> tuple[str, str | None]:
        """(the error line, None) when stderr is one ``rnn-jax: error:`` line and the exit
        status is ``code``; else ("", what is wrong)."""
        if "Traceback" in proc.stderr:
            return "", f"traceback: {_tail(proc.stderr)}"
        if proc.returncode != code:
            return "", f"exit {proc.returncode}, expected {code}: {_tail(proc.stderr)}"
        lines = proc.stderr.strip().splitlines()
        if len(lines) != 1 or not lines[0].startswith("rnn-jax: "):
            return "", f"{len(lines)} stderr lines: {_tail(proc.stderr)}"
        return lines[0], None

    def state_digest(self, run_dir: Path, step: int | None = None) -> list[str]:
        from rnn_jax import checkpoint

        restored = checkpoint.restore(run_dir, step=step, for_training=True)
        return _leaves_digest(restored.state)

    @staticmethod
    def records(run_dir: Path) -> list[dict[str, object]]:
        from rnn_jax import report

        return [{k: r.get(k) for k in KEYS} for r in report.read_jsonl(run_dir / "metrics.jsonl")]

    def same_as(
        self,
        run_dir: Path,
        reference: Path,
        records: Callable[[Path], list] | None = None,
        than: str = "the uninterrupted run",
    ) -> str | None:
        """None if ``run_dir`` ends at ``reference``'s step with its state and its
        ``records`` (default: every metric record), else what differs (``than`` names the
        reference)."""
        from rnn_jax import checkpoint

        records = records or self.records
        try:
            if checkpoint.restore(run_dir).step != checkpoint.restore(reference).step:
                return f"ends at another step than {than}"
            if self.state_digest(run_dir) != self.state_digest(reference):
                return f"train state differs from {than}"
            if records(run_dir) != records(reference):
                return f"metric records differ from {than}"
        except Exception as err:  # a campaign reports, it does not stop
            return f"{type(err).__name__}: {_tail(str(err))}"
        return None

    def train(self, run_dir: Path, args: list[str]) -> Path:
        proc = self.cli("train", "--out", run_dir, *args)
        if proc.returncode != 0:
            raise RuntimeError(f"baseline run failed: {proc.stderr}")
        return run_dir

    # ------------------------------------------------------------------ signals

    def signals(self, trials: int) -> None:
        args = [*TINY, "--epochs", "4", "--num-hiddens", "32"]
        reference = self.train(self.path("signals-reference"), args)
        first = self.rng.randrange(len(SIGNALS))
        for i in range(trials):
            signum = SIGNALS[(first + i) % len(SIGNALS)]  # each in turn, at random moments
            delay = round(self.rng.uniform(0.0, 4.0), 2)
            name = f"{signal.Signals(signum).name} {delay:.2f} s after the lock is claimed"
            try:
                problem = self._signal_trial(args, reference, signum, delay)
            except Exception as err:
                problem = f"{type(err).__name__}: {_tail(str(err))}"
            self.record("signals", name, problem)

    def _signal_trial(
        self, args: list[str], reference: Path, signum: int, delay: float
    ) -> str | None:
        from rnn_jax import checkpoint

        run_dir = self.path(f"signal-{signum}")
        command = ["train", "--out", str(run_dir), *args]
        child = subprocess.Popen(
            self.command(command),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        lock = run_dir / ".lock"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if lock.exists() and "pid" in lock.read_text():
                break
            time.sleep(0.005)
        time.sleep(delay)
        if child.poll() is None:
            child.send_signal(signum)
        out, err = child.communicate(timeout=300)
        code = child.returncode
        if "Traceback" in err:
            return f"traceback: {_tail(err)}"
        expected = {-signal.SIGKILL} if signum == signal.SIGKILL else {128 + signum}
        if code not in expected | {0}:
            return f"exit {code}, expected {sorted(expected)} or 0: {_tail(err)}"
        during = code == 128 + signum and "before training started" not in err
        if during and f"--resume {run_dir}" not in out:
            return f"exit {code} without the resume hint: {_tail(out)}"
        if code == 0 or checkpoint.has_checkpoints(run_dir):
            follow = ["train", "--resume", str(run_dir), "--no-progress"]
        else:
            follow = command  # nothing saved: the same command restarts (or starts) it
        dead = follow is command and (run_dir / "config.json").exists()  # run files left
        proc = self.cli(*follow)
        if proc.returncode != 0:
            what = " ".join(follow[:2])
            return f"{what} after exit {code}: exit {proc.returncode}: {_tail(proc.stderr)}"
        if dead and "restarting" not in proc.stdout:
            return "the restart of the dead folder did not say so"
        return self.same_as(run_dir, reference)

    # ------------------------------------------------------------------ corruption

    def corruption(self, limit: int | None) -> None:
        from rnn_jax import checkpoint

        base = self.train(self.path("corruption-base"), [*TINY, "--epochs", "2"])
        longer = self.train(self.path("corruption-reference"), [*TINY, "--epochs", "3"])
        ppl = self._perplexity(self.cli("eval", "--checkpoint", base))
        earlier = self.state_digest(base, K)
        step_dir = checkpoint.checkpoint_dir(base) / str(2 * K)
        files = sorted(p.relative_to(step_dir) for p in step_dir.rglob("*") if p.is_file())
        cases = []
        for rel in files:
            for kind in ("flip", "truncate", "delete", "empty"):
                cases.append((kind, rel))
            if (step_dir / rel).read_bytes()[:1] == b"{":
                cases.append(("garbage", rel))
        if limit is not None:  # one kind each, on files a restore reads
            read = [c for c in cases if not _unread(c[1])]
            kinds = self.rng.sample(sorted({kind for kind, _ in read}), limit)
            cases = [self.rng.choice([c for c in read if c[0] == kind]) for kind in kinds]
        for kind, rel in cases:
            name = f"{kind} {rel}"
            try:
                problem = self._corruption_trial(base, longer, kind, rel, ppl, earlier)
            except Exception as err:
                problem = f"{type(err).__name__}: {_tail(str(err))}"
            self.record("corruption", name, problem)

    @staticmethod
    def _perplexity(proc: subprocess.CompletedProcess[str]) -> str:
        found = re.search(r"perplexity (\S+)", proc.stdout)
        if proc.returncode != 0 or not found:
            raise RuntimeError(f"eval failed: {proc.stderr}")
        return found.group(1)

    def _corruption_trial(
        self, base: Path, longer: Path, kind: str, rel: Path, ppl: str, earlier: list[str]
    ) -> str | None:
        run_dir = self.path(f"corrupt-{kind}")
        shutil.copytree(base, run_dir)
        path = run_dir / "checkpoints" / str(2 * K) / rel
        raw = path.read_bytes()
        if kind == "flip" and raw:
            at = self.rng.randrange(len(raw))
            changed = bytearray(raw)
            changed[at] ^= 1 << self.rng.randrange(8)
            path.write_bytes(bytes(changed))
        elif kind == "truncate":
            path.write_bytes(raw[: self.rng.randrange(len(raw))] if raw else b"")
        elif kind == "delete":
            path.unlink()
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "garbage":
            path.write_text('{"not": json at all')
        resumes = rel.parts[0] == "train"  # readers restore params and meta only
        if resumes:
            proc = self.cli("train", "--resume", run_dir, "--epochs", "3", "--no-progress")
        else:
            proc = self.cli("eval", "--checkpoint", run_dir)
        if proc.returncode == 0:  # the fault touched nothing that is read: same answer
            if "Traceback" in proc.stderr:
                return f"traceback: {_tail(proc.stderr)}"
            if resumes:
                problem = self.same_as(run_dir, longer)
                if problem:
                    return f"exit 0 but {problem}"
            elif self._perplexity(proc) != ppl:
                return f"exit 0 with perplexity {self._perplexity(proc)}, intact {ppl}"
        else:
            line, problem = self.error_line(proc, 2)
            if problem:
                return problem
            if "step 134" not in line:
                return f"the error does not name step 134: {line}"
        if self.state_digest(run_dir, K) != earlier:
            return "step 67 no longer restores to what it held"
        return None

    # ------------------------------------------------------------------ bad input

    def bad_inputs(self, limit: int | None) -> None:
        base = self.train(self.path("input-base"), [*TINY, "--epochs", "1"])
        dead = self.path("dead")
        (dead / "checkpoints").mkdir(parents=True)
        (dead / "config.json").write_text("{}")
        fifo = self.path("fifo")
        os.mkfifo(fifo)
        new = self.work / "never-created"
        sample = ["sample", "--checkpoint", base]
        table: list[tuple[list[object], int, str]] = [
            (["train", "--out", new, "--l", "0.5"], 2, "unrecognized arguments"),
            (["train", "--out", new, "--epochs"], 2, "expected one argument"),
            (["train", "--out", new, "--seed", "99999999999999999999"], 2, "seed"),
            (["train", "--out", new, *TINY, "--num-hiddens", "100000000"], 2, "GiB"),
            (["train", "--out", new, *TINY, "--corpus", fifo], 2, "not a regular file"),
            (["train", "--out", new, *TINY, "--corpus", "/dev/zero"], 2, "not a regular file"),
            (["train", "--out", "", *TINY], 2, "--out must name a folder"),
            (["train", "--out", new, *TINY, "--lr", "nan"], 2, "lr"),
            (["train", "--out", new, *TINY, "--epochs", "-1"], 2, "num_epochs"),
            (["train", "--out", base, *TINY], 2, "already holds a run"),
            (["train", "--resume", dead], 2, "--out"),
            (["train", "--resume", base, "--step", "5"], 2, "no checkpoint at step 5"),
            (["train", "--resume", base, "--num-hiddens", "32"], 2, "--num-hiddens 32 differs"),
            (["train", "--step", "5", "--out", new], 2, "--step goes with --resume"),
            ([*sample, "--strategy", "greedy", "--top-k", "5"], 2, "--top-k does not apply"),
            ([*sample, "--strategy", "temperature", "--temperature", "nan"], 2, "--temperature"),
            ([*sample, "--strategy", "temperature", "--temperature", "inf"], 2, "--temperature"),
            ([*sample, "--strategy", "temperature", "--temperature", "0"], 2, "--temperature"),
            ([*sample, "--seed", "-1"], 2, "--seed"),
            (["eval", "--checkpoint", base, "--step", "best", "--eval-tokens", "1"], 2, "tokens"),
            (["info"], 2, "RUN_DIR"),
        ]
        if limit is not None:
            table = self.rng.sample(table, min(limit, len(table)))
        before = _digest(base)
        for args, code, needle in table:
            name = " ".join(str(a) for a in args).replace(str(self.work) + "/", "")
            name = name.replace(" ".join(TINY), "TINY")
            proc = self.cli(*args)
            line, problem = self.error_line(proc, code)
            if problem is None and needle not in line:
                problem = f"{needle!r} not in {line!r}"
            if problem is None and new.exists():
                problem = f"{new} was created"
                shutil.rmtree(new, ignore_errors=True)
            if problem is None and _digest(base) != before:
                problem = "the run folder changed"
            self.record("bad input", name, problem)

    # ------------------------------------------------------------------ disk full

    def disk_full(self, sizes: list[int], tmpfs_sizes: list[str]) -> None:
        args = [*TINY, "--epochs", "3"]
        reference = self.train(self.path("disk-reference"), args)
        for size in sizes:
            run_dir = self.path(f"fsize-{size}")
            try:
                problem = self._disk_trial(run_dir, args, reference, max_file_bytes=size)
            except Exception as err:
                problem = f"{type(err).__name__}: {_tail(str(err))}"
            self.record("disk full", f"RLIMIT_FSIZE {size:,} bytes", problem)
        for size in tmpfs_sizes:
            mount = self.path(f"tmpfs-{size}")
            mount.mkdir()
            tmpfs = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)]
            if subprocess.run(tmpfs, capture_output=True, check=False).returncode != 0:
                print(f"  (no tmpfs {size}: mount refused here)")
                continue
            try:
                problem = self._disk_trial(mount / "run", args, reference, remount=mount)
            except Exception as err:
                problem = f"{type(err).__name__}: {_tail(str(err))}"
            finally:
                subprocess.run(["umount", "-l", str(mount)], check=False)
            self.record("disk full", f"tmpfs of {size}", problem)

    def _disk_trial(
        self,
        run_dir: Path,
        args: list[str],
        reference: Path,
        max_file_bytes: int | None = None,
        remount: Path | None = None,
    ) -> str | None:
        from rnn_jax import checkpoint

        command = ["train", "--out", str(run_dir), *args]
        proc = self.cli(*command, max_file_bytes=max_file_bytes)
        if proc.returncode == 0:
            return self.same_as(run_dir, reference)  # everything fitted
        line, problem = self.error_line(proc, proc.returncode)
        if problem:
            return problem
        if proc.returncode == 2:
            if run_dir.exists() and checkpoint.has_checkpoints(run_dir):
                return f"exit 2 but checkpoints were written: {line}"
        elif proc.returncode != 1:
            return f"exit {proc.returncode}: {line}"
        steps = checkpoint.finished_steps(run_dir) if run_dir.exists() else []
        named = re.search(r"(?:last|latest) good (?:checkpoint|one) is step (\d+)", line)
        if steps:
            if not named or int(named.group(1)) != steps[-1]:
                return f"the line does not name the last good step {steps[-1]}: {line}"
            if checkpoint.intact_steps(run_dir) != steps:
                return f"a finished checkpoint is damaged: {checkpoint.intact_steps(run_dir)}"
        elif named:
            return f"names step {named.group(1)} but none is left: {line}"
        if run_dir.exists():
            left = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if "tmp" in p.name]
            if left:
                return f"temporary files left: {left}"
        if remount is not None:
            subprocess.run(["mount", "-o", "remount,size=8m", str(remount)], check=True)
        follow = ["train", "--resume", str(run_dir), "--no-progress"] if steps else command
        proc = self.cli(*follow)
        if proc.returncode != 0:
            what = " ".join(follow[:2])
            return f"{what} afterwards: exit {proc.returncode}: {_tail(proc.stderr)}"
        return self.same_as(run_dir, reference)

    # ------------------------------------------------------------------ several processes

    def processes(self, trials: int, faults: tuple[str, ...], targets: tuple[int, ...]) -> None:
        """``trials`` two-process runs, each with one of ``faults`` in turn (a signal, a
        kill, a kill during a save) to a process drawn from ``targets``; the resumes
        alternate between two processes and one."""
        first = self.rng.randrange(len(faults))
        for i in range(trials):
            fault, target = faults[(first + i) % len(faults)], self.rng.choice(targets)
            signum = self.rng.choice(STOPS) if fault == "signal" else signal.SIGKILL
            delay, nth = round(self.rng.uniform(0.0, 1.0), 2), self.rng.randrange(2, 4)
            if "save" in fault:
                name = f"{fault.replace('kill', 'kill -9')}: process {target}, save {nth}"
            else:
                what = signal.Signals(signum).name if fault == "signal" else "kill -9"
                name = f"{what} to process {target} {delay:.2f} s after the first checkpoint"
            on = "two processes" if i % 2 == 0 else "one process"
            try:
                problem = self._hosts_trial(fault, target, signum, delay, nth, on)
            except Exception as err:
                problem = f"{type(err).__name__}: {_tail(str(err))}"
            self.record("processes", f"{name}, resumed on {on}", problem)

    def _hosts_trial(
        self, fault: str, target: int, signum: int, delay: float, nth: int, on: str
    ) -> str | None:
        from rnn_jax import checkpoint

        run_dir = self.path(f"hosts-{fault.replace(' ', '-')}")
        marker = run_dir.with_name(run_dir.name + ".saving")
        how = "hang" if fault == "kill while a save waits" else "stop"
        wrap = {target: [BLOCK_SAVE, str(marker), str(nth), how]} if "save" in fault else None
        args = ["--out", str(run_dir), *HOSTS, "--epochs", "1000", "--distributed-timeout", "10"]
        pair = TwoProcesses(run_dir.with_name(run_dir.name + ".output"), args, self.env, wrap)
        first = checkpoint.checkpoint_dir(run_dir) / str(HOSTS_K)
        metrics = run_dir / "metrics.jsonl"

        def ready() -> bool:
            if how == "hang" and wrap:  # process 0 wrote the next record: both wait to save
                return metrics.exists() and len(metrics.read_text().splitlines()) > nth
            return (marker if wrap else first).exists()

        try:
            wait_until(lambda: ready() or pair.exited(), 300, "the moment of the fault")
            if how == "hang" or not wrap:
                time.sleep(delay)  # the random moment; every outcome is checked below
            sent = time.monotonic()
            pair.procs[target].send_signal(signum)
            codes = pair.wait(timeout=120)
        finally:
            pair.close()
        if None in codes:
            return f"still running 120 s after the fault: {_tail(pair.text(0, 'err'))}"
        steps = checkpoint.finished_steps(run_dir)
        if fault == "signal":
            problem, stop = self._stopped_together(pair, codes, signum)
            self.seconds.setdefault(fault, []).extend(t - sent for t in pair.ended if t)
        else:
            problem, stop = self._survivor(pair, codes, 1 - target, steps), steps[-1]
            self.seconds.setdefault(fault, []).append(pair.ended[1 - target] - sent)
            if wrap and nth * HOSTS_K in steps:
                problem = problem or f"the save in flight (step {nth * HOSTS_K}) was finished"
        if problem:
            return problem
        if checkpoint.intact_steps(run_dir) != steps:
            return f"a finished checkpoint is damaged: {checkpoint.intact_steps(run_dir)}"
        return self._resume_hosts(run_dir, stop // HOSTS_K + 1, on)

    @staticmethod
    def _stopped_together(
        pair: TwoProcesses, codes: list[int | None], signum: int
    ) -> tuple[str | None, int]:
        """Both exited 128 + signal, silent on stderr, process 0 naming the step saved."""
        if codes != [128 + signum] * 2:
            return f"exit {codes}, expected {128 + signum} twice: {_tail(pair.text(0, 'err'))}", 0
        for i in range(2):
            if pair.text(i, "err").strip():
                return f"process {i} wrote to stderr: {_tail(pair.text(i, 'err'))}", 0
        name = signal.Signals(signum).name
        saved = re.search(rf"^{name}: saved step (\d+) ", pair.text(0, "out"), re.MULTILINE)
        if not saved:
            return f"process 0 did not say which step it saved: {_tail(pair.text(0, 'out'))}", 0
        return None, int(saved.group(1))

    def _survivor(
        self, pair: TwoProcesses, codes: list[int | None], survivor: int, steps: list[int]
    ) -> str | None:
        """The survivor exited 1 with one line naming the lost process and the last good
        step, no traceback; nothing else on stderr but JAX's fatal error (``JAX_FATAL``)
        when the coordinator was lost (counted in ``jax_fatal``)."""
        err, lost = pair.text(survivor, "err"), 1 - survivor
        if codes[survivor] == -signal.SIGABRT and "Terminating process" in err:
            return f"JAX's client ended process {survivor} (SIGABRT) before rnn-jax's line"
        if codes[survivor] != 1 or "Traceback" in err:
            return f"process {survivor} exit {codes[survivor]}: {_tail(err)}"
        lines = [line for line in err.strip().splitlines() if not JAX_FATAL.match(line)]
        if len(lines) < len(err.strip().splitlines()):
            self.jax_fatal += 1
        expected = f"rnn-jax: error: process {lost} of 2"
        if len(lines) != 1 or not lines[0].startswith(expected) or "unreachable" not in err:
            return f"{len(lines)} stderr lines, not one naming process {lost}: {_tail(err)}"
        if f"the last good checkpoint is step {steps[-1]};" not in lines[0]:
            return f"the line does not name step {steps[-1]}: {lines[0]}"
        return None

    def _resume_hosts(self, run_dir: Path, epochs: int, on: str) -> str | None:
        """Resume ``run_dir`` to ``epochs`` on two processes or on one (two devices), and
        compare with the uninterrupted run of as many epochs."""
        follow = ["--resume", str(run_dir), "--epochs", str(epochs), "--no-progress"]
        if on == "two processes":
            pair = TwoProcesses(self.path("hosts-resume"), follow, self.env)
            try:
                codes = pair.wait(timeout=300)
            finally:
                pair.close()
            if codes != [0, 0]:
                return f"the resume on two processes exited {codes}: {_tail(pair.text(0, 'err'))}"
        else:
            proc = self.cli("train", *follow, devices=2)
            if proc.returncode != 0:
                kept = run_dir.with_name(run_dir.name + ".resume.err")
                kept.write_text(proc.stderr)
                return f"the resume on one process exited {proc.returncode} (stderr: {kept})"
        return self.same_as(run_dir, self.reference(epochs))

    def reference(self, epochs: int) -> Path:
        """The uninterrupted run of ``epochs`` on one process with two devices, which two
        processes of one device each match bit for bit (the sum over two devices' rows is
        one addition, in either order)."""
        if epochs not in self.references:
            run_dir = self.path(f"hosts-reference-{epochs}")
            proc = self.cli("train", "--out", run_dir, *HOSTS, "--epochs", epochs, devices=2)
            if proc.returncode != 0:
                raise RuntimeError(f"reference run failed: {proc.stderr}")
            self.references[epochs] = run_dir
        return self.references[epochs]

    # ------------------------------------------------------------------ readers

    def readers(self, trials: int) -> None:
        """``trials`` runs with ``--keep 1`` saving every few steps (the cadence drawn),
        each sampled all along by a reader: the run ends as one without a reader, every
        read exits 0 or 2 with one line saying the checkpoint vanished, nothing else."""
        args = [*TINY, "--epochs", str(READERS_EPOCHS), "--keep", "1"]
        reference = self.train(self.path("readers-reference"), args)
        cadences = self.rng.sample(READERS_CADENCES, min(trials, len(READERS_CADENCES)))
        for i in range(trials):
            every = cadences[i % len(cadences)]
            name = f"a reader sampling while a run saves every {every} steps, --keep 1"
            try:
                problem = self._reader_trial([*args, "--save-every-steps", str(every)], reference)
            except Exception as err:
                problem = f"{type(err).__name__}: {_tail(str(err))}"
            self.record("readers", name, problem)

    def _reader_trial(self, args: list[str], reference: Path) -> str | None:
        from rnn_jax import checkpoint

        run_dir = self.path("readers-run")
        out = run_dir.with_name(run_dir.name + ".output")
        out.mkdir()
        stop = out / "stop"
        reader: subprocess.Popen[bytes] | None = None
        with contextlib.ExitStack() as files:
            stream = {name: files.enter_context(open(out / name, "wb")) for name in STREAMS}
            train = subprocess.Popen(
                self.command(["train", "--out", str(run_dir), *args]),
                stdout=stream["train.out"],
                stderr=stream["train.err"],
                env=self.env,
            )
            try:
                wait_until(
                    lambda: checkpoint.finished_steps(run_dir) or train.poll() is not None,
                    120,
                    "first finished checkpoint",
                )
                if train.poll() is not None:
                    return f"the run exited {train.returncode} before its first checkpoint"
                reader = subprocess.Popen(
                    [sys.executable, "-c", READER, str(run_dir), str(stop)],
                    stdout=stream["reads.out"],
                    stderr=stream["reads.err"],
                    env=self.env,
                )
                train.wait(timeout=300)
                stop.touch()
                reader.wait(timeout=120)
            finally:
                for proc in (train, reader):
                    if proc is not None and proc.poll() is None:
                        proc.kill()
                        proc.wait()
        err = (out / "train.err").read_text(errors="replace")
        if train.returncode != 0:
            return f"the run exited {train.returncode}: {_tail(err)}"
        reads = (out / "reads.out").read_text(errors="replace").splitlines()
        errors = (out / "reads.err").read_text(errors="replace")
        for needle in ("never retrieved", "Traceback", "ERROR:"):
            if needle in errors:
                return f"{needle!r} on the reader's stderr: {_tail(errors)}"
        assert reader is not None
        if reader.returncode != 0:
            return f"the reader exited {reader.returncode}: {_tail(errors)}"
        if reads[:1] != ["ready"]:
            return f"the reader did not start: {_tail(errors)}"
        codes = [int(m.group(1)) for m in map(re.compile(r"^exit (-?\d+)$").match, reads) if m]
        self.reads.append(len(codes))
        if len(codes) < READERS_MIN_READS:
            return f"{len(codes)} reads, fewer than {READERS_MIN_READS}"
        if not set(codes) <= {0, 2}:
            return f"read exit statuses {sorted(set(codes))}, not only 0 and 2"
        lines = errors.strip().splitlines()
        for line in lines:
            vanished = VANISHED.match(line)
            if not vanished:
                return f"a stderr line of the reader not about a vanished checkpoint: {line}"
            kind = next(k for k, v in vanished.groupdict().items() if v)
            self.refusals[kind] = self.refusals.get(kind, 0) + 1
        if len(lines) != codes.count(2):
            return f"{len(lines)} stderr lines for {codes.count(2)} reads that exited 2"
        # validation records only: each save closes a record of the steps since the last
        different = self.same_as(run_dir, reference, self.validations, "the run without a reader")
        if different:
            return different
        if checkpoint.intact_steps(run_dir) != checkpoint.finished_steps(run_dir):
            return f"a finished checkpoint is damaged: {checkpoint.intact_steps(run_dir)}"
        return None

    def validations(self, run_dir: Path) -> list[tuple[object, object]]:
        """(step, validation perplexity) of the records that have one: the end of each
        epoch, whatever the save cadence (whose records' training perplexity is over the
        steps since the one before)."""
        return [
            (r["step"], r["val_ppl"]) for r in self.records(run_dir) if r["val_ppl"] is not None
        ]

    # ------------------------------------------------------------------ report

    def table(self) -> str:
        categories = list(dict.fromkeys(t.category for t in self.trials))
        lines = ["| category | trials | passed | failed |", "|---|---:|---:|---:|"]
        for category in categories:
            mine = [t for t in self.trials if t.category == category]
            failed = sum(t.problem is not None for t in mine)
            lines.append(f"| {category} | {len(mine)} | {len(mine) - failed} | {failed} |")
        for fault, seconds in self.seconds.items():
            if seconds:
                lines.append(
                    f"\n{fault}: from the fault to a process's exit {min(seconds):.2f}-"
                    f"{max(seconds):.2f} s (median {sorted(seconds)[len(seconds) // 2]:.2f} s, "
                    f"{len(seconds)} exits)"
                )
        if self.jax_fatal:
            lines.append(f"\n{self.jax_fatal} survivor(s) printed JAX's fatal error too")
        if self.reads:
            refused = ", ".join(f"{n} {k}" for k, n in sorted(self.refusals.items())) or "none"
            lines.append(
                f"\nreaders: {sum(self.reads)} reads ({', '.join(map(str, self.reads))} a "
                f"trial); exit 2 with one line, by kind: {refused}"
            )
        failures = [t for t in self.trials if t.problem is not None]
        if failures:
            lines += ["", "Failing cases:", ""]
            lines += [f"- {t.category}: {t.name}: {t.problem}" for t in failures]
        return "\n".join(lines)


def _unread(rel: Path) -> bool:
    """Files Orbax writes but a restore does not read: the commit markers."""
    return rel.name == "commit_success.txt"


def _tail(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else "..." + text[-limit:]


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.name != ".lock"):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _leaves_digest(tree: object) -> list[str]:
    import jax
    import numpy as np

    def data(leaf: jax.Array) -> jax.Array:
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key_data(leaf)
        return leaf

    return [
        hashlib.sha256(np.asarray(data(leaf)).tobytes()).hexdigest()
        for leaf in jax.tree.leaves(tree)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small subset (about 70 s)")
    parser.add_argument("--seed", type=int, default=0, help="picks moments, signals, bytes")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument(
        "--only",
        choices=("signals", "corruption", "bad input", "disk full", "processes", "readers"),
        help="one category",
    )
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="rnn_jax-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)  # Orbax's read-only notes
    campaign = Campaign(work, args.seed, args.quick)
    started = time.monotonic()
    # --quick kills process 1 only; tests/test_multihost.py kills the coordinator.
    quick = {
        "signals": lambda: campaign.signals(1),
        "corruption": lambda: campaign.corruption(limit=2),
        "bad input": lambda: campaign.bad_inputs(limit=2),
        "disk full": lambda: campaign.disk_full([30_000], []),
        "processes": lambda: campaign.processes(2, ("signal", "kill during a save"), (1,)),
    }
    full = {
        "signals": lambda: campaign.signals(8),
        "corruption": lambda: campaign.corruption(limit=None),
        "bad input": lambda: campaign.bad_inputs(limit=None),
        "disk full": lambda: campaign.disk_full(
            [0, 100, 2_000, 8_000, 30_000, 40_000], ["100k", "150k", "220k"]
        ),
        "processes": lambda: campaign.processes(16, HOSTS_FAULTS, (0, 1)),
        "readers": lambda: campaign.readers(3),
    }
    try:
        for category, run in (quick if args.quick else full).items():
            if args.only in (None, category):
                run()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    mode = "quick" if args.quick else "full"
    print(f"\nfault campaign ({mode}, seed {args.seed}, {time.monotonic() - started:.0f} s)\n")
    print(campaign.table())
    return 1 if any(t.problem for t in campaign.trials) else 0


if __name__ == "__main__":
    sys.exit(main())
