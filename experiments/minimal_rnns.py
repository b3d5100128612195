"""The book's cells against the recurrences that train in parallel over time (issue 18):
RNN, GRU, LSTM, minGRU, minLSTM and LRU at the same parameter count and wall budget.

    nice -n 5 .venv/bin/python experiments/minimal_rnns.py --out runs/minimal_rnns

The raw Time Machine (every character as in the file, 71 tokens; the last 10% held out),
sequential minibatches of 32 x 64, Adam after clipping the gradient to global norm 1,
PyTorch's initial scale (``init="uniform"``; the LRU has its own ring initialisation).
Every model has about 300,000 parameters: the hidden size H of each is solved for with
``model.num_params``. The book's cells have one layer; minGRU, minLSTM and the LRU are
stacked two deep, as their papers stack them (each layer is linear in its state over
time, so depth is where their nonlinearity between time steps comes from; between the
layers sits nothing, where the papers put a residual block with a norm and an MLP).
The linear cells run their ``lax.scan`` (``--scan sequential``), the faster of the two
scans on this CPU at T 64 (``benchmarks/scan_modes.py``).

**The same wall budget, fairly on a shared machine.** A budget in seconds of wall time
would give each run whatever share of the two cores the other jobs left it at that
moment, and the models do not slow down alike under load: in three calibrations of wall
time with XLA's default threads here, the GRU took 2.4x, 3.2x and 5.4x fewer seconds per
step than the minGRU at load averages of about 3, 8 and 9 (many small elementwise
operations in a loop wait on busy threads more than a few large matmuls). So the
budget is a number of steps per model, from one core's CPU time: a child process pinned
to one core with XLA's one-thread flags (``calibrate_pinned``) compiles every model's
train step and times each for ``--calibrate`` seconds of its CPU time, the models back
to back in an order rotated by one per round, ``--rounds`` times; a model's steps/s is
the median of its rounds (the steps one core of its own would take), and its budget is
``--budget`` seconds at that rate. Every run of a model then takes exactly that many
steps, whatever the load while it runs (the runs themselves use both cores), and its
curve is plotted against the seconds those steps take at the calibrated rate. Each
model trains at each Adam learning rate of ``LRS`` (seed 0); the best validation bits
per character in the budget picks its rate (the final value is worse where a fast model
overfits the 161,070 training characters), at which seeds 1 and 2 train too.
Validation (the whole held-out split) runs every ``E`` steps, ``E`` the same for every
model (the smallest budget / ``--evals``), so that all models are also measured at the
same step counts. A persistent compilation cache (a temporary folder) lets all the
runs of a model share its one compiled step: learning rate and seed are arrays in the
train state, not constants of the program.

Writes to ``--out``: ``minimal_rnns.md`` (the tables below), ``minimal_rnns.json``
(calibration, every run's curve), ``minimal_rnns.png`` (validation bits per character
against budget seconds and against steps: mean and min-max band of the 3 seeds).

Measured on 2026-12-02 with the command above (17 minutes; the 2-core AMD EPYC VM
shared with other agents, load average 4-6; the calibration rounds agreed within 10%):

    | model   | layers | H   | steps/s | steps | lr    | best val bpc  | final val bpc | step 224 |
    |---------|--------|-----|---------|-------|-------|---------------|---------------|----------|
    | rnn     | 1      | 481 | 40.8    | 817   | 0.003 | 2.613 ± 0.025 | 2.617 ± 0.030 | 3.187    |
    | gru     | 1      | 272 | 43.2    | 863   | 0.01  | 2.300 ± 0.007 | 2.347 ± 0.016 | 2.492    |
    | lstm    | 1      | 233 | 39.1    | 781   | 0.03  | 2.287 ± 0.007 | 2.291 ± 0.005 | 2.483    |
    | mingru  | 2      | 337 | 13.0    | 259   | 0.01  | 3.146 ± 0.008 | 3.146 ± 0.008 | 3.198    |
    | minlstm | 2      | 272 | 11.3    | 225   | 0.01  | 3.141 ± 0.010 | 3.147 ± 0.014 | 3.144    |
    | lru     | 2      | 187 | 16.2    | 325   | 0.01  | 2.470 ± 0.008 | 2.496 ± 0.012 | 2.537    |

Every model has 300,087 to 300,903 parameters; steps/s is the calibration's (one core),
steps the budget's; bits per character are the mean ± std of seeds 0-2 (at step 224, the
mean; ``minimal_rnns.md`` has the spreads).

Seed 0's best validation bits per character at each rate (0.003 / 0.01 / 0.03): rnn
2.647 / 4.519 / 4.981, gru 2.359 / 2.305 / 4.253, lstm 2.578 / 2.336 / 2.296, mingru
3.339 / 3.134 / 3.969, minlstm 3.400 / 3.128 / 3.499, lru 2.628 / 2.464 / 2.517. The
LSTM's best is the grid's edge: at 0.1 (``--models lstm --lrs 0.1 --seeds 1
--calibration runs/minimal_rnns/minimal_rnns.json``) it reached 2.842. A pilot with the
grid 0.001 / 0.003 / 0.01 and a wall-clock calibration put every gated cell at its top
and the RNN at 0.003; its validation at step 224 for the rates both runs share equals
this run's to the last digit (a run's first steps do not depend on its budget).

Per step, the LRU nearly learns as well as the GRU (2.54 against 2.49 at step 224, and
ahead of the GRU and the LSTM up to step 168); the min-cells do not (3.20 and 3.14, the
plain RNN's 3.19). Per second, none does: a step of the parallel cells takes 2.7-3.8x a
GRU step on this CPU, and at the end of the budget the GRU and the LSTM are at 2.30 and
2.29, the LRU at 2.47, the min-cells at 3.14-3.15, behind the RNN's 2.61.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib import ticker

from rnn_jax import input_pipeline, loop, model, step
from rnn_jax.actions import NonFiniteLossError
from rnn_jax.config import LINEAR_CELLS, SCANS, ModelConfig, TrainConfig
from rnn_jax.input_pipeline import Dataset

MODELS = {  # name -> (cell, num_layers)
    "rnn": ("rnn", 1),
    "gru": ("gru", 1),
    "lstm": ("lstm", 1),
    "mingru": ("mingru", 2),
    "minlstm": ("minlstm", 2),
    "lru": ("lru", 2),
}
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"  # as bench.py
LRS = (3e-3, 1e-2, 3e-2)  # Adam's: a pilot at 1e-3, 3e-3, 1e-2 put every gated cell at its top


def num_params(config: ModelConfig) -> int:
    """``model.num_params`` of the model ``config`` describes, from shapes alone."""
    return model.num_params(
        jax.eval_shape(functools.partial(model.init, config), jax.random.key(0))
    )


def hiddens_for(cell: str, num_layers: int, vocab_size: int, target: int) -> int:
    """The H whose model has the parameter count nearest ``target`` (it grows with H)."""

    def count(H: int) -> int:
        return num_params(ModelConfig(vocab_size, H, cell=cell, num_layers=num_layers))

    low, high = 1, 1
    while count(high) < target:
        low, high = high, 2 * high
    while high - low > 1:  # count(low) < target <= count(high)
        middle = (low + high) // 2
        low, high = (middle, high) if count(middle) < target else (low, middle)
    return min((low, high), key=lambda H: abs(count(H) - target))


def calibrate(
    model_configs: dict[str, ModelConfig],
    config: TrainConfig,
    dataset: Dataset,
    rounds: int,
    seconds: float,
) -> dict[str, list[float]]:
    """Steps per CPU second of each model's compiled train step: ``rounds`` rounds, each
    timing every model for ``seconds`` of this process's CPU time, in an order rotated by
    one per round (``calibrate_pinned`` runs it on one core with one thread)."""
    optimizer = step.make_optimizer(config)
    batches = input_pipeline.train_plan(dataset, config, 0)
    runs = {}
    for name, model_config in model_configs.items():
        state = step.init_train_state(model_config, optimizer, config.batch_size, jax.random.key(0))
        train_step = step.make_train_step(model_config, optimizer, carry_hidden=True)
        runs[name] = [train_step.lower(state, batches[0]).compile(), state]
        runs[name][1], _ = runs[name][0](state, batches[0])  # warm
    rates: dict[str, list[float]] = {name: [] for name in model_configs}
    names = list(model_configs)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            compiled, state = runs[name]
            n, started = 0, time.process_time()
            while time.process_time() - started < seconds:
                state, metrics = compiled(state, batches[n % len(batches)])
                jax.block_until_ready(metrics["loss"])
                n += 1
            rates[name].append(n / (time.process_time() - started))
            runs[name][1] = state
    return rates


def calibrate_pinned(argv: list[str]) -> dict[str, list[float]]:
    """``calibrate`` in a child process pinned to one core with XLA's one-thread flags (set
    before JAX starts): there CPU seconds are the seconds each step takes on a core of its
    own, whatever else the machine runs."""
    cpu = min(os.sched_getaffinity(0))
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {XLA_ONE_THREAD}"}
    cmd = ["taskset", "-c", str(cpu), sys.executable, __file__, *argv, "--calibrate-worker"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"calibration failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def train(model_config: ModelConfig, config: TrainConfig, dataset: Dataset) -> dict:
    """One run of ``loop.fit``: its validation curve (steps, bits per character, seconds
    of training measured while it ran) and tokens/s, or ``diverged``."""
    try:
        result = loop.fit(model_config, config, dataset, echo=lambda _: None, progress=False)
    except NonFiniteLossError as err:
        return {"lr": config.lr, "seed": config.seed, "diverged": str(err)}
    steps, bpc, measured, elapsed = [], [], [], 0.0
    for record in result.history:
        elapsed += record["wall_s"]
        if record.get("val_bpc") is not None:
            steps.append(record["step"])
            bpc.append(record["val_bpc"])
            measured.append(elapsed)
    return {
        "lr": config.lr,
        "seed": config.seed,
        "steps": steps,
        "val_bpc": bpc,
        "measured_s": measured,
        "tokens_per_s": config.batch_size * config.num_steps * steps[-1] / elapsed,
    }


def best_bpc(run: dict) -> float:
    """The best validation bits per character in the budget (what ``--step best`` keeps:
    a model that sees the data many times overfits it); infinite for a diverged run."""
    return math.inf if "diverged" in run else min(run["val_bpc"])


def final_bpc(run: dict) -> float:
    return math.inf if "diverged" in run else run["val_bpc"][-1]


def spread(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    lost = len(values) - len(finite)
    text = f"{np.mean(finite):.3f} ± {np.std(finite):.3f}" if finite else "-"
    return text + (f" ({lost} diverged)" if lost else "")


def at_step(run: dict, s: int) -> float:
    return math.inf if "diverged" in run else run["val_bpc"][run["steps"].index(s)]


def tables(rows: list[dict], common_step: int, budget: float) -> str:
    """The result per model (its best rate's seeds) and the learning-rate grid (seed 0)."""
    lines = [
        f"| model | layers | H | params | steps/s, 1 core | tokens/s | steps in {budget:g} s "
        "| best lr "
        f"| best val bpc, {len(rows[0]['seeds'])} seeds | final val bpc "
        f"| val bpc at step {common_step} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        figures = [[f(run) for run in r["seeds"]] for f in (best_bpc, final_bpc)]
        figures.append([at_step(run, common_step) for run in r["seeds"]])
        lines.append(
            f"| {r['name']} | {r['num_layers']} | {r['num_hiddens']} | {r['params']:,} | "
            f"{r['steps_per_s']:.1f} | {r['tokens_per_s']:,.0f} | {r['budget_steps']:,} | "
            f"{r['lr']:g} | " + " | ".join(spread(values) for values in figures) + " |"
        )
    lines += [
        "",
        "| model, best val bpc (seed 0) | "
        + " | ".join(f"lr {lr:g}" for lr in rows[0]["grid_lrs"])
        + " |",
        "|---|" + "---:|" * len(rows[0]["grid_lrs"]),
    ]
    for r in rows:
        grid = [
            f"{best_bpc(run):.3f}" if "diverged" not in run else "diverged" for run in r["grid"]
        ]
        lines.append(f"| {r['name']} | " + " | ".join(grid) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str, tokens: str) -> None:
    """Validation bits per character against budget seconds and against steps (of
    ``tokens`` each): per model the mean over its seeds and the min-max band."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=120, sharey=True)
    for r in rows:
        runs = [run for run in r["seeds"] if "diverged" not in run]
        if not runs:
            continue
        steps = np.array(runs[0]["steps"])
        values = np.array([run["val_bpc"] for run in runs])
        for ax, x in ((axes[0], steps / r["steps_per_s"]), (axes[1], steps)):
            (line,) = ax.plot(x, values.mean(0), label=f"{r['name']} (lr {r['lr']:g})")
            ax.fill_between(x, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
    axes[0].set_xlabel("seconds of one core at the calibrated steps/s")
    axes[1].set_xlabel(f"steps ({tokens} characters each)")
    axes[1].set_xscale("log")
    axes[1].xaxis.set_major_formatter(ticker.ScalarFormatter())
    axes[1].xaxis.set_minor_formatter(ticker.NullFormatter())
    axes[0].set_ylabel("validation bits per character")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/minimal_rnns"), help="folder")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of one core per run")
    parser.add_argument("--params", type=int, default=300_000, help="parameters per model")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--lrs", type=float, nargs="+", default=list(LRS), help="Adam's grid")
    parser.add_argument("--seeds", type=int, default=3, help="seeds at the best rate")
    parser.add_argument(
        "--scan", default="sequential", choices=SCANS, help="how the linear cells run over time"
    )
    parser.add_argument("--rounds", type=int, default=3, help="calibration rounds")
    parser.add_argument("--calibrate", type=float, default=2.0, help="seconds per model, round")
    parser.add_argument("--evals", type=int, default=8, help="validations in the least budget")
    parser.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="reuse the steps/s of an earlier run's minimal_rnns.json (the same budgets, so "
        "the same figures)",
    )
    parser.add_argument("--tiny", action="store_true", help="a few seconds (for the tests)")
    parser.add_argument("--calibrate-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    config = TrainConfig(
        preprocess="raw",
        max_tokens=None,
        batch_size=32,
        num_steps=64,
        optimizer="adam",
        theta=1.0,
        eval_every=0,
        sample_every=0,
    )
    if args.tiny:
        config = dataclasses.replace(config, max_tokens=3000, batch_size=4, num_steps=16)
        args.params, args.budget, args.rounds, args.calibrate, args.evals = 3000, 0.01, 1, 0.05, 2
        args.seeds = 2
    if not args.calibrate_worker:
        # Set before JAX compiles anything in this (fresh) process, or it is not used.
        cache = tempfile.TemporaryDirectory(prefix="minimal_rnns_xla_")
        jax.config.update("jax_compilation_cache_dir", cache.name)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    started = time.perf_counter()
    dataset = input_pipeline.load_dataset(config)
    V = dataset.vocab_size
    model_configs = {}
    for name in args.models:
        cell, num_layers = MODELS[name]
        model_configs[name] = ModelConfig(
            vocab_size=V,
            num_hiddens=hiddens_for(cell, num_layers, V, args.params),
            cell=cell,
            num_layers=num_layers,
            init="uniform",
            scan=args.scan if cell in LINEAR_CELLS else "sequential",
        )
    if args.calibrate_worker:
        rates = calibrate(model_configs, config, dataset, args.rounds, args.calibrate)
        print(json.dumps(rates))
        return
    print(f"{len(dataset.train):,} train / {len(dataset.val):,} validation tokens, V {V}")

    if args.calibration is None:
        rates = calibrate_pinned(sys.argv[1:])
    else:
        earlier = json.loads(args.calibration.read_text("utf-8"))["rows"]
        rates = {
            r["name"]: r["calibration_steps_per_s"] for r in earlier if r["name"] in args.models
        }
    steps_per_s = {name: statistics.median(r) for name, r in rates.items()}
    budgets = {name: max(args.evals, round(args.budget * s)) for name, s in steps_per_s.items()}
    every = max(1, min(budgets.values()) // args.evals)
    common_step = every * (min(budgets.values()) // every)
    for name, r in rates.items():
        print(f"{name}: {', '.join(f'{x:.2f}' for x in r)} steps/s -> {budgets[name]} steps")
    K = input_pipeline.steps_per_epoch(config, dataset)

    rows = []
    for name, model_config in model_configs.items():
        budgeted = dataclasses.replace(
            config,
            max_steps=budgets[name],
            num_epochs=math.ceil(budgets[name] / K),
            eval_every_steps=every,
        )
        grid = []
        for lr in args.lrs:
            grid.append(train(model_config, dataclasses.replace(budgeted, lr=lr), dataset))
            print(f"{name} lr {lr:g}: {best_bpc(grid[-1]):.3f} bpc", flush=True)
        best = min(grid, key=best_bpc)
        seeds = [best]
        for seed in range(1, args.seeds):
            seeds.append(
                train(
                    model_config, dataclasses.replace(budgeted, lr=best["lr"], seed=seed), dataset
                )
            )
            print(
                f"{name} lr {best['lr']:g} seed {seed}: {best_bpc(seeds[-1]):.3f} bpc", flush=True
            )
        rows.append(
            {
                "name": name,
                "cell": model_config.cell,
                "num_layers": model_config.num_layers,
                "num_hiddens": model_config.num_hiddens,
                "scan": model_config.scan,
                "params": num_params(model_config),
                "calibration_steps_per_s": rates[name],
                "steps_per_s": steps_per_s[name],
                "tokens_per_s": steps_per_s[name] * config.batch_size * config.num_steps,
                "budget_steps": budgets[name],
                "lr": best["lr"],
                "grid_lrs": args.lrs,
                "grid": grid,
                "seeds": seeds,
            }
        )
    wall = time.perf_counter() - started

    args.out.mkdir(parents=True, exist_ok=True)
    text = tables(rows, common_step, args.budget) + f"\n\n{wall / 60:.1f} minutes in all\n"
    (args.out / "minimal_rnns.md").write_text(text, "utf-8")
    payload = {"budget_s": args.budget, "eval_every_steps": every, "rows": rows}
    (args.out / "minimal_rnns.json").write_text(json.dumps(payload, indent=1) + "\n", "utf-8")
    title = (
        f"raw Time Machine, ~{args.params:,} parameters each, Adam, {args.budget:g} s budget: "
        f"mean and min-max of {args.seeds} seeds"
    )
    tokens = f"{config.batch_size} x {config.num_steps}"
    plot(rows, args.out / "minimal_rnns.png", title, tokens)
    print(text)


if __name__ == "__main__":
    main()
