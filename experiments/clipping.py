"""Why the book clips gradients (D2L 9.5.3): the same RNN at thresholds 0.1, 1, 10 and none.

    /work/main/.venv/bin/python experiments/clipping.py --out runs/clipping

RESULTS_PLACEHOLDER
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from rnn_jax import loop, sweep
from rnn_jax.config import ModelConfig, TrainConfig

NO_CLIP = 1e9  # "none": a threshold no gradient norm reaches (TrainConfig wants a finite one)
THETAS = (0.1, 1.0, 10.0, NO_CLIP)
BLOWN_UP = 1e3  # perplexity; the uniform guess over the 28 characters scores 28


def theta_name(theta: float) -> str:
    return "none" if theta == NO_CLIP else f"{theta:g}"


def blown_up(ppl: float | None) -> bool:
    """Diverged: perplexity non-finite (what ``loop.fit`` stops on) or above ``BLOWN_UP``
    (a run at 1e200 is as lost as one at inf)."""
    return ppl is not None and not (math.isfinite(ppl) and ppl <= BLOWN_UP)


def first_blown_up(result: sweep.MemberResult) -> int:
    return next(h["epoch"] for h in result.history if blown_up(h["train_ppl"]))


def table(results: list[sweep.MemberResult]) -> str:
    """Per threshold: final train and validation perplexity (mean ± std over the seeds
    that did not diverge), the fraction of steps clipped (over all members and epochs),
    and the members that diverged with the first epoch that did."""
    lines = [
        "| theta | train ppl | val ppl | steps clipped | diverged (first epoch) |",
        "|---|---|---|---|---|",
    ]
    for key, group in sweep.groups(results).items():
        kept = [r for r in group if not blown_up(r.history[-1]["train_ppl"])]

        def spread(field: str, kept=kept) -> str:
            values = np.array([r.history[-1][field] for r in kept], dtype=float)
            return f"{values.mean():.2f} ± {values.std():.2f}" if len(values) else "-"

        fractions = [h["clipped_fraction"] for r in group for h in r.history]
        lost = [first_blown_up(r) for r in group if r not in kept]
        when = f" ({min(lost)})" if lost else ""
        lines.append(
            f"| {theta_name(key[1])} | {spread('train_ppl')} | {spread('val_ppl')} | "
            f"{np.mean(fractions):.0%} | {len(lost)}/{len(group)}{when} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/clipping"), help="folder")
    parser.add_argument("--lr", type=float, default=4.0, help="SGD rate (unclipped diverges)")
    parser.add_argument("--epochs", type=int, default=60, help="passes over the training split")
    parser.add_argument("--num-hiddens", type=int, default=256, help="H")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per threshold")
    parser.add_argument("--tiny", action="store_true", help="a few steps at H 8 (for the tests)")
    args = parser.parse_args()

    config = TrainConfig(lr=args.lr, num_epochs=args.epochs, sample_every=0)  # the book's data
    H, seeds = args.num_hiddens, range(args.seeds)
    if args.tiny:
        config = TrainConfig(
            max_tokens=600, batch_size=4, num_steps=8, lr=args.lr, num_epochs=2, sample_every=0
        )
        H, seeds = 8, range(2)
    dataset = loop.load_dataset(config)
    model_config = ModelConfig(vocab_size=dataset.vocab_size, num_hiddens=H)
    members = sweep.grid(model_config, config, seeds=seeds, thetas=THETAS)
    print(f"{len(members)} members, H {H}, lr {config.lr}, {config.num_epochs} epochs")

    started = time.perf_counter()
    results = sweep.fit_sweep(members, dataset, out_dir=args.out, echo=lambda _: None)
    wall = time.perf_counter() - started
    labels = {}
    for key, group in sweep.groups(results).items():
        lost = [first_blown_up(r) for r in group if blown_up(r.history[-1]["train_ppl"])]
        labels[key] = f"theta {theta_name(key[1])}"
        if lost:
            labels[key] += f" ({len(lost)}/{len(group)} blown up by epoch {max(lost)})"
    sweep.plot_groups(
        results,
        args.out / "clipping.png",
        title=f"rnn H {H}, SGD lr {config.lr:g}: mean and min-max over {len(seeds)} seeds",
        labels=labels,
        cap=BLOWN_UP,
    )
    text = table(results) + "\n\n" + f"{len(members)} members in one vmapped sweep, {wall:.0f} s\n"
    (args.out / "clipping.md").write_text(text, "utf-8")
    print(text)


if __name__ == "__main__":
    main()
