"""Reproduce the book's RNN from scratch (D2L 9.5) on the shipped Time Machine.

    python experiments/book_rnn.py --out runs/book_rnn

The book's settings: char tokens, the first 10,000 tokens (here the last 10% of them
held out for validation), sequential partition, batch 32, 35 steps, 512 hidden units,
SGD with lr 1, gradient clipping at 1, 500 epochs. Writes ``config.json``,
``metrics.jsonl``, ``perplexity.png`` and ``samples.txt`` to ``--out`` and prints the
final perplexities and continuations of "time traveller" and "traveller".

Measured here (2-core CPU, seed 0): train perplexity 1.02 (validation 95.5: 9,000
characters are memorised, not learned), 44,226 tokens/s (median epoch), train step
compiled in 1.6 s, 124 s wall. "time traveller" continues "you can show black is white
by argument said filb", as in the book.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rnn_jax import loop, sample
from rnn_jax.config import ModelConfig, TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/book_rnn"), help="run folder")
    parser.add_argument("--epochs", type=int, default=500, help="the book trains 500 epochs")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed")
    args = parser.parse_args()

    config = TrainConfig(num_epochs=args.epochs, seed=args.seed)
    dataset = loop.load_dataset(config)
    model_config = ModelConfig(vocab_size=dataset.vocab_size, num_hiddens=512)
    print(
        f"{len(dataset.train):,} train / {len(dataset.val):,} validation tokens, "
        f"vocab {dataset.vocab_size}, {loop.batches_per_epoch(len(dataset.train), 32, 35)} "
        f"minibatches per epoch"
    )
    started = time.perf_counter()
    result = loop.fit(model_config, config, dataset, out_dir=args.out)
    wall = time.perf_counter() - started
    last = result.history[-1]
    rates = sorted(r["tokens_per_s"] for r in result.history)
    print(f"train step compiled in {result.compile_s:.2f} s")
    print(
        f"perplexity {last['train_ppl']:.2f} (validation {last['val_ppl']:.2f}), "
        f"{rates[len(rates) // 2]:,.0f} tokens/s (median epoch), {wall:.1f} s wall"
    )
    for prefix in ("time traveller", "traveller"):
        print(sample.predict(prefix, 50, model_config, result.state.params, dataset.vocab))
    print(f"run folder: {args.out}")


if __name__ == "__main__":
    main()
