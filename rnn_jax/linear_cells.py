"""Recurrences linear in their state, which train in parallel over time: minGRU and minLSTM
(Feng et al., 2024, "Were RNNs All We Needed?") and the Linear Recurrent Unit (Orvieto et
al., 2023, "Resurrecting Recurrent Neural Networks for Long Sequences").

Shape legend: B batch, T time, D num_inputs, H num_hiddens (also the LRU's state size).

    mingru   Z_t = sigmoid(X_t W_xz + b_z),   H~_t = g(X_t W_xh + b_h)
             H_t = (1 - Z_t) * H_{t-1} + Z_t * H~_t
    minlstm  F_t = sigmoid(X_t W_xf + b_f),   I_t = sigmoid(X_t W_xi + b_i),   H~_t as above
             H_t = F_t / (F_t + I_t) * H_{t-1} + I_t / (F_t + I_t) * H~_t
    lru      Lambda = exp(-exp(nu_log) + i exp(theta_log))          diagonal, |Lambda| < 1
             S_t = Lambda * S_{t-1} + exp(gamma_log) * (X_t B + b),  B = W_xre + i W_xim
             H_t = gelu(Re(S_t C) + X_t W_xd + b_d),                 C = C_re + i C_im

``g(x) = x + 1/2`` for ``x >= 0`` and ``sigmoid(x)`` below: positive and continuous, so a
min-cell's state, a convex combination of positive candidates started from zero, stays
positive and its logarithm exists (the paper's log-space form needs that). Unlike the
book's cells, the gates and candidates read the input alone, never ``H_{t-1}``.

Each update is ``H_t = A_t * H_{t-1} + B_t`` with ``A_t``, ``B_t`` computed from the inputs
for all T at once (the input projection ``XW`` is hoisted out of time as for the book's
cells: ``cells.project`` and ``cells.project_tokens``). Two such steps compose into one,
``(A_1, B_1)`` then ``(A_2, B_2)`` is ``(A_2 A_1, A_2 B_1 + B_2)``, an associative operation,
so ``jax.lax.associative_scan`` computes every ``H_t`` in O(log T) depth (``scan=
"associative"``); ``scan="sequential"`` is the reference ``lax.scan`` of the update. The
carried state ``H_0`` (which lets sequential minibatches carry state across windows) is
folded into the first element: ``B_1 <- A_1 H_0 + B_1``.

The min-cells' associative scan is the paper's log-space form: it composes ``(log A,
log B)`` with ``logaddexp``, so products of many gates below one underflow gracefully
rather than to zero divided by zero. The LRU's runs in complex64 (its state is carried as
the pair ``(Re S, Im S)`` of float32 arrays, so checkpoints and samplers see real arrays),
and every recurrence here runs in float32 even under ``compute_dtype="bfloat16"``: the
input projection and the head run in bfloat16, the recurrence on the float32 cast.

Between stacked layers sits what sits between the book's cells: the model's dropout,
nothing else (the papers wrap each layer in a residual block with a norm and an MLP).
All use plain autodiff (no hand-written VJP): the scans' own derivatives are already a
scan of the same kind backwards. Flax (0.12) has none of the three (its ``MGUCell``, the
minimal gated unit, still reads ``H_{t-1}`` in its gates), so they have no Flax twins.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

Params = dict[str, jax.Array]
SCANS = ("sequential", "associative")

# The LRU's ring initialisation: eigenvalues uniform on the ring r_min <= |lambda| <= r_max
# with phases in [0, max_phase]: the paper's values for its long-range tasks (memories of
# 10 to 1,000 steps; max_phase 2 pi, all phases).
R_MIN, R_MAX, MAX_PHASE = 0.9, 0.999, 2 * math.pi


# ------------------------------------------------------------------ the min-cells' steps


def g(x: jax.Array) -> jax.Array:
    """The paper's positive activation: ``x + 1/2`` for ``x >= 0``, ``sigmoid(x)`` below."""
    return jnp.where(x >= 0, x + 0.5, jax.nn.sigmoid(x))


def log_g(x: jax.Array) -> jax.Array:
    """``log(g(x))``, written so that neither branch overflows."""
    return jnp.where(x >= 0, jnp.log(jnp.maximum(x, 0) + 0.5), -jax.nn.softplus(-x))


