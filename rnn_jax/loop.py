"""The training loop on the host (D2L 9.5.3, ``train_ch8``): jitted steps, then
perplexity, throughput, samples and the run folder's files.

The loop owns everything impure (time, printing, files); the step it drives is pure.
Batches derive from ``(seed, epoch)`` and the position in the data from
``TrainState.step``, so a run restarted from a saved state continues exactly.

The budget is ``num_epochs`` epochs of K minibatches, or ``max_steps`` optimizer steps
if sooner. A *record* (one line of ``metrics.jsonl``) closes at every epoch's end, every
``eval_every_steps`` steps and at the end of the budget; it covers the steps since the
previous record. Its running sums are part of what a checkpoint saves, so a run
interrupted inside a record's steps writes, once resumed, the same record as a run that
never stopped.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

import rnn_jax
from rnn_jax import data, parallel, report, sample
from rnn_jax.config import ModelConfig, RunConfig, TrainConfig, to_dict
from rnn_jax.loss import bits_per_token, perplexity
from rnn_jax.step import (
    TrainState,
    current_lr,
    init_train_state,
    make_evaluate,
    make_optimizer,
    make_train_step,
)

METRICS = "metrics.jsonl"
PLOT = "perplexity.png"
SAMPLES = "samples.txt"
RUN_CONFIG = "config.json"
EVENTS = "events"


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; names the window of steps it happened in."""


@dataclass(frozen=True)
class Dataset:
    train: np.ndarray  # (N_train,) token ids (an unsigned int array, maybe memory-mapped)
    val: np.ndarray  # (N_val,) the held-out tail; may be empty
    vocab: data.Vocab
    token: str
    preprocess: str = "book"
    fingerprint: dict[str, Any] = field(default_factory=dict)  # the corpus file's sha256, size
    num_chars: int = 0  # characters in the file, before preprocessing
    num_tokens: int = 0  # tokens after preprocessing, before max_tokens

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


def load_dataset(config: TrainConfig, cache_dir: str | bool | None = None) -> Dataset:
    """Corpus -> train/validation split, checked to hold at least one minibatch.

    ``cache_dir``: the token cache (``True``: the default folder; ``None``: none); see
    ``data.load_text_corpus``.
    """
    corpus = data.load_text_corpus(
        config.corpus,
        token=config.token,
        preprocess=config.preprocess,
        min_freq=config.min_freq,
        cache_dir=cache_dir,
    )
    tokens = corpus.tokens
    if config.max_tokens is not None:
        tokens = tokens[: config.max_tokens]
    train, val = data.train_val_split(tokens, config.val_fraction)
    corpus.check_batch_sizes(len(train), config.batch_size, config.num_steps)
    return Dataset(
        train,
        val,
        corpus.vocab,
        config.token,
        config.preprocess,
        dict(corpus.fingerprint),
        corpus.num_chars,
        corpus.kept,
    )


def describe_data(config: TrainConfig, dataset: Dataset) -> str:
    """The start-of-run summary: where the text came from, what preprocessing kept, and
    how many tokens train and validate."""
    source = config.corpus or "the shipped Time Machine"
    used = len(dataset.train) + len(dataset.val)
    cut = "" if used == dataset.num_tokens else f", the first {used:,} used"
    return (
        f"data: {source}: {dataset.num_chars:,} characters, {dataset.preprocess} preprocessing "
        f"-> {dataset.num_tokens:,} {dataset.token} tokens{cut}, "
        f"vocabulary {dataset.vocab_size:,}; "
        f"{len(dataset.train):,} train / {len(dataset.val):,} validation tokens"
    )


def batches_per_epoch(num_tokens: int, batch_size: int, num_steps: int) -> int:
    """K, the same for every epoch and both partitions (whatever the random offset)."""
    return (num_tokens - num_steps) // (batch_size * num_steps)


