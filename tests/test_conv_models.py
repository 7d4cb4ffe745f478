"""WaveNet, ByteNet, ConvS2S: causality and receptive fields by gradients, stepping, masks."""

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
