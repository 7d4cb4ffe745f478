"""Scaled dot-product attention, its masks, head projections and sinusoidal positions.

Pure JAX functions of arrays (no Flax). Shapes follow the docs/DESIGN.md legend: B batch,
T query length, S key length, D width, H heads, K head dim.

Attention connects every pair of positions in one parallel step (Vaswani et al. 2017):

  scores_BHTS = einsum('BTHK,BSHK->BHTS', q, k) / sqrt(K)
  weights_BHTS = softmax over S (in float32, whatever the input dtype)
  out_BTHK = einsum('BHTS,BSHK->BTHK', weights, v)

Masks are boolean with True where a query may attend to a key. A query row whose keys are
all masked gets zero weights and therefore a zero output (never NaN).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# A large finite negative rather than -inf: `x - max(x)` stays finite even in a fully
# masked row, so neither the softmax nor its gradient can produce NaN.
MASKED_SCORE = -0.7 * float(np.finfo(np.float32).max)
# The implementations `attention` dispatches between (the same function each time).
IMPLS = ("auto", "blockwise", "chunked", "flash_cpu", "reference", "xla", "cudnn", "pallas")


def make_attention_mask(
    T: int,
    S: int,
    *,
    causal: bool = False,
    key_padding_mask_BS: Array | None = None,
    local_window: int | None = None,
    query_offset: int | Array = 0,
    mask: Array | None = None,
) -> Array:
  """Combines the attention masks into one boolean mask, True where attention is allowed.

  Query t sits at position `query_offset + t`; key s at position s. Then:
    causal: s <= query_offset + t;
    local_window r (restricted self-attention, Vaswani 2017 Table 1): |query_offset + t - s|
      <= r, which with `causal` gives query_offset + t - r <= s <= query_offset + t;
    key_padding_mask_BS: bool [B, S], True at valid keys.

  Args:
    T: number of queries.
    S: number of keys.
    causal: mask keys after each query's position.
    key_padding_mask_BS: bool [B, S], True at valid keys.
    local_window: r >= 0, or None for no window.
    query_offset: position of the first query (an int or a traced int scalar); used when
      decoding with a key/value cache, where S is the cache length.
    mask: an extra bool mask broadcastable to [B, H, T, S], True where allowed.

  Returns:
    bool [B|1, 1|H, T, S] (B if a per-batch mask is given, H if `mask` has heads).
  """
  if local_window is not None and local_window < 0:
    raise ValueError(f"local_window={local_window!r}: must be None or an int >= 0")
  t_pos = jnp.asarray(query_offset, jnp.int32) + jnp.arange(T, dtype=jnp.int32)
  s_pos = jnp.arange(S, dtype=jnp.int32)
  delta_TS = t_pos[:, None] - s_pos[None, :]  # query position minus key position
  allowed = jnp.ones((1, 1, T, S), dtype=bool)
  if causal:
    allowed = allowed & (delta_TS >= 0)[None, None]
  if local_window is not None:
    allowed = allowed & (jnp.abs(delta_TS) <= local_window)[None, None]
  if key_padding_mask_BS is not None:
    allowed = allowed & jnp.asarray(key_padding_mask_BS, bool)[:, None, None, :]
  if mask is not None:
    allowed = allowed & jnp.asarray(mask, bool)
  return allowed


def attention_weights(
    q_BTHK: Array,
    k_BSHK: Array,
    *,
    causal: bool = False,
    key_padding_mask_BS: Array | None = None,
    local_window: int | None = None,
    mask: Array | None = None,
    query_offset: int | Array = 0,
    scale: float | None = None,
) -> Array:
  """The softmax attention weights, softmax over S of q.k * scale, with masked keys at 0.

  Args:
    q_BTHK: queries.
    k_BSHK: keys.
    causal, key_padding_mask_BS, local_window, mask, query_offset: see
      `make_attention_mask`.
    scale: multiplies the scores; default 1/sqrt(K).

  Returns:
    float32 weights_BHTS; each row sums to 1 over its allowed keys, and a row with every
    key masked is all zeros.
  """
  T, S, K = q_BTHK.shape[1], k_BSHK.shape[1], q_BTHK.shape[-1]
  scale = 1.0 / np.sqrt(K) if scale is None else scale
  # Scores and softmax in float32: low-precision inputs would lose the small weights.
  scores_BHTS = jnp.einsum(
      'BTHK,BSHK->BHTS', q_BTHK, k_BSHK, preferred_element_type=jnp.float32)
  scores_BHTS = scores_BHTS.astype(jnp.float32) * scale
  if not (causal or key_padding_mask_BS is not None or local_window is not None
          or mask is not None):
    return jax.nn.softmax(scores_BHTS, axis=-1)
  allowed = make_attention_mask(
      T, S, causal=causal, key_padding_mask_BS=key_padding_mask_BS,
      local_window=local_window, query_offset=query_offset, mask=mask)
  weights_BHTS = jax.nn.softmax(jnp.where(allowed, scores_BHTS, MASKED_SCORE), axis=-1)
  # A fully masked row would otherwise be uniform over masked keys; make it zero.
  return jnp.where(allowed, weights_BHTS, 0.0)


def dot_product_attention(
    q_BTHK: Array,
    k_BSHK: Array,
    v_BSHK: Array,
    *,
    causal: bool = False,
    key_padding_mask_BS: Array | None = None,
    local_window: int | None = None,
    mask: Array | None = None,
    query_offset: int | Array = 0,
    scale: float | None = None,
    dropout_fn: Callable[[Array], Array] | None = None,
) -> Array:
  """Multi-head scaled dot-product attention: the readable reference.

  Args:
    q_BTHK: queries.
    k_BSHK: keys.
    v_BSHK: values.
    causal, key_padding_mask_BS, local_window, mask, query_offset: see
      `make_attention_mask`.
    scale: multiplies the scores; default 1/sqrt(K).
    dropout_fn: applied to the attention weights_BHTS (e.g. an `nnx.Dropout`); None for none.

  Returns:
    out_BTHK in the dtype of `q_BTHK`. Rows with every key masked are zeros.
  """
  weights_BHTS = attention_weights(
      q_BTHK, k_BSHK, causal=causal, key_padding_mask_BS=key_padding_mask_BS,
      local_window=local_window, mask=mask, query_offset=query_offset, scale=scale)
  weights_BHTS = weights_BHTS.astype(v_BSHK.dtype)
  if dropout_fn is not None:
    weights_BHTS = dropout_fn(weights_BHTS)
  out_BTHK = jnp.einsum('BHTS,BSHK->BTHK', weights_BHTS, v_BSHK)
  return out_BTHK.astype(q_BTHK.dtype)


# One [B, H, T, S] float32 array above this many bytes is "too large": XLA's fused attention
# (which forms it) gives way to the blockwise kernel, and attention dropout (which needs it)
# is refused.
QUADRATIC_BYTES_LIMIT = 1 << 30
_CUDNN_DTYPES = ("bfloat16", "float16")


def _choose(impl: str, *, num_queries: int, num_keys: int, head_dim: int, batch_heads: int,
            dtype, backend: str, causal: bool, key_padding: bool, local_window: int | None,
            offset_zero: bool, mask: bool, dropout: bool) -> tuple[str, str]:
  """(implementation, why): the table behind `choose_impl`."""
  if impl not in IMPLS:
    raise ValueError(f"impl={impl!r}: allowed: {', '.join(IMPLS)}")
  if impl != "auto":
    return impl, "asked for"
  T, S, K = num_queries, num_keys, head_dim
  quadratic = 4 * batch_heads * T * S  # bytes of one float32 [B, H, T, S] array
  if dropout:
    if quadratic > QUADRATIC_BYTES_LIMIT:
      raise ValueError(
          f"attention dropout needs the whole [B, H, T, S] weights ({quadratic / 2**30:.1f} "
          f"GiB at B*H={batch_heads}, T={T}, S={S}); set the attention dropout to 0")
    return "reference", "dropout on the weights needs them whole"
  if mask:
    return "reference", "an arbitrary mask is [T, S] already"
  if T == 1:
    return "reference", "one query: a decoding step"
  fits = quadratic <= QUADRATIC_BYTES_LIMIT
  if backend == "gpu":
    if (jnp.dtype(dtype).name in _CUDNN_DTYPES and K <= 128 and K % 8 == 0
        and not key_padding and offset_zero and (local_window is None or causal)
        and (T == S or not causal)):
      return "cudnn", "GPU, half precision, masks cuDNN takes"
    if fits:
      return "xla", "GPU, not cuDNN's case"
    return "blockwise", "GPU, the [T, S] scores would not fit"
  if backend == "tpu":
    if (_pallas_tpu() is not None and not key_padding and local_window is None
        and offset_zero and T % 128 == 0 and S % 128 == 0):
      return "pallas", "TPU, Pallas flash attention"
    if fits:
      return "xla", "TPU, not the Pallas kernel's case"
    return "blockwise", "TPU, the [T, S] scores would not fit"
  # CPU (and any other backend), measured with tools/attention_speed.py (causal fwd+bwd,
  # B=4, H=8, K=64, float32): up to CHUNKED_UPTO positions the query chunks against their
  # visible keys (no loops, no recomputation) beat the blockwise kernel in float32 (T=256:
  # 9 to 12 ms against 17 to 19; in bfloat16 they took 22 ms against 12.5, the backward's
  # elementwise work in bfloat16); past it the blockwise kernel was the fastest JAX path:
  # XLA's and the einsum reference took 1.6 to 3.5 times as long at T=512 and form the
  # [T, S] scores, and at T=8192 only the blockwise kernel fits. From NATIVE_FROM
  # positions, causal float32 self-attention runs the C++ kernel of ops.native_attention
  # where it builds: 0.55 to 0.98 of SDPA's time at T=128 to 8192, where the chunked path
  # took 0.9 to 1.2 (T=128 to 256) and the blockwise kernel 1.4 to 1.8. Below it, the
  # padding to 64 rows and the calls cost more (T=96: 4.6 ms against chunked's 3.6).
  from seqscale.ops import chunked_attention  # pylint: disable=g-import-not-at-top
  from seqscale.ops import native_attention  # pylint: disable=g-import-not-at-top
  if (backend == "cpu" and T >= native_attention.NATIVE_FROM
      and native_attention.supports(
          head_dim=K, dtype=dtype, causal=causal, self_attention=T == S,
          key_padding=key_padding, local_window=local_window, offset_zero=offset_zero) is None
      and native_attention.available()):
    return "flash_cpu", "CPU: the C++ kernel, fastest measured for causal T >= 128"
  if (causal and offset_zero and fits and jnp.dtype(dtype) == jnp.float32
      and T <= chunked_attention.CHUNKED_UPTO):
    return "chunked", "CPU: fastest measured at short causal T in float32"
  return "blockwise", "CPU: fastest measured"


def _pallas_tpu():
  """jax's Pallas TPU flash-attention module, or None where this jax has none."""
  try:
    from jax.experimental.pallas.ops.tpu import flash_attention  # pylint: disable=g-import-not-at-top
  except ImportError:  # pragma: no cover - depends on the installed jax
    return None
  return flash_attention


