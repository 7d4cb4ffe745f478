"""RNN, LSTM and GRU: ops and models against PyTorch, Flax's LSTMCell and NumPy loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqscale import models
from seqscale.ops import recurrent as ops

CELLS = ("rnn", "lstm", "gru")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
B, T, I, D = 3, 7, 5, 6


# ---------------------------------------------------------------- independent references

def _sigmoid(a):
  return 1.0 / (1.0 + np.exp(-a))


def _np_cell(cell, p, carry, x):
  """One step in float64 NumPy, written from the PyTorch docs' equations."""
  gi = x @ p["w_ih"] + p["b_ih"]
  if cell == "lstm":
    h, c = carry
    gh = h @ p["w_hh"] + p["b_hh"]
    i, f, g, o = np.split(gi + gh, 4, axis=-1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    h = _sigmoid(o) * np.tanh(c)
    return (h, c), h
  gh = carry @ p["w_hh"] + p["b_hh"]
  if cell == "rnn":
    h = np.tanh(gi + gh)
    return h, h
  ir, iz, in_ = np.split(gi, 3, axis=-1)
  hr, hz, hn = np.split(gh, 3, axis=-1)
  r, z = _sigmoid(ir + hr), _sigmoid(iz + hz)
  n = np.tanh(in_ + r * hn)
  h = (1 - z) * n + z * carry
  return h, h


def _np_run(cell, p, carry, x_BTI):
  p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  carry = jax.tree.map(lambda a: np.asarray(a, np.float64), carry)
  ys = []
  for t in range(x_BTI.shape[1]):
    carry, y = _np_cell(cell, p, carry, np.asarray(x_BTI[:, t], np.float64))
    ys.append(y)
  return np.stack(ys, axis=1), carry


def _random_params(cell, rng, in_features=I, hidden=D):
  g = GATES[cell] * hidden
  shapes = dict(w_ih=(in_features, g), w_hh=(hidden, g), b_ih=(g,), b_hh=(g,))
  return {k: jnp.asarray(rng.uniform(-0.5, 0.5, s), jnp.float32) for k, s in shapes.items()}


def _random_carry(cell, rng, batch=B, hidden=D):
  h = jnp.asarray(rng.normal(size=(batch, hidden)) * 0.5, jnp.float32)
  if cell == "lstm":
    return (h, jnp.asarray(rng.normal(size=(batch, hidden)) * 0.5, jnp.float32))
  return h


def _x(rng, batch=B, length=T, features=I):
  return jnp.asarray(rng.normal(size=(batch, length, features)), jnp.float32)


def _assert_trees_close(a, b, atol=1e-5):
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=atol, rtol=1e-5), a, b)


def _max_err(a, b):
  return max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
             for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ---------------------------------------------------------------- the scan driver

