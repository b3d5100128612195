"""Optimizers, schedules and inits: ``step.make_optimizer``, ``step.make_schedule`` and
``ModelConfig.init``.

Shape legend: B batch, T num_steps, V vocab_size, H num_hiddens.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rnn_jax import checkpoint, model, step
from rnn_jax.config import ModelConfig, TrainConfig
from rnn_jax.data import Vocab

VOCAB = Vocab("abcdefg")  # 7 letters and <unk>: V = 8
B, T, H = 2, 5, 8
PAIRS = [  # each optimizer with one schedule
    ("sgd", "constant"),
    ("momentum", "cosine"),
    ("adam", "warmup-cosine"),
    ("adamw", "linear"),
    ("rmsprop", "cosine"),
]


def _batches(num: int, seed: int = 0) -> list[tuple[jax.Array, jax.Array]]:
    """``num`` minibatches ``(X, Y)``, each ``(B, T)`` int32 ids in ``[0, V)``."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, len(VOCAB), (num, 2, B, T), dtype=np.int32)
    return [(jnp.asarray(x), jnp.asarray(y)) for x, y in tokens]


def _tree_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _old_book_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """``make_optimizer`` as it was before schedules: the reference of the default."""
    return optax.chain(optax.clip_by_global_norm(config.theta), optax.sgd(config.lr))


# ------------------------------------------------------------------ resume, checkpoints


