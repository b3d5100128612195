"""The exported sampler against ``rnn-jax sample``: export time, the README snippet's load
time, and greedy characters per second of each on the same model, prefix and length.

    .venv/bin/python benchmarks/export_sampler.py runs/demo           # the README's model
    .venv/bin/python benchmarks/export_sampler.py runs/demo --num-chars 200 --rounds 10

Runs the README's snippet itself (extracted between its markers, as ``tests/test_export.py``
does) on a fresh export of RUN's latest checkpoint, then times, best of ``--rounds``: the
snippet's compiled scan of the exported step, and ``sample.greedy`` (what
``rnn-jax sample --strategy greedy`` runs), both after compilation; the two texts must be
equal. Prints one line per figure. Measured on 2026-12-02 on the README's ``runs/demo``
(rnn, H 512, V 28), 1,000 characters after "time traveller", 4 runs on the 2-core VM
under load (load average 8-13): export 0.36-1.26 s; deserialize 0.9-5 ms; 23,700-76,600
chars/s for the exported step scanned, 23,800-34,200 for ``sample.greedy``: the same
speed within the noise. 14-20 s a run here.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import runpy
import sys
import tempfile
import time
from pathlib import Path

import jax

from rnn_jax import checkpoint, data, export, sample

ROOT = Path(__file__).resolve().parents[1]


def readme_snippet() -> str:
    readme = (ROOT / "README.md").read_text("utf-8")
    block = readme.split("<!-- export-snippet -->", 1)[1].split("<!-- /export-snippet -->")[0]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


def best(function, rounds: int) -> float:
    """The fastest of ``rounds`` calls of ``function``, in seconds."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        jax.block_until_ready(function())
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--prefix", default="time traveller")
    parser.add_argument("--num-chars", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export"
        export.export_checkpoint(args.run_dir, folder)  # prints its own time
        started = time.perf_counter()
        jax.export.deserialize(bytearray((folder / export.STEP_FILE).read_bytes()))
        print(f"load: deserialize step.jax in {(time.perf_counter() - started) * 1e3:.1f} ms")
        script = Path(tmp) / "sample_exported.py"
        script.write_text(readme_snippet())
        sys.argv = [str(script), str(folder), args.prefix, str(args.num_chars)]
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            snippet = runpy.run_path(str(script), run_name="__main__")
        print(f"the snippet, after import: {time.perf_counter() - started:.2f} s (compiles)")
    carry = (snippet["ids"][-1:], snippet["state"])
    scan = jax.jit(lambda c: jax.lax.scan(snippet["pick"], c, length=args.num_chars))
    scan(carry)
    exported = best(lambda: scan(carry), args.rounds)
    restored = checkpoint.restore(args.run_dir)
    config, vocab = restored.train_config, restored.vocab
    prefix = data.encode(args.prefix, vocab, config.token, config.preprocess)[None]  # (1, P)
    ids = sample.greedy(restored.model_config, restored.params, prefix, args.num_chars)
    text = args.prefix + data.decode(ids[0], vocab, config.token)  # what rnn-jax sample prints
    assert text + "\n" == printed.getvalue(), "the snippet and rnn-jax sample differ"
    library = best(
        lambda: sample.greedy(restored.model_config, restored.params, prefix, args.num_chars),
        args.rounds,
    )
    for name, seconds in (("exported step, scanned", exported), ("sample.greedy", library)):
        print(f"{name}: {args.num_chars / seconds:,.0f} chars/s (best of {args.rounds})")


if __name__ == "__main__":
    main()
