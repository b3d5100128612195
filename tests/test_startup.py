"""A run's start-up: JAX's persistent compilation cache beside the token cache
(``rnn_jax.compile_cache``), the plan printed before the first step and the estimate
after the first record (``actions.Plan``), and the start-up in the ``done:`` line."""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rnn_jax import checkpoint, input_pipeline
from rnn_jax.actions import count, duration, plan_line
from rnn_jax.config import TrainConfig
from tests.import_effect import ROOT, last_words
from tests.test_cli import CACHE, TINY, leaves_digest

# ``rnn-jax ARGS`` as its own process (``cli.main()`` reading sys.argv, as the entry
# point does), printing the compilation cache's events JAX counted as one JSON line on
# stderr at the end: hits (loaded from disk) and misses (compiled, then written).
WITH_EVENTS = """
import collections, json, sys
import jax.monitoring
events = collections.Counter()
jax.monitoring.register_event_listener(lambda name, **kw: events.update([name]))
from rnn_jax import cli
sys.argv = ["rnn-jax", *sys.argv[1:]]
code = cli.main()
print(json.dumps({k.rsplit("/", 1)[1]: v for k, v in events.items()
                  if k.startswith("/jax/compilation_cache/cache_")}), file=sys.stderr)
sys.exit(code)
"""


def rnn_jax_events(*args: str, xdg: Path = CACHE) -> tuple[subprocess.CompletedProcess[str], dict]:
    """``rnn-jax ARGS`` in a fresh process: the process and its compilation cache events."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XDG_CACHE_HOME": str(xdg)}
    proc = subprocess.run(
        [sys.executable, "-c", WITH_EVENTS, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return proc, json.loads(proc.stderr.strip().splitlines()[-1])


def test_second_run_loads_its_programs_from_the_compilation_cache(tmp_path: Path) -> None:
    """The first run compiles and writes its programs (the train step ``bound``, the
    evaluation) to ``<cache>/xla``; a second run of the same shapes loads every one of
    them and writes none; both train bit for bit what a run without any cache trains,
    and ``--no-cache`` leaves no cache folder behind. ``eval`` of a run compiles through
    the run's cache folder too."""
    cache = tmp_path / "cache"
    args = ["--epochs", "2", *TINY]
    a, b, c = (str(tmp_path / name) for name in "abc")
    first, first_events = rnn_jax_events("train", "--out", a, "--cache-dir", str(cache), *args)
    entries = sorted(p.name for p in (cache / "xla").iterdir())
    programs = {name.split("-")[0] for name in entries}
    assert {"jit_bound", "jit_evaluate"} <= programs, entries
    assert first_events == {"cache_misses": len(entries)}, (first_events, entries)

    second, second_events = rnn_jax_events("train", "--out", b, "--cache-dir", str(cache), *args)
    assert sorted(p.name for p in (cache / "xla").iterdir()) == entries
    assert second_events == {"cache_hits": len(entries)}, (second_events, entries)

    xdg = tmp_path / "xdg"
    _, none_events = rnn_jax_events("train", "--out", c, "--no-cache", *args, xdg=xdg)
    assert none_events == {} and not (xdg / "rnn_jax").exists()  # (matplotlib's is there)

    runs = [checkpoint.restore(path) for path in (a, b, c)]
    digests = [leaves_digest(r.params) for r in runs]
    assert digests[0] == digests[1] == digests[2]
    assert_plan_and_estimate(first.stdout, epochs=2)
    for proc in (first, second):
        done = proc.stdout.strip().splitlines()[-1]
        assert re.search(r"; start-up [\d.]+ s to the first step \(imports [\d.]+ s, ", done), done

    _, eval_events = rnn_jax_events("eval", "--checkpoint", b, xdg=xdg)
    written = sorted(p.name for p in (cache / "xla").iterdir())
    assert eval_events.get("cache_misses") == len(written) - len(entries) > 0, eval_events


def assert_plan_and_estimate(stdout: str, epochs: int) -> None:
    """The plan's numbers are the budget's (``input_pipeline.total_steps``,
    ``steps_per_epoch``, B T tokens a step), printed before the first step; the estimate
    comes once, after the first record (the first epoch), for the steps left."""
    lines = stdout.splitlines()
    config = TrainConfig(max_tokens=3000, batch_size=4, num_steps=10, num_epochs=epochs)
    dataset = input_pipeline.load_dataset(config)
    K = input_pipeline.steps_per_epoch(config, dataset)
    total = input_pipeline.total_steps(config, dataset)
    assert total == epochs * K == epochs * 67
    assert lines[1] == f"plan: {total} steps ({epochs} epochs of {K} steps), {total * 40:,} tokens"
    estimates = [line for line in lines if " tokens/s: about " in line]
    assert len(estimates) == 1, lines
    assert estimates[0].endswith(f" for the {total - K} steps left"), estimates[0]


