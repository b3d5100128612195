"""Sampling and evaluation in chunks, ``sample --stream`` and ``--prefix-file``, and
signals during ``sample``, ``eval`` and ``info``.

The chunked paths are held to their one-long-scan references (``sample.predict``,
``step.evaluate``). The signal tests wait on events (characters read from the stream, a
progress bar drawn, a line printed), each wait with a deadline; the streamed pipe stays
unread while the signal is sent, so the sampler cannot run far ahead of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from rnn_jax import checkpoint, cli, input_pipeline, readers, run, sample, step
from rnn_jax.config import ModelConfig, SamplingConfig, TrainConfig
from rnn_jax.data import Vocab
from rnn_jax.loss import perplexity
from rnn_jax.signals import Interrupted
from tests.test_cli import CACHE, folder_digest

STRATEGIES = {
    "greedy": SamplingConfig(),
    "temperature": SamplingConfig(strategy="temperature", temperature=1.5),
    "top-k": SamplingConfig(strategy="top-k", top_k=3),
    "top-p": SamplingConfig(strategy="top-p", top_p=0.8),
    "beam": SamplingConfig(strategy="beam", beam_size=3),
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of a tiny model on the first 3,000 characters: 67 steps, 7 validation
    minibatches of 4 x 10."""
    out = tmp_path_factory.mktemp("stream") / "run"
    config = TrainConfig(max_tokens=3000, batch_size=4, num_steps=10, num_epochs=1)
    run.train({"num_hiddens": 16}, config, out=out, echo=lambda _: None, progress=False)
    return out


