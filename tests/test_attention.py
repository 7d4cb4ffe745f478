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
from tests.conftest import FAST_COMPILE

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


# ------------------------------------------------- the choice per backend, and every impl


def _choice(backend, T=256, S=None, K=64, dtype=jnp.float32, **kw):
  return A.choose_impl("auto", num_queries=T, num_keys=S, head_dim=K, batch_heads=32,
                       dtype=dtype, backend=backend, **kw)


@pytest.mark.parametrize("backend,kw,want", [
    ("cpu", {}, "blockwise"),
    ("cpu", {"causal": True}, "flash_cpu"),  # T=256: the C++ kernel, where it builds
    ("cpu", {"T": 100, "causal": True}, "chunked"),
    ("cpu", {"causal": True, "local_window": 8}, "chunked"),
    ("cpu", {"T": 512, "causal": True}, "flash_cpu"),  # the C++ kernel, where it builds
    ("cpu", {"causal": True, "offset_zero": False}, "blockwise"),
    ("cpu", {"causal": True, "dtype": jnp.bfloat16}, "blockwise"),
    ("cpu", {"T": 8192, "causal": True}, "flash_cpu"),
    ("cpu", {"T": 8192, "causal": True, "dtype": jnp.bfloat16}, "blockwise"),
    ("gpu", {"dtype": jnp.bfloat16, "causal": True}, "cudnn"),
    ("gpu", {"dtype": jnp.float16, "local_window": 4, "causal": True}, "cudnn"),
    ("gpu", {"dtype": jnp.float32}, "xla"),  # cuDNN's flash attention: half precision only
    ("gpu", {"dtype": jnp.bfloat16, "K": 256}, "xla"),
    ("gpu", {"dtype": jnp.bfloat16, "key_padding": True}, "xla"),
    ("gpu", {"dtype": jnp.bfloat16, "offset_zero": False}, "xla"),
    ("gpu", {"dtype": jnp.bfloat16, "local_window": 4}, "xla"),  # a window needs causal
    ("gpu", {"T": 16384}, "blockwise"),  # [32, T, T] float32 = 32 GiB
    ("tpu", {"causal": True}, "pallas"),
    ("tpu", {"T": 200}, "xla"),
    ("tpu", {"key_padding": True}, "xla"),
    ("tpu", {"T": 16384, "local_window": 8}, "blockwise"),
])
def test_choice_by_backend(backend, kw, want):
  assert _choice(backend, **kw) == want


