"""Frozen configuration: what the model is, and how a run trains it.

``ModelConfig`` is hashable and shapes the compiled functions (it is closed over by
``jit``); ``TrainConfig`` describes one run. Both round-trip through plain dicts, so
that a checkpoint's JSON alone can rebuild them. The defaults are the book's
(D2L section 9.5: ``batch_size=32, num_steps=35, num_hiddens=512, lr=1, theta=1``,
500 epochs on the first 10,000 character tokens of the Time Machine).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rnn_jax.data import PARTITIONS, TOKEN_KINDS

CELLS = ("rnn", "gru", "lstm")
NONLINEARITIES = ("tanh", "relu")  # of the rnn cell


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int  # V: size of the one-hot input and of the softmax
    num_hiddens: int = 512  # H: width of the hidden state (of every layer)
    cell: str = "rnn"  # "rnn" (D2L 9.5), "gru" (10.2) or "lstm" (10.1); see rnn_jax/cells.py
    sigma: float = 0.01  # std of the normal init of the weights (biases start at 0)
    num_layers: int = 1  # stacked layers, layer k fed layer k-1's outputs (D2L 10.3)
    dropout: float = 0.0  # dropout on the outputs of all but the last layer, in training only
    nonlinearity: str = "tanh"  # the rnn cell's activation: the book's "tanh", or "relu"

    def __post_init__(self) -> None:
        _positive(self, "vocab_size", "num_hiddens", "num_layers")
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {self.cell!r}")
        if not self.sigma > 0:
            raise ValueError(f"sigma must be positive, got {self.sigma}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.nonlinearity not in NONLINEARITIES:
            raise ValueError(
                f"nonlinearity must be one of {NONLINEARITIES}, got {self.nonlinearity!r}"
            )
        if self.nonlinearity != "tanh" and self.cell != "rnn":
            raise ValueError(f"nonlinearity applies to the rnn cell only, not {self.cell!r}")


@dataclass(frozen=True)
class TrainConfig:
    corpus: str | None = None  # UTF-8 text file; None = the shipped Time Machine
    token: str = "char"  # "char" or "word" tokens
    max_tokens: int | None = 10_000  # truncate the corpus as the book does; None = all
    val_fraction: float = 0.1  # tail of the corpus held out for validation; 0 = none
    batch_size: int = 32  # B: parallel streams per minibatch
    num_steps: int = 35  # T: tokens per minibatch row (truncated-BPTT window)
    partition: str = "sequential"  # "sequential" carries the hidden state; "random" resets it
    lr: float = 1.0  # SGD learning rate
    theta: float = 1.0  # gradient clipping threshold on the global norm
    num_epochs: int = 500  # passes over the training split
    seed: int = 0  # drives init, batch order and every PRNG key
    eval_every: int = 1  # validation perplexity every this many epochs (and the last); 0 = never
    sample_every: int = 10  # print greedy continuations every this many epochs; 0 = never
    sample_prefix: str = "time traveller"  # prefix of those continuations
    num_preds: int = 50  # tokens each continuation predicts

    def __post_init__(self) -> None:
        _positive(self, "batch_size", "num_steps", "num_epochs", "num_preds")
        if self.max_tokens is not None:
            _positive(self, "max_tokens")
        if self.token not in TOKEN_KINDS:
            raise ValueError(f"token must be one of {TOKEN_KINDS}, got {self.token!r}")
        if self.partition not in PARTITIONS:
            raise ValueError(f"partition must be one of {PARTITIONS}, got {self.partition!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not self.theta > 0:
            raise ValueError(f"theta must be positive, got {self.theta}")
        _integers(self, ("eval_every", "sample_every"), minimum=0, what="an integer >= 0")


def _positive(config: Any, *names: str) -> None:
    _integers(config, names, minimum=1, what="a positive integer")


def _integers(config: Any, names: tuple[str, ...], minimum: int, what: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{name} must be {what}, got {value!r}")


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild ``cls`` from ``data``, refusing fields it does not have."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return cls(**data)
