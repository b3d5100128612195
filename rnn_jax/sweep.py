"""Seed and hyperparameter sweeps as one program: M members, one vmapped and jitted step.

Shape legend: M members, K minibatches per epoch, B batch, T num_steps, H num_hiddens.

A sweep is a list of ``Member``s, ``(ModelConfig, TrainConfig)`` pairs that share every
shape and differ only in ``seed``, ``lr``, ``theta`` (clipping) and the model's ``sigma``
(init scale). ``fit_sweep`` trains them together: their ``TrainState``s are stacked along
a leading member axis and ``rnn_jax.step.train_step`` runs under ``jax.vmap`` on
minibatches ``(M, B, T)``, each member's drawn from its own ``(seed, epoch)``, in the
loop every run uses (``loop.train_loop`` over ``SweepSteps``, with its own actions). The
learning rate and clipping threshold live in each member's optimizer state
(``optax.inject_hyperparams``), so one compiled step serves every member, and each
member's gradient is clipped by its own global norm. ``mode="loop"`` trains the same
members one after another through ``rnn_jax.loop.fit``, the reference the tests hold the
vmapped sweep to.

A member whose training perplexity becomes non-finite (``loop.fit`` would raise
``NonFiniteLossError``) is marked diverged and keeps running on its NaNs: members share
no arithmetic, so it cannot disturb the others; its records say ``diverged`` with
``train_ppl`` and ``val_ppl`` infinite, and it gets no checkpoint.

Each member's final checkpoint holds its state as its solo run would (``solo_state``:
``step.make_optimizer``'s optimizer state, exact because clipping and plain SGD keep no
state beyond their hyperparameters), so ``rnn-jax sample --checkpoint`` and resuming
treat a member folder like any run folder.

The run folder::

    out_dir/sweep.json              members, groups, final figures
    out_dir/perplexity.png          mean and min-max band per group (members differing only in seed)
    out_dir/member-<i>-seed<s>/     config.json, metrics.jsonl, checkpoints/ (and loop.fit's
                                    perplexity.png in loop mode)
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnn_jax import checkpoint, input_pipeline, loop, model, report, run_folder, step
from rnn_jax.actions import Action, At, Evaluate, Every, NonFiniteLossError, RecordPoint
from rnn_jax.config import ModelConfig, RunConfig, TrainConfig
from rnn_jax.input_pipeline import Dataset
from rnn_jax.loop import train_loop
from rnn_jax.step import Batch, Metrics, TrainState

SWEEP_JSON = "sweep.json"
SWEPT_MODEL = ("sigma",)  # the ModelConfig fields members may differ in
SWEPT_TRAIN = ("seed", "lr", "theta")  # the TrainConfig fields members may differ in
HYPERPARAMETERS = ("lr", "theta", "sigma")  # what tells groups apart (seeds repeat a group)


@dataclass(frozen=True)
class Member:
    """One run of a sweep: what its solo ``loop.fit`` would be given."""

    model_config: ModelConfig
    config: TrainConfig

    @property
    def hyperparameters(self) -> dict[str, float]:
        return {
            "lr": self.config.lr,
            "theta": self.config.theta,
            "sigma": self.model_config.sigma,
        }


@dataclass
class MemberResult:
    """One member's outcome, as ``loop.fit``'s ``FitResult`` says it for a solo run."""

    member: Member
    state: TrainState | None  # the solo run's state (``step.make_optimizer``'s opt state)
    history: list[dict[str, Any]]  # one record per epoch, ``loop.fit``'s plus two fields
    compile_s: float
    diverged: bool
    run_dir: Path | None


class StepFn(Protocol):
    """A pure train step with ``rnn_jax.step.train_step``'s signature."""

    def __call__(
        self,
        state: TrainState,
        batch: Batch,
        *,
        model_config: ModelConfig,
        optimizer: optax.GradientTransformation,
        carry_hidden: bool,
    ) -> tuple[TrainState, Metrics]: ...


# --------------------------------------------------------------------------- members


