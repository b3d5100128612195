"""Orbax checkpoints of a run: resume training exactly, or restore a model to sample.

A run folder holds ``checkpoints/<step>/`` written by one ``ocp.CheckpointManager``.
Each checkpoint has four items:

* ``params``: the parameter pytree, all that sampling and evaluation need;
* ``train``: the rest of the train state (optimizer state, step, carried hidden state
  ``(B, H)`` or one per layer, PRNG key data ``(2,) uint32``), needed only to resume;
* ``meta``: JSON with the model and train configs, the vocabulary, the parameter
  shapes and dtypes, the metrics of the save, the corpus fingerprint and any extra
  JSON (e.g. the running sums of an interrupted epoch), so that a checkpoint alone
  rebuilds the model (no pickle);
* ``integrity``: JSON with a sha256 of every array (its shape, dtype and bytes, keyed
  by item and key path, e.g. ``params['W_hh']``) and of ``meta``; its own sha256
  (``Restored.sha256``) names the whole checkpoint (a fine-tune records its source's).

Nothing on disk is trusted: every restore recomputes the checksums, and any damage
(a flipped bit, a truncated or missing file, a missing item, unreadable metadata)
raises ``DamagedCheckpointError`` naming the run folder, the step and the item.
Checkpoints of format 1 (before checksums) still restore but are not verified.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so
a process killed mid-save leaves the previous checkpoints intact. Saves are
asynchronous; a write error surfaces as ``CheckpointWriteError`` at the next ``save``
or at ``close``. A reader (``eval``, ``sample``) may restore while a training process
saves and deletes old steps: ``restore`` then moves on to the newest remaining step.

This is the package's longest module, on purpose: the item layout ``save`` writes
(``_items``) is the one ``restore`` reads and verifies, and listing a run's checkpoints
or finding its newest intact one restores each step to check it; the contract is one,
so it is one file. Its sections, in order: the types, save, integrity, restore (public,
then each stage of ``_restore_step``), Orbax's noise, choosing a step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import absl.logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh
from orbax.checkpoint import checkpoint_managers as policies

from rnn_jax import model, parallel
from rnn_jax.config import ModelConfig, TrainConfig, from_dict, to_dict
from rnn_jax.data import Vocab
from rnn_jax.step import TrainState, init_train_state, make_optimizer

CHECKPOINTS = "checkpoints"
FORMAT = 2  # bump when the layout of the items changes; 2 added ``integrity``
READABLE_FORMATS = (1, 2)
RESTORE_ATTEMPTS = 5  # how often ``restore`` moves on when a writer deletes its step

# Fields that configs gained after checkpoints were written without them, with the
# value that reproduces how those older runs behaved. Only fields the dataclass has
# are filled, so an entry may precede the field it names.
LEGACY_DEFAULTS: dict[str, dict[str, Any]] = {"train": {"preprocess": "book"}, "model": {}}

Step = int | Literal["latest", "best"] | None
# For each restored array: a Sharding, or a function of (key path in
# ``{"params": ..., "train": ...}``, shape), or a pytree prefix of that dict.
ShardingSpec = jax.sharding.Sharding | Callable[[tuple[Any, ...], tuple[int, ...]], Any] | Any


class CheckpointError(ValueError):
    """A checkpoint that is missing, unfinished, or does not match what is asked of it."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (full disk, permissions...); the ones written
    before it are intact. Saves are asynchronous, so a failure surfaces at the next
    ``save`` or at ``close``."""


class NotResumableError(CheckpointError):
    """A readable checkpoint whose train state this version cannot resume (format 1)."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint whose files are corrupt, truncated, missing or unreadable."""

    def __init__(self, run_dir: Path, step: int, item: str, problem: str, hint: str = "") -> None:
        self.run_dir, self.step, self.item, self.problem = run_dir, step, item, problem
        super().__init__(f"checkpoint step {step} of {run_dir} is damaged: {problem}{hint}")

    def with_hint(self, hint: str) -> DamagedCheckpointError:
        return DamagedCheckpointError(self.run_dir, self.step, self.item, self.problem, hint)


