"""A run's life cycle, shared by the command line and the experiments.

    configs  defaults < config file < flags; each field checked where it is defined
    checks   corpus, sizes, prefixes, devices, memory: everything that can fail before
             training fails here, before anything is written
    folder   created, then locked (``RUN_DIR/.lock``, held until the run ends), then
             inspected under the lock: a finished run is refused (or resumed), a dead
             one (no finished checkpoint, no live owner) is restarted
    resume   the checkpoint restored and verified; changed settings and a changed corpus
             refused; what the folder logged after that checkpoint dropped
    train    ``loop.fit``; a checkpoint at the first record, every ``save_every``
             epochs / ``save_every_steps`` steps, at the end and on a signal
    close    pending writes finished; a failed write names the last good checkpoint
    report   one line

``execute(request)`` runs it and returns an ``Outcome`` or raises: ``Interrupted``
(a signal before training started: nothing is left but a restartable folder),
``RunError`` (exit 1: the run broke, the message names the last good checkpoint) or
``ValueError``/``OSError``/``CheckpointError`` (bad input: nothing was written).
``train_from_request`` is the CLI's wrapper: it prints and returns the exit status.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rnn_jax.config import (
    ModelConfig,
    RunConfig,
    TrainConfig,
    load_file,
    to_dict,
)

LOCK = ".lock"
RUN_FILES = (
    "config.json",
    "metrics.jsonl",
    "samples.txt",
    "perplexity.png",
    "checkpoints",
    "events",
)
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(Exception):  # noqa: N818 (it is what happened, not an error)
    """A signal arrived before training started; exit status 128 + ``signum``."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


class RunError(Exception):
    """The run could not go on (a NaN loss, a failed write); exit status 1. The message
    names the last good checkpoint."""


@dataclass(frozen=True)
class TrainRequest:
    """What the user asked for: the config fields they set (flags), a config file, and
    where. ``model``/``train``/``run`` hold only fields set explicitly, so that a resumed
    run can tell a changed setting from a default."""

    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    config_file: Path | None = None
    out: Path | None = None
    resume: Path | None = None
    resume_step: int | str | None = None
    progress: bool | None = None
    seeds: tuple[int, ...] | None = None
    sweep_mode: str | None = None
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    distributed_timeout: int = 60
    echo: Callable[[str], None] = tqdm.write


@dataclass
class Outcome:
    run_dir: Path
    model_config: ModelConfig
    train_config: TrainConfig
    dataset: Any  # loop.Dataset
    result: Any  # loop.FitResult
    signum: int | None = None  # the signal that stopped it, if any


# --------------------------------------------------------------------------- configs


def resolve_configs(
    request: TrainRequest,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], set[str]]:
    """Merge the config file and the flags: ``(model, train, run, explicit)`` field dicts,
    ``explicit`` naming (``section.field``) every field the user set either way."""
    model: dict[str, Any] = {}
    train: dict[str, Any] = {}
    run: dict[str, Any] = {}
    if request.config_file is not None:
        sections = load_file(request.config_file)
        model, train, run = sections["model"], sections["train"], sections["run"]
    model = {**model, **request.model}
    train = {**train, **request.train}
    run = {**run, **request.run}
    explicit = {f"model.{k}" for k in model} | {f"train.{k}" for k in train}
    if train.get("corpus") is not None:
        train["corpus"] = str(Path(train["corpus"]).expanduser().absolute())
    return model, train, run, explicit


def _flag(section: str, name: str) -> str:
    from rnn_jax.cli import flag_name

    cls = {"model": ModelConfig, "train": TrainConfig, "run": RunConfig}[section]
    return flag_name(cls, name)


# --------------------------------------------------------------------------- the folder


