"""A user's own text from the shell (issue 9): raw characters kept, defaults that fit the
corpus, prefixes checked before training, step budgets, bits per character."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from rnn_jax import checkpoint, cli, data, report, run
from rnn_jax.config import OWN_TEXT, ModelConfig, RunConfig, TrainConfig, fit_warmup
from tests.test_cli import assert_one_line_error, rnn_jax

SMALL = ["--num-hiddens", "16", "--batch-size", "4", "--num-steps", "10", "--no-progress"]

SOURCE = '''class Stack:
    """A LIFO stack (Python source: indentation, newlines, brackets)."""

    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        return self.items.pop()
'''


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 6,000 characters of Python source, with no 'time traveller' in it."""
    path = tmp_path_factory.mktemp("text") / "stack.py.txt"
    path.write_text(SOURCE * 20, "utf-8")
    return path


@pytest.fixture(scope="module")
def raw_run(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    run_dir = tmp_path_factory.mktemp("own") / "run"
    proc = rnn_jax(
        "train", "--out", str(run_dir), "--corpus", str(corpus), "--epochs", "2",
        "--sample-every", "1", *SMALL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return run_dir, proc.stdout


def test_raw_text_trains_with_its_own_defaults(raw_run: tuple[Path, str], corpus: Path) -> None:
    """A user's file is read raw with all its tokens; the summary says so; the samples
    start from the validation split's first tokens, newlines included."""
    run_dir, stdout = raw_run
    text = corpus.read_text("utf-8")
    assert f"{len(text):,} characters, raw preprocessing -> {len(text):,} char tokens" in stdout
    assert "first" not in stdout.splitlines()[0]  # max_tokens: all of the user's corpus
    config = json.loads((run_dir / "config.json").read_text())["train"]
    assert (config["preprocess"], config["max_tokens"]) == ("raw", None)
    restored = checkpoint.restore(run_dir)
    assert restored.train_config.preprocess == "raw"
    assert {"\n", "(", ":", "S", '"'} <= set(restored.vocab.idx_to_token)
    prefix = text[len(text) - int(len(text) * 0.1) :][:16]  # the validation split's start
    assert repr(prefix)[1:-1] in stdout  # the in-training samples
    records = report.read_jsonl(run_dir / "metrics.jsonl")
    for record in records:  # bits per character: log2 of the per-character perplexity
        for split in ("train", "val"):
            assert record[f"{split}_bpc"] == pytest.approx(math.log2(record[f"{split}_ppl"]))
    last = records[-1]
    assert f"val ppl {last['val_ppl']:.2f} ({last['val_bpc']:.3f} bpc)" in stdout


def test_raw_run_samples_and_resumes(raw_run: tuple[Path, str], tmp_path: Path) -> None:
    """`sample` with no prefix uses the run's own; indented code is a valid prefix; the
    run resumes; eval reports bits per character."""
    run_dir, _ = raw_run
    proc = rnn_jax("sample", "--checkpoint", str(run_dir), "--num-chars", "30")
    assert proc.returncode == 0, proc.stderr
    proc = rnn_jax(
        "sample", "--checkpoint", str(run_dir), "--prefix", "    def __init__(self):",
        "--prefix", "return", "--num-chars", "20",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("    def __init__(self):")
    proc = rnn_jax("eval", "--checkpoint", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    scored = re.match(r"step \d+: perplexity ([\d.]+) \(([\d.]+) bits per character\)", proc.stdout)
    assert scored, proc.stdout
    assert float(scored[2]) == pytest.approx(math.log2(float(scored[1])), abs=1e-3)
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    proc = rnn_jax("train", "--resume", str(copy), "--epochs", "3", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert [r["epoch"] for r in report.read_jsonl(copy / "metrics.jsonl")] == [1, 2, 3]


def test_bad_prefix_is_refused_before_any_folder(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "new"
    proc = rnn_jax(
        "train", "--out", str(out), "--corpus", str(corpus), "--sample-prefix", "time traveller",
        *SMALL,
    )  # fmt: skip
    assert_one_line_error(proc, 2, "outside the vocabulary")
    assert not out.exists()


def test_step_budgets_record_steps(corpus: Path, tmp_path: Path) -> None:
    """--max-steps stops mid-epoch; --eval-every-steps closes records (with validation)
    every N steps; the first checkpoint comes at the first record."""
    out = tmp_path / "steps"
    proc = rnn_jax(
        "train", "--out", str(out), "--corpus", str(corpus), "--max-steps", "25",
        "--eval-every-steps", "10", "--save-every", "100", "--sample-every", "0", *SMALL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = report.read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [10, 20, 25]
    assert all(r["val_ppl"] is not None and "val_bpc" in r for r in records)
    assert checkpoint.finished_steps(out) == [10, 25]


def test_word_tokens_report_unknown_share(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Word tokens with --min-freq: eval reports the share of <unk> in the scored text;
    on a text of 41 words whose 40 targets (B 4 x T 10, all scored) hold 10 words the
    vocabulary lacks, exactly 25.00%."""
    out = tmp_path / "words"
    proc = rnn_jax(
        "train", "--out", str(out), "--token", "word", "--min-freq", "3", "--max-tokens",
        "3000", "--epochs", "1", "--sample-every", "0", *SMALL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = rnn_jax("eval", "--checkpoint", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "are <unk>" in proc.stdout
    text = tmp_path / "known.txt"
    text.write_text("the " + "and of the zzzq " * 10, "utf-8")
    assert cli.main(["eval", "--checkpoint", str(out), "--corpus", str(text)]) == 0
    printed = capsys.readouterr().out
    assert "(25.00% of the scored tokens are <unk>) on 40 tokens" in printed, printed


def test_cached_corpus_equals_fresh_tokenisation(corpus: Path, tmp_path: Path) -> None:
    """The token cache the CLI fills gives the ids a fresh tokenisation gives."""
    fresh = data.load_text_corpus(corpus, preprocess="raw")
    first = data.load_text_corpus(corpus, preprocess="raw", cache_dir=tmp_path)
    again = data.load_text_corpus(corpus, preprocess="raw", cache_dir=tmp_path)
    assert again.cached and not first.cached
    assert (again.tokens == fresh.tokens).all() and again.vocab == fresh.vocab


# ----------------------------------------------------------------- own-text defaults (issue 17)

TINY_OWN = [
    "--num-hiddens",
    "8",
    "--batch-size",
    "4",
    "--sample-every",
    "0",
    "--no-progress",
    "--no-cache",
]


def own_fields(**request: object) -> run.Fields:
    return run.resolve_configs(run.TrainRequest(**request))  # type: ignore[arg-type]


def test_own_text_defaults_fill_only_the_unset_fields(corpus: Path, tmp_path: Path) -> None:
    """A named corpus starts every field the user left unset from ``OWN_TEXT``; a flag
    and a config file's field win over it; the shipped corpus, a resume, a fine-tune and
    a seeds sweep get none of it."""
    fields = own_fields(train={"corpus": str(corpus)})
    assert fields.defaults == OWN_TEXT
    model = ModelConfig(vocab_size=5, **fields.model)
    train = TrainConfig(**fields.train)
    assert (model.cell, model.num_hiddens, model.init) == ("gru", 256, "uniform")
    assert (train.batch_size, train.num_steps, train.optimizer, train.lr) == (32, 64, "adam", 1e-2)
    assert (train.schedule, train.warmup_steps) == ("warmup-cosine", 100)
    assert (train.num_epochs, train.max_steps, train.eval_every_steps) == (20, 5000, 500)
    assert RunConfig(**fields.run).save_every_steps == 500

    flags = own_fields(model={"cell": "lstm"}, train={"corpus": str(corpus), "lr": 0.01})
    assert (flags.model["cell"], flags.train["lr"]) == ("lstm", 0.01)
    assert "cell" not in flags.defaults["model"] and "lr" not in flags.defaults["train"]
    assert flags.model["num_hiddens"] == 256  # the others still default

    file = tmp_path / "config.toml"
    file.write_text('[model]\ncell = "rnn"\n[train]\noptimizer = "sgd"\nlr = 1.0\n')
    from_file = own_fields(train={"corpus": str(corpus)}, config_file=file)
    assert (from_file.model["cell"], from_file.train["optimizer"]) == ("rnn", "sgd")
    assert from_file.train["lr"] == 1.0 and "schedule" in from_file.defaults["train"]

    for request in (
        {},  # the shipped Time Machine: the book's defaults
        {"train": {"corpus": str(corpus)}, "resume": tmp_path},
        {"train": {"corpus": str(corpus), "init_from": str(tmp_path)}},
        {"train": {"corpus": str(corpus)}, "seeds": (0, 1)},  # a sweep trains SGD only
    ):
        assert not any(own_fields(**request).defaults.values()), request
    book_model, book_train = ModelConfig(vocab_size=5), TrainConfig()
    assert (book_model.cell, book_model.init, book_train.optimizer, book_train.lr) == (
        "rnn",
        "normal",
        "sgd",
        1.0,
    )


def test_warmup_fits_a_short_budget() -> None:
    """100 warmup steps, or a tenth of a shorter budget (none below 10 steps)."""
    config = TrainConfig(schedule="warmup-cosine", warmup_steps=100)
    assert [fit_warmup(config, n).warmup_steps for n in (5000, 1000, 550, 9)] == [100, 100, 55, 0]


def test_own_text_run_prints_and_records_its_defaults_and_resumes_with_them(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`train --corpus FILE` with no model or optimizer flag: one line names the defaults
    applied (not --num-hiddens, which is set) with the values the run uses (the warmup
    fitted to a 4-step budget); config.json records them; --resume keeps them and prints
    no such line."""
    out = tmp_path / "mine"
    args = ["train", "--out", str(out), "--corpus", str(corpus), "--max-steps", "4", *TINY_OWN]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    line = (
        "defaults for your own text: --cell gru --init uniform --num-steps 64 --optimizer adam "
        "--lr 0.01 --schedule warmup-cosine --warmup-steps 0 --epochs 20 --eval-every-steps 500"
        " --save-every-steps 500 (set any flag to change it)"
    )
    assert printed.splitlines()[1] == line, printed
    saved = json.loads((out / "config.json").read_text())
    assert (saved["model"]["cell"], saved["model"]["num_hiddens"]) == ("gru", 8)
    assert (saved["train"]["optimizer"], saved["train"]["max_steps"]) == ("adam", 4)
    assert saved["run"]["save_every_steps"] == 500

    assert cli.main(["train", "--resume", str(out), "--max-steps", "6", "--no-progress"]) == 0
    assert "defaults for your own text" not in capsys.readouterr().out
    resumed = json.loads((out / "config.json").read_text())
    assert resumed["model"] == saved["model"]
    assert resumed["train"] == {**saved["train"], "max_steps": 6}
    assert checkpoint.restore(out).step == 6
