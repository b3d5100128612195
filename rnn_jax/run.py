"""A run's life cycle, shared by the command line and the experiments.

    prepare  a new run (``prepare_new``) or a resume (``prepare_resume``), each giving a
             ``Prepared``: the configs (defaults < config file < flags, each field
             checked where it is defined), the dataset, and everything that can fail
             before training checked (``checks``), before anything is written; a
             fine-tune (``--init-from``) is a new run from another run's parameters
             (``transfer``: the source restored and verified, the vocabulary remapped)
    folder   process 0 creates and locks the folder (``RUN_DIR/.lock``, held until the
             run ends) and inspects it under the lock: a finished run is refused (or
             resumed), a dead one (no finished checkpoint, no live owner) restarted; a
             resume sets later checkpoints aside and drops what was logged after its step
    train    ``loop.fit`` with the life cycle's actions (``actions.Save``: a checkpoint
             at the first record, every ``save_every`` epochs / ``save_every_steps``
             steps, at the end and on a signal; ``actions.StopWhen``: the signal flag)
    close    pending writes finished; a failed write names the last good checkpoint
    report   one line

``execute(request)`` runs it and returns an ``Outcome`` or raises: ``Interrupted``
(a signal before training started: nothing is left but a restartable folder),
``RunError`` (exit 1: the run broke, the message names the last good checkpoint; its
``ProcessLostError`` when another process of a multi-process run is gone; a process
that loses process 0 while training exits 1 from ``parallel.coordinator_watch``) or
``ValueError``/``OSError``/``CheckpointError`` (bad input: nothing was written).
``train_from_request`` is the command line's: it prints and returns the exit status.
``train`` is the experiments'. With several processes, process 0 alone prints, owns the
folder and writes its files (``execute`` and ``_actions`` say so); all of them compute.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh
from tqdm.auto import tqdm

from rnn_jax import (
    checkpoint,
    checks,
    compile_cache,
    input_pipeline,
    loop,
    parallel,
    report,
    run_folder,
    transfer,
)
from rnn_jax.actions import Action, Every, NonFiniteLossError, Plan, RecordPoint, Save, StopWhen
from rnn_jax.cache import CacheFolderError, cache_folder
from rnn_jax.config import (
    RESUMABLE,
    ModelConfig,
    RunConfig,
    TrainConfig,
    describe_defaults,
    fit_warmup,
    flag_name,
    load_file,
    own_text_defaults,
    to_dict,
)
from rnn_jax.input_pipeline import Dataset
from rnn_jax.run_folder import RunLock
from rnn_jax.signals import Signals, pause_point, pause_requested, say_and_exit
from rnn_jax.step import TrainState


class RunError(Exception):
    """The run could not go on (a NaN loss, a failed write); exit status 1. The message
    names the last good checkpoint."""


class ProcessLostError(RunError):
    """Another process of a multi-process run is gone: a collective or a barrier failed.
    The message says which, the last good checkpoint and the command that resumes. The
    process should exit without ``jax.distributed``'s shutdown, which would wait for the
    lost process (the command line does)."""


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
    # The command line's: JAX's persistent compilation cache beside the token cache (a
    # setting of the whole process, so a library caller opts in), and when the command
    # started (``time.perf_counter()``; None: when ``execute`` was called).
    compilation_cache: bool = False
    started: float | None = None


@dataclass
class Prepared:
    """A run ready to train: what ``prepare_new`` and ``prepare_resume`` both give."""

    run_dir: Path
    model_config: ModelConfig
    train_config: TrainConfig
    run_config: RunConfig
    dataset: Dataset
    mesh: Mesh | None  # None: one device, the book's path
    restored: checkpoint.Restored | None = None  # the checkpoint a resume continues
    start: TrainState | None = None  # a fine-tune's first state (``transfer.initial_state``)
    source: transfer.Source | None = None  # a fine-tune's source, new or resumed


@dataclass
class Outcome:
    run_dir: Path
    model_config: ModelConfig
    train_config: TrainConfig
    dataset: Dataset
    result: loop.FitResult | None  # None when the run had trained its budget already
    signum: int | None = None  # the signal that stopped it, if any
    start_up: StartUp | None = None


@dataclass
class StartUp:
    """Where the seconds from the command's start to the first step went: ``lap(part)``
    ends a part at the time of the call (the first starts at ``began``)."""

    began: float  # time.perf_counter() at the command's start
    parts: dict[str, float] = field(default_factory=dict)  # part -> seconds, in order

    def lap(self, part: str) -> None:
        now = time.perf_counter()
        self.parts[part] = now - self.began - sum(self.parts.values())

    def describe(self, compile_s: float) -> str:
        """``start-up 2.1 s to the first step (imports 0.9 s, ...)``; ``compile_s``: the
        train step's compile, taken out of the part it fell in (``other``)."""
        parts = {**self.parts, "compile": compile_s}
        parts["other"] = parts.pop("other", 0.0) - compile_s  # compile stays before other
        total = sum(parts.values())
        each = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in parts.items())
        return f"start-up {total:.1f} s to the first step ({each})"


