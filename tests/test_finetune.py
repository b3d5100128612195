"""Fine-tuning (``--init-from``, ``rnn_jax.transfer``): the vocabulary remap against
an index-by-index reference for every cell and token kind, then the command as a user
runs it (in-process ``cli.main``, which prints and returns what the process would):
lr 0 reproduces the source, rows move where they should, resume is exact, and bad
input is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from rnn_jax import checkpoint, cli, report, run, transfer
from rnn_jax.config import ModelConfig, RunConfig
from rnn_jax.data import Vocab
from rnn_jax.signals import Signals
from rnn_jax.step import init_train_state
from tests.test_cli import TINY, folder_digest, leaves_digest
from tests.test_run import data_file, flip_bit

K = 67  # steps per epoch of TINY on the shipped corpus
TEXT = "The Time Machine (1895), by H. G. Wells: 'a time traveller!'\n" * 40


def main(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """``rnn-jax ARGS`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-epoch Time Machine run (book preprocessing, vocabulary 28): one checkpoint."""
    run_dir = tmp_path_factory.mktemp("source") / "run"
    assert cli.main(["train", "--out", str(run_dir), "--epochs", "1", *TINY]) == 0
    return run_dir


@pytest.fixture
def text(tmp_path: Path) -> Path:
    """Raw text sharing the space and some lowercase letters with the source; capitals,
    digits and punctuation are new, and the letters it lacks are dropped."""
    path = tmp_path / "new.txt"
    path.write_text(TEXT)
    return path


# ------------------------------------------------------------------------ the remap


def _reference(source: dict, fresh: dict, src: Vocab, dst: Vocab) -> dict:
    """The remap written token by token: a row (column, entry) per target token."""
    out = jax.tree.map(np.array, source)
    for name in ("W_hq", "b_q"):
        out[name] = np.array(fresh[name])
    for name in source["layer_0"]:
        if name.startswith("W_x"):
            out["layer_0"][name] = np.array(fresh["layer_0"][name])
    for i, token in enumerate(dst.idx_to_token):
        if token not in src.token_to_idx:
            continue
        j = src.token_to_idx[token]
        for name in source["layer_0"]:
            if name.startswith("W_x"):
                out["layer_0"][name][i] = source["layer_0"][name][j]
        out["W_hq"][:, i] = source["W_hq"][:, j]
        out["b_q"][i] = source["b_q"][j]
    return out


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize(
    ("src_tokens", "dst_tokens"),
    [
        ("time traveller", "The Time Machine!"),  # characters
        (["the", "time", "traveller", "said"], ["said", "the", "old", "machine"]),  # words
    ],
)
def test_transfer_equals_the_token_by_token_reference(cell, src_tokens, dst_tokens, random_params):
    """Two layers: every gate's layer-0 ``W_x`` rows, ``W_hq`` columns and ``b_q``
    entries of shared tokens are the source's, new tokens' are the fresh init's, and
    every other leaf (layer 1, ``W_h``, biases) is the source's."""
    src, dst = Vocab(src_tokens), Vocab(dst_tokens)
    config = ModelConfig(vocab_size=len(src), num_hiddens=8, cell=cell, num_layers=2)
    target = ModelConfig(vocab_size=len(dst), num_hiddens=8, cell=cell, num_layers=2)
    source = random_params(config)
    fresh = random_params(target, seed=1)
    rows = transfer.vocab_rows(src, dst)
    moved = transfer.transfer_params(source, fresh, rows)
    expected = _reference(source, fresh, src, dst)
    assert jax.tree.structure(moved) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)
    vocab_leaves = [
        path
        for path, _ in jax.tree_util.tree_flatten_with_path(source)[0]
        if transfer.vocab_axis(path) is not None
    ]
    assert len(vocab_leaves) == config.num_gates + 2  # every gate's W_x, W_hq, b_q
    assert 0 < (rows >= 0).sum() < len(dst)  # some tokens kept, some new


# ------------------------------------------------------------------------ the command


def test_identical_vocabulary_and_lr_0_reproduce_the_source(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same corpus with lr 0: the fine-tune's validation perplexity is the source's
    to the bit and so are its parameters; config.json and info name the source, its
    step and its checkpoint's sha256."""
    run_dir = tmp_path / "ft"
    code, out, err = main(
        capsys, "train", "--init-from", source, "--out", run_dir, "--lr", "0", "--max-steps", "3",
        "--eval-every-steps", "3", *TINY,
    )  # fmt: skip
    assert code == 0, err
    restored = checkpoint.restore(source)
    assert (
        f"step {K} (checkpoint sha256 {restored.sha256}): 28 tokens kept, 0 new, 0 dropped" in out
    )
    (theirs,) = report.read_jsonl(source / "metrics.jsonl")
    (ours,) = report.read_jsonl(run_dir / "metrics.jsonl")
    assert ours["val_ppl"] == theirs["val_ppl"]
    assert leaves_digest(checkpoint.restore(run_dir).params) == leaves_digest(restored.params)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["init_from"] == f"{source}:{K}"
    assert config["init_from"] == {
        "run": str(source), "step": K, "sha256": restored.sha256, "kept": 28, "new": 0,
        "dropped": 0,
    }  # fmt: skip
    code, out, _ = main(capsys, "info", run_dir)
    assert code == 0 and f"init from {source} step {K} (checkpoint sha256 {restored.sha256})" in out


def test_new_vocabulary_keeps_shared_rows_and_inits_new_ones(
    source: Path, text: Path, tmp_path: Path
) -> None:
    """Raw text of another vocabulary, prepared as ``rnn-jax train`` prepares it (the
    state ``loop.fit`` then starts from, which the lr 0 test above shows it trains from
    unchanged): shared tokens hold the source's rows, new ones a from-scratch run's init
    (same seed); the summary counts them; nothing is written."""
    out = tmp_path / "ft"
    args = ["train", "--init-from", f"{source}:latest", "--corpus", str(text), "--out", str(out)]
    args += ["--seed", "3", "--no-cache", *TINY]
    request = run.TrainRequest(**cli.train_request(cli.build_parser().parse_args(args)))
    fields = run.resolve_configs(request)
    prepared = run.prepare_new(fields, RunConfig(**fields.run), out, Signals())
    assert not out.exists()
    src = checkpoint.restore(source)
    rows = transfer.vocab_rows(src.vocab, prepared.dataset.vocab)
    kept = int((rows >= 0).sum())
    assert 0 < kept < len(rows)
    counts = f"{kept} tokens kept, {len(rows) - kept} new, {len(src.vocab) - kept} dropped"
    assert prepared.source.describe().endswith(counts)
    ft = prepared.start.params
    key = jax.random.key(3)
    scratch = init_train_state(prepared.model_config, optax.identity(), 4, key).params
    for i, j in enumerate(rows):
        want, r = (src.params, j) if j >= 0 else (scratch, i)
        np.testing.assert_array_equal(ft["layer_0"]["W_xh"][i], want["layer_0"]["W_xh"][r])
        np.testing.assert_array_equal(ft["W_hq"][:, i], want["W_hq"][:, r])
        np.testing.assert_array_equal(ft["b_q"][i], want["b_q"][r])
    np.testing.assert_array_equal(ft["layer_0"]["W_hh"], src.params["layer_0"]["W_hh"])


def test_fine_tune_resumes_bitwise(
    source: Path, text: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fine-tune stopped at step 4 and resumed to 8 equals 8 steps straight (state and
    records), and keeps naming its source."""
    common = ["--init-from", source, "--corpus", text, "--no-cache", "--eval-every-steps", "2"]
    common += TINY
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(capsys, "train", *common, "--out", straight, "--max-steps", "8")[0] == 0
    assert main(capsys, "train", *common, "--out", resumed, "--max-steps", "4")[0] == 0
    code, _, err = main(capsys, "train", "--resume", resumed, "--max-steps", "8", "--no-progress")
    assert code == 0, err
    a = checkpoint.restore(straight, for_training=True)
    b = checkpoint.restore(resumed, for_training=True)
    assert a.step == b.step == 8
    assert leaves_digest(a.state) == leaves_digest(b.state)
    keys = ("step", "train_ppl", "val_ppl", "grad_norm")
    ours, theirs = (
        [{k: r.get(k) for k in keys} for r in report.read_jsonl(d / "metrics.jsonl")]
        for d in (resumed, straight)
    )
    assert ours == theirs and len(ours) == 4
    sections = [
        json.loads((d / "config.json").read_text())["init_from"] for d in (straight, resumed)
    ]
    assert sections[0] == sections[1] == b.extra["init_from"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--init-from", "{empty}"], "holds no checkpoints/ folder"),
        (["--init-from", "{damaged}"], "no intact checkpoint remains"),
        (["--init-from", "{source}:5"], "has no checkpoint at step 5"),
        (
            ["--init-from", "{source}", "--cell", "gru", "--num-hiddens", "32"],
            "--num-hiddens 32, --cell gru contradict the model of the source run",
        ),
        (["--init-from", "{source}", "--corpus", "{digits}"], "shares no token with"),
        (["--init-from", "{source}", "--token", "word"], "--token word differs"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "digits.txt").write_text("0123456789+-*/=%\n" * 20)
    damaged = tmp_path / "damaged"
    if "{damaged}" in args:
        shutil.copytree(source, damaged)
        flip_bit(data_file(damaged, K, "params"))
    places = {"source": source, "empty": tmp_path / "empty", "damaged": damaged}
    places["digits"] = tmp_path / "digits.txt"
    before = folder_digest(source)
    new = tmp_path / "new"
    flags = [a.format(**places) for a in args]
    code, _, err = main(capsys, "train", *TINY, *flags, "--out", new, "--no-cache")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("rnn-jax: error: "), err
    assert needle in lines[0], lines[0]
    assert not new.exists()
    assert folder_digest(source) == before
