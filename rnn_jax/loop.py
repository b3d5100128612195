"""The training loop on the host (D2L 9.5.3, ``train_ch8``): jitted steps, and between
them the periodic actions of ``rnn_jax.actions``.

Shape legend: K minibatches per epoch, B batch, T num_steps, M models trained together.

``train_loop`` is the one loop: it takes the steps a ``Steps`` object makes (one model's
jitted step here, ``ModelSteps``; a sweep's vmapped step over M members in
``rnn_jax.sweep``), sums their metrics on the device without waiting, and where a
record closes (every epoch's end, the last step, and wherever an action is due) makes
the record (``make_record``) and hands it to the actions. ``fit`` trains one model: the
standard actions (check, evaluate, sample, print, files, events) and the caller's.

The budget is ``num_epochs`` epochs of K minibatches, or ``max_steps`` optimizer steps
if sooner. Batches derive from ``(seed, epoch)`` and the position in the data from
``TrainState.step``, so a run restarted from a saved state continues exactly. A record
covers the steps since the previous one; its running sums are part of what a
checkpoint saves, so a run interrupted inside a record's steps writes, once resumed,
the same record as a run that never stopped.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm.auto import tqdm

from rnn_jax import input_pipeline, parallel, report, sample
from rnn_jax.actions import (
    Action,
    At,
    CheckFinite,
    End,
    Evaluate,
    Every,
    Print,
    Progress,
    RecordPoint,
    RunFiles,
    Sample,
    TensorBoard,
)
from rnn_jax.config import ModelConfig, RunConfig, TrainConfig
from rnn_jax.input_pipeline import Dataset
from rnn_jax.loss import bits_per_token, perplexity
from rnn_jax.model import Params
from rnn_jax.step import (
    Batch,
    Metrics,
    TrainState,
    current_lr,
    init_train_state,
    make_evaluate,
    make_optimizer,
    make_train_step,
)

SUMMED = ("loss", "grad_norm", "clipped")  # the step metrics a record sums, where present


class Steps(Protocol):
    """What ``train_loop`` trains: compiled steps over the minibatches of each epoch."""

    steps_per_epoch: int  # K
    tokens_per_batch: int  # B T of one model
    compile_s: float  # the step's compile time

    def begin_epoch(self, state: TrainState, epoch: int, fresh: bool) -> TrainState:
        """Prepare ``epoch``'s minibatches; ``fresh``: the epoch starts here, so the
        carried hidden state starts from zeros (the book restarts it each epoch)."""
        ...

    def __call__(self, state: TrainState, k: int) -> tuple[TrainState, Metrics]:
        """The step on minibatch ``k`` of the prepared epoch."""
        ...

    def learning_rates(self, state: TrainState) -> np.ndarray | None:
        """The rate(s) of the last update, one per model, for the records."""
        ...


@dataclass
class FitResult:
    state: TrainState
    history: list[dict[str, Any]]  # one record per record point reached in this call
    compile_s: float  # AOT compile time of the train step
    interrupted: bool = False
    sums: dict[str, Any] | None = None  # running sums of an unfinished record, to save


# --------------------------------------------------------------------------- records


def make_record(
    step: int,
    K: int,
    batches: int,
    loss_sum: float,
    grad_norm_sum: float,
    seconds: float,
    tokens_per_batch: int,
    char: bool,
    lr: float | None = None,
    clipped: int | None = None,
) -> dict[str, Any]:
    """The record of ``batches`` steps ending at ``step``: train perplexity of the summed
    mean losses (and bits per character for char tokens), tokens/s over ``seconds``
    (compile time excluded), the mean gradient norm before clipping, and, where given,
    the learning rate and the fraction of steps clipped; ``val_ppl`` is None until
    ``actions.Evaluate`` fills it."""
    epoch = step // K if step % K == 0 else round(step / K, 4)
    record: dict[str, Any] = {
        "epoch": epoch,
        "step": step,
        "train_ppl": perplexity(loss_sum, batches),
        "val_ppl": None,
        "tokens_per_s": batches * tokens_per_batch / max(seconds, 1e-9),
        "grad_norm": float(grad_norm_sum) / batches,
        "wall_s": seconds,
    }
    if char:
        record["train_bpc"] = bits_per_token(record["train_ppl"])
    if lr is not None:
        record["lr"] = float(lr)
    if clipped is not None:
        record["clipped_fraction"] = int(clipped) / batches
    return record


class Meter:
    """The open record: the ``SUMMED`` metrics summed on the device (``()`` for one
    model, ``(M,)`` for M), the steps they cover and the seconds those took. ``sums``:
    what a checkpoint saved mid-record (float32 values stored exactly, so the resumed
    sums continue bit for bit)."""

    def __init__(self, sums: dict[str, Any] | None = None) -> None:
        self.sums: dict[str, jax.Array] = {}
        self.batches, self.seconds = 0, 0.0
        if sums:
            self.sums = {n: jnp.asarray(sums[n], jnp.float32) for n in ("loss", "grad_norm")}
            self.batches, self.seconds = int(sums["batches"]), float(sums.get("seconds", 0.0))

    def add(self, metrics: Metrics) -> None:
        for name in SUMMED:
            if name in metrics:
                value = metrics[name]
                if name not in self.sums:
                    dtype = jnp.int32 if value.dtype == jnp.bool_ else value.dtype
                    self.sums[name] = jnp.zeros(value.shape, dtype)
                self.sums[name] += value
        self.batches += 1

    def lap(self, since: float, wait: bool = False) -> None:
        """Count the time from ``since`` to now (after the steps finish, with ``wait``)."""
        if wait:
            jax.block_until_ready(self.sums)
        self.seconds += time.perf_counter() - since

    def close(
        self, at: At, tokens_per_batch: int, char: bool, lrs: np.ndarray | None
    ) -> RecordPoint:
        """The record point of the steps so far (one record per model), then a new record."""
        sums = {name: np.atleast_1d(v) for name, v in jax.device_get(self.sums).items()}
        records = [
            make_record(
                at.step,
                at.steps_per_epoch,
                self.batches,
                sums["loss"][i],
                sums["grad_norm"][i],
                self.seconds,
                tokens_per_batch,
                char,
                lr=None if lrs is None else lrs[i],
                clipped=sums["clipped"][i] if "clipped" in sums else None,
            )
            for i in range(len(sums["loss"]))
        ]
        point = RecordPoint(at, records, self.batches, sums["loss"])
        self.sums, self.batches, self.seconds = {}, 0, 0.0
        return point

    def open_sums(self) -> dict[str, Any] | None:
        """The unfinished record's sums of one model, as a checkpoint stores them."""
        if not self.batches:
            return None
        loss, grad_norm = jax.device_get((self.sums["loss"], self.sums["grad_norm"]))
        return {
            "loss": float(loss),
            "grad_norm": float(grad_norm),
            "batches": self.batches,
            "seconds": self.seconds,
        }


