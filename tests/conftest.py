"""Shared fixtures: a tiny slice of the Time Machine, a tiny model, and one short run.

The one change to JAX's global configuration: every test process compiles through the
persistent compilation cache the tests' ``rnn-jax`` processes use (``tests/test_cli.py``'s
``CACHE``; ``rnn_jax.compile_cache``, whose entries many processes share safely). Many
tests compile the same programs (the tiny models' steps, the references); a loaded
program computes what a fresh compile would, bit for bit. x64 stays off outside the
tests that enable it in a ``with jax.enable_x64(True)`` block.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import input_pipeline, loop, model
from rnn_jax.config import ModelConfig, TrainConfig


def pytest_configure(config: pytest.Config) -> None:
    from rnn_jax import compile_cache
    from tests.test_cli import CACHE

    compile_cache.use_compilation_cache(CACHE / "rnn_jax")


# Big enough to learn something in a few epochs, small enough to train in about a second.
TINY_TRAIN = TrainConfig(
    max_tokens=2000,
    val_fraction=0.1,
    batch_size=8,
    num_steps=10,
    partition="sequential",
    lr=1.0,
    theta=1.0,
    num_epochs=4,
    seed=0,
    sample_every=0,
    num_preds=20,
)
TINY_HIDDENS = 32


@pytest.fixture(scope="session")
def tiny_config() -> TrainConfig:
    return TINY_TRAIN


@pytest.fixture(scope="session")
def tiny_dataset() -> input_pipeline.Dataset:
    """The first 2,000 characters of the Time Machine, 10% held out."""
    return input_pipeline.load_dataset(TINY_TRAIN)


@pytest.fixture(scope="session")
def tiny_model_config(tiny_dataset: input_pipeline.Dataset) -> ModelConfig:
    return ModelConfig(vocab_size=tiny_dataset.vocab_size, num_hiddens=TINY_HIDDENS)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_model_config, tiny_dataset):
    """One short ``loop.fit`` (4 epochs, sequential) with a run folder and a final sample.

    Returns ``(FitResult, out_dir, config)``. Tests must not pass ``result.state`` to
    anything that donates it (``fit``, ``make_train_step``'s function).
    """
    out_dir = tmp_path_factory.mktemp("run")
    config = dataclasses.replace(TINY_TRAIN, sample_every=TINY_TRAIN.num_epochs)
    result = loop.fit(
        tiny_model_config,
        config,
        tiny_dataset,
        out_dir=out_dir,
        echo=lambda _: None,
        progress=False,
    )
    jax.block_until_ready(result.state)
    return result, out_dir, config


def _book_params(params: dict) -> dict:
    """The flat book-named parameters (W_xh, W_hh, b_h, W_hq, b_q) of a one-layer rnn model,
    whether ``model.init`` returns them flat or nests the cell's under ``layer_0``."""
    if "layer_0" in params:
        return {**params["layer_0"], "W_hq": params["W_hq"], "b_q": params["b_q"]}
    return dict(params)


@pytest.fixture(scope="session")
def book_params():
    """``book_params(params)``: the flat book-named params ``model.rnn_step`` takes."""
    return _book_params


def _random_params(model_config: ModelConfig, seed: int = 0, bias_scale: float = 0.3) -> dict:
    """Parameters with ``model.init``'s structure, filled on the host with NumPy (no
    compilation): weights ~ N(0, sigma^2), and biases ~ N(0, bias_scale^2) so that every
    term of the equations matters."""
    shapes = jax.eval_shape(lambda: model.init(model_config, jax.random.key(0)))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        scale = bias_scale if name.startswith("b_") else model_config.sigma
        return jnp.asarray(scale * rng.standard_normal(leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="session")
def random_params():
    """``random_params(model_config, seed=0, bias_scale=0.3)``: host-made parameters."""
    return _random_params


@pytest.fixture(autouse=True)
def _drop_orphaned_orbax_reads():
    """After a failed restore, Orbax closes its event loop while tensorstore finishes
    the step's other reads; each reports ``RuntimeError: Event loop is closed`` through
    ``sys.unraisablehook`` (``checkpoint.quiet_orbax_unraisables`` drops exactly that
    outside pytest, whose own hook replaces it here). Everything else still fails."""
    import sys

    inner = sys.unraisablehook

    def hook(unraisable):
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and "Event loop is closed" in str(value):
            return
        inner(unraisable)

    sys.unraisablehook = hook
    yield
    sys.unraisablehook = inner
