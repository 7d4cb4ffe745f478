"""Attention of a recurrent decoder over encoder states: additive and multiplicative scores.

One decoder query ``q_BD`` per step scores every encoder position ``s``:

  additive (Bahdanau et al. 2014):  e_s = v . tanh(q W_q + m_s W_m)      (``additive_scores``)
  multiplicative (Luong et al. 2015): e_s = q . (m_s W_m)  "general"       (``dot_scores``
                                      e_s = q . m_s         "dot"           on keys m W_m or m)

``softmax_over_source`` turns scores into weights that sum to one over the valid source
positions and are exactly zero on padding; ``context`` is the weighted sum of values.
The key projections ``m W_m`` depend only on the source, so a decoder computes them once
(``keys_BSA``) and every step costs O(S) work, not O(S * D^2).

Shapes: B batch, T target steps, S source length, D decoder width, A attention width,
M memory (encoder output) width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def additive_scores(q_BxD: Array, keys_BSA: Array, w_q_DA: Array, v_A: Array) -> Array:
  """Bahdanau scores ``v . tanh(q W_q + keys)`` for queries [B, D] or [B, T, D].

  Args:
    q_BxD: decoder queries, [B, D] (one step) or [B, T, D] (every step at once).
    keys_BSA: projected encoder states ``m W_m (+ b)``, [B, S, A].
    w_q_DA: query projection [D, A].
    v_A: the scoring vector [A].

  Returns:
    Scores [B, S] (or [B, T, S]).
  """
  qp = q_BxD @ w_q_DA  # [B, A] or [B, T, A]
  if qp.ndim == 2:
    return jnp.tanh(qp[:, None, :] + keys_BSA) @ v_A
  return jnp.tanh(qp[:, :, None, :] + keys_BSA[:, None, :, :]) @ v_A


def dot_scores(q_BxD: Array, keys_BSD: Array) -> Array:
  """Luong scores ``q . k_s`` for queries [B, D] or [B, T, D] -> [B, S] or [B, T, S]."""
  if q_BxD.ndim == 2:
    return jnp.einsum("BD,BSD->BS", q_BxD, keys_BSD)
  return jnp.einsum("BTD,BSD->BTS", q_BxD, keys_BSD)


def softmax_over_source(scores_BxS: Array, mask_BS: Array | None = None) -> Array:
  """Softmax over the last (source) axis; weight exactly 0 where ``mask_BS`` is False.

  ``mask_BS`` (bool [B, S], True at valid positions) broadcasts over a middle T axis. A row
  with no valid position gets all-zero weights (its context is zero), not NaN.
  """
  if mask_BS is None:
    return jax.nn.softmax(scores_BxS, axis=-1)
  mask = mask_BS if scores_BxS.ndim == 2 else mask_BS[:, None, :]
  return jax.nn.softmax(scores_BxS, axis=-1, where=mask) * mask


def context(weights_BxS: Array, values_BSM: Array) -> Array:
  """The weighted sum of values: [B, S] x [B, S, M] -> [B, M] (or [B, T, S] -> [B, T, M])."""
  if weights_BxS.ndim == 2:
    return jnp.einsum("BS,BSM->BM", weights_BxS, values_BSM)
  return jnp.einsum("BTS,BSM->BTM", weights_BxS, values_BSM)