@pytest.mark.parametrize("backend", ["cpu", "gpu", "tpu"])
def test_choice_whole_weights_and_dropout(backend, monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  mask = jnp.ones((1, 1, 4, 4), bool)
  drop = lambda w: w
  assert A.choose_impl("auto", num_queries=4, mask=mask) == "reference"
  assert A.choose_impl("auto", num_queries=1, num_keys=9) == "reference"
  assert A.choose_impl("auto", num_queries=512, batch_heads=32, dropout_fn=drop) == "reference"
  with pytest.raises(ValueError, match="attention dropout needs the whole"):
    A.choose_impl("auto", num_queries=8192, batch_heads=32, dropout_fn=drop)
  # The dispatcher refuses before computing anything (shapes only: no 8 GiB allocated).
  x = jax.ShapeDtypeStruct((4, 8192, 8, 16), jnp.float32)
  with pytest.raises(ValueError, match="attention dropout needs the whole"):
    jax.eval_shape(lambda q, k, v: A.attention(q, k, v, causal=True, dropout_fn=drop), x, x, x)
  assert A.choose_impl("xla", num_queries=4) == "xla"  # asked for: unchanged
  line = A.describe_choice(num_queries=8192, batch_heads=32, dropout=True)
  assert line.startswith("attention: refused (attention dropout") and f"backend={backend}" in line


def test_describe_names_what_runs_here():
  line = A.describe_choice(num_queries=512, head_dim=64, batch_heads=32, causal=True)
  assert line.startswith("attention: flash_cpu (CPU: the C++ kernel"), line
  assert "backend=cpu, dtype=float32, T=512, S=512, K=64, causal=True" in line
  line = A.describe_choice(num_queries=512, head_dim=64, batch_heads=32)
  assert line.startswith("attention: blockwise (CPU: fastest measured; blocks 128x128)")
  mha = MultiHeadAttention(16, 2, dtype=jnp.bfloat16, dropout_rate=0.1, rngs=nnx.Rngs(0))
  assert mha.describe(64).startswith("attention: reference (dropout")
  # Causal, T=64, but bfloat16: the blockwise kernel (chunked is for float32).
  assert mha.describe(64, training=False).startswith("attention: blockwise")
  line = A.describe_choice(num_queries=256, batch_heads=32, causal=True, local_window=8)
  assert line.startswith("attention: chunked (CPU: fastest measured at short causal T in float32; "
                         "chunks of 40 rows)"), line
  assert "dtype=bfloat16, T=64, S=64, K=8" in mha.describe(64)


_LENGTHS13 = np.array([10, 13], np.int32)  # with a window of 3, no row sees no key
_IMPL_CASES = {
    "causal": ({"causal": True}, {"is_causal": True}),
    "causal_window_padding": (
        {"causal": True, "local_window": 3,
         "key_padding_mask_BS": np.arange(13)[None, :] < _LENGTHS13[:, None]},
        {"is_causal": True, "local_window_size": (3, 3),
         "key_value_seq_lengths": jnp.asarray(_LENGTHS13)}),
    "window": _CASES["window"],
}


@pytest.mark.parametrize("case", sorted(_IMPL_CASES))
def test_every_impl_that_runs_here_equals_jax_nn(case):
  ours_kw, ref_kw = _IMPL_CASES[case]
  q, k, v = _qkv(6, T=13, S=13)
  ct = jax.random.normal(jax.random.key(7), q.shape)
  vg = lambda f: jax.value_and_grad(lambda q, k, v: jnp.sum(f(q, k, v) * ct),
                                    argnums=(0, 1, 2))(q, k, v)
  want = vg(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla",
                                                         **ref_kw))
  # Not here: cudnn and pallas (GPU and TPU only), and flash_cpu (causal self-attention
  # with K a multiple of 16; test_native_attention checks it against jax.nn and SDPA).
  impls = [i for i in A.IMPLS if i not in ("cudnn", "pallas", "flash_cpu")]
  assert impls == ["auto", "blockwise", "chunked", "reference", "xla"]
  for impl in impls:
    got = jax.jit(lambda q, k, v: vg(lambda q, k, v: A.attention(q, k, v, impl=impl,
                                                                 **ours_kw)),
                  compiler_options=FAST_COMPILE)(q, k, v)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-5, err_msg=impl)
  # Asked for here, the GPU and TPU kernels are refused, not silently replaced.
  with pytest.raises(ValueError, match="impl='pallas' needs a TPU"):
    A.attention(q, k, v, impl="pallas", causal=True)
  with pytest.raises(Exception):  # jax.nn's own error: no cuDNN on this backend
    A.attention(q, k, v, impl="cudnn", causal=True)


def test_default_path_forward_mode_matches_jax_nn():
  # jax.jvp, jax.jacfwd and a Hessian-vector product (jvp of grad) through impl="auto"
  # (the blockwise kernel here, several blocks each way) against jax.nn's XLA attention.
  q, k, v = _qkv(8, T=300, S=300)
  tq, tk, tv = _qkv(9, T=300, S=300)
  ours = lambda q, k, v: A.attention(q, k, v, causal=True)
  ref = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                     implementation="xla")
  assert A.choose_impl("auto", num_queries=300) == "blockwise"
  loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)))
  q1, k1, v1 = (a[:1, :5, :1, :2] for a in (q, k, v))

  def modes(f):
    jvp = jax.jvp(f, (q, k, v), (tq, tk, tv))
    hvp = jax.jvp(jax.grad(loss(f), argnums=(0, 1, 2)), (q, k, v), (tq, tk, tv))[1]
    return jvp, hvp, jax.jacfwd(lambda q: f(q, k1, v1))(q1)
  got, want = (jax.jit(lambda f=f: modes(f), compiler_options=FAST_COMPILE)()
               for f in (ours, ref))
  for name, tol in (("jvp", 2e-5), ("hvp", 1e-4), ("jacfwd", 1e-5)):
    for g, w in zip(jax.tree.leaves(got[0]), jax.tree.leaves(want[0])):
      np.testing.assert_allclose(g, w, atol=tol, rtol=tol, err_msg=name)
    got, want = got[1:], want[1:]
