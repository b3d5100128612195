"""Orbax checkpoints of a run: resume training exactly, or restore a model to sample.

A run folder holds ``checkpoints/<step>/`` written by one ``ocp.CheckpointManager``.
Each checkpoint has three items:

* ``params``: the parameter pytree, all that sampling and evaluation need;
* ``train``: the rest of the train state (optimizer state, step, carried hidden state,
  PRNG key data), needed only to resume;
* ``meta``: JSON with the model and train configs, the vocabulary and the parameter
  shapes and dtypes, so that a checkpoint alone rebuilds the model (no pickle).

Orbax writes each checkpoint into a temporary folder and renames it when complete, so
a process killed mid-save leaves the previous checkpoints intact. Saves are
asynchronous; a write error surfaces as ``CheckpointWriteError`` at the next ``save``
or at ``close``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from rnn_jax import model
from rnn_jax.config import ModelConfig, TrainConfig, from_dict, to_dict
from rnn_jax.data import Vocab
from rnn_jax.step import TrainState, init_train_state, make_optimizer

CHECKPOINTS = "checkpoints"
FORMAT = 1  # bump when the layout of the items changes


class CheckpointError(ValueError):
    """A checkpoint that is missing, unfinished, or does not match what is asked of it."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (full disk, permissions...); the ones written
    before it are intact. Saves are asynchronous, so a failure surfaces at the next
    ``save`` or at ``close``."""


@dataclass(frozen=True)
class CheckpointConfig:
    save_every: int = 10  # save every this many epochs (and always at the end)
    keep: int = 3  # keep the latest this many checkpoints
    keep_best: bool = True  # also keep the one with the best validation perplexity

    def __post_init__(self) -> None:
        if self.save_every <= 0 or self.keep <= 0:
            raise ValueError(
                f"save_every and keep must be positive, got {self.save_every} and {self.keep}"
            )


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
    corpus: dict | None = None
    extra: dict | None = None


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir).absolute() / CHECKPOINTS


def open_manager(
    run_dir: Path, config: CheckpointConfig, *, read_only: bool = False
) -> ocp.CheckpointManager:
    """The run's manager. Keeps the latest ``keep`` checkpoints and, with ``keep_best``,
    the best by validation perplexity as well: the latest is never deleted, so a resume
    never goes backwards."""
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
    )
    return ocp.CheckpointManager(checkpoint_dir(run_dir), options=options)


def params_spec(params: model.Params) -> dict[str, list[Any]]:
    """``{path: [shape, dtype]}`` of every leaf, as stored in the metadata."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(path): [list(leaf.shape), str(leaf.dtype)] for path, leaf in flat}


def save(
    manager: ocp.CheckpointManager,
    state: TrainState,
    *,
    epoch: int,
    model_config: ModelConfig,
    train_config: TrainConfig,
    vocab: Vocab,
    metrics: dict[str, float] | None = None,
    corpus: dict | None = None,
    extra: dict | None = None,
) -> None:
    """Queue an asynchronous save of ``state`` at its step.

    The arrays are copied to host memory first: the train step donates (reuses) the
    device buffers of the state it is given, and the write finishes in the background.
    """
    step = int(state.step)
    host = jax.device_get(
        {
            "params": state.params,
            "train": {
                "opt_state": state.opt_state,
                "step": state.step,
                "hidden": state.hidden,
                "key": jax.random.key_data(state.key),
            },
        }
    )
    host = jax.tree.map(np.array, host)  # own copies, never views of device buffers
    meta = {
        "format": FORMAT,
        "step": step,
        "epoch": epoch,
        "model": to_dict(model_config),
        "train": to_dict(train_config),
        "vocab": json.loads(vocab.to_json()),
        "params_spec": params_spec(host["params"]),
        "corpus": corpus,
        "extra": extra,
    }
    usable = metrics if metrics and metrics.get("val_ppl") is not None else None
    try:  # Orbax first waits for the previous save, and re-raises its error here
        manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(host["params"]),
                train=ocp.args.StandardSave(host["train"]),
                meta=ocp.args.JsonSave(meta),
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


