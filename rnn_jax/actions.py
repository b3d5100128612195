"""What the training loop does between steps: periodic actions, each owning its cadence.

The loop (``loop.train_loop``) runs the jitted step. After every step it shows each
action where it is (an ``At``); where an epoch ends, at the last step, or where any action
says it is ``due``, the loop closes a *record* (the metrics of the steps since the last
one, ``loop.make_record``) and calls every action, in list order, with that
``RecordPoint``. An action with a cadence (an ``Every``) acts at the record points its
cadence picks; the others act at every record point. A new thing to do every N steps is
a new action in the list a run is given; the loop does not change.

An action's hooks, all optional (``Action`` has them as no-ops):

    start(state)        once, after the step is compiled, before the first step
    after_step(at)      after every step, host-side bookkeeping only; True stops the
                        loop after this step (every action's is called, every process's)
    due(at)             whether this action needs a record after this step
    __call__(state, point)  at every record point
    close(end)          once, when the loop ends: ``end`` says how, None if it raised

The actions a run is given (``loop.fit`` and ``run``), in order: ``CheckFinite``,
``Evaluate``, ``Sample``, ``Progress``, ``Print``, ``RunFiles``, ``TensorBoard``, then
``Plan``, ``Save`` and ``StopWhen`` (the life cycle's). Which process does what is
decided where the list is made: every process computes (evaluates, samples, saves,
agrees to stop), process 0 alone prints and writes files.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from rnn_jax import checkpoint, parallel, report, run_folder
from rnn_jax.config import ModelConfig, RunConfig, TrainConfig
from rnn_jax.data import Vocab
from rnn_jax.loss import bits_per_token, perplexity
from rnn_jax.model import Params
from rnn_jax.signals import Interrupted
from rnn_jax.step import TrainState


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; names the window of steps it happened in."""


# --------------------------------------------------------------------------- where, when


@dataclass(frozen=True)
class At:
    """Where the loop is: ``step`` steps done, of ``total``, K = ``steps_per_epoch``."""

    step: int
    steps_per_epoch: int
    total: int
    num_epochs: int

    @property
    def epoch(self) -> int:
        """The 0-based epoch of the step just taken."""
        return (self.step - 1) // self.steps_per_epoch

    @property
    def epoch_end(self) -> bool:
        return self.step % self.steps_per_epoch == 0

    @property
    def last(self) -> bool:
        return self.step == self.total


@dataclass(frozen=True)
class Every:
    """A cadence: after every ``epochs``-th epoch and after the run's last epoch (``epochs``
    > 0), every ``steps`` steps (> 0), and at the last step of the budget (``last``)."""

    epochs: int = 0
    steps: int = 0
    last: bool = False

    def __call__(self, at: At) -> bool:
        epoch = at.epoch + 1
        by_epoch = (
            self.epochs > 0
            and at.epoch_end
            and (epoch % self.epochs == 0 or epoch == at.num_epochs)
        )
        by_step = self.steps > 0 and at.step % self.steps == 0
        return by_epoch or by_step or (self.last and at.last)


@dataclass
class RecordPoint:
    """What the actions at a record point share: where the loop is, one record per
    trained model (one, or a sweep's M members), the raw sums they were made from, and
    what actions add (``Sample``'s ``samples``)."""

    at: At
    records: list[dict[str, Any]]
    batches: int  # steps the records cover
    loss_sums: np.ndarray  # (M,) summed mean losses of those steps
    samples: list[str] | None = None

    @property
    def record(self) -> dict[str, Any]:
        """The record of a run of one model."""
        (record,) = self.records
        return record


@dataclass(frozen=True)
class End:
    """How the loop ended: the state, whether it stopped before its budget, and the
    running sums of an unfinished record (to save with the state)."""

    state: TrainState
    interrupted: bool
    sums: dict[str, Any] | None


class Action:
    """A no-op action; subclasses override the hooks they need (module docstring)."""

    every: Every = Every()

    def start(self, state: TrainState) -> None:
        del state

    def after_step(self, at: At) -> bool:
        del at
        return False

    def due(self, at: At) -> bool:
        return self.every(at)

    def __call__(self, state: TrainState, point: RecordPoint) -> None:
        del state, point

    def close(self, end: End | None) -> None:
        del end


# --------------------------------------------------------------------------- computing


class CheckFinite(Action):
    """Stop the run with ``NonFiniteLossError`` at the first record whose training
    perplexity is not finite."""

    def __call__(self, state: TrainState, point: RecordPoint) -> None:
        record, at, n = point.record, point.at, point.batches
        if not math.isfinite(record["train_ppl"]):
            raise NonFiniteLossError(
                f"training loss became {float(point.loss_sums[0]) / n:.4g} (perplexity "
                f"{record['train_ppl']}) between steps {at.step - n + 1} and {at.step} "
                f"(epoch {at.epoch + 1}); lower the learning rate or the clipping threshold theta"
            )


