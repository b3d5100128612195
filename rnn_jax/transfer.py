"""Fine-tuning: a new run's first parameters from another run's checkpoint (char-rnn's
``-init_from``, nanoGPT's ``init_from``).

Shape legend: V source vocabulary, V' target vocabulary, H num_hiddens.

``rnn-jax train --init-from RUN[:STEP] --corpus NEW`` starts a new run folder whose
model is RUN's (its cell and sizes, and its parameters, restored and verified against
their checksums) and whose vocabulary is NEW's. The optimizer state, step, PRNG key and
the init of new tokens are those of a run from scratch with the new run's seed. The
vocabulary lives on three kinds of parameter, found by name, so that every cell whose
layer-0 input weights are named ``W_x...`` is covered, whatever its gates:

    layer_0/W_x*   (V, H)   a row per input token, one matrix per gate
    W_hq           (H, V)   a column per output token
    b_q            (V,)     an entry per output token

A token in both vocabularies keeps its source row (column, entry), a token new to the
target its fresh init, and a token the target lacks is dropped (``transfer_params``).
Every other parameter is the source's as it is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import checkpoint, input_pipeline, run_folder
from rnn_jax.config import ModelConfig, TrainConfig, flag_name
from rnn_jax.data import UNK, Vocab
from rnn_jax.input_pipeline import Dataset
from rnn_jax.model import Params
from rnn_jax.step import TrainState, init_train_state, make_optimizer

# The model fields a fine-tune may set otherwise than its source: they change how the
# parameters train (or, ``scan``, how a linear cell runs over time), not what they are.
TRAINING_ONLY = ("dropout", "compute_dtype", "scan")
FLAG = flag_name(TrainConfig, "init_from")


@dataclass(frozen=True)
class Source:
    """The checkpoint a fine-tune started from and what its vocabulary kept: the
    ``init_from`` section of the run's ``config.json`` (and of its checkpoints' extra)."""

    run: str  # the source run folder, absolute
    step: int  # its checkpoint's step
    sha256: str | None  # ``checkpoint.Restored.sha256`` of that checkpoint
    kept: int  # target tokens found in the source vocabulary, <unk> included
    new: int  # target tokens the source lacks: their weights are the new run's init
    dropped: int  # source tokens the target lacks

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Source:
        return cls(**data)

    def describe(self) -> str:
        sha = self.sha256 or "none (format 1)"
        return (
            f"init from {self.run} step {self.step} (checkpoint sha256 {sha}): "
            f"{self.kept} tokens kept, {self.new} new, {self.dropped} dropped"
        )


# --------------------------------------------------------------------------- the source


def parse(init_from: str) -> tuple[Path, int | str]:
    """``RUN[:STEP|best|latest]`` -> (RUN, step); the latest checkpoint when none is named."""
    head, colon, tail = init_from.rpartition(":")
    if colon and head and (tail.isdigit() or tail in ("best", "latest")):
        return Path(head), int(tail) if tail.isdigit() else tail
    return Path(init_from), "latest"


def restore_source(init_from: str) -> tuple[Path, checkpoint.Restored]:
    """The source run folder and its checkpoint's parameters, verified; anything that
    keeps them from restoring is a ``ValueError`` of one line naming ``--init-from``."""
    run_dir, step = parse(init_from)
    try:
        return run_dir.absolute(), run_folder.restore_own(run_dir, step)
    except checkpoint.DamagedCheckpointError as err:
        intact = checkpoint.newest_intact_step(run_dir)
        hint = "; no intact checkpoint remains" if intact is None else f"; use {run_dir}:{intact}"
        raise ValueError(f"{FLAG} {init_from}: {err.with_hint(hint)}") from None
    except (checkpoint.CheckpointError, FileNotFoundError) as err:
        raise ValueError(f"{FLAG} {init_from}: {err}") from None


def train_fields(
    run_dir: Path, source: checkpoint.Restored, fields: dict[str, Any]
) -> dict[str, Any]:
    """The new run's train fields: the source's token kind unless set (another kind is
    refused), and ``init_from`` resolved to ``RUN:STEP`` (absolute, so that the run's
    config names the checkpoint it started from)."""
    token = source.train_config.token
    if fields.get("token", token) != token:
        raise ValueError(
            f"{flag_name(TrainConfig, 'token')} {fields['token']} differs from the {token} "
            f"tokens of the source run {run_dir}: a fine-tune keeps its token kind"
        )
    return {**fields, "token": token, "init_from": f"{run_dir}:{source.step}"}


def model_config(
    run_dir: Path, source: ModelConfig, fields: dict[str, Any], vocab_size: int
) -> ModelConfig:
    """The fine-tune's model: the source's with the target's vocabulary size, and the
    ``TRAINING_ONLY`` fields as ``fields`` set them. A field set to another value than
    the source's is refused in one line naming every such flag."""
    clashes = [
        f.name
        for f in dataclasses.fields(ModelConfig)
        if f.name in fields
        and f.name not in (*TRAINING_ONLY, "vocab_size")
        and getattr(source, f.name) != fields[f.name]
    ]
    if clashes:
        given = ", ".join(f"{flag_name(ModelConfig, n)} {fields[n]}" for n in clashes)
        saved = ", ".join(f"{n} {getattr(source, n)}" for n in clashes)
        raise ValueError(
            f"{given} contradict{'s' if len(clashes) == 1 else ''} the model of the source "
            f"run {run_dir} ({saved}): a fine-tune keeps its source's model"
        )
    changes = {name: value for name, value in fields.items() if name in TRAINING_ONLY}
    return dataclasses.replace(source, vocab_size=vocab_size, **changes)


