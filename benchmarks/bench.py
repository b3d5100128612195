"""Same-run benchmark of rnn_jax against its PyTorch peers, the D2L 9.5 char-RNN.

    .venv/bin/python benchmarks/bench.py                 # 5 rounds, 2 s samples: 7.6 min here
    .venv/bin/python benchmarks/bench.py --quick         # 2 rounds, 1 s samples: ~2 min
    .venv/bin/python benchmarks/bench.py --threads 1     # every process on one pinned core: ~7 min
    .venv/bin/python benchmarks/bench.py --only e2e --threads 1   # the 500-epoch book run: ~4.5 min

"Here" is the 2-core AMD EPYC VM of the last run, quiet. With default threads on
a busy machine the torch peers slow down 10-50x (OpenMP waits for descheduled threads) and
``--e2e`` takes far longer; see benchmarks/README.md, "Threads".

Run it from the repository root, after making the peers' virtualenv
(``python3 -m venv .venv-peers && .venv-peers/bin/pip install torch==2.13.0 numpy``).
It prints the environment (CPU, cores, thread settings, versions) and Markdown tables,
and writes the same to ``--out``/results.md and the raw samples to ``--out``/results.json.

Every measurement is a fresh subprocess: rnn_jax re-invokes this script in its hidden
``--worker`` mode (``_jax_workloads.py``), each peer is a call of
``shared/peers/torch_peers.py``; each prints one JSON line. The implementations of a
workload run back to back (their order reversed every other round) and the rounds
repeat ``--repeats`` times, so that every ratio compares samples taken under the same
load; the tables give min/median/max over the rounds, the ratio of medians, and the range
of the per-round ratios. The book's configuration: one-hot vocabulary 28, 512 hidden
units, batch 32, 35 steps, gradient clipping at 1, SGD with lr 1.

Model FLOPs per token, counted from the matmul shapes (V = 28, H = 512, one-hot input):

* forward: input ``x W_xh`` is a one-hot ``(1, V) @ (V, H)``: ``2 V H``, recurrence
  ``h W_hh``: ``2 H^2``, head ``h W_hq``: ``2 H V``; tanh, biases and the softmax are
  O(H + V) and not counted. Forward = ``2 V H + 2 H^2 + 2 H V`` = 581,632.
* backward: every matmul ``a @ W`` needs ``da = dz W^T`` and ``dW = a^T dz``, each as many
  FLOPs as the forward product, except the input, whose one-hot ``x`` needs no gradient:
  ``2 V H + 2 (2 H^2) + 2 (2 H V)``.
* forward + backward = ``4 V H + 6 H^2 + 6 H V`` = 57,344 + 1,572,864 + 86,016
  = 1,716,224, about 1.72 MFLOP per token. The optimizer (global-norm clipping and SGD)
  adds ~4 FLOPs per parameter per step, 291,868 params / 1,120 tokens: about 1 kFLOP.

These are the book's model FLOPs, charged to every implementation alike. rnn_jax gathers
rows of ``W_xh`` instead of multiplying by a one-hot matrix, so it does 3% fewer
(1,658,880); the peers multiply. GRU and LSTM have 3 and 4 gates, each with its own
``W_x*`` and ``W_h*``: ``2 g (V H + H^2) + 2 H V`` forward, ``4 g V H + 6 g H^2 + 6 H V``
for training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VOCAB = 28  # the book's character vocabulary: 26 letters, space, <unk>
GATES = {"rnn": 1, "gru": 3, "lstm": 4}
PREFIX = "time traveller"
# one generated char's h @ W_hh at batch 1; one training step's at batch 32; all T*B rows
MATMUL_SHAPES = ((1, 512, 512), (32, 512, 512), (1120, 512, 512))
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "XLA_FLAGS")
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def threads_cpus(threads: int) -> str:
    """The CPUs ``--threads N`` pins every process to: the first N of this process's affinity
    mask ("" for 0, or when N covers the mask). The thread variables alone do not hold XLA
    to N cores: its CPU client keeps its own thread pool (a jitted matmul chain with
    ``XLA_ONE_THREAD`` set used 1.7 s of CPU per 0.9 s of wall on 2 cores), so only the
    affinity mask puts both libraries on the same N cores."""
    cpus = sorted(os.sched_getaffinity(0))
    if threads <= 0 or threads >= len(cpus):
        return ""
    return ",".join(str(c) for c in cpus[:threads])


def busy_cpu_seconds() -> float | None:
    """CPU seconds every process on the machine has spent so far (``/proc/stat``), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    jiffies = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(jiffies) - jiffies[3] - jiffies[4]) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def flops_per_token(cell: str, num_hiddens: int, train: bool, vocab: int = VOCAB) -> int:
    """The model FLOPs of the module docstring for one token."""
    g, V, H = GATES[cell], vocab, num_hiddens
    if train:
        return 4 * g * V * H + 6 * g * H * H + 6 * H * V
    return 2 * g * V * H + 2 * g * H * H + 2 * H * V