def total_steps(config: TrainConfig, dataset: Dataset) -> int:
    """The step budget: ``num_epochs`` epochs, or ``max_steps`` if fewer."""
    K = batches_per_epoch(len(dataset.train), config.batch_size, config.num_steps)
    steps = config.num_epochs * K
    return steps if config.max_steps is None else min(steps, config.max_steps)


def epoch_batches(
    dataset: Dataset, config: TrainConfig, epoch: int, rows: tuple[int, int] | None = None
) -> data.EpochPlan:
    """The K minibatches of ``epoch``, built on demand (``plan[k] -> (X, Y)`` int32
    ``(B, T)``), a pure function of ``(seed, epoch)``; ``rows`` builds only those rows
    (a process's share of the batch)."""
    return data.epoch_plan(
        dataset.train,
        config.batch_size,
        config.num_steps,
        config.partition,
        config.seed,
        epoch,
        rows=rows,
    )


def default_prefixes(dataset: Dataset) -> list[str]:
    """The samples' prefixes when the config names none: the first tokens of the
    validation split (or of the training split)."""
    source = dataset.val if len(dataset.val) >= 2 else dataset.train
    count = 16 if dataset.token == "char" else 3
    ids = np.asarray(source[:count])
    return [data.decode(ids, dataset.vocab, dataset.token)]


def sample_prefixes(config: TrainConfig, dataset: Dataset) -> list[str]:
    return list(config.sample_prefix) if config.sample_prefix else default_prefixes(dataset)


def check_run(
    model_config: ModelConfig, config: TrainConfig, dataset: Dataset, run_config: RunConfig
) -> None:
    """Everything that can be checked before the first step, so that nothing that can
    fail then fails after training: the prefixes, the evaluation sizes, the memory the
    model needs, the devices. Raises ``ValueError`` with one line."""
    if model_config.vocab_size != dataset.vocab_size:
        raise ValueError(
            f"model vocab_size {model_config.vocab_size} != dataset vocab size {dataset.vocab_size}"
        )
    if config.sample_every or config.sample_prefix:
        sample.encode_prefixes(
            sample_prefixes(config, dataset), dataset.vocab, dataset.token, dataset.preprocess
        )
    if config.eval_tokens is not None and config.eval_tokens < 2:
        raise ValueError(f"eval_tokens must be at least 2, got {config.eval_tokens}")
    check_memory(model_config, config)
    from rnn_jax import parallel

    parallel.check_devices(run_config.devices, config.batch_size)


def check_memory(model_config: ModelConfig, config: TrainConfig) -> None:
    """Refuse sizes whose parameters, optimizer state and activations cannot fit in this
    machine's available memory, with the estimate, before anything is allocated."""
    need = estimate_bytes(model_config, config)
    available = _available_bytes()
    if available is not None and need > available:
        raise ValueError(
            f"this model needs about {need / 2**30:,.1f} GiB to train (parameters, optimizer "
            f"state, activations of B {config.batch_size} x T {config.num_steps}); "
            f"{available / 2**30:,.1f} GiB is available"
        )


def estimate_bytes(model_config: ModelConfig, config: TrainConfig) -> int:
    """A lower bound of training memory in bytes: parameters, gradients and optimizer
    state (4 copies, float32), and what the scan saves for the backward pass."""
    V, H, L = model_config.vocab_size, model_config.num_hiddens, model_config.num_layers
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[model_config.cell]
    params = L * gates * (2 * H * H + H) + V * gates * H + H * V + V
    B, T = config.batch_size, config.num_steps
    activations = L * T * B * H * (2 * gates + 2) + 2 * T * B * V
    return 4 * (4 * params + activations)


def _available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_info() -> dict[str, Any]:
    """Versions and devices, written beside the config so a run can be reproduced."""
    device = jax.devices()[0]
    return {
        "rnn_jax": rnn_jax.__version__,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": f"{device.platform}:{device.device_kind}",
        "num_devices": jax.device_count(),
        "num_processes": jax.process_count(),
    }