# --------------------------------------------------------------------------- the loop


def train_loop(
    steps: Steps,
    state: TrainState,
    actions: Sequence[Action],
    *,
    total: int,
    num_epochs: int,
    char: bool,
    sums: dict[str, Any] | None = None,
) -> tuple[TrainState, list[RecordPoint], End]:
    """Take steps from ``state.step`` to ``total``, calling ``actions`` as the module
    docstring of ``rnn_jax.actions`` says; ``sums`` continue a saved unfinished record.

    Returns the last state, the record points reached, and how it ended: at the budget,
    or ``interrupted`` by an action's ``after_step`` (at a step that closed no record,
    with the running ``sums`` to save with the state).
    """
    K = steps.steps_per_epoch
    start = done = int(np.ravel(state.step)[0])  # the steps taken (a sweep's members share it)
    meter = Meter(sums)
    points: list[RecordPoint] = []
    end = None
    try:
        for action in actions:
            action.start(state)
        stop = False
        for s in range(start, total):
            epoch, k = divmod(s, K)
            if k == 0 or s == start:
                state = steps.begin_epoch(state, epoch, fresh=k == 0)
            tick = time.perf_counter()
            state, metrics = steps(state, k)
            meter.add(metrics)
            done = s + 1
            at = At(done, K, total, num_epochs)
            stop = any([action.after_step(at) for action in actions])  # each sees every step
            if at.epoch_end or at.last or any(action.due(at) for action in actions):
                meter.lap(tick, wait=True)
                lrs = steps.learning_rates(state)
                points.append(meter.close(at, steps.tokens_per_batch, char, lrs))
                for action in actions:
                    action(state, points[-1])
            else:
                meter.lap(tick, wait=stop)
            if stop:
                break
        interrupted = stop and done < total  # a stop at the end is the end
        end = End(state, interrupted, meter.open_sums() if interrupted else None)
    finally:
        for action in actions:
            action.close(end)
    return state, points, end


