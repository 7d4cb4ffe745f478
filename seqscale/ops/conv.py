"""Convolution over time: dilated (causal or "same") 1-D convolution, gates, a stepping cache.

A convolution sees a fixed window of ``(W - 1) * dilation + 1`` positions in one parallel
step; connecting distant positions takes depth (stacked layers, growing dilations). The
causal form can also run one time step at a time with a buffer of the last
``(W - 1) * dilation`` inputs (:func:`conv1d_step`), which equals the full call.

Shapes follow docs/DESIGN.md: B batch, T length, S source length, C channels, W window,
D width.
Kernels are laid out ``[W, C_in, C_out]`` (Flax's layout for ``nnx.Conv``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqscale.ops.attention import MASKED_SCORE

Array = jax.Array


def _check_dilation(dilation: int) -> None:
  if not isinstance(dilation, int) or dilation < 1:
    raise ValueError(f"dilation must be a positive int, got {dilation!r}")


def conv1d(x_BTC: Array, w_WCC: Array, b_C: Array | None = None, *, dilation: int = 1,
           causal: bool = False, precision: jax.lax.PrecisionLike = None) -> Array:
  """Dilated 1-D convolution over time; the output has the input's length.

  Args:
    x_BTC: input ``[B, T, C_in]``.
    w_WCC: kernel ``[W, C_in, C_out]``; tap ``k`` multiplies ``x[t + k * dilation - pad]``.
    b_C: optional bias ``[C_out]``.
    dilation: spacing between taps (``rhs_dilation``), >= 1.
    causal: if True, pad ``(W - 1) * dilation`` on the left so ``y_t`` depends only on
      ``x_{<= t}``; otherwise pad symmetrically ("same"; the extra position of an even
      span goes on the right, as in XLA's ``SAME`` and PyTorch's ``padding='same'``).
    precision: passed to ``jax.lax.conv_general_dilated``.

  Returns:
    ``[B, T, C_out]``.
  """
  _check_dilation(dilation)
  span = (w_WCC.shape[0] - 1) * dilation
  padding = [(span, 0)] if causal else [(span // 2, span - span // 2)]
  y_BTC = jax.lax.conv_general_dilated(
      x_BTC, w_WCC.astype(x_BTC.dtype), window_strides=(1,), padding=padding,
      rhs_dilation=(dilation,), dimension_numbers=("NWC", "WIO", "NWC"), precision=precision)
  if b_C is not None:
    y_BTC = y_BTC + b_C.astype(y_BTC.dtype)
  return y_BTC


def separable_conv1d(x_BTD: Array, w_WD: Array, w_DD: Array, b_D: Array | None = None, *,
                     dilation: int = 1) -> Array:
  """Causal depthwise-separable convolution: one kernel ``w_WD`` per channel (depthwise,
  W taps over time), then a pointwise ``D x D`` matmul. Work O(T D (W + D)) against the full
  convolution's O(T W D^2) (Xception, Chollet 2017; Table 1's note on separable kernels)."""
  _check_dilation(dilation)
  span = (w_WD.shape[0] - 1) * dilation
  y_BTD = jax.lax.conv_general_dilated(
      x_BTD, w_WD[:, None, :], (1,), [(span, 0)], rhs_dilation=(dilation,),
      dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=x_BTD.shape[-1])
  y_BTD = y_BTD @ w_DD
  return y_BTD if b_D is None else y_BTD + b_D


def conv1d_step(x_BC: Array, buffer_BRC: Array, w_WCC: Array, b_C: Array | None = None,
                dilation: int = 1) -> tuple[Array, Array]:
  """One time step of the causal :func:`conv1d` with a buffer of past inputs.

  Args:
    x_BC: the input at time ``t``, ``[B, C_in]``.
    buffer_BRC: the last ``R = (W - 1) * dilation`` inputs, oldest first, ``[B, R, C_in]``
      (zeros before the sequence starts, matching the causal left padding).
    w_WCC: kernel ``[W, C_in, C_out]``.
    b_C: optional bias ``[C_out]``.
    dilation: spacing between taps, >= 1.

  Returns:
    ``(y_BC, new_buffer_BRC)``: the output at ``t`` and the buffer shifted by one.
  """
  _check_dilation(dilation)
  span = (w_WCC.shape[0] - 1) * dilation
  if buffer_BRC.shape[1] != span:
    raise ValueError(f"buffer_BRC has length {buffer_BRC.shape[1]}; kernel width "
                     f"{w_WCC.shape[0]} with dilation {dilation} needs {span}")
  window_BRC = jnp.concatenate([buffer_BRC, x_BC[:, None, :].astype(buffer_BRC.dtype)], axis=1)
  taps_BWC = window_BRC[:, ::dilation]  # positions t - span, ..., t - dilation, t
  y_BC = jnp.einsum("BWC,WCD->BD", taps_BWC, w_WCC.astype(taps_BWC.dtype))
  if b_C is not None:
    y_BC = y_BC + b_C.astype(y_BC.dtype)
  return y_BC, window_BRC[:, 1:]


def conv1d_init_buffer(batch_size: int, in_channels: int, kernel_size: int, dilation: int = 1,
                       dtype: jnp.dtype = jnp.float32) -> Array:
  """Zero buffer ``[B, (W - 1) * dilation, C_in]`` for :func:`conv1d_step`."""
  _check_dilation(dilation)
  return jnp.zeros((batch_size, (kernel_size - 1) * dilation, in_channels), dtype)


def _halves(x: Array, axis: int) -> tuple[Array, Array]:
  if x.shape[axis] % 2:
    raise ValueError(f"gating needs an even size on axis {axis}, got shape {x.shape}")
  return jnp.split(x, 2, axis=axis)


def glu(x: Array, axis: int = -1) -> Array:
  """Gated linear unit ``a * sigmoid(b)``, ``a``/``b`` the halves of ``axis`` (Dauphin 2017)."""
  a, b = _halves(x, axis)
  return a * jax.nn.sigmoid(b)


def gated_activation(x: Array, axis: int = -1) -> Array:
  """WaveNet's gate ``tanh(a) * sigmoid(b)``, ``a``/``b`` the halves of ``axis``."""
  a, b = _halves(x, axis)
  return jnp.tanh(a) * jax.nn.sigmoid(b)


