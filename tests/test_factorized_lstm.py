"""F-LSTM and G-LSTM against PyTorch LSTMs; masks, stepping; the timing analysis's counts."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqscale import models
from seqscale.studies import flstm_timing
from seqscale.models import factorized_lstm as fl

B, T, I, D = 2, 6, 4, 8


def _x(seed=0, in_features=I):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(B, T, in_features)), jnp.float32)


def _torch_lstm(w_ih, w_hh, b_ih, b_hh):
  """torch.nn.LSTM with our layout's weights (transposed), float64."""
  torch = pytest.importorskip("torch")
  lstm = torch.nn.LSTM(w_ih.shape[0], w_hh.shape[0], batch_first=True).double()
  with torch.no_grad():
    for name, value in (("weight_ih_l0", w_ih.T), ("weight_hh_l0", w_hh.T),
                        ("bias_ih_l0", b_ih), ("bias_hh_l0", b_hh)):
      getattr(lstm, name).copy_(torch.tensor(np.asarray(value, np.float64)))
  return lambda x: lstm(torch.tensor(np.asarray(x, np.float64)))[0].detach().numpy()


@pytest.mark.parity
def test_flstm_at_full_rank_is_the_lstm_with_the_product_weights():
  model = fl.FLSTM(I, D, rank=I + D, rngs=nnx.Rngs(0))  # r = I + D: W1 is square
  p = {k: np.asarray(v, np.float64) for k, v in model.layers[0].params(jnp.float32).items()}
  ref = _torch_lstm(p["w1_ih"] @ p["w2"], p["w1_hh"] @ p["w2"], p["b"], np.zeros(4 * D))
  x = _x()
  np.testing.assert_allclose(np.asarray(model(x)), ref(x), atol=1e-5)


@pytest.mark.parity
def test_flstm_full_rank_represents_any_lstm():
  # The converse: a random LSTM's [W_ih; W_hh] factored as W1 = [W_ih; W_hh], W2 = identity.
  rng = np.random.default_rng(1)
  w_ih, w_hh = rng.uniform(-0.4, 0.4, (I, 4 * D)), rng.uniform(-0.4, 0.4, (D, 4 * D))
  b_ih, b_hh = rng.uniform(-0.4, 0.4, 4 * D), rng.uniform(-0.4, 0.4, 4 * D)
  model = fl.FLSTM(I, D, rank=4 * D, rngs=nnx.Rngs(0))
  layer = model.layers[0]
  for name, value in (("w1_ih", w_ih), ("w1_hh", w_hh), ("w2", np.eye(4 * D)),
                      ("b", b_ih + b_hh)):
    getattr(layer, name)[...] = jnp.asarray(value, jnp.float32)
  x = _x(2)
  np.testing.assert_allclose(np.asarray(model(x)), _torch_lstm(w_ih, w_hh, b_ih, b_hh)(x),
                             atol=1e-5)