@dataclass(frozen=True)
class CheckpointConfig:
    """What the manager keeps (when a run saves is ``actions.Save``'s cadence)."""

    keep: int = 3  # keep the latest this many checkpoints
    keep_best: bool = True  # also keep the one with the best validation perplexity
    # Seconds a save may take, waiting for the other processes included: a process that
    # died mid-save fails the others' save after this long (None: Orbax's 20 minutes).
    timeout_s: int | None = None

    def __post_init__(self) -> None:
        if self.keep <= 0:
            raise ValueError(f"keep must be positive, got {self.keep}")


@dataclass(frozen=True)
class Restored:
    """What a checkpoint rebuilds: the model, its parameters and vocabulary, and its run."""

    step: int
    epoch: int
    model_config: ModelConfig
    train_config: TrainConfig
    vocab: Vocab
    params: model.Params
    state: TrainState | None  # the full train state, when restored to resume
    corpus: dict[str, Any] | None = None  # the corpus fingerprint given to ``save``
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # ``save``'s extra JSON
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)  # recorded with the save
    verified: bool = False  # checksums compared (format 2); False for format 1
    # sha256 of the ``integrity`` record, which holds the sha256 of ``meta`` and of every
    # array: one digest that names the checkpoint's content (None for format 1)
    sha256: str | None = None


@dataclass(frozen=True)
class CheckpointInfo:
    """One line of ``list_checkpoints``: what a step holds, read from its ``meta``."""

    step: int
    epoch: int | None
    train_ppl: float | None
    val_ppl: float | None
    is_latest: bool
    is_best: bool
    intact: bool | None  # None unless verification was asked for
    problem: str | None = None  # why it is not intact (or its meta unreadable)
    meta: dict[str, Any] | None = dataclasses.field(default=None, repr=False)  # as saved


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir).absolute() / CHECKPOINTS


class _Manager(ocp.CheckpointManager):
    """Orbax's manager without its own questions to JAX's preemption sync point. The sync
    point answers True at exactly one id, the next after the largest any process had
    passed when a SIGTERM arrived; the loop owns those ids (``parallel.agreed_stop``, one
    per step), and Orbax would pass checkpoint steps, from its finalizing thread too,
    making a process look behind and miss the id the others stop at."""

    def reached_preemption(self, step: int) -> bool:
        return False


def open_manager(
    run_dir: Path, config: CheckpointConfig, *, read_only: bool = False
) -> ocp.CheckpointManager:
    """The run's manager. Keeps the latest ``keep`` checkpoints and, with ``keep_best``,
    the best by validation perplexity as well: the latest is never deleted, so a resume
    never goes backwards. Installs ``quiet_orbax_unraisables``."""
    quiet_orbax_unraisables()
    policy: policies.PreservationPolicy = policies.LatestN(config.keep)
    if config.keep_best:
        best = policies.BestN(
            get_metric_fn=lambda metrics: metrics["val_ppl"],
            reverse=True,  # lower perplexity is better; BestN keeps the tail of the sort
            n=1,
            keep_checkpoints_without_metrics=False,
        )
        policy = policies.AnyPreservationPolicy([policy, best])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        cleanup_tmp_directories=not read_only,
        read_only=read_only,
        create=not read_only,
        save_interval_steps=0 if read_only else 1,
        async_options=None if config.timeout_s is None else ocp.AsyncOptions(config.timeout_s),
    )
    return _Manager(checkpoint_dir(run_dir), options=options)


def _items(state: TrainState, key: Any) -> dict[str, Any]:
    """The two array items of a checkpoint from a ``TrainState``, or from any pytree of its
    structure (its shapes, its shardings), ``key`` standing for the PRNG key's data: the
    one place their layout is written."""
    return {
        "params": state.params,
        "train": {
            "opt_state": state.opt_state,
            "step": state.step,
            "hidden": state.hidden,
            "key": key,
        },
    }


def _state(items: dict[str, Any]) -> TrainState:
    """The ``TrainState`` of restored items (``_items`` undone)."""
    train = items["train"]
    return TrainState(
        step=jnp.asarray(train["step"], jnp.int32),
        params=items["params"],
        opt_state=train["opt_state"],
        hidden=train["hidden"],
        key=jax.random.wrap_key_data(jnp.asarray(train["key"])),
    )