def grid(
    model_config: ModelConfig,
    config: TrainConfig,
    *,
    seeds: Sequence[int] = (0,),
    lrs: Sequence[float] | None = None,
    thetas: Sequence[float] | None = None,
    sigmas: Sequence[float] | None = None,
) -> list[Member]:
    """Every combination of the given values (``None``: the configs' own), seeds innermost."""
    members = []
    for sigma in sigmas or (model_config.sigma,):
        for lr in lrs or (config.lr,):
            for theta in thetas or (config.theta,):
                for seed in seeds:
                    members.append(
                        Member(
                            dataclasses.replace(model_config, sigma=sigma),
                            dataclasses.replace(config, seed=seed, lr=lr, theta=theta),
                        )
                    )
    return members


def validate_members(members: Sequence[Member]) -> None:
    """Refuse an empty sweep, members that differ in anything but the swept fields, and
    optimizers ``member_optimizer`` does not build (one-line ``ValueError``s)."""
    if not members:
        raise ValueError("a sweep needs at least one member")
    first = members[0]
    for i, member in enumerate(members[1:], start=1):
        for what, a, b, swept in (
            ("model", first.model_config, member.model_config, SWEPT_MODEL),
            ("train", first.config, member.config, SWEPT_TRAIN),
        ):
            for f in dataclasses.fields(a):
                if f.name not in swept and getattr(a, f.name) != getattr(b, f.name):
                    raise ValueError(
                        f"sweep members must share {what} field {f.name!r}: member 0 has "
                        f"{getattr(a, f.name)!r}, member {i} has {getattr(b, f.name)!r}"
                    )
    config = first.config
    if (config.optimizer, config.schedule) != ("sgd", "constant"):
        raise ValueError(
            f"sweeps train with the book's SGD at a constant rate, not optimizer "
            f"{config.optimizer!r} with schedule {config.schedule!r}"
        )
    if config.max_steps is not None:
        raise ValueError("sweeps run whole epochs: max_steps must be None")


def member_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The book's update (clip to global norm ``theta``, then SGD at ``lr``) with both
    hyperparameters held as arrays in the optimizer state, so that members with different
    values share one pytree structure and one compiled step."""
    return optax.chain(
        optax.inject_hyperparams(optax.clip_by_global_norm)(max_norm=config.theta),
        optax.inject_hyperparams(optax.sgd)(learning_rate=config.lr),
    )


def stack(trees: Sequence[Any]) -> Any:
    """Stack pytrees of equal structure along a new leading (member) axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree: Any, i: int) -> Any:
    """Member ``i`` of a stacked pytree."""
    return jax.tree.map(lambda leaf: leaf[i], tree)


def init_sweep_state(members: Sequence[Member]) -> TrainState:
    """The members' fresh ``TrainState``s (each from its own seed, as ``loop.fit`` makes
    it) stacked along M."""
    return stack(
        [
            step.init_train_state(
                m.model_config,
                member_optimizer(m.config),
                m.config.batch_size,
                jax.random.key(m.config.seed),
            )
            for m in members
        ]
    )


def solo_state(state: TrainState, config: TrainConfig) -> TrainState:
    """A member's state with ``step.make_optimizer``'s optimizer state, as its solo run
    would hold it. Exact for the book's update: clipping and plain SGD keep no state beyond
    the hyperparameters, which the config records."""
    return state.replace(opt_state=step.make_optimizer(config).init(state.params))


# --------------------------------------------------------------------------- the step


