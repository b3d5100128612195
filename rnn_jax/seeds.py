"""``rnn-jax train --seeds S,S,...``: one run's configuration trained from several seeds
at once (``rnn_jax.sweep``: a loop of solo steps, or one vmapped step), each member in
its own subfolder, the parent holding ``sweep.json`` and the mean and min-max band of the
members' curves. The configs, the data and the checks are a new run's (``run``); a
sweep is not resumable (a member is, on its own), so a signal stops it."""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jax

from rnn_jax import checkpoint, input_pipeline, run, run_folder, sweep, transfer
from rnn_jax.config import RunConfig
from rnn_jax.run import TrainRequest
from rnn_jax.run_folder import RunLock
from rnn_jax.signals import Signals


def default_sweep_mode() -> str:
    """``loop`` on CPU, where a loop of jitted solo steps measured faster than one vmapped
    step in 6 of 8 settings, and by 1.8x where the work is largest
    (``benchmarks/results/sweep``); ``vmap`` on accelerators."""
    return "loop" if jax.default_backend() == "cpu" else "vmap"


def train_seeds(request: TrainRequest) -> int:
    """``rnn-jax train --seeds S,S,...``: one member per seed, trained together
    (``rnn_jax.sweep``), each in its own subfolder, the parent folder holding
    ``sweep.json`` and the mean and min-max band of the members' curves."""
    if request.resume is not None:
        raise ValueError(
            "--seeds starts a new sweep; continue one member with --resume RUN/member-..."
        )
    fields = run.resolve_configs(request)
    if fields.train.get("init_from") is not None:
        raise ValueError(f"--seeds starts members from their seeds, not {transfer.FLAG}")
    cell = fields.model.get("cell", "rnn")
    run_dir = request.out or Path("runs") / f"{cell}-seeds-{time.strftime('%Y%m%d-%H%M%S')}"
    run_folder.check_outside_runs(run_dir)
    signals = Signals()
    signals.training = True  # a sweep is not resumable: a signal stops it (KeyboardInterrupt)
    run_config = RunConfig(**fields.run)
    run.compile_through_cache(request, run_config)
    prepared = run.prepare_new(fields, run_config, run_dir, signals)
    train_config, dataset = prepared.train_config, prepared.dataset
    members = sweep.grid(prepared.model_config, train_config, seeds=request.seeds)
    sweep.validate_members(members)
    mode = request.sweep_mode or default_sweep_mode()
    created = run_folder.make_folder(run_dir)
    lock = RunLock(run_dir)
    try:
        lock.acquire()
        if {p.name for p in run_dir.iterdir()} - {run_folder.LOCK}:
            raise ValueError(f"--out {run_dir} is not empty; choose a new --out for a sweep")
        lock.claim()
        request.echo(input_pipeline.describe_data(train_config, dataset))
        request.echo(
            f"{len(members)} members (seeds {', '.join(map(str, request.seeds or ()))}), {mode}"
        )
        results = sweep.fit_sweep(members, dataset, out_dir=run_dir, mode=mode, echo=request.echo)
    except BaseException:
        if created and not _member_checkpoints(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        lock.release()
    _report_seeds(request.echo, results, run_dir)
    return 0


def _member_checkpoints(run_dir: Path) -> list[int]:
    """The finished checkpoints of every member folder below ``run_dir``."""
    return [s for sub in run_dir.glob("member-*") for s in checkpoint.finished_steps(sub)]


def _report_seeds(
    echo: Callable[[str], None], results: list[sweep.MemberResult], run_dir: Path
) -> None:
    finals = [r.history[-1] for r in results if r.history and not r.diverged]
    for key, name in (("train_ppl", "perplexity"), ("val_ppl", "validation perplexity")):
        values = [f[key] for f in finals if f.get(key) is not None]
        if len(values) >= 2:
            echo(
                f"{name}: mean {statistics.mean(values):.3f}, std {statistics.stdev(values):.3f}, "
                f"min {min(values):.3f}, max {max(values):.3f} over {len(values)} members"
            )
    diverged = sum(r.diverged for r in results)
    echo(f"done: {len(results)} members ({diverged} diverged); run folder {run_dir}")
