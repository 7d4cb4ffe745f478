"""Memory-efficient blockwise attention: online softmax, masked blocks skipped.

The same function as ``ops.attention.dot_product_attention`` (the readable reference),
computed block by block as in FlashAttention (Dao et al. 2022; Rabe & Staats 2021):

  forward:  for each query block, loop over only the key blocks that some query of the
            block may see (causal: the blocks at or before the diagonal; local window: the
            blocks within reach), keeping a running max m, normaliser l and output acc:
              s = q k^T * scale,  m' = max(m, rowmax s),  p = exp(s - m')
              l' = l e^(m - m') + rowsum p,  acc' = acc e^(m - m') + p v
            and save only out and the log-sum-exp m + log l per query;
  backward: (``jax.custom_vjp``) recompute p = exp(s - lse) block by block, looping over
            each key block's queries: dv += p^T do, ds = p (do v^T - rowsum(do * out)),
            dk += ds^T q, dq += ds k.

No [T, S] array is ever formed: memory is linear in T (the blocks are [B, H, block, block]),
and the work skipped grows with T (causal: about half).

Masks are those of the reference: causal, key padding, local window, query offset (a
traced offset works too: the loops' bounds are computed at run time). A query row that may
see no key gets zeros, as in the reference. ``ops.attention.attention`` dispatches between
this, the reference and ``jax.nn.dot_product_attention`` (XLA, or cuDNN on a GPU).

Shapes: B batch, T queries, S keys, H heads, K head dim; internally blocks are laid out
[n, B, H, block, K] so a loop step reads one contiguous block.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from seqscale.checks import check_int
from seqscale.ops.attention import MASKED_SCORE
# The dispatcher lives in ops.attention; these names stay importable from here.
from seqscale.ops.attention import IMPLS, attention  # noqa: F401  pylint: disable=unused-import

Array = jax.Array

# Measured on a 2-core CPU (B=4, H=8, K=64, float32): 128 was best forward+backward.
DEFAULT_BLOCK = 128


def _to_blocks(x_BTHK: Array, block: int) -> Array:
  """[B, T, H, K] -> [n, B, H, block, K], padding T up to n * block."""
  B, T, H, K = x_BTHK.shape
  n = -(-T // block)
  x = jnp.pad(x_BTHK, ((0, 0), (0, n * block - T), (0, 0), (0, 0)))
  return x.reshape(B, n, block, H, K).transpose(1, 0, 3, 2, 4)


def _from_blocks(x_nBHbK: Array, T: int) -> Array:
  n, B, H, b, K = x_nBHbK.shape
  return x_nBHbK.transpose(1, 0, 3, 2, 4).reshape(B, n * b, H, K)[:, :T]


class _Geometry:
  """Which (query block, key block) pairs may hold a visible pair, and the block's mask."""

  def __init__(self, T, S, bq, bk, causal, window, offset):
    self.T, self.S, self.bq, self.bk = T, S, bq, bk
    self.nq, self.nk = -(-T // bq), -(-S // bk)
    self.causal, self.window = causal, window
    self.offset = jnp.asarray(offset, jnp.int32)

  def key_blocks(self, i):
    """[lo, hi) of the key blocks query block i may see."""
    a = self.offset + i * self.bq  # positions of the block's first and last queries
    b = a + self.bq - 1
    s_min, s_max = jnp.int32(0), jnp.int32(self.S - 1)
    if self.causal:
      s_max = jnp.minimum(s_max, b)
    if self.window is not None:
      s_min = jnp.maximum(s_min, a - self.window)
      if not self.causal:
        s_max = jnp.minimum(s_max, b + self.window)
    lo = jnp.clip(s_min // self.bk, 0, self.nk)
    return lo, jnp.where(s_max >= s_min, jnp.clip(s_max // self.bk + 1, lo, self.nk), lo)

  def query_blocks(self, j):
    """[lo, hi) of the query blocks that may see key block j."""
    c = j * self.bk
    d = c + self.bk - 1
    q_min, q_max = jnp.int32(-2**30), jnp.int32(2**30)  # query positions
    if self.causal:
      q_min = c
    if self.window is not None:
      q_max = d + self.window
      if not self.causal:
        q_min = c - self.window
    t_min = jnp.maximum(q_min - self.offset, 0)
    t_max = jnp.minimum(q_max - self.offset, self.nq * self.bq - 1)
    lo = jnp.clip(t_min // self.bq, 0, self.nq)
    return lo, jnp.where(t_max >= t_min, jnp.clip(t_max // self.bq + 1, lo, self.nq), lo)

  def mask(self, i, j, kpm_nBb):
    """bool [B|1, 1, bq, bk]: visible pairs of block (i, j)."""
    t = self.offset + i * self.bq + jnp.arange(self.bq, dtype=jnp.int32)[:, None]
    s = j * self.bk + jnp.arange(self.bk, dtype=jnp.int32)[None, :]
    ok = s < self.S
    if self.causal:
      ok &= s <= t
    if self.window is not None:
      ok &= jnp.abs(t - s) <= self.window
    ok = ok[None, None]
    if kpm_nBb is not None:
      ok = ok & kpm_nBb[j][:, None, None, :]
    return ok


def _scores(q, k, scale):
  return jnp.einsum("BHTK,BHSK->BHTS", q, k, preferred_element_type=jnp.float32) * scale


def _forward(geo: _Geometry, scale, q_b, k_b, v_b, kpm):
  """Per query block: out [nq, B, H, bq, K] and lse [nq, B, H, bq], both float32 (XLA's CPU
  backend writes blocks into a bfloat16 buffer far slower than into a float32 one)."""
  _, B, H, bq, K = q_b.shape

  def q_block(i, outs):
    out_b, lse_b = outs
    q = q_b[i]

    def k_block(j, st):
      m, l, acc = st
      s = _scores(q, k_b[j], scale)
      ok = geo.mask(i, j, kpm)
      m_new = jnp.maximum(m, jnp.max(jnp.where(ok, s, MASKED_SCORE), axis=-1))
      p = jnp.where(ok, jnp.exp(s - m_new[..., None]), 0.0)
      alpha = jnp.exp(m - m_new)
      l = l * alpha + jnp.sum(p, axis=-1)
      pv = jnp.einsum("BHTS,BHSK->BHTK", p.astype(v_b.dtype), v_b[j],
                      preferred_element_type=jnp.float32)
      return m_new, l, acc * alpha[..., None] + pv

    lo, hi = geo.key_blocks(i)
    init = (jnp.full((B, H, bq), MASKED_SCORE, jnp.float32),
            jnp.zeros((B, H, bq), jnp.float32), jnp.zeros((B, H, bq, K), jnp.float32))
    m, l, acc = jax.lax.fori_loop(lo, hi, k_block, init)
    seen = l > 0  # rows that see no key: zeros (and a finite lse)
    out = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0)
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0)
    return out_b.at[i].set(out), lse_b.at[i].set(lse)

  outs = (jnp.zeros(q_b.shape, jnp.float32), jnp.zeros(q_b.shape[:-1], jnp.float32))
  return jax.lax.fori_loop(0, geo.nq, q_block, outs)


def _backward(geo: _Geometry, scale, q_b, k_b, v_b, kpm, out_b, lse_b, do_b):
  """dq, dk, dv in blocks, looping over key blocks and, inside, over their queries."""
  # rowsum(do * out) with out rounded as the caller saw it.
  delta_b = jnp.sum(do_b.astype(jnp.float32) * out_b.astype(q_b.dtype).astype(jnp.float32),
                    axis=-1)
  dt = q_b.dtype

  def k_block(j, grads):
    dq_b, dk_b, dv_b = grads
    k, v = k_b[j], v_b[j]

    def q_block(i, st):
      dq_b, dk, dv = st
      q, do = q_b[i], do_b[i]
      s = _scores(q, k, scale)
      p = jnp.where(geo.mask(i, j, kpm), jnp.exp(s - lse_b[i][..., None]), 0.0)
      dv = dv + jnp.einsum("BHTS,BHTK->BHSK", p.astype(dt), do,
                           preferred_element_type=jnp.float32)
      dp = jnp.einsum("BHTK,BHSK->BHTS", do, v, preferred_element_type=jnp.float32)
      ds = (p * (dp - delta_b[i][..., None]) * scale).astype(dt)
      dk = dk + jnp.einsum("BHTS,BHTK->BHSK", ds, q, preferred_element_type=jnp.float32)
      dq = jnp.einsum("BHTS,BHSK->BHTK", ds, k, preferred_element_type=jnp.float32)
      return dq_b.at[i].add(dq), dk, dv

    lo, hi = geo.query_blocks(j)
    zero = jnp.zeros(k.shape, jnp.float32)
    dq_b, dk, dv = jax.lax.fori_loop(lo, hi, q_block, (dq_b, zero, zero))
    return dq_b, dk_b.at[j].set(dk), dv_b.at[j].set(dv)

  zeros = lambda x: jnp.zeros(x.shape, jnp.float32)
  return jax.lax.fori_loop(0, geo.nk, k_block, (zeros(q_b), zeros(k_b), zeros(v_b)))


def _prepare(q, k, v, kpm_BS, causal, window, offset, bq, bk):
  T, S = q.shape[1], k.shape[1]
  geo = _Geometry(T, S, bq, bk, causal, window, offset)
  kpm = None
  if kpm_BS is not None:
    kpm = jnp.pad(jnp.asarray(kpm_BS, bool), ((0, 0), (0, geo.nk * bk - S)))
    kpm = kpm.reshape(kpm.shape[0], geo.nk, bk).transpose(1, 0, 2)
  return geo, _to_blocks(q, bq), _to_blocks(k, bk), _to_blocks(v, bk), kpm


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _attention(causal, window, scale, bq, bk, q, k, v, kpm_BS, offset):
  geo, q_b, k_b, v_b, kpm = _prepare(q, k, v, kpm_BS, causal, window, offset, bq, bk)
  out_b = _forward(geo, scale, q_b, k_b, v_b, kpm)[0]
  return _from_blocks(out_b, q.shape[1]).astype(q.dtype)


def _attention_fwd(causal, window, scale, bq, bk, q, k, v, kpm_BS, offset):
  geo, q_b, k_b, v_b, kpm = _prepare(q, k, v, kpm_BS, causal, window, offset, bq, bk)
  out_b, lse_b = _forward(geo, scale, q_b, k_b, v_b, kpm)
  out = _from_blocks(out_b, q.shape[1]).astype(q.dtype)
  return out, (q, k, v, kpm_BS, offset, out_b, lse_b)


def _attention_bwd(causal, window, scale, bq, bk, res, do):
  q, k, v, kpm_BS, offset, out_b, lse_b = res
  geo, q_b, k_b, v_b, kpm = _prepare(q, k, v, kpm_BS, causal, window, offset, bq, bk)
  dq_b, dk_b, dv_b = _backward(geo, scale, q_b, k_b, v_b, kpm, out_b, lse_b,
                               _to_blocks(do.astype(q.dtype), bq))
  float0 = lambda x: None if x is None else np.zeros(np.shape(x), jax.dtypes.float0)
  return (_from_blocks(dq_b, q.shape[1]).astype(q.dtype),
          _from_blocks(dk_b, k.shape[1]).astype(k.dtype),
          _from_blocks(dv_b, v.shape[1]).astype(v.dtype), float0(kpm_BS), float0(offset))


_attention.defvjp(_attention_fwd, _attention_bwd)


def blockwise_attention(
    q_BTHK: Array,
    k_BSHK: Array,
    v_BSHK: Array,
    *,
    causal: bool = False,
    key_padding_mask_BS: Array | None = None,
    local_window: int | None = None,
    query_offset: int | Array = 0,
    scale: float | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> Array:
  """``ops.attention.dot_product_attention`` computed blockwise in memory linear in T.

  Args:
    q_BTHK, k_BSHK, v_BSHK: queries, keys, values.
    causal, key_padding_mask_BS, local_window, query_offset: as in the reference
      (``query_offset`` may be a traced int scalar).
    scale: multiplies the scores; default 1/sqrt(K).
    block_q, block_k: rows of the query and key blocks (default ``DEFAULT_BLOCK``, capped
      at T and S).

  Returns:
    out_BTHK in q's dtype; the gradient is recomputed blockwise (``jax.custom_vjp``).
  """
  if q_BTHK.ndim != 4 or k_BSHK.ndim != 4 or v_BSHK.shape != k_BSHK.shape:
    raise ValueError(f"q, k, v shapes {q_BTHK.shape}, {k_BSHK.shape}, {v_BSHK.shape}: "
                     "expected [B, T, H, K], [B, S, H, K], [B, S, H, K]")
  if local_window is not None:
    check_int("local_window", local_window, 0)
  T, S, K = q_BTHK.shape[1], k_BSHK.shape[1], q_BTHK.shape[-1]
  block_q = min(DEFAULT_BLOCK if block_q is None else block_q, max(T, 1))
  block_k = min(DEFAULT_BLOCK if block_k is None else block_k, max(S, 1))
  check_int("block_q", block_q, 1)
  check_int("block_k", block_k, 1)
  scale = float(1.0 / np.sqrt(K) if scale is None else scale)
  if isinstance(query_offset, (int, np.integer)):
    query_offset = np.int32(query_offset)
  return _attention(bool(causal), local_window, scale, block_q, block_k, q_BTHK, k_BSHK,
                    v_BSHK, key_padding_mask_BS, query_offset)