def params_spec(params: model.Params) -> dict[str, list[Any]]:
    """``{path: [shape, dtype]}`` of every leaf, as stored in the metadata."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(path): [list(leaf.shape), str(leaf.dtype)] for path, leaf in flat}


# ------------------------------------------------------------------------------ save


def save(
    manager: ocp.CheckpointManager,
    state: TrainState,
    *,
    epoch: int,
    model_config: ModelConfig,
    train_config: TrainConfig,
    vocab: Vocab,
    metrics: dict[str, Any] | None = None,
    corpus: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Queue an asynchronous save of ``state`` at its step.

    ``metrics`` (``epoch``, ``train_ppl``, ``val_ppl``...) are recorded in ``meta`` for
    ``list_checkpoints`` and ``step="best"``; those with a ``val_ppl`` also feed the
    preservation policy. ``corpus`` (a fingerprint such as ``{"sha256", "size",
    "num_chars"}``) and ``extra`` (any JSON, e.g. ``{"epoch_sums": {...}}``) come back
    as ``Restored.corpus`` and ``Restored.extra``.

    When every array is fully addressable (one process, on one or several devices), the
    arrays are copied to host memory first, because the train step donates (reuses) the
    device buffers of the state it is given while the write finishes in the background;
    the checksums are computed from those host copies. Arrays spread over several
    processes are handed to Orbax as they are (its multi-host contract: every process
    calls ``save`` with its shards, and Orbax copies them to host before ``save``
    returns); their checksums are of the whole arrays, gathered from every process
    (``parallel.host_copy``: a gather per array at each save), so that whatever restores
    them, on any number of processes, verifies every byte.
    """
    step = int(state.step)
    items = _items(state, jax.random.key_data(state.key))
    copies = {name: parallel.host_copy(tree) for name, tree in items.items()}
    arrays = {name: _digests(tree) for name, tree in copies.items()}
    if all(_addressable(leaf) for leaf in jax.tree.leaves(items)):
        items = copies
    meta = {
        "format": FORMAT,
        "step": step,
        "epoch": epoch,
        "model": to_dict(model_config),
        "train": to_dict(train_config),
        "vocab": json.loads(vocab.to_json()),
        "params_spec": params_spec(items["params"]),
        "metrics": _json_metrics(metrics),
        "corpus": corpus,
        "extra": extra or {},
    }
    integrity = {"format": FORMAT, "meta": _json_digest(meta), "arrays": arrays}
    usable = metrics if metrics and metrics.get("val_ppl") is not None else None
    try:  # Orbax first waits for the previous save, and re-raises its error here
        manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(items["params"]),
                train=ocp.args.StandardSave(items["train"]),
                meta=ocp.args.JsonSave(meta),
                integrity=ocp.args.JsonSave(integrity),
            ),
            metrics=usable,
            force=True,
        )
    except Exception as err:
        raise _write_error(manager, err) from err


def close(manager: ocp.CheckpointManager) -> None:
    """Finish the pending saves and close ``manager``; ``CheckpointWriteError`` if one failed."""
    try:
        manager.wait_until_finished()
        manager.close()
    except Exception as err:
        raise _write_error(manager, err) from err


def _write_error(manager: ocp.CheckpointManager, err: Exception) -> CheckpointWriteError:
    latest = manager.latest_step()
    kept = "no earlier checkpoint" if latest is None else f"the latest good one is step {latest}"
    return CheckpointWriteError(f"saving a checkpoint failed ({err}); {kept}")


def _addressable(leaf: Any) -> bool:
    return getattr(leaf, "is_fully_addressable", True)


def _json_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """Scalars as plain JSON numbers (NumPy and JAX scalars included); the rest dropped."""
    out: dict[str, Any] = {}
    for name, value in (metrics or {}).items():
        if value is None or isinstance(value, bool | int | float | str):
            out[name] = value
        elif np.ndim(value) == 0:
            number = np.asarray(value).item()
            out[name] = number if isinstance(number, int | float) else float(number)
    return out


# ------------------------------------------------------------------------- integrity


def _digest(leaf: Any) -> str:
    """sha256 of an array's shape, dtype and C-order bytes."""
    array = np.ascontiguousarray(np.asarray(leaf))
    h = hashlib.sha256(f"{array.shape}|{array.dtype}|".encode())
    h.update(array.tobytes())
    return h.hexdigest()


