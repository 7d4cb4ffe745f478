"""Linear recurrences (ops) and minGRU, minLSTM, LRU (models) against NumPy loops."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqscale import models
from seqscale.ops import linear_recurrence as ops

MODES = ("sequential", "associative", "chunked")
B, T, D = 3, 13, 4
CHUNK = 4  # does not divide T
TOL = dict(atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- independent references

def _np_loop(a, b, h0=None, lengths=None, reverse=False):
  """h_t = a_t h_{t-1} + b_t in float64 / complex128, one example and one step at a time."""
  b = np.asarray(b, np.complex128 if np.iscomplexobj(b) else np.float64)
  a = np.broadcast_to(np.asarray(a, b.dtype), b.shape)
  h, finals = np.zeros_like(b), []
  for i in range(b.shape[0]):
    n = b.shape[1] if lengths is None else int(lengths[i])
    s = np.zeros(b.shape[2:], b.dtype) if h0 is None else np.asarray(h0[i], b.dtype)
    for t in (range(n - 1, -1, -1) if reverse else range(n)):
      s = a[i, t] * s + b[i, t]
      h[i, t] = s
    finals.append(s)
  return h, np.stack(finals)


def _data(rng, dtype, shape=(B, T, D)):
  a = rng.uniform(0.5, 1.0, shape)
  b = rng.normal(size=shape)
  h0 = rng.normal(size=(shape[0],) + shape[2:])
  if np.dtype(dtype).kind == "c":
    a = a * np.exp(1j * rng.uniform(-np.pi, np.pi, shape))
    b = b + 1j * rng.normal(size=shape)
    h0 = h0 + 1j * rng.normal(size=h0.shape)
  return tuple(jnp.asarray(v, dtype) for v in (a, b, h0))


def _close(actual, expected, tol=TOL):
  np.testing.assert_allclose(np.asarray(actual), expected, **tol)


def _sigmoid(v):
  return 1.0 / (1.0 + np.exp(-v))


def _g(v):
  return np.where(v >= 0, v + 0.5, _sigmoid(v))


def _gelu_tanh(v):  # jax.nn.gelu's default (approximate=True)
  return 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))


def _p(param):
  return np.asarray(param[...], np.float64)


# ------------------------------------------------------------------------------ ops

@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_equals_a_python_loop(mode, dtype, reverse, rng):
  a, b, h0 = _data(rng, dtype)
  h, final = ops.linear_recurrence(a, b, h0, mode=mode, chunk_size=CHUNK, reverse=reverse)
  assert h.dtype == dtype and h.shape == (B, T, D)
  h_ref, final_ref = _np_loop(a, b, h0, reverse=reverse)
  _close(h, h_ref)
  _close(final, final_ref)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
def test_every_mode_equals_every_other(dtype, rng):
  a, b, h0 = _data(rng, dtype)
  lengths = jnp.array([T, 6, 1])
  for reverse in (False, True):
    outs = [ops.linear_recurrence(a, b, h0, mode=m, chunk_size=CHUNK, reverse=reverse,
                                  lengths_B=lengths) for m in MODES]
    for h, final in outs[1:]:
      _close(h, np.asarray(outs[0][0]))
      _close(final, np.asarray(outs[0][1]))


@pytest.mark.parametrize("mode", MODES)
def test_reverse_equals_flipping(mode, rng):
  a, b, h0 = _data(rng, jnp.complex64)
  h, final = ops.linear_recurrence(a, b, h0, mode=mode, chunk_size=CHUNK, reverse=True)
  h_flip, final_flip = ops.linear_recurrence(jnp.flip(a, 1), jnp.flip(b, 1), h0, mode=mode,
                                             chunk_size=CHUNK)
  _close(h, np.flip(np.asarray(h_flip), 1))
  _close(final, np.asarray(final_flip))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_padded_batch_equals_each_example_alone(mode, reverse, rng):
  a, b, h0 = _data(rng, jnp.float32, shape=(4, T, D))
  lengths = [T, 5, 1, 0]
  h, final = ops.linear_recurrence(a, b, h0, mode=mode, chunk_size=CHUNK, reverse=reverse,
                                   lengths_B=jnp.array(lengths))
  for i, n in enumerate(lengths):
    if n == 0:  # nothing to run alone: no outputs, the state is h0
      _close(final[i], np.asarray(h0[i]))
    else:
      h_i, final_i = ops.linear_recurrence(a[i:i + 1, :n], b[i:i + 1, :n], h0[i:i + 1],
                                           mode=mode, chunk_size=CHUNK, reverse=reverse)
      _close(h[i, :n], np.asarray(h_i[0]))
      _close(final[i], np.asarray(final_i[0]))
    assert np.all(np.asarray(h[i, n:]) == 0), "outputs after the end must be zero"
  h_ref, final_ref = _np_loop(a, b, h0, lengths=lengths, reverse=reverse)
  _close(h, h_ref)
  _close(final, final_ref)


@pytest.mark.parametrize("chunk_size", [1, 3, 5, T, T + 7])
def test_chunked_with_any_chunk_size(chunk_size, rng):
  a, b, h0 = _data(rng, jnp.complex64)
  h, final = ops.linear_recurrence(a, b, h0, mode="chunked", chunk_size=chunk_size)
  h_ref, final_ref = _np_loop(a, b, h0)
  _close(h, h_ref)
  _close(final, final_ref)


@pytest.mark.parametrize("mode", MODES)
def test_running_sum_and_initial_state(mode):
  b = jnp.array([2.0, 5.0, 3.0, 7.0]).reshape(1, 4, 1)
  h, _ = ops.linear_recurrence(jnp.ones(()), b, mode=mode, chunk_size=3)
  np.testing.assert_array_equal(np.asarray(h).ravel(), [2, 7, 10, 17])
  h, final = ops.linear_recurrence(jnp.ones(()), b, jnp.full((1, 1), 10.0), mode=mode,
                                   chunk_size=3)
  np.testing.assert_array_equal(np.asarray(h).ravel(), [12, 17, 20, 27])
  assert float(final[0, 0]) == 27.0


@pytest.mark.parametrize("mode", MODES)
def test_time_invariant_decay_broadcasts(mode, rng):
  a, b, _ = _data(rng, jnp.complex64)
  a_D = a[0, 0]
  h, _ = ops.linear_recurrence(a_D, b, mode=mode, chunk_size=CHUNK)
  _close(h, _np_loop(np.broadcast_to(np.asarray(a_D), b.shape), b)[0])


def test_gradients_agree_across_modes(rng):
  a, b, h0 = _data(rng, jnp.float32)
  lengths = jnp.array([T, 6, 2])

  def loss(a, b, h0, mode):
    h, final = ops.linear_recurrence(a, b, h0, mode=mode, chunk_size=CHUNK, lengths_B=lengths)
    return jnp.sum(jnp.sin(h)) + jnp.sum(final**2)

  grads = [jax.grad(loss, argnums=(0, 1, 2))(a, b, h0, m) for m in MODES]
  for g in grads[1:]:
    for u, v in zip(g, grads[0]):
      np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("with_h0", [False, True])
def test_log_space_equals_direct_computation(with_h0, rng):
  a = rng.uniform(0.5, 1.0, (B, T, D))
  b = np.exp(rng.normal(size=(B, T, D)))
  b[:, 3] = 0.0  # log b = -inf: an input of exactly zero
  h0 = np.exp(rng.normal(size=(B, D))) if with_h0 else None
  with np.errstate(divide="ignore"):
    log_b = np.log(b)
  h = ops.log_linear_recurrence(jnp.asarray(np.log(a), jnp.float32),
                                jnp.asarray(log_b, jnp.float32),
                                None if h0 is None else jnp.asarray(np.log(h0), jnp.float32))
  _close(h, _np_loop(a, b, h0)[0])


@pytest.mark.parametrize("kwargs,name", [
    (dict(mode="parallel"), "mode"), (dict(chunk_size=0), "chunk_size"),
    (dict(chunk_size=2.0), "chunk_size"), (dict(chunk_size=True), "chunk_size"),
    (dict(reverse="yes"), "reverse"), (dict(lengths_B=jnp.array([1, 2])), "lengths_B"),
    (dict(a_BTD=jnp.ones((B, T, D + 1))), "a_BTD"), (dict(b_BTD=jnp.ones((B, D))), "b_BTD")])
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
  args = dict(a_BTD=jnp.ones((B, T, D)), b_BTD=jnp.ones((B, T, D)))
  args.update(kwargs)
  with pytest.raises(ValueError, match=name):
    ops.linear_recurrence(**args)


def test_log_space_rejects_complex():
  with pytest.raises(ValueError, match="real"):
    ops.log_linear_recurrence(jnp.zeros((1, 2, 1), jnp.complex64), jnp.zeros((1, 2, 1)))


# --------------------------------------------------------------------------- models

I, H = 3, 6
VARIANTS = [("mingru", {}), ("minlstm", {}), ("mingru", dict(log_space=True)),
            ("minlstm", dict(log_space=True)), ("lru", dict(state_features=5))]


def _model(name, **kw):
  return models.create(name, **{"in_features": I, "hidden_features": H, "num_layers": 2,
                                "chunk_size": CHUNK, **kw}, rngs=nnx.Rngs(0))


def _x(rng, batch=2, length=11):
  return jnp.asarray(rng.normal(size=(batch, length, I)), jnp.float32)


@pytest.mark.parametrize("name,kw", VARIANTS, ids=str)
def test_models_give_the_same_outputs_in_every_mode(name, kw, rng):
  x = _x(rng)
  mask = jnp.arange(11)[None] < jnp.array([[11], [7]])
  built = [_model(name, mode=m, **kw) for m in MODES]
  params = [jax.tree.leaves(nnx.state(m, nnx.Param)) for m in built]
  for p in params[1:]:  # same weights, so any difference comes from the scan
    assert all(np.array_equal(u, v) for u, v in zip(p, params[0]))
  for m in (None, mask):
    ys = [np.asarray(model(x, mask=m)) for model in built]
    for y in ys[1:]:
      _close(y, ys[0])


def _np_min_rnn(model, x, name):
  """The paper's equations, layer by layer and step by step, in float64."""
  h_in = np.asarray(x, np.float64)
  for layer in model.layers:
    pre = h_in @ _p(layer.kernel) + _p(layer.bias)
    if name == "mingru":
      k, pre_h = np.split(pre, 2, axis=-1)
    else:
      k_f, k_i, pre_h = np.split(pre, 3, axis=-1)
    h_tilde = _g(pre_h) if model.log_space else pre_h
    s = np.zeros(h_in.shape[:1] + (H,))
    out = []
    for t in range(h_in.shape[1]):
      if name == "mingru":
        z = _sigmoid(k[:, t])
        s = (1 - z) * s + z * h_tilde[:, t]
      else:
        f, i = _sigmoid(k_f[:, t]), _sigmoid(k_i[:, t])
        s = f / (f + i) * s + i / (f + i) * h_tilde[:, t]
      out.append(s)
    h_in = np.stack(out, axis=1)
  return h_in


