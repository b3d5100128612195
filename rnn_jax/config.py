"""Frozen configuration: what the model is, how a run trains it, and where it runs.

Each field is described once, here: its type, default and help (``option``'s metadata).
The command line (``rnn_jax.cli``) and config files (``load_file``) are derived from
these dataclasses, so a new field is written in one place.

* ``ModelConfig`` is hashable and shapes the compiled functions (it is closed over by
  ``jit``); a checkpoint's JSON alone rebuilds it.
* ``TrainConfig`` describes what one run computes: the data, the optimizer, the budget.
  A resumed run may change only the fields marked ``resumable``.
* ``RunConfig`` says how and where it runs (checkpoint cadence, devices, caches); it
  never changes the numbers a run computes, so a resumed run may change all of it.

The defaults are the book's (D2L section 9.5: ``batch_size=32, num_steps=35,
num_hiddens=512, lr=1, theta=1``, 500 epochs on the first 10,000 character tokens of
the Time Machine). Fields whose default depends on the corpus start as ``AUTO`` and are
resolved when the config is made: ``preprocess`` is ``"book"`` for the shipped Time
Machine and ``"raw"`` for a file the user names; ``max_tokens`` is the book's 10,000 for
the shipped corpus and all tokens otherwise. For a corpus the user names, the fields the
user leaves unset start from ``OWN_TEXT`` instead (``own_text_defaults``; a new run only,
not a resume or a fine-tune), the configuration that learns best per second there.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnn_jax.data import PREPROCESS as PREPROCESSING
from rnn_jax.data import TOKEN_KINDS

# The cells, each with its gate blocks in the order their weights are fused: the one
# table of cells. ``rnn_jax.cells`` implements each under the same name (a test holds the
# two equal), so a new cell is its functions there and a line here.
GATES: dict[str, tuple[str, ...]] = {
    "rnn": ("h",),  # D2L 9.5
    "gru": ("z", "r", "h"),  # D2L 10.2: update, reset, candidate
    "lstm": ("i", "f", "o", "c"),  # D2L 10.1: input, forget, output, candidate cell
    "mingru": ("z", "h"),  # Feng et al. 2024: update gate, candidate
    "minlstm": ("f", "i", "h"),  # Feng et al. 2024: forget, input, candidate
    "lru": ("re", "im", "d"),  # Orvieto et al. 2023: B's real, imaginary parts; skip D
}
CELLS = tuple(GATES)
# The cells whose update is linear in their state, so it can be an associative scan.
LINEAR_CELLS = ("mingru", "minlstm", "lru")
SCANS = ("sequential", "associative")  # how a linear cell runs over time
NONLINEARITIES = ("tanh", "relu")  # of the rnn cell
INITS = ("normal", "uniform")
COMPUTE_DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine", "warmup-cosine", "linear")
PARTITIONS = ("random", "sequential")  # D2L 9.3.3's two ways of cutting a corpus into minibatches
STRATEGIES = ("greedy", "temperature", "top-k", "top-p", "beam")  # how a sampler picks tokens
STOCHASTIC = ("temperature", "top-k", "top-p")  # the strategies that draw with a PRNG key

AUTO = "auto"  # a default resolved from the other fields when the config is made
BOOK_MAX_TOKENS = 10_000  # the book's truncation of the Time Machine

# Which optimizer hyperparameters apply to which optimizer, and their defaults there.
OPTIMIZER_HYPERPARAMETERS: dict[str, dict[str, float]] = {
    "sgd": {},
    "momentum": {"momentum": 0.9},
    "adam": {"b1": 0.9, "b2": 0.999},
    "adamw": {"b1": 0.9, "b2": 0.999, "weight_decay": 1e-4},
    "rmsprop": {"decay": 0.9, "momentum": 0.0},
}


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    choices: tuple[str, ...] | None = None,
    resumable: bool = False,
    metavar: str | None = None,
) -> Any:
    """A dataclass field with what the CLI and config files need to know about it.

    ``flag`` renames the command-line flag (default: ``--field-name``); ``resumable``
    marks a ``TrainConfig`` field a resumed run may change.
    """
    meta = {"help": help, "flag": flag, "choices": choices, "resumable": resumable}
    meta["metavar"] = metavar
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = dataclasses.field(
        metadata={"help": "V: size of the one-hot input and of the softmax (from the data)"}
    )
    num_hiddens: int = option(512, "H: width of the hidden state of every layer")
    cell: str = option(
        "rnn",
        "recurrent cell: rnn (D2L 9.5), gru (10.2), lstm (10.1); mingru, minlstm (Feng et "
        "al. 2024), lru (Orvieto et al. 2023): linear in their state",
        choices=CELLS,
    )
    num_layers: int = option(1, "stacked layers, layer k fed layer k-1's outputs (D2L 10.3)")
    dropout: float = option(0.0, "dropout on the outputs of all but the last layer, training only")
    nonlinearity: str = option("tanh", "activation of the rnn cell", choices=NONLINEARITIES)
    init: str = option(
        "normal",
        "weight init: normal = the book's N(0, sigma^2) weights, zero biases; uniform = "
        "PyTorch's nn.RNN/GRU/LSTM/Linear: every weight and bias U(-1/sqrt(H), 1/sqrt(H))",
        choices=INITS,
    )
    sigma: float = option(0.01, "std of the normal init of the weights")
    compute_dtype: str = option(
        "float32",
        "dtype of the cells' forward and backward; parameters, optimizer state and "
        "gradients stay float32, logits are cast to float32 before the softmax",
        choices=COMPUTE_DTYPES,
    )
    scan: str = option(
        "sequential",
        "how a linear cell (mingru, minlstm, lru) runs over time: sequential = lax.scan, "
        "the reference; associative = lax.associative_scan, O(log T) depth",
        choices=SCANS,
    )

    def __post_init__(self) -> None:
        _positive(self, "vocab_size", "num_hiddens", "num_layers")
        _choice(self, "cell", CELLS)
        _choice(self, "nonlinearity", NONLINEARITIES)
        _choice(self, "init", INITS)
        _choice(self, "compute_dtype", COMPUTE_DTYPES)
        _choice(self, "scan", SCANS)
        if self.scan != "sequential" and self.cell not in LINEAR_CELLS:
            raise ValueError(
                f"scan {self.scan} needs a cell linear in its state ({', '.join(LINEAR_CELLS)}); "
                f"the {self.cell} cell's update is not"
            )
        if not (_is_real(self.sigma) and self.sigma > 0):
            raise ValueError(f"sigma must be positive, got {self.sigma}")
        if not (_is_real(self.dropout) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.nonlinearity != "tanh" and self.cell != "rnn":
            raise ValueError(f"nonlinearity applies to the rnn cell only, not {self.cell!r}")

    @property
    def num_gates(self) -> int:
        """G, the cell's gate blocks: each has its ``W_x``, ``W_h`` and ``b``."""
        return len(GATES[self.cell])