def test_plan_line_of_a_resumed_run_and_its_numbers() -> None:
    assert plan_line(3_150_000, 0, 31_500, 32 * 35) == (
        "plan: 3,150,000 steps (100 epochs of 31,500 steps), 3.5e9 tokens"
    )
    assert plan_line(3000, 1000, 8, 64) == (
        "plan: 2,000 steps more, to step 3,000 (375 epochs of 8 steps), 128,000 tokens"
    )
    assert plan_line(5, 0, 10, 1) == "plan: 5 steps (0.5 epochs of 10 steps), 5 tokens"
    assert [count(n) for n in (9_999_999, 10**7, 1_049_999_999)] == ["9,999,999", "1.0e7", "1.0e9"]
    assert [duration(s) for s in (0.42, 12.4, 250, 58_800)] == [
        "0.4 s",
        "12 s",
        "4 min 10 s",
        "16 h 20 min",
    ]


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"), reason="glibc")
def test_freed_blocks_are_reused_not_faulted_in_again() -> None:
    """A 40 MB block allocated and freed again and again, as XLA's CPU client does with a
    train step's temporaries: glibc alone maps it afresh every time (568 page faults
    each, with transparent huge pages), after ``import rnn_jax`` its heap keeps and
    reuses it (``rnn_jax._reuse_freed_memory``; the steps' figures are in
    docs/performance.md). Counted, not timed; one thread, so the count is exact."""
    program = (
        "import resource\n"
        "import numpy as np\n"
        "for i in range(10):\n"
        "    if i == 5: before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    block = np.ones(5_000_000)\n"
        "    del block\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    faults = {first: int(words) for first, words in last_words(program).items()}
    assert faults["alone"] >= 5 * 10, faults  # mapped afresh each of the last 5 times
    assert faults["rnn_jax"] <= 5, faults


THREAD_HEAP = """
import ctypes, resource, sys, threading
import numpy as np
import rnn_jax
if sys.argv[1] == "no pad":
    ctypes.CDLL(None).mallopt(-2, 0)  # M_TOP_PAD, glibc's default
faults = []
def work():
    tenant = np.ones(5_000_000)  # 40 MB in this thread's first heap
    for i in range(10):
        if i == 5:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = np.ones(3_750_000)  # 30 MB: no room beside the tenant, a heap of its own
        del block
    faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(faults[0])
"""


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"), reason="glibc")
def test_a_thread_heap_of_its_own_is_kept() -> None:
    """A thread (XLA runs a step on its own) allocates and frees a 30 MB block that does
    not fit beside a 40 MB one in its first 64 MB heap, as an LSTM's step did after an
    evaluation: glibc maps a heap for it each time and unmaps it when it is freed (682
    page faults a block here), unless a top pad keeps it (``M_TOP_PAD``, set by ``import
    rnn_jax``). Counted, not timed; the thread is alone in its heap, so the count is
    exact."""
    faults = {}
    for variant in ("rnn_jax", "no pad"):
        run = subprocess.run(
            [sys.executable, "-c", THREAD_HEAP, variant],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        faults[variant] = int(run.stdout.split()[-1])
    assert faults["no pad"] >= 100, faults  # the case exists: a fresh heap every time
    assert faults["rnn_jax"] <= 5, faults


# A command's way out (``rnn_jax.__main__.exit_without_finalizing``): an exit handler
# that writes a file, an idle worker of a thread pool (Orbax leaves one after a failed
# save: joined without being told to stop, it waits for ever), a non-daemon thread still
# working, a finalizer that would run in Python's finalization, unflushed output.
WAY_OUT = """
import atexit, concurrent.futures, sys, threading, time
from pathlib import Path
from rnn_jax.__main__ import exit_without_finalizing
folder = Path(sys.argv[1])
atexit.register(lambda: (folder / "atexit").write_text("ran"))
pool = concurrent.futures.ThreadPoolExecutor(1)
pool.submit(int).result()
worker = threading.Thread(target=lambda: (time.sleep(0.5), (folder / "thread").touch()))
worker.start()
class Finalized:
    def __del__(self):
        (folder / "finalized").touch()
kept = Finalized()
print("said", end="")
sys.stderr.write("warned")
exit_without_finalizing(3)
"""


def test_a_command_exits_as_python_would_less_its_finalization(tmp_path: Path) -> None:
    """Exit status, output, exit handlers and threads as Python's own exit has them; the
    finalization (a module's objects torn down one by one) is skipped. Against the same
    program ended by ``sys.exit``, which runs the finalizer too."""
    outcomes = {}
    for way in ("ours", "python"):
        folder = tmp_path / way
        folder.mkdir()
        program = (
            WAY_OUT.replace("exit_without_finalizing(3)", "sys.exit(3)")
            if way == "python"
            else WAY_OUT
        )
        proc = subprocess.run(
            [sys.executable, "-c", program, str(folder)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=False,
        )
        files = sorted(p.name for p in folder.iterdir())
        outcomes[way] = (proc.returncode, proc.stdout, proc.stderr, files)
    assert outcomes["python"] == (3, "said", "warned", ["atexit", "finalized", "thread"])
    assert outcomes["ours"] == (3, "said", "warned", ["atexit", "thread"])
