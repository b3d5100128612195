"""``rnn-jax train | eval | sample``: the command line, a thin layer over the library.

The CLI only parses flags into the frozen configs and calls the library. Bad input
gets one line on stderr and exit status 2; a training loss that turns NaN or a failed
checkpoint write exits 1; SIGINT and SIGTERM save a resumable checkpoint and exit
130 and 143. No path writes or overwrites a finished checkpoint it should not.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

EXIT_USAGE = 2
EXIT_FAILED = 1
LOCK = ".lock"


class UsageError(ValueError):
    """Input the user must change; reported as one line, exit status 2."""


# ------------------------------------------------------------------------- parsers


def build_parser() -> argparse.ArgumentParser:
    from rnn_jax.checkpoint import CheckpointConfig
    from rnn_jax.config import CELLS, NONLINEARITIES, TrainConfig
    from rnn_jax.sample import STRATEGIES

    train_defaults, ckpt_defaults = TrainConfig(), CheckpointConfig()
    parser = argparse.ArgumentParser(
        prog="rnn-jax",
        description="Train, evaluate and sample the book's recurrent language models.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    train = commands.add_parser(
        "train", help="train a model into a run folder", formatter_class=fmt
    )
    data = train.add_argument_group("data")
    data.add_argument(
        "--corpus",
        type=Path,
        default=None,
        help="UTF-8 text file (default: the shipped Time Machine)",
    )
    data.add_argument(
        "--token", choices=("char", "word"), default=train_defaults.token, help="token kind"
    )
    data.add_argument(
        "--max-tokens",
        type=int,
        default=train_defaults.max_tokens,
        help="use the first N tokens; 0 = all",
    )
    data.add_argument(
        "--val-fraction",
        type=float,
        default=train_defaults.val_fraction,
        help="tail held out for validation",
    )
    data.add_argument(
        "--partition",
        choices=("random", "sequential"),
        default=train_defaults.partition,
        help="minibatch partition",
    )
    data.add_argument(
        "--batch-size", type=int, default=train_defaults.batch_size, help="B, streams per minibatch"
    )
    data.add_argument(
        "--num-steps",
        type=int,
        default=train_defaults.num_steps,
        help="T, tokens per stream per minibatch",
    )
    net = train.add_argument_group("model")
    net.add_argument("--cell", choices=CELLS, default="rnn", help="recurrent cell")
    net.add_argument("--num-hiddens", type=int, default=512, help="H, hidden units per layer")
    net.add_argument("--num-layers", type=int, default=1, help="stacked recurrent layers")
    net.add_argument(
        "--dropout", type=float, default=0.0, help="dropout between layers, training only"
    )
    net.add_argument(
        "--nonlinearity", choices=NONLINEARITIES, default="tanh", help="activation of the rnn cell"
    )
    opt = train.add_argument_group("optimisation")
    opt.add_argument("--lr", type=float, default=train_defaults.lr, help="SGD learning rate")
    opt.add_argument(
        "--theta", type=float, default=train_defaults.theta, help="gradient clipping global norm"
    )
    opt.add_argument(
        "--epochs", type=int, default=train_defaults.num_epochs, help="epochs to train in all"
    )
    opt.add_argument(
        "--seed", type=int, default=train_defaults.seed, help="PRNG seed for init, batches and keys"
    )
    run = train.add_argument_group("run folder")
    run.add_argument(
        "--out", type=Path, default=None, help="new run folder (default: runs/<cell>-<time>)"
    )
    run.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its latest checkpoint",
    )
    run.add_argument(
        "--save-every",
        type=int,
        default=ckpt_defaults.save_every,
        help="checkpoint every N epochs (and at the end)",
    )
    run.add_argument(
        "--keep",
        type=int,
        default=ckpt_defaults.keep,
        help="keep the latest K checkpoints (plus the best)",
    )
    run.add_argument(
        "--eval-every",
        type=int,
        default=train_defaults.eval_every,
        help="validation perplexity every N epochs (and at the end); 0 = never",
    )
    run.add_argument(
        "--sample-every",
        type=int,
        default=train_defaults.sample_every,
        help="print greedy samples every N epochs; 0 = never",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    ev = commands.add_parser(
        "eval", help="perplexity of a checkpoint on held-out text", formatter_class=fmt
    )
    ev.add_argument(
        "--checkpoint", type=Path, required=True, metavar="RUN_DIR", help="run folder to restore"
    )
    ev.add_argument(
        "--corpus",
        type=Path,
        default=None,
        help="text to score (default: the run's validation split)",
    )
    ev.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")

    sample = commands.add_parser(
        "sample", help="continue prefixes with a checkpoint", formatter_class=fmt
    )
    sample.add_argument(
        "--checkpoint", type=Path, required=True, metavar="RUN_DIR", help="run folder to restore"
    )
    sample.add_argument(
        "--prefix",
        action="append",
        default=None,
        help="text to continue; repeat for a batch (default: 'time traveller')",
    )
    sample.add_argument(
        "--num-chars", type=int, default=100, help="tokens to generate after each prefix"
    )
    sample.add_argument(
        "--step", type=int, default=None, help="checkpoint step (default: the latest)"
    )
    decode = sample.add_argument_group("decoding")
    decode.add_argument(
        "--strategy", choices=STRATEGIES, default="greedy", help="how each token is chosen"
    )
    decode.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="divides the logits (temperature, top-k, top-p)",
    )
    decode.add_argument(
        "--top-k", type=int, default=None, help="top-k: sample among the K most likely tokens"
    )
    decode.add_argument(
        "--top-p",
        type=float,
        default=None,
        help="top-p: sample among the most likely tokens of mass P",
    )
    decode.add_argument(
        "--beam-size", type=int, default=4, help="beam: continuations kept per step"
    )
    decode.add_argument("--seed", type=int, default=0, help="PRNG seed of the sampling strategies")
    return parser


# ------------------------------------------------------------------------- train


TRAIN_FLAGS = {  # flag dest -> TrainConfig field
    "corpus": "corpus",
    "token": "token",
    "max_tokens": "max_tokens",
    "val_fraction": "val_fraction",
    "partition": "partition",
    "batch_size": "batch_size",
    "num_steps": "num_steps",
    "lr": "lr",
    "theta": "theta",
    "epochs": "num_epochs",
    "seed": "seed",
    "eval_every": "eval_every",
    "sample_every": "sample_every",
}
MODEL_FLAGS = {  # flag dest -> ModelConfig field
    "cell": "cell",
    "num_hiddens": "num_hiddens",
    "num_layers": "num_layers",
    "dropout": "dropout",
    "nonlinearity": "nonlinearity",
}
RESUMABLE = {"num_epochs", "eval_every", "sample_every"}  # what a resumed run may change


def _configs(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from rnn_jax.checkpoint import CheckpointConfig
    from rnn_jax.config import TrainConfig

    fields = {field: getattr(args, flag) for flag, field in TRAIN_FLAGS.items()}
    if fields["corpus"] is not None:
        fields["corpus"] = str(Path(fields["corpus"]).absolute())
    if fields["max_tokens"] == 0:
        fields["max_tokens"] = None
    train_config = TrainConfig(**fields)
    ckpt_config = CheckpointConfig(save_every=args.save_every, keep=args.keep)
    model_fields = {field: getattr(args, flag) for flag, field in MODEL_FLAGS.items()}
    return train_config, model_fields, ckpt_config


def _explicit_flags(argv: Sequence[str]) -> set[str]:
    """The dests of the flags the user typed (to tell them from defaults on --resume)."""
    return {arg.split("=")[0][2:].replace("-", "_") for arg in argv if arg.startswith("--")}


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    """One writer per run folder: a non-blocking exclusive lock on ``RUN_DIR/.lock``."""
    path = run_dir / LOCK
    try:
        handle = path.open("a+")
    except OSError as err:
        raise UsageError(f"cannot write to run folder {run_dir}: {err.strerror}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise UsageError(
            f"run folder {run_dir} is in use by {owner}; wait for it or use another --out"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    try:
        yield
    finally:
        handle.close()


class _Signals:
    """Turns SIGINT/SIGTERM into a flag the training loop polls after each step."""

    def __init__(self) -> None:
        self.received: int | None = None

    def __enter__(self) -> _Signals:
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)


def cmd_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from rnn_jax import checkpoint, loop, report
    from rnn_jax.config import ModelConfig

    train_config, model_fields, ckpt_config = _configs(args)
    explicit = _explicit_flags(argv)
    restored = None
    if args.resume is not None:
        if args.out is not None and args.out.absolute() != args.resume.absolute():
            raise UsageError(
                "give either --out (a new run) or --resume (an existing one), not both"
            )
        run_dir = args.resume
        restored = checkpoint.restore(run_dir, for_training=True)
        saved_model, saved_train = restored.model_config, restored.train_config
        for flag, field in TRAIN_FLAGS.items():
            if flag in explicit and field not in RESUMABLE:
                value, saved = getattr(train_config, field), getattr(saved_train, field)
                if value != saved:
                    raise UsageError(
                        f"--{flag.replace('_', '-')} {value} differs from the resumed run's {saved}"
                    )
        for flag, field in MODEL_FLAGS.items():
            if flag in explicit and getattr(saved_model, field) != model_fields[field]:
                raise UsageError(
                    f"--{flag.replace('_', '-')} {model_fields[field]} differs from "
                    f"the resumed run's "
                    f"{getattr(saved_model, field)}"
                )
        changes = {f: getattr(train_config, f) for f in RESUMABLE if _flag_of(f) in explicit}
        train_config = dataclasses.replace(saved_train, **changes)
        model_config = saved_model
        if restored.epoch >= train_config.num_epochs:
            print(f"{run_dir} has trained {restored.epoch} epochs already; raise --epochs to go on")
            return 0
    else:
        run_dir = (
            args.out or Path("runs") / f"{model_fields['cell']}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        if run_dir.exists() and not run_dir.is_dir():
            raise UsageError(f"--out {run_dir} is a file, not a folder")
        if run_dir.is_dir() and any(
            (run_dir / name).exists()
            for name in (loop.RUN_CONFIG, loop.METRICS, checkpoint.CHECKPOINTS)
        ):
            raise UsageError(
                f"--out {run_dir} already holds a run; continue it with --resume {run_dir} "
                "or choose a new --out"
            )

    dataset = loop.load_dataset(train_config)
    if restored is None:
        model_config = ModelConfig(vocab_size=dataset.vocab_size, **model_fields)
    elif dataset.vocab != restored.vocab:
        raise UsageError(
            f"the corpus now gives a different vocabulary than the one {run_dir} was trained with"
        )

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create run folder {run_dir}: {err.strerror or err}") from None
    # Signals first: once the lock names this process, a signal must reach the handler.
    with _Signals() as signals, _run_lock(run_dir):
        if restored is not None:
            # Epochs logged after the checkpoint will be trained (and logged) again.
            report.truncate_metrics(run_dir / loop.METRICS, restored.epoch)
            report.truncate_samples(run_dir / loop.SAMPLES, restored.epoch)
            print(f"resuming {run_dir} at step {restored.step} (epoch {restored.epoch})")
        manager = checkpoint.open_manager(run_dir, ckpt_config)
        K = loop.batches_per_epoch(
            len(dataset.train), train_config.batch_size, train_config.num_steps
        )

        def save(state: Any, record: dict[str, Any] | None) -> None:
            epoch = int(state.step) // K
            checkpoint.save(
                manager,
                state,
                epoch=epoch,
                model_config=model_config,
                train_config=train_config,
                vocab=dataset.vocab,
                metrics=record,
            )

        def on_epoch_end(state: Any, record: dict[str, Any]) -> None:
            if (
                record["epoch"] % ckpt_config.save_every == 0
                or record["epoch"] == train_config.num_epochs
            ):
                save(state, record)

        try:
            result = loop.fit(
                model_config,
                train_config,
                dataset,
                state=None if restored is None else restored.state,
                out_dir=run_dir,
                on_epoch_end=on_epoch_end,
                should_stop=lambda: signals.received is not None,
                echo=print,
                progress=False if args.no_progress else None,
            )
            if result.interrupted and int(result.state.step) not in manager.all_steps():
                save(result.state, None)
        except loop.NonFiniteLossError as err:
            if not _close(manager):
                return EXIT_FAILED
            latest = manager.latest_step()
            kept = f"; the last good checkpoint is step {latest}" if latest is not None else ""
            print(f"rnn-jax: error: {err}{kept}", file=sys.stderr)
            return EXIT_FAILED
        except checkpoint.CheckpointWriteError as err:
            print(f"rnn-jax: error: {err}", file=sys.stderr, flush=True)
            return EXIT_FAILED
        except BaseException:
            _close(manager)
            raise
        if not _close(manager):
            return EXIT_FAILED

    if result.interrupted:
        name = signal.Signals(signals.received).name
        print(
            f"{name}: saved step {int(result.state.step)} to {run_dir}; "
            f"continue with: rnn-jax train --resume {run_dir}"
        )
        return 128 + int(signals.received)
    if result.history:
        last = result.history[-1]
        val = "" if last["val_ppl"] is None else f", validation perplexity {last['val_ppl']:.2f}"
        print(
            f"done: epoch {last['epoch']}, perplexity {last['train_ppl']:.2f}{val}, "
            f"train step compiled in {result.compile_s:.2f} s; run folder {run_dir}"
        )
    return 0


def _flag_of(field: str) -> str:
    return next(flag for flag, f in TRAIN_FLAGS.items() if f == field)


def _close(manager: Any) -> bool:
    """Finish pending writes and close; a write error becomes one line on stderr."""
    from rnn_jax import checkpoint

    try:
        checkpoint.close(manager)
    except checkpoint.CheckpointWriteError as err:
        print(f"rnn-jax: error: {err}", file=sys.stderr, flush=True)
        return False
    return True


# ------------------------------------------------------------------------- eval, sample


def cmd_eval(args: argparse.Namespace) -> int:
    import jax.numpy as jnp
    import numpy as np

    from rnn_jax import checkpoint, data, loop, step
    from rnn_jax.loss import perplexity

    restored = checkpoint.restore(args.checkpoint, step=args.step)
    config = restored.train_config
    if args.corpus is None:
        tokens = loop.load_dataset(config).val
        if len(tokens) < 2:
            raise UsageError(
                f"the run in {args.checkpoint} has no validation split; name a --corpus"
            )
        what = "the validation split"
    else:
        words = data.tokenize(data.preprocess(data.read_text(args.corpus)), config.token)
        tokens = np.asarray(restored.vocab[words], np.int32)  # unknown tokens score as <unk>
        if len(tokens) < 2:
            raise UsageError(f"corpus {args.corpus} has fewer than 2 tokens after preprocessing")
        what = str(args.corpus)
    Xs, Ys = data.eval_batches(tokens, config.batch_size, config.num_steps)
    evaluate = step.make_evaluate(restored.model_config)
    jax_batches = (jnp.asarray(Xs), jnp.asarray(Ys))
    evaluate(restored.params, *jax_batches)[0].block_until_ready()  # compile
    started = time.perf_counter()
    nll, count = evaluate(restored.params, *jax_batches)
    nll.block_until_ready()
    seconds = time.perf_counter() - started
    print(
        f"step {restored.step}: perplexity {perplexity(nll, count):.3f} "
        f"on {int(count):,} tokens of "
        f"{what}, {int(count) / seconds:,.0f} tokens/s"
    )
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import jax

    from rnn_jax import checkpoint, sample

    if args.num_chars <= 0:
        raise UsageError(f"--num-chars must be positive, got {args.num_chars}")
    sampling = sample.SamplingConfig(
        strategy=args.strategy,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        beam_size=args.beam_size,
    )
    restored = checkpoint.restore(args.checkpoint, step=args.step)
    prefixes = args.prefix or ["time traveller"]
    texts = sample.predict(
        prefixes,
        args.num_chars,
        restored.model_config,
        restored.params,
        restored.vocab,
        restored.train_config.token,
        sampling=sampling,
        key=jax.random.key(args.seed),
    )
    for text in texts:
        print(text)
    return 0


# ------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    _quiet_logs()
    from rnn_jax.checkpoint import CheckpointError

    try:
        if args.command == "train":
            return cmd_train(args, argv)
        if args.command == "eval":
            return cmd_eval(args)
        return cmd_sample(args)
    except (UsageError, CheckpointError, ValueError, OSError) as err:
        print(f"rnn-jax: error: {err}", file=sys.stderr)
        return EXIT_USAGE


def _quiet_logs() -> None:
    """Orbax and JAX log through absl at INFO/WARNING; a CLI user needs only errors."""
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
    absl.logging.get_absl_logger().addFilter(_drop_orbax_background_errors)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _drop_orbax_background_errors(record: logging.LogRecord) -> bool:
    """Orbax logs a failed background write with its traceback, then re-raises the same
    exception from ``wait_until_finished``, where ``_close`` reports it in one line."""
    return not (record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname)


if __name__ == "__main__":
    sys.exit(main())