@dataclass(frozen=True)
class TrainConfig:
    # data
    corpus: str | None = option(
        None, "UTF-8 text file; none = the shipped Time Machine", metavar="FILE"
    )
    preprocess: str = option(
        AUTO,
        "book: runs of non-letters -> one space, lowercase (the book's); raw: every "
        "character as in the file (\\r\\n read as \\n); auto: book for the shipped "
        "corpus, raw for yours",
        choices=(*PREPROCESSING, AUTO),
    )
    token: str = option(
        "char", "token kind: characters, or whitespace-separated words", choices=TOKEN_KINDS
    )
    min_freq: int = option(0, "word tokens seen fewer times map to <unk>")
    max_tokens: int | str | None = option(
        AUTO,
        "use the first N tokens; 0 or none = all; auto: the book's 10,000 for the shipped "
        "corpus, all for yours",
    )
    val_fraction: float = option(0.1, "tail of the corpus held out for validation; 0 = none")
    batch_size: int = option(32, "B: parallel streams per minibatch")
    num_steps: int = option(35, "T: tokens per stream per minibatch (the truncated-BPTT window)")
    partition: str = option(
        "sequential",
        "sequential carries the hidden state across minibatches; random resets it",
        choices=PARTITIONS,
    )
    # optimisation
    optimizer: str = option(
        "sgd", "optax optimizer, always after clip_by_global_norm(theta)", choices=OPTIMIZERS
    )
    lr: float = option(1.0, "peak learning rate; 0 leaves the parameters as they are")
    schedule: str = option(
        "constant",
        "learning-rate schedule over the step budget (warmup-cosine: linear warmup, then cosine)",
        choices=SCHEDULES,
    )
    warmup_steps: int = option(0, "steps of linear warmup (warmup-cosine)")
    momentum: float | None = option(None, "momentum (momentum: 0.9, rmsprop: 0)")
    b1: float | None = option(None, "Adam's first-moment decay (adam, adamw: 0.9)")
    b2: float | None = option(None, "Adam's second-moment decay (adam, adamw: 0.999)")
    decay: float | None = option(None, "RMSprop's decay of the squared gradient (rmsprop: 0.9)")
    weight_decay: float | None = option(None, "decoupled weight decay (adamw: 1e-4)")
    theta: float = option(1.0, "gradient clipping threshold on the global norm")
    # budget
    num_epochs: int = option(500, "passes over the training split", flag="--epochs", resumable=True)
    max_steps: int | None = option(
        None, "stop after N optimizer steps in all (before --epochs if sooner)", resumable=True
    )
    seed: int = option(0, "PRNG seed: init, batch order and every key")
    init_from: str | None = option(
        None,
        "fine-tune: start from the parameters (not the optimizer state or step) of run "
        "folder RUN's latest checkpoint, or of its :STEP, :best or :latest; the model is "
        "RUN's, tokens in both vocabularies keep their weights (rnn_jax.transfer)",
        metavar="RUN[:STEP]",
    )
    # what the loop reports
    eval_every: int = option(
        1, "validation perplexity every N epochs (and at the end); 0 = never", resumable=True
    )
    eval_every_steps: int = option(
        0, "validation perplexity every N steps as well; 0 = never", resumable=True
    )
    eval_tokens: int | None = option(
        None, "validate on the first N tokens of the validation split; none = all", resumable=True
    )
    sample_every: int = option(
        10, "greedy samples every N epochs (and at the end); 0 = never", resumable=True
    )
    sample_prefix: tuple[str, ...] | None = option(
        None,
        "prefix of those samples (repeat the flag for several); default: 'time traveller' "
        "for the shipped corpus, the first tokens of the validation split for yours",
        resumable=True,
        metavar="TEXT",
    )
    num_preds: int = option(50, "tokens each sample predicts", resumable=True)

    def __post_init__(self) -> None:
        shipped = self.corpus is None
        if self.preprocess == AUTO:
            object.__setattr__(self, "preprocess", "book" if shipped else "raw")
        if self.max_tokens == AUTO:
            object.__setattr__(self, "max_tokens", BOOK_MAX_TOKENS if shipped else None)
        elif self.max_tokens == 0:
            object.__setattr__(self, "max_tokens", None)
        if isinstance(self.sample_prefix, str):
            object.__setattr__(self, "sample_prefix", (self.sample_prefix,))
        elif self.sample_prefix is not None:
            object.__setattr__(self, "sample_prefix", tuple(self.sample_prefix))
        elif shipped:
            object.__setattr__(self, "sample_prefix", ("time traveller",))
        for name, default in OPTIMIZER_HYPERPARAMETERS.get(self.optimizer, {}).items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)

        _positive(self, "batch_size", "num_steps", "num_epochs", "num_preds")
        _positive(self, "max_tokens", "max_steps", "eval_tokens", optional=True)
        _integers(self, ("eval_every", "eval_every_steps", "sample_every", "warmup_steps"), 0)
        _integers(self, ("min_freq",), 0)
        _integers(self, ("seed",), 0, maximum=2**32 - 1)
        _choice(self, "preprocess", PREPROCESSING)
        _choice(self, "token", TOKEN_KINDS)
        _choice(self, "partition", PARTITIONS)
        _choice(self, "optimizer", OPTIMIZERS)
        _choice(self, "schedule", SCHEDULES)
        if not (_is_real(self.val_fraction) and 0 <= self.val_fraction < 1):
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not (_is_real(self.lr) and 0 <= self.lr < math.inf):  # 0: the parameters stay
            raise ValueError(f"lr must be a positive number or 0, got {self.lr}")
        if not (_is_real(self.theta) and 0 < self.theta < math.inf):
            raise ValueError(f"theta must be a positive number, got {self.theta}")
        if self.init_from is not None and not (isinstance(self.init_from, str) and self.init_from):
            raise ValueError(f"init_from must name a run folder, got {self.init_from!r}")
        applies = OPTIMIZER_HYPERPARAMETERS[self.optimizer]
        for name in ("momentum", "b1", "b2", "decay", "weight_decay"):
            value = getattr(self, name)
            if value is None:
                continue
            if name not in applies:
                users = [o for o, hp in OPTIMIZER_HYPERPARAMETERS.items() if name in hp]
                raise ValueError(
                    f"{name} does not apply to optimizer {self.optimizer!r} (only to "
                    f"{', '.join(users)})"
                )
            upper = math.inf if name == "weight_decay" else 1
            if not (_is_real(value) and 0 <= value < upper):
                raise ValueError(f"{name} must be in [0, {upper}), got {value}")
        if self.warmup_steps and self.schedule != "warmup-cosine":
            raise ValueError(
                f"warmup_steps applies to schedule 'warmup-cosine' only, not {self.schedule!r}"
            )
        if self.sample_prefix is not None and not all(self.sample_prefix):
            raise ValueError("a sample prefix must hold at least one character")