def mingru_step(params: Params, H: jax.Array, X: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One minGRU step as the paper writes it: ``H`` ``(B, H)``, ``X`` ``(B, D)``."""
    Z = jax.nn.sigmoid(X @ params["W_xz"] + params["b_z"])
    H_tilde = g(X @ params["W_xh"] + params["b_h"])
    H = (1 - Z) * H + Z * H_tilde
    return H, H


def minlstm_step(params: Params, H: jax.Array, X: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One minLSTM step, with the normalised forget and input gates."""
    F = jax.nn.sigmoid(X @ params["W_xf"] + params["b_f"])
    I = jax.nn.sigmoid(X @ params["W_xi"] + params["b_i"])
    H_tilde = g(X @ params["W_xh"] + params["b_h"])
    H = F / (F + I) * H + I / (F + I) * H_tilde
    return H, H


# ------------------------------------------------------------------ the min-cells' sequences


def mingru_coefficients(XW: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(log A, log B)`` ``(T, B, H)`` from ``XW`` ``(T, B, 2H)`` (z, candidate blocks):
    ``log(1 - Z) = -softplus(k)``, ``log Z = -softplus(-k)``."""
    k, h = jnp.split(XW, 2, axis=-1)
    return -jax.nn.softplus(k), -jax.nn.softplus(-k) + log_g(h)


def minlstm_coefficients(XW: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The same from ``XW`` ``(T, B, 3H)`` (f, i, candidate blocks). With ``d = log I -
    log F = softplus(-k_f) - softplus(-k_i)``: ``log(F / (F + I)) = -softplus(d)`` and
    ``log(I / (F + I)) = -softplus(-d)``."""
    k_f, k_i, h = jnp.split(XW, 3, axis=-1)
    d = jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i)
    return -jax.nn.softplus(d), -jax.nn.softplus(-d) + log_g(h)


def min_recurrence(
    coefficients: Any, scan: str, params: Params, XW: jax.Array, H0: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """A min-cell over ``XW`` ``(T, B, G H)`` from ``H0`` ``(B, H)``: ``(T, B, H)``, ``H_T``.

    ``params`` is unused: the cell's weights are all in the input projection ``XW``.
    """
    dtype, work = XW.dtype, _float32_at_least(XW.dtype)
    log_A, log_B = coefficients(XW.astype(work))
    H0 = H0.astype(work)
    if scan == "sequential":
        Hs, H_T = linear_scan(jnp.exp(log_A), jnp.exp(log_B), H0)
    else:
        Hs, H_T = log_space_scan(log_A, log_B, H0)
    return Hs.astype(dtype), H_T.astype(dtype)


# ------------------------------------------------------------------ the two scans


def linear_scan(A: jax.Array, B: jax.Array, H0: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The reference: ``H_t = A_t * H_{t-1} + B_t`` in a ``lax.scan``; ``(T, ...)``, ``H_T``."""

    def step(H, AB):
        H = AB[0] * H + AB[1]
        return H, H

    H_T, Hs = jax.lax.scan(step, H0, (A, B))
    return Hs, H_T


def associative_scan(A: jax.Array, B: jax.Array, H0: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The same recurrence by ``jax.lax.associative_scan`` over time: O(log T) depth."""
    B = B.at[0].add(A[0] * H0)
    _, Hs = jax.lax.associative_scan(_compose, (A, B))
    return Hs, Hs[-1]


def _compose(first: tuple[jax.Array, jax.Array], second: tuple[jax.Array, jax.Array]):
    """``(A_1, B_1)`` then ``(A_2, B_2)``: ``H -> A_2 (A_1 H + B_1) + B_2``."""
    (A_1, B_1), (A_2, B_2) = first, second
    return A_2 * A_1, A_2 * B_1 + B_2


def log_space_scan(
    log_A: jax.Array, log_B: jax.Array, H0: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The associative scan on logarithms, for positive ``A``, ``B`` and ``H0 >= 0`` (the
    min-cells'): ``log H_t = logaddexp(log A_t + log H_{t-1}, log B_t)``.

    ``H0`` is folded in before the logarithm, ``log(A_1 H0 + B_1)``, so that a zero state
    has a derivative (``log H0`` would have none at zero).
    """
    log_B = log_B.at[0].set(jnp.log(jnp.exp(log_A[0]) * H0 + jnp.exp(log_B[0])))
    _, log_H = jax.lax.associative_scan(_compose_log, (log_A, log_B))
    Hs = jnp.exp(log_H)
    return Hs, Hs[-1]


def _compose_log(first: tuple[jax.Array, jax.Array], second: tuple[jax.Array, jax.Array]):
    (log_A_1, log_B_1), (log_A_2, log_B_2) = first, second
    return log_A_2 + log_A_1, jnp.logaddexp(log_A_2 + log_B_1, log_B_2)


SCAN_FUNCTIONS = {"sequential": linear_scan, "associative": associative_scan}


# ------------------------------------------------------------------ the LRU


def lru_init(
    key: jax.Array,
    num_inputs: int,
    num_hiddens: int,
    sigma: float = 0.01,
    init: str = "normal",
    *,
    r_min: float = R_MIN,
    r_max: float = R_MAX,
    max_phase: float = MAX_PHASE,
) -> Params:
    """The paper's initialisation (``sigma`` and ``init`` are the book cells' and unused).

    Eigenvalues uniform on the ring ``r_min <= |lambda| <= r_max``, phases in ``[0,
    max_phase]``, stored as ``nu_log``, ``theta_log`` ``(H,)`` (``lambda = exp(-exp(nu_log)
    + i exp(theta_log))``); ``gamma_log = log sqrt(1 - |lambda|^2)`` ``(H,)`` keeps the
    state's scale that of its input; ``B = W_xre + i W_xim`` ``(D, H)`` ~ N(0, 1/(2D)) each
    part; ``C = C_re + i C_im`` ``(H, H)`` ~ N(0, 1/H); the skip ``W_xd`` ``(D, H)`` ~
    N(0, 1/D); biases zero.
    """
    D, H = num_inputs, num_hiddens
    k_u1, k_u2, k_bre, k_bim, k_cre, k_cim, k_d = jax.random.split(key, 7)
    u1, u2 = jax.random.uniform(k_u1, (H,)), jax.random.uniform(k_u2, (H,))
    nu_log = jnp.log(-0.5 * jnp.log(u1 * (r_max**2 - r_min**2) + r_min**2))
    theta_log = jnp.log(max_phase * u2)
    modulus = jnp.exp(-jnp.exp(nu_log))
    return {
        "nu_log": nu_log,
        "theta_log": theta_log,
        "gamma_log": jnp.log(jnp.sqrt(1 - modulus**2)),
        "W_xre": jax.random.normal(k_bre, (D, H)) / math.sqrt(2 * D),
        "W_xim": jax.random.normal(k_bim, (D, H)) / math.sqrt(2 * D),
        "W_xd": jax.random.normal(k_d, (D, H)) / math.sqrt(D),
        "b_re": jnp.zeros((H,)),
        "b_im": jnp.zeros((H,)),
        "b_d": jnp.zeros((H,)),
        "C_re": jax.random.normal(k_cre, (H, H)) / math.sqrt(H),
        "C_im": jax.random.normal(k_cim, (H, H)) / math.sqrt(H),
    }


def lru_state(batch_size: int, num_hiddens: int, dtype: Any = jnp.float32) -> tuple:
    """``(Re S, Im S)``, both zeros ``(B, H)``."""
    zeros = functools.partial(jnp.zeros, (batch_size, num_hiddens), dtype)
    return zeros(), zeros()


def lru_eigenvalues(params: Params) -> jax.Array:
    """``lambda`` ``(H,)``, complex64 (complex128 in float64) whatever the compute dtype."""
    work = _float32_at_least(params["nu_log"].dtype)
    nu, theta = (params[k].astype(work) for k in ("nu_log", "theta_log"))
    return jnp.exp(-jnp.exp(nu) + 1j * jnp.exp(theta))


def _float32_at_least(dtype: Any) -> Any:
    """The recurrences' dtype: float32 for bfloat16 (or float32) compute, float64 in x64."""
    return jnp.promote_types(dtype, jnp.float32)


def _lru_output(params: Params, S: jax.Array, skip: jax.Array) -> jax.Array:
    """``gelu(Re(S C) + skip)``: ``Re(S C) = Re S C_re - Im S C_im``."""
    work = _float32_at_least(params["C_re"].dtype)
    C_re, C_im = params["C_re"].astype(work), params["C_im"].astype(work)
    return jax.nn.gelu(S.real @ C_re - S.imag @ C_im + skip)


def lru_step(params: Params, state: tuple, X: jax.Array) -> tuple[tuple, jax.Array]:
    """One LRU step as the paper writes it, on ``X`` ``(B, D)``."""
    S = jax.lax.complex(*state)
    gamma = jnp.exp(params["gamma_log"])
    BX = X @ params["W_xre"] + params["b_re"] + 1j * (X @ params["W_xim"] + params["b_im"])
    S = lru_eigenvalues(params) * S + gamma * BX
    H = _lru_output(params, S, X @ params["W_xd"] + params["b_d"])
    return (S.real, S.imag), H


def lru_recurrence(
    scan: str, params: Params, XW: jax.Array, state: tuple
) -> tuple[jax.Array, tuple]:
    """The LRU over ``XW`` ``(T, B, 3H)`` (re, im, skip blocks): ``(T, B, H)``, final state."""
    dtype, work = XW.dtype, _float32_at_least(XW.dtype)
    BX_re, BX_im, skip = jnp.split(XW.astype(work), 3, axis=-1)
    gamma = jnp.exp(params["gamma_log"].astype(work))
    A = jnp.broadcast_to(lru_eigenvalues(params), BX_re.shape)
    S0 = jax.lax.complex(*(s.astype(work) for s in state))
    Ss, S_T = SCAN_FUNCTIONS[scan](A, gamma * jax.lax.complex(BX_re, BX_im), S0)
    Hs = _lru_output(params, Ss, skip)
    return Hs.astype(dtype), (S_T.real.astype(dtype), S_T.imag.astype(dtype))
