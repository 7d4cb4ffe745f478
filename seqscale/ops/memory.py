"""End-to-end memory network pieces (Sukhbaatar et al. 2015): sentence encoding and one
soft read of a memory.

A memory network does not run over time: every sentence of the story is one memory slot,
written in parallel, and each *hop* reads all of them at once with a softmax over slots
(attention over sentences). K hops are K dependent steps, whatever the story's length.

Shapes (docs/DESIGN.md legend, plus M memory slots = sentences, J words per sentence):
``tokens_...J`` int ids (0 is padding), ``emb_...JD`` their embeddings.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqscale.ops.attention import MASKED_SCORE

Array = jax.Array


def position_encoding(num_words: int, features: int) -> Array:
  """The paper's position encoding table ``l_kj = (1 - j/J) - (k/d)(1 - 2j/J)``.

  Args:
    num_words: J, the sentence's number of words (j = 1..J, 1-based as in the paper).
    features: d, the embedding width (k = 1..d).

  Returns:
    ``[J, d]``: row j - 1, column k - 1 holds ``l_kj``.
  """
  j = jnp.arange(1, num_words + 1, dtype=jnp.float32)[:, None]  # [J, 1]
  k = jnp.arange(1, features + 1, dtype=jnp.float32)[None, :]  # [1, d]
  return (1.0 - j / num_words) - (k / features) * (1.0 - 2.0 * j / num_words)


def _position_weights(mask_NJ: Array, features: int) -> Array:
  """``l_kj`` with each sentence's own J (its number of real words); 0 at padding."""
  J_N1 = jnp.maximum(mask_NJ.sum(-1, keepdims=True), 1).astype(jnp.float32)[..., None]
  j_1J1 = jnp.arange(1, mask_NJ.shape[-1] + 1, dtype=jnp.float32)[:, None]
  k_11D = jnp.arange(1, features + 1, dtype=jnp.float32)[None, :]
  l_NJD = (1.0 - j_1J1 / J_N1) - (k_11D / features) * (1.0 - 2.0 * j_1J1 / J_N1)
  return l_NJD * mask_NJ[..., None]


def encode_sentences(emb_NJD: Array, mask_NJ: Array, *, position: bool) -> Array:
  """Sentence vectors ``sum_j l_j * emb_j`` (or the bag of words ``sum_j emb_j``).

  Args:
    emb_NJD: word embeddings ``[..., J, D]`` (any leading axes ``N``).
    mask_NJ: bool ``[..., J]``, True at real words (padding contributes nothing).
    position: multiply by the position encoding :func:`position_encoding`, with J the
      sentence's number of real words (the paper's J), words left-aligned.

  Returns:
    ``[..., D]``.
  """
  mask = mask_NJ.astype(emb_NJD.dtype)
  if position:
    weights_NJD = _position_weights(mask_NJ, emb_NJD.shape[-1]).astype(emb_NJD.dtype)
  else:
    weights_NJD = mask[..., None]
  return jnp.sum(weights_NJD * emb_NJD, axis=-2)


def memory_read(u_BD: Array, keys_BMD: Array, values_BMD: Array,
                mask_BM: Array | None = None) -> tuple[Array, Array]:
  """One hop's read: ``p = softmax_i(u . m_i)``, ``o = sum_i p_i c_i``.

  Args:
    u_BD: the controller state (the question after earlier hops) ``[B, D]``.
    keys_BMD: input memories ``m_i`` ``[B, M, D]``.
    values_BMD: output memories ``c_i`` ``[B, M, D]``.
    mask_BM: bool ``[B, M]``, True at real sentences; empty slots get probability 0.

  Returns:
    ``(o_BD, p_BM)``: the read vector and the attention over memory slots.
  """
  scores_BM = jnp.einsum("BD,BMD->BM", u_BD, keys_BMD).astype(jnp.float32)
  if mask_BM is not None:
    scores_BM = jnp.where(mask_BM, scores_BM, MASKED_SCORE)
  p_BM = jax.nn.softmax(scores_BM, axis=-1).astype(values_BMD.dtype)
  if mask_BM is not None:  # a story with no sentence reads nothing, not a uniform average
    p_BM = p_BM * mask_BM.any(-1, keepdims=True)
  return jnp.einsum("BM,BMD->BD", p_BM, values_BMD), p_BM


def temporal_index(mask_BM: Array, memory_size: int) -> Array:
  """Row of the temporal-encoding table for each slot: sentences counted from the question
  backwards (the last sentence is 0, as in the paper's reverse order), clipped to
  ``memory_size - 1``; sentences are left-aligned in the ``M`` slots.
  """
  n_B1 = mask_BM.sum(-1, keepdims=True)
  rev_BM = n_B1 - 1 - jnp.arange(mask_BM.shape[-1])[None, :]
  return jnp.clip(rev_BM, 0, memory_size - 1)
