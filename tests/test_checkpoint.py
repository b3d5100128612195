"""Checkpoints distrust the disk: every restore verifies checksums, damage names the
step and the item, a reader survives a writer deleting steps, and a checkpoint saved
from a 4-device mesh restores onto any topology.

Tiny model (V 10, H 8, B 4) so that every save and restore costs milliseconds.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import absl.logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rnn_jax import checkpoint, parallel
from rnn_jax.config import ModelConfig, TrainConfig, to_dict
from rnn_jax.data import Vocab
from rnn_jax.step import TrainState, init_train_state, make_optimizer

MODEL = ModelConfig(vocab_size=10, num_hiddens=8)
TRAIN = TrainConfig(batch_size=4, num_steps=5, num_epochs=3, sample_every=0)
VOCAB = Vocab(list("abcdefghi"))
STEPS = (80, 160, 240)  # epochs 1, 2, 3 of 80 steps
VAL_PPL = {80: 5.0, 160: 3.0, 240: 4.0}  # 160 is the best
CORPUS = {"sha256": "ab" * 32, "size": 1234, "num_chars": 1200}


def make_state(step: int, *, seed: int | None = None) -> TrainState:
    """A train state at ``step`` whose every array depends on the seed (the step)."""
    key = jax.random.key(step if seed is None else seed)
    state = init_train_state(MODEL, make_optimizer(TRAIN), TRAIN.batch_size, key)
    hidden = jax.random.normal(jax.random.fold_in(key, 1), state.hidden.shape)
    return state.replace(step=jnp.asarray(step, jnp.int32), hidden=hidden)


def save_steps(run_dir: Path, steps=STEPS, keep: int = 10) -> dict[int, TrainState]:
    manager = checkpoint.open_manager(run_dir, checkpoint.CheckpointConfig(keep=keep))
    states = {}
    for s in steps:
        states[s] = make_state(s)
        checkpoint.save(
            manager,
            states[s],
            epoch=s // 80,
            model_config=MODEL,
            train_config=TRAIN,
            vocab=VOCAB,
            metrics={"epoch": s // 80, "train_ppl": np.float32(6.5), "val_ppl": VAL_PPL[s]},
            corpus=CORPUS,
            extra={"epoch_sums": {"loss": 1.5, "grad_norm": 0.25, "batches": s % 7}},
        )
    checkpoint.close(manager)
    return states


def leaves(state: TrainState) -> list[np.ndarray]:
    return [
        np.asarray(x) for x in jax.tree.leaves(state.replace(key=jax.random.key_data(state.key)))
    ]


def assert_bitwise(a: TrainState, b: TrainState) -> None:
    for x, y in zip(leaves(a), leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, dict[int, TrainState]]:
    run_dir = tmp_path_factory.mktemp("saved")
    return run_dir, save_steps(run_dir)


@pytest.fixture
def run(saved, tmp_path) -> Path:
    """A fresh copy of the saved run, free to damage."""
    copy = tmp_path / "run"
    shutil.copytree(saved[0], copy)
    return copy


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / checkpoint.CHECKPOINTS / str(step)


def read_by_orbax(path: Path) -> bool:
    """Not under ``ocdbt.process_<i>/``: those per-process databases are merged into the
    item's root database at save time and never read again (damage there is harmless)."""
    return not any(part.startswith("ocdbt.process_") for part in path.parts)


def largest_file(folder: Path) -> Path:
    """The largest array data file of ``folder`` that a restore reads."""
    files = [p for p in folder.rglob("d/*") if p.is_file() and read_by_orbax(p)]
    return max(files, key=lambda p: p.stat().st_size)


def flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------- round trip


