"""Corpus ingest: cold and cached ``load_text_corpus``, peak memory, batch building.

    PYTHONPATH=. python benchmarks/ingest.py --sizes 1 10 100 --out benchmarks/results/ingest.md

Generates deterministic corpora of the given sizes (MB of UTF-8): words drawn with the
Time Machine's word frequencies, a newline after about one word in twelve, and about
one word in forty from Greek, Cyrillic, CJK or an emoji. For char and word tokens
(``preprocess="raw"``), each measurement runs in a fresh subprocess so that its peak
RSS (``resource.getrusage``) is its own: tokenising without a cache (read, hash,
decode, tokenise), the cold ingest (the same, then write the cache), the cached ingest
(stat, verify the token file's sha256, memmap), and building every minibatch of
one epoch on demand (``input_pipeline.epoch_plan``, B 32, T 35, both partitions) from the cached
memmap. Takes about 4 minutes here for 1, 10 and 100 MB (two cores shared with
other jobs, load average about 11). Result here, 100 MB: char tokens tokenise in
2.5 s (4.1 s with the cache write), load from the cache in 0.23 s, peak RSS 653 MB
cold and 67 MB cached; word tokens 13.6 s cold, 0.13 s cached; about 34,000
minibatches (38M tokens) built per second. The full table is in
``benchmarks/results/ingest.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rnn_jax import data, input_pipeline

BATCH, STEPS = 32, 35
FOREIGN = ["Ελληνικά", "λόγος", "Кириллица", "машина", "时间", "机器", "旅行者", "😀", "🕰️"]


def make_corpus(path: Path, megabytes: float, seed: int = 0) -> None:
    """Write ``megabytes`` MB of deterministic text (see the module docstring)."""
    words, counts = np.unique(data.read_text().split(), return_counts=True)
    rng = np.random.default_rng(seed)
    target = int(megabytes * 1_000_000)
    num_words = int(target / 5.5) + 1000  # about 5.5 bytes per word and separator
    picks = words[rng.choice(len(words), num_words, p=counts / counts.sum())].astype(object)
    foreign = rng.random(num_words) < 1 / 40
    picks[foreign] = np.asarray(FOREIGN, object)[rng.integers(0, len(FOREIGN), foreign.sum())]
    seps = np.where(rng.random(num_words) < 1 / 12, "\n", " ").astype(object)
    raw = "".join(itertools.chain.from_iterable(zip(picks, seps, strict=True))).encode()
    while len(raw) < target:
        raw += raw[: target - len(raw)]
    path.write_bytes(raw[:target].decode("utf-8", "ignore").encode())


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(path: str, token: str, cache_dir: str, what: str) -> dict:
    """One measurement in this process: ``tokenise`` (no cache), ``cold`` (fills the
    cache) or ``cached`` ingest, or ``batches``."""
    if what == "baseline":
        return {"peak_rss_mb": _peak_rss_mb()}
    started = time.perf_counter()
    cache = None if what == "tokenise" else cache_dir
    corpus = data.load_text_corpus(path, token=token, preprocess="raw", cache_dir=cache)
    seconds = time.perf_counter() - started
    out = {"seconds": seconds, "cached": corpus.cached, "tokens": len(corpus.tokens)}
    out["vocab"] = len(corpus.vocab)
    out["dtype"] = corpus.tokens.dtype.name
    if what == "batches":
        for partition in ("random", "sequential"):
            plan = input_pipeline.epoch_plan(
                corpus.tokens, BATCH, STEPS, partition, seed=0, epoch=0
            )
            started = time.perf_counter()
            for k in range(len(plan)):
                plan.batch(k)
            seconds = time.perf_counter() - started
            out[f"{partition}_batches_per_s"] = len(plan) / seconds
            out[f"{partition}_tokens_per_s"] = len(plan) * BATCH * STEPS / seconds
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def baseline_rss_mb() -> float:
    """Peak RSS of a fresh process that only imports ``rnn_jax.data`` (and NumPy)."""
    return json.loads(_run("--measure", "baseline", "", "", ""))["peak_rss_mb"]


def _run(*args: str) -> str:
    """This script in a fresh process. Linux keeps ``ru_maxrss`` across ``exec``, so a
    child's peak starts at this process's RSS: this one stays small (it never holds a
    corpus; even the generation runs in a child)."""
    cmd = [sys.executable, __file__, *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 10, 100], help="MB")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--make", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        what, path, token, cache_dir = args.measure
        print(json.dumps(measure(path, token, cache_dir, what)))
        return
    if args.make:
        make_corpus(Path(args.make[0]), float(args.make[1]))
        return

    rows = [
        "| MB | token | tokens | vocab | dtype | tokenise s | cold s | cached s | peak RSS cold MB "
        "| peak RSS cached MB | batches/s random | tokens/s random | batches/s sequential "
        "| tokens/s sequential |",
        "|" + "---|" * 14,
    ]
    work = Path(tempfile.mkdtemp(prefix="rnn_jax_ingest_"))
    try:
        for size in args.sizes:
            path = work / f"corpus_{size:g}MB.txt"
            _run("--make", str(path), str(size))
            # An existing corpus, not one written a moment ago: a file younger than 2 s
            # is rehashed on every load (rnn_jax.cache's "racy" rule).
            hour_ago = time.time_ns() - 3600 * 10**9
            os.utime(path, ns=(hour_ago, hour_ago))
            for token in ("char", "word"):
                cache = str(work / f"cache_{size:g}_{token}")
                fresh, cold, cached, batches = (
                    json.loads(_run("--measure", what, str(path), token, cache))
                    for what in ("tokenise", "cold", "cached", "batches")
                )
                assert not cold["cached"] and cached["cached"] and batches["cached"]
                rows.append(
                    f"| {size:g} | {token} | {cold['tokens']:,} | {cold['vocab']:,} "
                    f"| {cold['dtype']} | {fresh['seconds']:.2f} | {cold['seconds']:.2f} "
                    f"| {cached['seconds']:.3f} "
                    f"| {cold['peak_rss_mb']:.0f} | {cached['peak_rss_mb']:.0f} "
                    f"| {batches['random_batches_per_s']:,.0f} "
                    f"| {batches['random_tokens_per_s']:,.0f} "
                    f"| {batches['sequential_batches_per_s']:,.0f} "
                    f"| {batches['sequential_tokens_per_s']:,.0f} |"
                )
                print(rows[-1], flush=True)
            path.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows.append("")
    rows.append(
        f"Peak RSS of a process that only imports rnn_jax.data: {baseline_rss_mb():.0f} MB."
    )
    table = "\n".join(rows)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n", "utf-8")


if __name__ == "__main__":
    main()