class Evaluate(Action):
    """Validation perplexity (``val_ppl``, and ``val_bpc`` for characters) at its cadence.

    ``evaluate(params, Xs, Ys) -> (nll_sum, num_tokens)``, scalars or one per member, over
    ``batches`` ``(Xs, Ys)``; with ``batches`` None (no validation split) it only keeps
    the cadence's record points.
    """

    def __init__(
        self, every: Every, evaluate: Callable[..., Any], batches: Any | None, char: bool
    ) -> None:
        self.every, self.evaluate, self.batches, self.char = every, evaluate, batches, char

    def __call__(self, state: TrainState, point: RecordPoint) -> None:
        if self.batches is None or not self.every(point.at):
            return
        nll, count = self.evaluate(state.params, *self.batches)
        nlls, counts = np.atleast_1d(np.asarray(nll)), np.atleast_1d(np.asarray(count))
        for record, n, c in zip(point.records, nlls, counts, strict=True):
            record["val_ppl"] = perplexity(n, c)
            if self.char:
                record["val_bpc"] = bits_per_token(record["val_ppl"])


class Sample(Action):
    """Greedy continuations of the run's prefixes at its cadence, into ``point.samples``.

    ``generate(params) -> list[str]`` (``sample.predict`` bound to the run's prefixes).
    """

    def __init__(self, every: Every, generate: Callable[[Params], list[str]]) -> None:
        self.every, self.generate = every, generate

    def __call__(self, state: TrainState, point: RecordPoint) -> None:
        if self.every(point.at):
            point.samples = self.generate(state.params)


class StopWhen(Action):
    """Stop after the step at which a signal arrived: ``received()`` is its number, or
    None. With several processes they all stop after the same step, the one they agree on
    (``parallel.agreed_stop``), and ``signum`` is the signal they agree it was. Asked once
    before the first step too, after ``on_start`` (``Signals.start_training``): a signal
    there raises ``Interrupted``, nothing trained."""

    def __init__(
        self, received: Callable[[], int | None], on_start: Callable[[], None] | None = None
    ) -> None:
        self.received, self.on_start = received, on_start
        self.signum: int | None = None
        self.asked = 0  # the sync id: calls of agreed_stop, the same count on every process

    def start(self, state: TrainState) -> None:
        if self.on_start is not None:
            self.on_start()
        if self._agree() is not None:
            name = signal.Signals(self.signum).name
            raise Interrupted(self.signum, f"{name} before training started; stopped")

    def after_step(self, at: At) -> bool:
        return self._agree() is not None

    def _agree(self) -> int | None:
        self.asked += 1
        self.signum = parallel.agreed_stop(self.received(), self.asked)
        return self.signum


class Save(Action):
    """Checkpoints: at the first record of a run that has none yet, at its cadence (every
    ``save_every`` epochs, ``save_every_steps`` steps, the last step), and where the loop
    stopped early, with the running sums of the unfinished record. Every process saves
    (Orbax's multi-host contract)."""

    def __init__(
        self,
        manager: ocp.CheckpointManager,
        every: Every,
        *,
        model_config: ModelConfig,
        train_config: TrainConfig,
        vocab: Vocab,
        steps_per_epoch: int,
        corpus: dict[str, Any],
        num_devices: int,
        saved_any: bool,
        init_from: dict[str, Any] | None = None,
    ) -> None:
        self.manager, self.every, self.saved_any = manager, every, saved_any
        self.init_from = init_from  # a fine-tune's source, carried by every checkpoint
        self.model_config, self.train_config, self.vocab = model_config, train_config, vocab
        self.steps_per_epoch, self.corpus, self.num_devices = steps_per_epoch, corpus, num_devices

    def __call__(self, state: TrainState, point: RecordPoint) -> None:
        if not self.saved_any or self.every(point.at):
            self.save(state, point.record, None)

    def close(self, end: End | None) -> None:
        if (
            end is not None
            and end.interrupted
            and int(end.state.step) not in self.manager.all_steps()
        ):
            self.save(end.state, None, end.sums)

    def save(
        self, state: TrainState, record: dict[str, Any] | None, sums: dict[str, Any] | None
    ) -> None:
        checkpoint.save(
            self.manager,
            state,
            epoch=int(state.step) // self.steps_per_epoch,
            model_config=self.model_config,
            train_config=self.train_config,
            vocab=self.vocab,
            metrics=record,
            corpus=self.corpus,
            extra={
                "num_devices": self.num_devices,
                **({"init_from": self.init_from} if self.init_from else {}),
                **({"sums": sums} if sums else {}),
            },
        )
        self.saved_any = True


# --------------------------------------------------------------------------- reporting


class Progress(Action):
    """A progress bar (on a terminal, or as ``enabled`` says): a tick per step, the
    latest perplexity and tokens/s at each record."""

    def __init__(self, total: int, start_step: int, enabled: bool | None) -> None:
        self.total, self.start_step = total, start_step
        self.disable = None if enabled is None else not enabled
        self.bar: tqdm | None = None

    def start(self, state: TrainState) -> None:
        self.bar = tqdm(
            total=self.total,
            initial=self.start_step,
            unit="step",
            disable=self.disable,
            leave=False,
        )

    def after_step(self, at: At) -> bool:
        self.bar.update()
        return False

    def __call__(self, state: TrainState, point: RecordPoint) -> None:
        record = point.records[0]
        self.bar.set_postfix(
            ppl=f"{record['train_ppl']:.2f}", tok_s=f"{record['tokens_per_s']:.0f}"
        )

    def close(self, end: End | None) -> None:
        if self.bar is not None:
            self.bar.close()