# ----------------------------------------------------------------------- the plan


@dataclass
class Impl:
    name: str
    argv: list[str] | None  # None: not available in this checkout
    jax: bool = False


@dataclass
class Group:
    workload: str  # its name for --only
    title: str
    unit: str  # "tokens/s", "chars/s", "GFLOP/s" or "s wall"
    impls: list[Impl]
    note: str = ""
    flops: int | None = None  # model FLOPs per token, for the roofline
    samples: dict[str, list[float]] = field(default_factory=dict)
    raw: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def key(self) -> str | None:
        """The field of the JSON line that holds the measurement."""
        keys = {"tokens/s": "tokens_per_s", "chars/s": "chars_per_s", "s wall": "wall_s"}
        return keys.get(self.unit)

    @property
    def higher_is_better(self) -> bool:
        return self.unit != "s wall"


class Commands:
    """Command lines: rnn_jax workers (this script) and peers (torch_peers.py)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.pin = ["taskset", "-c", args.pin_cpus] if args.pin_cpus else []
        self.threads: list[str] = []
        if args.threads:
            n = str(args.threads)
            self.pin += ["env", *(f"{v}={n}" for v in THREAD_ENV[:3])]
            if args.threads == 1:
                xla = f"{os.environ.get('XLA_FLAGS', '')} {XLA_ONE_THREAD}".strip()
                self.pin.append(f"XLA_FLAGS={xla}")
            self.threads = ["--threads", n]
        self.seconds = ["--seconds", str(args.seconds)]
        self.me = [sys.executable, str(Path(__file__).resolve()), "--worker"]
        self.peer = [str(args.peers_python), str(args.peers_dir / "torch_peers.py")]

    def jax(self, opts: str, timed: bool = True) -> list[str]:
        return [*self.pin, *self.me, *shlex.split(opts), *(self.seconds if timed else [])]

    def torch(self, opts: str, timed: bool = True) -> list[str]:
        # --max-tokens 10000: the book's data; both sides cycle the same 8 minibatches
        timing = [*self.seconds, "--repeats", "1"] if timed else []
        opts_list = [*shlex.split(opts), "--max-tokens", "10000", *self.threads]
        return [*self.pin, *self.peer, *opts_list, *timing]


def make_plan(args: argparse.Namespace, cells: tuple[str, ...]) -> list[Group]:
    c = Commands(args)
    gen = f"--num-chars 500 --prefix '{PREFIX}'"
    fwd_bwd, fwd = flops_per_token("rnn", 512, train=True), flops_per_token("rnn", 512, train=False)
    plan = [
        Group("train", "train RNN, H=512", "tokens/s", flops=fwd_bwd, impls=[
            Impl("rnn_jax", c.jax("train --cell rnn --num-hiddens 512 --compile-times"), True),
            Impl("torch scratch", c.torch("train --impl scratch")),
            Impl("torch nn.RNN", c.torch("train --impl nn --cell rnn")),
        ]),
        Group("eval", "eval RNN, H=512 (forward + NLL)", "tokens/s", flops=fwd, impls=[
            Impl("rnn_jax", c.jax("eval --num-hiddens 512"), True),
            Impl("torch nn.RNN", c.torch("eval --impl nn")),
            Impl("torch scratch", c.torch("eval --impl scratch")),
        ]),
        Group("gen", "greedy gen B=1, 500 chars", "chars/s", [
            Impl("rnn_jax", c.jax(f"gen --batch-size 1 {gen} --compile-times"), True),
            Impl("torch scratch predict_ch8", c.torch(f"gen --impl scratch --batch-size 1 {gen}")),
        ], note="the peer is the book's predict_ch8: autograd on, one host sync per char"),
        Group("gen", "greedy gen B=64, 500 chars", "chars/s", [
            Impl("rnn_jax", c.jax(f"gen --batch-size 64 {gen}"), True),
            Impl("torch nn.RNN batched", c.torch(f"gen --impl nn --batch-size 64 {gen}")),
        ]),
    ]  # fmt: skip
    for cell, torch_name in (("gru", "nn.GRU"), ("lstm", "nn.LSTM")):
        mine = c.jax(f"train --cell {cell} --num-hiddens 256") if cell in cells else None
        theirs = c.torch(f"train --impl nn --cell {cell} --num-hiddens 256")
        impls = [Impl("rnn_jax", mine, True), Impl(f"torch {torch_name}", theirs)]
        flops = flops_per_token(cell, 256, train=True)
        plan.append(Group("cells", f"train {cell.upper()}, H=256", "tokens/s", impls, flops=flops))
    matmul = [Impl("rnn_jax", c.jax("matmul"), True)]
    plan.append(Group("matmul", "float32 matmul chain", "GFLOP/s", matmul))
    return [g for g in plan if g.workload in args.only]


def make_e2e(args: argparse.Namespace) -> Group:
    c, epochs = Commands(args), args.e2e_epochs
    impls = [Impl("rnn_jax loop.fit", c.jax(f"e2e --epochs {epochs}", timed=False), True)]
    for impl in ("scratch", "nn"):
        impls.append(Impl(f"torch {impl}", c.torch(f"e2e --impl {impl} --epochs {epochs}", False)))
    note = (
        "rnn_jax: 9,000 train tokens, validation perplexity every epoch, samples every 10 "
        "epochs, compile; peers: 10,000 train tokens, no validation; both run 8 minibatches "
        "(8,960 tokens) per epoch"
    )
    return Group("e2e", f"book run, {epochs} epochs on 10k tokens", "s wall", impls, note)


# ----------------------------------------------------------------------- running


def show(argv: list[str]) -> str:
    """The command line as typed from the repository root."""

    def rel(a: str) -> str:
        if a.startswith("/"):
            try:
                return os.path.relpath(a, REPO)
            except ValueError:
                return a
        return a

    return shlex.join(rel(a) for a in argv)


def run_one(argv: list[str], timeout: float) -> tuple[dict[str, Any] | None, str, dict]:
    """Run a measuring subprocess; return its JSON line (or None), an error text, and its
    ``process_s`` (wall), ``cores`` (its CPU time / wall) and ``other_cores`` (the CPU time
    every other process on the machine took meanwhile / wall: the load it competed with)."""
    t0, own0, all0 = time.perf_counter(), children_cpu_seconds(), busy_cpu_seconds()
    try:
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, str(err), {"process_s": time.perf_counter() - t0}
    dt = time.perf_counter() - t0
    own, all1 = children_cpu_seconds() - own0, busy_cpu_seconds()
    cpu = {"process_s": dt, "cores": own / dt}
    if all0 is not None and all1 is not None:  # this harness's own few ms are in "other"
        cpu["other_cores"] = max(0.0, (all1 - all0 - own) / dt)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return None, f"exit {proc.returncode}: " + " | ".join(tail), cpu
    try:
        return json.loads(lines[-1]), "", cpu
    except json.JSONDecodeError as err:
        return None, f"bad JSON: {err}", cpu


def measure(groups: list[Group], repeats: int, timeout: float, loads: list[float]) -> None:
    """``repeats`` rounds over ``groups``; each sample's JSON gets its process wall time and
    the 1-minute load average at its start."""
    for r in range(repeats if groups else 0):
        loads.append(os.getloadavg()[0])
        for g in groups:
            impls = [i for i in g.impls if i.argv is not None]
            for impl in impls if r % 2 == 0 else impls[::-1]:
                load = os.getloadavg()[0]
                out, err, cpu = run_one(impl.argv, timeout)
                dt = cpu["process_s"]
                extra = {**cpu, "load_1min": load}
                g.raw.setdefault(impl.name, []).append({**(out or {"error": err}), **extra})
                value = None if out is None or not g.key else out.get(g.key)
                if value is not None:
                    g.samples.setdefault(impl.name, []).append(float(value))
                what = f"{value:,.1f} {g.unit}" if value is not None else (err or "done")
                print(
                    f"[{r + 1}/{repeats}] {g.title} | {impl.name}: {what} ({dt:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    loads.append(os.getloadavg()[0])


# ----------------------------------------------------------------------- reporting


def stats(xs: list[float]) -> dict[str, float]:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs), "n": len(xs)}


def fmt(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.2f}" if abs(x) >= 1 else f"{x:.3f}"


def ratio(g: Group, impl: Impl) -> tuple[float | None, list[float]]:
    """rnn_jax speed / ``impl`` speed from the medians, and the per-round paired ratios."""
    mine = next((i for i in g.impls if i.jax), None)
    if mine is None or impl is mine:
        return None, []
    a, b = g.samples.get(mine.name, []), g.samples.get(impl.name, [])
    if not a or not b:
        return None, []
    if g.higher_is_better:
        return statistics.median(a) / statistics.median(b), [
            x / y for x, y in zip(a, b, strict=True)
        ]
    return statistics.median(b) / statistics.median(a), [y / x for x, y in zip(a, b, strict=True)]


def throughput_table(groups: list[Group]) -> tuple[list[str], list[dict[str, Any]]]:
    lines = [
        "| Workload | Implementation | min | median | max | rnn_jax / impl: ratio of medians "
        "(per-round range) | cores used | Command |",
        "|---|---|---:|---:|---:|---|---:|---|",
    ]
    rows = []
    for g in groups:
        if g.workload in ("matmul", "e2e"):
            continue
        for impl in g.impls:
            xs = g.samples.get(impl.name, [])
            st = stats(xs) if xs else None
            r, paired = ratio(g, impl)
            if impl.argv is None:
                cells = ["not available", "", ""]
                cmd = "the cell is not in rnn_jax.config.CELLS yet"
            else:
                cells = [fmt(st[k]) if st else "failed" for k in ("min", "median", "max")]
                cmd = f"`{show(impl.argv)}`"
            rtext = "" if r is None else f"**{r:.2f}×** ({min(paired):.2f}–{max(paired):.2f})"
            cores = [x["cores"] for x in g.raw.get(impl.name, []) if "cores" in x]
            ctext = f"{statistics.median(cores):.2f}" if cores else ""
            lines.append(
                f"| {g.title} [{g.unit}] | {impl.name} | "
                + " | ".join(cells)
                + f" | {rtext} | {ctext} | {cmd} |"
            )
            errors = [x["error"] for x in g.raw.get(impl.name, []) if "error" in x]
            rows.append(
                {
                    "workload": g.title,
                    "unit": g.unit,
                    "impl": impl.name,
                    "command": None if impl.argv is None else show(impl.argv),
                    "samples": xs,
                    "stats": st,
                    "ratio_of_medians": r,
                    "paired_ratios": paired,
                    "cores_used": cores,
                    "errors": errors,
                    "note": g.note,
                }
            )
    notes = [f"- {g.title}: {g.note}" for g in groups if g.note]
    notes.append(
        "- cores used: the process's CPU time over its wall time, startup included (the "
        "single-threaded imports pull it toward 1)"
    )
    return [*lines, "", *notes], rows


def compile_table(groups: list[Group]) -> tuple[list[str], dict[str, Any]]:
    lines = ["| Function | Measure | min | median | max |", "|---|---|---:|---:|---:|"]
    data: dict[str, Any] = {}
    sources = [
        (g, "step.make_train_step (RNN, H=512)") for g in groups if g.title.startswith("train RNN")
    ]
    sources += [
        (g, "sample.greedy (B=1, 500 chars)")
        for g in groups
        if g.title.startswith("greedy gen B=1")
    ]
    labels = {
        "compile_s": "first call − warm call [s]",
        "aot_lower_s": "AOT .lower() [s]",
        "aot_compile_s": "AOT .compile() [s]",
        "warm_call_s": "warm call [s]",
    }
    for g, label in sources:
        raws = [x for x in g.raw.get("rnn_jax", []) if "error" not in x]
        for key, text in labels.items():
            xs = [x[key] for x in raws if key in x]
            if xs:
                st = stats(xs)
                data.setdefault(label, {})[key] = {**st, "samples": xs}
                lines.append(
                    f"| {label} | {text} | "
                    + " | ".join(f"{st[k]:.3f}" for k in ("min", "median", "max"))
                    + " |"
                )
    return lines, data


def roofline_tables(groups: list[Group]) -> tuple[list[str], dict[str, Any]]:
    mm = next((g for g in groups if g.workload == "matmul"), None)
    raws = [] if mm is None else [x for x in mm.raw.get("rnn_jax", []) if "error" not in x]
    lines = [
        "| Matmul chain, float32 | Library | min | median | max [GFLOP/s] |",
        "|---|---|---:|---:|---:|",
    ]
    rates: dict[str, dict[str, float]] = {}
    for m, k, n in MATMUL_SHAPES:
        for lib in ("jax", "numpy"):
            key = f"{lib}_{m}x{k}x{n}_gflops"
            xs = [x[key] for x in raws if key in x]
            if xs:
                rates[key] = stats(xs)
                lines.append(
                    f"| ({m},{k})@({k},{n}) | {lib} | "
                    + " | ".join(fmt(rates[key][s]) for s in ("min", "median", "max"))
                    + " |"
                )
    big = max((v["max"] for v in rates.values()), default=None)
    small = max(
        (v["max"] for k, v in rates.items() if k.endswith("_32x512x512_gflops")), default=None
    )
    lines += [
        "",
        f"Peak = the best sample of any matmul chain above: {fmt(big)} GFLOP/s; the best of one "
        f"recurrence step's (32,512)@(512,512): {fmt(small)} GFLOP/s.",
        "",
        "| Implementation | Workload | model FLOP/token | median tokens/s | GFLOP/s "
        "| % of peak | % of (32,512) rate |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    out: list[dict[str, Any]] = []
    for g in groups:
        if g.flops is None:
            continue
        f = g.flops
        for impl in g.impls:
            xs = g.samples.get(impl.name)
            if not xs:
                continue
            gflops = statistics.median(xs) * f / 1e9
            pk = None if big is None else 100 * gflops / big
            sm = None if small is None else 100 * gflops / small
            out.append(
                {
                    "impl": impl.name,
                    "workload": g.title,
                    "flops_per_token": f,
                    "gflops": gflops,
                    "pct_peak": pk,
                    "pct_small": sm,
                }
            )
            lines.append(
                f"| {impl.name} | {g.title} | {f:,} | {fmt(statistics.median(xs))} | "
                f"{gflops:.2f} | {fmt(pk)} | {fmt(sm)} |"
            )
    greedy_lines, greedy = greedy_floor(groups, rates)
    data = {"matmul": rates, "peak_gflops": big, "small_gflops": small, "rows": out}
    return [*lines, *greedy_lines], {**data, "greedy_b1": greedy}


def greedy_floor(
    groups: list[Group], rates: dict[str, dict[str, float]]
) -> tuple[list[str], dict[str, Any]]:
    """Batch-1 generation is bound by memory, not FLOPs: each char reads all of ``W_hh``
    (1 MiB of float32) for one ``(1, 512) @ (512, 512)`` product. The chain's time per
    product is the floor of any float32 sampler's time per char on this machine."""
    rate = rates.get("jax_1x512x512_gflops")
    g = next((g for g in groups if g.title.startswith("greedy gen B=1")), None)
    if rate is None or g is None:
        return [], {}
    floor_us = 2 * 512 * 512 / (rate["max"] * 1e9) * 1e6
    per_char = {name: 1e6 / statistics.median(xs) for name, xs in g.samples.items() if xs}
    lines = [
        "",
        f"Greedy generation at batch 1 reads all of `W_hh` (1 MiB) for every char: the best "
        f"`(1,512)@(512,512)` product above takes {floor_us:.2f} µs, the floor of a float32 "
        "sampler's time per char here (the head, argmax and feedback come on top).",
        "",
        "| Implementation | µs per char (median) | × the floor | ceiling of any float32 "
        "sampler's speedup over it |",
        "|---|---:|---:|---:|",
    ]
    for name, us in per_char.items():
        bound = "" if name == "rnn_jax" else f"{us / floor_us:.2f}×"
        lines.append(f"| {name} | {us:.2f} | {us / floor_us:.2f} | {bound} |")
    return lines, {"floor_us": floor_us, "us_per_char": per_char}


