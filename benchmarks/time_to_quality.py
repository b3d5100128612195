"""Time to quality on real text: rnn_jax against PyTorch, same model, same optimizer.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/time_to_quality.py --seconds 60
    ... --corpus FILE                        # another UTF-8 text
    ... --cpu 0,1 --threads 2 [--devices 2]  # two cores; rnn_jax on 2 CPU devices

trains an LSTM and a GRU (H 256, B 32, T 64) on the raw characters of the shipped Time
Machine (every character as in the file; the last 10% held out), with SGD (lr 1) and
Adam (lr 2e-3), both after clipping the gradient to global norm 1, from PyTorch's
initial scale (``init=uniform``: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H))), for
``--seconds`` of training each, one after the other on one core (``taskset -c 0``, one
thread): rnn_jax (``step.make_train_step``) and its peer ``torch_ttq.py`` (``nn.LSTM`` /
``nn.GRU``, ``torch.optim``) in the peers' virtualenv. Every ``--eval-every`` seconds of
training (the clock stops for validation; rnn_jax compiles before it starts) each
validates on the held-out split, in bits per character (log2 of the perplexity). It
prints, and writes to ``--out``/results.md with the curves in ``--out``/curves.jsonl, a
table: steps, tokens/s, final validation bpc, and the training time each took to reach
the target bpc (the worse of the two final values, or ``--target``), interpolated
linearly between validations, and the ratio of those times.

Both sides cycle the same minibatches (sequential partition at offset 0, the hidden
state carried across them and reset at each epoch's start) and validate on the same
tokens. The models differ where the libraries do: PyTorch's GRU applies the reset gate
after the recurrent matmul (``r * (h W_hn + b_hn)``), the book's before it
(``(r * h) W_hh``); PyTorch's cells have two biases per gate (their sum starts as a sum
of two uniforms), rnn_jax's one.

With ``--seconds 60``: about 11 minutes here (2-core VM, load average 7-12 from other
jobs, so single runs vary by up to 2x). Two runs, rnn_jax first (results/ttq) and the
peer first (``--torch-first``, results/ttq-torch-first): time to the worse final bpc,
rnn_jax / torch, LSTM sgd 1.05 and 1.13, LSTM adam 1.16 and 1.21 (rnn_jax's LSTM step
~20% slower: 9-12k against 11-15k tokens/s), GRU sgd 0.68 and 0.35, GRU adam 0.88 and
0.57 (20-24k against 10-20k tokens/s). Per step the two learn alike (LSTM adam at ~170
steps: 3.46 and 3.41 bpc).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
LEARNING_RATES = {"sgd": 1.0, "adam": 2e-3}


# ------------------------------------------------------------------ data


def write_data(path: Path, batch_size: int, num_steps: int, corpus: Path | None = None) -> int:
    """Tokenise the raw Time Machine, or ``corpus`` (one id per distinct character), hold
    out the last 10%, and write both partitions as ``(K, B, T)`` arrays to ``path`` (npz).
    Returns V."""
    from rnn_jax import data, input_pipeline  # here: the harness itself needs no JAX

    text = data.read_text() if corpus is None else corpus.read_text(encoding="utf-8")
    chars = np.array(list(text))
    vocab, ids = np.unique(chars, return_inverse=True)
    train, val = input_pipeline.train_val_split(ids.astype(np.int32), 0.1)
    train_X, train_Y = input_pipeline.sequential_batches(train, batch_size, num_steps, offset=0)
    val_X, val_Y = input_pipeline.eval_batches(val, batch_size, num_steps)
    np.savez(
        path, train_X=train_X, train_Y=train_Y, val_X=val_X, val_Y=val_Y, vocab_size=len(vocab)
    )
    return len(vocab)


# ------------------------------------------------------------------ the rnn_jax worker


def jax_worker(args: argparse.Namespace) -> None:
    """Train rnn_jax on ``args.data`` for ``args.seconds``; JSON lines as ``torch_ttq.py``.
    With ``JAX_NUM_CPU_DEVICES`` > 1 the batch is split over that many CPU devices, as
    ``rnn-jax train`` does (``parallel.mesh_for``)."""
    import jax

    from rnn_jax import parallel, step
    from rnn_jax.config import ModelConfig, TrainConfig

    data = np.load(args.data)
    K, B, T = data["train_X"].shape
    model_config = ModelConfig(
        vocab_size=int(data["vocab_size"]),
        num_hiddens=args.num_hiddens,
        cell=args.cell,
        init="uniform",
    )
    train_config = TrainConfig(
        optimizer=args.optimizer, lr=args.lr, theta=args.theta, batch_size=B, num_steps=T
    )
    optimizer = step.make_optimizer(train_config)
    mesh = parallel.mesh_for(None)
    pairs = zip(data["train_X"], data["train_Y"], strict=True)
    if mesh is None:
        batches = [jax.device_put(xy) for xy in pairs]
        val = jax.device_put((data["val_X"], data["val_Y"]))
    else:
        batches = [parallel.put_batch(*xy, mesh) for xy in pairs]
        val = parallel.put_eval_batches(data["val_X"], data["val_Y"], mesh)
    state = step.init_train_state(model_config, optimizer, B, jax.random.key(args.seed), mesh)

    t0 = time.perf_counter()
    train_step = step.make_train_step(model_config, optimizer, carry_hidden=True, mesh=mesh)
    train_step = train_step.lower(state, batches[0]).compile()
    evaluate = step.make_evaluate(model_config, mesh).lower(state.params, *val).compile()
    compile_s = time.perf_counter() - t0

    def val_bpc() -> float:
        nll, count = evaluate(state.params, *val)
        return float(nll) / int(count) / math.log(2)

    def emit(**fields) -> None:
        line = {"impl": "rnn_jax", "cell": args.cell, "optimizer": args.optimizer, **fields}
        print(json.dumps(line), flush=True)

    steps, elapsed, next_eval = 0, 0.0, args.eval_every
    emit(elapsed=0.0, steps=0, val_bpc=val_bpc())
    while elapsed < args.seconds:
        k = steps % K
        if k == 0:  # each epoch from zeros, as the peer
            state = state.replace(hidden=parallel.zero_hidden(model_config, B, mesh))
        t0 = time.perf_counter()
        state, metrics = train_step(state, batches[k])
        jax.block_until_ready(metrics["loss"])
        elapsed += time.perf_counter() - t0
        steps += 1
        if elapsed >= next_eval or elapsed >= args.seconds:
            emit(elapsed=elapsed, steps=steps, val_bpc=val_bpc())
            next_eval += args.eval_every
    emit(
        final=True,
        steps=steps,
        elapsed=elapsed,
        tokens_per_s=steps * B * T / elapsed,
        compile_s=compile_s,
        jax=jax.__version__,
        devices=jax.device_count(),
    )


# ------------------------------------------------------------------ the harness


def time_to(curve: list[dict], target: float) -> float | None:
    """Training seconds at which ``curve`` (validations in order) first reaches
    ``target`` bpc, interpolated linearly between the validations around it."""
    for before, after in itertools.pairwise(curve):
        if after["val_bpc"] <= target:
            if before["val_bpc"] <= target:
                return before["elapsed"]
            share = (before["val_bpc"] - target) / (before["val_bpc"] - after["val_bpc"])
            return before["elapsed"] + share * (after["elapsed"] - before["elapsed"])
    return curve[0]["elapsed"] if curve and curve[0]["val_bpc"] <= target else None


def run_child(argv: list[str], timeout: float, threads: int = 1, devices: int = 1) -> list[dict]:
    """Run a worker with ``threads`` threads (XLA's one-thread flags for 1; its CPU client
    keeps its own pool regardless, so the caller pins it with ``taskset``) on ``devices``
    simulated CPU devices; its JSON lines."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if threads == 1:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {XLA_ONE_THREAD}".strip()
    env["JAX_NUM_CPU_DEVICES"] = str(devices)
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    proc = subprocess.run(
        argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def table(results: list[tuple[list[dict], dict]], targets: dict) -> str:
    rows = [
        "| impl | cell | optimizer | steps | tokens/s | final val bpc | target bpc "
        "| time to target (s) | ratio rnn_jax / torch |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    times = {}
    for curve, final in results:
        key = (final["cell"], final["optimizer"])
        times[(final["impl"], *key)] = time_to(curve, targets[key])
    for curve, final in results:
        key = (final["cell"], final["optimizer"])
        t = times[(final["impl"], *key)]
        ratio = ""
        if final["impl"] == "rnn_jax":
            t_torch = times.get(("torch", *key))
            ratio = f"{t / t_torch:.2f}" if t and t_torch else "n/a"
        rows.append(
            f"| {final['impl']} | {key[0]} | {key[1]} | {final['steps']} | "
            f"{final['tokens_per_s']:,.0f} | {curve[-1]['val_bpc']:.3f} | {targets[key]:.3f} | "
            f"{'not reached' if t is None else f'{t:.1f}'} | {ratio} |"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=120.0, help="training budget per run")
    ap.add_argument("--eval-every", type=float, default=5.0, help="seconds of training")
    ap.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=["lstm", "gru"])
    ap.add_argument("--optimizers", nargs="+", default=["sgd", "adam"], choices=["sgd", "adam"])
    ap.add_argument("--target", type=float, default=None, help="bpc; default: worse final")
    ap.add_argument("--num-hiddens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-steps", type=int, default=64)
    ap.add_argument("--theta", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu", default="0", help="taskset -c CPUS for every child (e.g. 0,1)")
    ap.add_argument("--threads", type=int, default=1, help="torch's threads, and XLA's if 1")
    ap.add_argument(
        "--devices", type=int, default=1, help="rnn_jax's batch split over N simulated CPU devices"
    )
    ap.add_argument("--corpus", type=Path, help="a UTF-8 text instead of the Time Machine")
    ap.add_argument("--torch-first", action="store_true", help="run the peer before rnn_jax")
    ap.add_argument("--peers-python", type=Path, default=REPO / ".venv-peers" / "bin" / "python")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ttq")
    # the rnn_jax child
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--cell", help=argparse.SUPPRESS)
    ap.add_argument("--optimizer", help=argparse.SUPPRESS)
    ap.add_argument("--lr", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        jax_worker(args)
        return

    if args.corpus is not None and not args.corpus.is_file():
        print(f"time_to_quality: error: --corpus {args.corpus}: no such file", file=sys.stderr)
        sys.exit(2)
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[tuple[list[dict], dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "timemachine_raw.npz"
        vocab_size = write_data(data_path, args.batch_size, args.num_steps, args.corpus)
        common = [
            "--data", str(data_path), "--seconds", str(args.seconds),
            "--eval-every", str(args.eval_every), "--num-hiddens", str(args.num_hiddens),
            "--theta", str(args.theta), "--seed", str(args.seed),
        ]  # fmt: skip
        pin = ["taskset", "-c", args.cpu]
        for cell in args.cells:
            for opt in args.optimizers:
                config = ["--cell", cell, "--optimizer", opt, "--lr", str(LEARNING_RATES[opt])]
                jax_child = [sys.executable, __file__, "--worker"]
                torch_child = [
                    str(args.peers_python), str(REPO / "benchmarks" / "torch_ttq.py"),
                    "--threads", str(args.threads),
                ]  # fmt: skip
                children = (
                    (torch_child, jax_child) if args.torch_first else (jax_child, torch_child)
                )
                for child in children:
                    argv = [*pin, *child, *common, *config]
                    devices = args.devices if child is jax_child else 1
                    lines = run_child(argv, 10 * args.seconds + 300, args.threads, devices)
                    *curve, final = lines
                    results.append((curve, final))
                    print(
                        f"{final['impl']:8s} {cell} {opt}: {final['steps']} steps, "
                        f"{final['tokens_per_s']:,.0f} tokens/s, "
                        f"val bpc {curve[-1]['val_bpc']:.3f}",
                        flush=True,
                    )
    results.sort(key=lambda result: result[1]["impl"] != "rnn_jax")
    results.sort(
        key=lambda result: (
            args.cells.index(result[1]["cell"]),
            args.optimizers.index(result[1]["optimizer"]),
        )
    )
    targets = {}
    for curve, final in results:
        key = (final["cell"], final["optimizer"])
        worse = max(targets.get(key, -math.inf), curve[-1]["val_bpc"])
        targets[key] = args.target if args.target is not None else worse
    md = table(results, targets)
    corpus = "Time Machine" if args.corpus is None else args.corpus.name
    devices = f", rnn_jax on {args.devices} CPU devices" if args.devices > 1 else ""
    header = (
        f"Time to quality, raw {corpus} characters (V {vocab_size}), H {args.num_hiddens}, "
        f"B {args.batch_size}, T {args.num_steps}, clip {args.theta}, init uniform; "
        f"{args.seconds:g} s of training per run, validation every {args.eval_every:g} s, "
        f"{args.threads} thread(s) on CPU {args.cpu}{devices}, "
        f"{'the peer' if args.torch_first else 'rnn_jax'} first; "
        f"harness wall {time.perf_counter() - start:.0f} s, "
        f"load average {os.getloadavg()[0]:.1f} at the end.\n\n"
    )
    print("\n" + header + md)
    (args.out / "results.md").write_text(header + md + "\n")
    with (args.out / "curves.jsonl").open("w") as f:
        for curve, final in results:
            for line in (*curve, final):
                f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
