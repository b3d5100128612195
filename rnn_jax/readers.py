"""What reads a run folder without training: ``rnn-jax eval``, ``sample`` and ``info``.

``eval`` and ``sample`` restore what they need from a checkpoint alone
(``checkpoint.restore``: the model, its parameters and vocabulary, verified against their
checksums), never from the folder's other files, so they can run while a training
process saves beside them; ``info`` also reads ``config.json`` and the lock's owner. All
three refuse a checkpoint that ``config.json`` (written atomically as a run starts) says
is another run's (``run_folder.check_own``).

``eval`` and ``sample`` work in chunks (``evaluate_in_chunks``, ``sample.Generation``).
Between two chunks they update a progress bar (on a terminal), write the text generated
so far (``sample --stream``) and look for a signal (``signals.ReaderSignals``): after
one they print what they did and raise ``Interrupted``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TextIO, TypeVar

import jax
import numpy as np
from tqdm.auto import tqdm

from rnn_jax import (
    checkpoint,
    compile_cache,
    data,
    input_pipeline,
    model,
    run_folder,
    sample,
    step,
    transfer,
)
from rnn_jax.cache import cache_folder
from rnn_jax.config import ModelConfig, SamplingConfig
from rnn_jax.loss import bits_per_token, perplexity
from rnn_jax.signals import Interrupted, ReaderSignals

SAMPLE_CHUNK = 256  # tokens generated after each prefix between two looks for a signal
EVAL_CHUNK_TOKENS = 1 << 16  # tokens scored between two looks for a signal
Chunk = TypeVar("Chunk")

_evaluate_from = jax.jit(step.evaluate_from, static_argnames="model_config")


def evaluate_in_chunks(
    model_config: ModelConfig, params: model.Params, Xs: np.ndarray, Ys: np.ndarray, chunk: int
) -> Iterator[np.ndarray]:
    """``step.evaluate`` over ``Xs, Ys`` ``(K, B, T)``, ``chunk`` minibatches at a time
    with the hidden state carried: yields each chunk's per-minibatch NLLs. They sum to
    ``evaluate``'s (tested). Compiles before it returns, so that a caller times the
    evaluation alone. (The chunks are cut on the host: slicing a device array at a new
    offset would compile a new slice.)"""
    h0 = model.zero_state(model_config, Xs.shape[1])
    K = len(Xs)
    for n in {min(chunk, K), K % chunk} - {0}:  # each chunk length compiles (on a first run)
        jax.block_until_ready(_evaluate_from(model_config, params, h0, Xs[:n], Ys[:n]))

    def chunks(h: model.State) -> Iterator[np.ndarray]:
        for start in range(0, K, chunk):
            X, Y = Xs[start : start + chunk], Ys[start : start + chunk]
            h, nlls = _evaluate_from(model_config, params, h, X, Y)
            yield np.asarray(nlls)

    return chunks(h0)


def use_compilation_cache(run_dir: Path) -> None:
    """JAX's compilation cache beside the token cache of the run in ``run_dir`` (its
    ``config.json``'s run settings), for ``eval`` and ``sample`` in a process of their own
    (``compile_cache``); none when the run used ``--no-cache`` or its settings are unread."""
    settings = (run_folder.read_config(run_dir) or {}).get("run", {})
    folder = cache_folder(settings.get("cache", False), settings.get("cache_dir"))
    if folder is not None:
        compile_cache.use_compilation_cache(folder)


def evaluate_checkpoint(
    run_dir: Path,
    *,
    step: int | str | None = None,
    corpus: Path | None = None,
    eval_tokens: int | None = None,
    echo: Callable[[str], None] = print,
    signals: ReaderSignals | None = None,
    progress: bool | None = None,
    chunk_tokens: int = EVAL_CHUNK_TOKENS,
) -> int:
    """``rnn-jax eval``: perplexity (and bits per character for char tokens) of a
    checkpoint on its validation split or on ``corpus``; says when the training corpus
    changed since. Scores about ``chunk_tokens`` tokens at a time; after a signal, the
    perplexity of the tokens scored so far."""
    restored = run_folder.restore_own(run_dir, step)
    config = restored.train_config
    tokens, what = _tokens_to_score(run_dir, restored, corpus, echo)
    Xs, Ys = input_pipeline.eval_batches(tokens[:eval_tokens], config.batch_size, config.num_steps)
    K, B, T = Xs.shape
    chunks = evaluate_in_chunks(
        restored.model_config, restored.params, Xs, Ys, max(1, chunk_tokens // (B * T))
    )
    started = time.perf_counter()
    nlls = list(
        _watched(chunks, Ys.size, "token", lambda part: part.size * B * T, signals, progress)
    )
    seconds = time.perf_counter() - started
    done = sum(map(len, nlls))
    count = done * B * T
    ppl = perplexity(np.concatenate(nlls).sum(), count)
    if config.token == "char":
        unit = f" ({bits_per_token(ppl):.4f} bits per character)"
    else:
        unk = float((Ys[:done] == restored.vocab.unk).mean())
        unit = f" ({unk:.2%} of the scored tokens are <unk>)"
    scored = f"{count:,} tokens" if done == K else f"the first {count:,} of {Ys.size:,} tokens"
    echo(
        f"step {restored.step}: perplexity {ppl:.3f}{unit} on {scored} of {what}, "
        f"{count / seconds:,.0f} tokens/s"
    )
    if _stopped(signals):
        raise _interrupted(signals, f"after {count:,} of {Ys.size:,} tokens; eval stopped")
    return 0


def _tokens_to_score(
    run_dir: Path, restored: checkpoint.Restored, corpus: Path | None, echo: Callable[[str], None]
) -> tuple[np.ndarray, str]:
    """The tokens ``eval`` scores (the run's validation split, or ``corpus`` through the
    run's vocabulary), and what they are, in words."""
    config = restored.train_config
    if corpus is not None:
        tokens = data.encode_corpus(corpus, restored.vocab, config.token, config.preprocess)
        if len(tokens) < 2:
            raise ValueError(f"corpus {corpus} has fewer than 2 tokens after preprocessing")
        return tokens, str(corpus)
    dataset = input_pipeline.load_dataset(config)
    if restored.corpus and restored.corpus.get("sha256") not in (
        None,
        dataset.fingerprint.get("sha256"),
    ):
        echo(
            f"note: the training corpus {config.corpus or '(shipped)'} changed since "
            f"{run_dir} was trained; scoring its current validation split"
        )
    if len(dataset.val) < 2:
        raise ValueError(f"the run in {run_dir} has no validation split; name a --corpus")
    return dataset.val, "the validation split"


def sample_checkpoint(
    run_dir: Path,
    *,
    prefixes: Sequence[str | Path] | None,
    num_preds: int,
    step: int | str | None,
    sampling: SamplingConfig,
    seed: int,
    stream: bool = False,
    out: TextIO | None = None,
    signals: ReaderSignals | None = None,
    progress: bool | None = None,
    chunk: int = SAMPLE_CHUNK,
) -> int:
    """``rnn-jax sample``: each prefix and its continuation on ``out`` (stdout), as the
    text is (a model trained on raw text prints newlines as newlines).

    ``prefixes``: text (``str``) or files (``Path``) whose text is preprocessed as the
    run's corpus was; none: the run's sample prefixes. Generation runs ``chunk`` tokens
    at a time; ``stream`` (one prefix) writes each chunk's text as it comes (beam search
    writes its best beam at the end, and says so on stderr). After a signal, what was
    generated is printed and ``Interrupted`` raised.
    """
    out = out or sys.stdout
    restored = run_folder.restore_own(run_dir, step)
    config = restored.train_config
    texts = [_file_prefix(p, restored) if isinstance(p, Path) else p for p in prefixes or ()]
    texts = texts or list(config.sample_prefix or ()) or [_first_tokens(restored)]
    if stream and len(texts) != 1:
        raise ValueError(
            f"--stream continues one prefix, and the run's sample prefixes are {len(texts)}; "
            "name one with --prefix or --prefix-file"
        )
    generation = sample.Generation(
        texts,
        restored.model_config,
        restored.params,
        restored.vocab,
        config.token,
        sampling=sampling,
        key=jax.random.key(seed),
        preprocess=config.preprocess,
    )
    if stream and sampling.strategy == "beam":
        print("note: beam search prints its best beam when it ends", file=sys.stderr)
    try:
        _generate(generation, num_preds, chunk, out, stream, signals, progress)
    except BrokenPipeError:  # stdout's reader went away (``sample --stream | head``)
        if out is sys.stdout:  # Python's last flush at exit would fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    if _stopped(signals):
        done = f"{generation.generated:,} of {num_preds:,} {_unit(config.token)}s"
        raise _interrupted(signals, f"after {done}; sample stopped")
    return 0


def _generate(
    generation: sample.Generation,
    num_preds: int,
    chunk: int,
    out: TextIO,
    stream: bool,
    signals: ReaderSignals | None,
    progress: bool | None,
) -> None:
    """``generation`` advanced to ``num_preds`` tokens a chunk at a time, until then or a
    signal, then each prefix and its continuation on ``out``; with ``stream``, the one
    prefix first and each chunk's text as it comes."""
    if stream:
        _write(out, generation.prefixes[0])

    def chunks() -> Iterator[tuple[int, list[str]]]:  # (tokens, each prefix's new text)
        while generation.generated < num_preds:
            n = min(chunk, num_preds - generation.generated)
            yield n, generation.advance(n)

    unit, bar = _unit(generation.token), False if stream else progress
    for _, gained in _watched(chunks(), num_preds, unit, lambda c: c[0], signals, bar):
        if stream:
            _write(out, gained[0])
    if stream and generation.sampling.strategy == "beam":
        ids = generation.continuations()[0]
        _write(out, sample.continuation_text(ids, generation.vocab, generation.token))
    _write(out, "\n" if stream else "".join(text + "\n" for text in generation.texts()))


def _file_prefix(path: Path, restored: checkpoint.Restored) -> str:
    """The text of a ``--prefix-file``, preprocessed as the run's corpus was; refused in
    one line if unreadable, not UTF-8, empty, or holding a token outside the vocabulary."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"--prefix-file {path}: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"--prefix-file {path} is not UTF-8 text: byte 0x{raw[err.start]:02x} at offset "
            f"{err.start} cannot be decoded"
        ) from None
    config = restored.train_config
    text = data.preprocess(text, config.preprocess)
    if not text:
        raise ValueError(f"--prefix-file {path} holds no text")
    unknown = restored.vocab.unknown(data.tokenize(text, config.token))
    if unknown:
        shown = ", ".join(repr(t) for t in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        raise ValueError(
            f"--prefix-file {path} holds {len(unknown)} token(s) outside the run's "
            f"vocabulary: {shown}"
        )
    return text


def _first_tokens(restored: checkpoint.Restored) -> str:
    """The default prefix of a run saved before its config stored it (reads the corpus)."""
    dataset = input_pipeline.load_dataset(restored.train_config)
    return input_pipeline.default_prefixes(dataset)[0]


def _scan_note(model: dict) -> str:
    """`` (associative scan)`` for a linear cell run so, else nothing."""
    return f" ({model['scan']} scan)" if model.get("scan", "sequential") != "sequential" else ""


def _unit(token: str) -> str:
    return "char" if token == "char" else "word"


def _write(out: TextIO, text: str) -> None:
    out.write(text)
    out.flush()


def _watched(
    chunks: Iterator[Chunk],
    total: int,
    unit: str,
    size: Callable[[Chunk], int],
    signals: ReaderSignals | None,
    progress: bool | None,
) -> Iterator[Chunk]:
    """``chunks`` passed on, with a progress bar over ``total`` (on stderr, once the work
    has lasted a second; on a terminal only when ``progress`` is None) advanced by each
    one's ``size``, and a look for a signal after each: the chunk a signal arrived in
    is the last."""
    disable = None if progress is None else not progress
    bar = tqdm(total=total, unit=unit, unit_scale=True, disable=disable, leave=False, delay=1)
    with bar, _chunked(signals):
        for chunk in chunks:
            yield chunk
            bar.update(size(chunk))
            if _stopped(signals):
                return


def _chunked(signals: ReaderSignals | None) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext() if signals is None else signals.chunks()


def _stopped(signals: ReaderSignals | None) -> bool:
    return signals is not None and signals.received is not None


def _interrupted(signals: ReaderSignals, what: str) -> Interrupted:
    signum = signals.received
    return Interrupted(signum, f"{signal.Signals(signum).name} {what}")


def describe(run_dir: Path) -> str:
    """``rnn-jax info``: the run's config summary (a fine-tune's source too) and its
    checkpoints as a table."""
    run_dir = Path(run_dir)
    lines = [f"run folder {run_dir}"]
    config = run_folder.read_config(run_dir)
    if config:
        m, t = config.get("model", {}), config.get("train", {})
        lines.append(
            f"  model: {m.get('cell')} x{m.get('num_layers')}{_scan_note(m)}, "
            f"H {m.get('num_hiddens')}, "
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
        if config.get("init_from"):
            lines.append(f"  {transfer.Source.from_json(config['init_from']).describe()}")
    owner = run_folder.owner(run_dir)
    if owner:
        lines.append(f"  in use by {owner}")
    infos = checkpoint.list_checkpoints(run_dir, verify=True)
    for info in infos:
        if info.intact and info.meta:
            saved = [info.meta.get(key) for key in ("model", "train", "corpus")]
            run_folder.check_own(run_dir, info.step, saved[0] or {}, saved[1] or {}, saved[2])
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