@dataclass(frozen=True)
class RunConfig:
    """How and where a run executes; a resumed run may change any of it."""

    save_every: int = option(10, "checkpoint every N epochs (and at the end)")
    save_every_steps: int = option(0, "checkpoint every N steps as well; 0 = never")
    keep: int = option(3, "keep the latest K checkpoints (plus the best)")
    devices: int | None = option(
        None, "devices to shard the batch over; none = all local devices of the default backend"
    )
    cache_dir: str | None = option(
        None,
        "token cache folder; none = $XDG_CACHE_HOME/rnn_jax or ~/.cache/rnn_jax",
        metavar="DIR",
    )
    cache: bool = option(True, "cache the tokens of your corpus (see --cache-dir)")
    tensorboard: bool = option(True, "write TensorBoard event files into the run folder")
    heartbeat_timeout: int = option(
        100,
        "several processes: seconds a process may go silent (hang) before the coordination "
        "service declares it dead and JAX ends the others (jax.distributed's heartbeat timeout)",
        metavar="S",
    )

    def __post_init__(self) -> None:
        _positive(self, "save_every", "keep", "heartbeat_timeout")
        _integers(self, ("save_every_steps",), 0)
        _positive(self, "devices", optional=True)


@dataclass(frozen=True)
class SamplingConfig:
    """How ``rnn_jax.sample`` picks each generated token."""

    strategy: str = "greedy"  # one of STRATEGIES
    temperature: float = 1.0  # divides the logits of temperature/top-k/top-p; -> 0 is greedy
    top_k: int | None = None  # top-k: sample among the k most likely tokens
    top_p: float | None = None  # top-p: sample among the most likely tokens of mass p
    beam_size: int = 4  # beam: continuations kept at each step (1 is greedy)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.top_k is not None and (_not_int(self.top_k) or self.top_k < 1):
            raise ValueError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if _not_int(self.beam_size) or self.beam_size < 1:
            raise ValueError(f"beam_size must be an integer >= 1, got {self.beam_size!r}")
        if self.strategy == "top-k" and self.top_k is None:
            raise ValueError("strategy 'top-k' needs top_k")
        if self.strategy == "top-p" and self.top_p is None:
            raise ValueError("strategy 'top-p' needs top_p")

    @property
    def stochastic(self) -> bool:
        return self.strategy in STOCHASTIC