def test_save_restore_is_bitwise(saved) -> None:
    run_dir, states = saved
    for s, state in states.items():
        restored = checkpoint.restore(run_dir, step=s, for_training=True)
        assert restored.verified and restored.step == s and restored.epoch == s // 80
        assert restored.model_config == MODEL and restored.train_config == TRAIN
        assert restored.vocab == VOCAB
        assert_bitwise(restored.state, state)
        assert restored.corpus == CORPUS
        assert restored.extra == {"epoch_sums": {"loss": 1.5, "grad_norm": 0.25, "batches": s % 7}}
        assert restored.metrics == {"epoch": s // 80, "train_ppl": 6.5, "val_ppl": VAL_PPL[s]}
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        assert all(x.sharding == device for x in jax.tree.leaves(restored.params))
    assert checkpoint.restore(run_dir).state is None  # params only


def test_restore_takes_a_sharding_or_a_mesh(saved) -> None:
    run_dir, _ = saved
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    mesh = parallel.make_mesh(1)
    with pytest.raises(ValueError, match="a sharding or a mesh, not both"):
        checkpoint.restore(run_dir, sharding=device, mesh=mesh)


def test_best_latest_and_listing(saved) -> None:
    run_dir, _ = saved
    assert checkpoint.restore(run_dir, step="best").step == 160
    assert checkpoint.restore(run_dir, step="latest").step == 240
    assert checkpoint.restore(run_dir).step == 240
    infos = checkpoint.list_checkpoints(run_dir, verify=True)
    assert [(i.step, i.epoch, i.val_ppl, i.train_ppl) for i in infos] == [
        (s, s // 80, VAL_PPL[s], 6.5) for s in STEPS
    ]
    assert [i.step for i in infos if i.is_best] == [160]
    assert [i.step for i in infos if i.is_latest] == [240]
    assert all(i.intact and i.problem is None for i in infos)
    assert all(i.intact is None for i in checkpoint.list_checkpoints(run_dir))
    assert checkpoint.intact_steps(run_dir) == list(STEPS)
    assert checkpoint.newest_intact_step(run_dir) == 240
    assert checkpoint.newest_intact_step(run_dir, before=240) == 160
    assert checkpoint.newest_intact_step(run_dir, before=80) is None
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint at step 5; it has steps"):
        checkpoint.restore(run_dir, step=5)


def test_best_needs_a_validation_perplexity(tmp_path: Path) -> None:
    manager = checkpoint.open_manager(tmp_path, checkpoint.CheckpointConfig())
    checkpoint.save(
        manager, make_state(3), epoch=1, model_config=MODEL, train_config=TRAIN, vocab=VOCAB,
        metrics={"epoch": 1, "train_ppl": 7.0, "val_ppl": None},
    )  # fmt: skip
    checkpoint.close(manager)
    with pytest.raises(checkpoint.CheckpointError, match="records a validation perplexity"):
        checkpoint.restore(tmp_path, step="best")
    (info,) = checkpoint.list_checkpoints(tmp_path)
    assert (info.step, info.val_ppl, info.is_best, info.is_latest) == (3, None, False, True)


# ------------------------------------------------------------------------- damage


def assert_damaged(err: pytest.ExceptionInfo, run_dir: Path, step: int, item: str) -> None:
    message = str(err.value)
    assert isinstance(err.value, checkpoint.DamagedCheckpointError), message
    assert f"checkpoint step {step} of {run_dir} is damaged" in message, message
    assert err.value.item == item and item in message, message
    assert "\n" not in message


def test_flipped_bit_in_params_is_caught(run: Path) -> None:
    flip_bit(largest_file(step_dir(run, 240) / "params"))
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.restore(run)
    assert_damaged(err, run, 240, "params")
    assert "the newest intact checkpoint is step 160: use --step 160" in str(err.value)
    assert checkpoint.newest_intact_step(run) == 160
    assert checkpoint.intact_steps(run) == [80, 160]
    assert checkpoint.restore(run, step=160).step == 160
    infos = {i.step: i for i in checkpoint.list_checkpoints(run, verify=True)}
    assert not infos[240].intact and "params" in infos[240].problem
    assert infos[160].intact and infos[80].intact


def test_checksum_mismatch_names_the_leaf(run: Path) -> None:
    """Arrays that read without complaint but differ from what was saved."""
    path = step_dir(run, 240) / "integrity" / "metadata"
    integrity = json.loads(path.read_text())
    recorded = integrity["arrays"]["params"]
    leaf = next(k for k in recorded if "W_hh" in k)
    recorded[leaf] = "0" * 64
    path.write_text(json.dumps(integrity))
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.restore(run)
    assert_damaged(err, run, 240, "params")
    assert f"params{leaf} checksum mismatch" in str(err.value)


def test_truncated_data_file_is_caught(run: Path) -> None:
    data = largest_file(step_dir(run, 240) / "train")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    assert checkpoint.restore(run).step == 240  # params alone are intact
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.restore(run, for_training=True)
    assert_damaged(err, run, 240, "train")
    assert "use --step 160" in str(err.value)
    assert checkpoint.newest_intact_step(run) == 160


def test_deleting_any_metadata_file_is_caught(saved, tmp_path: Path) -> None:
    """Every file of a step that is not array data (under ``d/``), deleted in turn: a
    ``CheckpointError`` naming the step, never a KeyError or an Orbax traceback; the
    markers that Orbax never reads on a local disk restore, verified, unchanged."""
    base, states = saved
    folder = step_dir(base, 240)
    files = sorted(
        p.relative_to(folder) for p in folder.rglob("*") if p.is_file() and p.parent.name != "d"
    )
    names = {p.name for p in files}
    assert {"_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt", "metadata"} <= names
    for i, rel in enumerate(files):
        run = tmp_path / str(i)
        shutil.copytree(base, run)
        (step_dir(run, 240) / rel).unlink()
        if rel.name == "commit_success.txt" or not read_by_orbax(rel):
            restored = checkpoint.restore(run, step=240, for_training=True)
            assert restored.verified
            assert_bitwise(restored.state, states[240])
            continue
        with pytest.raises(checkpoint.CheckpointError) as err:
            checkpoint.restore(run, step=240, for_training=True)
        assert isinstance(err.value, checkpoint.DamagedCheckpointError), (rel, err.value)
        assert f"checkpoint step 240 of {run} is damaged" in str(err.value), rel
        assert "use --step 160" in str(err.value), rel
        if rel.parts[0] != "train" or rel.name == "_METADATA":  # read for params too
            with pytest.raises(checkpoint.CheckpointError, match="step 240 of"):
                checkpoint.restore(run)  # the latest, unasked


def test_deleting_an_item_is_caught(run: Path) -> None:
    for item in ("integrity", "train", "params", "meta"):
        shutil.rmtree(step_dir(run, 240) / item)
        with pytest.raises(checkpoint.CheckpointError) as err:
            checkpoint.restore(run, for_training=True)
        assert isinstance(err.value, checkpoint.DamagedCheckpointError), err.value
        assert "step 240" in str(err.value) and "use --step 160" in str(err.value)


def test_corrupt_meta_is_caught(run: Path) -> None:
    meta = step_dir(run, 240) / "meta" / "metadata"
    original = meta.read_text()
    meta.write_text(original[: len(original) // 2])
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.restore(run)
    assert_damaged(err, run, 240, "meta")
    assert "JSONDecodeError" in str(err.value)
    meta.write_text(original.replace('"epoch": 3', '"epoch": 2'))  # valid JSON, wrong value
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.restore(run)
    assert_damaged(err, run, 240, "meta")
    assert "meta checksum mismatch" in str(err.value)
    meta.write_text("[1, 2]")
    with pytest.raises(checkpoint.CheckpointError, match="meta is not a JSON object"):
        checkpoint.restore(run)
    meta.write_text(json.dumps({k: v for k, v in json.loads(original).items() if k != "vocab"}))
    with pytest.raises(checkpoint.CheckpointError, match=r"meta is incomplete \(KeyError: 'vocab'"):
        checkpoint.restore(run)


def test_unreadable_step_metadata_is_caught(run: Path) -> None:
    record = step_dir(run, 240) / "_CHECKPOINT_METADATA"
    record.write_text(record.read_text()[:10])
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.restore(run)
    assert_damaged(err, run, 240, "step")
    assert "_CHECKPOINT_METADATA is unreadable" in str(err.value)


def test_library_saves_and_restores_drop_orbax_orphans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first manager a library user opens (no CLI) installs the filter of Orbax's
    orphaned reads and writes: "Event loop is closed" and Orbax's unawaited coroutines
    are dropped, every other unraisable exception reaches the hook that was there."""
    seen: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    checkpoint.close(checkpoint.open_manager(tmp_path, checkpoint.CheckpointConfig()))
    orbax_file = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "x.py")
    coroutine = SimpleNamespace(cr_code=SimpleNamespace(co_filename=orbax_file))
    closed = SimpleNamespace(exc_value=RuntimeError("Event loop is closed"), object=None)
    orphan = SimpleNamespace(exc_value=RuntimeError("never awaited"), object=coroutine)
    other = SimpleNamespace(exc_value=ValueError("ours"), object=None)
    for unraisable in (closed, orphan, other):
        sys.unraisablehook(unraisable)
    assert seen == [other]


def test_orbax_futures_never_retrieved_are_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint deleted under a reader fails every leaf's read; the restore reports one,
    and asyncio logs the others' futures at garbage collection ("Future exception was
    never retrieved"): raised in Orbax's code, or set by TensorStore with no traceback.
    Those records are dropped; asyncio's record of an exception of other code is kept."""
    checkpoint.quiet_orbax_logs()
    orbax_file = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "x.py")
    raised = []
    for code in (
        compile("raise ValueError('NOT_FOUND: b_q/.zarray')", orbax_file, "exec"),
        compile("raise ValueError('ours')", "mine.py", "exec"),
    ):
        try:
            exec(code)
        except ValueError as err:
            raised.append(err)
    tensorstore = ValueError(
        'FAILED_PRECONDITION: Error reading "W_hq/0.0" in OCDBT database at local file "x"'
    )
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for err in (*raised, tensorstore):
            logging.getLogger("asyncio").error(
                "Future exception was never retrieved\nfuture: %s",
                SimpleNamespace(exception=err),
                exc_info=(type(err), err, err.__traceback__),
            )
    assert [r.exc_info[1] for r in caplog.records] == [raised[1]]


def test_orbax_reads_of_a_vanished_metadata_file_are_not_logged() -> None:
    """Orbax logs (as an error) a ``_CHECKPOINT_METADATA`` deleted under a reader, and goes
    on without it; that record is dropped, Orbax's other records and ours are kept."""
    checkpoint.quiet_orbax_logs()
    orbax_file = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "x.py")
    absl_logger = absl.logging.get_absl_logger()

    def passes(pathname: str, message: str) -> bool:
        record = logging.LogRecord("absl", logging.ERROR, pathname, 1, message, None, None)
        return bool(absl_logger.filter(record))

    assert not passes(orbax_file, "Failed to read Metadata file: 7/_CHECKPOINT_METADATA")
    assert passes(orbax_file, "Something else went wrong")
    assert passes("mine.py", "Failed to read Metadata file: 7/_CHECKPOINT_METADATA")


# ------------------------------------------------------------- format 1, legacy


def save_format_1(run_dir: Path, state: TrainState, train: dict) -> None:
    """A checkpoint as the format-1 ``save`` wrote it: three items, no checksums."""
    host = jax.tree.map(
        np.array,
        jax.device_get(
            {
                "params": state.params,
                "train": {
                    "opt_state": state.opt_state,
                    "step": state.step,
                    "hidden": state.hidden,
                    "key": jax.random.key_data(state.key),
                },
            }
        ),
    )
    meta = {
        "format": 1,
        "step": int(state.step),
        "epoch": 2,
        "model": to_dict(MODEL),
        "train": train,
        "vocab": json.loads(VOCAB.to_json()),
        "params_spec": checkpoint.params_spec(host["params"]),
    }
    manager = checkpoint.open_manager(run_dir, checkpoint.CheckpointConfig())
    manager.save(
        int(state.step),
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(host["params"]),
            train=ocp.args.StandardSave(host["train"]),
            meta=ocp.args.JsonSave(meta),
        ),
        force=True,
    )
    checkpoint.close(manager)


def test_format_1_restores_unverified(tmp_path: Path) -> None:
    state = make_state(50)
    save_format_1(tmp_path, state, to_dict(TRAIN))
    restored = checkpoint.restore(tmp_path)
    assert not restored.verified and restored.step == 50 and restored.epoch == 2
    assert restored.train_config == TRAIN and restored.corpus is None and restored.extra == {}
    for x, y in zip(jax.tree.leaves(restored.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(x, y)
    # Its optimizer state predates inject_hyperparams: sampled and evaluated, not resumed.
    with pytest.raises(checkpoint.CheckpointError, match=r"format 1.*not resumed"):
        checkpoint.restore(tmp_path, for_training=True)
    assert checkpoint.intact_steps(tmp_path) == [50]
    (info,) = checkpoint.list_checkpoints(tmp_path, verify=True)
    assert (info.step, info.epoch, info.val_ppl, info.intact) == (50, 2, None, True)


def test_checkpoints_older_than_preprocess_restore_as_book(tmp_path: Path) -> None:
    """A checkpoint of a run on a user's file, written before ``preprocess`` existed
    (its train config lacks the field; today's default for a user's file is raw),
    restores as ``book``, the only preprocessing there was: the real legacy table."""
    corpus = tmp_path / "own.txt"
    corpus.write_text("some text of the user's own\n", "utf-8")
    train = TrainConfig(batch_size=4, num_steps=5, sample_every=0, corpus=str(corpus))
    assert train.preprocess == "raw"
    old_train = {k: v for k, v in to_dict(train).items() if k != "preprocess"}
    save_format_1(tmp_path / "old", make_state(50), old_train)
    assert checkpoint.restore(tmp_path / "old").train_config.preprocess == "book"


def test_legacy_defaults_fill_missing_fields(tmp_path: Path, monkeypatch) -> None:
    """A checkpoint written before a field existed gets the field's legacy value; only
    fields the dataclass has are filled; a field this version lacks is one error line."""
    old_train = {k: v for k, v in to_dict(TRAIN).items() if k != "sample_prefix"}
    save_format_1(tmp_path / "old", make_state(50), old_train)
    legacy = {"train": {"preprocess": "book", "sample_prefix": "the time machine"}, "model": {}}
    monkeypatch.setattr(checkpoint, "LEGACY_DEFAULTS", legacy)
    restored = checkpoint.restore(tmp_path / "old")
    assert restored.train_config.sample_prefix == ("the time machine",)
    assert not hasattr(restored.train_config, "preprocess") or restored.train_config.preprocess

    save_format_1(tmp_path / "new", make_state(50), {**to_dict(TRAIN), "frobnicate": 3})
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.restore(tmp_path / "new")
    message = str(err.value)
    assert "cannot be read by this version" in message and "frobnicate" in message
    assert "\n" not in message


# ------------------------------------------------------------------------ readers


def test_reader_never_races_a_writer(tmp_path: Path) -> None:
    """A writer thread saves step after step keeping only the latest two (so it deletes
    a step every save) while the reader restores the latest 6 times, each time once
    the writer finished a newer step than the last read: every restore returns a whole,
    verified step, newer than the one before, and nothing else is raised."""
    states = [make_state(1, seed=k) for k in range(3)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        manager = checkpoint.open_manager(
            tmp_path, checkpoint.CheckpointConfig(keep=2, keep_best=False)
        )
        try:
            for s in range(1, 10_000):
                state = states[s % 3].replace(step=jnp.asarray(s, jnp.int32))
                checkpoint.save(
                    manager, state, epoch=s, model_config=MODEL, train_config=TRAIN, vocab=VOCAB
                )
                if stop.is_set():
                    break
        except BaseException as err:
            errors.append(err)
        finally:
            checkpoint.close(manager)

    def newest() -> int:
        return max(checkpoint.finished_steps(tmp_path), default=0)

    def wait_for_newer_than(step: int) -> None:
        deadline = time.monotonic() + 120
        while newest() <= step and not errors:
            assert time.monotonic() < deadline, f"the writer saved nothing after {step}"
            writer.join(0.01)

    writer = threading.Thread(target=write)
    writer.start()
    seen = [0]
    try:
        for _ in range(6):
            wait_for_newer_than(seen[-1])
            restored = checkpoint.restore(tmp_path, for_training=True)
            assert restored.verified and restored.epoch == restored.step > seen[-1]
            expected = states[restored.step % 3].replace(step=jnp.asarray(restored.step))
            assert_bitwise(restored.state, expected)
            seen.append(restored.step)
    finally:
        stop.set()
        writer.join(timeout=120)
    assert not errors, errors


def test_restore_moves_on_when_its_step_is_deleted(tmp_path: Path, monkeypatch) -> None:
    """The race made certain: right after ``restore`` picks the latest step, a writer
    saves two more and its policy (keep 2) deletes the picked one; ``restore`` returns
    the newest step instead. A step named explicitly and deleted is one error line."""
    states = {s: make_state(s) for s in (1, 2, 3, 4, 5)}
    manager = checkpoint.open_manager(
        tmp_path, checkpoint.CheckpointConfig(keep=2, keep_best=False)
    )

    def save(s: int) -> None:
        checkpoint.save(
            manager, states[s], epoch=s, model_config=MODEL, train_config=TRAIN, vocab=VOCAB
        )
        manager.wait_until_finished()

    save(1)
    pick = checkpoint._pick_step
    pending = [(2, 3)]

    def pick_then_write(*args, **kwargs):
        step = pick(*args, **kwargs)
        if pending:
            for s in pending.pop():
                save(s)
            assert not step_dir(tmp_path, step).exists()
        return step

    monkeypatch.setattr(checkpoint, "_pick_step", pick_then_write)
    restored = checkpoint.restore(tmp_path, for_training=True)
    assert restored.step == 3 and restored.verified
    assert_bitwise(restored.state, states[3])

    pending.append((4, 5))
    with pytest.raises(
        checkpoint.CheckpointError, match=r"step 3 of .* was deleted while being read"
    ):
        checkpoint.restore(tmp_path, step=3)
    checkpoint.close(manager)


# ----------------------------------------------------------------------- topology

MESH_SCRIPT = """
import sys
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

sys.path.insert(0, "tests")
from test_checkpoint import MODEL, TRAIN, VOCAB, assert_bitwise, make_state
from rnn_jax import checkpoint

run_dir = Path(sys.argv[1])
assert len(jax.devices()) == 4, jax.devices()
mesh4 = Mesh(np.array(jax.devices()), ("data",))
state = make_state(240)
state = state.replace(
    params=jax.device_put(state.params, NamedSharding(mesh4, P())),
    hidden=jax.device_put(state.hidden, NamedSharding(mesh4, P("data"))),
)
assert len(state.hidden.addressable_shards) == 4
assert state.hidden.addressable_shards[0].data.shape == (1, MODEL.num_hiddens)
manager = checkpoint.open_manager(run_dir, checkpoint.CheckpointConfig())
checkpoint.save(manager, state, epoch=3, model_config=MODEL, train_config=TRAIN, vocab=VOCAB)
checkpoint.close(manager)

one = checkpoint.restore(run_dir, for_training=True)
assert one.verified
assert_bitwise(one.state, state)
device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
assert all(x.sharding == device for x in jax.tree.leaves(one.state))

mesh2 = Mesh(np.array(jax.devices()[:2]), ("data",))
def place(path, shape):
    hidden = jax.tree_util.keystr(path) == "['train']['hidden']"
    return NamedSharding(mesh2, P("data") if hidden else P())
two = checkpoint.restore(run_dir, for_training=True, sharding=place)
assert two.verified
assert_bitwise(two.state, state)
assert two.state.hidden.sharding == NamedSharding(mesh2, P("data"))
assert two.state.params["W_hq"].sharding == NamedSharding(mesh2, P())
assert len(two.state.hidden.addressable_shards) == 2

prefix = {"params": NamedSharding(mesh2, P()), "train": NamedSharding(mesh2, P())}
three = checkpoint.restore(run_dir, sharding=prefix)
for a, b in zip(jax.tree.leaves(three.params), jax.tree.leaves(state.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.sharding == NamedSharding(mesh2, P())
print("restored onto 1 device and a 2-device mesh")
"""


def test_saved_from_a_4_device_mesh_restores_anywhere(tmp_path: Path) -> None:
    """Hidden state sharded over 4 CPU devices along B, params replicated: restored onto
    one device, onto a 2-device mesh (a function placing each array) and with a pytree
    prefix of shardings, every value equal. A subprocess, as the device count must be
    set before JAX is imported."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "4"}
    root = Path(__file__).parent.parent
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MESH_SCRIPT), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=root,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "restored onto 1 device and a 2-device mesh" in proc.stdout
