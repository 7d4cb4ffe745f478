"""WaveNet, ByteNet, ConvS2S: causality and receptive fields by gradients, stepping, masks,
and outputs against PyTorch rebuilds of each stack from the papers (weights copied)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqscale import models

I, D = 3, 8


def _x(shape, seed):
  return jax.random.normal(jax.random.key(seed), shape)


def _dependence(f, x_TI):
  """M[t, s] = sum |d f(x)[t, :] / d x[s, :]| for f: [T_in, I] -> [T_out, D]."""
  jac = jax.jacrev(f)(x_TI)  # [T_out, D, T_in, I]
  return np.asarray(jnp.abs(jac).sum(axis=(1, 3)))


def _assert_causal(dep):
  t_out, t_in = dep.shape
  future = np.triu(np.ones((t_out, t_in), bool), k=1)
  assert np.all(dep[future] == 0), "an output depends on a later input"
  assert np.all(np.diag(dep) > 0), "an output ignores the input at its own position"


def _wavenet(**kw):
  kw = dict(in_features=I, hidden_features=D, rngs=nnx.Rngs(0)) | kw
  return models.create("wavenet", **kw)


def _seq2seq(name, **kw):
  return models.create(name, in_features=I, hidden_features=D, rngs=nnx.Rngs(0), **kw)


def test_attributes():
  for model, interface in [(_wavenet(), "sequence"), (_seq2seq("bytenet"), "seq2seq"),
                           (_seq2seq("convs2s"), "seq2seq")]:
    assert type(model).interface == interface
    assert model.causal is True
    assert model.out_features == D


@pytest.mark.parametrize("kernel_size,num_layers,cycle,field", [
    (2, 4, 3, 9),   # dilations 1, 2, 4, 1
    (3, 3, 10, 15),  # dilations 1, 2, 4
])
def test_wavenet_receptive_field_by_gradients(kernel_size, num_layers, cycle, field):
  model = _wavenet(kernel_size=kernel_size, num_layers=num_layers, dilation_cycle=cycle)
  assert model.receptive_field == field
  t_len = field + 6
  dep = _dependence(lambda x: model(x[None])[0], _x((t_len, I), 1))
  t, s = np.meshgrid(np.arange(t_len), np.arange(t_len), indexing="ij")
  inside = (s <= t) & (s > t - field)
  assert np.all(dep[inside] > 0), "an input inside the receptive field has no effect"
  assert np.all(dep[~inside] == 0), "an input outside the receptive field has an effect"
  _assert_causal(dep)


@pytest.mark.parametrize("kernel_size,cycle", [(2, 10), (3, 2)])
def test_wavenet_step_equals_full_call(kernel_size, cycle):
  model = _wavenet(kernel_size=kernel_size, num_layers=5, dilation_cycle=cycle,
                   residual_features=6, skip_features=5)
  x = _x((2, 20, I), 2)
  full = model(x)
  state = model.init_state(2, 20)
  step = nnx.jit(lambda m, x_t, s: m.step(x_t, s))
  ys = []
  for t in range(x.shape[1]):
    y_t, state = step(model, x[:, t], state)
    ys.append(y_t)
  np.testing.assert_allclose(np.stack(ys, 1), np.asarray(full), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,field", [
    ("bytenet", 31),  # kernel 3, dilations 1, 2, 4, 8: the target stream's field
    ("convs2s", 5),   # kernel 3, 2 layers; attention mixes source, not target, positions
])
def test_seq2seq_causal_in_target(name, field):
  model = _seq2seq(name)
  src = _x((7, I), 3)
  t_len = 9
  dep = _dependence(lambda tgt: model(src[None], tgt[None])[0], _x((t_len, I), 4))
  _assert_causal(dep)
  t, s = np.meshgrid(np.arange(t_len), np.arange(t_len), indexing="ij")
  inside = (s <= t) & (s > t - field)
  assert np.all(dep[inside] > 0), "an output ignores an earlier target position"
  assert np.all(dep[~inside] == 0)


@pytest.mark.parametrize("name", ["bytenet", "convs2s"])
def test_seq2seq_encoder_sees_later_source(name):
  model = _seq2seq(name)
  tgt = _x((9, I), 5)
  dep = _dependence(lambda src: model(src[None], tgt[None])[0], _x((9, I), 6))
  assert dep[0, 1:].max() > 0, "target position 0 ignores later source positions"
  assert np.any(np.triu(dep, k=1) > 0)


@pytest.mark.parametrize("name", ["bytenet", "convs2s"])
def test_src_mask_hides_padding(name):
  model = _seq2seq(name)
  src, tgt = _x((2, 10, I), 7), _x((2, 8, I), 8)
  lengths = np.array([10, 6])
  mask = jnp.asarray(np.arange(10)[None] < lengths[:, None])
  y = model(src, tgt, src_mask=mask)
  changed_pad = jnp.where(mask[..., None], src, 100.0 * _x(src.shape, 9))
  np.testing.assert_allclose(np.asarray(model(changed_pad, tgt, src_mask=mask)), np.asarray(y),
                             rtol=1e-6, atol=1e-6)
  changed_valid = src.at[1, 2].add(1.0)  # a valid position must still matter
  assert np.abs(np.asarray(model(changed_valid, tgt, src_mask=mask) - y)[1]).max() > 1e-4


def test_bytenet_unfolds_to_target_length():
  model = _seq2seq("bytenet")
  for s_len in (4, 8, 12):
    assert model(_x((2, s_len, I), 10), _x((2, 8, I), 11)).shape == (2, 8, D)


def test_dropout_train_and_eval():
  model = _wavenet(dropout_rate=0.5)
  x = _x((2, 6, I), 12)
  model.eval()
  np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(model(x)))
  model.train()
  assert np.abs(np.asarray(model(x) - model(x))).max() > 0


@pytest.mark.parametrize("name", ["wavenet", "bytenet", "convs2s"])
def test_bfloat16_compute(name):
  model = models.create(name, in_features=I, hidden_features=D, dtype=jnp.bfloat16,
                        rngs=nnx.Rngs(0))
  x = _x((1, 5, I), 13)
  y = model(x) if name == "wavenet" else model(x, x)
  assert y.dtype == jnp.bfloat16 and y.shape == (1, 5, D)


@pytest.mark.parametrize("name,kw,match", [
    ("wavenet", dict(num_layers=0), "num_layers"),
    ("wavenet", dict(kernel_size=0), "kernel_size"),
    ("wavenet", dict(dilation_cycle=-1), "dilation_cycle"),
    ("wavenet", dict(residual_features=0), "residual_features"),
    ("wavenet", dict(dropout_rate=1.0), "dropout_rate"),
    ("wavenet", dict(hidden_features=2.5), "hidden_features"),
    ("bytenet", dict(hidden_features=1), "hidden_features"),
    ("bytenet", dict(dilation_cycle=0), "dilation_cycle"),
    ("convs2s", dict(max_length=0), "max_length"),
    ("convs2s", dict(num_layers=0), "num_layers"),
])
def test_bad_arguments_raise(name, kw, match):
  kw = dict(in_features=I, hidden_features=D) | kw
  with pytest.raises(ValueError, match=match):
    models.create(name, rngs=nnx.Rngs(0), **kw)


def test_bad_calls_raise():
  with pytest.raises(ValueError, match="max_length"):
    _seq2seq("convs2s", max_length=4)(_x((1, 5, I), 0), _x((1, 3, I), 0))
  with pytest.raises(ValueError, match="batch_size"):
    _wavenet().init_state(0, 5)


# -- against PyTorch: the three stacks rebuilt from torch.nn.Conv1d and functional ops ------


def _perturbed(model, seed=0):
  """Every parameter moved by N(0, 0.1^2): zero biases and unit LayerNorm scales would let
  a mis-copied (or mis-used) bias or scale go unnoticed."""
  rng = np.random.default_rng(seed)  # NumPy: one jax.random call per shape would compile
  params = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(
      lambda p: p + jnp.asarray(0.1 * rng.standard_normal(p.shape), p.dtype), params))
  return model


def _torch_conv(torch, kernel_WIO, bias_O, dilation, causal):
  """A torch.nn.Conv1d ([B, C, T]) holding our [W, C_in, C_out] kernel, and its left/right
  zero padding: (W-1) dilation on the left if causal, else half each side (odd W only)."""
  W, c_in, c_out = kernel_WIO.shape
  conv = torch.nn.Conv1d(c_in, c_out, W, dilation=dilation)
  with torch.no_grad():
    conv.weight.copy_(torch.from_numpy(np.asarray(kernel_WIO).transpose(2, 1, 0).copy()))
    conv.bias.copy_(torch.from_numpy(np.asarray(bias_O).copy()))
  span = (W - 1) * dilation
  assert causal or span % 2 == 0
  pad = (span, 0) if causal else (span // 2, span // 2)
  return lambda x_BCT: conv(torch.nn.functional.pad(x_BCT, pad))


def _tensors(torch, module, *names):
  return [torch.from_numpy(np.asarray(getattr(module, n)[...]).copy()) for n in names]


def _linear(torch, layer):
  kernel, bias = _tensors(torch, layer, "kernel", "bias")
  return lambda x: torch.nn.functional.linear(x, kernel.T, bias)  # x [..., C]


def _layer_norm(torch, ln):
  scale, bias = _tensors(torch, ln, "scale", "bias")
  # Flax's LayerNorm epsilon is 1e-6 (PyTorch's default is 1e-5).
  return lambda x: torch.nn.functional.layer_norm(x, x.shape[-1:], scale, bias, eps=1e-6)


def _channels_first(f):
  """Applies a [B, C, T] -> [B, C', T] torch function to [B, T, C]."""
  return lambda x_BTC: f(x_BTC.transpose(1, 2)).transpose(1, 2)


def _close_to_torch(ours, theirs):
  np.testing.assert_allclose(np.asarray(ours), theirs.detach().numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.parity
def test_wavenet_equals_torch():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  model = _perturbed(_wavenet(kernel_size=2, num_layers=5, dilation_cycle=3,
                              residual_features=6, skip_features=5))
  x = _x((2, 17, I), 20)
  R = 6
  # van den Oord et al. (2016), eq. 2: z = tanh(W_f * x) . sigmoid(W_g * x), the filter
  # and the gate as two dilated causal convolutions (our kernel's first and second halves).
  h = _linear(torch, model.inp)(torch.from_numpy(np.array(x)))
  skips = 0
  for layer, dilation in zip(model.layers, (1, 2, 4, 1, 2)):
    kernel, bias = np.asarray(layer.conv.kernel[...]), np.asarray(layer.conv.bias[...])
    conv_f = _channels_first(_torch_conv(torch, kernel[..., :R], bias[:R], dilation, True))
    conv_g = _channels_first(_torch_conv(torch, kernel[..., R:], bias[R:], dilation, True))
    z = torch.tanh(conv_f(h)) * torch.sigmoid(conv_g(h))
    h = h + _linear(torch, layer.res)(z)
    skips = skips + _linear(torch, layer.skip)(z)
  want = _linear(torch, model.out2)(F.relu(_linear(torch, model.out1)(F.relu(skips))))
  _close_to_torch(model(x), want)


def _torch_bytenet_block(torch, block, dilation, causal):
  """Kalchbrenner et al. (2016), Fig. 3: LN, ReLU, 1x1 (d -> d/2), LN, ReLU, masked
  dilated conv, LN, ReLU, 1x1 (d/2 -> d), plus the input."""
  F = torch.nn.functional
  conv = _channels_first(_torch_conv(torch, block.conv.kernel[...], block.conv.bias[...],
                                     dilation, causal))

  def apply(x, mask_BT1):
    h = _linear(torch, block.proj_in)(F.relu(_layer_norm(torch, block.ln1)(x)))
    h = F.relu(_layer_norm(torch, block.ln2)(h))
    if mask_BT1 is not None:
      h = h * mask_BT1
    h = conv(h)
    return x + _linear(torch, block.proj_out)(F.relu(_layer_norm(torch, block.ln3)(h)))
  return apply


@pytest.mark.parity
@pytest.mark.parametrize("s_len", [6, 11])  # source shorter / longer than the target
def test_bytenet_equals_torch(s_len):
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  model = _perturbed(_seq2seq("bytenet", num_layers=4, kernel_size=3, dilation_cycle=3))
  src, tgt = _x((2, s_len, I), 21), _x((2, 9, I), 22)
  lengths = np.array([s_len, s_len - 3])
  mask = np.arange(s_len)[None] < lengths[:, None]
  ours = model(src, tgt, src_mask=jnp.asarray(mask))
  mask_BS1 = torch.from_numpy(mask[..., None].astype(np.float32))
  dilations = (1, 2, 4, 1)
  x = _linear(torch, model.src_in)(torch.from_numpy(np.array(src)))
  for block, dilation in zip(model.encoder, dilations):
    x = _torch_bytenet_block(torch, block, dilation, causal=False)(x, mask_BS1)
  enc = x * mask_BS1
  # Dynamic unfolding, |t| = |s|: the encoder output at target position t, zero past the
  # source's end.
  T = tgt.shape[1]
  enc = F.pad(enc[:, :T], (0, 0, 0, max(0, T - s_len)))
  y = _linear(torch, model.tgt_in)(torch.from_numpy(np.array(tgt)))
  y = _linear(torch, model.merge)(torch.cat([enc, y], dim=-1))
  for block, dilation in zip(model.decoder, dilations):
    y = _torch_bytenet_block(torch, block, dilation, causal=True)(y, None)
  want = _linear(torch, model.out)(F.relu(_layer_norm(torch, model.out_ln)(y)))
  _close_to_torch(ours, want)


@pytest.mark.parity
def test_convs2s_equals_torch():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  model = _perturbed(_seq2seq("convs2s", num_layers=2, kernel_size=3, max_length=16))
  src, tgt = _x((2, 7, I), 23), _x((2, 5, I), 24)
  lengths = np.array([7, 4])
  mask = np.arange(7)[None] < lengths[:, None]
  ours = model(src, tgt, src_mask=jnp.asarray(mask))
  half = np.sqrt(0.5)

  def embed(emb, x):  # w x + p: a linear map of the features plus the learned position
    pos, = _tensors(torch, emb.pos, "embedding")
    x = torch.from_numpy(np.array(x))
    return _linear(torch, emb.proj)(x) + pos[:x.shape[1]][None]

  def conv_glu(conv, x, causal):  # Gehring et al. (2017), section 3.2: GLU over 2d channels
    f = _torch_conv(torch, conv.kernel[...], conv.bias[...], 1, causal)
    return F.glu(f(x.transpose(1, 2)), dim=1).transpose(1, 2)

  mask_t = torch.from_numpy(mask)
  e = embed(model.src_embed, src)
  z = e
  for conv in model.enc_convs:
    z = (conv_glu(conv, z * mask_t[..., None], causal=False) + z) * half
  values = (z + e) * half  # section 3.3: attend with z, read z + e
  g = embed(model.tgt_embed, tgt)
  x = g
  for conv, attn in zip(model.dec_convs, model.attention):
    h = conv_glu(conv, x, causal=True)
    d = (_linear(torch, attn.q)(h) + g) * half
    scores = torch.einsum("btd,bsd->bts", d, z).masked_fill(~mask_t[:, None, :], -torch.inf)
    a = torch.softmax(scores, dim=-1)
    # The conditional input scaled by m sqrt(1/m) = sqrt(m), m the source length.
    c = torch.einsum("bts,bsd->btd", a, values) * torch.sqrt(mask_t.sum(-1).float())[:, None,
                                                                                      None]
    h = (_linear(torch, attn.o)(c) + h) * half
    x = (h + x) * half
  _close_to_torch(ours, _linear(torch, model.out)(x))