# --------------------------------------------------------------------------- checks


def _not_int(value: object) -> bool:
    return not isinstance(value, int) or isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _choice(config: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _positive(config: Any, *names: str, optional: bool = False) -> None:
    for name in names:
        if optional and getattr(config, name) is None:
            continue
        _integers(config, (name,), 1)


def _integers(config: Any, names: tuple[str, ...], minimum: int, maximum: int = 2**31 - 1) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise ValueError(f"{name} must be {what} (at most {maximum:,}), got {value!r}")


# --------------------------------------------------------------------------- dicts, files


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild ``cls`` from ``data`` (JSON lists become tuples), refusing fields it does
    not have."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**values)


SECTIONS: dict[str, type] = {"model": ModelConfig, "train": TrainConfig, "run": RunConfig}

# The defaults for a corpus the user names, by section: of the configurations measured
# on 1.1 MB of raw text, the one that learned best in 3,000 steps (docs/own-text.md; an
# LSTM came within 0.01 bits per character at a costlier step). The shipped Time
# Machine keeps the book's defaults above. The budget is 20 epochs capped at 5,000 steps
# (whichever comes first; 5,000 steps of B 32 x T 64 took 3 min 5 s on one core here);
# the warmup is 100 steps or a tenth of a shorter budget (``fit_warmup``).
OWN_TEXT: dict[str, dict[str, Any]] = {
    "model": {"cell": "gru", "num_hiddens": 256, "init": "uniform"},
    "train": {
        "num_steps": 64,
        "optimizer": "adam",
        "lr": 1e-2,
        "schedule": "warmup-cosine",
        "warmup_steps": 100,
        "num_epochs": 20,
        "max_steps": 5000,
        "eval_every_steps": 500,
    },
    "run": {"save_every_steps": 500},
}

# The ``TrainConfig`` fields a resumed run may change.
RESUMABLE = frozenset(
    f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("resumable")
)


def own_text_defaults(sections: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The ``OWN_TEXT`` defaults of the fields ``sections`` (the fields set by the user,
    by section) leave unset, by section."""
    return {
        name: {k: v for k, v in table.items() if k not in sections[name]}
        for name, table in OWN_TEXT.items()
    }


def fit_warmup(config: TrainConfig, total_steps: int) -> TrainConfig:
    """``config`` with a warmup of at most a tenth of the ``total_steps`` budget (0: the
    cosine alone), so that a short budget on a small text still warms up and decays."""
    return dataclasses.replace(config, warmup_steps=min(config.warmup_steps, total_steps // 10))


def describe_defaults(applied: dict[str, dict[str, Any]], configs: dict[str, Any]) -> str:
    """The line that names the own-text defaults ``applied`` (by section) as flags, with
    their values in ``configs`` (by section): what the run uses."""
    flags = [
        f"{flag_name(SECTIONS[section], name)} {getattr(configs[section], name)}"
        for section, fields in applied.items()
        for name in fields
    ]
    return f"defaults for your own text: {' '.join(flags)} (set any flag to change it)"


def load_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a JSON or TOML config file: sections ``model``, ``train``, ``run`` (a run's
    ``config.json`` is one; its ``corpus`` and ``run_info`` are ignored) of fields
    by name. Unknown sections' fields are not checked; unknown fields of the known
    sections raise ``ValueError`` naming the key and the file."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except OSError as err:
        raise ValueError(f"cannot read config file {path}: {err.strerror or err}") from None
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"config file {path} is not valid {path.suffix[1:] or 'JSON'}: {err}"
        ) from None
    if not isinstance(raw, dict):
        raise ValueError(f"config file {path} must hold a table of sections")
    sections: dict[str, dict[str, Any]] = {}
    for name, cls in SECTIONS.items():
        values = raw.get(name, {})
        if not isinstance(values, dict):
            raise ValueError(f"config file {path}: section {name!r} must be a table")
        fields = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in fields:
                raise ValueError(f"config file {path}: unknown key {name}.{key}")
        sections[name] = dict(values)
    unknown = sorted(set(raw) - set(SECTIONS) - {"corpus", "run_info", "sweep", "init_from"})
    if unknown:
        raise ValueError(f"config file {path}: unknown section {unknown[0]!r}")
    return sections


def flag_name(cls: type, name: str) -> str:
    """The command-line flag of config field ``name`` (``--num-hiddens``)."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return field.metadata.get("flag") or "--" + name.replace("_", "-")


def field_type(cls: type, name: str) -> tuple[type, bool]:
    """``(scalar type, optional)`` of a field: ``int | None`` is ``(int, True)``; a tuple
    of strings is ``(tuple, ...)``."""
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        scalars = [a for a in args if a is not type(None) and a is not str] or [str]
        base = scalars[0]
    else:
        base = hint
    if typing.get_origin(base) is tuple:
        base = tuple
    return base, optional
