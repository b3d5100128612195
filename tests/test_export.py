"""``rnn-jax export``: the README's snippet, run where ``rnn_jax`` cannot be imported,
samples what ``rnn-jax sample --strategy greedy`` samples, for every cell; the exported
step equals ``model.step`` at any batch size; bad input changes nothing on disk.

The runs are freshly initialised models saved by the library (``checkpoint.save``), with
PyTorch's uniform init so that their logits are far from ties. One subprocess runs the
snippet for every case (JAX's import is most of a process's cost).
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from rnn_jax import checkpoint, cli, data, export, files, model, readers
from rnn_jax.config import CELLS, ModelConfig, SamplingConfig, TrainConfig
from rnn_jax.step import init_train_state, make_optimizer
from tests.test_cli import folder_digest

ROOT = Path(__file__).resolve().parents[1]
NUM_CHARS = 40
CHARS = TrainConfig(max_tokens=2000, batch_size=4, num_steps=5)
WORDS = TrainConfig(token="word", min_freq=5, max_tokens=2000, batch_size=4, num_steps=5)
PREFIX = {"char": "time traveller", "word": "the time traveller"}
# Every cell at one layer; two layers for a state that is one array per layer (gru), a
# tuple per layer (lstm), and the rnn with word tokens: ~2.5 s of CPU a case, so a cell
# added to CELLS costs one case, not two.
CASES = [(cell, 1, "char") for cell in CELLS] + [("gru", 2, "char"), ("lstm", 2, "char")]
CASES += [("rnn", 2, "word")]

# Runs the snippet (argv[1]) as a script once per (folder, prefix) of argv[3], in one
# process where ``import rnn_jax`` fails whatever is installed; prints the outputs as JSON.
RUN_SNIPPET = """
import contextlib, io, json, runpy, sys
sys.modules["rnn_jax"] = None
script, num_chars, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
outputs = []
for folder, prefix in cases:
    sys.argv = [script, folder, prefix, num_chars]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        runpy.run_path(script, run_name="__main__")
    outputs.append(out.getvalue())
print(json.dumps(outputs))
"""


def readme_snippet() -> str:
    """The Python block between the README's export-snippet markers."""
    readme = (ROOT / "README.md").read_text("utf-8")
    block = readme.split("<!-- export-snippet -->", 1)[1].split("<!-- /export-snippet -->")[0]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


def save_fresh_run(run_dir: Path, model_config: ModelConfig, train: TrainConfig, vocab, seed=0):
    """A run folder holding one checkpoint (step 0) of a freshly initialised model."""
    state = init_train_state(model_config, make_optimizer(train), 1, jax.random.key(seed))
    manager = checkpoint.open_manager(run_dir, checkpoint.CheckpointConfig())
    checkpoint.save(
        manager, state, epoch=0, model_config=model_config, train_config=train, vocab=vocab
    )
    checkpoint.close(manager)


def greedy_sample(run_dir: Path, prefix: str) -> str:
    """What ``rnn-jax sample --checkpoint RUN --prefix PREFIX --strategy greedy`` prints."""
    out = io.StringIO()
    readers.sample_checkpoint(
        run_dir,
        prefixes=[prefix],
        num_preds=NUM_CHARS,
        step=None,
        sampling=SamplingConfig(strategy="greedy"),
        seed=0,
        out=out,
    )
    return out.getvalue()


def snippet_outputs(cases: list[tuple[Path, str]], tmp_path: Path) -> list[str]:
    """The README snippet's output for each (export folder, prefix), run in one fresh
    process outside the repository, with no PYTHONPATH entry that holds ``rnn_jax``."""
    script = tmp_path / "sample_exported.py"
    script.write_text(readme_snippet())
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p and not Path(p, "rnn_jax").exists())
    arguments = [str(script), str(NUM_CHARS), json.dumps([[str(f), p] for f, p in cases])]
    proc = subprocess.run(
        [sys.executable, "-c", RUN_SNIPPET, *arguments],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int, str], list[str]]:
    """For every case of ``CASES``, a freshly initialised run saved and exported, and
    ``[what rnn-jax sample prints, what the README snippet prints from the export]``;
    the snippet runs for all the cases in one process."""
    root = tmp_path_factory.mktemp("export")
    expected, exports = {}, []
    for case in CASES:
        cell, num_layers, token = case
        train = CHARS if token == "char" else WORDS
        _, vocab = data.load_corpus(token=token, min_freq=train.min_freq, max_tokens=2000)
        model_config = ModelConfig(
            vocab_size=len(vocab), num_hiddens=16, cell=cell, num_layers=num_layers, init="uniform"
        )
        name = "-".join(map(str, case))
        run_dir, export_dir = root / name, root / f"{name}.export"
        save_fresh_run(run_dir, model_config, train, vocab, seed=len(expected))
        export.export_checkpoint(run_dir, export_dir, echo=lambda _: None)
        expected[case] = greedy_sample(run_dir, PREFIX[token])
        exports.append((export_dir, PREFIX[token]))
    outputs = snippet_outputs(exports, root)
    return {case: [expected[case], out] for case, out in zip(CASES, outputs, strict=True)}


@pytest.mark.parametrize("case", CASES, ids=lambda case: "-".join(map(str, case)))
def test_readme_snippet_samples_as_rnn_jax_sample(samples, case: tuple[str, int, str]) -> None:
    """Character for character (word for word for word tokens)."""
    expected, exported = samples[case]
    prefix = PREFIX[case[2]]
    assert expected.startswith(prefix) and len(expected) > len(prefix) + NUM_CHARS
    assert exported == expected


