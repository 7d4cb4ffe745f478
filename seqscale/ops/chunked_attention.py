"""Attention in query chunks, each against only the keys some query of the chunk may see.

The same function as ``ops.attention.dot_product_attention`` (the readable reference). The
queries are cut into chunks of ``chunk`` rows; chunk [lo, hi) attends to the keys between
its first visible key and its last, a range known when tracing (the query offset is a
Python int here):

  causal:        keys [0, offset + hi)                      (a staircase: about half of
                                                              the [T, S] scores at many
                                                              chunks, (n + 1) / 2n at n)
  local window:  keys [offset + lo - r, offset + hi + r)    (clipped to [0, S))

Each chunk is the reference's math on its slice: scores, a float32 softmax over the
visible keys, the weighted values. There is no loop and no recomputation: JAX
differentiates the few einsums directly (reverse and forward mode alike), and the weights
it keeps for the backward pass take about half of one [B, H, T, S] float32 array when
causal. That suits short sequences, where the blockwise kernel's loops, block copies and
recomputed scores cost more than the matmuls they save: ``ops.attention.choose_impl``
runs this path for float32 causal attention on the CPU up to ``CHUNKED_UPTO`` positions
where the C++ kernel (``ops.native_attention``) does not run: below its ``NATIVE_FROM``
positions, or where it does not build or take the inputs (a window, key padding, an
offset).

Shapes: B batch, T queries, S keys, H heads, K head dim. Past one chunk, q, k and v are
transposed once to [B, H, T, K], so each chunk's slice is a run of rows per head; one
chunk keeps the inputs' [B, T, H, K] layout, as the reference does (T=64, causal fwd+bwd,
B=4, H=8, K=64: 1.25 ms against 1.47 transposed, same process, median of 31 rounds).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from seqscale.checks import check_int
from seqscale.ops.attention import MASKED_SCORE

Array = jax.Array

# Chunk rows by length T: (up to this many positions, rows; None: T itself, one chunk).
# Chosen with same-process timings against torch SDPA on a 2-core Xeon (AVX-512), B=4,
# H=8, K=64, float32, causal forward+backward, medians of 9 to 21 alternating rounds: at
# T=64 one chunk took 1.6 ms against 1.8 to 1.9 for 2 or 4; at T=128 chunks of 32 rows
# 3.1 to 3.4 ms against 3.6 (40), 3.6 to 4.2 (64) and 4.2 (24); at T=256 chunks of 40
# rows (six, and 16 left over) 8.7 to 9.3 ms, in three runs, against 9.6 to 10.3 (64),
# 9.9 to 11.0 (32), 10.6 (36), 10.3 (44), 10.5 (52) and 10.8 (48). At T=512 no chunk size
# beat the blockwise kernel (55 to 67 ms against 56 to 60) and at T=1024 they lost (207
# against 183): past CHUNKED_UPTO the blockwise kernel runs.
CHUNK_ROWS = ((64, None), (128, 32), (1 << 62, 40))
CHUNKED_UPTO = 256


def default_chunk(T: int) -> int:
  """Query rows per chunk for T queries, from ``CHUNK_ROWS``."""
  for upto, rows in CHUNK_ROWS:
    if T <= upto:
      return max(1, T) if rows is None else rows
  raise AssertionError("CHUNK_ROWS ends with an unbounded row")


def key_range(lo: int, hi: int, S: int, *, causal: bool, local_window: int | None,
              query_offset: int) -> tuple[int, int]:
  """[k_lo, k_hi): the keys that some query of rows [lo, hi) may see (k_lo == k_hi: none)."""
  first, last = query_offset + lo, query_offset + hi - 1  # the rows' positions
  k_lo, k_hi = 0, S
  if causal:
    k_hi = min(k_hi, last + 1)
  if local_window is not None:
    k_lo = max(k_lo, first - local_window)
    if not causal:
      k_hi = min(k_hi, last + local_window + 1)
  k_lo = min(max(k_lo, 0), S)
  return k_lo, max(k_lo, k_hi)


def chunked_attention(
    q_BTHK: Array,
    k_BSHK: Array,
    v_BSHK: Array,
    *,
    causal: bool = False,
    key_padding_mask_BS: Array | None = None,
    local_window: int | None = None,
    query_offset: int = 0,
    scale: float | None = None,
    chunk: int | None = None,
) -> Array:
  """``ops.attention.dot_product_attention`` computed chunk by chunk of queries.

  Args:
    q_BTHK, k_BSHK, v_BSHK: queries, keys, values.
    causal, key_padding_mask_BS, local_window: as in the reference.
    query_offset: the first query's position, a Python int >= 0 (the key range of each
      chunk is fixed when tracing; a traced offset needs the blockwise kernel).
    scale: multiplies the scores; default 1/sqrt(K).
    chunk: query rows per chunk (default ``default_chunk(T)``).

  Returns:
    out_BTHK in q's dtype; a row that may see no key is zeros.
  """
  if q_BTHK.ndim != 4 or k_BSHK.ndim != 4 or v_BSHK.shape != k_BSHK.shape:
    raise ValueError(f"q, k, v shapes {q_BTHK.shape}, {k_BSHK.shape}, {v_BSHK.shape}: "
                     "expected [B, T, H, K], [B, S, H, K], [B, S, H, K]")
  if not isinstance(query_offset, (int, np.integer)) or isinstance(query_offset, bool):
    raise ValueError(f"query_offset={query_offset!r}: chunked attention needs a Python int "
                     "(its key ranges are fixed when tracing); use impl='blockwise'")
  offset = int(query_offset)
  check_int("query_offset", offset, 0)
  if local_window is not None:
    check_int("local_window", local_window, 0)
  B, T, H, K = q_BTHK.shape
  S = k_BSHK.shape[1]
  chunk = default_chunk(T) if chunk is None else chunk
  check_int("chunk", chunk, 1)
  scale = float(1.0 / np.sqrt(K) if scale is None else scale)
  kpm_B11S = (None if key_padding_mask_BS is None else jnp.broadcast_to(
      jnp.asarray(key_padding_mask_BS, bool), (B, S))[:, None, None, :])
  if T <= chunk:  # one chunk: the inputs' own layout, as the reference (no transposes)
    q, k, v, axis = q_BTHK, k_BSHK, v_BSHK, 1
    scores, weighted = "BTHK,BSHK->BHTS", "BHTS,BSHK->BTHK"
  else:  # [B, H, *, K]: each chunk's slice is a run of rows per head
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q_BTHK, k_BSHK, v_BSHK))
    axis, scores, weighted = 2, "BHTK,BHSK->BHTS", "BHTS,BHSK->BHTK"
  rows = lambda x, a, b: jax.lax.slice_in_dim(x, a, b, axis=axis)
  outs = []
  for lo in range(0, T, chunk):
    hi = min(T, lo + chunk)
    k_lo, k_hi = key_range(lo, hi, S, causal=causal, local_window=local_window,
                           query_offset=offset)
    if k_lo == k_hi:  # no query of the chunk sees a key
      outs.append(jnp.zeros((B, hi - lo, H, K) if axis == 1 else (B, H, hi - lo, K),
                            jnp.float32))
      continue
    s = jnp.einsum(scores, rows(q, lo, hi), rows(k, k_lo, k_hi),
                   preferred_element_type=jnp.float32) * scale
    # The chunk's mask, as make_attention_mask's but in NumPy: known when tracing, so the
    # masking below is left out where every pair is visible.
    t_pos = offset + np.arange(lo, hi)[:, None]
    s_pos = np.arange(k_lo, k_hi)[None, :]
    ok = np.ones((hi - lo, k_hi - k_lo), bool)
    if causal:
      ok &= s_pos <= t_pos
    if local_window is not None:
      ok &= np.abs(t_pos - s_pos) <= local_window
    allowed = jnp.asarray(ok)[None, None]
    if kpm_B11S is not None:
      allowed = allowed & kpm_B11S[..., k_lo:k_hi]
    if not ok.all() or kpm_B11S is not None:
      s = jnp.where(allowed, s, MASKED_SCORE)
    w = jax.nn.softmax(s, axis=-1)
    if not ok.any(axis=1).all() or kpm_B11S is not None:  # rows that see no key: zeros
      w = jnp.where(allowed, w, 0.0)
    outs.append(jnp.einsum(weighted, w.astype(v.dtype), rows(v, k_lo, k_hi),
                           preferred_element_type=jnp.float32))
  if axis == 1:
    return outs[0].astype(q_BTHK.dtype)
  return jnp.concatenate(outs, axis=2).transpose(0, 2, 1, 3).astype(q_BTHK.dtype)