@pytest.mark.parametrize(("optimizer", "schedule"), PAIRS)
def test_resume_from_checkpoint_is_bitwise(tmp_path, optimizer, schedule):
    """N steps straight == N/2 steps, save, restore (``for_training``), N/2 more."""
    N = 6
    warmup = {"warmup_steps": 2} if schedule == "warmup-cosine" else {}
    train_config = TrainConfig(
        optimizer=optimizer, schedule=schedule, lr=0.1, max_steps=N, batch_size=B, **warmup
    )
    model_config = ModelConfig(vocab_size=len(VOCAB), num_hiddens=H)
    optimizer_ = step.make_optimizer(train_config)  # total_steps = max_steps
    train_step = step.make_train_step(model_config, optimizer_, carry_hidden=True)
    batches = _batches(N)

    def fresh() -> step.TrainState:
        return step.init_train_state(model_config, optimizer_, B, jax.random.key(1))

    straight = fresh()
    for batch in batches:
        straight, _ = train_step(straight, batch)

    half = fresh()
    for batch in batches[: N // 2]:
        half, _ = train_step(half, batch)
    saved = jax.device_get(half)  # host copies: the next step donates ``half``
    manager = checkpoint.open_manager(tmp_path, checkpoint.CheckpointConfig(keep_best=False))
    checkpoint.save(
        manager,
        half,
        epoch=0,
        model_config=model_config,
        train_config=train_config,
        vocab=VOCAB,
    )
    checkpoint.close(manager)
    resumed = checkpoint.restore(tmp_path, for_training=True).state
    _tree_equal(resumed.opt_state, saved.opt_state)
    _tree_equal(resumed.params, saved.params)
    for batch in batches[N // 2 :]:
        resumed, _ = train_step(resumed, batch)

    _tree_equal(resumed.params, straight.params)
    _tree_equal(resumed.opt_state, straight.opt_state)
    assert int(resumed.step) == N


def test_optimizer_state_differs_per_optimizer():
    """Each optimizer has its own state pytree (so a restore must rebuild the right one)."""
    params = {"w": jnp.ones((3,))}
    structures = {
        name: jax.tree.structure(step.make_optimizer(TrainConfig(optimizer=name)).init(params))
        for name in ("sgd", "momentum", "adam", "adamw", "rmsprop")
    }
    assert len(set(structures.values())) == len(structures)


# ------------------------------------------------------------------ the chain


def test_clip_comes_before_the_optimizer():
    """A gradient of global norm 10 with theta 1: Adam's first moment after one step is
    (1 - b1) times the clipped gradient, the gradient / 10."""
    config = TrainConfig(optimizer="adam", lr=1e-3, theta=1.0)
    grads = {"a": jnp.array([6.0, 0.0]), "b": jnp.array([[0.0, 8.0]])}  # norm 10
    optimizer = step.make_optimizer(config)
    params = jax.tree.map(jnp.zeros_like, grads)
    _, state = optimizer.update(grads, optimizer.init(params), params)
    mu = state[1].inner_state[0].mu  # (clip, inject_hyperparams(adam: (scale_by_adam, lr)))
    expected = jax.tree.map(lambda g: (1 - config.b1) * g / 10, grads)
    for name in grads:
        np.testing.assert_allclose(mu[name], expected[name], rtol=1e-6)


@pytest.mark.parametrize("lr", [1.0, 0.37])
def test_sgd_default_is_bitwise_the_book_chain(lr):
    """The jitted updates of sgd with the constant schedule equal those of
    ``chain(clip_by_global_norm(theta), sgd(lr))`` bit for bit, clipped or not."""
    config = TrainConfig(lr=lr, theta=1.0)
    rng = np.random.default_rng(0)
    params = {"W": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32), "b": jnp.zeros((3,))}
    ours, old = step.make_optimizer(config), _old_book_optimizer(config)
    p_ours, p_old = params, params
    s_ours, s_old = ours.init(params), old.init(params)

    @jax.jit
    def apply(p_ours, s_ours, p_old, s_old, grads):
        u_ours, s_ours = ours.update(grads, s_ours, p_ours)
        u_old, s_old = old.update(grads, s_old, p_old)
        p_ours, p_old = optax.apply_updates(p_ours, u_ours), optax.apply_updates(p_old, u_old)
        return u_ours, p_ours, s_ours, u_old, p_old, s_old

    for k in range(4):
        scale = 10.0 if k % 2 else 0.05  # clipped, then not
        grads = jax.tree.map(
            lambda x, scale=scale: jnp.asarray(scale * rng.standard_normal(x.shape), jnp.float32),
            params,
        )
        u_ours, p_ours, s_ours, u_old, p_old, s_old = apply(p_ours, s_ours, p_old, s_old, grads)
        _tree_equal(u_ours, u_old)
        _tree_equal(p_ours, p_old)
    assert float(step.current_lr(s_ours)) == np.float32(lr)


def test_sgd_default_train_step_is_bitwise_the_book_chain():
    """Three book train steps (rnn, sequential) with either optimizer: the same bits."""
    config = TrainConfig()
    model_config = ModelConfig(vocab_size=len(VOCAB), num_hiddens=H)
    results = []
    for optimizer in (step.make_optimizer(config), _old_book_optimizer(config)):
        state = step.init_train_state(model_config, optimizer, B, jax.random.key(0))
        train_step = step.make_train_step(model_config, optimizer, carry_hidden=True)
        for batch in _batches(3, seed=1):
            state, _ = train_step(state, batch)
        results.append((state.params, state.hidden))
    _tree_equal(*results)


# ------------------------------------------------------------------ schedules


def _by_hand(schedule: str, lr: float, t: int, total: int, warmup: int) -> float:
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * (1 + math.cos(math.pi * min(t, total) / total)) / 2
    if schedule == "linear":
        return lr * (1 - min(t, total) / total)
    if t < warmup:  # warmup-cosine
        return lr * t / warmup
    return lr * (1 + math.cos(math.pi * min(t - warmup, total - warmup) / (total - warmup))) / 2


@pytest.mark.parametrize("schedule", ["constant", "cosine", "warmup-cosine", "linear"])
def test_schedule_matches_its_formula(schedule):
    """``make_schedule`` at chosen steps, and the rate each update of the optimizer used
    (``current_lr`` after update t + 1), against the formulas written out."""
    total, warmup, lr = 20, 5, 0.5
    extra = {"warmup_steps": warmup} if schedule == "warmup-cosine" else {}
    config = TrainConfig(optimizer="momentum", schedule=schedule, lr=lr, **extra)
    lr_at = step.make_schedule(config, total)
    for t in (0, 1, 3, 5, 7, 10, 19, 20, 25):
        expected = _by_hand(schedule, lr, t, total, warmup)
        np.testing.assert_allclose(float(lr_at(t)), expected, rtol=1e-6, atol=1e-7)

    optimizer = step.make_optimizer(config, total)
    params = {"w": jnp.ones((2,))}
    state = optimizer.init(params)
    update = jax.jit(optimizer.update)
    seen = []
    for _ in range(total + 2):
        _, state = update(params, state, params)
        seen.append(float(step.current_lr(state)))
    expected = [_by_hand(schedule, lr, t, total, warmup) for t in range(total + 2)]
    np.testing.assert_allclose(seen, expected, rtol=1e-6, atol=1e-7)


def test_peak_lr_lives_in_the_state():
    """The learning rate is state, not a compile-time constant: one compiled update,
    vmapped over two members with different peak rates, scales each by its own."""
    optimizer = step.make_optimizer(TrainConfig(schedule="cosine", lr=1.0), total_steps=4)
    params = {"w": jnp.ones((2, 3))}
    states = jax.vmap(lambda _: optimizer.init(params))(jnp.arange(2))
    hyperparams = states[1].hyperparams
    hyperparams["peak_lr"] = jnp.array([1.0, 0.25])
    grads = jax.tree.map(lambda x: jnp.stack([x, x]), {"w": jnp.full((2, 3), 0.1)})
    updates, states = jax.vmap(lambda g, s: optimizer.update(g, s))(grads, states)
    np.testing.assert_allclose(updates["w"][:, 0, 0], [-0.1, -0.025], rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(step.current_lr)(states), [1.0, 0.25])


def test_schedules_refuse_a_missing_or_short_budget():
    for schedule in ("cosine", "warmup-cosine", "linear"):
        config = TrainConfig(schedule=schedule)
        with pytest.raises(ValueError, match="total_steps"):
            step.make_schedule(config)
        with pytest.raises(ValueError, match="total_steps"):
            step.make_optimizer(config)
    step.make_optimizer(TrainConfig(schedule="linear", max_steps=10))  # the budget from the config
    with pytest.raises(ValueError, match="warmup_steps"):
        step.make_optimizer(TrainConfig(schedule="warmup-cosine", warmup_steps=10), 10)
    with pytest.raises(ValueError, match="total_steps"):
        step.make_schedule(TrainConfig(schedule="cosine"), 0)


# ------------------------------------------------------------------ config checks


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"optimizer": "adam", "momentum": 0.9}, "momentum does not apply"),
        ({"optimizer": "sgd", "b1": 0.9}, "b1 does not apply"),
        ({"schedule": "warmup-cosine", "warmup_steps": -1}, "warmup_steps"),
        ({"schedule": "constant", "warmup_steps": 10}, "warmup_steps applies"),
        ({"optimizer": "adam", "b2": 1.0}, "b2 must be in"),
        ({"optimizer": "lamb"}, "optimizer must be one of"),
        ({"schedule": "step"}, "schedule must be one of"),
    ],
)
def test_config_refuses_bad_values(fields, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**fields)