@pytest.mark.parametrize("name,kw", VARIANTS[:4], ids=str)
def test_mingru_minlstm_equal_the_papers_equations(name, kw, rng):
  x = _x(rng)
  model = _model(name, **kw)  # mode="associative": log-space scan where log_space
  _close(model(x), _np_min_rnn(model, x, name))


def test_lru_equals_a_loop_of_its_complex_recurrence(rng):
  x = _x(rng)
  model = _model("lru", state_features=5, mode="associative")
  u = np.asarray(x, np.float64) @ _p(model.encoder.kernel) + _p(model.encoder.bias)
  for layer in model.layers:
    lam = np.exp(-np.exp(_p(layer.nu_log)) + 1j * np.exp(_p(layer.theta_log)))
    B_norm = (_p(layer.B_re) + 1j * _p(layer.B_im)) * np.exp(_p(layer.gamma_log))
    C = _p(layer.C_re) + 1j * _p(layer.C_im)
    s = np.zeros((u.shape[0], 5), np.complex128)
    ys = []
    for t in range(u.shape[1]):
      s = lam * s + u[:, t] @ B_norm
      ys.append((s @ C).real + _p(layer.D) * u[:, t])
    y = np.stack(ys, axis=1)
    u = u + _gelu_tanh(y) @ _p(layer.mix.kernel) + _p(layer.mix.bias)
  _close(model(x), u, dict(atol=2e-5, rtol=1e-5))


