"""Sequence-parallel attention, two ways: the compiler's, and ring attention by hand.

Attention has no chain over time: every query row is independent given all keys. So the
length T can be split over N devices and each device computes T/N rows; what must move is
keys and values.

- ``compiler_attention``: q, k, v placed with ``NamedSharding(mesh, P('data', 'seq'))``
  (``Auto`` axes) and the single-device ``dot_product_attention`` jitted over them. XLA's
  partitioner keeps the query rows local and all-gathers k and v: O(S) memory per device
  for keys, no code written.
- ``ring_attention``: under ``jax.shard_map`` each device holds one block of q, k, v. In N
  rounds every key/value block travels once around the ring (``jax.lax.ppermute``, device
  i -> i+1 mod N) while each device folds the block it holds into its queries with the
  online softmax (running max m, normaliser l, unnormalised output o; as in blockwise /
  flash attention). Only one k/v block is resident at a time; any N divides the work, N
  need not be a power of two (only T % N == 0, or T % 2N with zig-zag).

Causal masking uses absolute positions that travel with each k/v block, so the block
layout is free. ``layout='zigzag'`` splits T into 2N chunks and gives device i chunks i and
2N-1-i: every device then holds the same number of unmasked (query, key) pairs (load
balance), where the contiguous layout gives device N-1 N times the unmasked pairs of
device 0. With ``skip_masked=True`` (zig-zag, causal) each round after the first computes
only the half block that can be unmasked, through ``jax.lax.cond``, so each device does
about half the score FLOPs of the dense ring: the saving load balancing buys. Shapes:
B batch, T queries, S keys, H heads, K head dim.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from seqscale.ops import attention as attention_ops
from seqscale.ops.attention import MASKED_SCORE

Array = jax.Array
LAYOUTS = ("contiguous", "zigzag")


def compiler_attention(mesh: Mesh, *, causal: bool = False, axis: str = "seq",
                       impl: str = "reference"):
  """``ops.attention.attention`` (``impl``, default the einsum reference) jitted with q, k, v
  and output sharded [B over data, T over ``axis``]; XLA inserts the collectives.

  Returns ``f(q_BTHK, k_BSHK, v_BSHK) -> out_BTHK``.
  """
  spec = NamedSharding(mesh, P("data", axis, None, None))
  fn = functools.partial(attention_ops.attention, impl=impl, causal=causal)
  return jax.jit(fn, in_shardings=(spec, spec, spec), out_shardings=spec)


def layout_order(T: int, N: int, layout: str = "contiguous") -> np.ndarray:
  """int [T]: the original position stored at each slot of the sharded length axis."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r}; allowed: {', '.join(map(repr, LAYOUTS))}")
  parts = N * (2 if layout == "zigzag" else 1)
  if T % parts:
    raise ValueError(f"T={T} must be a multiple of {parts} for layout={layout!r} on "
                     f"N={N} devices")
  if layout == "contiguous":
    return np.arange(T)
  chunks = np.arange(T).reshape(2 * N, T // (2 * N))
  return np.concatenate([np.concatenate([chunks[i], chunks[2 * N - 1 - i]]) for i in range(N)])


def _fold(state, q_BTHK, k_BSHK, v_BSHK, allowed_TS, scale):
  """Online-softmax update of (m_BHT, l_BHT, o_BTHK) with one key/value block."""
  m_BHT, l_BHT, o_BTHK = state
  s_BHTS = jnp.einsum("BTHK,BSHK->BHTS", q_BTHK, k_BSHK,
                      preferred_element_type=jnp.float32) * scale
  if allowed_TS is not None:
    s_BHTS = jnp.where(allowed_TS, s_BHTS, MASKED_SCORE)
  m_new = jnp.maximum(m_BHT, s_BHTS.max(-1))
  p_BHTS = jnp.exp(s_BHTS - m_new[..., None])
  if allowed_TS is not None:
    p_BHTS = jnp.where(allowed_TS, p_BHTS, 0.0)
  corr_BHT = jnp.exp(m_BHT - m_new)
  l_BHT = l_BHT * corr_BHT + p_BHTS.sum(-1)
  o_BTHK = (o_BTHK * jnp.swapaxes(corr_BHT, 1, 2)[..., None]
            + jnp.einsum("BHTS,BSHK->BTHK", p_BHTS, v_BSHK.astype(jnp.float32)))
  return m_new, l_BHT, o_BTHK


def _ring_body(q_BTHK, k_BSHK, v_BSHK, pos_T, *, axis, N, causal, skip_masked):
  """Per device: q, k, v blocks [B, T/N, H, K]; pos_T their original positions."""
  B, Tb, H, K = q_BTHK.shape
  scale = 1.0 / np.sqrt(K)
  perm = [(i, (i + 1) % N) for i in range(N)]
  me = jax.lax.axis_index(axis)
  state = (jnp.full((B, H, Tb), MASKED_SCORE, jnp.float32), jnp.zeros((B, H, Tb), jnp.float32),
           jnp.zeros((B, Tb, H, K), jnp.float32))

  def fold_all(state, kv):
    k, v, kpos = kv
    allowed = (pos_T[:, None] >= kpos[None, :]) if causal else None
    return _fold(state, q_BTHK, k, v, allowed, scale)

  def fold_half(state, kv, r):
    # Zig-zag: device d holds chunks (d, 2N-1-d). The block from src = d - r (mod N):
    # src < d -> only its early chunk is visible, to all local queries;
    # src > d -> all of it is visible, to the late local queries only.
    k, v, kpos = kv
    c = Tb // 2
    src = (me - r) % N

    def early_keys(state):
      return _fold(state, q_BTHK, k[:, :c], v[:, :c], None, scale)

    def late_queries(state):
      m, l, o = state
      m2, l2, o2 = _fold((m[..., c:], l[..., c:], o[:, c:]), q_BTHK[:, c:], k, v, None, scale)
      return (jnp.concatenate([m[..., :c], m2], -1), jnp.concatenate([l[..., :c], l2], -1),
              jnp.concatenate([o[:, :c], o2], 1))

    return jax.lax.cond(src < me, early_keys, late_queries, state)

  kv = (k_BSHK, v_BSHK, pos_T)
  state = fold_all(state, kv)  # round 0: the device's own block (causal inside it)

  def round_(r, carry):
    state, kv = carry
    kv = jax.lax.ppermute(kv, axis, perm)
    state = fold_half(state, kv, r) if skip_masked else fold_all(state, kv)
    return state, kv

  if N > 1:
    state, _ = jax.lax.fori_loop(1, N, round_, (state, kv))
  _, l_BHT, o_BTHK = state
  return (o_BTHK / jnp.swapaxes(l_BHT, 1, 2)[..., None]).astype(q_BTHK.dtype)


def ring_attention_sharded(mesh: Mesh, *, causal: bool = False, axis: str = "seq",
                           skip_masked: bool = False):
  """Ring attention on inputs already in the ring's layout.

  Returns ``f(q_BTHK, k_BSHK, v_BSHK, pos_T) -> out_BTHK`` (jitted), with T sharded over
  ``axis`` and B over ``data``; ``pos_T`` int [T] holds each slot's original position (see
  ``layout_order``; a data loader would produce this layout once). ``skip_masked`` needs
  the zig-zag layout and ``causal``.
  """
  N = mesh.shape[axis]
  if skip_masked and not causal:
    raise ValueError("skip_masked=True needs causal=True")
  body = functools.partial(_ring_body, axis=axis, N=N, causal=causal,
                           skip_masked=skip_masked)
  spec = P("data", axis, None, None)
  return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(spec, spec, spec, P(axis)),
                               out_specs=spec))