class RunLock:
    """One writer per run folder: an exclusive ``flock`` on ``RUN_DIR/.lock`` that names
    its owner (pid and host). Taken before the folder is inspected and held until the
    run ends; the kernel releases it when the process dies, whatever kills it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._handle: Any = None

    def acquire(self) -> None:
        path = self.run_dir / LOCK
        try:
            handle = path.open("a+")
        except OSError as err:
            raise ValueError(f"cannot write to run folder {self.run_dir}: {err.strerror}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise ValueError(
                f"run folder {self.run_dir} is in use by {owner}; wait for it or use another --out"
            ) from None
        self._handle = handle

    def claim(self) -> None:
        """Name this process as the owner (once the checks passed: a refused command
        leaves the folder, lock file included, as it was)."""
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self._handle.flush()

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def holds_run(run_dir: Path) -> bool:
    return run_dir.is_dir() and any((run_dir / name).exists() for name in RUN_FILES)


def clear_run_files(run_dir: Path) -> None:
    """Remove what a run writes (not the lock), for a restart of a dead folder."""
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for tmp in run_dir.glob("*.tmp*"):
        tmp.unlink()


# --------------------------------------------------------------------------- signals


class Signals:
    """SIGINT, SIGTERM and SIGHUP become a flag: during training the loop polls it after
    each step; during start-up ``check`` turns it into ``Interrupted`` between stages
    (raising from the handler itself could land inside JAX's backend start-up, which
    swallows or wraps it)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.training = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Signals:
        for s in SIGNALS:
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum

    def start_training(self) -> None:
        """Called by the loop before its first step: a signal from here on stops the
        loop after a step (and is saved); one before it abandons the start-up."""
        self.check()
        self.training = True

    def check(self) -> None:
        """Raise ``Interrupted`` if a signal arrived while the run was starting."""
        if self.received is not None and not self.training:
            name = signal.Signals(self.received).name
            raise Interrupted(self.received, f"{name} before training started; stopped")

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)


# --------------------------------------------------------------------------- the run