def e2e_table(g: Group) -> list[str]:
    """One row per run: the process's wall (from the shell, imports and compile included) and
    the wall the implementation reports (rnn_jax: data + compile + fit; peers: the loop)."""
    lines = [
        "| Implementation | process wall [s] | reported wall [s] | train loop [s] | compile [s] "
        "| final train perplexity | load at start | rnn_jax / impl, process wall | Command |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    mine = [x for x in g.raw.get(g.impls[0].name, []) if "error" not in x]
    for impl in g.impls:
        for x in g.raw.get(impl.name, []):
            if "error" in x:
                lines.append(f"| {impl.name} | failed: {x['error']} | | | | | | | |")
                continue
            speedup = (
                "" if impl.jax or not mine else f"**{x['process_s'] / mine[0]['process_s']:.2f}×**"
            )
            lines.append(
                f"| {impl.name} | {x['process_s']:.1f} | {x['wall_s']:.1f} | "
                f"{fmt(x.get('train_loop_s'))} | {fmt(x.get('compile_s'))} | "
                f"{x['perplexity']:.2f} | {x['load_1min']:.1f} | {speedup} | "
                f"`{show(impl.argv or [])}` |"
            )
    return [*lines, "", f"- {g.note}"]


def environment(args: argparse.Namespace, groups: list[Group], loads: list[float]) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    outs = [(i.jax, x) for g in groups for i in g.impls for x in g.raw.get(i.name, [])]
    jax_info = next((x["info"] for is_jax, x in outs if is_jax and "info" in x), {})
    peer = next((x for is_jax, x in outs if not is_jax and "torch" in x), {})
    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "cpus_flag": args.cpus,
        "threads_flag": args.threads,
        "platform": platform.platform(),
        "harness_env": {k: os.environ.get(k) for k in THREAD_ENV},
        "jax": jax_info,
        "torch": peer.get("torch"),
        "torch_threads": peer.get("threads"),
        "loadavg_1min": loads,
        "other_cores": [
            x["other_cores"]
            for g in groups
            for xs in g.raw.values()
            for x in xs
            if "other_cores" in x
        ],
        "repeats": args.repeats,
        "seconds": args.seconds,
        "argv": sys.argv[1:],
    }


