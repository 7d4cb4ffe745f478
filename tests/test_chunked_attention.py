"""The chunked attention path (``ops.chunked_attention``) beyond its equality with the
einsum reference, which test_fast_paths.test_fast_attention_equals_reference checks with
the other fast paths: its key ranges against the reference's masks, rows that see no key,
forward mode against ``jax.nn``, bfloat16 against float32, the chunk table and the CPU's
choice of it, and the arguments it refuses.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqscale.ops import attention as attn_ref
from seqscale.ops import chunked_attention as chunked
from seqscale.ops import native_attention as native
from tests.conftest import FAST_COMPILE
from tests.test_fast_paths import _bf16, _bf16_errors, _close, _f32, _qkv, _value_and_grads


@pytest.mark.parametrize("causal,window,offset", [
    (True, None, 0), (True, 3, 0), (False, 2, 0), (True, 2, 5), (False, None, 0),
    (True, 1, 30)])  # the last: queries past every key, a window that reaches none
def test_chunked_attention_key_range_is_the_span_of_visible_keys(causal, window, offset):
  T, S = 13, 17
  allowed = np.asarray(attn_ref.make_attention_mask(
      T, S, causal=causal, local_window=window, query_offset=offset))[0, 0]
  for lo, hi in ((0, 4), (4, 8), (12, 13), (0, 13), (5, 6)):
    seen = np.flatnonzero(allowed[lo:hi].any(axis=0))
    want = (seen[0], seen[-1] + 1) if seen.size else None
    k_lo, k_hi = chunked.key_range(lo, hi, S, causal=causal, local_window=window,
                                   query_offset=offset)
    assert (k_lo, k_hi) == want if want else k_lo == k_hi, (lo, hi, k_lo, k_hi, want)


def test_chunked_attention_rows_that_see_nothing_are_zero_and_finite(rng):
  q, k, v = _qkv(rng, T=6, S=6)
  kpm = jnp.array([[True] * 6, [False] * 6])  # example 1 may see no key at all
  # chunk=None: one chunk of all 6 rows, in the inputs' own layout; 4: two, transposed.
  for kw, chunk in itertools.product(
      (dict(key_padding_mask_BS=kpm), dict(query_offset=9, local_window=1)), (4, None)):
    out, grads = jax.jit(lambda q, k, v, kw=kw, chunk=chunk: _value_and_grads(
        lambda q, k, v: chunked.chunked_attention(q, k, v, causal=True, chunk=chunk, **kw),
        q, k, v), compiler_options=FAST_COMPILE)(q, k, v)
    assert out.shape == q.shape
    rows = np.asarray(out[1]) if "key_padding_mask_BS" in kw else np.asarray(out)
    assert np.all(rows == 0), (kw, chunk)
    assert np.any(np.asarray(out[0]) != 0) or "key_padding_mask_BS" not in kw
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_chunked_attention_forward_mode_matches_jax_nn(rng):
  # Plain einsums: jax.jvp and a Hessian-vector product work with no rule of ours.
  q, k, v = _qkv(rng, T=20, S=20)
  tq, tk, tv = _qkv(rng, T=20, S=20)
  ours = lambda q, k, v: chunked.chunked_attention(q, k, v, causal=True, chunk=6)
  ref = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                     implementation="xla")
  loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)))

  def modes(f):
    jvp = jax.jvp(f, (q, k, v), (tq, tk, tv))
    return jvp, jax.jvp(jax.grad(loss(f), argnums=(0, 1, 2)), (q, k, v), (tq, tk, tv))[1]
  got, want = (jax.jit(lambda f=f: modes(f), compiler_options=FAST_COMPILE)()
               for f in (ours, ref))
  _close(got[0], want[0])
  _close(got[1], want[1], atol=1e-4, rtol=1e-4)


def test_chunked_attention_bfloat16_follows_float32(rng):
  q, k, v = _bf16(_qkv(rng, T=32, S=32))
  fn = lambda q, k, v: chunked.chunked_attention(q, k, v, causal=True, chunk=8)
  got = _value_and_grads(fn, q, k, v)
  assert got[0].dtype == jnp.bfloat16
  ref = lambda q, k, v: attn_ref.dot_product_attention(q, k, v, causal=True)
  want = _value_and_grads(ref, *_f32((q, k, v)))
  assert max(_bf16_errors(got, want, 4)) <= 1.0  # as the blockwise kernel's bound
  for bad in (attn_ref.dot_product_attention(*_f32((q, k, v)), causal=True, scale=1.0),
              ref(*_f32((q, k[:, :, ::-1], v)))):
    assert max(_bf16_errors(bad, want[0], 4)) > 2.0


def test_chunked_attention_default_chunks():
  assert chunked.default_chunk(1) == 1
  assert chunked.default_chunk(64) == 64  # one chunk
  assert chunked.default_chunk(65) == chunked.default_chunk(128) == 32
  assert chunked.default_chunk(129) == chunked.default_chunk(256) == 40
  # What "auto" runs on the CPU: chunked for short causal attention at offset 0 only.
  choose = lambda **kw: attn_ref.choose_impl("auto", backend="cpu", batch_heads=32, **kw)
  assert choose(num_queries=native.NATIVE_FROM - 1, causal=True) == "chunked"
  assert choose(num_queries=native.NATIVE_FROM, causal=True) == "flash_cpu"
  assert choose(num_queries=chunked.CHUNKED_UPTO, causal=True, local_window=8) == "chunked"
  assert choose(num_queries=chunked.CHUNKED_UPTO + 1, causal=True,
                local_window=8) == "blockwise"
  assert choose(num_queries=64, causal=True, offset_zero=False) == "blockwise"
  assert choose(num_queries=64) == "blockwise"  # not causal: no keys to leave out


def test_chunked_attention_rejects_bad_arguments(rng):
  q, k, v = _qkv(rng)
  with pytest.raises(ValueError, match="query_offset=.*Python int.*impl='blockwise'"):
    jax.jit(lambda q, k, v, i: chunked.chunked_attention(q, k, v, causal=True,
                                                        query_offset=i))(q, k, v, 2)
  with pytest.raises(ValueError, match="query_offset=-1"):
    chunked.chunked_attention(q, k, v, causal=True, query_offset=-1)
  with pytest.raises(ValueError, match="chunk=0"):
    chunked.chunked_attention(q, k, v, causal=True, chunk=0)
  with pytest.raises(ValueError, match="mask"):
    attn_ref.attention(q, k, v, impl="chunked", mask=jnp.ones((1, 1, 13, 13), bool))
