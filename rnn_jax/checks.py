"""What a run checks before anything is written, so that nothing that can fail then
fails after training: the prefixes, the evaluation sizes, the memory the model needs,
the devices (``check_run``), and on a resume the corpus (``check_resumed_corpus``). Each
raises ``ValueError`` with one line, which the command line prints (exit 2)."""

from __future__ import annotations

from pathlib import Path

from rnn_jax import checkpoint, input_pipeline, parallel
from rnn_jax.config import ModelConfig, RunConfig, TrainConfig
from rnn_jax.data import encode_prefixes
from rnn_jax.input_pipeline import Dataset


def check_resumed_corpus(restored: checkpoint.Restored, dataset: Dataset, run_dir: Path) -> None:
    """A resume reads the text its run was trained on: the corpus's sha256 and the
    vocabulary it gives equal the checkpoint's."""
    saved = restored.corpus
    if saved and saved.get("sha256") and saved.get("sha256") != dataset.fingerprint.get("sha256"):
        where = restored.train_config.corpus or "the shipped corpus"
        raise ValueError(
            f"the corpus {where} changed since {run_dir} was trained (sha256 "
            f"{saved['sha256'][:12]}... then, {dataset.fingerprint['sha256'][:12]}... now); "
            "resuming would train on other text"
        )
    if dataset.vocab != restored.vocab:
        raise ValueError(
            f"the corpus now gives a different vocabulary than the one {run_dir} was trained with"
        )


def check_run(
    model_config: ModelConfig, config: TrainConfig, dataset: Dataset, run_config: RunConfig
) -> None:
    """Everything that can be checked before the first step, so that nothing that can
    fail then fails after training: the prefixes, the evaluation sizes, the memory the
    model needs, the devices. Raises ``ValueError`` with one line."""
    if model_config.vocab_size != dataset.vocab_size:
        raise ValueError(
            f"model vocab_size {model_config.vocab_size} != dataset vocab size {dataset.vocab_size}"
        )
    if config.sample_every or config.sample_prefix:
        prefixes = input_pipeline.sample_prefixes(config, dataset)
        encode_prefixes(prefixes, dataset.vocab, dataset.token, dataset.preprocess)
    if config.eval_tokens is not None and config.eval_tokens < 2:
        raise ValueError(f"eval_tokens must be at least 2, got {config.eval_tokens}")
    check_memory(model_config, config)
    parallel.check_devices(run_config.devices, config.batch_size)


def check_memory(model_config: ModelConfig, config: TrainConfig) -> None:
    """Refuse sizes whose parameters, optimizer state and activations cannot fit in this
    machine's available memory, with the estimate, before anything is allocated."""
    need = estimate_bytes(model_config, config)
    available = _available_bytes()
    if available is not None and need > available:
        raise ValueError(
            f"this model needs about {need / 2**30:,.1f} GiB to train (parameters, optimizer "
            f"state, activations of B {config.batch_size} x T {config.num_steps}); "
            f"{available / 2**30:,.1f} GiB is available"
        )


def estimate_bytes(model_config: ModelConfig, config: TrainConfig) -> int:
    """A lower bound of training memory in bytes: parameters, gradients and optimizer
    state (4 copies, float32), and what the scan saves for the backward pass."""
    V, H, L = model_config.vocab_size, model_config.num_hiddens, model_config.num_layers
    gates = model_config.num_gates
    params = L * gates * (2 * H * H + H) + V * gates * H + H * V + V
    B, T = config.batch_size, config.num_steps
    activations = L * T * B * H * (2 * gates + 2) + 2 * T * B * V
    return 4 * (4 * params + activations)


def _available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