def read_meta(run_dir: Path, step: int | None = None) -> tuple[int, dict[str, Any]]:
    """The metadata of checkpoint ``step`` (the latest when None) of ``run_dir``."""
    manager = _open_existing(run_dir)
    with manager:
        step = _pick_step(manager, run_dir, step)
        return step, manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"
        ]


def restore(
    run_dir: Path,
    *,
    step: int | None = None,
    expect_model: ModelConfig | None = None,
    expect_vocab: Vocab | None = None,
    for_training: bool = False,
) -> Restored:
    """Restore checkpoint ``step`` (the latest when None) of ``run_dir``.

    The saved metadata is checked first: against ``expect_model`` and ``expect_vocab``
    when given, and the saved parameter shapes and dtypes against those the saved model
    config produces. A mismatch raises ``CheckpointError`` naming the field, the saved
    value and the expected one; nothing is restored partially or cast. With
    ``for_training`` the optimizer state, hidden state and key are restored too.
    """
    manager = _open_existing(run_dir)
    with manager:
        step = _pick_step(manager, run_dir, step)
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if meta.get("format") != FORMAT:
            raise CheckpointError(
                f"checkpoint {step} of {run_dir} has format {meta.get('format')}, expected {FORMAT}"
            )
        model_config = from_dict(ModelConfig, meta["model"])
        train_config = from_dict(TrainConfig, {"preprocess": "book", **meta["train"]})
        vocab = Vocab.from_json(json.dumps(meta["vocab"]))
        if expect_model is not None:
            _compare("model", to_dict(model_config), to_dict(expect_model))
        if expect_vocab is not None and vocab != expect_vocab:
            _compare("vocab", {"tokens": vocab.idx_to_token}, {"tokens": expect_vocab.idx_to_token})
        optimizer = make_optimizer(train_config)
        abstract = jax.eval_shape(
            lambda: init_train_state(
                model_config, optimizer, train_config.batch_size, jax.random.key(0)
            )
        )
        # Where each restored array goes: one device for now; a mesh later.
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract
        )
        _compare("params", meta["params_spec"], params_spec(abstract.params))
        items = {"params": ocp.args.StandardRestore(abstract.params)}
        if for_training:
            items["train"] = ocp.args.StandardRestore(
                {
                    "opt_state": abstract.opt_state,
                    "step": abstract.step,
                    "hidden": abstract.hidden,
                    "key": jax.eval_shape(jax.random.key_data, abstract.key),
                }
            )
        restored = manager.restore(step, args=ocp.args.Composite(**items))
    state = None
    if for_training:
        train = restored["train"]
        state = TrainState(
            step=jnp.asarray(train["step"], jnp.int32),
            params=restored["params"],
            opt_state=train["opt_state"],
            hidden=train["hidden"],
            key=jax.random.wrap_key_data(jnp.asarray(train["key"])),
        )
    return Restored(
        step=step,
        epoch=int(meta["epoch"]),
        model_config=model_config,
        train_config=train_config,
        vocab=vocab,
        params=restored["params"],
        state=state,
        corpus=meta.get("corpus"),
        extra=meta.get("extra"),
    )


def _open_existing(run_dir: Path) -> ocp.CheckpointManager:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"checkpoint folder not found: {run_dir}")
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is a file, not a run folder")
    if not checkpoint_dir(run_dir).is_dir():
        raise CheckpointError(f"{run_dir} holds no checkpoints/ folder: is it a run folder?")
    return open_manager(run_dir, CheckpointConfig(), read_only=True)


def _pick_step(manager: ocp.CheckpointManager, run_dir: Path, step: int | None) -> int:
    steps = sorted(manager.all_steps())
    if not steps:
        raise CheckpointError(f"{run_dir} holds no finished checkpoint")
    if step is None:
        return steps[-1]
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


# shims
def has_checkpoints(run_dir) -> bool:
    d = checkpoint_dir(run_dir)
    return d.is_dir() and any(p.name.isdigit() for p in d.iterdir())


def steps_after(run_dir, step):
    d = checkpoint_dir(run_dir)
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and int(p.name) > step)


def drop_steps_from(manager, run_dir, step):
    for s in manager.all_steps():
        if s >= step:
            manager.delete(s)