def test_lru_ring_initialisation():
  model = models.create("lru", in_features=I, hidden_features=H, state_features=400,
                        r_min=0.5, r_max=0.9, max_phase=math.pi / 3, rngs=nnx.Rngs(1))
  layer = model.layers[0]
  lam = np.exp(-np.exp(_p(layer.nu_log)) + 1j * np.exp(_p(layer.theta_log)))
  r, phase = np.abs(lam), np.angle(lam)
  assert 0.5 - 1e-6 <= r.min() and r.max() <= 0.9 + 1e-6
  assert r.min() < 0.55 and r.max() > 0.85  # the whole ring is covered
  assert 0 <= phase.min() and phase.max() <= math.pi / 3 + 1e-6
  np.testing.assert_allclose(np.exp(_p(layer.gamma_log)), np.sqrt(1 - r**2), rtol=1e-5)


@pytest.mark.parametrize("name,kw", [("mingru", dict(log_space=True)),
                                     ("minlstm", dict(mode="chunked")),
                                     ("lru", dict(mode="sequential"))], ids=str)
def test_masked_batch_equals_each_example_alone(name, kw, rng):
  x = _x(rng)
  model = _model(name, **kw)
  y = np.asarray(model(x, mask=jnp.arange(11)[None] < jnp.array([[11], [4]])))
  _close(y[1, :4], np.asarray(model(x[1:, :4]))[0])
  _close(y[0], np.asarray(model(x[:1]))[0])
  assert np.all(y[1, 4:] == 0)


@pytest.mark.parametrize("name,kwargs,arg", [
    ("mingru", dict(mode="parallel"), "mode"), ("minlstm", dict(chunk_size=0), "chunk_size"),
    ("mingru", dict(log_space=1), "log_space"), ("mingru", dict(hidden_features=0),
                                                 "hidden_features"),
    ("minlstm", dict(dropout_rate=1.0), "dropout_rate"), ("lru", dict(mode="fast"), "mode"),
    ("lru", dict(r_min=0.9, r_max=0.5), "r_min"), ("lru", dict(r_max=1.5), "r_max"),
    ("lru", dict(max_phase=0.0), "max_phase"), ("lru", dict(state_features=0),
                                                "state_features")], ids=str)
def test_models_reject_bad_arguments(name, kwargs, arg):
  with pytest.raises(ValueError, match=arg):
    _model(name, **kwargs)