def report(args: argparse.Namespace, groups: list[Group], env: dict, wall: float) -> None:
    jinfo = env["jax"]
    worker_env = ", ".join(f"{k}={v}" for k, v in jinfo.get("env", {}).items() if v)
    others = env["other_cores"]
    contention = (
        f"- other processes' CPU load during the samples (cores): median "
        f"{statistics.median(others):.2f}, max {max(others):.2f}"
        + (
            " (**busy machine**: other processes shared the cores)"
            if max(others) > 0.25
            else " (a quiet machine)"
        )
        if others
        else "- other processes' CPU load: not measured (no /proc/stat)"
    )
    head = [
        "# rnn_jax vs PyTorch peers, same-run interleaved",
        "",
        f"- command: `{shlex.join(['.venv/bin/python', 'benchmarks/bench.py', *env['argv']])}`",
        f"- CPU: {env['cpu']}; nproc {env['nproc']}; CPUs in affinity {env['affinity']}"
        + (f"; every process pinned with taskset -c {args.pin_cpus}" if args.pin_cpus else ""),
        f"- threads: torch {env['torch_threads']} (torch.get_num_threads() in the peer); XLA "
        f"CPU client's default thread pool over the {jinfo.get('affinity', '?')} CPUs its "
        f"process may use; worker env: {worker_env or 'none set'}",
        f"- jax {jinfo.get('jax', '?')}, numpy {jinfo.get('numpy', '?')}, python "
        f"{jinfo.get('python', '?')}; torch {env['torch']}",
        (
            f"- {args.repeats} rounds of fresh processes, {args.seconds} s timed per sample; "
            if any(g.workload != "e2e" for g in groups)
            else "- the --e2e run only; "
        )
        + "1-min load average (the benchmark's own process included) at each round's (and "
        "the --e2e run's) start, and at the end: "
        + ", ".join(f"{x:.1f}" for x in env["loadavg_1min"]),
        contention,
        f"- total wall time {wall / 60:.1f} min",
        "",
    ]
    tput, rows = throughput_table(groups)
    comp, comp_data = compile_table(groups)
    roof, roof_data = roofline_tables(groups)
    md = head
    if rows:
        md += ["## Throughput", "", *tput, ""]
    if comp_data:
        md += ["## Compile time (rnn_jax)", "", *comp, ""]
    if roof_data["matmul"] or roof_data["rows"]:
        md += ["## Roofline", "", *roof, ""]
    e2e = next((g for g in groups if g.workload == "e2e"), None)
    if e2e is not None:
        md += ["## End-to-end book run", "", *e2e_table(e2e), ""]
    text = "\n".join(md)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text, "utf-8")
    raw = {g.title: {"unit": g.unit, "raw": g.raw} for g in groups}
    payload = {
        "environment": env,
        "wall_s": wall,
        "throughput": rows,
        "compile": comp_data,
        "roofline": roof_data,
        "raw": raw,
    }
    (args.out / "results.json").write_text(json.dumps(payload, indent=1) + "\n", "utf-8")
    print(f"\nwrote {args.out / 'results.md'} and {args.out / 'results.json'}", file=sys.stderr)