@pytest.mark.parametrize("cell", CELLS)
def test_scan_equals_numpy_loop(cell, rng):
  params, carry, x = _random_params(cell, rng), _random_carry(cell, rng), _x(rng)
  y, final = ops.run(cell, x, params, carry)
  y_ref, final_ref = _np_run(cell, params, carry, np.asarray(x))
  _assert_trees_close((y, final), (y_ref, final_ref))
  # The convenience functions and the single-step functions give the same numbers.
  y2, _ = getattr(ops, cell)(x, params, carry)
  np.testing.assert_allclose(y2, y_ref, atol=1e-5)
  step_carry, step_y = getattr(ops, f"{cell}_step")(params, carry, x[:, 0])
  np.testing.assert_allclose(step_y, y_ref[:, 0], atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_padded_batch_equals_each_example_alone(cell, reverse, rng):
  params, carry, x = _random_params(cell, rng), _random_carry(cell, rng, batch=4), _x(rng, 4)
  lengths = jnp.asarray([T, 3, 1, 5])
  y, final = ops.run(cell, x, params, carry, lengths, reverse=reverse)
  for b, n in enumerate(np.asarray(lengths)):
    carry_b = jax.tree.map(lambda a: a[b:b + 1], carry)
    y_b, final_b = ops.run(cell, x[b:b + 1, :n], params, carry_b, reverse=reverse)
    np.testing.assert_allclose(y[b, :n], y_b[0], atol=1e-6)
    np.testing.assert_array_equal(y[b, n:], 0.0)
    _assert_trees_close(jax.tree.map(lambda a: a[b], final),
                        jax.tree.map(lambda a: a[0], final_b), atol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_reverse_equals_flip_run_flip(cell, rng):
  params, carry, x = _random_params(cell, rng), _random_carry(cell, rng), _x(rng)
  y, final = ops.run(cell, x, params, carry, reverse=True)
  y_flip, final_flip = _np_run(cell, params, carry, np.asarray(x)[:, ::-1])
  _assert_trees_close((y, final), (y_flip[:, ::-1], final_flip))


@pytest.mark.parametrize("unroll", [3, True])
def test_unroll_gives_the_same_result(unroll, rng):
  params, carry, x = _random_params("lstm", rng), _random_carry("lstm", rng), _x(rng)
  lengths = jnp.asarray([T, 4, 2])
  for reverse in (False, True):
    ref = ops.lstm(x, params, carry, lengths, reverse=reverse)
    out = ops.lstm(x, params, carry, lengths, reverse=reverse, unroll=unroll)
    _assert_trees_close(out, ref, atol=1e-6)


# ---------------------------------------------------------------- PyTorch parity

def copy_from_torch(model, torch_rnn):
  """Copies a torch.nn.RNN/LSTM/GRU's weights into our model of the same shape."""
  for l, layer in enumerate(model.layers):
    for d, weights in enumerate(layer.directions()):
      suffix = f"_l{l}" + ("_reverse" if d else "")
      for ours, theirs, transpose in [("w_ih", "weight_ih", True), ("w_hh", "weight_hh", True),
                                      ("b_ih", "bias_ih", False), ("b_hh", "bias_hh", False)]:
        value = getattr(torch_rnn, theirs + suffix).detach().numpy()
        getattr(weights, ours)[...] = jnp.asarray(value.T if transpose else value)


def _torch_pair(cell, num_layers, bidirectional, seed=0):
  torch = pytest.importorskip("torch")
  torch.manual_seed(seed)
  ctor = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
  theirs = ctor(I, D, num_layers=num_layers, bidirectional=bidirectional, batch_first=True)
  ours = models.create(cell, in_features=I, hidden_features=D, num_layers=num_layers,
                       bidirectional=bidirectional, rngs=nnx.Rngs(1))
  copy_from_torch(ours, theirs)
  return torch, ours, theirs


def _torch_state(cell, state, num_layers, num_dirs, torch):
  """Our state[l][d] as torch's h0 (and c0): [L * dirs, B, D]."""
  pick = lambda i: torch.from_numpy(np.stack(
      [np.asarray(jax.tree.leaves(state[l][d])[i]) for l in range(num_layers)
       for d in range(num_dirs)]))
  return (pick(0), pick(1)) if cell == "lstm" else pick(0)


def _ours_from_torch_final(cell, final_torch, num_layers, num_dirs):
  hs = final_torch if cell != "lstm" else final_torch[0]
  out = []
  for l in range(num_layers):
    for d in range(num_dirs):
      i = l * num_dirs + d
      out.append((hs[i], final_torch[1][i]) if cell == "lstm" else hs[i])
  return [np.asarray(a.detach().numpy()) for a in jax.tree.leaves(out)]


@pytest.mark.parity
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_equals_torch(cell, bidirectional, rng):
  num_layers, num_dirs = 3, 2 if bidirectional else 1
  torch, ours, theirs = _torch_pair(cell, num_layers, bidirectional)
  x = _x(rng)
  state = tuple(tuple(_random_carry(cell, rng) for _ in range(num_dirs))
                for _ in range(num_layers))
  y, final = ours.run(x, initial_state=state)
  with torch.no_grad():
    y_t, final_t = theirs(torch.from_numpy(np.array(x)),
                          _torch_state(cell, state, num_layers, num_dirs, torch))
  assert y.shape == (B, T, ours.out_features) == tuple(y_t.shape)
  y_t = y_t.numpy()
  final_t = _ours_from_torch_final(cell, final_t, num_layers, num_dirs)
  err = max(_max_err(y, y_t), _max_err(jax.tree.leaves(final), final_t))
  print(f"\n[parity] {cell} vs torch.nn.{cell.upper()} (L={num_layers}, "
        f"bidirectional={bidirectional}): max |diff| = {err:.2e}")
  np.testing.assert_allclose(y, y_t, atol=1e-5, rtol=0)
  for a, b in zip(jax.tree.leaves(final), final_t):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parity
@pytest.mark.parametrize("cell", CELLS)
def test_padded_batch_equals_torch_packed_sequence(cell, rng):
  num_layers = 2
  torch, ours, theirs = _torch_pair(cell, num_layers, bidirectional=True, seed=1)
  x = _x(rng, batch=4)
  lengths = np.array([T, 3, 1, 5])
  mask = jnp.arange(T)[None, :] < jnp.asarray(lengths)[:, None]
  y, final = ours.run(x, mask=mask)
  pack = torch.nn.utils.rnn
  with torch.no_grad():
    packed = pack.pack_padded_sequence(torch.from_numpy(np.array(x)), torch.from_numpy(lengths),
                                       batch_first=True, enforce_sorted=False)
    y_packed, final_t = theirs(packed)
    y_t, _ = pack.pad_packed_sequence(y_packed, batch_first=True, total_length=T)
  final_t = _ours_from_torch_final(cell, final_t, num_layers, 2)
  err = max(_max_err(y, y_t.numpy()), _max_err(jax.tree.leaves(final), final_t))
  print(f"\n[parity] {cell} padded vs torch packed (L={num_layers}, bidirectional): "
        f"max |diff| = {err:.2e}")
  np.testing.assert_allclose(y, y_t.numpy(), atol=1e-5, rtol=0)
  for a, b in zip(jax.tree.leaves(final), final_t):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- Flax parity

@pytest.mark.parity
def test_lstm_equals_flax_lstm_cell(rng):
  ours = models.create("lstm", in_features=I, hidden_features=D, rngs=nnx.Rngs(0))
  w = ours.layers[0].fwd
  flax_cell = nnx.LSTMCell(I, D, rngs=nnx.Rngs(1))
  # Flax: ii/if_/ig/io input kernels without bias, hi/hf/hg/ho hidden kernels with bias.
  for k, gate in enumerate("ifgo"):
    cols = slice(k * D, (k + 1) * D)
    getattr(flax_cell, "i" + gate if gate != "f" else "if_").kernel[...] = w.w_ih[...][:, cols]
    hidden = getattr(flax_cell, "h" + gate)
    hidden.kernel[...] = w.w_hh[...][:, cols]
    hidden.bias[...] = w.b_ih[...][cols] + w.b_hh[...][cols]
  x = _x(rng)
  y, final = ours.run(x)
  carry = flax_cell.initialize_carry((B, I), rngs=nnx.Rngs(0))  # (c, h), zeros
  ys = []
  for t in range(T):
    carry, y_t = flax_cell(carry, x[:, t])
    ys.append(y_t)
  y_ref = jnp.stack(ys, axis=1)
  (h, c), = final[0]
  err = max(_max_err(y, y_ref), _max_err((h, c), (carry[1], carry[0])))
  print(f"\n[parity] lstm vs flax.nnx.LSTMCell loop: max |diff| = {err:.2e}")
  np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=0)
  _assert_trees_close((h, c), (carry[1], carry[0]))


# ---------------------------------------------------------------- the model

@pytest.mark.parametrize("cell", CELLS)
def test_unidirectional_is_causal_by_gradients(cell, rng):
  model = models.create(cell, in_features=I, hidden_features=D, num_layers=2, rngs=nnx.Rngs(0))
  assert model.causal and model.interface == "sequence" and model.out_features == D
  x = _x(rng, batch=1)
  jac = jax.jacrev(lambda x: model(x)[0].sum(-1))(x)  # [T, 1, T, I]
  dep = np.abs(np.asarray(jac[:, 0])).sum(-1)  # [t, s]
  assert np.triu(dep, k=1).max() == 0.0
  assert (np.diag(dep) > 0).all() and (dep[:, 0] > 0).all()


def test_bidirectional_sees_the_future_and_cannot_step(rng):
  model = models.create("gru", in_features=I, hidden_features=D, bidirectional=True,
                        rngs=nnx.Rngs(0))
  assert not model.causal and model.out_features == 2 * D
  jac = jax.jacrev(lambda x: model(x)[0, 0].sum())(_x(rng, batch=1))
  assert np.abs(np.asarray(jac[0, 1:])).max() > 0
  with pytest.raises(ValueError, match="bidirectional"):
    model.init_state(batch_size=2, max_length=T)
  with pytest.raises(ValueError, match="bidirectional"):
    model.step(jnp.zeros((2, I)), ())


@pytest.mark.parametrize("cell", CELLS)
def test_step_by_step_equals_full_call(cell, rng):
  model = models.create(cell, in_features=I, hidden_features=D, num_layers=2,
                        dropout_rate=0.3, rngs=nnx.Rngs(0))
  model.eval()
  x = _x(rng)
  y_full = model(x)
  state = model.init_state(batch_size=B, max_length=T)
  ys = []
  for t in range(T):
    y_t, state = model.step(x[:, t], state)
    ys.append(y_t)
  np.testing.assert_allclose(jnp.stack(ys, axis=1), y_full, atol=1e-5, rtol=1e-5)
  _, final = model.run(x)
  _assert_trees_close(state, final)


def test_dropout_only_between_layers_and_only_in_training(rng):
  x = _x(rng)
  one = models.create("lstm", in_features=I, hidden_features=D, dropout_rate=0.5,
                      rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(one(x), one(x))  # one layer: nothing between layers
  two = models.create("lstm", in_features=I, hidden_features=D, num_layers=2,
                      dropout_rate=0.5, rngs=nnx.Rngs(0))
  assert np.abs(np.asarray(two(x) - two(x))).max() > 0
  two.eval()
  np.testing.assert_array_equal(two(x), two(x))


def test_bfloat16_computation_keeps_float32_params(rng):
  kw = dict(in_features=I, hidden_features=D, num_layers=2)
  low = models.create("lstm", dtype=jnp.bfloat16, **kw, rngs=nnx.Rngs(0))
  ref = models.create("lstm", **kw, rngs=nnx.Rngs(0))
  x = _x(rng)
  y = low(x)
  assert y.dtype == jnp.bfloat16 and low.layers[0].fwd.w_ih[...].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(y, np.float32), ref(x), atol=5e-2)


@pytest.mark.parametrize("kwargs,name", [
    (dict(in_features=0), "in_features"),
    (dict(hidden_features=-1), "hidden_features"),
    (dict(hidden_features=2.5), "hidden_features"),
    (dict(num_layers=0), "num_layers"),
    (dict(dropout_rate=1.0), "dropout_rate"),
    (dict(dropout_rate=-0.1), "dropout_rate"),
    (dict(unroll=0), "unroll"),
    (dict(bidirectional="yes"), "bidirectional"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
  with pytest.raises(ValueError, match=name):
    models.create("lstm", **{"in_features": I, "hidden_features": D, **kwargs},
                  rngs=nnx.Rngs(0))