# --------------------------------------------------------------------------- the run


def execute(request: TrainRequest, signals: Signals | None = None) -> Outcome:
    """Run the life cycle of the module docstring; see it for what each stage guarantees."""
    signals = signals or Signals()
    start_up = StartUp(time.perf_counter() if request.started is None else request.started)
    start_up.lap("imports")
    fields = resolve_configs(request)
    fine_tune = fields.train.get("init_from") is not None
    run_dir = _run_dir(request, "finetune" if fine_tune else fields.model.get("cell", "rnn"))
    run_config = _run_config(fields, request.resume)  # checked before anything is done
    compile_through_cache(request, run_config)
    if parallel.distributed_requested(request.coordinator, request.num_processes):
        signals.check()  # before joining, a signal stops this process alone
        _join(request, run_config)
        signals.share()
    main = parallel.is_main_process()
    echo = request.echo if main else _silent  # process 0 speaks for the run
    lock, created = RunLock(run_dir), False
    try:
        if request.resume is None:
            prepared = prepare_new(fields, run_config, run_dir, signals)
            if main:
                echo(input_pipeline.describe_data(prepared.train_config, prepared.dataset))
                if any(fields.defaults.values()):
                    echo(_describe_defaults(fields, prepared))
                if prepared.source is not None:
                    echo(prepared.source.describe())
                created = _open_new_folder(run_dir, lock, echo)
                pause_point("folder")
        else:
            if main:
                lock.acquire()
            prepared = prepare_resume(fields, run_config, request.resume_step, run_dir, signals)
            restored, dataset = prepared.restored, prepared.dataset
            if restored.step >= input_pipeline.total_steps(prepared.train_config, dataset):
                echo(
                    f"{run_dir} has trained {restored.step} steps (epoch {restored.epoch}) "
                    "already; raise --epochs or --max-steps to go on"
                )
                return Outcome(run_dir, prepared.model_config, prepared.train_config, dataset, None)
            if main:
                _open_resumed_folder(run_dir, restored, echo)
        signals.check()
        if main:
            lock.claim()
        start_up.lap("data")
        save_timeout = request.distributed_timeout if jax.process_count() > 1 else None
        progress = request.progress if main else False
        with parallel.coordinator_watch(_lost_coordinator(request, run_dir), save_timeout or 60):
            return _train(prepared, signals, echo, progress, save_timeout, start_up)
    except BaseException as err:  # a signal, bad input, a failure: a folder this run made
        # and never checkpointed is not left behind
        if created and not checkpoint.has_checkpoints(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        lost = parallel.lost_process(err) if isinstance(err, Exception) else None
        if lost is not None:
            raise ProcessLostError(f"{lost}; {_resume_hint(request, run_dir)}") from err
        raise
    finally:
        lock.release()


def prepare_new(fields: Fields, run_config: RunConfig, run_dir: Path, signals: Signals) -> Prepared:
    """The configs of a new run, its dataset, and the checks; nothing is written. A
    fine-tune (``init_from``) restores its source first: its model and token kind are
    the source's, and its first state is ``transfer.initial_state``'s."""
    model_fields, train_fields = dict(fields.model), dict(fields.train)
    source = None
    if train_fields.get("init_from") is not None:
        if jax.process_count() > 1:
            raise ValueError(f"{transfer.FLAG} runs in one process, not {jax.process_count()}")
        source_dir, source = transfer.restore_source(train_fields["init_from"])
        train_fields = transfer.train_fields(source_dir, source, train_fields)
    train_config = TrainConfig(**train_fields)
    dataset = _load_dataset(train_config, run_config)
    signals.check()
    vocab_size = model_fields.pop("vocab_size", dataset.vocab_size)
    if vocab_size != dataset.vocab_size:
        raise ValueError(
            f"the config's vocab_size {vocab_size} differs from the corpus's {dataset.vocab_size}"
        )
    if source is None:
        model_config = ModelConfig(vocab_size=dataset.vocab_size, **model_fields)
    else:
        model_config = transfer.model_config(
            source_dir, source.model_config, model_fields, dataset.vocab_size
        )
    if "warmup_steps" in fields.defaults.get("train", {}):
        train_config = fit_warmup(train_config, input_pipeline.total_steps(train_config, dataset))
    if train_config.sample_prefix is None:  # stored, so sampling never rereads the text
        prefixes = tuple(input_pipeline.default_prefixes(dataset))
        train_config = dataclasses.replace(train_config, sample_prefix=prefixes)
    checks.check_run(model_config, train_config, dataset, run_config)
    signals.check()
    mesh = parallel.mesh_for(run_config.devices)
    prepared = Prepared(run_dir, model_config, train_config, run_config, dataset, mesh)
    if source is not None:
        prepared.start, prepared.source = transfer.initial_state(
            source_dir, source, model_config, train_config, dataset
        )
    return prepared


def prepare_resume(
    fields: Fields,
    run_config: RunConfig,
    step: int | str | None,
    run_dir: Path,
    signals: Signals,
) -> Prepared:
    """The checkpoint a resume continues, restored and verified, its configs with the
    resumable changes the request makes (any other change refused, naming its flag), its
    dataset (a changed corpus refused), and the checks; nothing is written."""
    if not checkpoint.has_checkpoints(run_dir):
        raise ValueError(
            f"{run_dir} holds no finished checkpoint to resume (its run stopped "
            f"before the first save); start it again with --out {run_dir}"
        )
    signals.check()
    mesh = parallel.mesh_for(run_config.devices)
    restored = checkpoint.restore(run_dir, step=step, for_training=True, mesh=mesh)
    model, train = to_dict(restored.model_config), to_dict(restored.train_config)
    run_folder.check_own(run_dir, restored.step, model, train, restored.corpus)
    model_config, train_config = _resumed_configs(restored, fields.model, fields.train)
    dataset = _load_dataset(train_config, run_config)
    signals.check()
    checks.check_resumed_corpus(restored, dataset, run_dir)
    checks.check_run(model_config, train_config, dataset, run_config)
    signals.check()
    source = restored.extra.get("init_from")
    source = None if source is None else transfer.Source.from_json(source)
    return Prepared(
        run_dir, model_config, train_config, run_config, dataset, mesh, restored, source=source
    )


def _run_config(fields: Fields, resume: Path | None) -> RunConfig:
    """The run settings: the request's, over the resumed run's saved ones (any may change).
    A resumable run's ``config.json`` must be readable (``run_folder.load_config``): a
    resume needs its own settings, not defaults."""
    saved = {}
    if resume is not None and checkpoint.has_checkpoints(resume):
        saved = run_folder.load_config(resume).get("run", {})
    names = {f.name for f in dataclasses.fields(RunConfig)}
    return RunConfig(**{**{k: v for k, v in saved.items() if k in names}, **fields.run})


def _open_new_folder(run_dir: Path, lock: RunLock, echo: Callable[[str], None]) -> bool:
    """Create (if need be) and lock a new run's folder; refuse one that holds a finished
    run, restart a dead one. Returns whether this call created the folder."""
    created = run_folder.make_folder(run_dir)
    try:
        lock.acquire()
    except ValueError:
        if created:  # nothing is left behind; an empty folder only (another may own it now)
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise
    if run_folder.holds_run(run_dir):
        if checkpoint.has_checkpoints(run_dir):
            raise ValueError(
                f"--out {run_dir} already holds a run; continue it with "
                f"--resume {run_dir} or choose a new --out"
            )
        run_folder.clear_run_files(run_dir)
        echo(f"restarting {run_dir}: it held no finished checkpoint and no process owns it")
    return created


def _open_resumed_folder(
    run_dir: Path, restored: checkpoint.Restored, echo: Callable[[str], None]
) -> None:
    """Set aside the checkpoints after the one resumed and drop what was logged after it
    (an unreadable metrics file is refused first: nothing moves)."""
    report.read_jsonl(run_dir / run_folder.METRICS)
    moved, aside = run_folder.set_aside_after(run_dir, restored.step)
    run_folder.truncate_logs(run_dir, restored.step)
    kept = ""
    if moved:
        kept = f"; its later checkpoints ({', '.join(map(str, moved))}) are kept in {aside}"
    echo(f"resuming {run_dir} at step {restored.step} (epoch {restored.epoch}){kept}")


def _train(
    prepared: Prepared,
    signals: Signals,
    echo: Callable[[str], None],
    progress: bool | None,
    save_timeout: int | None = None,
    start_up: StartUp | None = None,
) -> Outcome:
    """Train the prepared run to its budget or a signal; map failures to ``RunError``.
    ``save_timeout``: seconds a save may wait for the other processes; ``start_up``: its
    last part, ``other``, ends at the first step."""
    run_dir, restored = prepared.run_dir, prepared.restored
    main = parallel.is_main_process()
    run_config = prepared.run_config
    options = checkpoint.CheckpointConfig(keep=run_config.keep, timeout_s=save_timeout)
    manager = checkpoint.open_manager(run_dir, options)
    actions, stop = _actions(prepared, manager, signals, echo, start_up)
    try:
        result = loop.fit(
            prepared.model_config,
            prepared.train_config,
            prepared.dataset,
            state=prepared.start if restored is None else restored.state,
            sums=None if restored is None else restored.extra.get("sums"),
            out_dir=run_dir if main else None,
            actions=actions,
            echo=echo,
            progress=progress,
            run_config=run_config,
            mesh=prepared.mesh,
            init_from=None if prepared.source is None else prepared.source.to_json(),
        )
    except NonFiniteLossError as err:
        _close_or_fail(manager, run_dir)
        raise RunError(f"{err}{_last_good(manager)}") from None
    except Exception as err:
        if parallel.lost_process(err) is not None:
            raise  # as it is: closing would wait for the lost process; execute names it
        if isinstance(err, checkpoint.CheckpointWriteError):
            _drop_unfinished_saves(run_dir)
            raise RunError(_without_spec(err)) from None
        if isinstance(err, OSError):  # metrics, plot, samples or events could not be written
            _close_or_fail(manager, run_dir)
            raise RunError(
                f"writing to {run_dir} failed ({err.strerror or err}){_last_good(manager)}"
            ) from None
        with contextlib.suppress(Exception):  # the error on its way out says what went wrong
            checkpoint.close(manager)
        raise
    except BaseException:  # a KeyboardInterrupt from a library caller
        with contextlib.suppress(Exception):
            checkpoint.close(manager)
        raise
    _close_or_fail(manager, run_dir)
    return Outcome(
        run_dir,
        prepared.model_config,
        prepared.train_config,
        prepared.dataset,
        result,
        stop.signum,
        start_up,
    )


def _actions(
    prepared: Prepared,
    manager: ocp.CheckpointManager,
    signals: Signals,
    echo: Callable[[str], None],
    start_up: StartUp | None = None,
) -> tuple[list[Action], StopWhen]:
    """The life cycle's actions: the plan, saves, the stop on a signal, the end of the
    start-up (and the test hook's pause points when a test asks for them); and the stop."""
    run_config, restored = prepared.run_config, prepared.restored
    num_devices = 1 if prepared.mesh is None else parallel.num_devices(prepared.mesh)
    if restored is not None:
        before = restored.extra.get("num_devices", 1)
        if before != num_devices:
            echo(
                f"note: {prepared.run_dir} was saved on {before} device(s) and resumes on "
                f"{num_devices}: the same run up to float32 reduction order"
            )
    save = Save(
        manager,
        Every(epochs=run_config.save_every, steps=run_config.save_every_steps, last=True),
        model_config=prepared.model_config,
        train_config=prepared.train_config,
        vocab=prepared.dataset.vocab,
        steps_per_epoch=input_pipeline.steps_per_epoch(prepared.train_config, prepared.dataset),
        corpus=prepared.dataset.fingerprint,
        num_devices=num_devices,
        saved_any=restored is not None,
        init_from=None if prepared.source is None else prepared.source.to_json(),
    )
    stop = StopWhen(lambda: signals.received, on_start=signals.start_training)
    plan = Plan(
        echo,
        input_pipeline.total_steps(prepared.train_config, prepared.dataset),
        0 if restored is None else restored.step,
        input_pipeline.steps_per_epoch(prepared.train_config, prepared.dataset),
        prepared.train_config.batch_size * prepared.train_config.num_steps,
    )
    actions = [plan, save, stop]
    if start_up is not None:
        actions.append(_FirstStep(start_up))
    if pause_requested():
        actions.append(_Pause())
    return actions, stop


class _FirstStep(Action):
    """Ends the start-up's last part (``other``) just before the first step."""

    def __init__(self, start_up: StartUp) -> None:
        self.start_up = start_up

    def start(self, state: TrainState) -> None:
        self.start_up.lap("other")


class _Pause(Action):
    """The test hook's points in the loop (``signals.pause_point``): ``start`` before the
    first step, ``record`` after each record's actions (its save included)."""

    def start(self, state: TrainState) -> None:
        pause_point("start")

    def __call__(self, state: TrainState, point: RecordPoint) -> None:
        pause_point("record")


# --------------------------------------------------------------------------- configs, checks


class Fields(NamedTuple):
    """The config fields a request sets (by its config file or its flags), by section,
    and the own-text defaults among them (``config.OWN_TEXT``), by section."""

    model: dict[str, Any]
    train: dict[str, Any]
    run: dict[str, Any]
    defaults: dict[str, dict[str, Any]]


def resolve_configs(request: TrainRequest) -> Fields:
    """Merge the config file and the flags: the fields set either way; a new run on a
    corpus the user names (not a fine-tune or a sweep) adds the own-text defaults of the
    others."""
    model: dict[str, Any] = {}
    train: dict[str, Any] = {}
    run: dict[str, Any] = {}
    if request.config_file is not None:
        sections = load_file(request.config_file)
        model, train, run = sections["model"], sections["train"], sections["run"]
    model = {**model, **request.model}
    train = {**train, **request.train}
    run = {**run, **request.run}
    if train.get("corpus") is not None:
        train["corpus"] = str(Path(train["corpus"]).expanduser().absolute())
    sections, defaults = {"model": model, "train": train, "run": run}, {}
    own_text = train.get("corpus") is not None and train.get("init_from") is None
    if own_text and request.resume is None and request.seeds is None:  # sweeps: SGD only
        defaults = own_text_defaults(sections)
        sections = {name: {**defaults[name], **fields} for name, fields in sections.items()}
    return Fields(**sections, defaults=defaults)


def _describe_defaults(fields: Fields, prepared: Prepared) -> str:
    configs = {"model": prepared.model_config, "train": prepared.train_config}
    return describe_defaults(fields.defaults, {**configs, "run": prepared.run_config})


def _resumed_configs(
    restored: checkpoint.Restored, model_fields: dict[str, Any], train_fields: dict[str, Any]
) -> tuple[ModelConfig, TrainConfig]:
    """The saved configs, with the resumable fields the user changed; any other change
    is refused naming its flag."""
    saved_model, saved_train = restored.model_config, restored.train_config
    for name, value in model_fields.items():
        if name in ("vocab_size", "compute_dtype"):
            continue
        if getattr(saved_model, name) != value:
            raise ValueError(
                f"{flag_name(ModelConfig, name)} {value} differs from the resumed run's "
                f"{getattr(saved_model, name)}"
            )
    changes = {}
    candidate = TrainConfig(**{**to_dict(saved_train), **train_fields})
    for name in train_fields:
        value, saved = getattr(candidate, name), getattr(saved_train, name)
        if value == saved:
            continue
        if name not in RESUMABLE:
            raise ValueError(
                f"{flag_name(TrainConfig, name)} {value} differs from the resumed run's {saved}"
            )
        changes[name] = value
    model_config = saved_model
    if "compute_dtype" in model_fields:
        model_config = dataclasses.replace(saved_model, compute_dtype=model_fields["compute_dtype"])
    return model_config, dataclasses.replace(saved_train, **changes)


# --------------------------------------------------------------------------- helpers


def _join(request: TrainRequest, run_config: RunConfig) -> None:
    """Join the multi-process run the request (or the cluster's environment) describes."""
    try:
        parallel.initialize_distributed(
            request.coordinator,
            request.num_processes,
            request.process_id,
            timeout_s=request.distributed_timeout,
            heartbeat_timeout_s=run_config.heartbeat_timeout,
        )
    except RuntimeError as err:
        raise ValueError(str(err)) from None


def _resume_command(request: TrainRequest, run_dir: Path, process_id: object) -> str:
    """The command that continues ``run_dir``, with the request's hosts flags, if any
    (any other number of processes will do as well)."""
    command = f"rnn-jax train --resume {run_dir}"
    if request.coordinator is None:
        return command
    return (
        f"{command} --coordinator {request.coordinator} --num-processes "
        f"{request.num_processes} --process-id {process_id}"
    )


def _resume_hint(request: TrainRequest, run_dir: Path) -> str:
    """The last good checkpoint of a run that lost a process, and this process's command
    to continue it."""
    steps = checkpoint.finished_steps(run_dir)
    if not steps:
        return "no checkpoint was written: run the same commands again to restart the folder"
    command = _resume_command(request, run_dir, request.process_id)
    return f"the last good checkpoint is step {steps[-1]}; continue with: {command}"


def _lost_coordinator(request: TrainRequest, run_dir: Path) -> Callable[[str], None]:
    """What a process does when ``parallel.coordinator_watch`` finds process 0 gone: the
    line a ``ProcessLostError`` gives on the command line, and exit 1 at once, from the
    watch's thread (JAX's client would end the process a moment later with SIGABRT)."""

    def lost(what: str) -> None:
        # exit 1, the command line's status for a failed run
        say_and_exit(f"rnn-jax: error: {what}; {_resume_hint(request, run_dir)}", 1)

    return lost


def _run_dir(request: TrainRequest, kind: str) -> Path:
    """The run folder the request names (``--out``, ``--resume``, or a new one named for
    ``kind``: the cell, or ``finetune``)."""
    if request.resume is not None:
        if request.out is not None and request.out.absolute() != request.resume.absolute():
            raise ValueError(
                "give either --out (a new run) or --resume (an existing one), not both"
            )
        if not request.resume.is_dir():
            raise FileNotFoundError(f"run folder not found: {request.resume}")
        return request.resume
    run_dir = request.out or Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    if str(run_dir) in ("", "."):
        raise ValueError("--out must name a folder")
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir} is a file, not a folder")
    run_folder.check_outside_runs(run_dir)
    return run_dir


