"""The book's recurrent cells as pure functions over parameter pytrees (D2L 9.5, 10.1-10.4).

Shape legend: B batch, T time, D num_inputs, H num_hiddens, G gate blocks (rnn 1, gru 3,
lstm 4).

    rnn   H_t = phi(X_t W_xh + H_{t-1} W_hh + b_h)                  phi tanh (book) or relu
    gru   Z_t = sigmoid(X_t W_xz + H_{t-1} W_hz + b_z)              update gate
          R_t = sigmoid(X_t W_xr + H_{t-1} W_hr + b_r)              reset gate
          H~_t = tanh(X_t W_xh + (R_t * H_{t-1}) W_hh + b_h)        candidate
          H_t = Z_t * H_{t-1} + (1 - Z_t) * H~_t
    lstm  I_t, F_t, O_t = sigmoid(X_t W_x? + H_{t-1} W_h? + b_?)     ? = i, f, o
          C~_t = tanh(X_t W_xc + H_{t-1} W_hc + b_c)                candidate cell
          C_t = F_t * C_{t-1} + I_t * C~_t,   H_t = O_t * tanh(C_t)  state (H, C)

Every cell has the same interface (a ``Cell``): ``init(key, num_inputs, num_hiddens,
sigma)``, ``init_state(batch_size, num_hiddens)``, and ``step(params, state, x) ->
(state, output)``, the equations above written as in the book: the reference.

``recurrence(params, XW, state)`` runs the same cell over a whole sequence, faster; the
tests hold it equal to a Python loop of ``step``:

* the input side ``X_t W_x + b`` of all gates is computed for all T steps before the
  scan, as one ``(D, G H)`` matmul, or a row gather for one-hot tokens (``project``,
  ``project_tokens``);
* inside the scan, one fused ``H_{t-1} W_h`` per step for all gates (the GRU needs a
  second, ``(R_t * H_{t-1}) W_hh``: its candidate's matmul waits for the reset gate);
* the backward pass (a hand-written VJP per cell) keeps only the gate algebra and the
  ``dA W_h^T`` matmul inside the reverse scan and computes the weight gradient as one
  ``(H, T B) @ (T B, G H)`` matmul after it, rather than ``T`` outer products inside;
  what depends on the forward pass alone (``phi'``, the GRU's gate derivatives) is
  computed for all T before that scan;
* ``W_h^T`` is made once, before the reverse scan. Written inside it, XLA folds the
  transpose into every step's product, and on CPU that product runs ~30% slower
  (``(32, 1024) @ (1024, 256)``: 144 against 205 GFLOP/s on one core);
* the LSTM's forward step also saves its local derivatives (what ``dA`` is per unit of
  ``dc`` or ``dh``, ``dc/dh`` and ``dc_t/dc_{t-1}``), so the reverse step is two
  multiply-adds, one product and the matmul, with no activation recomputed.

The fused matrices are concatenated from the book-named parameters inside the jitted
function, so the pytree keeps the book's names.

Every transformation works on the recurrences, hence on ``scan``, ``bidirectional`` and
the model's ``apply``, ``forward`` and ``step``: ``grad``, ``jvp``, ``jacfwd``,
``jacrev``, ``vmap``, and their compositions (HVPs forward-over-reverse and
reverse-over-forward). A ``jax.custom_vjp`` cannot be differentiated in forward mode,
and a ``jax.custom_jvp`` gets its reverse mode by transposing its JVP rule, so each
recurrence is a ``custom_jvp`` whose JVP rule is its hand-written VJP *transposed*
(``vjp_both_modes``): ``jax.linear_transpose`` of ``bwd`` with the residuals of ``fwd``.
That tangent is exact (the JVP of a function is the transpose of its VJP), and reverse
mode transposes it back into the same reverse scan and post-scan weight matmul as the
hand-written VJP, so the train step (``jax.value_and_grad`` of ``apply``) keeps its speed
(``benchmarks/forward_mode.py``: rnn and LSTM unchanged, the GRU 1-2% slower);
``tests/test_cells.py`` checks the gradient's shape (one forward and one reverse scan
per layer, only the ``W_h^T`` matmuls inside the reverse one). The alternatives it avoids: the
plain scan's autodiff (an outer product per reverse step) everywhere, or a fast-VJP
flag that every caller of ``apply`` would have to set for reverse mode.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax import linear_cells
from rnn_jax.config import GATES, LINEAR_CELLS, SCANS

Params = dict[str, jax.Array]
State = Any  # H (B, H), or (H, C) for the LSTM
Sequence = jax.Array  # (T, B, H)


class Cell(NamedTuple):
    """One recurrent cell: its parameters, state, book step and fast recurrence."""

    name: str
    gates: tuple[str, ...]  # suffixes of the weight blocks, in the order they are fused
    init: Callable[..., Params]  # (key, num_inputs, num_hiddens, sigma=0.01, init=) -> Params
    init_state: Callable[..., State]  # (batch_size, num_hiddens, dtype=float32) -> State
    step: Callable[..., tuple[State, jax.Array]]  # (params, state, x (B, D)) -> (state, (B, H))
    recurrence: Callable[..., tuple[Sequence, State]]  # (params, XW (T, B, G H), state)


def init_gates(
    gates: tuple[str, ...],
    key: jax.Array,
    num_inputs: int,
    num_hiddens: int,
    sigma: float = 0.01,
    init: str = "normal",
    *,
    hidden: bool = True,
) -> Params:
    """``W_x?`` ``(D, H)``, ``W_h?`` ``(H, H)`` and ``b_?`` ``(H,)`` for each gate (no
    ``W_h?`` with ``hidden=False``: the min-cells' gates read the input alone).

    ``init="normal"``: the book's weights ~ N(0, sigma^2), biases zero. ``"uniform"``:
    PyTorch's ``nn.RNN/GRU/LSTM`` default, every weight and bias ~ U(-1/sqrt(H),
    1/sqrt(H)) (``sigma`` unused). PyTorch keeps two biases per gate, ``b_ih + b_hh``,
    both drawn so; the book's cells have one, drawn once.
    """
    params = {}
    for gate, k in zip(gates, jax.random.split(key, len(gates)), strict=True):
        if init == "normal":
            k_x, k_h = jax.random.split(k)
            params[f"W_x{gate}"] = sigma * jax.random.normal(k_x, (num_inputs, num_hiddens))
            if hidden:
                params[f"W_h{gate}"] = sigma * jax.random.normal(k_h, (num_hiddens, num_hiddens))
            params[f"b_{gate}"] = jnp.zeros((num_hiddens,))
        elif init == "uniform":
            k_x, k_h, k_b = jax.random.split(k, 3)
            bound = 1 / num_hiddens**0.5
            uniform = functools.partial(jax.random.uniform, minval=-bound, maxval=bound)
            params[f"W_x{gate}"] = uniform(k_x, (num_inputs, num_hiddens))
            if hidden:
                params[f"W_h{gate}"] = uniform(k_h, (num_hiddens, num_hiddens))
            params[f"b_{gate}"] = uniform(k_b, (num_hiddens,))
        else:
            raise ValueError(f"init must be normal or uniform, got {init!r}")
    return params


def zeros_state(batch_size: int, num_hiddens: int, dtype: Any = jnp.float32) -> jax.Array:
    return jnp.zeros((batch_size, num_hiddens), dtype)


def lstm_state(batch_size: int, num_hiddens: int, dtype: Any = jnp.float32) -> State:
    """``(H, C)``, both zeros ``(B, H)``."""
    return zeros_state(batch_size, num_hiddens, dtype), zeros_state(batch_size, num_hiddens, dtype)


# ------------------------------------------------------------------ the book's steps


def rnn_step(
    params: Params, H: jax.Array, X: jax.Array, nonlinearity: str = "tanh"
) -> tuple[jax.Array, jax.Array]:
    phi = _ACTIVATIONS[nonlinearity]
    H = phi(X @ params["W_xh"] + H @ params["W_hh"] + params["b_h"])
    return H, H


def gru_step(params: Params, H: jax.Array, X: jax.Array) -> tuple[jax.Array, jax.Array]:
    p = params
    Z = jax.nn.sigmoid(X @ p["W_xz"] + H @ p["W_hz"] + p["b_z"])
    R = jax.nn.sigmoid(X @ p["W_xr"] + H @ p["W_hr"] + p["b_r"])
    H_tilde = jnp.tanh(X @ p["W_xh"] + (R * H) @ p["W_hh"] + p["b_h"])
    H = Z * H + (1 - Z) * H_tilde
    return H, H


def lstm_step(params: Params, state: State, X: jax.Array) -> tuple[State, jax.Array]:
    p = params
    H, C = state
    I = jax.nn.sigmoid(X @ p["W_xi"] + H @ p["W_hi"] + p["b_i"])
    F = jax.nn.sigmoid(X @ p["W_xf"] + H @ p["W_hf"] + p["b_f"])
    O = jax.nn.sigmoid(X @ p["W_xo"] + H @ p["W_ho"] + p["b_o"])
    C_tilde = jnp.tanh(X @ p["W_xc"] + H @ p["W_hc"] + p["b_c"])
    C = F * C + I * C_tilde
    H = O * jnp.tanh(C)
    return (H, C), H


_ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


# ------------------------------------------------------------------ input projection


def fused_input(cell: Cell, params: Params) -> tuple[jax.Array, jax.Array]:
    """``W_x`` ``(D, G H)`` and ``b`` ``(G H,)``: every gate's input weights side by side."""
    W_x = jnp.concatenate([params[f"W_x{g}"] for g in cell.gates], axis=1)
    b = jnp.concatenate([params[f"b_{g}"] for g in cell.gates])
    return W_x, b


