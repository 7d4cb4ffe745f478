"""seqscale.ops.conv against PyTorch, Flax's nnx.Conv and a plain NumPy loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqscale.ops import conv as conv_ops

TOL = dict(rtol=1e-5, atol=1e-5)
KERNELS_DILATIONS = [(1, 1), (2, 1), (2, 3), (3, 1), (3, 2), (4, 2), (5, 3)]


def _data(kernel, seed=0, b=2, t=13, c_in=3, c_out=4):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((b, t, c_in)).astype(np.float32)
  w = (rng.standard_normal((kernel, c_in, c_out)) / np.sqrt(kernel * c_in)).astype(np.float32)
  bias = rng.standard_normal((c_out,)).astype(np.float32)
  return x, w, bias


def _numpy_conv(x, w, bias, dilation, causal):
  """y[b, t] = bias + sum_k x[b, t + k * dilation - left] @ w[k] (zero outside [0, T))."""
  b, t_len, _ = x.shape
  span = (w.shape[0] - 1) * dilation
  left = span if causal else span // 2
  y = np.tile(bias.astype(np.float64), (b, t_len, 1))
  for t in range(t_len):
    for k in range(w.shape[0]):
      s = t + k * dilation - left
      if 0 <= s < t_len:
        y[:, t] += x[:, s].astype(np.float64) @ w[k].astype(np.float64)
  return y


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kernel,dilation", KERNELS_DILATIONS)
def test_conv1d_equals_numpy_loop(kernel, dilation, causal):
  x, w, bias = _data(kernel)
  y = conv_ops.conv1d(jnp.asarray(x), jnp.asarray(w), jnp.asarray(bias), dilation=dilation,
                      causal=causal)
  assert y.shape == (2, 13, 4)
  np.testing.assert_allclose(np.asarray(y), _numpy_conv(x, w, bias, dilation, causal), **TOL)


@pytest.mark.parity
@pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kernel,dilation", KERNELS_DILATIONS)
def test_conv1d_equals_torch(kernel, dilation, causal):
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  x, w, bias = _data(kernel, seed=1)
  x_t = torch.from_numpy(x.transpose(0, 2, 1).copy())  # [B, C, T]
  w_t = torch.from_numpy(w.transpose(2, 1, 0).copy())  # [C_out, C_in, W]
  b_t = torch.from_numpy(bias)
  if causal:
    x_t = F.pad(x_t, ((kernel - 1) * dilation, 0))
    ref = F.conv1d(x_t, w_t, b_t, dilation=dilation)
  else:
    ref = F.conv1d(x_t, w_t, b_t, dilation=dilation, padding="same")
  ref = ref.numpy().transpose(0, 2, 1)
  y = conv_ops.conv1d(jnp.asarray(x), jnp.asarray(w), jnp.asarray(bias), dilation=dilation,
                      causal=causal)
  np.testing.assert_allclose(np.asarray(y), ref, **TOL)


@pytest.mark.parity
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kernel,dilation", KERNELS_DILATIONS)
def test_conv1d_equals_flax_conv(kernel, dilation, causal):
  x, _, _ = _data(kernel, seed=2)
  layer = nnx.Conv(3, 4, kernel_size=(kernel,), kernel_dilation=dilation,
                   padding="CAUSAL" if causal else "SAME", rngs=nnx.Rngs(0))
  layer.bias[...] = jax.random.normal(jax.random.key(1), (4,))
  ref = layer(jnp.asarray(x))
  y = conv_ops.conv1d(jnp.asarray(x), layer.kernel[...], layer.bias[...], dilation=dilation,
                      causal=causal)
  np.testing.assert_allclose(np.asarray(y), np.asarray(ref), **TOL)


@pytest.mark.parametrize("kernel,dilation", [(1, 1), (2, 1), (2, 4), (3, 2), (4, 3)])
def test_conv1d_step_equals_numpy_loop(kernel, dilation):
  x, w, bias = _data(kernel, seed=3)
  buffer = conv_ops.conv1d_init_buffer(2, 3, kernel, dilation)
  assert buffer.shape == (2, (kernel - 1) * dilation, 3)
  step = jax.jit(conv_ops.conv1d_step, static_argnums=4)
  ys = []
  for t in range(x.shape[1]):
    y_t, buffer = step(jnp.asarray(x[:, t]), buffer, jnp.asarray(w), jnp.asarray(bias), dilation)
    ys.append(y_t)
  ref = _numpy_conv(x, w, bias, dilation, causal=True)
  np.testing.assert_allclose(np.stack(ys, axis=1), ref, **TOL)


@pytest.mark.parity
@pytest.mark.parametrize("axis", [-1, 1])
def test_glu_equals_torch(axis):
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(4).standard_normal((2, 6, 8)).astype(np.float32)
  ref = torch.nn.functional.glu(torch.from_numpy(x), dim=axis).numpy()
  np.testing.assert_allclose(np.asarray(conv_ops.glu(jnp.asarray(x), axis=axis)), ref, **TOL)


def test_gated_activation_equals_numpy():
  x = np.random.default_rng(5).standard_normal((2, 5, 6)).astype(np.float64)
  a, b = x[..., :3], x[..., 3:]
  ref = np.tanh(a) / (1.0 + np.exp(-b))
  y = conv_ops.gated_activation(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(np.asarray(y), ref, **TOL)


def test_receptive_field():
  assert conv_ops.receptive_field(2, [1, 2, 4, 8]) == 16
  assert conv_ops.receptive_field(3, [1, 2]) == 7
  assert conv_ops.receptive_field(1, [1, 2, 4]) == 1


@pytest.mark.parity
def test_convs2s_attention_equals_jax_dot_product_attention():
  rng = np.random.default_rng(6)
  q, k, v = (jnp.asarray(rng.standard_normal((2, n, 4)), jnp.float32) for n in (5, 7, 7))
  mask = jnp.asarray(np.arange(7)[None, :] < np.array([[7], [4]]))
  ref = jax.nn.dot_product_attention(q[:, :, None], k[:, :, None], v[:, :, None], scale=1.0,
                                     mask=mask[:, None, None, :])[:, :, 0]
  ref = ref * jnp.sqrt(jnp.array([7.0, 4.0]))[:, None, None]  # the paper's S * sqrt(1/S)
  y = conv_ops.convs2s_attention(q, k, v, mask)
  np.testing.assert_allclose(np.asarray(y), np.asarray(ref), **TOL)


def test_bad_arguments_raise():
  x = jnp.zeros((1, 4, 2))
  w = jnp.zeros((3, 2, 2))
  with pytest.raises(ValueError, match="dilation"):
    conv_ops.conv1d(x, w, dilation=0)
  with pytest.raises(ValueError, match="buffer_BRC"):
    conv_ops.conv1d_step(x[:, 0], jnp.zeros((1, 3, 2)), w, None, 2)
  with pytest.raises(ValueError, match="even"):
    conv_ops.glu(jnp.zeros((2, 3)))