@pytest.mark.parity
def test_glstm_with_one_group_is_an_lstm():
  model = fl.GLSTM(I, D, num_groups=1, rngs=nnx.Rngs(0))
  p = {k: np.asarray(getattr(model.layers[0], k)[...])[0]
       for k in ("w_ih", "w_hh", "b_ih", "b_hh")}
  x = _x(3)
  np.testing.assert_allclose(np.asarray(model(x)),
                             _torch_lstm(p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"])(x),
                             atol=1e-5)


@pytest.mark.parity
def test_glstm_is_independent_lstms_on_the_split_inputs():
  G = 2
  model = fl.GLSTM(I, D, num_groups=G, rngs=nnx.Rngs(0))
  layer = model.layers[0]
  x = _x(4)
  Ig, Dg = I // G, D // G
  ref = np.concatenate([
      _torch_lstm(*(np.asarray(getattr(layer, n)[...])[g]
                    for n in ("w_ih", "w_hh", "b_ih", "b_hh")))(x[..., g * Ig:(g + 1) * Ig])
      for g in range(G)], axis=-1)
  np.testing.assert_allclose(np.asarray(model(x)), ref, atol=1e-5)
  # Independent: group 0's outputs do not depend on group 1's inputs at all.
  jac = jax.jacrev(lambda x: model(x)[..., :Dg].sum())(x)
  assert float(jnp.abs(jac[..., Ig:]).max()) == 0.0
  assert float(jnp.abs(jac[..., :Ig]).max()) > 0.0


@pytest.mark.parametrize("name,kw", [("flstm", dict(rank=3)), ("glstm", dict(num_groups=2))])
def test_padding_and_stepping(name, kw):
  model = models.create(name, in_features=I, hidden_features=D, num_layers=2, **kw,
                        rngs=nnx.Rngs(0))
  x = _x(5)
  mask = jnp.asarray([[1] * 4 + [0] * (T - 4), [1] * T], bool)
  garbage = x.at[0, 4:].set(50.0)
  y, final = model.run(garbage, mask=mask)
  y_trim, final_trim = model.run(x[:1, :4])
  np.testing.assert_allclose(np.asarray(y[0, :4]), np.asarray(y_trim[0]), atol=1e-5)
  assert (np.asarray(y[0, 4:]) == 0).all()
  np.testing.assert_allclose(np.asarray(final[1][0][0]), np.asarray(final_trim[1][0][0]),
                             atol=1e-5)
  state, outs = model.init_state(B, T), []
  for t in range(T):
    y_t, state = model.step(x[:, t], state)
    outs.append(np.asarray(y_t))
  np.testing.assert_allclose(np.stack(outs, 1), np.asarray(model(x)), atol=1e-5)


def test_parameter_counts_follow_the_paper():
  count = lambda m: sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(m, nnx.Param)))
  lstm = models.create("lstm", in_features=I, hidden_features=D, rngs=nnx.Rngs(0))
  f = fl.FLSTM(I, D, rank=2, rngs=nnx.Rngs(0))
  g = fl.GLSTM(I, D, num_groups=4, rngs=nnx.Rngs(0))
  assert count(lstm) == 4 * D * (I + D) + 2 * 4 * D
  assert count(f) == 2 * (I + D) + 2 * 4 * D + 4 * D
  assert count(g) == 4 * D * (I + D) // 4 + 2 * 4 * D


@pytest.mark.parametrize("kw,match", [
    (dict(num_groups=3), "divisible by num_groups=3"),
    (dict(num_groups=0), "num_groups=0"),
])
def test_glstm_bad_arguments(kw, match):
  with pytest.raises(ValueError, match=match):
    fl.GLSTM(I, D, **kw, rngs=nnx.Rngs(0))


def test_flstm_bad_rank():
  with pytest.raises(ValueError, match="rank=0"):
    fl.FLSTM(I, D, rank=0, rngs=nnx.Rngs(0))


# --------------------------------------------------------------------- timing analysis

@pytest.mark.slow
def test_analysis_counts_flops_and_a_serial_chain_that_does_not_shrink(tmp_path):
  rows = flstm_timing.compare(width=16, in_features=16, rank=4, num_groups=4, batch_size=2,
                              lengths=(8, 16), repeats=1)
  table = flstm_timing.write(rows, str(tmp_path), {"note": "test"})
  assert table.count("\n| ") == len(rows)  # one line per row after the header
  assert {"results.json", "results.md", "flstm_timing.png"} <= set(os.listdir(tmp_path))
  by = {(r["model"], r["length"]): r for r in rows}
  for L in (8, 16):
    lstm, f, g = by["lstm", L], by["flstm r=4", L], by["glstm G=4", L]
    # The three cells share their elementwise gate work, so the differences of the counted
    # serial FLOPs are the hidden matmuls' alone: 2B * D * 4D for the LSTM, 2B * (D r + r 4D)
    # for the F-LSTM, 2B * D * 4D / G for the G-LSTM.
    matmul = 2 * 2 * 16 * 64
    assert f["serial_flops_per_step"] - lstm["serial_flops_per_step"] == (
        2 * 2 * (16 * 4 + 4 * 64) - matmul)
    assert g["serial_flops_per_step"] - lstm["serial_flops_per_step"] == matmul // 4 - matmul
    assert f["flops_per_step"] < lstm["flops_per_step"]
    assert g["flops_per_step"] < lstm["flops_per_step"]
    # T dependent steps for all three: the serial chain is no shorter.
    assert lstm["scan_steps"] == f["scan_steps"] == g["scan_steps"] == L
    assert g["sequential_depth"] == lstm["sequential_depth"]
    assert f["sequential_depth"] == lstm["sequential_depth"] + L  # two matmuls in a row
  for name in ("lstm", "flstm r=4", "glstm G=4"):  # linear in T, by the cell's own depth
    assert by[name, 16]["depth_per_step"] == by[name, 16]["step_depth"]
