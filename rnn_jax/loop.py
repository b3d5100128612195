"""The training loop on the host (D2L 9.5.3, ``train_ch8``): epochs of jitted steps,
then perplexity, throughput, samples and the run folder's files.

The loop owns everything impure (time, printing, files); the step it drives is pure.
Batches derive from ``(seed, epoch)`` and the position in the data from
``TrainState.step``, so a run restarted from a saved state continues exactly.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import rnn_jax
from rnn_jax import data, model, report, sample
from rnn_jax.config import ModelConfig, TrainConfig, to_dict
from rnn_jax.loss import perplexity
from rnn_jax.step import (
    TrainState,
    init_train_state,
    make_evaluate,
    make_optimizer,
    make_train_step,
)

METRICS = "metrics.jsonl"
PLOT = "perplexity.png"
SAMPLES = "samples.txt"
RUN_CONFIG = "config.json"


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; names the window of steps it happened in."""


@dataclass(frozen=True)
class Dataset:
    train: np.ndarray  # (N_train,) int32 token ids
    val: np.ndarray  # (N_val,) int32, the held-out tail; may be empty
    vocab: data.Vocab
    token: str

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


def load_dataset(config: TrainConfig) -> Dataset:
    """Corpus -> train/validation split, checked to hold at least one minibatch."""
    corpus, vocab = data.load_corpus(
        config.corpus, token=config.token, max_tokens=config.max_tokens
    )
    train, val = data.train_val_split(corpus, config.val_fraction)
    data.check_batch_sizes(len(train), config.batch_size, config.num_steps)
    return Dataset(train, val, vocab, config.token)


def batches_per_epoch(num_tokens: int, batch_size: int, num_steps: int) -> int:
    """K, the same for every epoch and both partitions (whatever the random offset)."""
    return (num_tokens - num_steps) // (batch_size * num_steps)