def test_config_fills_the_optimizer_defaults():
    config = TrainConfig(optimizer="adamw")
    assert (config.b1, config.b2, config.weight_decay, config.momentum) == (0.9, 0.999, 1e-4, None)


# ------------------------------------------------------------------ inits


def _book_init(config: ModelConfig, key: jax.Array) -> model.Params:
    """``model.init`` as it was before ``init=uniform``: the reference of ``normal``."""
    gates = {"rnn": "h", "gru": "zrh", "lstm": "ifoc"}[config.cell]
    V, H, sigma = config.vocab_size, config.num_hiddens, config.sigma
    *layer_keys, k_hq = jax.random.split(key, config.num_layers + 1)
    params = {}
    for l, layer_key in enumerate(layer_keys):
        layer = {}
        for gate, k in zip(gates, jax.random.split(layer_key, len(gates)), strict=True):
            k_x, k_h = jax.random.split(k)
            layer[f"W_x{gate}"] = sigma * jax.random.normal(k_x, (V if l == 0 else H, H))
            layer[f"W_h{gate}"] = sigma * jax.random.normal(k_h, (H, H))
            layer[f"b_{gate}"] = jnp.zeros((H,))
        params[f"layer_{l}"] = layer
    params["W_hq"] = sigma * jax.random.normal(k_hq, (H, V))
    params["b_q"] = jnp.zeros((V,))
    return params


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_normal_init_is_unchanged(cell):
    config = ModelConfig(vocab_size=11, num_hiddens=6, cell=cell, num_layers=2, sigma=0.05)
    _tree_equal(model.init(config, jax.random.key(3)), _book_init(config, jax.random.key(3)))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_uniform_init_is_pytorchs(cell):
    """Every weight and bias, the head's too, ~ U(-1/sqrt(H), 1/sqrt(H)): inside the
    bounds, spread over them (std ~ bound / sqrt(3)), no bias left at zero."""
    H = 64
    config = ModelConfig(vocab_size=30, num_hiddens=H, cell=cell, init="uniform")
    params = model.init(config, jax.random.key(0))
    assert jax.tree.structure(params) == jax.tree.structure(_book_init(config, jax.random.key(0)))
    bound = 1 / math.sqrt(H)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in leaves:
        x = np.asarray(leaf)
        assert x.dtype == np.float32, path
        assert np.all(np.abs(x) <= bound), path
        assert np.abs(x).max() > 0.9 * bound, path
    values = np.concatenate([np.asarray(leaf).ravel() for _, leaf in leaves])
    np.testing.assert_allclose(values.std(), bound / math.sqrt(3), rtol=0.02)
    np.testing.assert_allclose(values.mean(), 0, atol=0.01 * bound)