# --------------------------------------------------------------------------- one model


class ModelSteps:
    """The steps of one model (``step.make_train_step``), compiled ahead of the loop on
    epoch 0's first minibatch. With ``mesh`` the batch axis is sharded over its devices:
    each process builds only its own rows of every minibatch, the state's hidden rows
    live with them, and the parameters are replicated; the same jitted step runs."""

    def __init__(
        self,
        model_config: ModelConfig,
        config: TrainConfig,
        dataset: Dataset,
        optimizer: optax.GradientTransformation,
        state: TrainState,
        mesh: Mesh | None = None,
    ) -> None:
        self.model_config, self.config, self.dataset, self.mesh = (
            model_config,
            config,
            dataset,
            mesh,
        )
        self.steps_per_epoch = input_pipeline.steps_per_epoch(config, dataset)
        self.tokens_per_batch = config.batch_size * config.num_steps
        self.rows = None if mesh is None else parallel.process_rows(config.batch_size, mesh)
        step_fn = make_train_step(
            model_config, optimizer, carry_hidden=config.partition == "sequential", mesh=mesh
        )
        started = time.perf_counter()
        first = input_pipeline.train_plan(dataset, config, 0, self.rows)[0]
        self.step = step_fn.lower(state, self._put(first)).compile()
        self.compile_s = time.perf_counter() - started
        self.plan: input_pipeline.EpochPlan | None = None

    def _put(self, batch: tuple[np.ndarray, np.ndarray]) -> Batch | tuple[np.ndarray, np.ndarray]:
        return batch if self.mesh is None else parallel.put_batch(*batch, self.mesh)

    def begin_epoch(self, state: TrainState, epoch: int, fresh: bool) -> TrainState:
        self.plan = input_pipeline.train_plan(self.dataset, self.config, epoch, self.rows)
        if not fresh:
            return state
        # A fresh array: the step donates the state it is given.
        hidden = parallel.zero_hidden(self.model_config, self.config.batch_size, self.mesh)
        return state.replace(hidden=hidden)

    def __call__(self, state: TrainState, k: int) -> tuple[TrainState, Metrics]:
        return self.step(state, self._put(self.plan[k]))

    def learning_rates(self, state: TrainState) -> np.ndarray:
        return np.atleast_1d(float(current_lr(state.opt_state)))


def fit(
    model_config: ModelConfig,
    config: TrainConfig,
    dataset: Dataset,
    *,
    state: TrainState | None = None,
    sums: dict[str, Any] | None = None,
    out_dir: Path | None = None,
    actions: Sequence[Action] = (),
    echo: Callable[[str], None] = tqdm.write,
    progress: bool | None = None,
    run_config: RunConfig | None = None,
    mesh: Mesh | None = None,
    init_from: dict[str, Any] | None = None,
) -> FitResult:
    """Train one model from ``state`` (or a fresh one from ``config.seed``) to the step
    budget, with the actions every run has, then ``actions`` (the life cycle's ``Save``
    and ``StopWhen``).

    At each record: train perplexity (and bits per character for char tokens), tokens/s
    (warm: the step is compiled ahead of the loop, ``compile_s``), the gradient's global
    norm before clipping, the learning rate; validation perplexity every ``eval_every``
    epochs / ``eval_every_steps`` steps and greedy samples every ``sample_every``
    epochs, both also at the end. Records and samples are printed through ``echo``; with
    ``out_dir`` they go to the run folder's files and TensorBoard events too.
    ``progress=None`` shows a progress bar only on a terminal. ``mesh``: see
    ``ModelSteps``. An action that stops the loop early returns ``interrupted=True``, a
    state that resumes exactly, and the running ``sums`` to save with it. ``init_from``:
    a fine-tune's source (``transfer.Source``), recorded in ``config.json``.
    """
    if model_config.vocab_size != dataset.vocab_size:
        raise ValueError(
            f"model vocab_size {model_config.vocab_size} != dataset vocab size {dataset.vocab_size}"
        )
    run_config = run_config or RunConfig()
    total = input_pipeline.total_steps(config, dataset)
    optimizer = make_optimizer(config, total)
    if mesh is not None:
        parallel.check_batch(config.batch_size, mesh)
    if state is None:
        key = jax.random.key(config.seed)
        state = init_train_state(model_config, optimizer, config.batch_size, key, mesh)
    elif mesh is not None:
        state = parallel.shard_state(state, mesh)
    if mesh is None:  # committed to the device as a restored state is: a new, a resumed and
        # a fine-tuned run lower to one program (one compile, one compilation cache entry)
        state = jax.device_put(state, jax.devices()[0])
    steps = ModelSteps(model_config, config, dataset, optimizer, state, mesh)
    standard = standard_actions(
        model_config,
        config,
        dataset,
        int(state.step),
        total,
        out_dir,
        echo,
        progress,
        run_config,
        mesh,
        init_from,
    )
    char = dataset.token == "char"
    state, points, end = train_loop(
        steps,
        state,
        [*standard, *actions],
        total=total,
        num_epochs=config.num_epochs,
        char=char,
        sums=sums,
    )
    history = [point.record for point in points]
    return FitResult(state, history, steps.compile_s, end.interrupted, end.sums)