def epoch_batches(
    dataset: Dataset, config: TrainConfig, epoch: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``(K, B, T)`` minibatches of ``epoch``: a pure function of ``(seed, epoch)``."""
    Xs, Ys = data.epoch_batches(
        dataset.train, config.batch_size, config.num_steps, config.partition, config.seed, epoch
    )
    K = batches_per_epoch(len(dataset.train), config.batch_size, config.num_steps)
    return Xs[:K], Ys[:K]


def run_info() -> dict[str, Any]:
    """Versions and device, written beside the config so a run can be reproduced."""
    device = jax.devices()[0]
    return {
        "rnn_jax": rnn_jax.__version__,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": f"{device.platform}:{device.device_kind}",
        "num_devices": jax.device_count(),
    }


@dataclass
class FitResult:
    state: TrainState
    history: list[dict[str, Any]]  # one record per epoch finished in this call
    compile_s: float  # AOT compile time of the train step
    interrupted: bool = False


def fit(
    model_config: ModelConfig,
    config: TrainConfig,
    dataset: Dataset,
    *,
    state: TrainState | None = None,
    out_dir: Path | None = None,
    on_epoch_end: Callable[[TrainState, dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    echo: Callable[[str], None] = tqdm.write,
    progress: bool | None = None,
) -> FitResult:
    """Train from ``state`` (or a fresh one from ``config.seed``) to ``config.num_epochs``.

    Per epoch: train perplexity, tokens/s (warm: compilation is done ahead of the loop
    and reported as ``compile_s``), the gradient's global norm before clipping;
    validation perplexity every ``config.eval_every`` epochs (``None`` in the other
    records) and greedy samples every ``config.sample_every`` epochs, both also after the
    last. With ``out_dir`` the records go to ``metrics.jsonl``, the curves to
    ``perplexity.png`` and the samples to ``samples.txt``. ``should_stop`` is polled after
    each step; when it answers True the loop returns at once with ``interrupted=True``
    and a state that resumes exactly.
    ``progress=None`` shows a progress bar only on a terminal.
    """
    if model_config.vocab_size != dataset.vocab_size:
        raise ValueError(
            f"model vocab_size {model_config.vocab_size} != dataset vocab size {dataset.vocab_size}"
        )
    optimizer = make_optimizer(config)
    if state is None:
        state = init_train_state(
            model_config, optimizer, config.batch_size, jax.random.key(config.seed)
        )
    K = batches_per_epoch(len(dataset.train), config.batch_size, config.num_steps)
    tokens_per_batch = config.batch_size * config.num_steps

    step_fn = make_train_step(
        model_config, optimizer, carry_hidden=config.partition == "sequential"
    )
    first_X, first_Y = epoch_batches(dataset, config, 0)
    started = time.perf_counter()
    train_step = step_fn.lower(state, (first_X[0], first_Y[0])).compile()
    compile_s = time.perf_counter() - started

    evaluate = make_evaluate(model_config)
    val_batches = None
    if len(dataset.val) >= 2:
        val_batches = tuple(
            map(jnp.asarray, data.eval_batches(dataset.val, config.batch_size, config.num_steps))
        )

    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_run_config(out_dir, model_config, config)

    history: list[dict[str, Any]] = []
    start_step = int(state.step)
    total_steps = config.num_epochs * K
    bar = tqdm(
        total=total_steps, initial=start_step, unit="step", disable=_no_bar(progress), leave=False
    )
    interrupted = False
    for epoch in range(start_step // K, config.num_epochs):
        first_batch = start_step - epoch * K if epoch == start_step // K else 0
        Xs, Ys = epoch_batches(dataset, config, epoch)
        if first_batch == 0:
            # The book restarts the state each epoch (a fresh array: the step donates its input).
            state = state.replace(hidden=model.zero_state(model_config, config.batch_size))
        loss_sum = jnp.zeros(())
        grad_norm_sum = jnp.zeros(())
        num_batches = 0
        started = time.perf_counter()
        for k in range(first_batch, K):
            state, metrics = train_step(state, (Xs[k], Ys[k]))
            loss_sum += metrics["loss"]
            grad_norm_sum += metrics["grad_norm"]
            num_batches += 1
            bar.update()
            if should_stop():
                interrupted = True
                break
        loss_mean, grad_norm = jax.device_get((loss_sum, grad_norm_sum))  # waits for the epoch
        train_s = time.perf_counter() - started
        last_step = int(state.step)
        train_ppl = perplexity(loss_mean, num_batches)
        if not math.isfinite(train_ppl):  # NaN, inf, or a mean NLL whose exp overflows
            raise NonFiniteLossError(
                f"training loss became {loss_mean / num_batches:.4g} (perplexity {train_ppl}) "
                f"between steps {last_step - num_batches + 1} and {last_step} (epoch {epoch + 1}); "
                f"lower the learning rate or the clipping threshold theta"
            )
        if interrupted and num_batches < K - first_batch:
            break  # a partial epoch: no record; the resumed run redoes its metrics
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": last_step,
            "train_ppl": train_ppl,
            "val_ppl": None,
            "tokens_per_s": num_batches * tokens_per_batch / train_s,
            "grad_norm": float(grad_norm) / num_batches,
            "wall_s": train_s,
        }
        if val_batches is not None and _due(config.eval_every, epoch, config.num_epochs):
            nll, count = evaluate(state.params, *val_batches)
            record["val_ppl"] = perplexity(nll, count)
        samples = None
        if _due(config.sample_every, epoch, config.num_epochs):
            samples = sample.predict(
                list(config.sample_prefix),
                config.num_preds,
                model_config,
                state.params,
                dataset.vocab,
                dataset.token,
            )
        history.append(record)
        bar.set_postfix(ppl=f"{record['train_ppl']:.2f}", tok_s=f"{record['tokens_per_s']:.0f}")
        if samples is not None:
            echo(_format_record(record))
            for text in samples:
                echo(f"  {text!r}")
        if out_dir is not None:
            report.append_jsonl(out_dir / METRICS, record)
            if samples is not None:
                with (out_dir / SAMPLES).open("a", encoding="utf-8") as f:
                    for text in samples:
                        f.write(f"epoch {epoch + 1}\t{text}\n")
            if samples is not None or epoch + 1 == config.num_epochs:
                report.plot_perplexity(report.read_jsonl(out_dir / METRICS), out_dir / PLOT)
        if on_epoch_end is not None:
            on_epoch_end(state, record)
        if interrupted:
            break
    bar.close()
    interrupted = interrupted and int(state.step) < total_steps  # a stop at the end is the end
    return FitResult(state=state, history=history, compile_s=compile_s, interrupted=interrupted)


def _due(every: int, epoch: int, num_epochs: int) -> bool:
    """Whether a task run every ``every`` epochs (0 = never) runs after 0-based ``epoch``;
    it always runs after the last one."""
    return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == num_epochs)


def write_run_config(out_dir: Path, model_config: ModelConfig, config: TrainConfig) -> None:
    payload = {"model": to_dict(model_config), "train": to_dict(config), "run": run_info()}
    (out_dir / RUN_CONFIG).write_text(json.dumps(payload, indent=2) + "\n", "utf-8")


def _format_record(record: dict[str, Any]) -> str:
    val = "" if record["val_ppl"] is None else f", val ppl {record['val_ppl']:.2f}"
    return (
        f"epoch {record['epoch']}: train ppl {record['train_ppl']:.2f}{val}, "
        f"{record['tokens_per_s']:,.0f} tokens/s, grad norm {record['grad_norm']:.2f}"
    )


def _no_bar(progress: bool | None) -> bool | None:
    return None if progress is None else not progress