def project(cell: Cell, params: Params, X: jax.Array) -> jax.Array:
    """``X W_x + b`` ``(T, B, G H)`` for dense inputs ``X`` ``(T, B, D)``: one matmul."""
    W_x, b = fused_input(cell, params)
    return X @ W_x + b


def project_tokens(cell: Cell, params: Params, tokens: jax.Array) -> jax.Array:
    """The same for one-hot inputs given as int ``tokens`` ``(T, B)``: ``one_hot(x) W == W[x]``."""
    W_x, b = fused_input(cell, params)
    return W_x[tokens] + b


def scan(cell: Cell, params: Params, X: jax.Array, state: State) -> tuple[Sequence, State]:
    """Run ``cell`` over dense ``X`` ``(T, B, D)``: outputs ``(T, B, H)`` and the final state."""
    return cell.recurrence(params, project(cell, params, X), state)


# ------------------------------------------------------------------ both modes from one VJP


def vjp_both_modes(
    fwd: Callable[..., tuple[Any, Any]],
    bwd: Callable[..., Any],
    nondiff_argnums: tuple[int, ...] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate ``f`` (which returns ``fwd(*args)[0]``) with a hand-written VJP that serves
    forward mode too.

    ``fwd(*args) -> (outputs, residuals)`` and ``bwd(residuals, cotangents) -> one
    cotangent per differentiable argument`` are a ``jax.custom_vjp`` pair (the static
    ``nondiff_argnums`` first in both, as ``custom_vjp`` passes them). ``f`` becomes a
    ``jax.custom_jvp`` whose tangent is ``bwd`` transposed (``jax.linear_transpose``):
    exact, the JVP being the transpose of the VJP. Reverse mode transposes that tangent
    back, which is ``bwd`` again. So ``bwd`` must be linear in ``cotangents``, with what
    depends on the residuals alone computed outside its scans: such values are hoisted
    into the forward pass, and inside a scan they would cost a scan of their own.
    """

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        f = jax.custom_jvp(f, nondiff_argnums=nondiff_argnums)

        def jvp(*args):
            *static, primals, tangents = args
            outputs, residuals = fwd(*static, *primals)
            vjp = functools.partial(bwd, *static, residuals)
            (tangent_out,) = jax.linear_transpose(vjp, outputs)(tuple(tangents))
            return outputs, tangent_out

        f.defjvp(jvp)
        return f

    return decorate


# ------------------------------------------------------------------ rnn recurrence


def _sum_outer(A: jax.Array, dZ: jax.Array) -> jax.Array:
    """``sum_t A_t^T dZ_t`` for ``(T, B, I)``, ``(T, B, J)``: one ``(I, T B) @ (T B, J)`` matmul.

    Traced on a mesh (``step.make_train_step`` sets it as the abstract mesh) the rows B are
    split over the devices, and merging them into T B would all-gather both operands to
    every device, each then computing the whole product. There the same sum is written
    over ``t`` and ``b`` together, which XLA partitions into each device's own product and
    an all-reduce of the ``(I, J)`` result. On one device that form costs a transposed copy
    of ``dZ``, so the book's path keeps the reshape.
    """
    if not jax.sharding.get_abstract_mesh().empty:
        return jnp.einsum("tbi,tbj->ij", A, dZ)
    return A.reshape(-1, A.shape[-1]).T @ dZ.reshape(-1, dZ.shape[-1])


def rnn_recurrence(
    params: Params, XW: jax.Array, H0: jax.Array, nonlinearity: str = "tanh"
) -> tuple[Sequence, jax.Array]:
    return activation_recurrence(nonlinearity, params["W_hh"], XW, H0)


def _activation_fwd(nonlinearity, W_hh, XW, h0):
    phi = _ACTIVATIONS[nonlinearity]

    def step(h, xw):
        h = phi(xw + h @ W_hh)
        return h, h

    h_T, Hs = jax.lax.scan(step, h0, XW)
    return (Hs, h_T), (W_hh, Hs, h0)


def _activation_bwd(nonlinearity, residuals, cotangents):
    W_hh, Hs, h0 = residuals
    dHs, dh_T = cotangents
    W_hh_T = W_hh.T  # made once, outside the reverse scan
    dphi = _activation_grad(nonlinearity, Hs)  # (T, B, H), outside it too

    def step(dh, xs):
        dh_out, dphi_t = xs
        dz = (dh + dh_out) * dphi_t
        return dz @ W_hh_T, dz

    dh0, dZ = jax.lax.scan(step, dh_T, (dHs, dphi), reverse=True)
    H_prev = jnp.concatenate([h0[None], Hs[:-1]])  # h_{t-1} for every t
    return _sum_outer(H_prev, dZ), dZ, dh0


def _activation_grad(nonlinearity: str, h: jax.Array) -> jax.Array:
    """``phi'(z)`` written with ``h = phi(z)``: ``1 - h^2`` for tanh, ``h > 0`` for relu."""
    if nonlinearity == "tanh":
        return 1 - h * h
    return (h > 0).astype(h.dtype)


@vjp_both_modes(_activation_fwd, _activation_bwd, nondiff_argnums=(0,))
def activation_recurrence(
    nonlinearity: str, W_hh: jax.Array, XW: jax.Array, h0: jax.Array
) -> tuple[Sequence, jax.Array]:
    """``h_t = phi(XW_t + h_{t-1} W_hh)`` for t = 1..T; all ``h_t`` ``(T, B, H)`` and ``h_T``."""
    return _activation_fwd(nonlinearity, W_hh, XW, h0)[0]


# ------------------------------------------------------------------ gru recurrence


def gru_recurrence(params: Params, XW: jax.Array, H0: jax.Array) -> tuple[Sequence, jax.Array]:
    W_hzr = jnp.concatenate([params["W_hz"], params["W_hr"]], axis=1)  # (H, 2H)
    return _gru(W_hzr, params["W_hh"], XW, H0)


def _gru_fwd(W_hzr, W_hh, XW, h0):
    H = h0.shape[-1]

    def step(h, xw):
        zr = jax.nn.sigmoid(xw[:, : 2 * H] + h @ W_hzr)
        z, r = zr[:, :H], zr[:, H:]
        cand = jnp.tanh(xw[:, 2 * H :] + (r * h) @ W_hh)
        h = z * h + (1 - z) * cand
        return h, (h, z, r, cand)

    h_T, (Hs, Z, R, Cand) = jax.lax.scan(step, h0, XW)
    return (Hs, h_T), (W_hzr, W_hh, h0, Hs, Z, R, Cand)


def _gru_bwd(residuals, cotangents):
    W_hzr, W_hh, h0, Hs, Z, R, Cand = residuals
    dHs, dh_T = cotangents
    H_prev = jnp.concatenate([h0[None], Hs[:-1]])
    W_hh_T, W_hzr_T = W_hh.T, W_hzr.T  # made once, outside the reverse scan
    # The local derivatives, for all T at once: d(pre-activation) of the candidate and the
    # z gate per unit of dh, of the r gate per unit of ds (the gradient of r * h).
    dcand_dh = (1 - Z) * (1 - Cand * Cand)
    dz_dh = (H_prev - Cand) * Z * (1 - Z)
    dr_ds = H_prev * R * (1 - R)

    def step(dh, xs):
        dh_out, z, r, dcand_dh_t, dz_dh_t, dr_ds_t = xs
        dh = dh + dh_out
        da_cand = dh * dcand_dh_t
        ds = da_cand @ W_hh_T  # through (r * h) W_hh
        da_zr = jnp.concatenate([dh * dz_dh_t, ds * dr_ds_t], axis=1)
        dh_prev = dh * z + ds * r + da_zr @ W_hzr_T
        return dh_prev, (da_zr, da_cand)

    xs = (dHs, Z, R, dcand_dh, dz_dh, dr_ds)
    dh0, (dA_zr, dA_cand) = jax.lax.scan(step, dh_T, xs, reverse=True)
    dW_hzr = _sum_outer(H_prev, dA_zr)
    dW_hh = _sum_outer(R * H_prev, dA_cand)
    return dW_hzr, dW_hh, jnp.concatenate([dA_zr, dA_cand], axis=-1), dh0


@vjp_both_modes(_gru_fwd, _gru_bwd)
def _gru(W_hzr, W_hh, XW, h0):
    """The GRU over ``XW`` ``(T, B, 3H)`` (z, r, candidate blocks), from ``h0``."""
    return _gru_fwd(W_hzr, W_hh, XW, h0)[0]


# ------------------------------------------------------------------ lstm recurrence


def lstm_recurrence(params: Params, XW: jax.Array, state: State) -> tuple[Sequence, State]:
    W_h = jnp.concatenate([params[f"W_h{g}"] for g in GATES["lstm"]], axis=1)  # (H, 4H)
    return _lstm(W_h, XW, state)


def _lstm_fwd(W_h, XW, state):
    H = state[0].shape[-1]

    def step(carry, xw):
        h, c_prev = carry
        a = xw + h @ W_h
        ifo = jax.nn.sigmoid(a[:, : 3 * H])
        i, f, o = ifo[:, :H], ifo[:, H : 2 * H], ifo[:, 2 * H :]
        cand = jnp.tanh(a[:, 3 * H :])
        c = f * c_prev + i * cand
        tanh_c = jnp.tanh(c)
        h = o * tanh_c
        # The backward pass needs only these local derivatives: d(pre-activation) of the
        # four gate blocks per unit of dc (i, f, candidate) or dh (o), and dc/dh, dc/dc_prev.
        ifo_grad = ifo * (1 - ifo) * jnp.concatenate([cand, c_prev, tanh_c], axis=1)
        jac = jnp.concatenate([ifo_grad, i * (1 - cand * cand)], axis=1)  # (B, 4H)
        return (h, c), (h, jac, o * (1 - tanh_c * tanh_c), f)

    state_T, (Hs, Jac, dC_dH, F) = jax.lax.scan(step, state, XW)
    return (Hs, state_T), (W_h, state[0], Hs, Jac, dC_dH, F)


def _lstm_bwd(residuals, cotangents):
    W_h, h0, Hs, Jac, dC_dH, F = residuals
    dHs, (dh_T, dc_T) = cotangents
    W_h_T = W_h.T  # made once, outside the reverse scan

    def step(carry, xs):
        dh, dc = carry
        dh_out, jac, dc_dh, f = xs
        dh = dh + dh_out
        dc = dc + dh * dc_dh
        da = jac * jnp.concatenate([dc, dc, dh, dc], axis=1)  # i, f, o, candidate blocks
        return (da @ W_h_T, dc * f), da

    (dh0, dc0), dA = jax.lax.scan(step, (dh_T, dc_T), (dHs, Jac, dC_dH, F), reverse=True)
    H_prev = jnp.concatenate([h0[None], Hs[:-1]])
    return _sum_outer(H_prev, dA), dA, (dh0, dc0)


@vjp_both_modes(_lstm_fwd, _lstm_bwd)
def _lstm(W_h, XW, state):
    """The LSTM over ``XW`` ``(T, B, 4H)`` (i, f, o, candidate blocks), from ``(h0, c0)``."""
    return _lstm_fwd(W_h, XW, state)[0]


# ------------------------------------------------------------------ registry


def _rnn_cell(nonlinearity: str, scan: str) -> Cell:
    step = functools.partial(rnn_step, nonlinearity=nonlinearity)
    recurrence = functools.partial(rnn_recurrence, nonlinearity=nonlinearity)
    return Cell("rnn", GATES["rnn"], _init("rnn"), zeros_state, step, recurrence)


def _gru_cell(nonlinearity: str, scan: str) -> Cell:
    return Cell("gru", GATES["gru"], _init("gru"), zeros_state, gru_step, gru_recurrence)


def _lstm_cell(nonlinearity: str, scan: str) -> Cell:
    return Cell("lstm", GATES["lstm"], _init("lstm"), lstm_state, lstm_step, lstm_recurrence)


def _mingru_cell(nonlinearity: str, scan: str) -> Cell:
    recurrence = functools.partial(
        linear_cells.min_recurrence, linear_cells.mingru_coefficients, scan
    )
    init = functools.partial(init_gates, GATES["mingru"], hidden=False)
    return Cell("mingru", GATES["mingru"], init, zeros_state, linear_cells.mingru_step, recurrence)


def _minlstm_cell(nonlinearity: str, scan: str) -> Cell:
    recurrence = functools.partial(
        linear_cells.min_recurrence, linear_cells.minlstm_coefficients, scan
    )
    init = functools.partial(init_gates, GATES["minlstm"], hidden=False)
    step = linear_cells.minlstm_step
    return Cell("minlstm", GATES["minlstm"], init, zeros_state, step, recurrence)


def _lru_cell(nonlinearity: str, scan: str) -> Cell:
    recurrence = functools.partial(linear_cells.lru_recurrence, scan)
    lru = linear_cells
    return Cell("lru", GATES["lru"], lru.lru_init, lru.lru_state, lru.lru_step, recurrence)


def _init(name: str) -> Callable[..., Params]:
    return functools.partial(init_gates, GATES[name])


# Each cell of ``config.GATES`` by name: a function of the rnn's nonlinearity and the scan
# mode (``config.SCANS``, for the cells of ``config.LINEAR_CELLS``) to its ``Cell``.
REGISTRY: dict[str, Callable[[str, str], Cell]] = {
    "rnn": _rnn_cell,
    "gru": _gru_cell,
    "lstm": _lstm_cell,
    "mingru": _mingru_cell,
    "minlstm": _minlstm_cell,
    "lru": _lru_cell,
}


def get(name: str, nonlinearity: str = "tanh", scan: str = "sequential") -> Cell:
    """The cell called ``name`` (a key of ``REGISTRY``); ``nonlinearity`` is the rnn's,
    ``scan`` how a linear cell runs over time."""
    if name not in REGISTRY:
        raise ValueError(f"cell must be one of {tuple(REGISTRY)}, got {name!r}")
    if nonlinearity not in _ACTIVATIONS:
        raise ValueError(f"nonlinearity must be one of {tuple(_ACTIVATIONS)}, got {nonlinearity!r}")
    if nonlinearity != "tanh" and name != "rnn":
        raise ValueError(f"nonlinearity applies to the rnn cell only, not {name!r}")
    if scan not in SCANS:
        raise ValueError(f"scan must be one of {SCANS}, got {scan!r}")
    if scan != "sequential" and name not in LINEAR_CELLS:
        raise ValueError(f"scan {scan} needs a cell linear in its state, not {name!r}")
    return REGISTRY[name](nonlinearity, scan)


# ------------------------------------------------------------------ bidirectional


def init_bidirectional(
    cell: Cell, key: jax.Array, num_inputs: int, num_hiddens: int, sigma: float = 0.01
) -> dict[str, Params]:
    """Two independent cells: ``{"forward": ..., "backward": ...}``."""
    k_f, k_b = jax.random.split(key)
    return {
        "forward": cell.init(k_f, num_inputs, num_hiddens, sigma),
        "backward": cell.init(k_b, num_inputs, num_hiddens, sigma),
    }


def bidirectional(
    cell: Cell, params: dict[str, Params], X: jax.Array, state: tuple[State, State]
) -> tuple[jax.Array, tuple[State, State]]:
    """A bidirectional layer (D2L 10.4) over ``X`` ``(T, B, D)``: outputs ``(T, B, 2H)``.

    Output ``t`` concatenates the forward cell's state after ``x_1..x_t`` with the backward
    cell's state after ``x_T..x_t``. That makes it an encoder block only: as a language
    model, output ``t`` would already have read ``x_{t+1}``, the very token it is asked
    to predict (a perplexity near 1 that means nothing), and generation has no future
    tokens to run the backward cell over.
    """
    Y_f, state_f = scan(cell, params["forward"], X, state[0])
    Y_b, state_b = scan(cell, params["backward"], X[::-1], state[1])
    return jnp.concatenate([Y_f, Y_b[::-1]], axis=-1), (state_f, state_b)
