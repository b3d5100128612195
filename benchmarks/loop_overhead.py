"""The training loop's own host work per step: ``loop.fit`` on a model so small (H 8,
B 4, T 5 on the book's 9,000 training characters, no validation, no samples) that the
jitted step costs next to nothing, so the wall time per step is the loop's Python.

    .venv/bin/python benchmarks/loop_overhead.py                       # this tree
    PYTHONPATH=$OLD .venv/bin/python benchmarks/loop_overhead.py       # $OLD: another commit

Prints the median over 3 fits of (wall - compile) / steps in microseconds. Measured on
2026-12-02 (2-core VM, one process at a time, 2 interleaved rounds): 145-185 us per step
at commit c46b024 (before the redesign), 135-187 us after: no measurable difference.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

from rnn_jax import loop
from rnn_jax.config import ModelConfig, TrainConfig

try:
    from rnn_jax.input_pipeline import load_dataset
except ImportError:  # a commit before the redesign (issue 16) kept it in rnn_jax.loop
    load_dataset = loop.load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=8, help="449 steps each")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = TrainConfig(
        batch_size=4, num_steps=5, num_epochs=args.epochs, eval_every=0, sample_every=0
    )
    dataset = load_dataset(config)
    model_config = ModelConfig(vocab_size=dataset.vocab_size, num_hiddens=8)
    per_step = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        result = loop.fit(model_config, config, dataset, echo=lambda _: None, progress=False)
        jax.block_until_ready(result.state)
        wall = time.perf_counter() - started - result.compile_s
        per_step.append(wall / int(result.state.step) * 1e6)
    rounded = [round(x, 1) for x in per_step]
    median = statistics.median(per_step)
    print(f"{int(result.state.step)} steps: {median:.1f} us per step {rounded}")


if __name__ == "__main__":
    main()
