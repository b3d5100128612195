"""The Time Machine as it is written: raw characters, case and punctuation kept (issue 9).

    .venv/bin/python experiments/raw_chars.py --out runs/raw_chars

The book lowercases the text and turns every run of non-letters into one space (28
tokens). Here the model sees the file as it is (71 tokens: capitals, digits,
punctuation, quotes, newlines), with the best cell of ``compare_cells.py`` at its
settings: a GRU, 256 hidden units, SGD lr 4 clipped at 1, batch 32 x 35, 16 epochs over
all 178,966 characters with the last 10% held out. It reports validation bits per
character, the unit character-level results are published in, and greedy and sampled
continuations whose newlines come out as newlines.

The command's figures (bits per character, wall time, the continuations) are in
``docs/book.md`` ("Raw characters of the Time Machine"), measured with this code.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax

from rnn_jax import run, sample
from rnn_jax.config import TrainConfig
from rnn_jax.loss import bits_per_token
from rnn_jax.sample import SamplingConfig

PREFIXES = ["The Time Traveller", "\n\n"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/raw_chars"), help="run folder")
    parser.add_argument("--epochs", type=int, default=16, help="passes over the training split")
    parser.add_argument("--cell", default="gru", help="the best cell of compare_cells.py")
    parser.add_argument("--num-hiddens", type=int, default=256, help="H")
    parser.add_argument("--lr", type=float, default=4.0, help="SGD learning rate")
    parser.add_argument("--max-tokens", type=int, default=None, help="truncate (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed")
    args = parser.parse_args()

    config = TrainConfig(
        preprocess="raw",
        max_tokens=args.max_tokens,
        lr=args.lr,
        num_epochs=args.epochs,
        seed=args.seed,
        sample_every=0,
        eval_every=max(1, args.epochs // 8),
    )
    started = time.perf_counter()
    outcome = run.train(
        {"cell": args.cell, "num_hiddens": args.num_hiddens}, config, out=args.out, progress=False
    )
    wall = time.perf_counter() - started
    result, dataset, model_config = outcome.result, outcome.dataset, outcome.model_config
    last = result.history[-1]
    params = result.state.params
    print(
        f"{args.cell} H {args.num_hiddens}, {args.epochs} epochs: train {last['train_bpc']:.3f} "
        f"bpc, validation {bits_per_token(last['val_ppl']):.3f} bpc (perplexity "
        f"{last['val_ppl']:.2f}), {wall:.0f} s wall"
    )
    greedy = sample.predict(PREFIXES, 120, model_config, params, dataset.vocab, preprocess="raw")
    sampled = sample.predict(
        PREFIXES,
        120,
        model_config,
        params,
        dataset.vocab,
        preprocess="raw",
        sampling=SamplingConfig(strategy="temperature", temperature=0.6),
        key=jax.random.key(0),
    )
    for name, texts in (("greedy", greedy), ("temperature 0.6, seed 0", sampled)):
        for text in texts:
            print(f"--- {name}\n{text}")
    print(f"run folder: {args.out}")


if __name__ == "__main__":
    main()
