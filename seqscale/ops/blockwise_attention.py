"""Memory-efficient blockwise attention: online softmax, masked blocks skipped, all three
modes of differentiation.

The same function as ``ops.attention.dot_product_attention`` (the readable reference),
computed block by block as in FlashAttention (Dao et al. 2022; Rabe & Staats 2021):

  forward:  for each query block, loop over only the key blocks that some query of the
            block may see (causal: the blocks at or before the diagonal; local window: the
            blocks within reach), keeping a running max m, normaliser l and output acc:
              s = q k^T * scale,  m' = max(m, rowmax s),  p = exp(s - m')
              l' = l e^(m - m') + rowsum p,  acc' = acc e^(m - m') + p v
            and save only out and the log-sum-exp lse = m + log l per query;
  reverse:  p = exp(s - lse) recomputed block by block, looping over each key block's
            queries with the scores transposed ([key, query]: two of the five matmuls
            then need no transposed operand): dv += p^T do, ds = p (do v^T - rowsum(do *
            out)), dk += ds^T q, dq += ds k;
  forward mode (jvp): with P = exp(s - lse) and dS = (dq k^T + q dk^T) * scale, block by
            block: dout = sum P dv + (P * dS) v - rowsum(P * dS) out.

Only the blocks on a mask's edge (the causal diagonal, a window's ends, key padding) build
a mask; the blocks inside it are computed without one.

No [T, S] array is ever formed: memory is linear in T (the blocks are [B, H, block, block]),
and the work skipped grows with T (causal: about half).

Differentiation: ``jax.custom_jvp`` whose tangent is a small linear primitive
(``_tangent_p``) with the reverse pass above as its transpose. So ``jax.jvp``,
``jax.jacfwd``, ``jax.grad`` and Hessian-vector products (``jax.jvp`` of ``jax.grad``) all
work, and ``jax.grad`` costs exactly the forward plus the reverse pass (a ``custom_vjp``
would refuse forward mode).

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
from jax.extend import core as jex_core
from jax.interpreters import ad, batching, mlir

from seqscale.checks import check_int
from seqscale.ops import native_attention
from seqscale.ops.attention import MASKED_SCORE
# The dispatcher lives in ops.attention; these names stay importable from here.
from seqscale.ops.attention import IMPLS, attention  # noqa: F401  pylint: disable=unused-import

Array = jax.Array

# Block rows by length, for queries (by T) and keys (by S): (up to this many positions,
# block; None: the length itself). Chosen with tools/attention_speed.py on a 2-core Xeon
# (AVX-512), B=4, H=8, K=64, float32, causal forward+backward, by median wall time on an
# idle machine (other processes paused): at T=2048, 256x512 took 600 ms against 725 for
# 128x128, 683 for 128x512, 687 for 256x256 and 777 to 827 for 128, 256 or 512 x 1024; at
# T=8192, 7.8 s against 10.6 (128x128) and 9.4 (256x256): larger blocks are larger ops,
# which XLA spreads over both cores. At T=512, 128x128 (63 ms) beat 64x64 (71), 256x256
# (74) and 256x512 (87); at T=256, 64x64 and 128x128 were within noise.
QUERY_BLOCKS = ((128, None), (512, 128), (1 << 62, 256))
KEY_BLOCKS = ((128, None), (512, 128), (1 << 62, 512))


def default_block(n: int, table=QUERY_BLOCKS) -> int:
  """Block rows for a length n from ``table`` (``QUERY_BLOCKS`` or ``KEY_BLOCKS``); None
  there means n itself."""
  for upto, block in table:
    if n <= upto:
      return max(1, n) if block is None else block
  raise AssertionError("the block table ends with an unbounded row")


def _to_blocks(x_BTHK: Array, block: int) -> Array:
  """[B, T, H, K] -> [n, B, H, block, K], padding T up to n * block."""
  B, T, H, K = x_BTHK.shape
  n = -(-T // block)
  x = jnp.pad(x_BTHK, ((0, 0), (0, n * block - T), (0, 0), (0, 0)))
  return x.reshape(B, n, block, H, K).transpose(1, 0, 3, 2, 4)


def _from_blocks(x_nBHbK: Array, T: int) -> Array:
  n, B, H, b, K = x_nBHbK.shape
  return x_nBHbK.transpose(1, 0, 3, 2, 4).reshape(B, n * b, H, K)[:, :T]


def _lse_blocks(lse_BHT: Array, block: int) -> Array:
  """[B, H, T] -> [n, B, H, block]."""
  B, H, T = lse_BHT.shape
  n = -(-T // block)
  x = jnp.pad(lse_BHT, ((0, 0), (0, 0), (0, n * block - T)))
  return x.reshape(B, H, n, block).transpose(2, 0, 1, 3)


def _lse_from_blocks(lse_nBHb: Array, T: int) -> Array:
  n, B, H, b = lse_nBHb.shape
  return lse_nBHb.transpose(1, 2, 0, 3).reshape(B, H, n * b)[..., :T]


def _ranges(lo, full_lo, full_hi, hi):
  """[lo, hi) with its fully visible part [full_lo, full_hi) clipped inside it."""
  full_lo = jnp.clip(full_lo, lo, hi)
  return lo, full_lo, jnp.clip(full_hi, full_lo, hi), hi


class _Geometry:
  """Which (query block, key block) pairs hold a visible pair, which hold only visible
  pairs (computed without a mask), and the mask of a block."""

  def __init__(self, T, S, bq, bk, causal, window, offset, padded):
    self.T, self.S, self.bq, self.bk = T, S, bq, bk
    self.nq, self.nk = -(-T // bq), -(-S // bk)
    self.causal, self.window, self.padded = causal, window, padded
    self.offset = jnp.asarray(offset, jnp.int32)

  def key_blocks(self, i):
    """(lo, full_lo, full_hi, hi): query block i sees key blocks [lo, hi), and every pair
    of those in [full_lo, full_hi)."""
    a = self.offset + i * self.bq  # positions of the block's first and last queries
    b = a + self.bq - 1
    s_min, s_max = jnp.int32(0), jnp.int32(self.S - 1)  # keys some query sees
    f_min, f_max = jnp.int32(0), jnp.int32(self.S // self.bk * self.bk - 1)  # all see
    if self.causal:
      s_max, f_max = jnp.minimum(s_max, b), jnp.minimum(f_max, a)
    if self.window is not None:
      s_min, f_min = jnp.maximum(s_min, a - self.window), jnp.maximum(f_min, b - self.window)
      if not self.causal:
        s_max, f_max = jnp.minimum(s_max, b + self.window), jnp.minimum(f_max, a + self.window)
    lo = jnp.clip(s_min // self.bk, 0, self.nk)
    hi = jnp.where(s_max >= s_min, jnp.clip(s_max // self.bk + 1, lo, self.nk), lo)
    if self.padded:
      return lo, lo, lo, hi
    return _ranges(lo, -(-f_min // self.bk), (f_max + 1) // self.bk, hi)

  def query_blocks(self, j):
    """(lo, full_lo, full_hi, hi): the query blocks that see key block j, and those all
    of whose queries see all of it."""
    c = j * self.bk  # positions of the block's first and last keys
    d = c + self.bk - 1
    big = jnp.int32(2**30)
    q_min, q_max, f_min, f_max = -big, big, -big, big  # query positions
    if self.causal:
      q_min, f_min = c, d
    if self.window is not None:
      q_max, f_max = d + self.window, c + self.window
      if not self.causal:
        q_min, f_min = c - self.window, d - self.window
    last = self.nq * self.bq - 1
    t_min = jnp.maximum(q_min - self.offset, 0)
    t_max = jnp.minimum(q_max - self.offset, last)
    lo = jnp.clip(t_min // self.bq, 0, self.nq)
    hi = jnp.where(t_max >= t_min, jnp.clip(t_max // self.bq + 1, lo, self.nq), lo)
    if self.padded:
      return lo, lo, lo, hi
    f_lo = -(-jnp.maximum(f_min - self.offset, 0) // self.bq)
    f_hi = (jnp.minimum(f_max - self.offset, last) + 1) // self.bq
    f_hi = jnp.where(d >= self.S, f_lo, f_hi)  # the last key block, past S, is masked
    return _ranges(lo, f_lo, f_hi, hi)

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


def _loop(ranges, body, init):
  """``body(masked)(index, state)`` over [lo, full_lo) and [full_hi, hi) with the mask,
  over [full_lo, full_hi) without."""
  lo, full_lo, full_hi, hi = ranges
  state = jax.lax.fori_loop(lo, full_lo, body(True), init)
  state = jax.lax.fori_loop(full_lo, full_hi, body(False), state)
  return jax.lax.fori_loop(full_hi, hi, body(True), state)


def _scores(q, k, scale):
  return jnp.einsum("BHTK,BHSK->BHTS", q, k, preferred_element_type=jnp.float32) * scale


def _forward(geo: _Geometry, scale, q_b, k_b, v_b, kpm):
  """Per query block: out [nq, B, H, bq, K] and lse [nq, B, H, bq], both float32 (XLA's CPU
  backend writes blocks into a bfloat16 buffer far slower than into a float32 one)."""
  _, B, H, bq, K = q_b.shape

  def q_block(i, outs):
    out_b, lse_b = outs
    q = q_b[i]

    def body(masked):
      def k_block(j, state):
        m, l, acc = state
        s = _scores(q, k_b[j], scale)
        if masked:
          ok = geo.mask(i, j, kpm)
          s = jnp.where(ok, s, MASKED_SCORE)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        p = jnp.exp(s - m_new[..., None])
        if masked:  # a row with no visible key yet has m_new = MASKED_SCORE: p would be 1
          p = jnp.where(ok, p, 0.0)
        alpha = jnp.exp(m - m_new)
        pv = jnp.einsum("BHTS,BHSK->BHTK", p.astype(v_b.dtype), v_b[j],
                        preferred_element_type=jnp.float32)
        return m_new, l * alpha + jnp.sum(p, axis=-1), acc * alpha[..., None] + pv
      return k_block

    init = (jnp.full((B, H, bq), MASKED_SCORE, jnp.float32),
            jnp.zeros((B, H, bq), jnp.float32), jnp.zeros((B, H, bq, K), jnp.float32))
    m, l, acc = _loop(geo.key_blocks(i), body, init)
    seen = l > 0  # rows that see no key: zeros (and a finite lse)
    out = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0)
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0)
    return out_b.at[i].set(out), lse_b.at[i].set(lse)

  outs = (jnp.zeros(q_b.shape, jnp.float32), jnp.zeros(q_b.shape[:-1], jnp.float32))
  return jax.lax.fori_loop(0, geo.nq, q_block, outs)


def _backward(geo: _Geometry, scale, q_b, k_b, v_b, kpm, out_b, lse_b, do_b):
  """dq, dk, dv in blocks: per key block j, over its query blocks i, scores as [bk, bq]."""
  # rowsum(do * out) with out rounded as the caller saw it.
  delta_b = jnp.sum(do_b.astype(jnp.float32) * out_b.astype(q_b.dtype).astype(jnp.float32),
                    axis=-1)
  dt = q_b.dtype

  def k_block(j, grads):
    dq_b, dk_b, dv_b = grads
    k, v = k_b[j], v_b[j]

    def body(masked):
      def q_block(i, state):
        dq_b, dk, dv = state
        q, do = q_b[i], do_b[i]
        p = jnp.exp(_scores(k, q, scale) - lse_b[i][:, :, None, :])  # [B, H, bk, bq]
        if masked:
          p = jnp.where(jnp.swapaxes(geo.mask(i, j, kpm), -1, -2), p, 0.0)
        dv = dv + jnp.einsum("BHST,BHTK->BHSK", p.astype(dt), do,
                             preferred_element_type=jnp.float32)
        dp = jnp.einsum("BHSK,BHTK->BHST", v, do, preferred_element_type=jnp.float32)
        ds = (p * (dp - delta_b[i][:, :, None, :]) * scale).astype(dt)
        dk = dk + jnp.einsum("BHST,BHTK->BHSK", ds, q, preferred_element_type=jnp.float32)
        dq = jnp.einsum("BHST,BHSK->BHTK", ds, k, preferred_element_type=jnp.float32)
        return dq_b.at[i].add(dq), dk, dv
      return q_block

    zero = jnp.zeros(k.shape, jnp.float32)
    dq_b, dk, dv = _loop(geo.query_blocks(j), body, (dq_b, zero, zero))
    return dq_b, dk_b.at[j].set(dk), dv_b.at[j].set(dv)

  zeros = lambda x: jnp.zeros(x.shape, jnp.float32)
  return jax.lax.fori_loop(0, geo.nk, k_block, (zeros(q_b), zeros(k_b), zeros(v_b)))


def _tangent(geo: _Geometry, scale, q_b, k_b, v_b, kpm, out_b, lse_b, dq_b, dk_b, dv_b):
  """The forward-mode derivative dout in blocks [nq, B, H, bq, K], float32."""
  dt = q_b.dtype

  def q_block(i, t_b):
    q, dq = q_b[i], dq_b[i]

    def body(masked):
      def k_block(j, state):
        t, r = state
        k = k_b[j]
        p = jnp.exp(_scores(q, k, scale) - lse_b[i][..., None])
        if masked:
          p = jnp.where(geo.mask(i, j, kpm), p, 0.0)
        a = p * (_scores(dq, k, scale) + _scores(q, dk_b[j], scale))
        t = t + jnp.einsum("BHTS,BHSK->BHTK", p.astype(dt), dv_b[j],
                           preferred_element_type=jnp.float32)
        t = t + jnp.einsum("BHTS,BHSK->BHTK", a.astype(dt), v_b[j],
                           preferred_element_type=jnp.float32)
        return t, r + jnp.sum(a, axis=-1)
      return k_block

    zero = jnp.zeros(q.shape, jnp.float32)
    t, r = _loop(geo.key_blocks(i), body, (zero, zero[..., 0]))
    return t_b.at[i].set(t - r[..., None] * out_b[i].astype(jnp.float32))

  return jax.lax.fori_loop(0, geo.nq, q_block, jnp.zeros(q_b.shape, jnp.float32))


def _prepare(q, k, v, kpm_BS, offset, cfg):
  causal, window, _, bq, bk, padded, _ = cfg
  geo = _Geometry(q.shape[1], k.shape[1], bq, bk, causal, window, offset, padded)
  kpm = None
  if padded:
    kpm = jnp.pad(jnp.asarray(kpm_BS, bool), ((0, 0), (0, geo.nk * bk - k.shape[1])))
    kpm = kpm.reshape(kpm.shape[0], geo.nk, bk).transpose(1, 0, 2)
  return geo, _to_blocks(q, bq), _to_blocks(k, bk), _to_blocks(v, bk), kpm


def _attention_out_lse(cfg, q, k, v, kpm_BS, offset):
  if cfg[6]:  # the C++ kernel (causal, offset 0, no padding)
    return _native(cfg, "forward")(q, k, v)
  geo, q_b, k_b, v_b, kpm = _prepare(q, k, v, kpm_BS, offset, cfg)
  out_b, lse_b = _forward(geo, cfg[2], q_b, k_b, v_b, kpm)
  return _from_blocks(out_b, q.shape[1]).astype(q.dtype), _lse_from_blocks(lse_b, q.shape[1])


# cfg = (causal, window, scale, block_q, block_k, padded, native): static; native runs
# the forward and reverse passes in ops.native_attention's C++ kernel (forward mode stays
# the JAX tangent below). kpm_BS is bool [B, S]
# (all True when not padded), offset an int32 scalar; neither is differentiated.
@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _attention(cfg, q, k, v, kpm_BS, offset):
  return _attention_out_lse(cfg, q, k, v, kpm_BS, offset)[0]


@_attention.defjvp
def _attention_jvp(cfg, primals, tangents):
  q, k, v, kpm_BS, offset = primals
  out, lse = _attention_out_lse(cfg, q, k, v, kpm_BS, offset)
  dq, dk, dv = (ad.instantiate_zeros(t) for t in tangents[:3])
  dout = _tangent_p.bind(q, k, v, kpm_BS, offset, out, lse, dq, dk, dv, cfg=cfg)
  return out, dout


# --- the tangent as a primitive, linear in (dq, dk, dv), whose transpose is _backward.
_NUM_RES = 7  # q, k, v, kpm_BS, offset, out, lse


def _tangent_impl(q, k, v, kpm_BS, offset, out, lse, dq, dk, dv, *, cfg):
  geo, q_b, k_b, v_b, kpm = _prepare(q, k, v, kpm_BS, offset, cfg)
  bq, bk, T = cfg[3], cfg[4], q.shape[1]
  t_b = _tangent(geo, cfg[2], q_b, k_b, v_b, kpm, _to_blocks(out, bq), _lse_blocks(lse, bq),
                 _to_blocks(dq.astype(q.dtype), bq), _to_blocks(dk.astype(k.dtype), bk),
                 _to_blocks(dv.astype(v.dtype), bk))
  return _from_blocks(t_b, T).astype(q.dtype)


def _tangent_transpose(ct, q, k, v, kpm_BS, offset, out, lse, dq, dk, dv, *, cfg):
  del dq, dk, dv  # linear inputs: the cotangents are returned for them
  res = [None] * _NUM_RES
  if type(ct) is ad.Zero:  # pylint: disable=unidiomatic-typecheck
    return res + [None, None, None]
  if cfg[6]:
    return res + list(_native(cfg, "backward")(q, k, v, out, lse, ct))
  return res + list(_grads(cfg, q, k, v, kpm_BS, offset, out, lse, ct))


def _grads(cfg, q, k, v, kpm_BS, offset, out, lse, ct):
  """dq, dk, dv for the cotangent ct of out (the reverse pass in blocks)."""
  geo, q_b, k_b, v_b, kpm = _prepare(q, k, v, kpm_BS, offset, cfg)
  bq = cfg[3]
  dq_b, dk_b, dv_b = _backward(geo, cfg[2], q_b, k_b, v_b, kpm, _to_blocks(out, bq),
                               _lse_blocks(lse, bq), _to_blocks(ct.astype(q.dtype), bq))
  return (_from_blocks(dq_b, q.shape[1]).astype(q.dtype),
          _from_blocks(dk_b, k.shape[1]).astype(k.dtype),
          _from_blocks(dv_b, v.shape[1]).astype(v.dtype))


@functools.cache
def _native(cfg, which):
  """The C++ kernel's forward ((q, k, v) -> (out, lse)) or reverse pass ((q, k, v, out,
  lse, ct) -> (dq, dk, dv)) for causal self-attention at offset 0.

  The kernel has no derivatives of its own: where a pass is itself differentiated
  (forward mode of a gradient, e.g. a Hessian-vector product), the derivative is that of
  the same pass in JAX (``_attention_out_lse``, ``_grads``) at the same inputs.
  """
  jax_cfg = cfg[:6] + (False,)
  no_padding = lambda q: (jnp.ones(q.shape[:2], bool), jnp.asarray(0, jnp.int32))
  if which == "forward":
    fn = jax.custom_jvp(lambda q, k, v: native_attention.forward(q, k, v, cfg[2]))
    in_jax = lambda q, k, v: _attention_out_lse(jax_cfg, q, k, v, *no_padding(q))
  else:
    fn = jax.custom_jvp(lambda q, k, v, out, lse, ct: native_attention.backward(
        q, k, v, out, lse, ct, cfg[2]))
    in_jax = lambda q, k, v, out, lse, ct: _grads(jax_cfg, q, k, v, *no_padding(q), out,
                                                  lse, ct)
  fn.defjvp(lambda primals, tangents: jax.jvp(in_jax, primals, tangents))
  return fn


def _tangent_jvp(primals, tangents, *, cfg):
  # Second order forward mode (jvp of jvp): the same kernel, differentiated by JAX.
  tangents = tuple(ad.instantiate_zeros(t) for t in tangents)
  return jax.jvp(functools.partial(_tangent_impl, cfg=cfg), tuple(primals), tangents)


def _tangent_batch(args, dims, *, cfg):
  """vmap: the mapped axis joins B (every operand but the offset has B first)."""
  offset, n = args[4], next(a.shape[d] for a, d in zip(args, dims) if d is not None)
  if dims[4] is not None:  # a batched offset: no B to fold it into
    fn = functools.partial(_tangent_impl, cfg=cfg)
    return jax.vmap(fn, in_axes=dims)(*args), 0
  folded = []
  for i, (a, d) in enumerate(zip(args, dims)):
    if i == 4:
      folded.append(a)
      continue
    a = jnp.broadcast_to(a, (n, *a.shape)) if d is None else jnp.moveaxis(a, d, 0)
    folded.append(a.reshape(n * a.shape[1], *a.shape[2:]))
  out = _tangent_p.bind(*folded, cfg=cfg)
  return out.reshape(n, -1, *out.shape[1:]), 0


_tangent_p = jex_core.Primitive("seqscale_blockwise_attention_tangent")
_tangent_p.def_impl(_tangent_impl)
_tangent_p.def_abstract_eval(lambda q, *_, cfg: q)
mlir.register_lowering(_tangent_p, mlir.lower_fun(_tangent_impl, multiple_results=False))
ad.primitive_transposes[_tangent_p] = _tangent_transpose
ad.primitive_jvps[_tangent_p] = _tangent_jvp
batching.primitive_batchers[_tangent_p] = _tangent_batch


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
    block_q, block_k: rows of the query and key blocks (default ``default_block`` of T
      in ``QUERY_BLOCKS`` and of S in ``KEY_BLOCKS``, capped at T and S).

  Returns:
    out_BTHK in q's dtype. ``jax.grad`` runs the blockwise reverse pass, ``jax.jvp`` the
    blockwise tangent; both in memory linear in T.
  """
  if q_BTHK.ndim != 4 or k_BSHK.ndim != 4 or v_BSHK.shape != k_BSHK.shape:
    raise ValueError(f"q, k, v shapes {q_BTHK.shape}, {k_BSHK.shape}, {v_BSHK.shape}: "
                     "expected [B, T, H, K], [B, S, H, K], [B, S, H, K]")
  if local_window is not None:
    check_int("local_window", local_window, 0)
  B, T, S, K = q_BTHK.shape[0], q_BTHK.shape[1], k_BSHK.shape[1], q_BTHK.shape[-1]
  block_q = min(default_block(T) if block_q is None else block_q, max(T, 1))
  block_k = min(default_block(S, KEY_BLOCKS) if block_k is None else block_k, max(S, 1))
  check_int("block_q", block_q, 1)
  check_int("block_k", block_k, 1)
  scale = float(1.0 / np.sqrt(K) if scale is None else scale)
  padded = key_padding_mask_BS is not None
  kpm = (jnp.broadcast_to(jnp.asarray(key_padding_mask_BS, bool), (B, S)) if padded
         else jnp.ones((B, S), bool))
  offset = jnp.asarray(query_offset, jnp.int32)
  cfg = (bool(causal), local_window, scale, block_q, block_k, padded, False)
  return _attention(cfg, q_BTHK, k_BSHK, v_BSHK, kpm, offset)


def native_causal(q_BTHK: Array, k_BSHK: Array, v_BSHK: Array, *,
                  scale: float | None = None) -> Array:
  """Causal float32 self-attention with the forward and reverse passes in the C++ kernel
  of ``ops.native_attention`` (call it through ``native_attention.flash_attention``, which
  checks the inputs and the kernel's availability); forward mode is this module's."""
  B, T, _, K = q_BTHK.shape
  scale = float(1.0 / np.sqrt(K) if scale is None else scale)
  cfg = (True, None, scale, min(default_block(T), T), min(default_block(T, KEY_BLOCKS), T),
         False, True)
  return _attention(cfg, q_BTHK, k_BSHK, v_BSHK, jnp.ones((B, T), bool),
                    jnp.asarray(0, jnp.int32))