def _digests(tree: Any) -> dict[str, str]:
    """``{keystr(path): sha256}`` of every leaf of ``tree``."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): _digest(leaf) for path, leaf in flat}


def _json_digest(value: Any) -> str:
    # Tuples and lists serialize alike, and floats round-trip exactly through repr.
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _verify_arrays(
    run_dir: Path, step: int, item: str, tree: Any, expected: dict[str, str] | None
) -> None:
    if expected is None:  # saved from several processes before they recorded checksums
        return
    actual = _digests(parallel.host_copy(tree))
    for key in sorted(set(actual) | set(expected)):
        if key not in expected:
            problem = f"{item}{key} has no recorded checksum"
        elif key not in actual:
            problem = f"{item}{key} is missing"
        elif actual[key] != expected[key]:
            problem = f"{item}{key} checksum mismatch"
        else:
            continue
        raise DamagedCheckpointError(run_dir, step, item, problem)


# --------------------------------------------------------------------------- restore


def read_meta(run_dir: Path, step: int | None = None) -> tuple[int, dict[str, Any]]:
    """The metadata of checkpoint ``step`` (the latest when None) of ``run_dir``, not
    verified against its checksum."""
    run_dir = _check_run_dir(run_dir)
    with _open_reader(run_dir) as manager:
        step = _pick_step(manager, run_dir, step)
        return step, _read_json(manager, run_dir, step, "meta")


def restore(
    run_dir: Path,
    *,
    step: Step = None,
    expect_model: ModelConfig | None = None,
    expect_vocab: Vocab | None = None,
    for_training: bool = False,
    sharding: ShardingSpec | None = None,
    mesh: Mesh | None = None,
) -> Restored:
    """Restore checkpoint ``step`` of ``run_dir``: a step number, ``"latest"`` (or None),
    or ``"best"`` (the lowest validation perplexity recorded with a save).

    The saved metadata is checked first: against ``expect_model`` and ``expect_vocab``
    when given, and the saved parameter shapes and dtypes against those the saved model
    config produces. A mismatch raises ``CheckpointError`` naming the field, the saved
    value and the expected one; nothing is restored partially or cast. Then every item
    read is verified against the checksums recorded at save time (format 1 checkpoints
    have none and are not verified); damage raises ``DamagedCheckpointError`` naming
    the step, the item and the newest intact step. With ``for_training`` the optimizer
    state, hidden state and key are restored too.

    ``sharding`` places each restored array: a ``jax.sharding.Sharding`` for all, a
    function ``(key_path, shape) -> Sharding`` whose key path runs from the root of
    ``{"params": params, "train": {"opt_state", "step", "hidden", "key"}}``, or a pytree
    prefix of that dict with a ``Sharding`` at each leaf. ``mesh`` instead places the state
    as a run on that mesh holds it (``parallel.state_shardings``: the hidden state split
    by rows, the rest replicated). The default puts everything on ``jax.devices()[0]``.
    The saved layout does not matter: a checkpoint written from a 4-device mesh restores
    onto one device or any other mesh.

    When the step picked (latest or best) disappears or fails to read while a training
    process saves and deletes steps, the newest remaining step is tried instead, up to
    ``RESTORE_ATTEMPTS`` times; no Orbax or tensorstore exception escapes.
    """
    if sharding is not None and mesh is not None:
        raise ValueError("give restore a sharding or a mesh, not both")
    run_dir = _check_run_dir(run_dir)
    for _ in range(RESTORE_ATTEMPTS):
        with _open_reader(run_dir) as manager:
            chosen = _pick_step(manager, run_dir, step)
            try:
                return _restore_step(
                    manager,
                    run_dir,
                    chosen,
                    expect_model,
                    expect_vocab,
                    for_training,
                    sharding,
                    mesh,
                )
            except DamagedCheckpointError as err:
                damage = err
        with _open_reader(run_dir) as manager:
            steps = _steps(manager)
            if isinstance(step, int) and step not in steps:
                raise CheckpointError(
                    f"checkpoint step {step} of {run_dir} was deleted while being read"
                ) from damage
            if not isinstance(step, int) and steps and _pick_step(manager, run_dir, step) != chosen:
                continue  # a writer saved a newer step or deleted this one: pick again
            raise damage.with_hint(_intact_hint(manager, run_dir, exclude=chosen)) from None
    raise CheckpointError(
        f"the checkpoints of {run_dir} kept changing while being read "
        f"({RESTORE_ATTEMPTS} attempts); try again"
    )


def intact_steps(run_dir: Path) -> list[int]:
    """The steps of ``run_dir`` (ascending) whose every item reads and matches its
    checksums (format 1 steps: whose every item reads), and whose configs this version
    can rebuild."""
    run_dir = _check_run_dir(run_dir)
    with _open_reader(run_dir) as manager:
        return [s for s in _steps(manager) if _problem(manager, run_dir, s) is None]


def newest_intact_step(run_dir: Path, before: int | None = None) -> int | None:
    """The newest intact step of ``run_dir`` (below ``before`` when given), or None;
    steps are verified newest first and the search stops at the first intact one."""
    run_dir = _check_run_dir(run_dir)
    with _open_reader(run_dir) as manager:
        return _newest_intact(manager, run_dir, before=before)


def list_checkpoints(run_dir: Path, *, verify: bool = False) -> list[CheckpointInfo]:
    """Every finished step of ``run_dir``, ascending, with its epoch and recorded
    perplexities, which is the latest and which the best (lowest ``val_ppl``), and with
    ``verify`` whether it is intact."""
    run_dir = _check_run_dir(run_dir)
    with _open_reader(run_dir) as manager:
        steps = _steps(manager)
        metas = {s: _try_meta(manager, run_dir, s) for s in steps}
        best = _best(metas)
        infos = []
        for s in steps:
            meta = metas[s] if isinstance(metas[s], dict) else {}
            recorded = meta.get("metrics") or {}
            problem = metas[s] if isinstance(metas[s], str) else None
            intact = None
            if verify:
                problem = _problem(manager, run_dir, s)
                intact = problem is None
            infos.append(
                CheckpointInfo(
                    step=s,
                    epoch=meta.get("epoch"),
                    train_ppl=recorded.get("train_ppl"),
                    val_ppl=recorded.get("val_ppl"),
                    is_latest=s == steps[-1],
                    is_best=s == best,
                    intact=intact,
                    problem=problem,
                    meta=meta or None,
                )
            )
        return infos


def _restore_step(
    manager: ocp.CheckpointManager,
    run_dir: Path,
    step: int,
    expect_model: ModelConfig | None,
    expect_vocab: Vocab | None,
    for_training: bool,
    sharding: ShardingSpec | None,
    mesh: Mesh | None = None,
) -> Restored:
    """``restore`` of one chosen step: layout, metadata, expectations, checksums, arrays."""
    _check_layout(run_dir, step)
    meta = _read_json(manager, run_dir, step, "meta")
    fmt, model_config, train_config, vocab, spec, epoch = _decode_meta(meta, run_dir, step)
    if expect_model is not None:
        _compare("model", to_dict(model_config), to_dict(expect_model))
    if expect_vocab is not None and vocab != expect_vocab:
        _compare("vocab", {"tokens": vocab.idx_to_token}, {"tokens": expect_vocab.idx_to_token})
    if for_training and fmt == 1:
        raise NotResumableError(
            f"checkpoint step {step} of {run_dir} has format 1, from before the optimizer "
            "state held its hyperparameters: it can be evaluated and sampled, not resumed"
        )
    abstract = _abstract_state(model_config, train_config)
    abstract_items = _items(abstract, jax.eval_shape(jax.random.key_data, abstract.key))
    _compare("params", spec, params_spec(abstract_items["params"]))
    recorded, sha256 = (
        _recorded_checksums(manager, run_dir, step, meta) if fmt >= 2 else (None, None)
    )
    if mesh is not None:  # as a run on ``mesh`` holds its state
        shardings = parallel.state_shardings(abstract, mesh)
        sharding = _items(shardings, shardings.key)
    placed = _placed(abstract_items, sharding)
    names = ("params", "train") if for_training else ("params",)
    items = {}
    for name in names:
        tree = _read_item(manager, run_dir, step, name, ocp.args.StandardRestore(placed[name]))
        if recorded is not None:
            _verify_arrays(run_dir, step, name, tree, recorded[name])
        items[name] = tree
    return Restored(
        step=step,
        epoch=epoch,
        model_config=model_config,
        train_config=train_config,
        vocab=vocab,
        params=items["params"],
        state=_state(items) if for_training else None,
        corpus=meta.get("corpus"),
        extra=meta.get("extra") or {},
        metrics=meta.get("metrics") or {},
        verified=recorded is not None,
        sha256=sha256,
    )


def _decode_meta(
    meta: Any, run_dir: Path, step: int
) -> tuple[int, ModelConfig, TrainConfig, Vocab, dict[str, Any], int]:
    """The format, configs, vocabulary, parameter spec and epoch a checkpoint's ``meta``
    records, checked."""
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt not in READABLE_FORMATS:
        if isinstance(fmt, int) and fmt > FORMAT:
            raise CheckpointError(
                f"checkpoint step {step} of {run_dir} has format {fmt}, newer than this "
                f"version reads ({FORMAT})"
            )
        raise DamagedCheckpointError(run_dir, step, "meta", f"meta has format {fmt!r}")
    try:
        model_config = _config(ModelConfig, "model", meta["model"], run_dir, step)
        train_config = _config(TrainConfig, "train", meta["train"], run_dir, step)
        vocab = Vocab.from_json(json.dumps(meta["vocab"]))
        spec, epoch = meta["params_spec"], int(meta["epoch"])
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise DamagedCheckpointError(
            run_dir, step, "meta", f"meta is incomplete ({type(err).__name__}: {_line(err)})"
        ) from None
    return fmt, model_config, train_config, vocab, spec, epoch


def _abstract_state(model_config: ModelConfig, train_config: TrainConfig) -> TrainState:
    """The shapes and dtypes of the train state a checkpoint of these configs holds."""
    # The optimizer state's shape does not depend on the step budget: any valid one does.
    optimizer = make_optimizer(train_config, total_steps=train_config.warmup_steps + 1)
    B = train_config.batch_size
    return jax.eval_shape(lambda: init_train_state(model_config, optimizer, B, jax.random.key(0)))


def _recorded_checksums(
    manager: ocp.CheckpointManager, run_dir: Path, step: int, meta: dict[str, Any]
) -> tuple[dict[str, Any], str]:
    """The array checksums of ``integrity``, once its checksum of ``meta`` matched, and
    the sha256 of ``integrity`` itself (``Restored.sha256``)."""
    integrity = _read_json(manager, run_dir, step, "integrity")
    try:
        meta_ok = integrity["meta"] == _json_digest(meta)
        recorded = {name: integrity["arrays"][name] for name in ("params", "train")}
    except (KeyError, TypeError) as err:
        problem = f"integrity is incomplete ({type(err).__name__}: {_line(err)})"
        raise DamagedCheckpointError(run_dir, step, "integrity", problem) from None
    if not meta_ok:
        raise DamagedCheckpointError(run_dir, step, "meta", "meta checksum mismatch")
    return recorded, _json_digest(integrity)


def _check_layout(run_dir: Path, step: int) -> None:
    """Orbax's own records of the step must be there and parse, even where a restore
    would go on without them: their absence means the folder was damaged. Left out:
    ``commit_success.txt`` (a marker for object stores without atomic renames) and
    ``<item>/ocdbt.process_<i>/`` (per-process databases, merged into the item's own
    database at save time and not read afterwards)."""
    folder = checkpoint_dir(run_dir) / str(step)
    for name in ("_CHECKPOINT_METADATA", "params/_METADATA", "train/_METADATA"):
        item = name.split("/")[0] if "/" in name else "step"
        try:
            json.loads((folder / name).read_text())
        except FileNotFoundError:
            raise DamagedCheckpointError(run_dir, step, item, f"{name} is missing") from None
        except (OSError, ValueError) as err:
            problem = f"{name} is unreadable ({type(err).__name__}: {_line(err)})"
            raise DamagedCheckpointError(run_dir, step, item, problem) from None


def _config(cls: type, section: str, data: Any, run_dir: Path, step: int) -> Any:
    """``cls`` from the saved ``data``, missing fields filled from ``LEGACY_DEFAULTS``."""
    if not isinstance(data, dict):
        raise TypeError(f"meta[{section!r}] is {type(data).__name__}, not an object")
    names = {f.name for f in dataclasses.fields(cls)}
    legacy = {k: v for k, v in LEGACY_DEFAULTS.get(section, {}).items() if k in names}
    try:
        return from_dict(cls, {**legacy, **data})
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint step {step} of {run_dir} cannot be read by this version: {_line(err)}"
        ) from None


def _placed(abstract: Any, sharding: ShardingSpec | None) -> Any:
    """``abstract``'s leaves as ``ShapeDtypeStruct``s carrying the sharding asked for."""
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    if isinstance(sharding, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: sharding, abstract)
    elif callable(sharding):
        shardings = jax.tree_util.tree_map_with_path(
            lambda path, x: sharding(path, tuple(x.shape)), abstract
        )
    else:
        shardings = jax.tree.map(lambda s, sub: jax.tree.map(lambda _: s, sub), sharding, abstract)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
    )


