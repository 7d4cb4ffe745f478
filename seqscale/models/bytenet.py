"""ByteNet (Kalchbrenner et al. 2016): a dilated convolutional encoder-decoder.

The encoder is a stack of non-causal dilated residual blocks over the source; the decoder
is a stack of causal dilated residual blocks over the target, "stacked on" the encoder by
dynamic unfolding: the encoder output at position t (zero beyond the source, i.e. a=1,
b=0 in the paper's ``|t_hat| = a|s| + b``) is concatenated with the target input at t.
Source and target are aligned position by position, so no attention is needed; the cost is
linear in length and the path between any two positions grows with log(distance).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from seqscale.checks import check_int
from seqscale.models.registry import register
from seqscale.models.wavenet import Conv1D, check_rate

Array = jax.Array


class _ResidualBlock(nnx.Module):
  """LN -> ReLU -> 1x1 (d/2) -> LN -> ReLU -> dilated conv k -> LN -> ReLU -> 1x1 (d), + x."""

  def __init__(self, d: int, kernel_size: int, dilation: int, causal: bool,
               dropout_rate: float, dtype, rngs: nnx.Rngs):
    h = d // 2
    self.ln1 = nnx.LayerNorm(d, dtype=dtype, rngs=rngs)
    self.proj_in = nnx.Linear(d, h, dtype=dtype, rngs=rngs)
    self.ln2 = nnx.LayerNorm(h, dtype=dtype, rngs=rngs)
    self.conv = Conv1D(h, h, kernel_size, dilation=dilation, causal=causal, dtype=dtype,
                       rngs=rngs)
    self.ln3 = nnx.LayerNorm(h, dtype=dtype, rngs=rngs)
    self.proj_out = nnx.Linear(h, d, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

  def __call__(self, x_BTD: Array, mask_BT1: Array | None) -> Array:
    h = self.proj_in(jax.nn.relu(self.ln1(x_BTD)))
    h = jax.nn.relu(self.ln2(h))
    if mask_BT1 is not None:  # padding must not leak into valid positions through the conv
      h = h * mask_BT1.astype(h.dtype)
    h = self.conv(h)
    h = self.proj_out(jax.nn.relu(self.ln3(h)))
    return x_BTD + self.dropout(h)


def _unfold(enc_BSD: Array, length: int) -> Array:
  """Dynamic unfolding with a=1, b=0: truncate or zero-pad the source axis to ``length``."""
  enc_BSD = enc_BSD[:, :length]
  return jnp.pad(enc_BSD, ((0, 0), (0, length - enc_BSD.shape[1]), (0, 0)))


@register("bytenet")
class ByteNet(nnx.Module):
  """ByteNet: ``model(src_BSI, tgt_BTI, *, src_mask=None, tgt_mask=None) -> y_BTD``.

  ``num_layers`` residual blocks per stack (encoder and decoder); dilation of block i is
  ``2 ** (i % dilation_cycle)``. The decoder is causal over the target.
  """

  interface = "seq2seq"

  def __init__(self, in_features: int, hidden_features: int, num_layers: int = 4,
               kernel_size: int = 3, dilation_cycle: int = 5, dropout_rate: float = 0.0,
               dtype=None, *, rngs: nnx.Rngs):
    check_int("in_features", in_features)
    check_int("hidden_features", hidden_features, 2)  # blocks use d // 2
    check_int("num_layers", num_layers)
    check_int("kernel_size", kernel_size)
    check_int("dilation_cycle", dilation_cycle)
    check_rate(dropout_rate)
    self.causal = True  # over the target; the encoder sees the whole source
    self.out_features = hidden_features
    self.dilations = tuple(2 ** (i % dilation_cycle) for i in range(num_layers))
    d = hidden_features

    def stack(causal: bool) -> nnx.List:
      return nnx.List([_ResidualBlock(d, kernel_size, dil, causal, dropout_rate, dtype, rngs)
                       for dil in self.dilations])

    self.src_in = nnx.Linear(in_features, d, dtype=dtype, rngs=rngs)
    self.encoder = stack(causal=False)
    self.tgt_in = nnx.Linear(in_features, d, dtype=dtype, rngs=rngs)
    self.merge = nnx.Linear(2 * d, d, dtype=dtype, rngs=rngs)
    self.decoder = stack(causal=True)
    self.out_ln = nnx.LayerNorm(d, dtype=dtype, rngs=rngs)
    self.out = nnx.Linear(d, d, dtype=dtype, rngs=rngs)

  def encode(self, src_BSI: Array, src_mask: Array | None = None) -> Array:
    """Source ``[B, S, I]`` -> ``[B, S, D]``, zero at padded source positions."""
    mask_BS1 = None if src_mask is None else src_mask[..., None]
    x = self.src_in(src_BSI)
    for block in self.encoder:
      x = block(x, mask_BS1)
    return x if mask_BS1 is None else x * mask_BS1.astype(x.dtype)

  def __call__(self, src_BSI: Array, tgt_BTI: Array, *, src_mask: Array | None = None,
               tgt_mask: Array | None = None) -> Array:
    """``[B, S, I], [B, T, I] -> [B, T, D]``.

    ``tgt_mask`` is accepted for the interface; the decoder is causal, so right padding of
    the target cannot reach a valid position.
    """
    del tgt_mask
    enc_BTD = _unfold(self.encode(src_BSI, src_mask), tgt_BTI.shape[1])
    x = self.tgt_in(tgt_BTI)
    x = self.merge(jnp.concatenate([enc_BTD.astype(x.dtype), x], axis=-1))
    for block in self.decoder:
      x = block(x, None)
    return self.out(jax.nn.relu(self.out_ln(x)))