def sweep_step(
    state: TrainState,
    batch: Batch,
    *,
    model_config: ModelConfig,
    optimizer: optax.GradientTransformation,
    carry_hidden: bool,
    train_step: StepFn = step.train_step,
) -> tuple[TrainState, Metrics]:
    """``train_step`` vmapped over members: ``state`` stacked along M, ``batch`` ``(M, B, T)``.

    ``optimizer`` is any member's ``member_optimizer``: its updates read each member's
    ``lr`` and ``theta`` from that member's optimizer state. Metrics are ``(M,)``, with
    ``clipped``: whether the member's gradient norm exceeded its ``theta``.
    """

    def one(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        new_state, metrics = train_step(
            state, batch, model_config=model_config, optimizer=optimizer, carry_hidden=carry_hidden
        )
        theta = state.opt_state[0].hyperparams["max_norm"]
        return new_state, {**metrics, "clipped": metrics["grad_norm"] > theta}

    return jax.vmap(one)(state, batch)


def make_sweep_step(
    model_config: ModelConfig,
    optimizer: optax.GradientTransformation,
    carry_hidden: bool,
    train_step: StepFn = step.train_step,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """``sweep_step`` with its configuration bound, jitted with the state donated."""

    def bound(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        return sweep_step(
            state,
            batch,
            model_config=model_config,
            optimizer=optimizer,
            carry_hidden=carry_hidden,
            train_step=train_step,
        )

    return jax.jit(bound, donate_argnums=0)


def make_sweep_evaluate(model_config: ModelConfig) -> Callable[..., Any]:
    """``step.evaluate`` vmapped over stacked params: ``(params, Xs, Ys) -> ((M,), (M,))``,
    every member scored on the same validation minibatches ``(K, B, T)``."""
    return jax.jit(
        jax.vmap(lambda p, Xs, Ys: step.evaluate(model_config, p, Xs, Ys), in_axes=(0, None, None))
    )


# --------------------------------------------------------------------------- the loop


def fit_sweep(
    members: Sequence[Member],
    dataset: Dataset,
    *,
    out_dir: Path | None = None,
    mode: str = "vmap",
    echo: Callable[[str], None] = print,
    train_step: StepFn = step.train_step,
) -> list[MemberResult]:
    """Train every member for ``num_epochs``: all at once (``"vmap"``) or one after another
    through ``loop.fit`` (``"loop"``, the reference; it cannot measure ``clipped_fraction``
    and records ``None``). ``train_step`` replaces the step's pure function (vmap only).

    Each record is ``loop.fit``'s (epoch, step, train_ppl, val_ppl, tokens_per_s,
    grad_norm, wall_s; tokens/s counts the member's own tokens) plus ``clipped_fraction``
    (the fraction of the epoch's steps whose gradient norm exceeded ``theta``) and
    ``diverged``.
    """
    members = list(members)
    validate_members(members)
    if members[0].model_config.vocab_size != dataset.vocab_size:
        raise ValueError(
            f"model vocab_size {members[0].model_config.vocab_size} != dataset vocab size "
            f"{dataset.vocab_size}"
        )
    if mode not in ("vmap", "loop"):
        raise ValueError(f"mode must be 'vmap' or 'loop', got {mode!r}")
    if mode == "loop" and train_step is not step.train_step:
        raise ValueError("mode 'loop' runs loop.fit, whose step cannot be replaced")
    dirs = [
        None if out_dir is None else Path(out_dir) / member_folder(i, m)
        for i, m in enumerate(members)
    ]
    started = time.perf_counter()
    if mode == "vmap":
        results = _fit_vmap(members, dataset, dirs, echo, train_step)
    else:
        results = [_fit_solo(m, dataset, d, echo) for m, d in zip(members, dirs, strict=True)]
    wall_s = time.perf_counter() - started
    if out_dir is not None:
        for result in results:
            _save_checkpoint(result, dataset)
        write_summary(Path(out_dir), results, mode=mode, wall_s=wall_s)
        plot_groups(results, Path(out_dir) / run_folder.PLOT)
    return results


def member_folder(i: int, member: Member) -> str:
    return f"member-{i}-seed{member.config.seed}"


def member_title(member: Member) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in member.hyperparameters.items())


class SweepSteps:
    """The members' steps as one (``loop.Steps``): ``sweep_step`` compiled ahead of the
    loop, each epoch's minibatches ``(K, M, B, T)`` materialised when it begins."""

    def __init__(
        self, members: list[Member], dataset: Dataset, state: TrainState, train_step: StepFn
    ) -> None:
        first = members[0]
        self.members, self.dataset = members, dataset
        self.model_config, config = first.model_config, first.config
        self.steps_per_epoch = input_pipeline.steps_per_epoch(config, dataset)
        self.tokens_per_batch = config.batch_size * config.num_steps
        step_fn = make_sweep_step(
            self.model_config,
            member_optimizer(config),
            config.partition == "sequential",
            train_step=train_step,
        )
        self.Xs, self.Ys = _sweep_batches(members, dataset, 0)
        started = time.perf_counter()
        self.step = step_fn.lower(state, (self.Xs[0], self.Ys[0])).compile()
        self.compile_s = time.perf_counter() - started

    def begin_epoch(self, state: TrainState, epoch: int, fresh: bool) -> TrainState:
        if epoch > 0:
            self.Xs, self.Ys = _sweep_batches(self.members, self.dataset, epoch)
        if not fresh:
            return state
        B, M = self.members[0].config.batch_size, len(self.members)
        return state.replace(hidden=stack([model.zero_state(self.model_config, B)] * M))

    def __call__(self, state: TrainState, k: int) -> tuple[TrainState, Metrics]:
        return self.step(state, (self.Xs[k], self.Ys[k]))

    def learning_rates(self, state: TrainState) -> None:
        return None  # each member's is its config's, in sweep.json


class MarkDiverged(Action):
    """A member whose training perplexity became non-finite is marked ``diverged`` from
    then on, its perplexities infinite; it runs on, disturbing no other member."""

    def __init__(self, num_members: int) -> None:
        self.diverged = np.zeros(num_members, bool)

    def __call__(self, state: TrainState, point: RecordPoint) -> None:
        for i, record in enumerate(point.records):
            self.diverged[i] |= not math.isfinite(record["train_ppl"])
            if self.diverged[i]:
                record["train_ppl"] = math.inf
                if record["val_ppl"] is not None:
                    record["val_ppl"] = math.inf
            record["diverged"] = bool(self.diverged[i])


class MemberRecords(Action):
    """Each member's records: its folder's ``config.json`` at the start and a line of its
    ``metrics.jsonl`` at each record; all members' perplexities as a line of text."""

    def __init__(
        self, members: list[Member], dirs: list[Path | None], echo: Callable[[str], None]
    ) -> None:
        self.members, self.dirs, self.echo = members, dirs, echo

    def start(self, state: TrainState) -> None:
        for m, d in zip(self.members, self.dirs, strict=True):
            if d is not None:
                d.mkdir(parents=True, exist_ok=True)
                (d / run_folder.METRICS).unlink(missing_ok=True)
                run_folder.write_config(d, m.model_config, m.config, RunConfig())

    def __call__(self, state: TrainState, point: RecordPoint) -> None:
        for d, record in zip(self.dirs, point.records, strict=True):
            if d is not None:
                report.append_jsonl(d / run_folder.METRICS, record)
        num_epochs = self.members[0].config.num_epochs
        self.echo(
            _format_epoch(point.at.epoch, num_epochs, point.records, point.records[0]["wall_s"])
        )


def _fit_vmap(
    members: list[Member],
    dataset: Dataset,
    dirs: list[Path | None],
    echo: Callable[[str], None],
    train_step: StepFn,
) -> list[MemberResult]:
    model_config, config = members[0].model_config, members[0].config
    state = init_sweep_state(members)
    steps = SweepSteps(members, dataset, state, train_step)
    val_batches = loop.validation_batches(config, dataset)  # as loop.fit validates
    char = dataset.token == "char"
    evaluate = Evaluate(
        Every(epochs=config.eval_every), make_sweep_evaluate(model_config), val_batches, char
    )
    diverged = MarkDiverged(len(members))
    total = config.num_epochs * steps.steps_per_epoch
    actions = [evaluate, diverged, MemberRecords(members, dirs, echo)]
    state, points, _ = train_loop(
        steps, state, actions, total=total, num_epochs=config.num_epochs, char=char
    )
    jax.block_until_ready(state)
    return [
        MemberResult(
            member=m,
            state=None if diverged.diverged[i] else solo_state(unstack(state, i), m.config),
            history=[point.records[i] for point in points],
            compile_s=steps.compile_s,
            diverged=bool(diverged.diverged[i]),
            run_dir=dirs[i],
        )
        for i, m in enumerate(members)
    ]


def _sweep_batches(
    members: list[Member], dataset: Dataset, epoch: int
) -> tuple[np.ndarray, np.ndarray]:
    """The members' minibatches of ``epoch`` as ``(K, M, B, T)``: each member's from its own
    ``(seed, epoch)`` (members sharing a seed share them)."""
    by_seed = {}
    for m in members:
        if m.config.seed not in by_seed:
            by_seed[m.config.seed] = input_pipeline.train_plan(
                dataset, m.config, epoch
            ).materialise()
    Xs = np.stack([by_seed[m.config.seed][0] for m in members], axis=1)
    Ys = np.stack([by_seed[m.config.seed][1] for m in members], axis=1)
    return Xs, Ys


class EpochRecords(Action):
    """A member's epoch records as a sweep reports them (loop mode)."""

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []

    def __call__(self, state: TrainState, point: RecordPoint) -> None:
        if point.at.epoch_end:
            self.history.append({**point.record, "clipped_fraction": None, "diverged": False})


def _fit_solo(
    member: Member, dataset: Dataset, run_dir: Path | None, echo: Callable[[str], None]
) -> MemberResult:
    """``member`` trained alone by ``loop.fit``; a ``NonFiniteLossError`` marks it diverged
    and fills its remaining epochs with infinite perplexities."""
    config = member.config
    if run_dir is not None:
        (run_dir / run_folder.METRICS).unlink(missing_ok=True)
    epochs = EpochRecords()
    history = epochs.history
    try:
        result = loop.fit(
            member.model_config,
            config,
            dataset,
            out_dir=run_dir,
            actions=[epochs],
            echo=echo,
            progress=False,
        )
    except NonFiniteLossError as err:
        echo(f"{member_title(member)}, seed {config.seed}: diverged ({err})")
        K = input_pipeline.steps_per_epoch(config, dataset)
        every = Every(epochs=config.eval_every)
        for epoch in range(len(history), config.num_epochs):
            at = At((epoch + 1) * K, K, config.num_epochs * K, config.num_epochs)
            record = {
                "epoch": epoch + 1,
                "step": (epoch + 1) * K,
                "train_ppl": math.inf,
                "val_ppl": math.inf if every(at) else None,
                "tokens_per_s": None,
                "grad_norm": None,
                "wall_s": None,
                "clipped_fraction": None,
                "diverged": True,
            }
            history.append(record)
            if run_dir is not None:
                report.append_jsonl(run_dir / run_folder.METRICS, record)
        return MemberResult(member, None, history, math.nan, True, run_dir)
    return MemberResult(member, result.state, history, result.compile_s, False, run_dir)


def _format_epoch(epoch: int, num_epochs: int, records: list[dict[str, Any]], wall_s: float) -> str:
    ppls = " ".join("div" if r["diverged"] else f"{r['train_ppl']:.2f}" for r in records)
    return f"epoch {epoch + 1}/{num_epochs} ({wall_s:.2f} s): train ppl {ppls}"


# --------------------------------------------------------------------------- outputs


def _save_checkpoint(result: MemberResult, dataset: Dataset) -> None:
    """The member's final checkpoint, so ``rnn-jax sample --checkpoint <member folder>``
    works; diverged members get none."""
    if result.state is None or result.run_dir is None:
        return
    last = result.history[-1]
    val = last["val_ppl"]
    manager = checkpoint.open_manager(result.run_dir, checkpoint.CheckpointConfig())
    try:
        checkpoint.save(
            manager,
            result.state,
            epoch=last["epoch"],
            model_config=result.member.model_config,
            train_config=result.member.config,
            vocab=dataset.vocab,
            metrics={"val_ppl": val} if val is not None and math.isfinite(val) else None,
        )
    finally:
        checkpoint.close(manager)


def groups(results: Sequence[MemberResult]) -> dict[tuple[float, ...], list[MemberResult]]:
    """Members by ``(lr, theta, sigma)``: each group differs only in seed."""
    out: dict[tuple[float, ...], list[MemberResult]] = {}
    for r in results:
        out.setdefault(tuple(r.member.hyperparameters.values()), []).append(r)
    return out


def swept(results: Sequence[MemberResult]) -> list[str]:
    """The hyperparameters that take more than one value across the members."""
    return [
        name
        for name in HYPERPARAMETERS
        if len({r.member.hyperparameters[name] for r in results}) > 1
    ]


def group_label(key: tuple[float, ...], names: Sequence[str]) -> str:
    values = dict(zip(HYPERPARAMETERS, key, strict=True))
    return ", ".join(f"{n} {values[n]:g}" for n in names) or "all members"


def curves(group: Sequence[MemberResult], field: str) -> tuple[np.ndarray, np.ndarray]:
    """``(epochs, values (members, epochs))`` of ``field``, NaN where not measured or diverged."""
    epochs = np.array([r["epoch"] for r in group[0].history])
    values = np.array(
        [
            [
                np.nan if r[field] is None or not math.isfinite(r[field]) else r[field]
                for r in g.history
            ]
            for g in group
        ],
        dtype=float,
    )
    return epochs, values


def plot_groups(
    results: Sequence[MemberResult],
    path: Path,
    title: str = "",
    labels: dict[tuple[float, ...], str] | None = None,
    cap: float = 1e6,
) -> None:
    """Train (solid) and validation (dashed) perplexity per epoch: per group the mean over
    its finite members and the min-max band, log-scaled like the book's. ``labels`` names
    groups by their ``(lr, theta, sigma)`` (default: the swept values); perplexities above
    ``cap`` are left out like diverged ones (a log axis cannot span 1e200)."""
    plt = report.pyplot()
    names = swept(results)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (key, group) in enumerate(groups(results).items()):
        color = colors[n % len(colors)]
        lost = sum(r.diverged for r in group)
        label = (labels or {}).get(key) or group_label(key, names)
        label += f" ({lost}/{len(group)} diverged)" if lost else ""
        for field, style, suffix in (("train_ppl", "-", " train"), ("val_ppl", "--", " val")):
            epochs, values = curves(group, field)
            measured = np.array(
                [any(g.history[e][field] is not None for g in group) for e in range(len(epochs))]
            )
            if not measured.any():
                continue
            values[values > cap] = np.nan  # breaks the line: those epochs are not skipped
            v = values[:, measured]
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN epochs stay NaN
                mean, low, high = np.nanmean(v, 0), np.nanmin(v, 0), np.nanmax(v, 0)
            ax.plot(epochs[measured], mean, style, color=color, label=label + suffix)
            ax.fill_between(epochs[measured], low, high, color=color, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    ax.set_title(title or f"{len(results)} members: mean and min-max band per group", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_summary(
    out_dir: Path, results: Sequence[MemberResult], *, mode: str, wall_s: float
) -> None:
    """``sweep.json``: each member's folder, hyperparameters and final figures, and per
    group the mean and spread of the final perplexities over its finite members."""
    out_dir.mkdir(parents=True, exist_ok=True)

    def finals(r: MemberResult) -> dict[str, Any]:
        last = r.history[-1] if r.history else {}
        fractions = [h["clipped_fraction"] for h in r.history if h["clipped_fraction"] is not None]
        return {
            "final_train_ppl": last.get("train_ppl"),
            "final_val_ppl": last.get("val_ppl"),
            "clipped_fraction": float(np.mean(fractions)) if fractions else None,
            "diverged": r.diverged,
            "diverged_epoch": next((h["epoch"] for h in r.history if h["diverged"]), None),
        }

    payload = {
        "mode": mode,
        "wall_s": wall_s,
        "swept": swept(results),
        "members": [
            {
                "index": i,
                "folder": None if r.run_dir is None else r.run_dir.name,
                "seed": r.member.config.seed,
                **r.member.hyperparameters,
                **finals(r),
            }
            for i, r in enumerate(results)
        ],
        "groups": [group_summary(key, group) for key, group in groups(results).items()],
    }
    (out_dir / SWEEP_JSON).write_text(json.dumps(payload, indent=2) + "\n", "utf-8")


def group_summary(key: tuple[float, ...], group: Sequence[MemberResult]) -> dict[str, Any]:
    """Final train/validation perplexity mean and std over the group's finite members,
    the mean fraction of steps clipped, and how many members diverged."""
    out: dict[str, Any] = dict(zip(HYPERPARAMETERS, key, strict=True))
    out["seeds"] = [r.member.config.seed for r in group]
    for field in ("train_ppl", "val_ppl"):
        _, values = curves(group, field)
        last = values[:, -1][~np.isnan(values[:, -1])]
        with np.errstate(over="ignore"):  # a run blowing up (1e300) without overflowing
            out[f"{field}_mean"] = float(last.mean()) if last.size else None
            out[f"{field}_std"] = float(last.std()) if last.size else None
    fractions = [
        h["clipped_fraction"] for r in group for h in r.history if h["clipped_fraction"] is not None
    ]
    out["clipped_fraction"] = float(np.mean(fractions)) if fractions else None
    out["diverged"] = sum(r.diverged for r in group)
    return out
