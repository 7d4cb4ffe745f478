"""End-To-End Memory Network (Sukhbaatar et al. 2015) for question answering.

Each story sentence is written to one memory slot twice, as an input memory
``m_i = sum_j l_j * A x_ij + T_A(i)`` and an output memory ``c_i`` (with C, T_C). The
question ``u = sum_j l_j * B q_j`` reads the memory in K hops::

  p = softmax(u . m_i),  o = sum_i p_i c_i,  u <- u + o       (each hop k = 1..K)
  answer logits = W u^{K+1} = W (u^K + o^K) over the vocabulary

``l`` is the position encoding (PE), ``T_A, T_C`` the temporal encoding (rows counted from
the question backwards). Weight tying:

- ``adjacent``: ``A^{k+1} = C^k``, ``B = A^1``, ``W^T = C^K`` (and ``T_A^{k+1} = T_C^k``):
  K + 1 embedding matrices in all;
- ``layerwise``: one A and one C shared by all hops, a separate B, ``u <- H u + o`` at
  every hop, the last included (the answer reads ``W u^{K+1} = W (H u^K + o^K)``), and a
  separate output matrix W. ``H`` is stored for row vectors: the code computes ``u @ H``.

Interface ``"qa"``: ``model(story_BMJ, query_BJ) -> logits_BV`` with int token ids (0 is
padding; sentences left-aligned in the M slots, words left-aligned in the J positions).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from seqscale.checks import check_int
from seqscale.models.registry import register
from seqscale.ops import memory as memory_ops

Array = jax.Array
TYINGS = ("adjacent", "layerwise")


@register("memn2n")
class MemN2N(nnx.Module):
  """End-to-end memory network: ``model(story_BMJ, query_BJ) -> logits_BV``.

  Args:
    vocab_size: V; token ids in ``[0, V)``, 0 is padding. The answer is a word: the
      logits cover the vocabulary (``out_features = V``).
    hidden_features: embedding width d.
    num_hops: K, memory reads (the paper uses 3).
    memory_size: rows of the temporal-encoding tables; sentences further back than
      ``memory_size - 1`` share the last row.
    tying: ``"adjacent"`` or ``"layerwise"`` (see the module docstring).
    position_encoding: weight words by PE (else a bag of words).
    temporal_encoding: add the learned temporal vectors T_A, T_C.
    init_scale: std of the normal initialisation (the paper's 0.1).
    dtype: computation dtype (parameters stay float32).
  """

  interface = "qa"

  def __init__(self, vocab_size: int, hidden_features: int, num_hops: int = 3,
               memory_size: int = 50, tying: str = "adjacent",
               position_encoding: bool = True, temporal_encoding: bool = True,
               init_scale: float = 0.1, dtype=None, *, rngs: nnx.Rngs):
    check_int("vocab_size", vocab_size, 2)
    check_int("hidden_features", hidden_features)
    check_int("num_hops", num_hops)
    check_int("memory_size", memory_size)
    if tying not in TYINGS:
      raise ValueError(f"tying={tying!r} is not allowed; choose one of: {', '.join(TYINGS)}")
    if not isinstance(init_scale, (int, float)) or init_scale <= 0:
      raise ValueError(f"init_scale={init_scale!r} is not allowed: it must be a number > 0")
    self.causal = False
    self.out_features = vocab_size
    self.vocab_size, self.num_hops, self.memory_size = vocab_size, num_hops, memory_size
    self.tying, self.dtype = tying, dtype
    self.position_encoding, self.temporal_encoding = position_encoding, temporal_encoding
    init = nnx.initializers.normal(init_scale)
    d = hidden_features
    # adjacent: E[0] = B = A^1, E[k] = C^k = A^{k+1}, E[K] = W^T.
    # layerwise: E[0] = B, E[1] = A, E[2] = C (and H, W below).
    n = num_hops + 1 if tying == "adjacent" else 3
    self.embed = nnx.Param(init(rngs.params(), (n, vocab_size, d)))
    n_t = num_hops + 1 if tying == "adjacent" else 2
    self.temporal = (nnx.Param(init(rngs.params(), (n_t, memory_size, d)))
                     if temporal_encoding else None)
    if tying == "layerwise":
      self.H = nnx.Param(init(rngs.params(), (d, d)))
      self.W = nnx.Param(init(rngs.params(), (d, vocab_size)))
    else:
      self.H = self.W = None

  def _memory(self, story_BMJ: Array, mask_BMJ: Array, index: int, t_BM: Array) -> Array:
    emb = self.embed[...][index].astype(self.dtype or jnp.float32)
    m_BMD = memory_ops.encode_sentences(emb[story_BMJ], mask_BMJ,
                                        position=self.position_encoding)
    if self.temporal is not None:
      t_index = index if self.tying == "adjacent" else index - 1
      m_BMD = m_BMD + self.temporal[...][t_index].astype(m_BMD.dtype)[t_BM]
    return m_BMD

  def __call__(self, story_BMJ: Array, query_BJ: Array, *,
               return_attention: bool = False) -> Array | tuple[Array, Array]:
    """Answer logits ``[B, V]`` (and, if asked, the attention ``[K, B, M]`` of each hop)."""
    story_BMJ, query_BJ = jnp.asarray(story_BMJ), jnp.asarray(query_BJ)
    mask_BMJ, mask_BJ = story_BMJ > 0, query_BJ > 0
    slots_BM = mask_BMJ.any(-1)
    t_BM = memory_ops.temporal_index(slots_BM, self.memory_size)
    dtype = self.dtype or jnp.float32
    emb_B = self.embed[...][0].astype(dtype)
    u_BD = memory_ops.encode_sentences(emb_B[query_BJ], mask_BJ,
                                       position=self.position_encoding)
    attention = []
    if self.tying == "layerwise":
      m_BMD = self._memory(story_BMJ, mask_BMJ, 1, t_BM)
      c_BMD = self._memory(story_BMJ, mask_BMJ, 2, t_BM)
    else:
      c_BMD = self._memory(story_BMJ, mask_BMJ, 0, t_BM)
    for k in range(1, self.num_hops + 1):
      if self.tying == "adjacent":  # A^k = C^(k-1): hop k reads hop k-1's output memory
        m_BMD, c_BMD = c_BMD, self._memory(story_BMJ, mask_BMJ, k, t_BM)
      o_BD, p_BM = memory_ops.memory_read(u_BD, m_BMD, c_BMD, slots_BM)
      attention.append(p_BM)
      # u^{k+1}; after the last hop it is what the answer layer reads (with layer-wise tying
      # the paper applies H there too: W u^{K+1} = W (H u^K + o^K)).
      u_BD = (u_BD @ self.H[...].astype(dtype) if self.tying == "layerwise" else u_BD) + o_BD
    a_BD = u_BD
    if self.tying == "adjacent":
      logits_BV = a_BD @ self.embed[...][self.num_hops].astype(dtype).T
    else:
      logits_BV = a_BD @ self.W[...].astype(dtype)
    if return_attention:
      return logits_BV, jnp.stack(attention)
    return logits_BV