class Plan(Action):
    """The run's budget, printed before the first step (steps, epochs, tokens), and once
    the first record's steps are timed, the time the remaining steps take at that speed
    (the steps alone: evaluation, sampling and saving come on top)."""

    def __init__(
        self,
        echo: Callable[[str], None],
        total: int,
        start_step: int,
        steps_per_epoch: int,
        tokens_per_step: int,
    ) -> None:
        self.echo, self.total, self.start_step = echo, total, start_step
        self.steps_per_epoch, self.tokens_per_step = steps_per_epoch, tokens_per_step
        self.estimated = False

    def start(self, state: TrainState) -> None:
        self.echo(
            plan_line(self.total, self.start_step, self.steps_per_epoch, self.tokens_per_step)
        )

    def __call__(self, state: TrainState, point: RecordPoint) -> None:
        left = self.total - point.at.step
        if self.estimated or left <= 0:
            return
        self.estimated = True
        speed = point.records[0]["tokens_per_s"]
        seconds = left * self.tokens_per_step / speed
        self.echo(
            f"at {speed:,.0f} tokens/s: about {duration(seconds)} for the {left:,} steps left"
        )


def plan_line(total: int, start_step: int, steps_per_epoch: int, tokens_per_step: int) -> str:
    """``plan: 3,150,000 steps (100 epochs of 31,500 steps), 1.0e9 tokens``; a resumed
    run's says how many are left."""
    epochs = total / steps_per_epoch
    of = f"{epochs:.4g} epoch{'' if epochs == 1 else 's'} of {steps_per_epoch:,} steps"
    left = total - start_step
    steps = f"{total:,} steps" if not start_step else f"{left:,} steps more, to step {total:,}"
    return f"plan: {steps} ({of}), {count(left * tokens_per_step)} tokens"


def count(n: int) -> str:
    """``12,345``, and from ten million on ``1.2e7``."""
    if n < 10**7:
        return f"{n:,}"
    mantissa, exponent = f"{n:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def duration(seconds: float) -> str:
    """``16 h 20 min``, ``4 min 10 s``, ``12 s``."""
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    if s >= 60:
        return f"{s // 60} min {s % 60} s"
    return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"


class Print(Action):
    """The record as a line of text, with the samples below it, wherever samples were
    made or a step-cadence evaluation ran (``eval_every_steps``)."""

    def __init__(self, echo: Callable[[str], None], eval_every_steps: int) -> None:
        self.echo, self.evaluated = echo, Every(steps=eval_every_steps)

    def __call__(self, state: TrainState, point: RecordPoint) -> None:
        if point.samples is not None or self.evaluated(point.at):
            self.echo(report.format_record(point.record))
        for text in point.samples or ():
            self.echo(f"  {text!r}")


class RunFiles(Action):
    """The run folder's files: ``config.json`` at the start, then at each record a line
    of ``metrics.jsonl``, the samples in ``samples.txt``, and ``perplexity.png`` redrawn
    where samples were made and at the end."""

    def __init__(
        self,
        run_dir: Path,
        model_config: ModelConfig,
        config: TrainConfig,
        run_config: RunConfig,
        corpus: dict[str, Any] | None = None,
        init_from: dict[str, Any] | None = None,
    ) -> None:
        self.run_dir, self.corpus, self.init_from = run_dir, corpus, init_from
        self.configs = (model_config, config, run_config)

    def start(self, state: TrainState) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        run_folder.write_config(
            self.run_dir, *self.configs, corpus=self.corpus, init_from=self.init_from
        )

    def __call__(self, state: TrainState, point: RecordPoint) -> None:
        metrics = self.run_dir / run_folder.METRICS
        report.append_jsonl(metrics, point.record)
        if point.samples is not None:
            report.append_samples(self.run_dir / run_folder.SAMPLES, point.record, point.samples)
        if point.samples is not None or point.at.last:
            report.plot_perplexity(report.read_jsonl(metrics), self.run_dir / run_folder.PLOT)


class TensorBoard(Action):
    """TensorBoard event files in ``RUN_DIR/events``: the record's scalars and the
    samples at each record. A resumed run purges the steps it trains again."""

    def __init__(self, run_dir: Path, start_step: int) -> None:
        self.logdir = run_dir / run_folder.EVENTS
        self.purge_step = start_step + 1 if start_step else None
        self.writer: report.EventWriter | None = None

    def start(self, state: TrainState) -> None:
        self.writer = report.EventWriter(self.logdir, purge_step=self.purge_step)

    def __call__(self, state: TrainState, point: RecordPoint) -> None:
        self.writer.add_record(point.record, point.samples)

    def close(self, end: End | None) -> None:
        if self.writer is not None:
            self.writer.close()