# ----------------------------------------------------------------------- entry points


def worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(HERE))
    import _jax_workloads as w  # jax only in workers

    if args.worker == "train":
        out = w.train(args.cell, args.num_hiddens, args.seconds, args.compile_times)
    elif args.worker == "eval":
        out = w.evaluate(args.num_hiddens, args.seconds)
    elif args.worker == "gen":
        out = w.generate(
            args.num_hiddens,
            args.batch_size,
            args.num_chars,
            args.prefix,
            args.seconds,
            args.compile_times,
        )
    elif args.worker == "matmul":
        out = w.matmul(list(MATMUL_SHAPES), args.seconds)
    else:
        out = w.e2e(args.epochs)
    print(json.dumps({**out, "workload": args.worker, "info": w.info()}))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds of 1 s samples")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    ap.add_argument("--repeats", type=int, help="rounds (default 5; 2 with --quick)")
    ap.add_argument("--seconds", type=float, help="timed seconds per sample (2; 1 with --quick)")
    ap.add_argument(
        "--only",
        default="train,eval,gen,cells,matmul",
        help="comma-separated subset of train,eval,gen,cells,matmul; e2e turns on --e2e",
    )
    ap.add_argument("--e2e", action="store_true", help="also the book's 500-epoch run")
    ap.add_argument("--e2e-epochs", type=int, default=500, help="epochs of the --e2e run")
    ap.add_argument(
        "--peers-dir",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared" / "peers",
        help="folder holding torch_peers.py",
    )
    ap.add_argument(
        "--peers-python",
        type=Path,
        default=REPO / ".venv-peers" / "bin" / "python",
        help="python of the peers' virtualenv (torch)",
    )
    ap.add_argument("--cpus", default="", help="pin every subprocess with taskset -c CPUS")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="pin every subprocess to N CPUs (taskset -c, the first N of the affinity mask) "
        "and set torch --threads N and OMP/MKL/OpenBLAS_NUM_THREADS=N; N=1 also sets "
        "XLA's one-thread flags, which its CPU client does not obey: the pinning is what "
        "holds it (default 0: no pinning, each library's default threads)",
    )
    hidden = argparse.SUPPRESS
    ap.add_argument("--worker", choices=["train", "eval", "gen", "matmul", "e2e"], help=hidden)
    ap.add_argument("--cell", default="rnn", help=hidden)
    ap.add_argument("--num-hiddens", type=int, default=512, help=hidden)
    ap.add_argument("--batch-size", type=int, default=32, help=hidden)
    ap.add_argument("--num-chars", type=int, default=500, help=hidden)
    ap.add_argument("--prefix", default=PREFIX, help=hidden)
    ap.add_argument("--compile-times", action="store_true", help=hidden)
    ap.add_argument("--epochs", type=int, default=500, help=hidden)
    args = ap.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.seconds = args.seconds or (1.0 if args.quick else 2.0)
    args.only = set(args.only.split(","))
    args.pin_cpus = args.cpus or threads_cpus(args.threads)  # "" = no pinning
    args.e2e = args.e2e or "e2e" in args.only
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    if not (args.peers_dir / "torch_peers.py").exists() or not args.peers_python.exists():
        sys.exit(
            f"need {args.peers_dir}/torch_peers.py and {args.peers_python}; see "
            "benchmarks/README.md for the peers' virtualenv"
        )
    try:
        from rnn_jax.config import CELLS  # numpy only, no jax
    except Exception as err:  # a library edited concurrently may not import
        print(
            f"rnn_jax.config does not import ({err}); GRU/LSTM rows not available", file=sys.stderr
        )
        CELLS = ("rnn",)
    started = time.perf_counter()
    groups = make_plan(args, tuple(CELLS))
    loads: list[float] = []
    measure(groups, args.repeats, timeout=60 + 20 * args.seconds, loads=loads)
    if args.e2e:
        e2e = make_e2e(args)
        measure([e2e], 1, timeout=7200, loads=loads)
        groups.append(e2e)
    wall = time.perf_counter() - started
    report(args, groups, environment(args, groups, loads), wall)


if __name__ == "__main__":
    main()
