"""Attention ops and the MultiHeadAttention module against independent references.

References: `jax.nn.dot_product_attention`, `flax.nnx.MultiHeadAttention` with copied
weights, NumPy loops for the masks and the sinusoidal formula of Vaswani et al. (2017).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqscale.models.transformer import MultiHeadAttention
from seqscale.ops import attention as A

B, T, S, H, K = 2, 7, 7, 4, 8


def _qkv(seed=0, T=T, S=S, dtype=jnp.float32):
  kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(kq, (B, T, H, K), jnp.float32)
  k = jax.random.normal(kk, (B, S, H, K), jnp.float32)
  v = jax.random.normal(kv, (B, S, H, K), jnp.float32)
  return q.astype(dtype), k.astype(dtype), v.astype(dtype)


_LENGTHS = np.array([4, 7], np.int32)  # valid key counts per batch row (no empty row)
_PAD_BS = np.arange(S)[None, :] < _LENGTHS[:, None]

# (ours kwargs, jax.nn kwargs)
_CASES = {
    "none": ({}, {}),
    "causal": ({"causal": True}, {"is_causal": True}),
    "key_padding": ({"key_padding_mask_BS": _PAD_BS},
                    {"key_value_seq_lengths": jnp.asarray(_LENGTHS)}),
    "window": ({"local_window": 2}, {"local_window_size": (2, 2)}),
    "window0": ({"local_window": 0}, {"local_window_size": (0, 0)}),
    "causal_window": ({"causal": True, "local_window": 2},
                      {"is_causal": True, "local_window_size": (2, 2)}),
    "causal_window_padding": (
        {"causal": True, "local_window": 3, "key_padding_mask_BS": _PAD_BS},
        {"is_causal": True, "local_window_size": (3, 3),
         "key_value_seq_lengths": jnp.asarray(_LENGTHS)}),
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_matches_jax_nn(case):
  ours_kw, ref_kw = _CASES[case]
  q, k, v = _qkv()
  ours = A.dot_product_attention(q, k, v, **ours_kw)
  ref = jax.nn.dot_product_attention(q, k, v, implementation="xla", **ref_kw)
  np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_matches_jax_nn_explicit_mask_and_scale_cross_lengths():
  q, k, v = _qkv(1, T=5, S=9)
  mask = jax.random.bernoulli(jax.random.key(5), 0.6, (B, H, 5, 9)).at[..., 0].set(True)
  ours = A.dot_product_attention(q, k, v, mask=mask, scale=0.3)
  ref = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=0.3, implementation="xla")
  np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_make_attention_mask_matches_loop():
  T_, S_, r, off = 4, 9, 2, 3
  pad = np.arange(S_)[None, :] < np.array([[6], [9]])
  got = np.asarray(A.make_attention_mask(
      T_, S_, causal=True, local_window=r, query_offset=off, key_padding_mask_BS=pad))
  assert got.shape == (2, 1, T_, S_) and got.dtype == bool
  want = np.zeros((2, 1, T_, S_), bool)
  for b in range(2):
    for t in range(T_):
      for s in range(S_):
        pos = off + t
        want[b, 0, t, s] = s <= pos and abs(pos - s) <= r and pad[b, s]
  np.testing.assert_array_equal(got, want)
  assert A.make_attention_mask(3, 5).shape == (1, 1, 3, 5)


def _naive_bf16_attention(q, k, v):
  """Causal attention with every op in bfloat16: scores, exp, sum and division rounded."""
  bf16, T, S, K = jnp.bfloat16, q.shape[1], k.shape[1], q.shape[-1]
  s = jnp.einsum("BTHK,BSHK->BHTS", q, k, preferred_element_type=bf16) * bf16(K ** -0.5)
  s = jnp.where(np.tril(np.ones((T, S), bool)), s, bf16(-1e4))
  e = jnp.exp(s - s.max(-1, keepdims=True))
  w = e / e.sum(-1, keepdims=True, dtype=bf16)
  return jnp.einsum("BHTS,BSHK->BTHK", w, v, preferred_element_type=bf16)


def test_bf16_softmax_is_float32_accurate():
  # Large scores (|s| ~ 10, where a bf16 score is off by up to 2^-5): a bf16 softmax is
  # visibly off; ours computes scores and softmax in float32.
  q, k, v = _qkv(2, T=16, S=16, dtype=jnp.bfloat16)
  q = q * 3  # exact in bf16: the inputs stay what the float64 reference sees
  ours = A.dot_product_attention(q, k, v, causal=True)
  assert ours.dtype == jnp.bfloat16
  # Float64 reference on the same bf16-rounded inputs.
  q64, k64, v64 = (np.asarray(a, np.float64) for a in (q, k, v))
  s = np.einsum("BTHK,BSHK->BHTS", q64, k64) / np.sqrt(K)
  s = np.where(np.tril(np.ones((16, 16), bool)), s, -np.inf)
  w = np.exp(s - s.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  ref = np.einsum("BHTS,BSHK->BTHK", w, v64)
  # bf16's unit roundoff u = 2^-8. With float32 scores and softmax, only two roundings are
  # left: the weights to bf16 (|dw| <= u w, so u sum_s w|v|) and the output to bf16
  # (u |out| <= u sum_s w|v|). Hence, elementwise: |ours - ref| <= 2 u sum_s w_s |v_s|.
  tol = 2 * 2.0**-8 * np.einsum("BHTS,BSHK->BTHK", w, np.abs(v64)) + 1e-6
  ratio = lambda out: float(np.max(np.abs(np.asarray(out, np.float64) - ref) / tol))
  assert ratio(ours) <= 1.0
  # The bound discriminates: rounding the scores alone moves a weight by ~|s| 2^-8 (3% at
  # |s| ~ 8), far beyond it (measured here: naive 3.6 times the bound, ours 0.68).
  assert ratio(_naive_bf16_attention(q, k, v)) > 1.5


def test_fully_masked_rows_are_zero_not_nan():
  q, k, v = _qkv(3)
  pad = np.ones((B, S), bool)
  pad[0] = False  # batch row 0 has no valid key at all
  f = lambda q, k, v: A.dot_product_attention(q, k, v, key_padding_mask_BS=pad)
  out = f(q, k, v)
  assert np.all(np.isfinite(out))
  np.testing.assert_array_equal(out[0], 0.0)
  ref = jax.nn.dot_product_attention(q[1:], k[1:], v[1:], implementation="xla")
  np.testing.assert_allclose(out[1:], ref, atol=1e-5)
  grads = jax.grad(lambda *a: f(*a).sum(), argnums=(0, 1, 2))(q, k, v)
  assert all(np.all(np.isfinite(g)) for g in grads)
  # Causal with a negative offset masks every key of the early queries.
  out = A.dot_product_attention(q, k, v, causal=True, query_offset=-3)
  assert np.all(np.isfinite(out))
  np.testing.assert_array_equal(out[:, :3], 0.0)


@pytest.mark.parametrize("local_window", [None, 2])
def test_query_offset_equals_slice_of_full_causal(local_window):
  q, k, v = _qkv(4)
  full = jax.nn.dot_product_attention(
      q, k, v, is_causal=True, implementation="xla",
      local_window_size=None if local_window is None else (local_window, local_window))
  for off, n in [(0, 1), (3, 2), (6, 1)]:
    got = A.dot_product_attention(q[:, off:off + n], k, v, causal=True,
                                  local_window=local_window, query_offset=off)
    np.testing.assert_allclose(got, full[:, off:off + n], atol=1e-5)
  # A traced offset (as in a jitted decoding loop) gives the same.
  jitted = jax.jit(lambda q1, off: A.dot_product_attention(
      q1, k, v, causal=True, local_window=local_window, query_offset=off))
  np.testing.assert_allclose(jitted(q[:, 4:5], jnp.int32(4)), full[:, 4:5], atol=1e-5)


def test_sinusoidal_positions_match_paper_formula():
  for T_, D, off in [(11, 16, 0), (5, 7, 40)]:
    got = np.asarray(A.sinusoidal_positions(T_, D, offset=off))
    want = np.zeros((T_, D))
    for p in range(T_):
      pos = p + off
      for j in range(D):
        i2 = j - j % 2  # 2i
        angle = pos / 10000 ** (i2 / D)
        want[p, j] = np.sin(angle) if j % 2 == 0 else np.cos(angle)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-5)


def _flax_pair(in_features, num_heads, qkv_features, in_kv_features=None):
  theirs = nnx.MultiHeadAttention(
      num_heads, in_features, qkv_features=qkv_features, in_kv_features=in_kv_features,
      decode=False, deterministic=True, rngs=nnx.Rngs(0))
  # Non-zero biases so the copy is checked for them too.
  params = nnx.state(theirs, nnx.Param)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(9), len(leaves))
  leaves = [p + 0.1 * jax.random.normal(kk, p.shape) for p, kk in zip(leaves, keys)]
  nnx.update(theirs, jax.tree.unflatten(treedef, leaves))
  ours = MultiHeadAttention(in_features, num_heads, qkv_features=qkv_features,
                            in_kv_features=in_kv_features, rngs=nnx.Rngs(1))
  nnx.update(ours, nnx.state(theirs, nnx.Param))
  return ours, theirs


def test_mha_matches_flax_self_attention_with_mask():
  ours, theirs = _flax_pair(12, 3, 24)
  x = jax.random.normal(jax.random.key(0), (B, T, 12))
  pad = jnp.asarray(_PAD_BS)
  mask = nnx.combine_masks(nnx.make_causal_mask(jnp.ones((B, T))),
                           nnx.make_attention_mask(jnp.ones((B, T)), pad))
  np.testing.assert_allclose(ours(x, mask=mask), theirs(x, mask=mask), atol=1e-5)
  np.testing.assert_allclose(ours(x, causal=True, key_padding_mask_BS=pad),
                             theirs(x, mask=mask), atol=1e-5)
  np.testing.assert_allclose(ours(x), theirs(x), atol=1e-5)


def test_mha_matches_flax_cross_attention_with_mask():
  ours, theirs = _flax_pair(12, 4, 16, in_kv_features=6)
  xq = jax.random.normal(jax.random.key(1), (B, 5, 12))
  xkv = jax.random.normal(jax.random.key(2), (B, 9, 6))
  kv_valid = jnp.arange(9)[None, :] < jnp.array([[3], [9]])
  mask = nnx.make_attention_mask(jnp.ones((B, 5), bool), kv_valid)
  np.testing.assert_allclose(ours(xq, xkv, mask=mask), theirs(xq, xkv, xkv, mask=mask),
                             atol=1e-5)
  np.testing.assert_allclose(ours(xq, xkv, key_padding_mask_BS=kv_valid),
                             theirs(xq, xkv, xkv, mask=mask), atol=1e-5)


def test_mha_rejects_bad_head_split():
  with pytest.raises(ValueError, match="qkv_features"):
    MultiHeadAttention(10, 3, rngs=nnx.Rngs(0))