class StopAfter:
    """``ReaderSignals`` as a reader sees it, with SIGINT arriving during chunk ``n``."""

    def __init__(self, n: int) -> None:
        self.n, self.looks = n, 0

    @property
    def received(self) -> int | None:
        self.looks += 1
        return signal.SIGINT if self.looks >= self.n else None

    def chunks(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


# ------------------------------------------------------------------------ in chunks


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_streamed_text_equals_one_long_scan(run_dir: Path, strategy: str) -> None:
    """For every strategy, 3 chunks of 16 tokens stream ``predict``'s one long scan for the
    same seed: the prefix, the text as it comes and a newline (beam search: its best
    beam at the end), which is what ``sample`` prints without ``--stream``."""
    sampling = STRATEGIES[strategy]
    out = io.StringIO()
    readers.sample_checkpoint(
        run_dir,
        prefixes=["time traveller"],
        num_preds=48,
        step=None,
        sampling=sampling,
        seed=7,
        stream=True,
        out=out,
        chunk=16,
    )
    restored = checkpoint.restore(run_dir)
    args = (restored.model_config, restored.params, restored.vocab)
    want = sample.predict("time traveller", 48, *args, sampling=sampling, key=jax.random.key(7))
    assert out.getvalue() == want + "\n"


def test_prefixes_of_unequal_lengths_and_a_prefix_file(run_dir: Path) -> None:
    """Printed in chunks of 16, a prefix and one of another length from a file
    (preprocessed as the shipped corpus was) get ``predict``'s text for the same seed."""
    sampling = STRATEGIES["top-p"]
    text_file = run_dir.parent / "prefix.txt"
    text_file.write_bytes(b"The Time\r\nTraveller!\n")  # book preprocessing: "the time traveller "
    out = io.StringIO()
    readers.sample_checkpoint(
        run_dir,
        prefixes=["the machine", text_file],
        num_preds=32,
        step=None,
        sampling=sampling,
        seed=7,
        out=out,
        chunk=16,
    )
    restored = checkpoint.restore(run_dir)
    args = (restored.model_config, restored.params, restored.vocab)
    prefixes = ["the machine", "the time traveller "]
    want = sample.predict(prefixes, 32, *args, sampling=sampling, key=jax.random.key(7))
    assert out.getvalue() == "".join(text + "\n" for text in want)
    text_file.write_text("The", encoding="utf-8")  # a raw run keeps the capital
    raw = dataclasses.replace(restored.train_config, preprocess="raw")
    with pytest.raises(ValueError, match="1 token\\(s\\) outside the run's vocabulary: 'T'"):
        readers._file_prefix(text_file, dataclasses.replace(restored, train_config=raw))


def test_word_pieces_add_up_to_the_text(random_params) -> None:
    """Word tokens: the text each chunk adds (a space before each word) adds up to
    ``texts()``, which is ``predict``'s; a sampling strategy needs a key."""
    vocab = Vocab(["the", "time", "machine", "the"])
    config = ModelConfig(vocab_size=len(vocab), num_hiddens=8, sigma=1.0)
    params = random_params(config, seed=1, bias_scale=1.0)
    sampling, key = STRATEGIES["temperature"], jax.random.key(2)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        sample.Generation(["the time"], config, params, vocab, "word", sampling=sampling)
    generation = sample.Generation(
        ["the time"], config, params, vocab, "word", sampling=sampling, key=key
    )
    pieces = [generation.advance(4)[0], generation.advance(4)[0]]
    [text] = generation.texts()
    assert text == "the time" + "".join(pieces) and len(text.split()) == 2 + 8
    assert text == sample.predict(
        "the time", 8, config, params, vocab, "word", sampling=sampling, key=key
    )


# ------------------------------------------------------------------------ stopping


def test_evaluation_in_chunks_equals_one_shot_and_stops_between_chunks(run_dir: Path) -> None:
    """3 minibatches a chunk (chunks 3, 3, 1) sum to ``step.evaluate``'s NLL; the reader
    prints that perplexity, and stopped during chunk 2 it prints the perplexity of the
    first 6 minibatches and raises ``Interrupted``."""
    restored = checkpoint.restore(run_dir)
    dataset = input_pipeline.load_dataset(restored.train_config)
    Xs, Ys = input_pipeline.eval_batches(dataset.val, 4, 10)
    assert Xs.shape == (7, 4, 10)
    evaluate = step.make_evaluate(restored.model_config)
    parts = list(readers.evaluate_in_chunks(restored.model_config, restored.params, Xs, Ys, 3))
    assert [len(p) for p in parts] == [3, 3, 1]
    nll, count = evaluate(restored.params, Xs, Ys)
    np.testing.assert_allclose(np.concatenate(parts).sum(), nll, rtol=1e-6)

    lines: list[str] = []
    readers.evaluate_checkpoint(run_dir, echo=lines.append, chunk_tokens=3 * 40)
    assert f"perplexity {perplexity(nll, count):.3f} " in lines[0], lines
    assert "on 280 tokens of the validation split" in lines[0], lines

    lines.clear()
    with pytest.raises(Interrupted, match="SIGINT after 240 of 280 tokens; eval stopped"):
        readers.evaluate_checkpoint(
            run_dir, echo=lines.append, chunk_tokens=3 * 40, signals=StopAfter(2)
        )
    first_six, six_count = evaluate(restored.params, Xs[:6], Ys[:6])
    assert f"perplexity {perplexity(first_six, six_count):.3f} " in lines[0], lines
    assert "on the first 240 of 280 tokens of the validation split" in lines[0], lines


def test_sample_stopped_prints_what_was_generated(run_dir: Path) -> None:
    """Stopped during its third chunk of 8, a million-character sample prints the prefix
    and the 24 characters generated, as ``predict`` continues it, and raises."""
    restored = checkpoint.restore(run_dir)
    sampling = STRATEGIES["temperature"]
    out = io.StringIO()
    with pytest.raises(Interrupted, match="SIGINT after 24 of 1,000,000 chars; sample stopped"):
        readers.sample_checkpoint(
            run_dir,
            prefixes=["time"],
            num_preds=10**6,
            step=None,
            sampling=sampling,
            seed=3,
            out=out,
            signals=StopAfter(3),
            chunk=8,
        )
    want = sample.predict(
        "time",
        24,
        restored.model_config,
        restored.params,
        restored.vocab,
        sampling=sampling,
        key=jax.random.key(3),
    )
    assert out.getvalue() == want + "\n"


class ClosedPipe(io.StringIO):
    """stdout whose reader went away once 30 characters arrived (``| head -c 30``)."""

    def write(self, text: str) -> int:
        if self.tell() + len(text) > 30:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


def test_stream_into_a_closed_pipe_stops_quietly(run_dir: Path) -> None:
    """``sample --stream | head -c 30``: generation stops at the first write that fails,
    with SIGPIPE's exit status, 141, and nothing more to say."""
    status = readers.sample_checkpoint(
        run_dir,
        prefixes=["time"],
        num_preds=10**6,
        step=None,
        sampling=SamplingConfig(),
        seed=0,
        stream=True,
        out=ClosedPipe(),
        chunk=8,
    )
    assert status == 128 + signal.SIGPIPE == 141


# ------------------------------------------------------------------------ the command line


def _env() -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XDG_CACHE_HOME": str(CACHE)}


def _end(child: subprocess.Popen) -> None:
    """Kill ``child`` if a failed test left it running."""
    if child.poll() is None:
        child.kill()
        child.wait(timeout=60)


def _read_until(fd: int, enough, deadline_s: float = 120) -> bytes:
    """Bytes read from ``fd`` until ``enough(bytes)`` holds (or the deadline passes)."""
    got, deadline = b"", time.monotonic() + deadline_s
    while not enough(got) and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                block = os.read(fd, 1 << 16)
            except OSError:  # a pty whose other end closed
                break
            if not block:
                break
            got += block
    assert enough(got), got[-300:]
    return got


def test_ctrl_c_during_stream_keeps_the_text_and_exits_130(run_dir: Path) -> None:
    """SIGINT once 1,000 characters of a 10,000,000-character stream arrived: the child
    stops after its chunk, ends the line, says how far it got in one line and exits 130;
    everything it wrote is the seeded sample's start."""
    prefix = "the time traveller"
    cmd = [sys.executable, "-m", "rnn_jax", "sample", "--checkpoint", str(run_dir), "--stream"]
    cmd += ["--prefix", prefix, "--num-chars", "10000000", "--strategy", "top-k", "--top-k", "3"]
    cmd += ["--seed", "4"]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    assert child.stdout is not None
    fcntl.fcntl(child.stdout.fileno(), fcntl.F_SETPIPE_SZ, 4096)  # it runs <= 4 KiB ahead
    try:
        got = _read_until(child.stdout.fileno(), lambda b: len(b) >= len(prefix) + 1000)
        child.send_signal(signal.SIGINT)
        rest, err = child.communicate(timeout=120)
    finally:
        _end(child)
    assert child.returncode == 130, (child.returncode, err)
    lines = err.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnn-jax: SIGINT after "), err
    assert lines[0].endswith(" of 10,000,000 chars; sample stopped"), err
    text = (got + rest).decode()
    generated = int(lines[0].split("after ")[1].split(" of")[0].replace(",", ""))
    assert 0 < generated < 10**7 and generated % readers.SAMPLE_CHUNK == 0
    restored = checkpoint.restore(run_dir)
    want = sample.predict(
        prefix,
        generated,
        restored.model_config,
        restored.params,
        restored.vocab,
        sampling=SamplingConfig(strategy="top-k", top_k=3),
        key=jax.random.key(4),
    )
    assert text == want + "\n"


def test_ctrl_c_during_a_long_sample_on_a_terminal(run_dir: Path) -> None:
    """Without --stream, on a terminal: a progress bar appears on stderr; SIGINT once it
    did prints the prefix and what was generated, one line saying so, exit 130."""
    cmd = [sys.executable, "-m", "rnn_jax", "sample", "--checkpoint", str(run_dir)]
    cmd += ["--prefix", "time", "--num-chars", "10000000"]
    controller, terminal = pty.openpty()
    termios.tcsetwinsize(terminal, (24, 80))  # a terminal 0 columns wide gets an empty bar
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=terminal, env=_env())
    os.close(terminal)
    try:
        _read_until(controller, lambda b: b"char/s" in b)  # the bar
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=120)
        err = _read_until(controller, lambda b: b"sample stopped" in b)
    finally:
        _end(child)
        os.close(controller)
    assert child.returncode == 130
    last = err.decode().replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("rnn-jax: SIGINT after ") and last.endswith("sample stopped"), err
    generated = int(last.split("after ")[1].split(" of")[0].replace(",", ""))
    text = out.decode()
    assert 0 < generated < 10**7 and generated % readers.SAMPLE_CHUNK == 0
    assert text.startswith("time") and text.count("\n") == 1 and text.endswith("\n")


