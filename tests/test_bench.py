"""The benchmark harness's own arithmetic (``benchmarks/bench.py``), without running it.

Benchmarks are measured, never timed in tests; what is tested here is what the reports
compute from the measurements: the model FLOPs per token behind the roofline (against
XLA's own count of the book's one-hot model), the same-run ratios, the batch-1
generation floor, and the CPUs ``--threads`` pins to.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from rnn_jax import model
from rnn_jax.config import ModelConfig

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench"]


def test_book_config_flops_are_the_documented_figures(bench) -> None:
    """1.72 MFLOP per trained token at V 28, H 512, as the README and issue quote."""
    assert bench.flops_per_token("rnn", 512, train=False) == 581_632
    assert bench.flops_per_token("rnn", 512, train=True) == 1_716_224


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_forward_flops_match_xla_count_of_the_one_hot_model(bench, cell: str) -> None:
    """One step of ``reference_apply`` (one-hot inputs, the book's matmuls): XLA's cost
    analysis counts the matmuls plus a few percent of elementwise work."""
    V, H, B = 28, 32, 4
    config = ModelConfig(vocab_size=V, num_hiddens=H, cell=cell)
    params = model.init(config, jax.random.key(0))
    tokens, state = jnp.zeros((B, 1), jnp.int32), model.zero_state(config, B)
    compiled = jax.jit(lambda p: model.reference_apply(config, p, tokens, state)[0])
    cost = compiled.lower(params).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    counted = bench.flops_per_token(cell, H, train=False, vocab=V) * B
    assert counted <= cost["flops"] <= 1.1 * counted, (cost["flops"], counted)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_training_flops_are_three_forwards_less_the_input_gradient(bench, cell: str) -> None:
    """Backward costs two matmuls per forward matmul, except the one-hot input's, whose
    input gradient is never needed: one."""
    V, H, g = 28, 256, bench.GATES[cell]
    forward = bench.flops_per_token(cell, H, train=False)
    assert bench.flops_per_token(cell, H, train=True) == 3 * forward - 2 * g * V * H


def _group(bench, title: str, unit: str, samples: dict[str, list[float]]):
    impls = [bench.Impl("rnn_jax", ["x"], True)]
    impls += [bench.Impl(name, ["y"]) for name in samples if name != "rnn_jax"]
    return bench.Group("gen", title, unit, impls, samples=samples)


def test_ratios_are_of_medians_and_per_round_pairs(bench) -> None:
    group = _group(
        bench, "train", "tokens/s", {"rnn_jax": [10.0, 30.0, 20.0], "peer": [5.0, 10.0, 20.0]}
    )
    median_ratio, paired = bench.ratio(group, group.impls[1])
    assert median_ratio == pytest.approx(2.0)
    assert paired == pytest.approx([2.0, 3.0, 1.0])
    wall = _group(bench, "e2e", "s wall", {"rnn_jax": [10.0], "peer": [30.0]})
    assert bench.ratio(wall, wall.impls[1])[0] == pytest.approx(3.0)  # lower is better


def test_greedy_floor_is_one_matvec_and_bounds_every_speedup(bench) -> None:
    """A (1,512)@(512,512) product at 50 GFLOP/s takes 10.49 us; a peer at 50 us per
    char can be beaten by at most 50 / 10.49 = 4.77x."""
    gen = _group(
        bench,
        "greedy gen B=1, 500 chars",
        "chars/s",
        {"rnn_jax": [80_000.0], "peer": [20_000.0]},
    )
    rates = {"jax_1x512x512_gflops": {"min": 40.0, "median": 45.0, "max": 50.0, "n": 3}}
    lines, data = bench.greedy_floor([gen], rates)
    assert data["floor_us"] == pytest.approx(2 * 512 * 512 / 50e9 * 1e6)
    assert data["us_per_char"] == pytest.approx({"rnn_jax": 12.5, "peer": 50.0})
    assert any("| peer | 50.00 | 4.77 | 4.77× |" in line for line in lines)
    assert bench.greedy_floor([gen], {}) == ([], {})


def test_threads_pin_to_the_first_cpus_of_the_mask(bench) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    assert bench.threads_cpus(0) == ""
    assert bench.threads_cpus(len(cpus)) == ""  # the whole mask: nothing to pin
    if len(cpus) > 1:
        assert bench.threads_cpus(1) == str(cpus[0])
