"""The jitted units of work: one training step, and evaluation over a split.

Shape legend: K minibatches, B batch, T num_steps, H num_hiddens.

``train_step`` is pure: ``(TrainState, (X, Y)) -> (TrainState, metrics)``. Nothing in it
logs, prints or reads the host, and it reduces over the batch axis with ordinary
``mean``/``sum``, so the same function runs data-parallel when its inputs are sharded
over a device mesh along B. ``make_train_step`` jits it once, donating the state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from rnn_jax import model, parallel
from rnn_jax.config import ModelConfig, TrainConfig
from rnn_jax.loss import cross_entropy, total_nll

Batch = tuple[jax.Array, jax.Array]  # (X, Y), each (B, T) int32
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # () int32: optimizer steps taken; the data position derives from it
    params: model.Params
    opt_state: optax.OptState
    hidden: model.State  # (B, H), (H, C) or one per layer: carried across minibatches
    key: jax.Array  # PRNG key; step k uses fold_in(key, k)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The book's update: clip the gradient to global norm ``theta``, then SGD."""
    return optax.chain(optax.clip_by_global_norm(config.theta), optax.sgd(config.lr))


def init_train_state(
    model_config: ModelConfig,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    key: jax.Array,
    mesh: Mesh | None = None,
) -> TrainState:
    """Step 0: params from ``key``, the optimizer's state, a zero hidden state ``(B, H)``.

    On ``mesh`` the arrays are made in place by ``parallel.state_shardings`` (the hidden
    state split by rows, the rest replicated), on every process at once.
    """
    if mesh is not None:
        parallel.check_batch(batch_size, mesh)
        init = functools.partial(init_train_state, model_config, optimizer, batch_size)
        shardings = parallel.state_shardings(jax.eval_shape(init, key), mesh)
        return jax.jit(init, out_shardings=shardings)(key)
    init_key, state_key = jax.random.split(key)
    params = model.init(model_config, init_key)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        hidden=model.zero_state(model_config, batch_size),
        key=state_key,
    )


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    model_config: ModelConfig,
    optimizer: optax.GradientTransformation,
    carry_hidden: bool,
) -> tuple[TrainState, Metrics]:
    """One truncated-BPTT update on ``batch``.

    With ``carry_hidden`` (the sequential partition) the step starts from the state the
    previous minibatch ended in, cut from the gradient by ``stop_gradient``; otherwise
    (random partition) from zeros.
    """
    X, Y = batch
    if carry_hidden:
        h0 = jax.lax.stop_gradient(state.hidden)
    else:
        h0 = jax.tree.map(jnp.zeros_like, state.hidden)  # a pytree for the LSTM and stacks
    dropout_key = jax.random.fold_in(state.key, state.step)

    def loss_fn(params: model.Params) -> tuple[jax.Array, model.Hidden]:
        logits, h_T = model.apply(model_config, params, X, h0, key=dropout_key)
        return cross_entropy(logits, Y), h_T

    (loss, h_T), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
        hidden=h_T,
    )
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),  # before clipping
        "update_norm": optax.tree.norm(updates),
    }
    return new_state, metrics


def make_train_step(
    model_config: ModelConfig,
    optimizer: optax.GradientTransformation,
    carry_hidden: bool,
    mesh: Mesh | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """``train_step`` with its configuration bound, jitted with the state donated.

    On ``mesh`` the same function is jitted with the shardings of ``parallel``: the state
    as ``state_shardings`` in and out, the batch ``(B, T)`` split by rows, the metrics
    replicated; XLA partitions the step (the gradients' mean over B becomes an
    all-reduce). Its inputs must be placed so (``init_train_state(..., mesh)``,
    ``parallel.put_batch``, ``parallel.zero_hidden``).
    """

    def bound(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        return train_step(
            state, batch, model_config=model_config, optimizer=optimizer, carry_hidden=carry_hidden
        )

    if mesh is None:
        return jax.jit(bound, donate_argnums=0)
    init = functools.partial(init_train_state, model_config, optimizer, 1)
    states = parallel.state_shardings(jax.eval_shape(init, jax.random.key(0)), mesh)
    rows, full = parallel.data_sharding(mesh), parallel.replicated(mesh)
    return jax.jit(
        bound, donate_argnums=0, in_shardings=(states, (rows, rows)), out_shardings=(states, full)
    )


def evaluate(
    model_config: ModelConfig, params: model.Params, Xs: jax.Array, Ys: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Summed NLL and token count over sequential minibatches ``Xs, Ys`` ``(K, B, T)``,
    carrying the hidden state from zeros across them (a ``lax.scan`` over K)."""

    def body(h: model.Hidden, batch: Batch) -> tuple[model.Hidden, jax.Array]:
        logits, h = model.apply(model_config, params, batch[0], h)
        return h, total_nll(logits, batch[1])

    h0 = model.zero_state(model_config, Xs.shape[1])
    _, nlls = jax.lax.scan(body, h0, (Xs, Ys))
    return nlls.sum(), jnp.asarray(Ys.size, jnp.int32)


def make_evaluate(model_config: ModelConfig, mesh: Mesh | None = None) -> Callable[..., Any]:
    """``evaluate`` jitted for ``model_config``: ``(params, Xs, Ys) -> (nll_sum, num_tokens)``.

    On ``mesh`` it runs where its inputs are (replicated params, ``Xs, Ys`` placed by
    ``parallel.put_eval_batches``: split along B) and returns replicated scalars, which
    every process can read.
    """
    fn = functools.partial(evaluate, model_config)
    if mesh is None:
        return jax.jit(fn)
    return jax.jit(fn, out_shardings=parallel.replicated(mesh))