def choose_impl(impl: str, *, num_queries: int, num_keys: int | None = None,
                head_dim: int = 64, batch_heads: int = 1, dtype=jnp.float32,
                backend: str | None = None, causal: bool = False, key_padding: bool = False,
                local_window: int | None = None, offset_zero: bool = True,
                mask: Array | None = None,
                dropout_fn: Callable[[Array], Array] | None = None) -> str:
  """The implementation `attention` runs for `impl`: "auto" resolved, others checked.

  "auto" is a small table of the backend (default `jax.default_backend()`), dtype, lengths
  T (`num_queries`) and S, head dim K, mask kinds and dropout:

    dropout on the weights   "reference" (it needs them whole); refused (ValueError) when
                             one [B, H, T, S] float32 array exceeds QUADRATIC_BYTES_LIMIT
    an arbitrary `mask`      "reference"
    T == 1 (decoding)        "reference"
    GPU                      "cudnn" for bfloat16/float16, K <= 128 and K % 8 == 0, no key
                             padding, query offset 0, a window only with `causal`;
                             else "xla" where [B, H, T, S] fits, else "blockwise"
    TPU                      "pallas" (jax's Pallas flash attention) without padding,
                             window or offset, T and S multiples of 128; else "xla"
                             where it fits, else "blockwise"
    CPU                      "flash_cpu" (the C++ kernel of ops.native_attention) for
                             float32 causal self-attention from NATIVE_FROM positions,
                             no padding or window, K a multiple of 16 up to 128, where
                             the kernel builds; else "chunked" for float32 causal
                             attention up to CHUNKED_UPTO positions (query offset 0);
                             else "blockwise": the fastest paths measured, T = 64 to 8192
  """
  backend = jax.default_backend() if backend is None else backend
  S = num_queries if num_keys is None else num_keys
  return _choose(impl, num_queries=num_queries, num_keys=S, head_dim=head_dim,
                 batch_heads=batch_heads, dtype=dtype, backend=backend, causal=causal,
                 key_padding=key_padding, local_window=local_window,
                 offset_zero=offset_zero, mask=mask is not None,
                 dropout=dropout_fn is not None)[0]