def test_exported_step_is_model_step_at_any_batch_size(tmp_path: Path) -> None:
    """``step.jax`` equals ``model.step`` on a batch of 3 from a random state of a 2-layer
    LSTM (the deepest state pytree): the batch is symbolic, the state flattened in order."""
    model_config = ModelConfig(vocab_size=10, num_hiddens=8, cell="lstm", num_layers=2)
    params = model.init(model_config, jax.random.key(0))
    step = jax.export.deserialize(export.export_step(model_config, params).serialize())
    tokens = np.array([1, 5, 2], np.int32)
    zero = model.zero_state(model_config, 3)
    rng = np.random.default_rng(1)
    state = jax.tree.map(lambda x: rng.standard_normal(x.shape, np.float32), zero)
    ref_state, ref_logits = jax.jit(model.step, static_argnums=0)(
        model_config, params, state, tokens
    )
    logits, flat = step.call(tokens, tuple(jax.tree.leaves(state)))
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-6, atol=1e-6)
    for ours, ref in zip(flat, jax.tree.leaves(ref_state), strict=True):
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


def test_manifest_describes_the_export(tmp_path: Path) -> None:
    """Vocabulary, tokens, the state per row, the source, the platforms, the checksum;
    an existing empty folder is a fine ``--out``."""
    _, vocab = data.load_corpus(max_tokens=2000)
    model_config = ModelConfig(vocab_size=len(vocab), num_hiddens=8, cell="lstm", num_layers=2)
    save_fresh_run(tmp_path / "run", model_config, CHARS, vocab)
    out = tmp_path / "export"
    out.mkdir()
    lines: list[str] = []
    platforms = ["cpu", "cuda", "tpu"]
    export.export_checkpoint(tmp_path / "run", out, platforms=platforms, echo=lines.append)
    manifest = json.loads((out / export.MANIFEST).read_text("utf-8"))
    assert manifest["vocab"] == vocab.idx_to_token
    assert (manifest["token"], manifest["preprocess"]) == ("char", "book")
    assert manifest["state"] == [{"shape": [8], "dtype": "float32"}] * 4  # (h0, c0, h1, c1)
    assert manifest["source"] == {"run": str((tmp_path / "run").resolve()), "step": 0}
    assert manifest["platforms"] == platforms
    step_bytes = (out / export.STEP_FILE).read_bytes()
    assert jax.export.deserialize(bytearray(step_bytes)).platforms == tuple(platforms)
    assert manifest["step_sha256"] == hashlib.sha256(step_bytes).hexdigest()
    assert sorted(p.name for p in out.iterdir()) == [export.MANIFEST, export.STEP_FILE]
    assert len(lines) == 1 and "exported step 0" in lines[0]


def test_readme_snippet_is_short_and_imports_no_rnn_jax() -> None:
    """At most 25 lines, importing the standard library's json and sys, jax and numpy."""
    snippet = readme_snippet()
    assert len(snippet.splitlines()) <= 25
    imported = set()
    for node in ast.walk(ast.parse(snippet)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported == {"jax", "json", "numpy", "sys"}


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("export") / "run"
    save_fresh_run(
        run_dir, ModelConfig(vocab_size=10, num_hiddens=8), CHARS, data.Vocab("abcdefghi")
    )
    return run_dir


def snapshot(folder: Path) -> tuple[list[str], str]:
    """Every path below ``folder`` (empty folders too) and the digest of the files' bytes."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")), folder_digest(folder)


def damaged_copy(run_dir: Path, tmp_path: Path) -> Path:
    """``run_dir`` with a bit flipped in its only checkpoint's parameters."""
    copy = tmp_path / "damaged"
    shutil.copytree(run_dir, copy)
    (path,) = (copy / checkpoint.CHECKPOINTS / "0" / "params" / "d").iterdir()
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x04
    path.write_bytes(bytes(raw))
    return copy


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("non-empty out", "is not empty"),
        ("out is a file", "is not a folder"),
        ("no checkpoint", "no checkpoints"),
        ("damaged checkpoint", "params"),
        ("unknown platform", "unknown platform 'gpu'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    saved_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, needle: str
) -> None:
    out, run_dir, flags = tmp_path / "out", saved_run, []
    if case == "non-empty out":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "out is a file":
        out.write_text("mine")
    elif case == "no checkpoint":
        run_dir = tmp_path / "empty"
        run_dir.mkdir()
    elif case == "damaged checkpoint":
        run_dir = damaged_copy(saved_run, tmp_path)
    else:
        flags = ["--platforms", "cpu,gpu"]
    before = [snapshot(p) for p in (tmp_path, saved_run)]
    capsys.readouterr()
    code = cli.main(["export", str(run_dir), "--out", str(out), *flags])
    _, err = capsys.readouterr()
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnn-jax: error: ") and needle in lines[0]
    assert [snapshot(p) for p in (tmp_path, saved_run)] == before


def test_a_failed_write_leaves_no_folder(
    saved_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails half-way (step.jax written, the manifest not) leaves neither
    ``out`` nor its temporary folder."""
    write_atomic = files.write_atomic

    def disk_full_at_the_manifest(path: Path, content: bytes | str) -> None:
        if path.name == export.MANIFEST:
            raise OSError(28, "No space left on device")
        write_atomic(path, content)

    monkeypatch.setattr(files, "write_atomic", disk_full_at_the_manifest)
    with pytest.raises(OSError, match="No space left"):
        export.export_checkpoint(saved_run, tmp_path / "out", echo=lambda _: None)
    assert list(tmp_path.iterdir()) == []