def standard_actions(
    model_config: ModelConfig,
    config: TrainConfig,
    dataset: Dataset,
    start_step: int,
    total: int,
    out_dir: Path | None,
    echo: Callable[[str], None],
    progress: bool | None,
    run_config: RunConfig,
    mesh: Mesh | None,
    init_from: dict[str, Any] | None = None,
) -> list[Action]:
    """The actions of ``fit``: check, evaluate, sample, progress, print, and with
    ``out_dir`` the run folder's files and TensorBoard events."""
    char = dataset.token == "char"
    evaluate_every = Every(
        epochs=config.eval_every,
        steps=config.eval_every_steps,
        last=bool(config.eval_every or config.eval_every_steps),
    )
    sample_every = Every(epochs=config.sample_every, last=bool(config.sample_every))
    generate = functools.partial(
        _greedy_samples,
        input_pipeline.sample_prefixes(config, dataset),
        config.num_preds,
        model_config,
        dataset,
    )
    actions: list[Action] = [
        CheckFinite(),
        Evaluate(
            evaluate_every,
            make_evaluate(model_config, mesh),
            validation_batches(config, dataset, mesh),
            char,
        ),
        Sample(sample_every, generate),
        Progress(total, start_step, progress),
        Print(echo, config.eval_every_steps),
    ]
    if out_dir is not None:
        actions.append(
            RunFiles(out_dir, model_config, config, run_config, dataset.fingerprint, init_from)
        )
        if run_config.tensorboard and report.EventWriter.available():
            actions.append(TensorBoard(out_dir, start_step))
        elif run_config.tensorboard:
            echo("note: tensorboardX is not installed; no TensorBoard events are written")
    return actions


def _greedy_samples(
    prefixes: list[str],
    num_preds: int,
    model_config: ModelConfig,
    dataset: Dataset,
    params: Params,
) -> list[str]:
    return sample.predict(
        prefixes,
        num_preds,
        model_config,
        params,
        dataset.vocab,
        dataset.token,
        preprocess=dataset.preprocess,
    )


def validation_batches(
    config: TrainConfig, dataset: Dataset, mesh: Mesh | None = None
) -> tuple[jax.Array, jax.Array] | None:
    """The tokens a run validates on (``input_pipeline.validation_tokens``: the split cut
    to ``eval_tokens``) as ``(Xs, Ys)`` ``(K, B, T)`` on the device(s), or None when they
    are fewer than two."""
    tokens = input_pipeline.validation_tokens(config, dataset)
    if len(tokens) < 2:
        return None
    Xs, Ys = input_pipeline.eval_batches(tokens, config.batch_size, config.num_steps)
    if mesh is None:
        return jnp.asarray(Xs), jnp.asarray(Ys)
    return parallel.put_eval_batches(Xs, Ys, mesh)