def describe_choice(impl: str = "auto", *, num_queries: int, num_keys: int | None = None,
                    head_dim: int = 64, batch_heads: int = 1, dtype=jnp.float32,
                    backend: str | None = None, causal: bool = False,
                    key_padding: bool = False, local_window: int | None = None,
                    dropout: bool = False) -> str:
  """One line saying which attention `attention` runs for these settings, and why (for a
  run's results.json). Arguments as in `choose_impl`; a refusal is described, not raised."""
  backend = jax.default_backend() if backend is None else backend
  S = num_queries if num_keys is None else num_keys
  where = (f"backend={backend}, dtype={jnp.dtype(dtype).name}, T={num_queries}, S={S}, "
           f"K={head_dim}, causal={causal}, key_padding={key_padding}, "
           f"local_window={local_window}, dropout={dropout}")
  try:
    chosen, why = _choose(impl, num_queries=num_queries, num_keys=S, head_dim=head_dim,
                          batch_heads=batch_heads, dtype=dtype, backend=backend,
                          causal=causal, key_padding=key_padding, local_window=local_window,
                          offset_zero=True, mask=False, dropout=dropout)
  except ValueError as e:
    return f"attention: refused ({e}) [{where}]"
  if chosen == "blockwise":
    from seqscale.ops import blockwise_attention  # pylint: disable=g-import-not-at-top
    why += (f"; blocks {blockwise_attention.default_block(num_queries)}x"
            f"{blockwise_attention.default_block(S, blockwise_attention.KEY_BLOCKS)}")
  if chosen == "chunked":
    from seqscale.ops import chunked_attention  # pylint: disable=g-import-not-at-top
    why += f"; chunks of {chunked_attention.default_chunk(num_queries)} rows"
  return f"attention: {chosen} ({why}) [{where}]"