def _read_item(
    manager: ocp.CheckpointManager, run_dir: Path, step: int, name: str, args: Any
) -> Any:
    """Item ``name`` of ``step``; any failure to read it is damage named by the item."""
    try:
        value = manager.restore(step, args=ocp.args.Composite(**{name: args}))[name]
    except Exception as err:  # Orbax, tensorstore and json raise all kinds
        problem = f"{name} is unreadable ({type(err).__name__}: {_line(err)})"
        raise DamagedCheckpointError(run_dir, step, name, problem) from None
    if value is None:
        raise DamagedCheckpointError(run_dir, step, name, f"{name} is missing")
    return value


def quiet_orbax_unraisables() -> None:
    """Drop the tracebacks a failed read (or write) leaves behind, which the failure
    itself already reports in one line: Orbax closes its event loop while TensorStore's
    threads finish the item's other reads (writes), whose callbacks raise "Event loop is
    closed", and the other leaves' read coroutines, failing too, are collected unawaited.
    Both reach ``sys.unraisablehook`` (a traceback on stderr, possibly at exit); every
    other unraisable exception is passed on. Installed once, by the first
    ``open_manager`` (every save and restore opens one), and at start by the command line."""
    previous = sys.unraisablehook
    if getattr(previous, "_rnn_jax_orbax", False):
        return

    def hook(unraisable: Any) -> None:
        value = unraisable.exc_value
        closed = isinstance(value, RuntimeError) and str(value) == "Event loop is closed"
        code = getattr(unraisable.object, "cr_code", None)  # a read coroutine left behind
        orphan = f"{os.sep}orbax{os.sep}" in getattr(code, "co_filename", "")
        if not (closed or orphan):
            previous(unraisable)

    hook._rnn_jax_orbax = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def quiet_orbax_logs() -> None:
    """Orbax logs a failed background write with its traceback, then re-raises the same
    exception from ``wait_until_finished``, where the run reports it in one line; it logs
    an unparsable or vanished ``_CHECKPOINT_METADATA`` (damage, or a step deleted under a
    reader), which a restore reports itself, in one line, if it needs the file; and after a
    failed save or read asyncio reports at garbage collection the other writes or reads
    of it that failed too ("Task exception was never retrieved", "Future exception was
    never retrieved": a checkpoint deleted while a reader reads it fails every leaf).
    Drop those log records."""
    absl.logging.get_absl_logger().addFilter(_not_orbax_failure)
    logging.getLogger("asyncio").addFilter(_not_orbax_task)


