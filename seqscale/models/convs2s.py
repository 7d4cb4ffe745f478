"""ConvS2S (Gehring et al. 2017): convolutional encoder-decoder with attention in every layer.

Encoder block: conv (kernel k, 2d outputs) -> GLU -> residual, scaled by sqrt(1/2). Decoder
block: causal conv -> GLU -> attention over the encoder output -> residual. The attention
query is the decoder state plus the target embedding; keys are the encoder outputs z,
values are z plus the source embedding e (section 3.3 of the paper). Embeddings are a
linear map of the input features plus learned positions.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from seqscale.checks import check_int
from seqscale.models.registry import register
from seqscale.models.wavenet import Conv1D, check_rate
from seqscale.ops import conv as conv_ops

Array = jax.Array

_HALF = math.sqrt(0.5)  # keeps the variance of a sum of two terms unchanged


class _Embed(nnx.Module):
  """Linear map of the input features plus a learned embedding of the position."""

  def __init__(self, in_features: int, d: int, max_length: int, dropout_rate: float, dtype,
               rngs: nnx.Rngs):
    self.proj = nnx.Linear(in_features, d, dtype=dtype, rngs=rngs)
    self.pos = nnx.Embed(max_length, d, dtype=dtype,
                         embedding_init=nnx.initializers.normal(0.1), rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self.max_length = max_length

  def __call__(self, x_BTI: Array, name: str) -> Array:
    length = x_BTI.shape[1]
    if length > self.max_length:
      raise ValueError(f"{name} length {length} exceeds max_length={self.max_length}; "
                       "build the model with a larger max_length")
    return self.dropout(self.proj(x_BTI) + self.pos(jnp.arange(length))[None])


class _Attention(nnx.Module):
  """Per-layer attention: query = (W h + g) / sqrt 2, out = (W' c + h) / sqrt 2."""

  def __init__(self, d: int, dtype, rngs: nnx.Rngs):
    self.q = nnx.Linear(d, d, dtype=dtype, rngs=rngs)
    self.o = nnx.Linear(d, d, dtype=dtype, rngs=rngs)

  def __call__(self, h_BTD: Array, g_BTD: Array, keys_BSD: Array, values_BSD: Array,
               mask_BS: Array | None) -> Array:
    query_BTD = (self.q(h_BTD) + g_BTD) * _HALF
    c_BTD = conv_ops.convs2s_attention(query_BTD, keys_BSD.astype(query_BTD.dtype),
                                       values_BSD.astype(query_BTD.dtype), mask_BS)
    return (self.o(c_BTD) + h_BTD) * _HALF


@register("convs2s")
class ConvS2S(nnx.Module):
  """ConvS2S: ``model(src_BSI, tgt_BTI, *, src_mask=None, tgt_mask=None) -> y_BTD``.

  ``num_layers`` blocks in the encoder and in the decoder; the decoder is causal over the
  target. Source and target lengths must not exceed ``max_length`` (learned positions).
  """

  interface = "seq2seq"

  def __init__(self, in_features: int, hidden_features: int, num_layers: int = 2,
               kernel_size: int = 3, max_length: int = 1024, dropout_rate: float = 0.0,
               dtype=None, *, rngs: nnx.Rngs):
    check_int("in_features", in_features)
    check_int("hidden_features", hidden_features)
    check_int("num_layers", num_layers)
    check_int("kernel_size", kernel_size)
    check_int("max_length", max_length)
    check_rate(dropout_rate)
    self.causal = True  # over the target; the encoder sees the whole source
    self.out_features = hidden_features
    d = hidden_features

    def convs(causal: bool) -> nnx.List:
      return nnx.List([Conv1D(d, 2 * d, kernel_size, causal=causal, dtype=dtype, rngs=rngs)
                       for _ in range(num_layers)])

    self.src_embed = _Embed(in_features, d, max_length, dropout_rate, dtype, rngs)
    self.tgt_embed = _Embed(in_features, d, max_length, dropout_rate, dtype, rngs)
    self.enc_convs = convs(causal=False)
    self.dec_convs = convs(causal=True)
    self.attention = nnx.List([_Attention(d, dtype, rngs) for _ in range(num_layers)])
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self.out = nnx.Linear(d, d, dtype=dtype, rngs=rngs)

  def encode(self, src_BSI: Array, src_mask: Array | None = None) -> tuple[Array, Array]:
    """Source ``[B, S, I]`` -> (keys z ``[B, S, D]``, values (z + e) / sqrt 2 ``[B, S, D]``)."""
    e = self.src_embed(src_BSI, "source")
    x = e
    for conv in self.enc_convs:
      h = self.dropout(x)
      if src_mask is not None:  # padding must not leak into valid positions through the conv
        h = h * src_mask[..., None].astype(h.dtype)
      x = (conv_ops.glu(conv(h)) + x) * _HALF
    return x, (x + e) * _HALF

  def __call__(self, src_BSI: Array, tgt_BTI: Array, *, src_mask: Array | None = None,
               tgt_mask: Array | None = None) -> Array:
    """``[B, S, I], [B, T, I] -> [B, T, D]``.

    ``tgt_mask`` is accepted for the interface; the decoder is causal, so right padding of
    the target cannot reach a valid position.
    """
    del tgt_mask
    keys_BSD, values_BSD = self.encode(src_BSI, src_mask)
    g = self.tgt_embed(tgt_BTI, "target")
    x = g
    for conv, attention in zip(self.dec_convs, self.attention):
      h = conv_ops.glu(conv(self.dropout(x)))
      h = attention(h, g, keys_BSD, values_BSD, src_mask)
      x = (h + x) * _HALF
    return self.out(self.dropout(x))