@dataclass
class FitResult:
    state: TrainState
    history: list[dict[str, Any]]  # one record per record point reached in this call
    compile_s: float  # AOT compile time of the train step
    interrupted: bool = False
    sums: dict[str, Any] | None = None  # running sums of an unfinished record, to save


def fit(
    model_config: ModelConfig,
    config: TrainConfig,
    dataset: Dataset,
    *,
    state: TrainState | None = None,
    sums: dict[str, Any] | None = None,
    out_dir: Path | None = None,
    on_record: Callable[[TrainState, dict[str, Any]], None] | None = None,
    on_epoch_end: Callable[[TrainState, dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_start: Callable[[], None] | None = None,
    echo: Callable[[str], None] = tqdm.write,
    progress: bool | None = None,
    run_config: RunConfig | None = None,
    mesh: Mesh | None = None,
) -> FitResult:
    """Train from ``state`` (or a fresh one from ``config.seed``) to the step budget.

    Per record: train perplexity (and bits per character for char tokens), tokens/s
    (warm: the step is compiled ahead of the loop, ``compile_s``), the gradient's
    global norm before clipping, the learning rate; validation perplexity every
    ``eval_every`` epochs / ``eval_every_steps`` steps and greedy samples every
    ``sample_every`` epochs, both also at the end. With ``out_dir`` the records go to
    ``metrics.jsonl`` and TensorBoard events, the curves to ``perplexity.png`` and the
    samples to ``samples.txt``. ``on_record`` (and, at epoch ends, ``on_epoch_end``) is
    called after each record. ``should_stop`` is polled after each step; when it answers
    True the loop returns at once with ``interrupted=True``, a state that resumes
    exactly, and the running ``sums`` to save with it. ``on_start`` is called once
    everything is compiled, before the first step. ``progress=None`` shows a
    progress bar only on a terminal.

    With ``mesh`` (``parallel.make_mesh``) the batch axis is sharded over its devices:
    each process builds only its own rows of every minibatch, the state's hidden rows
    live with them, and the parameters are replicated; the same jitted step runs.
    """
    if model_config.vocab_size != dataset.vocab_size:
        raise ValueError(
            f"model vocab_size {model_config.vocab_size} != dataset vocab size {dataset.vocab_size}"
        )
    run_config = run_config or RunConfig()
    K = batches_per_epoch(len(dataset.train), config.batch_size, config.num_steps)
    total = total_steps(config, dataset)
    optimizer = make_optimizer(config, total)
    B = config.batch_size
    if mesh is not None:
        parallel.check_batch(B, mesh)
    if state is None:
        state = init_train_state(model_config, optimizer, B, jax.random.key(config.seed), mesh)
    elif mesh is not None:
        state = parallel.shard_state(state, mesh)
    rows = None if mesh is None else parallel.process_rows(B, mesh)
    tokens_per_batch = B * config.num_steps
    char = dataset.token == "char"

    def put(batch: tuple[np.ndarray, np.ndarray]) -> Any:
        return batch if mesh is None else parallel.put_batch(*batch, mesh)

    step_fn = make_train_step(
        model_config, optimizer, carry_hidden=config.partition == "sequential", mesh=mesh
    )
    started = time.perf_counter()
    train_step = step_fn.lower(state, put(epoch_batches(dataset, config, 0, rows)[0])).compile()
    compile_s = time.perf_counter() - started

    evaluate = make_evaluate(model_config, mesh)
    val_batches = None
    val_tokens = dataset.val if config.eval_tokens is None else dataset.val[: config.eval_tokens]
    if len(val_tokens) >= 2:
        Xv, Yv = data.eval_batches(val_tokens, B, config.num_steps)
        if mesh is None:
            val_batches = (jnp.asarray(Xv), jnp.asarray(Yv))
        else:
            val_batches = parallel.put_eval_batches(Xv, Yv, mesh)
    prefixes = sample_prefixes(config, dataset)

    start_step = int(state.step)
    writer = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_run_config(out_dir, model_config, config, run_config)
        if run_config.tensorboard and report.EventWriter.available():
            writer = report.EventWriter(
                out_dir / EVENTS, purge_step=start_step + 1 if start_step else None
            )
        elif run_config.tensorboard:
            echo("note: tensorboardX is not installed; no TensorBoard events are written")

    if on_start is not None:
        on_start()
    history: list[dict[str, Any]] = []
    bar = tqdm(total=total, initial=start_step, unit="step", disable=_no_bar(progress), leave=False)
    loss_sum, grad_norm_sum, num_batches, elapsed = _restore_sums(sums)
    interrupted = False
    plan, plan_epoch = None, None
    try:
        for s in range(start_step, total):
            epoch, k = divmod(s, K)
            if plan_epoch != epoch:
                plan, plan_epoch = epoch_batches(dataset, config, epoch, rows), epoch
            if k == 0:
                # The book restarts the state each epoch (a fresh array: the step donates it).
                state = state.replace(hidden=parallel.zero_hidden(model_config, B, mesh))
            tick = time.perf_counter()
            state, metrics = train_step(state, put(plan[k]))
            loss_sum += metrics["loss"]
            grad_norm_sum += metrics["grad_norm"]
            num_batches += 1
            bar.update()
            done = s + 1
            stop = parallel.any_process(should_stop())
            epoch_end = done % K == 0
            at_record = (
                epoch_end
                or done == total
                or (config.eval_every_steps and done % config.eval_every_steps == 0)
                or (run_config.save_every_steps and done % run_config.save_every_steps == 0)
            )
            if not at_record:
                if stop:
                    jax.block_until_ready(loss_sum)
                    elapsed += time.perf_counter() - tick
                    interrupted = True
                    break
                elapsed += time.perf_counter() - tick
                continue
            loss_mean, grad_norm = jax.device_get((loss_sum, grad_norm_sum))  # waits
            elapsed += time.perf_counter() - tick
            record = _record(
                done, K, num_batches, loss_mean, grad_norm, elapsed, tokens_per_batch, char
            )
            record["lr"] = float(current_lr(state.opt_state))
            if not math.isfinite(record["train_ppl"]):
                raise NonFiniteLossError(
                    f"training loss became {float(loss_mean) / num_batches:.4g} (perplexity "
                    f"{record['train_ppl']}) between steps {done - num_batches + 1} and {done} "
                    f"(epoch {epoch + 1}); lower the learning rate or the clipping threshold theta"
                )
            eval_due = (epoch_end and due(config.eval_every, epoch, config.num_epochs)) or (
                config.eval_every_steps and done % config.eval_every_steps == 0
            )
            final = done == total and bool(config.eval_every or config.eval_every_steps)
            if val_batches is not None and (eval_due or final):
                nll, count = evaluate(state.params, *val_batches)
                record["val_ppl"] = perplexity(nll, count)
                if char:
                    record["val_bpc"] = bits_per_token(record["val_ppl"])
            samples = None
            if (epoch_end and due(config.sample_every, epoch, config.num_epochs)) or (
                done == total and config.sample_every
            ):
                samples = sample.predict(
                    prefixes,
                    config.num_preds,
                    model_config,
                    state.params,
                    dataset.vocab,
                    dataset.token,
                    preprocess=dataset.preprocess,
                )
            history.append(record)
            bar.set_postfix(ppl=f"{record['train_ppl']:.2f}", tok_s=f"{record['tokens_per_s']:.0f}")
            step_eval = bool(config.eval_every_steps) and done % config.eval_every_steps == 0
            if samples is not None or step_eval:
                echo(format_record(record))
            for text in samples or ():
                echo(f"  {text!r}")
            if out_dir is not None:
                report.append_jsonl(out_dir / METRICS, record)
                if samples is not None:
                    report.append_samples(out_dir / SAMPLES, record, samples)
                if samples is not None or done == total:
                    report.plot_perplexity(report.read_jsonl(out_dir / METRICS), out_dir / PLOT)
            if writer is not None:
                writer.add_record(record, samples)
            if on_record is not None:
                on_record(state, record)
            if epoch_end and on_epoch_end is not None:
                on_epoch_end(state, record)
            loss_sum, grad_norm_sum, num_batches, elapsed = _restore_sums(None)
            if stop:
                interrupted = done < total  # a stop at the end is the end
                break
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    open_sums = None
    if interrupted and num_batches:
        loss_value, grad_value = jax.device_get((loss_sum, grad_norm_sum))
        open_sums = {
            "loss": float(loss_value),
            "grad_norm": float(grad_value),
            "batches": num_batches,
            "seconds": elapsed,
        }
    return FitResult(state, history, compile_s, interrupted, open_sums)


def _restore_sums(sums: dict[str, Any] | None) -> tuple[jax.Array, jax.Array, int, float]:
    """The running sums of a record: zeros, or those a checkpoint saved mid-record
    (float32 values stored exactly, so the resumed sums continue bit for bit)."""
    if not sums:
        return jnp.zeros(()), jnp.zeros(()), 0, 0.0
    return (
        jnp.asarray(sums["loss"], jnp.float32),
        jnp.asarray(sums["grad_norm"], jnp.float32),
        int(sums["batches"]),
        float(sums.get("seconds", 0.0)),
    )


def _record(
    step: int,
    K: int,
    num_batches: int,
    loss_sum: Any,
    grad_norm_sum: Any,
    seconds: float,
    tokens_per_batch: int,
    char: bool,
) -> dict[str, Any]:
    epoch = step // K if step % K == 0 else round(step / K, 4)
    record: dict[str, Any] = {
        "epoch": epoch,
        "step": step,
        "train_ppl": perplexity(loss_sum, num_batches),
        "val_ppl": None,
        "tokens_per_s": num_batches * tokens_per_batch / max(seconds, 1e-9),
        "grad_norm": float(grad_norm_sum) / num_batches,
        "wall_s": seconds,
    }
    if char:
        record["train_bpc"] = bits_per_token(record["train_ppl"])
    return record


def due(every: int, epoch: int, num_epochs: int) -> bool:
    """Whether a task run every ``every`` epochs (0 = never) runs after 0-based ``epoch``;
    it always runs after the last one."""
    return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == num_epochs)


def write_run_config(
    out_dir: Path,
    model_config: ModelConfig,
    config: TrainConfig,
    run_config: RunConfig | None = None,
) -> None:
    """``config.json``: the model, train and run sections (``rnn-jax train --config``
    reads it back) and the versions and devices it ran with."""
    payload = {
        "model": to_dict(model_config),
        "train": to_dict(config),
        "run": to_dict(run_config or RunConfig()),
        "run_info": run_info(),
    }
    report.write_atomic(out_dir / RUN_CONFIG, json.dumps(payload, indent=2) + "\n")


def truncate_logs(run_dir: Path, step: int) -> None:
    """Drop what a run folder logged after ``step`` (a resumed run logs it again)."""
    report.truncate_metrics(run_dir / METRICS, step)
    report.truncate_samples(run_dir / SAMPLES, step)


def summary(record: dict[str, Any], config: TrainConfig) -> str:
    """``epoch 30 (step 240), perplexity 8.94 (3.16 bpc), validation perplexity 9.82``."""
    text = f"epoch {record['epoch']} (step {record['step']}), perplexity {record['train_ppl']:.2f}"
    if "train_bpc" in record:
        text += f" ({record['train_bpc']:.3f} bpc)"
    if record.get("val_ppl") is not None:
        text += f", validation perplexity {record['val_ppl']:.2f}"
        if "val_bpc" in record:
            text += f" ({record['val_bpc']:.3f} bpc)"
    return text


def format_record(record: dict[str, Any]) -> str:
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


def _no_bar(progress: bool | None) -> bool | None:
    return None if progress is None else not progress
