"""The rnn_jax side of ``benchmarks/gpu.sh``: one measurement per process, one JSON line.

    python3 benchmarks/gpu_workloads.py --workload train --cell rnn --num-hiddens 512 \\
        --batch-size 32 --dtype bfloat16 --seconds 2

Measures, on the default JAX backend (the GPU where there is one), the warm throughput
of one workload of the book's model (one-hot V 28, T 35, the first 10,000 tokens of the
Time Machine, SGD lr 1, clipping at 1), with ``ModelConfig(compute_dtype=--dtype)``:

* ``train``: ``step.make_train_step(..., carry_hidden=True)``, the state donated, the
  epoch's minibatches on the device; tokens = B x T per step.
* ``eval``: ``step.make_evaluate`` over the epoch's K stacked minibatches (one
  ``lax.scan``); tokens = K x B x T per call.
* ``gen``: ``sample.greedy`` of ``--num-chars`` characters after ``"time traveller"`` for
  B rows; counted as the peers count, B x num_chars per call.

The first call (tracing + compiling) is timed apart and reported as ``compile_s`` (first
call minus a warm call); the rate is the calibrated chunk of ``_jax_workloads._rate``
(doubling chunks until one takes 1/8 of ``--seconds``, then one chunk of about
``--seconds`` waited for once with ``jax.block_until_ready``).

Two helper modes keep ``gpu.sh`` free of Python one-liners:

    python3 benchmarks/gpu_workloads.py --write-peer-data DATA.npz --batch-size 32
    python3 benchmarks/gpu_workloads.py --table results.jsonl --out results.md
    CMD 2>&1 | python3 benchmarks/gpu_workloads.py --record impl=nn workload=train ...

The first writes the same minibatches for ``benchmarks/torch_ttq.py`` (the project's own
``nn.LSTM`` peer); the second turns the JSON lines of a ``gpu.sh`` run into its Markdown
table; the third reads a measurement's output on stdin and prints its last JSON line with
the given fields added (or, when it printed none, a record with the output's tail as
``error``), so every measurement, failed or not, becomes one line of the table.

On this 2-core CPU one tiny measurement (``--num-hiddens 16 --batch-size 4 --seconds 1``)
takes 5-10 s, most of it importing JAX and compiling.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

PREFIX = "time traveller"
RATE_KEYS = ("tokens_per_s", "chars_per_s")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One workload in this process (JAX is imported here, not by the helper modes)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _jax_workloads as w
    import jax
    import jax.numpy as jnp

    from rnn_jax import input_pipeline, model, sample, step
    from rnn_jax.config import ModelConfig, TrainConfig

    config = TrainConfig(batch_size=args.batch_size)
    dataset = input_pipeline.load_dataset(config)
    model_config = ModelConfig(
        dataset.vocab_size, args.num_hiddens, cell=args.cell, compute_dtype=args.dtype
    )
    plan = input_pipeline.train_plan(dataset, config, 0)
    out: dict[str, Any] = {"impl": "rnn_jax", "num_batches": len(plan)}

    if args.workload == "train":
        optimizer = step.make_optimizer(config)
        state = step.init_train_state(model_config, optimizer, args.batch_size, jax.random.key(0))
        batches = [tuple(jax.device_put(a) for a in plan[k]) for k in range(len(plan))]
        train_step = step.make_train_step(model_config, optimizer, carry_hidden=True)
        holder = {"state": state, "k": 0}

        def run(n: int) -> Any:
            for _ in range(n):
                batch = batches[holder["k"] % len(batches)]
                holder["state"], _ = train_step(holder["state"], batch)
                holder["k"] += 1
            return holder["state"]

        units, key = args.batch_size * config.num_steps, "tokens_per_s"
    elif args.workload == "eval":
        params = model.init(model_config, jax.random.key(0))
        Xs, Ys = (jnp.asarray(a) for a in plan.materialise())
        evaluate = step.make_evaluate(model_config)

        def run(n: int) -> Any:
            return [evaluate(params, Xs, Ys) for _ in range(n)]

        units, key = Xs.size, "tokens_per_s"
    else:
        params = model.init(model_config, jax.random.key(0))
        encoded = sample.encode_prefixes([PREFIX] * args.batch_size, dataset.vocab)
        prefixes = jnp.asarray(np.stack(encoded))

        def run(n: int) -> Any:
            return [sample.greedy(model_config, params, prefixes, args.num_chars) for _ in range(n)]

        units, key = args.batch_size * args.num_chars, "chars_per_s"

    first, warm = w._first_and_warm(run)
    out[key] = w._rate(run, units, args.seconds)
    if args.workload == "train":
        leaves = jax.tree.leaves(holder["state"].params)
        out["params_finite"] = all(bool(jnp.isfinite(leaf).all()) for leaf in leaves)
    out.update(first_call_s=first, warm_call_s=warm, compile_s=first - warm)
    device = jax.devices()[0]
    out["device"] = f"{device.platform}:{device.device_kind}"
    out["jax"] = jax.__version__
    out["matmul_precision"] = str(jax.config.jax_default_matmul_precision)
    return out


def write_peer_data(path: Path, batch_size: int) -> int:
    """The epoch-0 minibatches rnn_jax trains on, as ``torch_ttq.py`` reads them:
    ``train_X, train_Y`` ``(K, B, T)``, ``val_X, val_Y`` (the same: only the rate is
    read) and ``vocab_size``. Returns K."""
    from rnn_jax import input_pipeline
    from rnn_jax.config import TrainConfig

    config = TrainConfig(batch_size=batch_size)
    dataset = input_pipeline.load_dataset(config)
    Xs, Ys = input_pipeline.train_plan(dataset, config, 0).materialise()
    np.savez(
        path, train_X=Xs, train_Y=Ys, val_X=Xs[:1], val_Y=Ys[:1], vocab_size=dataset.vocab_size
    )
    return len(Xs)


def rate(record: dict[str, Any]) -> float | None:
    for key in RATE_KEYS:
        if record.get(key) is not None:
            return float(record[key])
    return None


def _failed(record: dict[str, Any]) -> str:
    error = str(record.get("error", "?"))
    return error if error.startswith("skipped") else f"failed: {error}"


def table(records: list[dict[str, Any]], gpu: str) -> str:
    """Markdown: one row per rnn_jax measurement and torch peer of the same workload, cell,
    size and batch (torch is float32 throughout; a bf16 row's ratio is against it)."""
    jax_rows = [r for r in records if r.get("impl") == "rnn_jax"]
    peers = [r for r in records if r.get("impl") != "rnn_jax"]
    lines = [
        f"GPU: {gpu}",
        "",
        "| workload | dtype | batch | rnn_jax tokens/s | compile s | torch peer "
        "| torch tokens/s | ratio | device |",
        "|---|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in jax_rows:
        name = f"{r['workload']} {r['cell']} H{r['num_hiddens']}"
        ours = rate(r)
        ours_text = f"{ours:,.0f}" if ours else _failed(r)
        compile_text = f"{r['compile_s']:.2f}" if "compile_s" in r else ""
        same = [
            p
            for p in peers
            if all(p.get(k) == r[k] for k in ("workload", "cell", "num_hiddens", "batch_size"))
        ]
        for p in same or [{}]:
            theirs = rate(p)
            peer = p.get("impl", "none run")
            if p and not theirs:
                peer += f" ({_failed(p)})"
            ratio = f"{ours / theirs:.2f}x" if ours and theirs else ""
            theirs_text = f"{theirs:,.0f}" if theirs else ""
            lines.append(
                f"| {name} | {r['dtype']} | {r['batch_size']} | {ours_text} | {compile_text} "
                f"| {peer} | {theirs_text} | {ratio} | {r.get('device', '')} |"
            )
    lines += [
        "",
        "Tokens/s are warm (compile excluded); gen counts generated characters (B x chars). "
        "Ratio = rnn_jax / torch, one process each, measured back to back. The torch peers "
        "run float32 (cuDNN for nn.*); a bfloat16 row compares rnn_jax's bfloat16 compute "
        "with them.",
    ]
    return "\n".join(lines)


def record(text: str, fields: list[str]) -> dict[str, Any]:
    """The last JSON object line of ``text`` with ``KEY=VALUE`` fields added (an int
    value stays an int); ``{"error": <last line>}`` plus the fields when there is none."""
    out: dict[str, Any] = {}
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                out = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
    if rate(out) is None:
        tail = [x for x in text.splitlines() if x.strip()]
        out["error"] = tail[-1][:200] if tail else "no output"
    for field in fields:
        key, value = field.split("=", 1)
        out[key] = int(value) if value.isdigit() else value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=["train", "eval", "gen"], default="train")
    parser.add_argument("--cell", choices=["rnn", "gru", "lstm"], default="rnn")
    parser.add_argument("--num-hiddens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds (warm)")
    parser.add_argument("--num-chars", type=int, default=500, help="gen: chars per row")
    parser.add_argument("--write-peer-data", type=Path, metavar="NPZ")
    parser.add_argument("--table", type=Path, metavar="JSONL", help="records -> markdown")
    parser.add_argument("--gpu", default="unknown", help="--table: the GPU's name")
    parser.add_argument("--out", type=Path, help="--table: also write the markdown here")
    parser.add_argument("--record", nargs="*", metavar="KEY=VALUE", help="stdin -> one line")
    args = parser.parse_args()

    if args.record is not None:
        print(json.dumps(record(sys.stdin.read(), args.record)))
        return

    if args.write_peer_data:
        print(json.dumps({"num_batches": write_peer_data(args.write_peer_data, args.batch_size)}))
        return
    if args.table:
        records = [json.loads(x) for x in args.table.read_text().splitlines() if x.strip()]
        text = table(records, args.gpu)
        print(text)
        if args.out:
            args.out.write_text(text + "\n", "utf-8")
        return
    started = time.perf_counter()
    out = measure(args)
    keys = ("workload", "cell", "num_hiddens", "batch_size", "dtype", "seconds")
    out.update({k: getattr(args, k) for k in keys})
    out["process_s"] = time.perf_counter() - started
    print(json.dumps(out))


if __name__ == "__main__":
    main()
