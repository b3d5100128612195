"""Train tokens/s of rnn_jax's cells against PyTorch's ``nn.LSTM``/``nn.GRU``/``nn.RNN`` over
a grid of shapes, on one pinned core and on two, same-run ratios:

    .venv/bin/python benchmarks/cells_grid.py                        # the LSTM grid: ~17 min
    .venv/bin/python benchmarks/cells_grid.py --cells gru rnn --hiddens 256 --vocabs 28

Every cell at H (``--hiddens``), V (``--vocabs``: 28 is the book's characters, 66 about a
raw English text's), T (``--steps``), B 32, one layer, SGD after clipping at 1, PyTorch's
initial scale. Both sides are the time-to-quality workers (``time_to_quality.py
--worker`` and ``torch_ttq.py``), trained on random tokens for ``--seconds`` each with no
validation in between: rnn_jax's step compiled before its clock starts, the peer's after
one untimed forward and backward. On 1 core every process is pinned to CPU 0 with one
thread; on 2 cores to CPUs 0 and 1, torch with 2 threads, and rnn_jax twice: as one CPU
device (XLA's own thread pool), and with the batch split over 2 simulated CPU devices
(``JAX_NUM_CPU_DEVICES=2``, what ``rnn-jax train`` then does by itself). The
implementations of a row run back to back, their order reversed every other round; the
table gives medians over ``--rounds`` and the ratio of the medians with the range of the
per-round ratios. Writes ``--out``/results.md and results.jsonl.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from time_to_quality import run_child  # noqa: E402 (a sibling script, not a package)

B = 32
CELLS = ("lstm", "gru", "rnn")  # the cells with a torch.nn twin


def write_random(path: Path, vocab_size: int, num_steps: int, seed: int = 0) -> None:
    """Four training minibatches and one validation minibatch of uniform random tokens,
    ``(K, B, T)``, in the npz layout of ``time_to_quality.write_data``."""
    rng = np.random.default_rng(seed)
    tokens = {k: rng.integers(0, vocab_size, (n, B, num_steps), dtype=np.int32)
              for k, n in (("train_X", 4), ("train_Y", 4), ("val_X", 1), ("val_Y", 1))}  # fmt: skip
    np.savez(path, **tokens, vocab_size=vocab_size)


def implementations(cores: int, peers_python: Path) -> list[tuple[str, list[str], int, int]]:
    """``(name, argv, threads, devices)`` of the row's implementations on ``cores``."""
    jax_child = [sys.executable, str(HERE / "time_to_quality.py"), "--worker"]
    torch_child = [str(peers_python), str(HERE / "torch_ttq.py"), "--warmup", "1"]
    impls = [("rnn_jax", jax_child, cores, 1)]
    if cores > 1:
        impls.append((f"rnn_jax, {cores} devices", jax_child, cores, cores))
    impls.append(("torch", [*torch_child, "--threads", str(cores)], cores, 1))
    return impls


def measure(args: argparse.Namespace) -> list[dict]:
    rows = []
    grid = itertools.product(args.cores, args.cells, args.hiddens, args.vocabs, args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        for cores, cell, H, V, T in grid:
            data = Path(tmp) / f"random_{V}_{T}.npz"
            write_random(data, V, T)
            common = [
                "--data", str(data), "--seconds", str(args.seconds), "--eval-every", "1e9",
                "--num-hiddens", str(H), "--cell", cell, "--optimizer", "sgd", "--lr", "1",
            ]  # fmt: skip
            pin = ["taskset", "-c", ",".join(str(c) for c in range(cores))]
            impls = implementations(cores, args.peers_python)
            samples: dict[str, list[float]] = {name: [] for name, *_ in impls}
            for r in range(args.rounds):
                for name, child, threads, devices in impls if r % 2 == 0 else impls[::-1]:
                    final = run_child([*pin, *child, *common], 600, threads, devices)[-1]
                    samples[name].append(final["tokens_per_s"])
            row = {"cores": cores, "cell": cell, "H": H, "V": V, "T": T, "samples": samples}
            rows.append(row)
            print(line(row), flush=True)
    return rows


def line(row: dict) -> str:
    """One Markdown row: medians, then each rnn_jax's ratio of medians to torch's with the
    per-round range."""
    s = row["samples"]
    torch = s["torch"]
    cells = [str(row[k]) for k in ("cores", "cell", "H", "V", "T")]
    cells += [f"{statistics.median(xs):,.0f}" for xs in s.values()]
    for name, xs in s.items():
        if name != "torch":
            per_round = [a / b for a, b in zip(xs, torch, strict=True)]
            ratio = statistics.median(xs) / statistics.median(torch)
            cells.append(f"**{ratio:.2f}** ({min(per_round):.2f}-{max(per_round):.2f})")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cells", nargs="+", default=["lstm"], choices=CELLS)
    ap.add_argument("--hiddens", nargs="+", type=int, default=[256, 512])
    ap.add_argument("--vocabs", nargs="+", type=int, default=[28, 66])
    ap.add_argument("--steps", nargs="+", type=int, default=[35, 64])
    ap.add_argument("--cores", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per sample")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--peers-python", type=Path, default=HERE.parent / ".venv-peers/bin/python")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cells_grid")
    args = ap.parse_args()
    if max(args.cores) > len(os.sched_getaffinity(0)):
        sys.exit(f"cells_grid: error: --cores {max(args.cores)}: this process has fewer CPUs")
    start = time.perf_counter()
    rows = measure(args)
    md = []
    for _, group in itertools.groupby(rows, key=lambda row: row["cores"]):
        group = list(group)
        names = list(group[0]["samples"])
        ratios = [f"{n} / torch" for n in names if n != "torch"]
        head = ["cores", "cell", "H", "V", "T", *(f"{n} tokens/s" for n in names), *ratios]
        md += ["", "| " + " | ".join(head) + " |", "|" + "---|" * 5 + "---:|" * (len(head) - 5)]
        md += [line(row) for row in group]
    header = (
        f"Train tokens/s, B {B}, one layer, SGD; {args.seconds:g} s samples, {args.rounds} rounds "
        f"(medians; ratio of medians, per-round range); wall "
        f"{time.perf_counter() - start:.0f} s, load average {os.getloadavg()[0]:.1f} at the end."
    )
    text = header + "\n" + "\n".join(md) + "\n"
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text)
    with (args.out / "results.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
