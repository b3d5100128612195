"""``rnn-jax train|eval|sample|info|export``: the command line, a thin parser over the library.

The flags of ``train`` are derived from the frozen configs (``rnn_jax.config``: each
field's type, default and help are written once there); ``--config FILE`` reads the same
fields from a JSON or TOML file, and flags override it. This module parses, calls the
library (``rnn_jax.run`` for ``train``, ``rnn_jax.export`` for ``export``,
``rnn_jax.readers`` for the others) and turns the outcome into an exit status; it imports
nothing that loads JAX before ``main`` installed the signal handlers.

Bad input gets one line on stderr and exit status 2 and changes nothing on disk; a run
that fails (a NaN loss, a write that fails) exits 1 naming its last good checkpoint;
SIGINT, SIGTERM and SIGHUP save a resumable checkpoint and exit 130, 143 and 129
(``eval`` and ``sample`` print what they did first; ``info`` just stops).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import absl.logging

from rnn_jax.config import (
    AUTO,
    OWN_TEXT,
    SECTIONS,
    STOCHASTIC,
    STRATEGIES,
    ModelConfig,
    RunConfig,
    SamplingConfig,
    TrainConfig,
    field_type,
    flag_name,
)
from rnn_jax.signals import (
    SIGNALS,
    Interrupted,
    ReaderSignals,
    Signals,
    python_defaults,
    say_and_exit,
)

EXIT_USAGE = 2
EXIT_FAILED = 1


class UsageError(ValueError):
    """Input the user must change; reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with exact flags only (no abbreviations) and one-line errors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        where = self.prog.partition(" ")[2]  # the subcommand; main() prints "rnn-jax: "
        raise UsageError(f"{where}: {message}" if where else message)


# ------------------------------------------------------------------------- derived flags


def parse_value(cls: type, name: str, text: str) -> Any:
    """One flag's text -> the field's value (``none`` for optional fields)."""
    base, optional = field_type(cls, name)
    default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
    lowered = text.strip().lower()
    if optional and lowered in ("none", "null"):
        return None
    if default == AUTO and lowered == AUTO:
        return AUTO
    try:
        if base is int:
            return int(text)
        if base is float:
            return float(text)
    except ValueError:
        kind = "an integer" if base is int else "a number"
        raise UsageError(f"{flag_name(cls, name)} must be {kind}, got {text!r}") from None
    return text