def ring_attention(q_BTHK: Array, k_BSHK: Array, v_BSHK: Array, mesh: Mesh, *,
                   causal: bool = False, layout: str = "contiguous", axis: str = "seq",
                   skip_masked: bool | None = None) -> Array:
  """Ring attention over ``mesh``'s ``axis``: equals ``dot_product_attention``.

  Args:
    q_BTHK, k_BSHK, v_BSHK: [B, T, H, K] (self-attention: S = T).
    mesh: a mesh with axes ``data`` and ``axis``.
    causal: mask keys after each query.
    layout: "contiguous" or "zigzag" (balanced causal work; see the module docstring).
    skip_masked: compute only the visible half blocks; default: zigzag and causal.

  Returns:
    out_BTHK in the original order.
  """
  T, N = q_BTHK.shape[1], mesh.shape[axis]
  if k_BSHK.shape[1] != T:
    raise ValueError(f"k_BSHK has length {k_BSHK.shape[1]}; ring attention needs S = T = {T}")
  order = layout_order(T, N, layout)
  if skip_masked is None:
    skip_masked = causal and layout == "zigzag" and N > 1
  if skip_masked and layout != "zigzag":
    raise ValueError(f"skip_masked=True needs layout='zigzag', got {layout!r}")
  f = ring_attention_sharded(mesh, causal=causal, axis=axis, skip_masked=skip_masked)
  out = f(q_BTHK[:, order], k_BSHK[:, order], v_BSHK[:, order], jnp.asarray(order))
  return out[:, np.argsort(order)]
