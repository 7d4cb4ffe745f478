"""Losses and metrics as weighted sums, so batches and devices add up exactly.

Every function returns *sums* (``loss``, ``weight``, and for classes ``correct``,
``seq_correct``, ``seqs``); ``finalize`` divides. Summing before dividing is what makes the
mean over a sharded batch, over several devices or over an evaluation pass equal the mean
over one big batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array


def metric_sums(outputs: Array, targets: Array, weights: Array, regression: bool
                ) -> dict[str, Array]:
  """Weighted sums for one batch.

  Args:
    outputs: logits ``[B, T, C]`` / ``[B, C]`` (classes) or values ``[B, T]`` / ``[B]``.
    targets: int ``[B, T]`` / ``[B]`` (classes) or float, the shape of ``outputs``.
    weights: float, the shape of ``targets``; 0 where a position or example does not count.
    regression: squared error instead of cross-entropy.

  Returns:
    ``loss`` (sum of weighted cross-entropy or squared error) and ``weight``; for classes
    also ``correct`` and, for per-position targets, ``seq_correct`` (examples with every
    weighted position right) and ``seqs`` (examples with any weight).
  """
  w = weights.astype(jnp.float32)
  if regression:
    err = (outputs.astype(jnp.float32) - targets.astype(jnp.float32)) ** 2
    return {"loss": (w * err).sum(), "weight": w.sum()}
  logits = outputs.astype(jnp.float32)
  xent = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  hit = logits.argmax(-1) == targets
  sums = {"loss": (w * xent).sum(), "weight": w.sum(), "correct": (w * hit).sum()}
  if targets.ndim == 2:
    counts_B = (w > 0).any(axis=1)
    all_right_B = jnp.all(hit | (w == 0), axis=1) & counts_B
    sums["seq_correct"] = all_right_B.sum().astype(jnp.float32)
    sums["seqs"] = counts_B.sum().astype(jnp.float32)
  return sums


def finalize(sums: dict[str, float | Array]) -> dict[str, float | Array]:
  """Sums -> means: ``loss`` (mean cross-entropy or MSE), ``accuracy``, ``seq_accuracy``."""
  xp = np if isinstance(sums["weight"], (float, np.floating, np.ndarray)) else jnp
  weight = xp.maximum(sums["weight"], 1e-12)
  out = {"loss": sums["loss"] / weight}
  if "correct" in sums:
    out["accuracy"] = sums["correct"] / weight
  if "seq_correct" in sums:
    out["seq_accuracy"] = sums["seq_correct"] / xp.maximum(sums["seqs"], 1e-12)
  return out
