"""Training (D2L 9.5.3): clipping, truncated BPTT, perplexity, the compiled step, fit."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import signal
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rnn_jax import actions, data, input_pipeline, loop, loss, model, run_folder, step
from rnn_jax import config as config_lib
from rnn_jax.config import ModelConfig, RunConfig, TrainConfig

V, H, B, T = 11, 16, 4, 6
MODEL = ModelConfig(vocab_size=V, num_hiddens=H, sigma=0.3)
SGD = (0.5, 1e6)  # (lr, theta): theta far above any gradient norm here, so no clipping
CLIP = (100.0, 1e-3)  # theta far below: every step clips; a large lr keeps the update
# far above the float32 rounding of the params, so (old - new) / lr is exact enough


def _batch(seed: int, batch: int = B, steps: int = T) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    X, Y = rng.integers(0, V, (2, batch, steps))
    return jnp.asarray(X, jnp.int32), jnp.asarray(Y, jnp.int32)


@functools.cache
def _optimizer(lr: float, theta: float) -> optax.GradientTransformation:
    return step.make_optimizer(TrainConfig(lr=lr, theta=theta))


@functools.cache
def _jit_step(lr: float, theta: float, carry_hidden: bool):
    """train_step jitted (once per setting) without donation, so inputs stay readable."""
    return jax.jit(
        functools.partial(
            step.train_step,
            model_config=MODEL,
            optimizer=_optimizer(lr, theta),
            carry_hidden=carry_hidden,
        )
    )


@pytest.fixture
def make_state(random_params):
    """``make_state(lr, theta, seed=0)``: a TrainState at step 0 with host-made params."""

    def make(lr: float, theta: float, seed: int = 0) -> step.TrainState:
        params = random_params(MODEL, seed=seed, bias_scale=0.1)
        return step.TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=_optimizer(lr, theta).init(params),
            hidden=jnp.zeros((B, H)),
            key=jax.random.key(seed),
        )

    return make


@jax.jit
def _reference_loss_and_grads(params, X, Y, h0):
    """The book's objective: mean cross-entropy of apply from h0, and its gradient."""

    def f(p):
        logits, h_T = model.apply(MODEL, p, X, h0)
        return loss.cross_entropy(logits, Y), h_T

    return jax.value_and_grad(f, has_aux=True)(params)


def _global_norm(tree) -> float:
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in tree)))


# --------------------------------------------------------------------------- the step