def _silent(text: str) -> None:
    del text


def compile_through_cache(request: TrainRequest, run_config: RunConfig) -> None:
    """A command's process compiles through JAX's persistent compilation cache beside the
    token cache (``compile_cache``); with ``--no-cache`` it uses neither."""
    folder = cache_folder(run_config.cache, run_config.cache_dir)
    if request.compilation_cache and folder is not None:
        compile_cache.use_compilation_cache(folder)


def _load_dataset(train_config: TrainConfig, run_config: RunConfig) -> Dataset:
    """The dataset, through the token cache: ``--cache-dir``, else the default folder;
    none with ``--no-cache``. A cache folder that cannot be written is refused."""
    try:
        return input_pipeline.load_dataset(
            train_config, cache_dir=cache_folder(run_config.cache, run_config.cache_dir)
        )
    except CacheFolderError as err:
        raise ValueError(
            f"{flag_name(RunConfig, 'cache_dir')} {err.folder}: {err.reason}; name a "
            "writable folder or use --no-cache"
        ) from None


def _close_or_fail(manager: ocp.CheckpointManager, run_dir: Path) -> None:
    try:
        checkpoint.close(manager)
    except checkpoint.CheckpointWriteError as err:
        if parallel.lost_process(err) is not None:
            raise  # execute names it; the lost process's save may be another's to finish
        _drop_unfinished_saves(run_dir)
        raise RunError(_without_spec(err)) from None


