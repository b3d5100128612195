"""What a run leaves behind for a reader: metrics as JSON lines, and the book's
perplexity-vs-epoch plot (train and validation) as a PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, allow_nan=True) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def plot_perplexity(records: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Train (and validation, when present) perplexity per epoch, log-scaled like the book's."""
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for key, label in (("train_ppl", "train"), ("val_ppl", "validation")):
        points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
        if any(math.isfinite(v) for _, v in points):  # validation may skip epochs
            ax.plot(*zip(*points, strict=True), label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def truncate_metrics(path: Path, epoch: int) -> None:
    """Drop the records of epochs after ``epoch`` (a resumed run trains them again)."""
    if path.exists():
        kept = [r for r in read_jsonl(path) if r["epoch"] <= epoch]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept), "utf-8")


def truncate_samples(path: Path, epoch: int) -> None:
    """Drop the ``epoch N<TAB>text`` lines of epochs after ``epoch``."""
    if path.exists():
        lines = path.read_text("utf-8").splitlines(keepends=True)
        kept = [line for line in lines if int(line.split("\t", 1)[0].split()[1]) <= epoch]
        path.write_text("".join(kept), "utf-8")