_FAILED_METADATA_READS = ("Failed to json parse", "Failed to read Metadata file")


def _not_orbax_failure(record: logging.LogRecord) -> bool:
    if f"{os.sep}orbax{os.sep}" not in record.pathname:
        return True
    message = record.getMessage()
    return not (record.exc_info or message.startswith(_FAILED_METADATA_READS))


def _not_orbax_task(record: logging.LogRecord) -> bool:
    """False for an exception of Orbax's: raised in a task whose coroutine the message
    names, or a future's raised in Orbax's code (its traceback) or by TensorStore on a
    checkpoint's files (no traceback; its text names the OCDBT database)."""
    if not record.exc_info:
        return True
    _, error, trace = record.exc_info
    orbax = f"{os.sep}orbax{os.sep}"
    frames = traceback.extract_tb(trace) if trace is not None else []
    return not (
        orbax in record.getMessage()
        or any(orbax in frame.filename for frame in frames)
        or "OCDBT database" in str(error)
    )


def _read_json(manager: ocp.CheckpointManager, run_dir: Path, step: int, name: str) -> Any:
    value = _read_item(manager, run_dir, step, name, ocp.args.JsonRestore())
    if not isinstance(value, dict):
        raise DamagedCheckpointError(run_dir, step, name, f"{name} is not a JSON object")
    return value