@pytest.mark.filterwarnings("error")
def test_train_step_emits_no_warnings(make_state):
    """Tracing the train step must not warn (pytest runs with filterwarnings = error).
    Regression: optax.global_norm warns DeprecationWarning in optax 0.2.8; use tree.norm."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jax.eval_shape(
            functools.partial(
                step.train_step,
                model_config=MODEL,
                optimizer=_optimizer(*SGD),
                carry_hidden=True,
            ),
            make_state(*SGD),
            _batch(0),
        )


def test_clipping_bounds_the_update(make_state):
    """Gradient clipping (D2L 9.5.3): a raw gradient norm > theta gives an update of
    norm theta along the gradient; update_norm/grad_norm metrics report both."""
    lr, theta = CLIP
    state = make_state(lr, theta)
    X, Y = _batch(1)
    (_, _), grads = _reference_loss_and_grads(state.params, X, Y, jnp.zeros((B, H)))
    grads = jax.tree.map(np.asarray, grads)
    raw_norm = _global_norm(jax.tree.leaves(grads))
    assert raw_norm > 10 * theta  # the setup really clips

    new_state, metrics = _jit_step(lr, theta, False)(state, (X, Y))
    update = jax.tree.map(
        lambda old, new: (np.asarray(old, np.float64) - np.asarray(new, np.float64)) / lr,
        state.params,
        new_state.params,
    )
    update_norm = _global_norm(jax.tree.leaves(update))
    assert update_norm <= theta * (1 + 1e-5)
    assert update_norm == pytest.approx(theta, rel=1e-4)
    assert float(metrics["grad_norm"]) == pytest.approx(raw_norm, rel=1e-5)
    assert float(metrics["grad_norm"]) > theta
    assert float(metrics["update_norm"]) == pytest.approx(lr * theta, rel=1e-4)
    clipped = jax.tree.map(lambda g: g * (theta / raw_norm), grads)
    chex.assert_trees_all_close(update, clipped, rtol=1e-4, atol=1e-9)


def test_large_theta_update_is_plain_sgd(make_state):
    """Control: with theta above the gradient norm, the update is exactly lr * grad."""
    lr, theta = SGD
    state = make_state(lr, theta)
    X, Y = _batch(1)
    (ref_loss, _), grads = _reference_loss_and_grads(state.params, X, Y, jnp.zeros((B, H)))
    new_state, metrics = _jit_step(lr, theta, False)(state, (X, Y))
    expected = jax.tree.map(lambda p, g: np.asarray(p) - lr * np.asarray(g), state.params, grads)
    chex.assert_trees_all_close(new_state.params, expected, rtol=1e-6, atol=1e-7)
    assert float(metrics["loss"]) == pytest.approx(float(ref_loss), rel=1e-6)
    assert float(metrics["grad_norm"]) == pytest.approx(
        _global_norm(jax.tree.leaves(grads)), rel=1e-5
    )
    assert float(metrics["update_norm"]) == pytest.approx(
        lr * float(metrics["grad_norm"]), rel=1e-5
    )
    assert int(new_state.step) == int(state.step) + 1


def test_random_partition_starts_from_zeros(make_state):
    """Without carry_hidden (random partition) every step starts from zeros, whatever
    state.hidden holds; the returned hidden is the state after the minibatch."""
    h = jnp.asarray(0.7 * np.random.default_rng(9).standard_normal((B, H)), jnp.float32)
    state = make_state(*SGD)
    zeros = jnp.zeros((B, H))
    X, Y = _batch(1)
    reset = _jit_step(*SGD, False)
    r1, n1 = reset(state.replace(hidden=h), (X, Y))
    r0, n0 = reset(state, (X, Y))
    chex.assert_trees_all_equal((r1.params, r1.hidden, n1), (r0.params, r0.hidden, n0))
    (loss_zero, h_zero), _ = _reference_loss_and_grads(state.params, X, Y, zeros)
    assert float(n1["loss"]) == pytest.approx(float(loss_zero), rel=1e-6)
    chex.assert_trees_all_close(r1.hidden, h_zero, rtol=1e-6, atol=1e-6)
    # Not vacuous: starting from h would give another loss.
    (loss_h, _), _ = _reference_loss_and_grads(state.params, X, Y, h)
    assert abs(float(loss_h) - float(loss_zero)) > 1e-4


def test_gradient_stops_at_minibatch_boundary(make_state):
    """Truncated BPTT: the carried state is a constant. Differentiating the step's loss
    through a hidden state computed from the same params gives the gradient w.r.t. the
    current minibatch only, as if the state were a constant of the same value; the
    gradient w.r.t. the incoming state is zero."""
    state = make_state(*SGD)
    (X1, _), (X2, Y2) = _batch(3), _batch(4)
    zeros = jnp.zeros((B, H))

    def step_loss(params, hidden):
        _, metrics = step.train_step(
            state.replace(params=params, hidden=hidden),
            (X2, Y2),
            model_config=MODEL,
            optimizer=_optimizer(*SGD),
            carry_hidden=True,
        )
        return metrics["loss"]

    @jax.jit
    def gradients(params):
        h1 = model.apply(MODEL, params, X1, zeros)[1]  # previous minibatch, from params
        through_step = jax.grad(lambda p: step_loss(p, model.apply(MODEL, p, X1, zeros)[1]))
        untruncated = jax.grad(
            lambda p: loss.cross_entropy(
                model.apply(MODEL, p, X2, model.apply(MODEL, p, X1, zeros)[1])[0], Y2
            )
        )
        d_hidden = jax.grad(step_loss, argnums=1)(params, h1)
        return through_step(params), untruncated(params), d_hidden, h1

    grads, full, d_hidden, h1 = gradients(state.params)
    (_, _), truncated = _reference_loss_and_grads(state.params, X2, Y2, h1)  # h1 a constant
    chex.assert_trees_all_close(grads, truncated, rtol=1e-5, atol=1e-7)
    assert not np.asarray(d_hidden).any()
    # Not vacuous: letting the gradient into the previous minibatch changes it.
    differs = [
        not np.allclose(a, b, rtol=1e-3, atol=1e-6)
        for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(truncated), strict=True)
    ]
    assert any(differs)


def test_compiled_step_carries_hidden_and_traces_once(monkeypatch, make_state):
    """make_train_step (sequential): each step starts from the hidden state the previous
    one ended in (checked against the book's loss from that state), the loop's fresh
    zero state at each epoch start included; and it is traced once for all 2 x K steps."""
    traces = []
    original = step.train_step

    def counting(*args, **kwargs):
        traces.append(1)  # runs at trace time only
        return original(*args, **kwargs)

    monkeypatch.setattr(step, "train_step", counting)
    corpus = np.random.default_rng(0).integers(1, V, 5 * B * T + T).astype(np.int32)
    dataset = input_pipeline.Dataset(corpus, corpus[:0], data.Vocab(), "char")
    config = TrainConfig(batch_size=B, num_steps=T, lr=SGD[0], theta=SGD[1], max_tokens=None)
    K = input_pipeline.batches_per_epoch(len(corpus), B, T)
    assert K == 5
    train_step = step.make_train_step(MODEL, _optimizer(*SGD), carry_hidden=True)
    state = make_state(*SGD)
    steps = 0
    for epoch in range(2):
        state = state.replace(hidden=model.zero_state(MODEL, B))  # as loop.fit does
        h_in = np.zeros((B, H), np.float32)
        Xs, Ys = input_pipeline.train_plan(dataset, config, epoch).materialise()
        for X, Y in zip(Xs, Ys, strict=True):
            params = jax.tree.map(np.asarray, state.params)  # the step donates its input
            state, metrics = train_step(state, (X, Y))
            steps += 1
            (ref_loss, ref_h), _ = _reference_loss_and_grads(params, X, Y, h_in)
            assert float(metrics["loss"]) == pytest.approx(float(ref_loss), rel=1e-5)
            chex.assert_trees_all_close(state.hidden, ref_h, rtol=1e-5, atol=1e-6)
            h_in = np.asarray(state.hidden)
    assert steps == 2 * K and int(state.step) == steps
    assert len(traces) == 1
    # Not vacuous: the carried state differs from zeros, and the loss from zeros differs.
    (loss_zero, _), _ = _reference_loss_and_grads(params, X, Y, np.zeros((B, H), np.float32))
    assert abs(float(loss_zero) - float(metrics["loss"])) > 1e-4


# --------------------------------------------------------------------------- perplexity


def test_uniform_model_perplexity_is_vocab_size(tiny_dataset, tiny_model_config):
    """All-zero weights give uniform logits: perplexity = vocabulary size (D2L 9.3.2)."""
    shapes = jax.eval_shape(lambda: model.init(tiny_model_config, jax.random.key(0)))
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    Xs, Ys = input_pipeline.eval_batches(tiny_dataset.val, 8, 10)
    nll, count = step.make_evaluate(tiny_model_config)(params, jnp.asarray(Xs), jnp.asarray(Ys))
    assert int(count) == Ys.size
    assert loss.perplexity(nll, count) == pytest.approx(tiny_dataset.vocab_size, rel=1e-5)


@jax.jit
def _token_nlls(params, X, Y, h0):
    """Per-token negative log-likelihoods written out with log_softmax; logits; h_T."""
    logits, h_T = model.apply(MODEL, params, X, h0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, Y[..., None], axis=-1)[..., 0], logits, h_T


_evaluate = jax.jit(functools.partial(step.evaluate, MODEL))


def _nll_carried(params, Xs, Ys) -> np.ndarray:
    """Per-token NLLs over sequential minibatches, carrying the state from zeros."""
    h = jnp.zeros((Xs.shape[1], H))
    out = []
    for X, Y in zip(Xs, Ys, strict=True):
        nlls, _, h = _token_nlls(params, X, Y, h)
        out.append(np.asarray(nlls, np.float64).ravel())
    return np.concatenate(out)


def _minibatches(seeds, batch=B, steps=T):
    return tuple(jnp.stack(z) for z in zip(*[_batch(s, batch, steps) for s in seeds], strict=True))


def test_evaluate_carries_state_across_minibatches(make_state):
    """evaluate sums NLL over K sequential minibatches from a zero state, carrying it."""
    params = make_state(*SGD).params
    Xs, Ys = _minibatches(range(3))
    nll, count = _evaluate(params, Xs, Ys)
    total = _nll_carried(params, Xs, Ys).sum()
    assert int(count) == Xs.size
    assert float(nll) == pytest.approx(total, rel=1e-5)
    # Not vacuous: restarting each minibatch from zeros scores differently.
    restarted = sum(
        _nll_carried(params, Xs[k : k + 1], Ys[k : k + 1]).sum() for k in range(len(Xs))
    )
    assert abs(restarted - total) > 1e-3


def test_perplexity_is_token_weighted(make_state):
    """Perplexity = exp(total NLL / total tokens) over the split, not a mean of per-batch
    perplexities: two splits of 6 and 72 tokens with different mean NLLs."""
    params = make_state(*SGD).params
    X_a, Y_a = _minibatches([5], batch=2, steps=3)
    # Split a: targets are the model's own argmax predictions (low NLL).
    logits = _token_nlls(params, X_a[0], Y_a[0], jnp.zeros((2, H)))[1]
    Y_a = jnp.argmax(logits, axis=-1).astype(jnp.int32)[None]
    X_b, Y_b = _minibatches(range(3))
    nll_a, n_a = _evaluate(params, X_a, Y_a)
    nll_b, n_b = _evaluate(params, X_b, Y_b)
    assert (int(n_a), int(n_b)) == (6, 72)

    per_token = np.concatenate([_nll_carried(params, X_a, Y_a), _nll_carried(params, X_b, Y_b)])
    reference = math.exp(per_token.mean())
    ppl = loss.perplexity(float(nll_a) + float(nll_b), int(n_a) + int(n_b))
    assert ppl == pytest.approx(reference, rel=1e-5)
    ppl_a, ppl_b = loss.perplexity(nll_a, n_a), loss.perplexity(nll_b, n_b)
    assert ppl_a < 0.8 * ppl_b  # the splits really differ
    assert abs((ppl_a + ppl_b) / 2 - reference) > 0.05 * reference
    assert loss.perplexity(2.0, 1) == pytest.approx(math.exp(2.0))
    assert loss.perplexity(1e6, 10) == math.inf


# --------------------------------------------------------------------------- fit


def test_fit_lowers_perplexity(trained_run, tiny_dataset):
    """A few epochs of the book's recipe take train perplexity well below uniform."""
    result, _, config = trained_run
    history = result.history
    K = input_pipeline.batches_per_epoch(
        len(tiny_dataset.train), config.batch_size, config.num_steps
    )
    assert [r["epoch"] for r in history] == list(range(1, config.num_epochs + 1))
    assert [r["step"] for r in history] == [K * e for e in range(1, config.num_epochs + 1)]
    assert int(result.state.step) == K * config.num_epochs
    assert not result.interrupted
    first, last = history[0]["train_ppl"], history[-1]["train_ppl"]
    assert last < first
    assert last < 0.8 * tiny_dataset.vocab_size
    assert all(math.isfinite(r["val_ppl"]) for r in history)
    assert history[-1]["val_ppl"] < history[0]["val_ppl"]


def test_fit_validates_every_eval_every_epochs_without_changing_training(
    trained_run, tiny_model_config, tiny_dataset, tmp_path
):
    """eval_every=3 over 4 epochs: validation after epochs 3 and 4 (the last) only, with
    the same numbers as validating every epoch, the same trained parameters, and a plot
    that skips the gaps."""
    every_epoch, _, config = trained_run
    sparse = loop.fit(
        tiny_model_config,
        dataclasses.replace(config, eval_every=3),
        tiny_dataset,
        out_dir=tmp_path,
        echo=lambda _: None,
        progress=False,
    )
    assert [r["val_ppl"] is not None for r in sparse.history] == [False, False, True, True]
    for dense, kept in zip(every_epoch.history, sparse.history, strict=True):
        assert kept["train_ppl"] == dense["train_ppl"]
        if kept["val_ppl"] is not None:
            assert kept["val_ppl"] == dense["val_ppl"]
    chex.assert_trees_all_equal(sparse.state.params, every_epoch.state.params)
    assert (tmp_path / run_folder.PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    never = loop.fit(
        tiny_model_config,
        dataclasses.replace(config, eval_every=0, num_epochs=1),
        tiny_dataset,
        echo=lambda _: None,
        progress=False,
    )
    assert never.history[0]["val_ppl"] is None


def test_fit_writes_run_folder(trained_run, tiny_model_config):
    """With out_dir: metrics.jsonl (one record per epoch), perplexity.png, samples.txt
    and config.json (which rebuilds both configs)."""
    result, out_dir, config = trained_run
    records = [json.loads(line) for line in (out_dir / run_folder.METRICS).read_text().splitlines()]
    assert len(records) == config.num_epochs
    for written, kept in zip(records, result.history, strict=True):
        assert written["epoch"] == kept["epoch"]
        assert written["train_ppl"] == pytest.approx(kept["train_ppl"])
    assert (out_dir / run_folder.PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (out_dir / run_folder.SAMPLES).read_text("utf-8").splitlines()
    assert len(lines) == 1  # sample_every == num_epochs: once, at the end
    step, epoch, text = lines[0].split("\t")
    assert (step, epoch) == (f"step {records[-1]['step']}", f"epoch {config.num_epochs}")
    assert text.startswith(config.sample_prefix[0])
    assert len(text) == len(config.sample_prefix[0]) + config.num_preds
    payload = json.loads((out_dir / run_folder.CONFIG).read_text())
    assert config_lib.from_dict(ModelConfig, payload["model"]) == tiny_model_config
    assert config_lib.from_dict(TrainConfig, payload["train"]) == config
    assert config_lib.from_dict(RunConfig, payload["run"]) == RunConfig()
    assert payload["run_info"]["jax"] == jax.__version__


def test_fit_is_reproducible_and_compiles_once(
    trained_run, tiny_dataset, tiny_model_config, monkeypatch
):
    """Two fits with the same seed give bitwise-equal params; fit traces its step once."""
    reference, _, config = trained_run
    traces = []
    original = step.train_step

    def counting(*args, **kwargs):
        traces.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(step, "train_step", counting)
    again = loop.fit(tiny_model_config, config, tiny_dataset, echo=lambda _: None, progress=False)
    assert len(traces) == 1
    chex.assert_trees_all_equal(again.state.params, reference.state.params)
    assert [r["train_ppl"] for r in again.history] == [r["train_ppl"] for r in reference.history]


def test_fit_resumes_exactly_after_interrupt(trained_run, tiny_dataset, tiny_model_config):
    """A signal noted after K + 5 steps (``actions.StopWhen``, asked once before the
    first step and after each) returns interrupted=True at once, with epoch 1's record
    kept and none for the partial epoch 2; fitting on from the returned state (which
    carries the sequential hidden state) reproduces the uninterrupted run's params bit
    for bit."""
    reference, _, config = trained_run
    K = input_pipeline.batches_per_epoch(
        len(tiny_dataset.train), config.batch_size, config.num_steps
    )
    quiet = {"echo": lambda _: None, "progress": False}
    calls = []

    def received():
        calls.append(1)
        return signal.SIGTERM if len(calls) == 1 + K + 5 else None

    stop = actions.StopWhen(received)
    first = loop.fit(tiny_model_config, config, tiny_dataset, actions=[stop], **quiet)
    assert first.interrupted and stop.signum == signal.SIGTERM
    assert len(calls) == 1 + K + 5 and int(first.state.step) == K + 5
    assert [r["epoch"] for r in first.history] == [1]
    assert first.history[0]["train_ppl"] == reference.history[0]["train_ppl"]

    rest = loop.fit(tiny_model_config, config, tiny_dataset, state=first.state, **quiet)
    assert not rest.interrupted
    assert int(rest.state.step) == int(reference.state.step)
    assert [r["epoch"] for r in rest.history] == [2, 3, 4]
    assert rest.history[-1]["train_ppl"] == reference.history[-1]["train_ppl"]
    for got, want in zip(
        jax.tree.leaves(rest.state.params), jax.tree.leaves(reference.state.params), strict=True
    ):
        assert np.array_equal(np.asarray(got), np.asarray(want))


def test_fit_raises_on_non_finite_loss(tiny_dataset, tiny_model_config):
    """A diverging run (lr = theta = 1e38) raises NonFiniteLossError naming its steps."""
    config = dataclasses.replace(
        TrainConfig(max_tokens=2000, batch_size=8, num_steps=10, sample_every=0),
        lr=1e38,
        theta=1e38,
        num_epochs=2,
    )
    K = input_pipeline.batches_per_epoch(
        len(tiny_dataset.train), config.batch_size, config.num_steps
    )
    with pytest.raises(actions.NonFiniteLossError, match=rf"between steps 1 and {K} \(epoch 1\)"):
        loop.fit(tiny_model_config, config, tiny_dataset, echo=lambda _: None, progress=False)


def test_fit_refuses_vocab_mismatch(tiny_dataset, tiny_config):
    model_config = ModelConfig(vocab_size=tiny_dataset.vocab_size + 1, num_hiddens=8)
    with pytest.raises(ValueError, match="vocab_size"):
        loop.fit(model_config, tiny_config, tiny_dataset, progress=False)
