"""Multi-head attention as a Flax module: the parameters of ``ops.attention`` (Q, K, V and
output projections in ``nnx.MultiHeadAttention``'s layout, so Flax weights copy across).

Shapes: B batch, T query length, S key length, D width, H heads, K head dim.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from seqscale.ops import attention as attn_ops

Array = jax.Array


def check_impl(attention_impl: Any) -> None:
  if attention_impl not in attn_ops.IMPLS:
    raise ValueError(f"attention_impl={attention_impl!r}: must be one of {attn_ops.IMPLS}")


class Dense(nnx.Module):
  """A kernel and a bias, in `nnx.LinearGeneral`'s layout (so Flax weights copy across)."""

  def __init__(self, kernel_shape: tuple[int, ...], bias_shape: tuple[int, ...],
               fan_in: int, *, rngs: nnx.Rngs):
    fan_out = math.prod(kernel_shape) // fan_in
    init = nnx.initializers.lecun_normal()
    self.kernel = nnx.Param(init(rngs.params(), (fan_in, fan_out)).reshape(kernel_shape))
    self.bias = nnx.Param(jnp.zeros(bias_shape, jnp.float32))


class MultiHeadAttention(nnx.Module):
  """Multi-head attention owning its projections; the math is `ops.dot_product_attention`.

  Parameters mirror `flax.nnx.MultiHeadAttention`: `query`, `key`, `value` kernels [D, H, K]
  with biases [H, K], `out` kernel [H, K, D_out] with bias [D_out]; copy them with
  `nnx.update(ours, nnx.state(flax_mha, nnx.Param))`.
  """

  def __init__(self, in_features: int, num_heads: int, *, qkv_features: int | None = None,
               out_features: int | None = None, in_kv_features: int | None = None,
               dropout_rate: float = 0.0, dtype: Any = None, impl: str = "auto",
               rngs: nnx.Rngs):
    check_impl(impl)
    qkv_features = in_features if qkv_features is None else qkv_features
    out_features = in_features if out_features is None else out_features
    in_kv_features = in_features if in_kv_features is None else in_kv_features
    if qkv_features % num_heads:
      raise ValueError(
          f"qkv_features={qkv_features!r}: must be divisible by num_heads={num_heads!r}")
    H, K = num_heads, qkv_features // num_heads
    self.num_heads, self.head_dim, self.dtype, self.impl = H, K, dtype, impl
    self.query = Dense((in_features, H, K), (H, K), in_features, rngs=rngs)
    self.key = Dense((in_kv_features, H, K), (H, K), in_kv_features, rngs=rngs)
    self.value = Dense((in_kv_features, H, K), (H, K), in_kv_features, rngs=rngs)
    self.out = Dense((H, K, out_features), (out_features,), H * K, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs) if dropout_rate > 0 else None

  def _proj(self, dense: Dense, x_BTD: Array) -> Array:
    kernel, bias = dense.kernel[...], dense.bias[...]
    if self.dtype is not None:
      x_BTD, kernel, bias = (a.astype(self.dtype) for a in (x_BTD, kernel, bias))
    return attn_ops.project_heads(x_BTD, kernel, bias)

  def project_q(self, x_BTD: Array) -> Array:
    """Queries q_BTHK."""
    return self._proj(self.query, x_BTD)

  def project_kv(self, x_BSD: Array) -> tuple[Array, Array]:
    """Keys and values k_BSHK, v_BSHK."""
    return self._proj(self.key, x_BSD), self._proj(self.value, x_BSD)

  def attend(self, q_BTHK: Array, k_BSHK: Array, v_BSHK: Array, **mask_kwargs) -> Array:
    """Attention over given keys/values then the output projection -> y_BTD.

    `mask_kwargs` are those of `ops.attention.dot_product_attention` (causal,
    key_padding_mask_BS, local_window, mask, query_offset); `self.impl` computes it.
    """
    active = self.dropout is not None and not self.dropout.deterministic
    o_BTHK = attn_ops.attention(
        q_BTHK, k_BSHK, v_BSHK, impl=self.impl, dropout_fn=self.dropout if active else None,
        **mask_kwargs)
    kernel, bias = self.out.kernel[...], self.out.bias[...]
    if self.dtype is not None:
      kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)
    return attn_ops.merge_heads(o_BTHK, kernel, bias)

  def weights(self, inputs_q: Array, inputs_kv: Array | None = None,
              **mask_kwargs) -> Array:
    """The softmax weights_BHTS (float32) that `__call__` would apply, without dropout.

    `mask_kwargs` as in `attend`; rows sum to 1 over allowed keys, 0 at masked ones.
    """
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    k_BSHK, _ = self.project_kv(inputs_kv)
    return attn_ops.attention_weights(self.project_q(inputs_q), k_BSHK, **mask_kwargs)

  def describe(self, T: int, S: int | None = None, *, batch: int = 1, causal: bool = True,
               training: bool = True) -> str:
    """One line: which attention `attend` runs at T queries and S keys, and why
    (`ops.attention.describe_choice`); `training` counts the weights' dropout in."""
    return attn_ops.describe_choice(
        self.impl, num_queries=T, num_keys=S, head_dim=self.head_dim,
        batch_heads=batch * self.num_heads,
        dtype=jnp.float32 if self.dtype is None else self.dtype, causal=causal,
        dropout=training and self.dropout is not None)

  def __call__(self, inputs_q: Array, inputs_kv: Array | None = None, *,
               mask: Array | None = None, causal: bool = False,
               key_padding_mask_BS: Array | None = None, local_window: int | None = None,
               query_offset: int | Array = 0) -> Array:
    """Self-attention (inputs_q [B, T, D]) or cross-attention (inputs_kv [B, S, D_kv]).

    `mask` is bool broadcastable to [B, H, T, S], True where attention is allowed.
    """
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    k_BSHK, v_BSHK = self.project_kv(inputs_kv)
    return self.attend(
        self.project_q(inputs_q), k_BSHK, v_BSHK, mask=mask, causal=causal,
        key_padding_mask_BS=key_padding_mask_BS, local_window=local_window,
        query_offset=query_offset)


def describe_attention(model: nnx.Module, T: int, **kwargs) -> str | None:
  """`MultiHeadAttention.describe` of the model's first attention layer at length T (the
  line a run's results.json records), or None for a model without attention."""
  for _, node in nnx.iter_graph(model):
    if isinstance(node, MultiHeadAttention):
      return node.describe(T, **kwargs)
  return None