def _line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split()) or repr(err)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _problem(manager: ocp.CheckpointManager, run_dir: Path, step: int) -> str | None:
    """None when ``step`` restores in full and verifies; else what is wrong with it."""
    try:
        _restore_step(manager, run_dir, step, None, None, True, None)
    except NotResumableError:
        return _problem_of_params(manager, run_dir, step)
    except CheckpointError as err:
        return str(err)
    return None


def _problem_of_params(manager: ocp.CheckpointManager, run_dir: Path, step: int) -> str | None:
    try:
        _restore_step(manager, run_dir, step, None, None, False, None)
    except CheckpointError as err:
        return str(err)
    return None


def _newest_intact(
    manager: ocp.CheckpointManager,
    run_dir: Path,
    before: int | None = None,
    exclude: int | None = None,
) -> int | None:
    for s in reversed(_steps(manager)):
        skip = s == exclude or (before is not None and s >= before)
        if not skip and _problem(manager, run_dir, s) is None:
            return s
    return None


def _intact_hint(manager: ocp.CheckpointManager, run_dir: Path, exclude: int) -> str:
    intact = _newest_intact(manager, run_dir, exclude=exclude)
    if intact is None:
        return "; no intact checkpoint remains"
    return f"; the newest intact checkpoint is step {intact}: use --step {intact}"