def add_config_flags(
    parser: argparse.ArgumentParser, cls: type, exclude: Sequence[str] = ()
) -> None:
    """One flag per field of ``cls``, its help and default taken from the field.

    Defaults are left out of the namespace (``SUPPRESS``), so what the user typed can be
    told from what the config supplies.
    """
    titles = {
        "ModelConfig": "model",
        "TrainConfig": "data, optimisation, budget",
        "RunConfig": "run",
    }
    group = parser.add_argument_group(f"{titles.get(cls.__name__, cls.__name__)} ({cls.__name__})")
    own_text = next((OWN_TEXT[s] for s, c in SECTIONS.items() if c is cls), {})
    for field in dataclasses.fields(cls):
        if field.name in exclude or "help" not in field.metadata:
            continue
        meta = field.metadata
        default = field.default
        shown = "none" if default is None else default
        if field.name in own_text:
            shown = f"{shown}; for your own --corpus: {own_text[field.name]}"
        help_text = f"{meta['help']} (default: {shown})"
        base, _ = field_type(cls, field.name)
        kwargs: dict[str, Any] = {
            "dest": f"{cls.__name__}.{field.name}",
            "default": argparse.SUPPRESS,
            "help": help_text.replace("%", "%%"),
        }
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif base is tuple:
            kwargs["action"] = "append"
            kwargs["metavar"] = meta.get("metavar") or "TEXT"
        else:
            kwargs["type"] = str
            choices = meta.get("choices")
            plain = {int: "N", float: "X"}.get(base, "TEXT")
            kwargs["metavar"] = meta.get("metavar") or (
                "{" + ",".join(choices) + "}" if choices else plain
            )
        group.add_argument(flag_name(cls, field.name), **kwargs)


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` the user set on the command line, parsed."""
    prefix = f"{cls.__name__}."
    values = {}
    for dest, value in vars(args).items():
        if dest.startswith(prefix):
            name = dest[len(prefix) :]
            values[name] = value if not isinstance(value, str) else parse_value(cls, name, value)
    return values


# ------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """``rnn-jax`` and its subcommands."""
    parser = _Parser(
        prog="rnn-jax",
        description="Train, evaluate, sample and inspect the book's recurrent language models.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(commands)
    _add_eval(commands)
    _add_sample(commands)
    info = commands.add_parser("info", help="a run's config and its checkpoints")
    info.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run folder")
    _add_export(commands)
    return parser


def _add_train(commands: argparse._SubParsersAction) -> None:
    """``train``: where, seeds, hosts, then one flag per config field."""
    train = commands.add_parser(
        "train",
        help="train a model into a run folder",
        description="Train a model into a run folder. Every option below is a field of "
        "rnn_jax.config; --config FILE sets them from a JSON or TOML file and flags override it.",
    )
    where = train.add_argument_group("run folder")
    where.add_argument("--out", type=Path, help="new run folder (default: runs/<cell>-<time>)")
    where.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    where.add_argument(
        "--step",
        metavar="N",
        help="with --resume: continue from checkpoint N (or best, latest) rather than the "
        "latest; the later checkpoints are kept until the resumed run passes them",
    )
    where.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="JSON or TOML file with model/train/run sections (a run's config.json is one)",
    )
    where.add_argument("--no-progress", action="store_true", help="no progress bar")
    sweep = train.add_argument_group("seeds")
    sweep.add_argument(
        "--seeds",
        metavar="S,S,...",
        help="train one member per seed together; each gets its own subfolder",
    )
    sweep.add_argument(
        "--sweep",
        choices=("vmap", "loop"),
        help="members as one vmapped step or one after another (default: the faster here)",
    )
    hosts = train.add_argument_group("hosts (jax.distributed)")
    hosts.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    hosts.add_argument("--num-processes", type=str, metavar="P", help="processes in all")
    hosts.add_argument("--process-id", type=str, metavar="I", help="this process, 0..P-1")
    hosts.add_argument(
        "--distributed-timeout",
        type=str,
        default="60",
        metavar="S",
        help="seconds to wait for the other processes: to join, and at each checkpoint they "
        "save together (default: 60)",
    )
    add_config_flags(train, ModelConfig, exclude=("vocab_size",))
    add_config_flags(train, TrainConfig)
    add_config_flags(train, RunConfig)


def _add_eval(commands: argparse._SubParsersAction) -> None:
    ev = commands.add_parser("eval", help="perplexity of a checkpoint on held-out text")
    ev.add_argument("--checkpoint", type=Path, required=True, metavar="RUN_DIR", help="run folder")
    ev.add_argument(
        "--corpus", type=Path, help="text to score (default: the run's validation split)"
    )
    ev.add_argument("--step", metavar="N", help="checkpoint: N, best or latest (default: latest)")
    ev.add_argument(
        "--eval-tokens", metavar="N", help="score only the first N tokens (default: all)"
    )


def _add_sample(commands: argparse._SubParsersAction) -> None:
    sample = commands.add_parser("sample", help="continue prefixes with a checkpoint")
    sample.add_argument(
        "--checkpoint", type=Path, required=True, metavar="RUN_DIR", help="run folder"
    )
    sample.add_argument(
        "--prefix",
        action="append",
        help="text to continue; repeat for several, of any lengths (default: the run's "
        "sample prefixes)",
    )
    sample.add_argument(
        "--prefix-file",
        action="append",
        type=Path,
        dest="prefix",
        metavar="FILE",
        help="a file whose text (UTF-8, preprocessed as the run's corpus was) is a prefix; "
        "repeatable, and in order with --prefix",
    )
    sample.add_argument(
        "--stream",
        action="store_true",
        help="write each token as it is generated (one prefix; beam search writes its "
        "best beam at the end)",
    )
    sample.add_argument(
        "--num-chars",
        type=str,
        default="100",
        metavar="N",
        help="tokens generated after each prefix (default: 100)",
    )
    sample.add_argument(
        "--step", metavar="N", help="checkpoint: N, best or latest (default: latest)"
    )
    decode = sample.add_argument_group("decoding")
    decode.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="greedy",
        help="how each token is chosen (default: greedy)",
    )
    decode.add_argument(
        "--temperature", type=str, help="divides the logits (temperature, top-k, top-p; default: 1)"
    )
    decode.add_argument("--top-k", type=str, help="top-k: sample among the K most likely tokens")
    decode.add_argument(
        "--top-p", type=str, help="top-p: sample among the most likely tokens of mass P"
    )
    decode.add_argument(
        "--beam-size", type=str, help="beam: continuations kept per step (default: 4)"
    )
    decode.add_argument(
        "--seed", type=str, default="0", help="PRNG seed of the sampling strategies (default: 0)"
    )


def _add_export(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export",
        help="a checkpoint as a one-step function that runs without rnn_jax (jax.export)",
    )
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run folder")
    export.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="new (or empty) folder to write"
    )
    export.add_argument(
        "--step", metavar="N", help="checkpoint: N, best or latest (default: latest)"
    )
    export.add_argument(
        "--platforms",
        default="cpu",
        metavar="P,P,...",
        help="platforms to lower for: cpu, cuda, rocm, tpu (default: cpu)",
    )


# ------------------------------------------------------------------------- small parsers


def integer(flag: str, text: str | None, minimum: int = 0, maximum: int = 2**31 - 1) -> int | None:
    """``text`` as an integer in ``[minimum, maximum]``; one-line UsageError naming ``flag``."""
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{flag} must be an integer, got {text!r}") from None
    if not minimum <= value <= maximum:
        raise UsageError(f"{flag} must be in [{minimum}, {maximum:,}], got {value}")
    return value


def number(flag: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{flag} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise UsageError(f"{flag} must be finite, got {text}")
    return value


def checkpoint_step(text: str | None) -> int | str | None:
    """``--step``: a step number, ``best`` or ``latest``."""
    if text is None or text in ("best", "latest"):
        return text
    return integer("--step", text)


# ------------------------------------------------------------------------- commands


def train_request(args: argparse.Namespace) -> dict[str, Any]:
    """``rnn-jax train``'s flags as the fields of a ``run.TrainRequest``."""
    fields = {
        "model": given(args, ModelConfig),
        "train": given(args, TrainConfig),
        "run": given(args, RunConfig),
        "config_file": args.config,
        "out": args.out,
        "resume": args.resume,
        "resume_step": checkpoint_step(args.step),
        "progress": False if args.no_progress else None,
        "seeds": _seeds(args.seeds),
        "sweep_mode": args.sweep,
        "coordinator": args.coordinator,
        "num_processes": integer("--num-processes", args.num_processes, 1),
        "process_id": integer("--process-id", args.process_id, 0),
        "distributed_timeout": integer("--distributed-timeout", args.distributed_timeout, 1),
    }
    if args.step is not None and args.resume is None:
        raise UsageError("--step goes with --resume RUN_DIR")
    return fields


def _seeds(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if not parts:
        raise UsageError("--seeds needs at least one seed, e.g. --seeds 0,1,2")
    seeds = tuple(integer("--seeds", p, 0, 2**32 - 1) for p in parts)
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds repeats a seed: {text}")
    return seeds  # type: ignore[return-value]


def eval_options(args: argparse.Namespace) -> dict[str, Any]:
    """``rnn-jax eval``'s flags as ``readers.evaluate_checkpoint``'s arguments."""
    return {
        "step": checkpoint_step(args.step),
        "corpus": args.corpus,
        "eval_tokens": integer("--eval-tokens", args.eval_tokens, 2),
    }


def sample_options(args: argparse.Namespace) -> dict[str, Any]:
    """``rnn-jax sample``'s flags as ``readers.sample_checkpoint``'s arguments."""
    num_chars = integer("--num-chars", args.num_chars, 1, 10**7)
    stochastic = args.strategy in STOCHASTIC
    applies = {
        "--temperature": stochastic,
        "--top-k": args.strategy == "top-k",
        "--top-p": args.strategy == "top-p",
        "--beam-size": args.strategy == "beam",
    }
    for flag, ok in applies.items():
        if getattr(args, flag[2:].replace("-", "_")) is not None and not ok:
            raise UsageError(f"{flag} does not apply to --strategy {args.strategy}")
    temperature = number("--temperature", args.temperature)
    if temperature is not None and temperature <= 0:
        raise UsageError(f"--temperature must be positive, got {args.temperature}")
    try:
        sampling = SamplingConfig(
            strategy=args.strategy,
            temperature=1.0 if temperature is None else temperature,
            top_k=integer("--top-k", args.top_k, -(2**31)),
            top_p=number("--top-p", args.top_p),
            beam_size=4
            if args.beam_size is None
            else integer("--beam-size", args.beam_size, -(2**31)),
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.stream and args.prefix and len(args.prefix) > 1:
        raise UsageError(f"--stream continues one prefix, got {len(args.prefix)}")
    return {
        "prefixes": args.prefix,
        "stream": args.stream,
        "num_preds": num_chars,
        "step": checkpoint_step(args.step),
        "sampling": sampling,
        "seed": integer("--seed", args.seed, 0, 2**32 - 1),
    }


def export_options(args: argparse.Namespace) -> dict[str, Any]:
    """``rnn-jax export``'s flags as ``export.export_checkpoint``'s arguments."""
    return {
        "out": args.out,
        "step": checkpoint_step(args.step),
        "platforms": [p for p in args.platforms.replace(" ", "").split(",") if p],
    }


# ------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, call, and return the exit status (module docstring)."""
    started = time.perf_counter()  # the start-up a run reports is timed from here
    argv_given = argv
    argv = list(sys.argv[1:] if argv is None else argv)
    signals = None
    if argv_given is None and argv[:1] == ["train"]:
        signals = Signals().__enter__()  # first: a signal from here on is never lost
    elif argv_given is None and argv[:1] in (["eval"], ["sample"], ["info"]):
        signals = ReaderSignals(argv[0]).__enter__()  # exits at once, or stops a chunk loop
    elif argv_given is None:
        python_defaults()  # the entry point's exit_while_starting no longer holds
    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        print(f"rnn-jax: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    # JAX's C++ runtime reads its log level when it loads: errors only; with several
    # processes fatal errors only, as the run reports a lost process in its own line
    # (its coordination service logs every failed barrier and heartbeat as an error).
    hosts = args.command == "train" and (args.coordinator or args.num_processes)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3" if hosts else "2")
    # The one late import: the library loads JAX, which must start after the signal
    # handlers above, so that a signal during its start-up is noted, not lost.
    from rnn_jax import checkpoint, export, readers, run, seeds

    absl.logging.set_verbosity(absl.logging.ERROR)  # Orbax and JAX log INFO and WARNING
    checkpoint.quiet_orbax_logs()
    checkpoint.quiet_orbax_unraisables()
    try:
        if args.command == "train":
            request = run.TrainRequest(
                **train_request(args),
                started=started,
                compilation_cache=argv_given is None,  # a process of its own: its JAX is ours
            )
            if request.seeds is not None:
                if signals is not None:
                    signals.__exit__()  # a sweep is not resumable: a signal stops it
                return seeds.train_seeds(request)
            return run.train_from_request(request, signals)
        if argv_given is None and args.command in ("eval", "sample"):
            readers.use_compilation_cache(args.checkpoint)
        if args.command == "eval":
            return readers.evaluate_checkpoint(
                args.checkpoint, **eval_options(args), signals=signals
            )
        if args.command == "sample":
            return readers.sample_checkpoint(
                args.checkpoint, **sample_options(args), signals=signals
            )
        if args.command == "export":
            return export.export_checkpoint(args.run_dir, **export_options(args))
        print(readers.describe(args.run_dir))
        return 0
    except Interrupted as err:
        print(f"rnn-jax: {err}", file=sys.stderr)
        return 128 + err.signum
    except run.ProcessLostError as err:
        # now: jax.distributed's shutdown would wait for the lost process
        say_and_exit(f"rnn-jax: error: {err}", EXIT_FAILED)
    except run.RunError as err:
        print(f"rnn-jax: error: {err}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except (ValueError, OSError) as err:  # UsageError, CheckpointError and the library's
        print(f"rnn-jax: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print("rnn-jax: error: out of memory; use a smaller model or batch", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # eval, sample, info: nothing to save
        print(f"rnn-jax: SIGINT; {args.command} stopped", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        if argv_given is None:  # this process's command is done (and saved): it only exits
            for signum in SIGNALS:
                signal.signal(signum, signal.SIG_IGN)


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.filename and err.strerror:
        text = f"{err.strerror}: {err.filename}"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
