"""ops.attention after the consolidation: the weights function against NumPy and jax.nn, the
one dispatcher, the one masked-score constant."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqscale.ops import attention as attn
from seqscale.ops import blockwise_attention as bw

B, T, S, H, K = 2, 6, 7, 3, 4


def _qkv(seed=0):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(B, T, H, K)).astype(np.float32)
  k = rng.normal(size=(B, S, H, K)).astype(np.float32)
  v = rng.normal(size=(B, S, H, K)).astype(np.float32)
  return q, k, v


def _numpy_weights(q, k, allowed_BTS):
  """Softmax over allowed keys of q.k / sqrt(K), in float64; 0 elsewhere and in empty rows."""
  scores = np.einsum("bthk,bshk->bhts", q.astype(np.float64), k.astype(np.float64))
  scores = scores / np.sqrt(K)
  allowed = np.broadcast_to(allowed_BTS[:, None], scores.shape)
  scores = np.where(allowed, scores, -np.inf)
  top = np.max(np.where(allowed, scores, -1e300), axis=-1, keepdims=True)
  e = np.where(allowed, np.exp(scores - top), 0.0)
  total = e.sum(-1, keepdims=True)
  return np.divide(e, total, out=np.zeros_like(e), where=total > 0)


@pytest.mark.parametrize("causal,window,padded", [(False, None, False), (True, None, True),
                                                  (True, 2, True), (False, 1, False)])
def test_attention_weights_equal_an_independent_softmax(causal, window, padded):
  q, k, v = _qkv()
  valid_BS = np.arange(S)[None, :] < np.array([[S], [3]]) if padded else np.ones((B, S), bool)
  t, s = np.arange(T)[:, None], np.arange(S)[None, :]
  allowed_TS = np.ones((T, S), bool)
  if causal:
    allowed_TS &= s <= t
  if window is not None:
    allowed_TS &= np.abs(t - s) <= window
  allowed_BTS = allowed_TS[None] & valid_BS[:, None, :]
  w = attn.attention_weights(jnp.asarray(q), jnp.asarray(k), causal=causal,
                             key_padding_mask_BS=jnp.asarray(valid_BS) if padded else None,
                             local_window=window)
  assert w.dtype == jnp.float32 and w.shape == (B, H, T, S)
  np.testing.assert_allclose(np.asarray(w), _numpy_weights(q, k, allowed_BTS), atol=1e-6)
  # The same weights applied to v give jax.nn.dot_product_attention's output (in rows with
  # an allowed key: for an empty row jax.nn has its own convention, ours is zeros).
  want = jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(allowed_BTS)[:, None])
  got = jnp.einsum("BHTS,BSHK->BTHK", w, v)
  seen_BT = allowed_BTS.any(-1)
  assert seen_BT.sum() > 0
  np.testing.assert_allclose(np.asarray(got)[seen_BT], np.asarray(want)[seen_BT], atol=1e-5)
  assert np.all(np.asarray(got)[~seen_BT] == 0.0)


def test_a_row_with_no_allowed_key_is_zero():
  q, k, _ = _qkv(1)
  w = attn.attention_weights(jnp.asarray(q), jnp.asarray(k),
                             key_padding_mask_BS=jnp.zeros((B, S), bool))
  assert np.all(np.asarray(w) == 0.0)


def test_one_dispatcher_and_one_constant():
  # The blockwise module re-exports the dispatcher and uses the reference's constant.
  assert bw.attention is attn.attention and bw.IMPLS is attn.IMPLS
  assert bw.MASKED_SCORE == attn.MASKED_SCORE
  assert attn.choose_impl("auto", num_queries=5) == "blockwise"
  assert attn.choose_impl("auto", num_queries=1) == "reference"
  assert attn.choose_impl("auto", num_queries=5, mask=jnp.ones((1, 1, 5, 5), bool)) == "reference"
  with pytest.raises(ValueError, match="impl='flash'"):
    attn.choose_impl("flash", num_queries=5)
  # exp(MASKED_SCORE - s) underflows to 0 and MASKED_SCORE - s stays finite for |s| < 1e38.
  assert np.exp(np.float32(attn.MASKED_SCORE) - np.float32(1e3)) == 0.0
  assert np.isfinite(np.float32(attn.MASKED_SCORE) - np.float32(1e37))