# --------------------------------------------------------------------------- the transfer


def vocab_rows(source: Vocab, target: Vocab) -> np.ndarray:
    """``(V',)`` int32: the source id of each target token, -1 where it is new."""
    return np.array([source.token_to_idx.get(t, -1) for t in target.idx_to_token], np.int32)


def vocab_axis(path: tuple[Any, ...]) -> int | None:
    """The axis of the parameter at ``path`` that runs over the vocabulary, or None
    (the module docstring's table)."""
    names = tuple(str(getattr(key, "key", key)) for key in path)
    if len(names) == 2 and names[0] == "layer_0" and names[1].startswith("W_x"):
        return 0
    return {("W_hq",): 1, ("b_q",): 0}.get(names)


def transfer_params(source: Params, fresh: Params, rows: np.ndarray) -> Params:
    """``fresh`` (a model of vocabulary V') with ``source``'s parameters (vocabulary V)
    moved in: along each vocabulary axis, entry ``i`` is the source's entry ``rows[i]``,
    or fresh's where ``rows[i]`` is -1 (``vocab_rows``); every other leaf is the
    source's, whose shape must be fresh's."""
    kept = rows >= 0

    def move(path: tuple[Any, ...], old: jax.Array, new: jax.Array) -> jax.Array:
        axis = vocab_axis(path)
        if axis is None:
            if old.shape != new.shape:
                raise ValueError(
                    f"{jax.tree_util.keystr(path)}: the source's shape {old.shape} is not "
                    f"the target's {new.shape}"
                )
            return old
        taken = jnp.take(old, np.maximum(rows, 0), axis=axis)  # (.., V', ..)
        mask = kept.reshape([-1 if a == axis else 1 for a in range(new.ndim)])
        return jnp.where(mask, taken, new)

    return jax.tree_util.tree_map_with_path(move, source, fresh)


def initial_state(
    run_dir: Path,
    source: checkpoint.Restored,
    model_config: ModelConfig,
    config: TrainConfig,
    dataset: Dataset,
) -> tuple[TrainState, Source]:
    """The fine-tune's step 0: the state ``loop.fit`` would start from with
    ``config.seed`` (``init_train_state``), its parameters moved in from ``source`` and
    its optimizer state made for them; and the ``Source`` record. A target vocabulary
    that shares no token (but ``<unk>``) with the source's is refused."""
    shared = (set(source.vocab.idx_to_token) & set(dataset.vocab.idx_to_token)) - {UNK}
    if not shared:
        where = config.corpus or "the shipped Time Machine"
        raise ValueError(
            f"{where} shares no token with the vocabulary of the source run {run_dir} "
            f"({len(source.vocab)} {config.token} tokens): nothing to fine-tune"
        )
    optimizer = make_optimizer(config, input_pipeline.total_steps(config, dataset))
    key = jax.random.key(config.seed)
    fresh = init_train_state(model_config, optimizer, config.batch_size, key)
    rows = vocab_rows(source.vocab, dataset.vocab)
    params = transfer_params(source.params, fresh.params, rows)
    kept = int((rows >= 0).sum())
    record = Source(
        run=str(run_dir),
        step=source.step,
        sha256=source.sha256,
        kept=kept,
        new=len(rows) - kept,
        dropped=len(source.vocab) - kept,
    )
    return fresh.replace(params=params, opt_state=optimizer.init(params)), record