def attention(
    q_BTHK: Array,
    k_BSHK: Array,
    v_BSHK: Array,
    *,
    impl: str = "auto",
    causal: bool = False,
    key_padding_mask_BS: Array | None = None,
    local_window: int | None = None,
    mask: Array | None = None,
    query_offset: int | Array = 0,
    scale: float | None = None,
    dropout_fn: Callable[[Array], Array] | None = None,
) -> Array:
  """Multi-head attention by one of several implementations of the same function.

  Args:
    q_BTHK, k_BSHK, v_BSHK, causal, key_padding_mask_BS, local_window, mask, query_offset,
      scale, dropout_fn: as in `dot_product_attention`.
    impl: "reference" (`dot_product_attention`), "blockwise"
      (`ops.blockwise_attention`: online softmax, memory linear in T, masked blocks
      skipped), "chunked" (`ops.chunked_attention`: query chunks against the keys they
      may see; `query_offset` a Python int), "flash_cpu" (`ops.native_attention`: a C++
      kernel, CPU, float32 causal self-attention only), "xla" or "cudnn"
      (`jax.nn.dot_product_attention`; cuDNN needs a GPU and float16/bfloat16; a row with
      every key masked follows jax.nn's convention there, not zeros), "pallas" (jax's
      Pallas flash attention, TPU only: causal or no mask, T and S multiples of 128), or
      "auto" (the table of `choose_impl`).

  Returns:
    out_BTHK in q's dtype.
  """
  B, T, H, K = q_BTHK.shape
  at_zero = isinstance(query_offset, (int, np.integer)) and query_offset == 0
  impl = choose_impl(
      impl, num_queries=T, num_keys=k_BSHK.shape[1], head_dim=K, batch_heads=B * H,
      dtype=q_BTHK.dtype, causal=causal, key_padding=key_padding_mask_BS is not None,
      local_window=local_window, offset_zero=at_zero, mask=mask, dropout_fn=dropout_fn)
  kw = dict(causal=causal, key_padding_mask_BS=key_padding_mask_BS,
            local_window=local_window, query_offset=query_offset, scale=scale)
  if impl == "reference":
    return dot_product_attention(q_BTHK, k_BSHK, v_BSHK, mask=mask, dropout_fn=dropout_fn, **kw)
  if mask is not None and impl in ("blockwise", "chunked", "flash_cpu", "pallas"):
    raise ValueError(f"impl={impl!r} takes no `mask` (it needs the whole [T, S] weights); "
                     "use impl='reference' or 'auto'")
  if dropout_fn is not None:
    raise ValueError(f"impl={impl!r} takes no `dropout_fn` (dropout needs the whole [T, S] "
                     "weights); use impl='reference' or 'auto'")
  if impl == "blockwise":
    # Imported here: blockwise_attention builds on this module (its mask constant).
    from seqscale.ops import blockwise_attention  # pylint: disable=g-import-not-at-top
    return blockwise_attention.blockwise_attention(q_BTHK, k_BSHK, v_BSHK, **kw)
  if impl == "chunked":
    from seqscale.ops import chunked_attention  # pylint: disable=g-import-not-at-top
    return chunked_attention.chunked_attention(q_BTHK, k_BSHK, v_BSHK, **kw)
  if impl == "flash_cpu":
    from seqscale.ops import native_attention  # pylint: disable=g-import-not-at-top
    if not causal or not at_zero or key_padding_mask_BS is not None or local_window is not None:
      raise ValueError("impl='flash_cpu' is causal self-attention at query offset 0 without "
                       "key padding or window; use impl='auto'")
    return native_attention.flash_attention(q_BTHK, k_BSHK, v_BSHK, scale=scale)
  if impl == "pallas":
    return _pallas_attention(q_BTHK, k_BSHK, v_BSHK, causal=causal, scale=scale,
                             plain=at_zero and key_padding_mask_BS is None
                             and local_window is None)
  allowed = None
  if not at_zero or any(a is not None for a in (key_padding_mask_BS, local_window, mask)):
    allowed = make_attention_mask(
        q_BTHK.shape[1], k_BSHK.shape[1], causal=causal,
        key_padding_mask_BS=key_padding_mask_BS, local_window=local_window,
        query_offset=query_offset, mask=mask)
  out = jax.nn.dot_product_attention(
      q_BTHK, k_BSHK, v_BSHK, scale=scale, mask=allowed,
      is_causal=causal and allowed is None, implementation=impl)
  return out.astype(q_BTHK.dtype)