def _without_spec(err: Exception) -> str:
    """The error on one line, without the kilobytes of driver spec TensorStore appends."""
    return " ".join(re.sub(r" ?\[tensorstore_spec='.*?'\]", "", str(err)).split())


def _drop_unfinished_saves(run_dir: Path) -> None:
    """Remove the temporary folders of saves that failed (Orbax would remove them when
    the folder is next opened for writing; a failed run leaves none behind)."""
    for partial in checkpoint.checkpoint_dir(run_dir).glob("*.orbax-checkpoint-tmp*"):
        shutil.rmtree(partial, ignore_errors=True)


def _last_good(manager: ocp.CheckpointManager) -> str:
    latest = manager.latest_step()
    if latest is None:
        return "; no checkpoint was written: run the same command again to restart the folder"
    return f"; the last good checkpoint is step {latest}"


# --------------------------------------------------------------------------- entry points


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
    from the data; dicts set only their fields, so a corpus named in one gets the
    own-text defaults for the others, ``resolve_configs``). Raises as ``execute`` does;
    a signal is not handled here."""

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


def train_from_request(request: TrainRequest, signals: Signals | None = None) -> int:
    """``rnn-jax train``: run ``execute`` and print its report; the exit status (0, or
    128 + signal) is returned, failures raise for the CLI to print. ``signals``: handlers
    the caller installed as early as it could (else installed here). A request with
    ``seeds`` is a sweep, which ``seeds.train_seeds`` runs."""
    if request.seeds is not None:
        raise ValueError("a request with seeds is a sweep: run it with seeds.train_seeds")
    with contextlib.nullcontext(signals) if signals else Signals() as signals:
        outcome = execute(request, signals)
        return _report(request, outcome)  # under the handlers: a late signal is only noted


def _report(request: TrainRequest, outcome: Outcome) -> int:
    echo = request.echo if parallel.is_main_process() else _silent  # process 0 reports
    result = outcome.result
    if result is None:
        return 0
    if outcome.signum is not None and result.interrupted:
        name = signal.Signals(outcome.signum).name
        every = "I (each process its own)" if request.coordinator else None
        echo(
            f"{name}: saved step {int(result.state.step)} to {outcome.run_dir}; "
            f"continue with: {_resume_command(request, outcome.run_dir, every)}"
        )
        return 128 + outcome.signum
    if result.history:
        start_up = (
            "" if outcome.start_up is None else f"; {outcome.start_up.describe(result.compile_s)}"
        )
        echo(f"done: {report.summary(result.history[-1])}{start_up}; run folder {outcome.run_dir}")
    return 0
