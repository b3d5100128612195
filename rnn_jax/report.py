"""What a run reports, and in which forms: a record as a line of text, metrics as JSON
lines, the samples, TensorBoard events, and the book's perplexity plot (train and
validation) as a PNG.

A *record* is one line of ``metrics.jsonl``: a dict with ``epoch``, ``step``,
``train_ppl`` (and ``train_bpc`` for char tokens), ``val_ppl`` (``None`` where not
measured; ``val_bpc``), ``tokens_per_s``, ``grad_norm``, ``wall_s`` and ``lr``
(``loop.make_record`` makes it).

Every file is written so that a crash leaves either the old or the new content: whole
files through ``files.write_atomic``, JSON lines appended one whole line at a time (a
crash can only tear the last line, which ``read_jsonl`` drops on resume).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, ClassVar

from rnn_jax.files import write_atomic


class MetricsFileError(ValueError):
    """A line of ``metrics.jsonl`` other than a torn last one cannot be read."""


def format_record(record: dict[str, Any]) -> str:
    """``epoch 10: train ppl 12.87, val ppl 12.55 (3.650 bpc), 41,577 tokens/s, grad norm 0.25``
    (``step N`` in place of the epoch for a record inside an epoch)."""
    val = ""
    if record["val_ppl"] is not None:
        val = f", val ppl {record['val_ppl']:.2f}"
        if "val_bpc" in record:
            val += f" ({record['val_bpc']:.3f} bpc)"
    unit = (
        f"epoch {record['epoch']}" if isinstance(record["epoch"], int) else f"step {record['step']}"
    )
    return (
        f"{unit}: train ppl {record['train_ppl']:.2f}{val}, "
        f"{record['tokens_per_s']:,.0f} tokens/s, grad norm {record['grad_norm']:.2f}"
    )


def summary(record: dict[str, Any]) -> str:
    """``epoch 30 (step 240), perplexity 8.94 (3.16 bpc), validation perplexity 9.82``."""
    text = f"epoch {record['epoch']} (step {record['step']}), perplexity {record['train_ppl']:.2f}"
    if "train_bpc" in record:
        text += f" ({record['train_bpc']:.3f} bpc)"
    if record.get("val_ppl") is not None:
        text += f", validation perplexity {record['val_ppl']:.2f}"
        if "val_bpc" in record:
            text += f" ({record['val_bpc']:.3f} bpc)"
    return text


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


def pyplot() -> Any:
    """matplotlib's ``pyplot`` on the Agg backend (files only; never needs a display),
    imported at the first plot: a run's first step comes 0.3 s sooner without it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_perplexity(records: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Train (and validation, when present) perplexity, log-scaled like the book's; per
    epoch when every record closes an epoch, per step otherwise."""
    by_epoch = all(isinstance(r.get("epoch"), int) for r in records)
    x_key = "epoch" if by_epoch else "step"
    plt = pyplot()
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
    try:
        write_atomic(path, lambda f: fig.savefig(f, format="png"))
    finally:
        plt.close(fig)


class EventWriter:
    """TensorBoard event files (``tensorboardX``'s protos, no TensorFlow) for a run's records.

    Scalars per record, at its step: ``train/perplexity``, ``val/perplexity``, their bits
    per character, ``train/tokens_per_s``, ``train/grad_norm`` (before clipping),
    ``train/lr``; text: the samples. A resumed run passes ``purge_step`` (the first step
    it trains): TensorBoard then discards the earlier files' events from that step on,
    so a resumed curve has no duplicated steps.

    Events are written and flushed in the caller's thread, so a failed write (a full
    disk) raises ``OSError`` here, as every other file of a run does. (tensorboardX's
    ``SummaryWriter`` writes from a thread of its own: a failed write there killed the
    thread, was lost, and then blocked the run once its queue filled.)
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

    @staticmethod
    def available() -> bool:
        """Whether ``tensorboardX`` can be imported (the GPU image lacks it)."""
        import importlib.util

        return importlib.util.find_spec("tensorboardX") is not None

    def __init__(self, logdir: Path, purge_step: int | None = None) -> None:
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import SessionLog

        Path(logdir).mkdir(parents=True, exist_ok=True)
        self._file = EventsWriter(str(Path(logdir) / "events"))  # events.out.tfevents.*
        if purge_step is not None:  # TensorBoard's restart marker: it purges later steps
            self._write(purge_step, session_log=SessionLog(status=SessionLog.START))
            self._file.flush()

    def add_record(self, record: dict[str, Any], samples: list[str] | None = None) -> None:
        from tensorboardX import summary

        step = int(record["step"])
        for key, tag in self.SCALARS.items():
            value = record.get(key)
            if value is not None and math.isfinite(value):
                self._write(step, summary=summary.scalar(tag, value))
        for i, text in enumerate(samples or ()):
            self._write(step, summary=summary.text(f"samples/{i}", f"    {text}"))
        self._file.flush()

    def _write(self, step: int, **fields: Any) -> None:
        from tensorboardX.proto.event_pb2 import Event

        self._file.write_event(Event(wall_time=time.time(), step=step, **fields))

    def close(self) -> None:
        self._file.close()