def _try_meta(manager: ocp.CheckpointManager, run_dir: Path, step: int) -> dict[str, Any] | str:
    """The meta of ``step``, or why it cannot be read."""
    try:
        return _read_json(manager, run_dir, step, "meta")
    except CheckpointError as err:
        return str(err)


def _best(metas: dict[int, dict[str, Any] | str]) -> int | None:
    """The step with the lowest finite recorded ``val_ppl`` (the newest on a tie)."""
    scored = []
    for s, meta in metas.items():
        value = (meta.get("metrics") or {}).get("val_ppl") if isinstance(meta, dict) else None
        if isinstance(value, int | float) and math.isfinite(value):
            scored.append((value, -s))
    return -min(scored)[1] if scored else None


def _check_run_dir(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"checkpoint folder not found: {run_dir}")
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is a file, not a run folder")
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        raise CheckpointError(f"{run_dir} holds no checkpoints/ folder: is it a run folder?")
    if folder.resolve().parent != run_dir.resolve():  # a link out: another run's, maybe
        raise CheckpointError(
            f"{folder} links to {folder.resolve()}, outside the run folder; a run's "
            "checkpoints must lie in its own folder"
        )
    return run_dir


def _open_reader(run_dir: Path) -> ocp.CheckpointManager:
    """A read-only manager; listing is retried while a writer deletes the steps listed."""
    for attempt in range(RESTORE_ATTEMPTS):
        try:
            return open_manager(run_dir, CheckpointConfig(), read_only=True)
        except Exception as err:  # Orbax stats each step it lists
            failure = err
            time.sleep(0.01 * (attempt + 1))
    raise CheckpointError(f"cannot list the checkpoints of {run_dir}: {_line(failure)}")


def _steps(manager: ocp.CheckpointManager) -> list[int]:
    return sorted(manager.all_steps())


def _pick_step(manager: ocp.CheckpointManager, run_dir: Path, step: Step) -> int:
    steps = _steps(manager)
    if not steps:
        raise CheckpointError(f"{run_dir} holds no finished checkpoint")
    if step is None or step == "latest":
        return steps[-1]
    if step == "best":
        best = _best({s: _try_meta(manager, run_dir, s) for s in steps})
        if best is None:
            raise CheckpointError(
                f"no checkpoint of {run_dir} records a validation perplexity; "
                "name a --step or use the latest"
            )
        return best
    if isinstance(step, bool) or not isinstance(step, int):
        raise CheckpointError(f"step must be a number, 'latest' or 'best', got {step!r}")
    if step not in steps:
        raise CheckpointError(
            f"{run_dir} has no checkpoint at step {step}; it has steps {', '.join(map(str, steps))}"
        )
    return step


def _compare(what: str, saved: dict[str, Any], expected: dict[str, Any]) -> None:
    for field in sorted(set(saved) | set(expected)):
        if saved.get(field) != expected.get(field):
            raise CheckpointError(
                f"checkpoint {what} mismatch in {field!r}: saved {saved.get(field)!r}, "
                f"expected {expected.get(field)!r}"
            )


def finished_steps(run_dir: Path) -> list[int]:
    """The steps of ``run_dir`` whose checkpoint Orbax finished (renamed from its
    temporary folder), unverified; ``[]`` when there is none."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir())


def has_checkpoints(run_dir: Path) -> bool:
    return bool(finished_steps(run_dir))
