"""What a run leaves behind for a reader: metrics as JSON lines, TensorBoard events, the
samples, and the book's perplexity plot (train and validation) as a PNG.

Every file is written so that a crash leaves either the old or the new content: whole
files through a temporary file and ``os.replace``, JSON lines appended one whole line at
a time (a crash can only tear the last line, which ``read_jsonl`` drops on resume).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, ClassVar

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt


class MetricsFileError(ValueError):
    """A line of ``metrics.jsonl`` other than a torn last one cannot be read."""


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step (a temporary file, then ``os.replace``)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    line = json.dumps(record, allow_nan=True) + "\n"
    with path.open("a", encoding="utf-8") as f:
        f.write(line)


def read_jsonl(path: Path, *, drop_torn_tail: bool = True) -> list[dict[str, Any]]:
    """The records of ``path``; a torn last line (what a crash mid-write leaves) is
    dropped, any other unreadable line raises ``MetricsFileError`` naming file and line."""
    if not path.exists():
        return []
    lines = path.read_text("utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if drop_torn_tail and number == len(lines):
                break
            raise MetricsFileError(
                f"{path}, line {number}: not a JSON record ({err.msg})"
            ) from None
    return records


def append_samples(path: Path, record: dict[str, Any], samples: list[str]) -> None:
    """One ``step N<TAB>epoch E<TAB>text`` line per sample (newlines escaped as ``\\n``)."""
    lines = "".join(
        f"step {record['step']}\tepoch {record['epoch']}\t{json.dumps(text)[1:-1]}\n"
        for text in samples
    )
    with path.open("a", encoding="utf-8") as f:
        f.write(lines)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the records of steps after ``step`` (a resumed run trains them again)."""
    if path.exists():
        kept = [r for r in read_jsonl(path) if _step_of(r) <= step]
        write_atomic(path, "".join(json.dumps(r, allow_nan=True) + "\n" for r in kept))


def truncate_samples(path: Path, step: int) -> None:
    """Drop the sample lines of steps after ``step``."""
    if path.exists():
        lines = path.read_text("utf-8").splitlines(keepends=True)
        kept = []
        for line in lines:
            head = line.split("\t", 1)[0].split()
            if len(head) == 2 and head[0] == "step" and head[1].isdigit() and int(head[1]) <= step:
                kept.append(line)
        write_atomic(path, "".join(kept))


def _step_of(record: dict[str, Any]) -> int:
    return int(record.get("step", 0))


def plot_perplexity(records: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Train (and validation, when present) perplexity, log-scaled like the book's; per
    epoch when every record closes an epoch, per step otherwise."""
    by_epoch = all(isinstance(r.get("epoch"), int) for r in records)
    x_key = "epoch" if by_epoch else "step"
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for key, label in (("train_ppl", "train"), ("val_ppl", "validation")):
        points = [(r[x_key], r[key]) for r in records if r.get(key) is not None]
        if any(math.isfinite(v) for _, v in points):  # validation may skip records
            ax.plot(*zip(*points, strict=True), label=label)
    ax.set_xlabel(x_key)
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    try:
        fig.savefig(tmp)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


class EventWriter:
    """TensorBoard event files (``tensorboardX``, no TensorFlow) for a run's records.

    Scalars per record, at its step: ``train/perplexity``, ``val/perplexity``, their bits
    per character, ``train/tokens_per_s``, ``train/grad_norm`` (before clipping),
    ``train/lr``; text: the samples. A resumed run passes ``purge_step`` (the step it
    resumes from): TensorBoard then discards the earlier files' events from that step on,
    so a resumed curve has no duplicated steps.
    """

    SCALARS: ClassVar[dict[str, str]] = {
        "train_ppl": "train/perplexity",
        "train_bpc": "train/bits_per_char",
        "val_ppl": "val/perplexity",
        "val_bpc": "val/bits_per_char",
        "tokens_per_s": "train/tokens_per_s",
        "grad_norm": "train/grad_norm",
        "lr": "train/lr",
        "clipped_fraction": "train/clipped_fraction",
    }

    def __init__(self, logdir: Path, purge_step: int | None = None) -> None:
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(str(logdir), purge_step=purge_step, flush_secs=30)

    def add_record(self, record: dict[str, Any], samples: list[str] | None = None) -> None:
        step = int(record["step"])
        for key, tag in self.SCALARS.items():
            value = record.get(key)
            if value is not None and math.isfinite(value):
                self._writer.add_scalar(tag, value, step)
        for i, text in enumerate(samples or ()):
            self._writer.add_text(f"samples/{i}", f"    {text}", step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