def execute(request: TrainRequest, signals: Signals | None = None) -> Outcome:
    """Run the life cycle of module docstring; see it for what each step guarantees."""
    signals = signals or Signals()
    from rnn_jax import checkpoint, loop, parallel, report

    echo = request.echo
    model_fields, train_fields, run_fields, explicit = resolve_configs(request)
    if parallel.distributed_requested(request.coordinator, request.num_processes):
        try:
            parallel.initialize_distributed(
                request.coordinator,
                request.num_processes,
                request.process_id,
                timeout_s=request.distributed_timeout,
            )
        except RuntimeError as err:
            raise ValueError(str(err)) from None
    main_process = parallel.is_main_process()
    if not main_process:  # process 0 speaks for the run
        request = dataclasses.replace(request, echo=_silent)
        echo = _silent
    restored = None
    if request.resume is not None:
        if request.out is not None and request.out.absolute() != request.resume.absolute():
            raise ValueError(
                "give either --out (a new run) or --resume (an existing one), not both"
            )
        run_dir = request.resume
        if not run_dir.is_dir():
            raise FileNotFoundError(f"run folder not found: {run_dir}")
    else:
        cell = model_fields.get("cell", "rnn")
        run_dir = request.out or Path("runs") / f"{cell}-{time.strftime('%Y%m%d-%H%M%S')}"
        if str(run_dir) in ("", "."):
            raise ValueError("--out must name a folder")
        if run_dir.exists() and not run_dir.is_dir():
            raise ValueError(f"--out {run_dir} is a file, not a folder")
    run_config = RunConfig(**run_fields)

    created = False
    lock = RunLock(run_dir)
    try:
        if request.resume is None:
            train_config = TrainConfig(**train_fields)
            dataset = loop.load_dataset(train_config, cache_dir=_cache(run_config))
            signals.check()
            vocab_size = model_fields.pop("vocab_size", dataset.vocab_size)
            if vocab_size != dataset.vocab_size:
                raise ValueError(
                    f"the config's vocab_size {vocab_size} differs from the corpus's "
                    f"{dataset.vocab_size}"
                )
            model_config = ModelConfig(vocab_size=dataset.vocab_size, **model_fields)
            if train_config.sample_prefix is None:  # stored, so sampling never rereads the text
                prefixes = tuple(loop.default_prefixes(dataset))
                train_config = dataclasses.replace(train_config, sample_prefix=prefixes)
            loop.check_run(model_config, train_config, dataset, run_config)
            signals.check()
            if main_process:
                echo(loop.describe_data(train_config, dataset))
            if main_process:
                try:
                    created = not run_dir.exists()
                    run_dir.mkdir(parents=True, exist_ok=True)
                except OSError as err:
                    raise ValueError(
                        f"cannot create run folder {run_dir}: {err.strerror or err}"
                    ) from None
                lock.acquire()
                if holds_run(run_dir):
                    if checkpoint.has_checkpoints(run_dir):
                        raise ValueError(
                            f"--out {run_dir} already holds a run; continue it with "
                            f"--resume {run_dir} or choose a new --out"
                        )
                    clear_run_files(run_dir)
                    echo(
                        f"restarting {run_dir}: it held no finished checkpoint and no "
                        "process owns it"
                    )
        else:
            if main_process:
                lock.acquire()
            if not checkpoint.has_checkpoints(run_dir):
                raise ValueError(
                    f"{run_dir} holds no finished checkpoint to resume (its run stopped "
                    f"before the first save); start it again with --out {run_dir}"
                )
            run_config = RunConfig(**{**_saved_run_config(run_dir), **run_fields})
            signals.check()
            restored = checkpoint.restore(
                run_dir,
                step=request.resume_step,
                for_training=True,
                sharding=_restore_sharding(run_config.devices),
            )
            model_config, train_config = _resumed_configs(
                restored, model_fields, train_fields, explicit
            )
            dataset = loop.load_dataset(train_config, cache_dir=_cache(run_config))
            signals.check()
            _check_corpus(restored, dataset, run_dir)
            loop.check_run(model_config, train_config, dataset, run_config)
            signals.check()
            if restored.step >= loop.total_steps(train_config, dataset):
                echo(
                    f"{run_dir} has trained {restored.step} steps (epoch {restored.epoch}) "
                    "already; raise --epochs or --max-steps to go on"
                )
                return Outcome(run_dir, model_config, train_config, dataset, None)
            if main_process:
                report.read_jsonl(run_dir / loop.METRICS)  # refused before anything moves
                moved, aside = checkpoint.set_aside_after(run_dir, restored.step)
                loop.truncate_logs(run_dir, restored.step)
                kept = ""
                if moved:
                    kept = (
                        f"; its later checkpoints ({', '.join(map(str, moved))}) are kept in "
                        f"{aside}"
                    )
                echo(f"resuming {run_dir} at step {restored.step} (epoch {restored.epoch}){kept}")
        signals.check()
        lock.claim() if main_process else None
        return _train(
            request, signals, run_dir, model_config, train_config, run_config, dataset, restored
        )
    except BaseException:  # a signal, bad input, a failure: a folder this run made and
        # never checkpointed is not left behind
        if created and not checkpoint.has_checkpoints(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        lock.release()


def _train(
    request: TrainRequest,
    signals: Signals,
    run_dir: Path,
    model_config: ModelConfig,
    train_config: TrainConfig,
    run_config: RunConfig,
    dataset: Any,
    restored: Any,
) -> Outcome:
    from rnn_jax import checkpoint, loop, parallel

    main_process = parallel.is_main_process()
    mesh = parallel.mesh_for(run_config.devices)
    num_devices = 1 if mesh is None else parallel.num_devices(mesh)
    if restored is not None and main_process:
        before = (restored.extra or {}).get("num_devices", 1)
        if before != num_devices:
            request.echo(
                f"note: {run_dir} was saved on {before} device(s) and resumes on {num_devices}: "
                "the same run up to float32 reduction order"
            )
    manager = checkpoint.open_manager(run_dir, checkpoint.CheckpointConfig(keep=run_config.keep))
    K = loop.batches_per_epoch(len(dataset.train), train_config.batch_size, train_config.num_steps)
    total = loop.total_steps(train_config, dataset)
    saved_any = restored is not None

    def save(state: Any, record: dict[str, Any] | None, sums: dict[str, Any] | None) -> None:
        nonlocal saved_any
        step = int(state.step)
        checkpoint.save(
            manager,
            state,
            epoch=step // K,
            model_config=model_config,
            train_config=train_config,
            vocab=dataset.vocab,
            metrics=record,
            corpus=dataset.fingerprint,
            extra={"num_devices": num_devices, **({"sums": sums} if sums else {})},
        )
        saved_any = True

    def on_record(state: Any, record: dict[str, Any]) -> None:
        step = int(state.step)
        epoch_end = step % K == 0
        due = (
            not saved_any
            or step == total
            or (epoch_end and (step // K) % run_config.save_every == 0)
            or (run_config.save_every_steps and step % run_config.save_every_steps == 0)
        )
        if due:
            save(state, record, None)

    try:
        result = loop.fit(
            model_config,
            train_config,
            dataset,
            state=None if restored is None else restored.state,
            sums=None if restored is None else (restored.extra or {}).get("sums"),
            out_dir=run_dir if main_process else None,
            on_record=on_record,
            should_stop=lambda: signals.received is not None,
            on_start=signals.start_training,
            echo=request.echo,
            progress=request.progress if main_process else False,
            run_config=run_config,
            mesh=mesh,
        )
        if result.interrupted and int(result.state.step) not in manager.all_steps():
            save(result.state, None, result.sums)
    except loop.NonFiniteLossError as err:
        _close_or_fail(manager, run_dir)
        raise RunError(f"{err}{_last_good(manager)}") from None
    except checkpoint.CheckpointWriteError as err:
        _drop_unfinished_saves(run_dir)
        raise RunError(_without_spec(err)) from None
    except OSError as err:  # metrics, plot, samples or events could not be written
        _close_or_fail(manager, run_dir)
        raise RunError(
            f"writing to {run_dir} failed ({err.strerror or err}){_last_good(manager)}"
        ) from None
    except BaseException:
        with contextlib.suppress(Exception):
            checkpoint.close(manager)
        raise
    _close_or_fail(manager, run_dir)
    return Outcome(run_dir, model_config, train_config, dataset, result, signals.received)


def _silent(text: str) -> None:
    del text


def _cache(run_config: RunConfig) -> str | bool | None:
    """The token cache: ``--cache-dir``, else the default folder; none with ``--no-cache``."""
    return (run_config.cache_dir or True) if run_config.cache else None


def _restore_sharding(devices: int | None) -> Any:
    """Where a resumed state's arrays go: one device, or the run's mesh (the hidden
    state's rows over ``data``, everything else replicated)."""
    from rnn_jax import parallel

    mesh = parallel.mesh_for(devices)
    if mesh is None:
        return None
    rows, whole = parallel.data_sharding(mesh), parallel.replicated(mesh)

    def sharding(path: Any, shape: tuple[int, ...]) -> Any:
        keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        return rows if "hidden" in keys else whole

    return sharding


def _close_or_fail(manager: Any, run_dir: Path) -> None:
    from rnn_jax import checkpoint

    try:
        checkpoint.close(manager)
    except checkpoint.CheckpointWriteError as err:
        _drop_unfinished_saves(run_dir)
        raise RunError(_without_spec(err)) from None


def _without_spec(err: Exception) -> str:
    """The error on one line, without the kilobytes of driver spec TensorStore appends."""
    return " ".join(re.sub(r" ?\[tensorstore_spec='.*?'\]", "", str(err)).split())


def _drop_unfinished_saves(run_dir: Path) -> None:
    """Remove the temporary folders of saves that failed (Orbax would remove them when
    the folder is next opened for writing; a failed run leaves none behind)."""
    from rnn_jax import checkpoint

    for partial in checkpoint.checkpoint_dir(run_dir).glob("*.orbax-checkpoint-tmp*"):
        shutil.rmtree(partial, ignore_errors=True)


def _last_good(manager: Any) -> str:
    latest = manager.latest_step()
    if latest is None:
        return "; no checkpoint was written: run the same command again to restart the folder"
    return f"; the last good checkpoint is step {latest}"


def _resumed_configs(
    restored: Any, model_fields: dict[str, Any], train_fields: dict[str, Any], explicit: set[str]
) -> tuple[ModelConfig, TrainConfig]:
    """The saved configs, with the resumable fields the user changed; any other change
    is refused naming its flag."""
    saved_model, saved_train = restored.model_config, restored.train_config
    for name, value in model_fields.items():
        if name == "vocab_size":
            continue
        if name == "compute_dtype":
            continue
        if getattr(saved_model, name) != value:
            raise ValueError(
                f"{_flag('model', name)} {value} differs from the resumed run's "
                f"{getattr(saved_model, name)}"
            )
    resumable = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("resumable")}
    changes = {}
    candidate = TrainConfig(**{**to_dict(saved_train), **train_fields})
    for name in train_fields:
        value, saved = getattr(candidate, name), getattr(saved_train, name)
        if value == saved:
            continue
        if name not in resumable:
            raise ValueError(
                f"{_flag('train', name)} {value} differs from the resumed run's {saved}"
            )
        changes[name] = value
    model_config = saved_model
    if "compute_dtype" in model_fields:
        model_config = dataclasses.replace(saved_model, compute_dtype=model_fields["compute_dtype"])
    return model_config, dataclasses.replace(saved_train, **changes)


def _saved_run_config(run_dir: Path) -> dict[str, Any]:
    try:
        saved = json.loads((run_dir / "config.json").read_text("utf-8")).get("run", {})
    except (OSError, ValueError):
        return {}
    names = {f.name for f in dataclasses.fields(RunConfig)}
    return {k: v for k, v in saved.items() if k in names}


def _check_corpus(restored: Any, dataset: Any, run_dir: Path) -> None:
    saved = restored.corpus
    if saved and saved.get("sha256") and saved.get("sha256") != dataset.fingerprint.get("sha256"):
        where = restored.train_config.corpus or "the shipped corpus"
        raise ValueError(
            f"the corpus {where} changed since {run_dir} was trained (sha256 "
            f"{saved['sha256'][:12]}... then, {dataset.fingerprint['sha256'][:12]}... now); "
            "resuming would train on other text"
        )
    if dataset.vocab != restored.vocab:
        raise ValueError(
            f"the corpus now gives a different vocabulary than the one {run_dir} was trained with"
        )


def train(
    model: dict[str, Any] | None = None,
    train: TrainConfig | dict[str, Any] | None = None,
    *,
    run: RunConfig | dict[str, Any] | None = None,
    out: Path | None = None,
    resume: Path | None = None,
    echo: Callable[[str], None] = tqdm.write,
    progress: bool | None = None,
) -> Outcome:
    """The life cycle for experiments and notebooks: ``execute`` with the configs given
    as objects (``model``: the ``ModelConfig`` fields but ``vocab_size``, which comes
    from the data). Raises as ``execute`` does; a signal is not handled here."""

    def fields(config: Any) -> dict[str, Any]:
        return dict(config) if isinstance(config, dict) else to_dict(config) if config else {}

    request = TrainRequest(
        model=dict(model or {}),
        train=fields(train),
        run=fields(run),
        out=out,
        resume=resume,
        echo=echo,
        progress=progress,
    )
    signals = Signals()
    signals.training = True  # no handler is installed: nothing to turn into Interrupted
    return execute(request, signals)


# --------------------------------------------------------------------------- the CLI's wrapper


def train_from_request(request: TrainRequest, signals: Signals | None = None) -> int:
    """``rnn-jax train``: run ``execute`` (or a sweep) and print its report; the exit
    status (0, or 128 + signal) is returned, failures raise for the CLI to print.
    ``signals``: handlers the caller installed as early as it could (else installed here)."""
    with contextlib.nullcontext(signals) if signals else Signals() as signals:
        if request.seeds is not None:
            signals.__exit__()  # a sweep is not resumable: a signal stops it (KeyboardInterrupt)
            return _train_sweep(request)
        outcome = execute(request, signals)
        return _report(request, outcome)  # under the handlers: a late signal is only noted


def _report(request: TrainRequest, outcome: Outcome) -> int:
    from rnn_jax import parallel

    if not parallel.is_main_process():  # process 0 reports for the run
        request = dataclasses.replace(request, echo=_silent)
    result = outcome.result
    if result is None:
        return 0
    if outcome.signum is not None and result.interrupted:
        name = signal.Signals(outcome.signum).name
        request.echo(
            f"{name}: saved step {int(result.state.step)} to {outcome.run_dir}; "
            f"continue with: rnn-jax train --resume {outcome.run_dir}"
        )
        return 128 + outcome.signum
    if result.history:
        from rnn_jax import loop

        request.echo(
            f"done: {loop.summary(result.history[-1], outcome.train_config)}, train step "
            f"compiled in {result.compile_s:.2f} s; run folder {outcome.run_dir}"
        )
    return 0


def default_sweep_mode() -> str:
    """``loop`` on CPU, where a loop of jitted solo steps measured faster than one vmapped
    step in 7 of 8 settings (``benchmarks/results/sweep``); ``vmap`` on accelerators."""
    import jax

    return "loop" if jax.default_backend() == "cpu" else "vmap"


def _train_sweep(request: TrainRequest) -> int:
    """``rnn-jax train --seeds S,S,...``: one member per seed, trained together
    (``rnn_jax.sweep``), each in its own subfolder, the parent folder holding
    ``sweep.json`` and the mean and min-max band of the members' curves."""
    import statistics

    from rnn_jax import loop, sweep

    if request.resume is not None:
        raise ValueError(
            "--seeds starts a new sweep; continue one member with --resume RUN/member-..."
        )
    model_fields, train_fields, run_fields, _ = resolve_configs(request)
    train_config = TrainConfig(**train_fields)
    run_config = RunConfig(**run_fields)
    dataset = loop.load_dataset(train_config, cache_dir=_cache(run_config))
    model_fields.pop("vocab_size", None)
    model_config = ModelConfig(vocab_size=dataset.vocab_size, **model_fields)
    loop.check_run(model_config, train_config, dataset, run_config)
    members = sweep.grid(model_config, train_config, seeds=request.seeds)
    sweep.validate_members(members)
    mode = request.sweep_mode or default_sweep_mode()
    cell = model_config.cell
    run_dir = request.out or Path("runs") / f"{cell}-seeds-{time.strftime('%Y%m%d-%H%M%S')}"
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create run folder {run_dir}: {err.strerror or err}") from None
    lock = RunLock(run_dir)
    try:
        lock.acquire()
        if any(run_dir.iterdir()) and set(p.name for p in run_dir.iterdir()) != {LOCK}:
            raise ValueError(f"--out {run_dir} is not empty; choose a new --out for a sweep")
        lock.claim()
        request.echo(loop.describe_data(train_config, dataset))
        request.echo(
            f"{len(members)} members (seeds {', '.join(map(str, request.seeds or ()))}), {mode}"
        )
        results = sweep.fit_sweep(members, dataset, out_dir=run_dir, mode=mode, echo=request.echo)
    except BaseException:
        if created and not any(checkpoint_steps(run_dir)):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        lock.release()
    finals = [r.history[-1] for r in results if r.history and not r.diverged]
    for key, name in (("train_ppl", "perplexity"), ("val_ppl", "validation perplexity")):
        values = [f[key] for f in finals if f.get(key) is not None]
        if len(values) >= 2:
            request.echo(
                f"{name}: mean {statistics.mean(values):.3f}, std {statistics.stdev(values):.3f}, "
                f"min {min(values):.3f}, max {max(values):.3f} over {len(values)} members"
            )
    diverged = sum(r.diverged for r in results)
    request.echo(f"done: {len(results)} members ({diverged} diverged); run folder {run_dir}")
    return 0


def checkpoint_steps(run_dir: Path) -> list[int]:
    """The finished checkpoints of every member folder below ``run_dir``."""
    from rnn_jax import checkpoint

    return [s for sub in run_dir.glob("member-*") for s in checkpoint.finished_steps(sub)]


# --------------------------------------------------------------------------- readers


def evaluate_checkpoint(
    run_dir: Path,
    *,
    step: int | str | None = None,
    corpus: Path | None = None,
    eval_tokens: int | None = None,
    echo: Callable[[str], None] = print,
) -> int:
    """``rnn-jax eval``: perplexity (and bits per character for char tokens) of a
    checkpoint on its validation split or on ``corpus``; says when the training corpus
    changed since."""
    import jax.numpy as jnp

    from rnn_jax import checkpoint, data, loop
    from rnn_jax import step as step_lib
    from rnn_jax.loss import bits_per_token, perplexity

    restored = checkpoint.restore(run_dir, step=step)
    config = restored.train_config
    if corpus is None:
        dataset = loop.load_dataset(config)
        if restored.corpus and restored.corpus.get("sha256") not in (
            None,
            dataset.fingerprint.get("sha256"),
        ):
            echo(
                f"note: the training corpus {config.corpus or '(shipped)'} changed since "
                f"{run_dir} was trained; scoring its current validation split"
            )
        tokens = dataset.val
        if len(tokens) < 2:
            raise ValueError(f"the run in {run_dir} has no validation split; name a --corpus")
        what = "the validation split"
    else:
        tokens = data.encode_corpus(corpus, restored.vocab, config.token, config.preprocess)
        if len(tokens) < 2:
            raise ValueError(f"corpus {corpus} has fewer than 2 tokens after preprocessing")
        what = str(corpus)
    if eval_tokens is not None:
        tokens = tokens[:eval_tokens]
    Xs, Ys = data.eval_batches(tokens, config.batch_size, config.num_steps)
    evaluate = step_lib.make_evaluate(restored.model_config)
    batches = (jnp.asarray(Xs), jnp.asarray(Ys))
    evaluate(restored.params, *batches)[0].block_until_ready()  # compile
    started = time.perf_counter()
    nll, count = evaluate(restored.params, *batches)
    nll.block_until_ready()
    seconds = time.perf_counter() - started
    ppl = perplexity(nll, count)
    unit = ""
    if config.token == "char":
        unit = f" ({bits_per_token(ppl):.4f} bits per character)"
    else:
        unk = float((Ys == restored.vocab.unk).mean())
        unit = f" ({unk:.2%} of the scored tokens are <unk>)"
    echo(
        f"step {restored.step}: perplexity {ppl:.3f}{unit} on {int(count):,} tokens of "
        f"{what}, {int(count) / seconds:,.0f} tokens/s"
    )
    return 0


def sample_checkpoint(
    run_dir: Path,
    *,
    prefixes: list[str] | None,
    num_preds: int,
    step: int | str | None,
    sampling: Any,
    seed: int,
    echo: Callable[[str], None] = print,
) -> int:
    """``rnn-jax sample``: each prefix and its continuation, as the text is (a model
    trained on raw text prints newlines as newlines)."""
    import jax

    from rnn_jax import checkpoint, sample

    restored = checkpoint.restore(run_dir, step=step)
    config = restored.train_config
    prefixes = prefixes or list(config.sample_prefix or ()) or [_first_tokens(restored)]
    texts = sample.predict(
        prefixes,
        num_preds,
        restored.model_config,
        restored.params,
        restored.vocab,
        config.token,
        sampling=sampling,
        key=jax.random.key(seed),
        preprocess=config.preprocess,
    )
    for text in texts:
        echo(text)
    return 0


def _first_tokens(restored: Any) -> str:
    """The default prefix of a run saved before its config stored it (reads the corpus)."""
    from rnn_jax import loop

    dataset = loop.load_dataset(restored.train_config)
    return loop.default_prefixes(dataset)[0]


def describe(run_dir: Path) -> str:
    """``rnn-jax info``: the run's config summary and its checkpoints as a table."""
    from rnn_jax import checkpoint

    run_dir = Path(run_dir)
    lines = [f"run folder {run_dir}"]
    try:
        config = json.loads((run_dir / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        config = None
    if config:
        m, t = config.get("model", {}), config.get("train", {})
        lines.append(
            f"  model: {m.get('cell')} x{m.get('num_layers')}, H {m.get('num_hiddens')}, "
            f"V {m.get('vocab_size')}, init {m.get('init')}, {m.get('compute_dtype')}"
        )
        lines.append(
            f"  data: {t.get('corpus') or 'the shipped Time Machine'}, {t.get('preprocess')} "
            f"{t.get('token')} tokens, max_tokens {t.get('max_tokens')}, "
            f"B {t.get('batch_size')} x T {t.get('num_steps')}, {t.get('partition')}"
        )
        lines.append(
            f"  optimizer: {t.get('optimizer')} lr {t.get('lr')} ({t.get('schedule')}), "
            f"theta {t.get('theta')}, epochs {t.get('num_epochs')}, "
            f"max_steps {t.get('max_steps')}, seed {t.get('seed')}"
        )
    owner = _owner(run_dir)
    if owner:
        lines.append(f"  in use by {owner}")
    infos = checkpoint.list_checkpoints(run_dir, verify=True)
    if not infos:
        lines.append("  no finished checkpoint")
        return "\n".join(lines)
    lines.append("")
    lines.append("| step | epoch | train ppl | val ppl | intact | |")
    lines.append("|---:|---:|---:|---:|---|---|")
    for info in infos:
        tags = ", ".join(t for t, on in (("latest", info.is_latest), ("best", info.is_best)) if on)
        epoch = "" if info.epoch is None else info.epoch
        lines.append(
            f"| {info.step} | {epoch} | {_fmt(info.train_ppl)} | {_fmt(info.val_ppl)} | "
            f"{'yes' if info.intact else 'NO'} | {tags} |"
        )
    damaged = [f"  {info.problem}" for info in infos if not info.intact and info.problem]
    return "\n".join(lines + (["", *damaged] if damaged else []))


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _owner(run_dir: Path) -> str | None:
    path = run_dir / LOCK
    if not path.exists():
        return None
    with path.open("r") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "another process"
    return None