def _pallas_attention(q_BTHK: Array, k_BSHK: Array, v_BSHK: Array, *, causal: bool,
                      scale: float | None, plain: bool) -> Array:
  """jax's Pallas TPU flash attention, in its [B, H, T, K] layout."""
  fa = _pallas_tpu()
  if fa is None or jax.default_backend() != "tpu" or not plain:
    raise ValueError("impl='pallas' needs a TPU, jax's Pallas TPU kernels, and no key "
                     "padding, window or query offset; use impl='auto'")
  K = q_BTHK.shape[-1]
  bhtk = lambda x: jnp.swapaxes(x, 1, 2)
  out = fa.flash_attention(bhtk(q_BTHK), bhtk(k_BSHK), bhtk(v_BSHK), causal=causal,
                           sm_scale=float(1.0 / np.sqrt(K) if scale is None else scale))
  return bhtk(out).astype(q_BTHK.dtype)


def project_heads(x_BTD: Array, kernel_DHK: Array, bias_HK: Array | None = None) -> Array:
  """Projects features to heads: x_BTD @ kernel_DHK (+ bias_HK) -> BTHK."""
  y_BTHK = jnp.einsum('BTD,DHK->BTHK', x_BTD, kernel_DHK)
  return y_BTHK if bias_HK is None else y_BTHK + bias_HK