def test_signal_outside_chunks_is_one_line_and_exit_130() -> None:
    """``ReaderSignals`` (what ``info`` runs under) ends a process busy in JAX, garbage
    collection callbacks included, at once: one line, no traceback, exit 130."""
    script = (
        "import gc, jax.numpy as jnp\n"
        "from rnn_jax.signals import ReaderSignals\n"
        "ReaderSignals('info').__enter__()\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    x = jnp.ones((64, 64)); (x @ x).block_until_ready(); del x; gc.collect()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()
    )
    assert child.stdout is not None
    try:
        _read_until(child.stdout.fileno(), lambda b: b"ready" in b)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        _end(child)
    assert child.returncode == 130
    assert err.decode() == "rnn-jax: SIGINT; info stopped\n"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--prefix-file", "{missing}"], "--prefix-file {missing}: No such file or directory"),
        (["--prefix-file", "{latin1}"], "is not UTF-8 text: byte 0xe9 at offset 9"),
        (["--prefix-file", "{empty}"], "--prefix-file {empty} holds no text"),
        (["--stream", "--prefix", "a", "--prefix", "b"], "--stream continues one prefix, got 2"),
    ],
)
def test_bad_prefix_files_are_one_line_exit_2(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    """In this process (``cli.main`` as the command runs it, less the signal handlers)."""
    (tmp_path / "latin1.txt").write_bytes("hello caf\u00e9".encode("latin-1"))
    (tmp_path / "empty.txt").write_bytes(b"")
    places = {name: tmp_path / f"{name}.txt" for name in ("missing", "latin1", "empty")}
    before = folder_digest(run_dir)
    capsys.readouterr()
    args = ["sample", "--checkpoint", str(run_dir), *[a.format(**places) for a in args]]
    code = cli.main(args)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2 and out == "" and len(lines) == 1, (code, out, err)
    assert lines[0].startswith("rnn-jax: error: ") and needle.format(**places) in lines[0], err
    assert folder_digest(run_dir) == before


def test_prefixes_and_prefix_files_keep_their_order() -> None:
    args = cli.build_parser().parse_args(
        ["sample", "--checkpoint", "r", "--prefix", "a", "--prefix-file", "f", "--prefix", "b"]
    )
    assert cli.sample_options(args)["prefixes"] == ["a", Path("f"), "b"]
