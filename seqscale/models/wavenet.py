"""WaveNet (van den Oord et al. 2016): stacked dilated causal convolutions.

Dilations double layer by layer (1, 2, 4, ..., 2^(cycle-1), then repeat), so the receptive
field grows exponentially with depth while each layer stays one parallel step. A causal
convolution can also run step by step with a buffer of past inputs per layer.

Also home of :class:`Conv1D`, the parameter owner around :func:`seqscale.ops.conv.conv1d`
that ByteNet and ConvS2S reuse.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from seqscale.checks import check_int
from seqscale.models.registry import register
from seqscale.ops import conv as conv_ops

Array = jax.Array


def check_rate(value) -> None:
  if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
    raise ValueError(f"dropout_rate={value!r}; must be a float in [0, 1)")


class Conv1D(nnx.Module):
  """Dilated 1-D convolution over time, kernel ``[W, C_in, C_out]``; length-preserving.

  Call ``conv(x_BTC) -> y_BTC``; if ``causal``, ``step(x_BC, buffer) -> (y_BC, buffer)``.
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *,
               dilation: int = 1, causal: bool = False, dtype=None, rngs: nnx.Rngs):
    init = nnx.initializers.lecun_normal()
    self.kernel = nnx.Param(init(rngs.params(), (kernel_size, in_features, out_features)))
    self.bias = nnx.Param(jnp.zeros((out_features,)))
    self.in_features, self.kernel_size = in_features, kernel_size
    self.dilation, self.causal, self.dtype = dilation, causal, dtype

  def _params(self, x: Array) -> tuple[Array, Array, Array]:
    dtype = self.dtype or jnp.result_type(x, self.kernel[...])
    return x.astype(dtype), self.kernel[...].astype(dtype), self.bias[...].astype(dtype)

  def __call__(self, x_BTC: Array) -> Array:
    x, w, b = self._params(x_BTC)
    return conv_ops.conv1d(x, w, b, dilation=self.dilation, causal=self.causal)

  def init_buffer(self, batch_size: int, dtype=jnp.float32) -> Array:
    return conv_ops.conv1d_init_buffer(batch_size, self.in_features, self.kernel_size,
                                       self.dilation, self.dtype or dtype)

  def step(self, x_BC: Array, buffer_BRC: Array) -> tuple[Array, Array]:
    if not self.causal:
      raise ValueError("Conv1D.step needs causal=True: a non-causal convolution sees the future")
    x, w, b = self._params(x_BC)
    return conv_ops.conv1d_step(x, buffer_BRC, w, b, self.dilation)


class _WaveNetLayer(nnx.Module):
  """Dilated causal conv -> tanh*sigmoid gate -> residual and skip 1x1 convs."""

  def __init__(self, residual: int, skip: int, kernel_size: int, dilation: int,
               dropout_rate: float, dtype, rngs: nnx.Rngs):
    self.conv = Conv1D(residual, 2 * residual, kernel_size, dilation=dilation, causal=True,
                       dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self.res = nnx.Linear(residual, residual, dtype=dtype, rngs=rngs)
    self.skip = nnx.Linear(residual, skip, dtype=dtype, rngs=rngs)

  def _after_conv(self, h: Array, x: Array) -> tuple[Array, Array]:
    z = self.dropout(conv_ops.gated_activation(h))
    return x + self.res(z), self.skip(z)

  def __call__(self, x_BTC: Array) -> tuple[Array, Array]:
    return self._after_conv(self.conv(x_BTC), x_BTC)

  def step(self, x_BC: Array, buffer: Array) -> tuple[Array, Array, Array]:
    h, buffer = self.conv.step(x_BC, buffer)
    x, s = self._after_conv(h, x_BC)
    return x, s, buffer


@register("wavenet")
class WaveNet(nnx.Module):
  """WaveNet as a causal sequence layer: ``model(x_BTI) -> y_BTD``, steppable.

  Attributes:
    receptive_field: ``y_t`` depends on exactly ``x_{t - receptive_field + 1 .. t}``.
  """

  interface = "sequence"

  def __init__(self, in_features: int, hidden_features: int, num_layers: int = 4,
               kernel_size: int = 2, dilation_cycle: int = 10,
               residual_features: int | None = None, skip_features: int | None = None,
               dropout_rate: float = 0.0, dtype=None, *, rngs: nnx.Rngs):
    check_int("in_features", in_features)
    check_int("hidden_features", hidden_features)
    check_int("num_layers", num_layers)
    check_int("kernel_size", kernel_size)
    check_int("dilation_cycle", dilation_cycle)
    residual_features = hidden_features if residual_features is None else residual_features
    skip_features = hidden_features if skip_features is None else skip_features
    check_int("residual_features", residual_features)
    check_int("skip_features", skip_features)
    check_rate(dropout_rate)
    self.causal = True
    self.out_features = hidden_features
    self.dtype = dtype
    self.dilations = tuple(2 ** (i % dilation_cycle) for i in range(num_layers))
    self.receptive_field = conv_ops.receptive_field(kernel_size, self.dilations)
    self.inp = nnx.Linear(in_features, residual_features, dtype=dtype, rngs=rngs)
    self.layers = nnx.List([
        _WaveNetLayer(residual_features, skip_features, kernel_size, d, dropout_rate, dtype,
                      rngs) for d in self.dilations])
    self.out1 = nnx.Linear(skip_features, skip_features, dtype=dtype, rngs=rngs)
    self.out2 = nnx.Linear(skip_features, hidden_features, dtype=dtype, rngs=rngs)

  def _head(self, skips: Array) -> Array:
    return self.out2(jax.nn.relu(self.out1(jax.nn.relu(skips))))

  def __call__(self, x_BTI: Array, *, mask: Array | None = None) -> Array:
    """``[B, T, I] -> [B, T, D]``.

    ``mask`` is accepted for the interface; right padding cannot reach a valid position
    through causal convolutions, so it changes nothing (outputs at padding are unspecified).
    """
    del mask
    x = self.inp(x_BTI)
    skips = 0.0
    for layer in self.layers:
      x, s = layer(x)
      skips = skips + s
    return self._head(skips)

  def init_state(self, batch_size: int, max_length: int) -> dict[str, tuple[Array, ...]]:
    """Zero convolution buffers, one ``[B, (W - 1) * dilation, C]`` per layer.

    ``max_length`` is unused: a convolution's cache has a fixed size.
    """
    check_int("batch_size", batch_size)
    check_int("max_length", max_length)
    return {"buffers": tuple(layer.conv.init_buffer(batch_size) for layer in self.layers)}

  def step(self, x_BI: Array, state: dict) -> tuple[Array, dict]:
    """One time step: ``x_BI [B, I] -> y_BD [B, D]``; equals the full call at that step."""
    x = self.inp(x_BI)
    skips, buffers = 0.0, []
    for layer, buffer in zip(self.layers, state["buffers"]):
      x, s, buffer = layer.step(x, buffer)
      skips = skips + s
      buffers.append(buffer)
    return self._head(skips), {"buffers": tuple(buffers)}
