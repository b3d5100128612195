"""Reproduce the book's RNN from scratch (D2L 9.5) on the shipped Time Machine.

    .venv/bin/python experiments/book_rnn.py --out runs/book_rnn

The book's settings: char tokens, the first 10,000 tokens (here the last 10% of them
held out for validation), sequential partition, batch 32, 35 steps, 512 hidden units,
SGD with lr 1, gradient clipping at 1, 500 epochs. The run goes through the same life
cycle as ``rnn-jax train`` (``rnn_jax.run``), so ``--out`` is a run folder like any
other: ``config.json``, ``metrics.jsonl``, ``perplexity.png``, ``samples.txt``,
TensorBoard ``events/`` and ``checkpoints/`` (sample it afterwards with ``rnn-jax sample
--checkpoint runs/book_rnn``). It prints the final perplexities and the continuations
of "time traveller" and "traveller".

The figures this command gives (perplexity, tokens/s, wall time, the continuations) are
in the README's "Reproducing the book" section, measured with this code.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rnn_jax import run, sample
from rnn_jax.config import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/book_rnn"), help="run folder")
    parser.add_argument("--epochs", type=int, default=500, help="the book trains 500 epochs")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed")
    args = parser.parse_args()

    config = TrainConfig(num_epochs=args.epochs, seed=args.seed)  # the book's defaults
    started = time.perf_counter()
    outcome = run.train({"num_hiddens": 512}, config, out=args.out)
    wall = time.perf_counter() - started
    result, dataset = outcome.result, outcome.dataset
    last = result.history[-1]
    rates = sorted(r["tokens_per_s"] for r in result.history)
    print(f"train step compiled in {result.compile_s:.2f} s")
    print(
        f"perplexity {last['train_ppl']:.2f} (validation {last['val_ppl']:.2f}), "
        f"{rates[len(rates) // 2]:,.0f} tokens/s (median epoch), {wall:.1f} s wall"
    )
    for prefix in ("time traveller", "traveller"):
        params = result.state.params
        print(sample.predict(prefix, 50, outcome.model_config, params, dataset.vocab))
    print(f"run folder: {args.out}")


if __name__ == "__main__":
    main()
