"""What reads a run folder without training: ``rnn-jax eval``, ``sample`` and ``info``.

``eval`` and ``sample`` restore what they need from a checkpoint alone
(``checkpoint.restore``: the model, its parameters and vocabulary, verified against their
checksums), never from the folder's other files, so they can run while a training
process saves beside them; ``info`` also reads ``config.json`` and the lock's owner. All
three refuse a checkpoint that ``config.json`` (written atomically as a run starts) says
is another run's (``run_folder.check_own``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp

from rnn_jax import checkpoint, data, input_pipeline, run_folder, sample
from rnn_jax.config import SamplingConfig, to_dict
from rnn_jax.loss import bits_per_token, perplexity
from rnn_jax.step import make_evaluate


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
    restored = _restore_own(run_dir, step)
    config = restored.train_config
    if corpus is None:
        dataset = input_pipeline.load_dataset(config)
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
    Xs, Ys = input_pipeline.eval_batches(tokens, config.batch_size, config.num_steps)
    evaluate = make_evaluate(restored.model_config)
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
    sampling: SamplingConfig,
    seed: int,
    echo: Callable[[str], None] = print,
) -> int:
    """``rnn-jax sample``: each prefix and its continuation, as the text is (a model
    trained on raw text prints newlines as newlines)."""
    restored = _restore_own(run_dir, step)
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


def _restore_own(run_dir: Path, step: int | str | None) -> checkpoint.Restored:
    """The checkpoint's model, once ``config.json`` vouched that it is this run's."""
    restored = checkpoint.restore(run_dir, step=step)
    model, train = to_dict(restored.model_config), to_dict(restored.train_config)
    run_folder.check_own(Path(run_dir), restored.step, model, train, restored.corpus)
    return restored


def _first_tokens(restored: checkpoint.Restored) -> str:
    """The default prefix of a run saved before its config stored it (reads the corpus)."""
    dataset = input_pipeline.load_dataset(restored.train_config)
    return input_pipeline.default_prefixes(dataset)[0]


def describe(run_dir: Path) -> str:
    """``rnn-jax info``: the run's config summary and its checkpoints as a table."""
    run_dir = Path(run_dir)
    lines = [f"run folder {run_dir}"]
    config = run_folder.read_config(run_dir)
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
