"""``rnn-jax export``: a checkpoint's one-step function, serialized with ``jax.export``, so
that the model samples where this package is not installed (only ``jax`` and ``numpy``).

Shape legend: B batch (symbolic: one export serves every batch size), V vocab_size,
H num_hiddens.

    DIR/step.jax        step(tokens: int32[B], state) -> (logits: float32[B, V], state)
    DIR/manifest.json   "vocab" (index -> token), the token kind and preprocessing, the
                        state's leaves (shape per batch row, dtype), the source run and
                        step, the platforms, the sha256 of step.jax

``step`` is ``model.step`` with the parameters baked in as constants. Its ``state`` is the
model's carried state, ``model.zero_state``'s pytree flattened (``jax.tree.leaves``) into
a tuple of ``(B, ...)`` arrays: ``(h,)`` for one rnn or gru layer, ``(h, c)`` for one
LSTM layer, and the layers' leaves one after another when stacked (``(h0, c0, h1, c1)``),
so a new cell exports as it is. A reader starts from zeros of the manifest's shapes,
feeds the prefix one token at a time, then feeds back its own choices (the README's
snippet does this greedily and prints what ``rnn-jax sample`` prints).

The folder appears whole or not at all (``files.write_folder_atomic``); an ``--out``
that holds anything is refused before the checkpoint is read.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from rnn_jax import checkpoint, model, run_folder
from rnn_jax.config import ModelConfig, to_dict
from rnn_jax.files import write_folder_atomic

STEP_FILE = "step.jax"
MANIFEST = "manifest.json"
FORMAT = 1  # of the manifest; bump when its fields change meaning
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what jax.export lowers for

FlatState = tuple[jax.Array, ...]  # model.zero_state's leaves, each (B, ...)


def state_rows(model_config: ModelConfig) -> list[jax.ShapeDtypeStruct]:
    """The carried state's leaves for one batch row: shapes ``(...)`` without the batch
    axis, which must lead every leaf of ``model.zero_state``."""

    def leaves(batch_size: int) -> list[jax.ShapeDtypeStruct]:
        return jax.tree.leaves(jax.eval_shape(lambda: model.zero_state(model_config, batch_size)))

    one, two = leaves(1), leaves(2)
    for a, b in zip(one, two, strict=True):
        if (a.shape[0], b.shape[0]) != (1, 2) or a.shape[1:] != b.shape[1:]:
            raise ValueError(f"the {model_config.cell} state's leaves must lead with the batch")
    return [jax.ShapeDtypeStruct(a.shape[1:], a.dtype) for a in one]


def flat_step(
    model_config: ModelConfig, params: model.Params
) -> Callable[[jax.Array, FlatState], tuple[jax.Array, FlatState]]:
    """``model.step`` with ``params`` closed over and the state flat:
    ``(tokens (B,) int32, state) -> (logits (B, V), state)``."""
    treedef = jax.tree.structure(jax.eval_shape(lambda: model.zero_state(model_config, 1)))

    def step(tokens: jax.Array, state: FlatState) -> tuple[jax.Array, FlatState]:
        new_state, logits = model.step(
            model_config, params, jax.tree.unflatten(treedef, state), tokens
        )
        return logits, tuple(jax.tree.leaves(new_state))

    return step


def export_step(
    model_config: ModelConfig, params: model.Params, platforms: Sequence[str] = ("cpu",)
) -> jax.export.Exported:
    """``flat_step`` traced for a symbolic batch ``B`` and lowered for ``platforms``."""
    (B,) = jax.export.symbolic_shape("B")
    tokens = jax.ShapeDtypeStruct((B,), jnp.int32)
    state = tuple(jax.ShapeDtypeStruct((B, *r.shape), r.dtype) for r in state_rows(model_config))
    step = jax.jit(flat_step(model_config, params))
    return jax.export.export(step, platforms=tuple(platforms))(tokens, state)


def manifest(
    restored: checkpoint.Restored, run_dir: Path, platforms: Sequence[str], step_bytes: bytes
) -> dict[str, Any]:
    """What a reader of ``step.jax`` needs besides it, as JSON."""
    config = restored.train_config
    return {
        "format": FORMAT,
        "vocab": restored.vocab.idx_to_token,
        "token": config.token,
        "preprocess": config.preprocess,
        "state": [
            {"shape": list(r.shape), "dtype": str(r.dtype)}
            for r in state_rows(restored.model_config)
        ],
        "model": to_dict(restored.model_config),
        "source": {"run": str(Path(run_dir).resolve()), "step": restored.step},
        "platforms": list(platforms),
        "jax": jax.__version__,
        "step_sha256": hashlib.sha256(step_bytes).hexdigest(),
    }


def check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
    """``platforms`` without repeats; ``ValueError`` naming an unknown one."""
    if not platforms:
        raise ValueError("name at least one platform")
    for platform in platforms:
        if platform not in PLATFORMS:
            raise ValueError(f"unknown platform {platform!r}; choose from {', '.join(PLATFORMS)}")
    return tuple(dict.fromkeys(platforms))


def check_out(out: Path) -> None:
    """Refuse an export folder that exists and is not an empty folder."""
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        what = "is not a folder" if not out.is_dir() else "is not empty"
        raise ValueError(f"export folder {out} {what}; name a new --out")


def export_checkpoint(
    run_dir: Path,
    out: Path,
    *,
    step: checkpoint.Step = None,
    platforms: Sequence[str] = ("cpu",),
    echo: Callable[[str], None] = print,
) -> int:
    """``rnn-jax export``: checkpoint ``step`` of ``run_dir`` (``checkpoint.restore``'s
    choice: a number, ``best`` or ``latest``) as ``out/step.jax`` and ``out/manifest.json``.

    The platforms and ``out`` are checked before anything is read, the checkpoint is
    verified as it is restored, and ``out`` is written whole or not at all.
    """
    platforms = check_platforms(platforms)
    out = Path(out)
    check_out(out)
    started = time.perf_counter()
    restored = run_folder.restore_own(run_dir, step)
    step_bytes = bytes(export_step(restored.model_config, restored.params, platforms).serialize())
    about = manifest(restored, run_dir, platforms, step_bytes)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_folder_atomic(
        out,
        {STEP_FILE: step_bytes, MANIFEST: json.dumps(about, indent=1, ensure_ascii=False) + "\n"},
    )
    m = restored.model_config
    echo(
        f"exported step {restored.step} of {run_dir} ({m.cell} x{m.num_layers}, H "
        f"{m.num_hiddens}, V {m.vocab_size}) for {', '.join(platforms)} in "
        f"{time.perf_counter() - started:.2f} s: {out / STEP_FILE} ({len(step_bytes):,} "
        f"bytes), {out / MANIFEST}"
    )
    return 0