def receptive_field(kernel_size: int, dilations: list[int] | tuple[int, ...]) -> int:
  """Positions a stack of causal convolutions sees: ``(W - 1) * sum(dilations) + 1``."""
  return (kernel_size - 1) * sum(dilations) + 1


def convs2s_attention(query_BTD: Array, keys_BSD: Array, values_BSD: Array,
                      mask_BS: Array | None = None) -> Array:
  """ConvS2S's single-head dot-product attention (Gehring et al. 2017, section 3.3).

  Unscaled dot products, softmax over the source, then the weighted sum of values scaled
  by ``S * sqrt(1 / S)`` (``S`` the number of valid source positions), as in the paper, to
  keep the variance of the result independent of the source length.

  Args:
    query_BTD: decoder queries ``[B, T, D]``.
    keys_BSD: encoder outputs ``[B, S, D]``.
    values_BSD: encoder outputs plus source embeddings ``[B, S, D]``.
    mask_BS: optional bool ``[B, S]``, True at valid source positions.

  Returns:
    ``[B, T, D]``.
  """
  scores_BTS = jnp.einsum("BTD,BSD->BTS", query_BTD, keys_BSD)
  dtype = scores_BTS.dtype
  scores_BTS = scores_BTS.astype(jnp.float32)  # the softmax in float32, as in ops.attention
  if mask_BS is None:
    num_valid_B = jnp.full(query_BTD.shape[:1], keys_BSD.shape[1], dtype)
  else:
    # A finite MASKED_SCORE, not -inf: a row with no valid key stays finite (uniform weights).
    scores_BTS = jnp.where(mask_BS[:, None, :], scores_BTS, MASKED_SCORE)
    num_valid_B = jnp.maximum(mask_BS.sum(axis=-1), 1).astype(dtype)
  weights_BTS = jax.nn.softmax(scores_BTS, axis=-1).astype(dtype)
  out_BTD = jnp.einsum("BTS,BSD->BTD", weights_BTS, values_BSD)
  return out_BTD * jnp.sqrt(num_valid_B)[:, None, None]
