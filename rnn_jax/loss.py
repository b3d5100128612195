"""Cross-entropy and perplexity (D2L 9.3.2).

Perplexity is ``exp`` of the token-weighted mean negative log-likelihood over a whole
split, never a mean of per-batch perplexities.
"""

from __future__ import annotations

import math

import jax
import optax


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of ``logits`` ``(..., V)`` against int ``targets`` ``(...)``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def total_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Summed negative log-likelihood (accumulate it, then divide by the token count)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).sum()


def perplexity(nll_sum: float, num_tokens: int) -> float:
    """``exp(nll_sum / num_tokens)``; ``inf`` when the mean overflows."""
    mean = float(nll_sum) / int(num_tokens)
    return math.exp(mean) if mean < 700 else math.inf


def bits_per_token(ppl: float) -> float:
    """``log2`` of perplexity: bits per character for char tokens, the unit character-level
    results are published in."""
    return math.log2(ppl) if ppl > 0 and math.isfinite(ppl) else math.inf