def merge_heads(x_BTHK: Array, kernel_HKD: Array, bias_D: Array | None = None) -> Array:
  """Projects heads back to features: x_BTHK @ kernel_HKD (+ bias_D) -> BTD."""
  y_BTD = jnp.einsum('BTHK,HKD->BTD', x_BTHK, kernel_HKD)
  return y_BTD if bias_D is None else y_BTD + bias_D


def sinusoidal_positions(
    T: int, D: int, *, offset: int | Array = 0, max_timescale: float = 10000.0) -> Array:
  """Sinusoidal position encodings of Vaswani et al. (2017), section 3.5.

  PE[pos, 2i] = sin(pos / max_timescale^(2i/D)), PE[pos, 2i+1] = cos(same), for positions
  pos = offset, ..., offset + T - 1 (`offset` may be a traced int scalar).

  Returns:
    float32 [T, D].
  """
  pos_T = jnp.asarray(offset, jnp.float32) + jnp.arange(T, dtype=jnp.float32)
  two_i = jnp.arange(0, D, 2, dtype=jnp.float32)  # 2i for i = 0 .. ceil(D/2) - 1
  angles_TI = pos_T[:, None] / jnp.power(max_timescale, two_i / D)[None, :]
  # Interleave sin (even features) and cos (odd features), then drop the extra for odd D.
  pe_TI2 = jnp.stack([jnp.sin(angles_TI), jnp.cos(angles_TI)], axis=-1)
  return pe_TI2.reshape(T, -1)[:, :D]


def local_attention(q_BTHK: Array, k_BTHK: Array, v_BTHK: Array, r: int) -> Array:
  """Causal attention of each position t to keys t - r .. t, in O(T r K) work per head.

  Blocks of r queries attend to their own block and the previous one ([N, R, W = 2R]),
  then the mask keeps keys t - r .. t: the same result as ``dot_product_attention`` with
  ``causal=True, local_window=r``, without computing the other T - 2r scores of a row.
  """
  B, T, H, K = q_BTHK.shape
  N = -(-T // r)
  blocks = lambda a: jnp.pad(a, [(0, 0), (0, N * r - T), (0, 0), (0, 0)]).reshape(B, N, r, H, K)
  q_BNRHK, k_BNRHK, v_BNRHK = blocks(q_BTHK), blocks(k_BTHK), blocks(v_BTHK)
  prev = lambda a: jnp.concatenate([jnp.zeros_like(a[:, :1]), a[:, :-1]], axis=1)
  k_BNWHK = jnp.concatenate([prev(k_BNRHK), k_BNRHK], axis=2)
  v_BNWHK = jnp.concatenate([prev(v_BNRHK), v_BNRHK], axis=2)
  scores_BHNRW = jnp.einsum("BNRHK,BNWHK->BHNRW", q_BNRHK, k_BNWHK) / math.sqrt(K)
  block_N, row_R, col_W = jnp.arange(N), jnp.arange(r), jnp.arange(2 * r)
  delta_RW = row_R[:, None] + r - col_W[None, :]  # query position minus key position
  key_NW = (block_N[:, None] - 1) * r + col_W[None, :]
  allowed_NRW = (delta_RW >= 0)[None] & (delta_RW <= r)[None] & (key_NW >= 0)[:, None, :]
  scores_BHNRW = jnp.where(allowed_NRW, scores_BHNRW, MASKED_SCORE)
  weights_BHNRW = jnp.where(allowed_NRW, jax.nn.softmax(scores_BHNRW, axis=-1), 0.0)
  out_BNRHK = jnp.einsum("BHNRW,BNWHK->BNRHK", weights_BHNRW, v_BNWHK)
  return out_BNRHK.reshape(B, N * r, H, K)[:, :T]
