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
from rnn_jax.config import OPTIMIZER_HYPERPARAMETERS, SCHEDULES, ModelConfig, TrainConfig
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


def make_optimizer(
    config: TrainConfig, total_steps: int | None = None
) -> optax.GradientTransformation:
    """``chain(clip_by_global_norm(theta), <config.optimizer>)``, its learning rate
    ``config.lr`` times the schedule's factor at each step (``make_schedule``).

    ``total_steps`` is the run's step budget, which the cosine, warmup-cosine and linear
    schedules decay over; ``None`` means ``config.max_steps``, and a ``ValueError`` if
    that is unset too. The optimizer is built with ``optax.inject_hyperparams``: its
    hyperparameters are arrays in the optimizer state, not compile-time constants, so
    they can be read (``current_lr``) and differ between the members of a vmapped
    sweep. The state holds the peak learning rate as ``hyperparams["peak_lr"]`` and the
    schedule's factor at the last update as ``hyperparams["lr_scale"]``; the inner
    optimizer uses their product. With the defaults (sgd, constant) the updates are
    bitwise those of the book's ``chain(clip_by_global_norm(theta), sgd(lr))``.
    """
    if total_steps is None:
        total_steps = config.max_steps
    hyperparams = {
        name: getattr(config, name) for name in OPTIMIZER_HYPERPARAMETERS[config.optimizer]
    }
    scheduled = optax.inject_hyperparams(_optimizer, static_args="name")(
        name=config.optimizer,
        peak_lr=config.lr,
        lr_scale=_schedule_factor(config, total_steps),
        **hyperparams,
    )
    return optax.chain(optax.clip_by_global_norm(config.theta), scheduled)


def _optimizer(
    name: str,
    peak_lr: jax.Array,
    lr_scale: jax.Array,
    momentum: jax.Array | None = None,
    b1: jax.Array | None = None,
    b2: jax.Array | None = None,
    decay: jax.Array | None = None,
    weight_decay: jax.Array | None = None,
) -> optax.GradientTransformation:
    """The optax optimizer ``name`` at learning rate ``peak_lr * lr_scale``."""
    lr = peak_lr * lr_scale
    if name == "sgd":
        return optax.sgd(lr)
    if name == "momentum":
        return optax.sgd(lr, momentum=momentum)
    if name == "adam":
        return optax.adam(lr, b1=b1, b2=b2)
    if name == "adamw":
        return optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay)
    if name == "rmsprop":
        return optax.rmsprop(lr, decay=decay, momentum=momentum)
    raise ValueError(f"optimizer must be one of {tuple(OPTIMIZER_HYPERPARAMETERS)}, got {name!r}")


def current_lr(opt_state: optax.OptState) -> jax.Array:
    """The learning rate ``()`` float32 the last update of ``make_optimizer``'s
    optimizer used (before any update: the rate of the first one)."""
    hyperparams = opt_state[1].hyperparams  # (clip state, inject_hyperparams state)
    return hyperparams["peak_lr"] * hyperparams["lr_scale"]


def make_schedule(config: TrainConfig, total_steps: int | None = None) -> optax.Schedule:
    """The learning rate at each step count ``t`` (0 for the first update), ``T`` =
    ``total_steps``, ``W`` = ``config.warmup_steps``, ``lr`` = ``config.lr``:

    * constant: ``lr``;
    * cosine: ``lr (1 + cos(pi min(t, T) / T)) / 2``, from ``lr`` to 0 at ``T``;
    * warmup-cosine: ``lr t / W`` for ``t < W``, then the cosine from ``lr`` at ``W`` to
      0 at ``T``;
    * linear: ``lr (1 - min(t, T) / T)``.

    The schedules that need ``T`` raise ``ValueError`` when it is ``None``.
    """
    factor = _schedule_factor(config, total_steps)
    if not callable(factor):
        return lambda count: jnp.full((), config.lr * factor, jnp.float32)
    return lambda count: config.lr * factor(count)


def _schedule_factor(config: TrainConfig, total_steps: int | None) -> float | optax.Schedule:
    """``make_schedule`` divided by ``lr``: a unit-peak optax schedule, or 1.0 (constant)."""
    if config.schedule == "constant":
        return 1.0
    if total_steps is None:
        raise ValueError(
            f"schedule {config.schedule!r} needs the step budget: pass total_steps or set max_steps"
        )
    if not (isinstance(total_steps, int) and total_steps > 0):
        raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(1.0, total_steps)
    if config.schedule == "linear":
        return optax.linear_schedule(1.0, 0.0, total_steps)
    if config.schedule == "warmup-cosine":
        if config.warmup_steps >= total_steps:
            raise ValueError(
                f"warmup_steps ({config.warmup_steps}) must be fewer than the {total_steps} "
                "steps of the budget"
            )
        if config.warmup_steps == 0:
            return optax.cosine_decay_schedule(1.0, total_steps)
        return optax.warmup_cosine_decay_schedule(0.0, 1.0, config.warmup_steps, total_steps)
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {config.schedule!r}")


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
    return apply_gradients(state, optimizer, loss, h_T, grads)


def apply_gradients(
    state: TrainState,
    optimizer: optax.GradientTransformation,
    loss: jax.Array,
    hidden: model.State,
    grads: model.Params,
) -> tuple[TrainState, Metrics]:
    """The optimizer's update of ``state`` from ``grads`` (the step after it, the new
    carried ``hidden`` state) and the step's metrics: its ``loss``, the gradient's global
    norm before clipping and the update's norm."""
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
        hidden=hidden,
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
    all-reduce; the mesh is set while tracing, so that the weight gradients are summed
    per device, see ``cells._sum_outer``). Its inputs must be placed so
    (``init_train_state(..., mesh)``, ``parallel.put_batch``, ``parallel.zero_hidden``).
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

    def on_mesh(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # read by cells._sum_outer
            return bound(state, batch)

    return jax.jit(
        on_mesh, donate_argnums=0, in_shardings=(states, (rows, rows)), out_shardings=(states, full)
    )


def evaluate(
    model_config: ModelConfig, params: model.Params, Xs: jax.Array, Ys: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Summed NLL and token count over sequential minibatches ``Xs, Ys`` ``(K, B, T)``,
    carrying the hidden state from zeros across them (a ``lax.scan`` over K)."""
    h0 = model.zero_state(model_config, Xs.shape[1])
    _, nlls = evaluate_from(model_config, params, h0, Xs, Ys)
    return nlls.sum(), jnp.asarray(Ys.size, jnp.int32)


def evaluate_from(
    model_config: ModelConfig, params: model.Params, h: model.State, Xs: jax.Array, Ys: jax.Array
) -> tuple[model.State, jax.Array]:
    """``evaluate``'s scan from the hidden state ``h``: the state after the minibatches
    ``Xs, Ys`` ``(K, B, T)`` and each one's summed NLL ``(K,)``. Evaluation in chunks
    (``readers.evaluate_in_chunks``) calls it on consecutive slices of K, carrying ``h``."""

    def body(h: model.State, batch: Batch) -> tuple[model.State, jax.Array]:
        logits, h = model.apply(model_config, params, batch[0], h)
        return h, total_nll(logits, batch[1])

    return jax.lax.scan(body, h, (Xs, Ys))


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
