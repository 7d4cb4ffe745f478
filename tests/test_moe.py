"""Mixture of experts: routing, capacity and the balancing loss against NumPy loops; the
Transformer and LSTM wrappers; experts sharded over 4 CPU devices equal the unsharded."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.stats import norm

from seqscale.models import moe
from seqscale.models import transformer
from seqscale.ops import moe as ops
from tests.conftest import run_with_devices

N, I, O, F, E = 12, 5, 4, 6, 4


def _layer(k=2, capacity_factor=None, gate_scale=1.0, **kw):
  m = moe.MoE(I, O, F, num_experts=E, k=k, capacity_factor=capacity_factor, rngs=nnx.Rngs(0),
              **kw)
  rng = np.random.default_rng(1)
  m.w_gate[...] = jnp.asarray(gate_scale * rng.normal(size=(I, E)), jnp.float32)
  m.b1[...] = jnp.asarray(0.1 * rng.normal(size=(E, F)), jnp.float32)
  m.b2[...] = jnp.asarray(0.1 * rng.normal(size=(E, O)), jnp.float32)
  m.eval()  # no gate noise
  return m


def _x(seed=0, n=N):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, I)), jnp.float32)


def _np_expert(m, e, x):
  p = lambda name: np.asarray(getattr(m, name)[...], np.float64)[e]
  return np.maximum(x @ p("w1") + p("b1"), 0.0) @ p("w2") + p("b2")


def _np_route(m, x, k):
  """Per token, in Python: its top-k experts (best first) and their softmax weights."""
  logits = np.asarray(x, np.float64) @ np.asarray(m.w_gate[...], np.float64)
  out = []
  for row in logits:
    top = list(np.argsort(-row, kind="stable")[:k])
    w = np.exp(row[top] - row[top].max())
    out.append((top, w / w.sum()))
  return out


# ------------------------------------------------------------------------------ routing

@pytest.mark.parametrize("capacity_factor", [None, 1.0])
def test_all_experts_with_equal_gates_is_the_dense_average(capacity_factor):
  m = _layer(k=E, capacity_factor=capacity_factor, gate_scale=0.0)  # zero gates, no noise
  x = _x()
  ref = np.mean([_np_expert(m, e, np.asarray(x, np.float64)) for e in range(E)], axis=0)
  np.testing.assert_allclose(np.asarray(m(x)), ref, atol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("capacity_factor", [None, 100.0])
def test_top_k_routing_matches_a_python_loop(k, capacity_factor):
  m = _layer(k=k, capacity_factor=capacity_factor)
  x = _x(1)
  x64 = np.asarray(x, np.float64)
  ref = np.stack([sum(g * _np_expert(m, e, x64[n]) for e, g in zip(top, w))
                  for n, (top, w) in enumerate(_np_route(m, x, k))])
  np.testing.assert_allclose(np.asarray(m(x)), ref, atol=1e-5)


@pytest.mark.parametrize("capacity_factor", [0.5, 1.0])
def test_capacity_drops_exactly_the_overflow_choices(capacity_factor):
  k = 2
  m = _layer(k=k, capacity_factor=capacity_factor, gate_scale=3.0)  # skewed: overflow
  x = _x(2)
  C = ops.capacity(N, E, k, capacity_factor)
  assert C == int(np.ceil(capacity_factor * k * N / E))
  routes = _np_route(m, x, k)
  # First choices of every token in order, then second choices; a full expert drops it.
  used, kept = [0] * E, np.zeros((N, k), bool)
  for j in range(k):
    for n, (top, _) in enumerate(routes):
      if used[top[j]] < C:
        used[top[j]] += 1
        kept[n, j] = True
  assert not kept.all()  # the test needs some overflow
  x64 = np.asarray(x, np.float64)
  ref = np.stack([sum((g * _np_expert(m, e, x64[n]) for e, g, keep in zip(top, w, kept[n])
                       if keep), np.zeros(O)) for n, (top, w) in enumerate(routes)])
  np.testing.assert_allclose(np.asarray(m(x)), ref, atol=1e-5)
  gating = ops.noisy_top_k_gating(x, m.w_gate[...], m.w_noise[...], k)
  _, kept_NK = ops.capacity_positions(gating.expert_NK, E, C)
  np.testing.assert_array_equal(np.asarray(kept_NK), kept)


def test_padding_is_not_routed_and_takes_no_capacity():
  m = _layer(k=2, capacity_factor=0.5, gate_scale=3.0)
  x = _x(3).reshape(2, N // 2, I)
  mask = jnp.asarray([[True] * 4 + [False] * 2, [True] * 6])
  y = np.asarray(m(x, mask=mask))
  assert (y[0, 4:] == 0).all()
  gating = ops.noisy_top_k_gating(x.reshape(N, I), m.w_gate[...], m.w_noise[...], 2,
                                  valid_N=mask.reshape(-1))
  pos, kept = ops.capacity_positions(gating.expert_NK, E, 100, mask.reshape(-1))
  assert not np.asarray(kept)[4:6].any()
  # Slots are numbered over valid choices only: every expert's slots are 0..count-1.
  valid_pos = np.asarray(pos)[np.asarray(kept)]
  valid_exp = np.asarray(gating.expert_NK)[np.asarray(kept)]
  for e in range(E):
    assert sorted(valid_pos[valid_exp == e]) == list(range((valid_exp == e).sum()))
  assert float(gating.importance_E.sum()) == pytest.approx(10.0, abs=1e-5)  # 10 valid tokens


# ---------------------------------------------------------------------- balancing loss

def test_balancing_loss_matches_numpy_and_the_load_estimate_matches_monte_carlo():
  k, rng = 2, np.random.default_rng(4)
  x = _x(4)
  w_gate = jnp.asarray(rng.normal(size=(I, E)), jnp.float32)
  w_noise = jnp.asarray(rng.normal(size=(I, E)), jnp.float32)
  key = jax.random.key(0)
  g = ops.noisy_top_k_gating(x, w_gate, w_noise, k, noise_key=key)
  x64 = np.asarray(x, np.float64)
  clean = x64 @ np.asarray(w_gate, np.float64)
  std = np.log1p(np.exp(x64 @ np.asarray(w_noise, np.float64))) + 1e-2
  eps = np.asarray(jax.random.normal(key, (N, E), jnp.float32), np.float64)
  noisy = clean + eps * std
  gates, prob = np.zeros((N, E)), np.zeros((N, E))
  for n in range(N):
    top = np.argsort(-noisy[n])[:k]
    w = np.exp(noisy[n, top] - noisy[n, top].max())
    gates[n, top] = w / w.sum()
    for e in range(E):
      kth_other = np.sort(np.delete(noisy[n], e))[::-1][k - 1]  # k-th largest of the others
      prob[n, e] = norm.cdf((clean[n, e] - kth_other) / std[n, e])
  cv2 = lambda v: v.var() / v.mean() ** 2
  np.testing.assert_allclose(np.asarray(g.gates_NE), gates, atol=1e-5)
  np.testing.assert_allclose(np.asarray(g.load_E), prob.sum(0), atol=1e-4)
  loss = ops.load_balancing_loss(g, 0.1, 0.3)
  assert float(loss) == pytest.approx(0.1 * cv2(gates.sum(0)) + 0.3 * cv2(prob.sum(0)),
                                      rel=1e-4)
  # P(e in top k) when only e's own noise is redrawn, by sampling.
  draws = rng.normal(size=20_000)
  for n, e in [(0, 0), (1, 2), (5, 3)]:
    kth_other = np.sort(np.delete(noisy[n], e))[::-1][k - 1]
    freq = np.mean(clean[n, e] + draws * std[n, e] > kth_other)
    assert freq == pytest.approx(prob[n, e], abs=0.015)


def test_aux_loss_is_recorded_summed_over_layers_and_trains_the_gates():
  model = moe.LSTMMoE(I, 8, num_layers=3, num_experts=E, k=1, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 6, I)), jnp.float32)

  def loss_fn(model):
    y = model(x)
    return jnp.mean(y ** 2) + moe.auxiliary_loss(model)

  grads = nnx.grad(loss_fn)(model)
  losses = [float(m.aux_loss[...]) for m in model.moes]
  assert len(losses) == 2 and all(l > 0 for l in losses)
  assert float(moe.auxiliary_loss(model)) == pytest.approx(sum(losses), rel=1e-6)
  for m in grads.moes.values() if hasattr(grads.moes, "values") else grads.moes:
    assert float(jnp.abs(m.w_gate[...]).max()) > 0 and float(jnp.abs(m.w_noise[...]).max()) > 0


def test_imbalanced_routing_costs_more():
  x = _x(6)
  balanced, skewed = _layer(k=1, gate_scale=0.0), _layer(k=1, gate_scale=0.0)
  skewed.w_gate[...] = skewed.w_gate[...].at[:, 0].set(5.0)
  for m in (balanced, skewed):
    m.train()
    m(jnp.abs(x))  # all inputs positive: the skewed gate sends every token to expert 0
  assert float(skewed.aux_loss[...]) > 10 * float(balanced.aux_loss[...])


def test_noise_only_in_training():
  m = _layer(k=1)
  m.w_noise[...] = jnp.ones_like(m.w_noise[...])
  x = _x(7)
  clean = np.asarray(m(x))
  m.train()
  a, b = np.asarray(m(x)), np.asarray(m(x))
  assert not np.allclose(a, b) and not np.allclose(a, clean)
  m.eval()
  np.testing.assert_array_equal(np.asarray(m(x)), clean)


# --------------------------------------------------------------------------- wrappers

def test_transformer_moe_with_one_expert_is_the_transformer():
  kw = dict(in_features=I, hidden_features=8, num_layers=2, num_heads=2, causal=True)
  dense = transformer.Transformer(**kw, rngs=nnx.Rngs(0))
  sparse = moe.TransformerMoE(**kw, num_experts=1, k=1, moe_every=1, rngs=nnx.Rngs(0))
  assert all(isinstance(l.ff, moe.MoEFeedForward) for l in sparse.stack.layers)
  for d, s in zip(dense.stack.layers, sparse.stack.layers):
    s.ff.w1[...] = d.ff.linear1.kernel[...][None]
    s.ff.b1[...] = d.ff.linear1.bias[...][None]
    s.ff.w2[...] = d.ff.linear2.kernel[...][None]
    s.ff.b2[...] = d.ff.linear2.bias[...][None]
  x = jnp.asarray(np.random.default_rng(8).normal(size=(2, 5, I)), jnp.float32)
  np.testing.assert_allclose(np.asarray(sparse(x)), np.asarray(dense(x)), atol=1e-5)
  every_other = moe.TransformerMoE(**kw, num_experts=4, rngs=nnx.Rngs(0))
  kinds = [type(l.ff).__name__ for l in every_other.stack.layers]
  assert kinds == ["_FeedForward", "MoEFeedForward"]


def test_lstm_moe_residual_passes_dropped_tokens_through():
  # Capacity so small that nearly everything is dropped: the MoE adds ~nothing.
  kw = dict(in_features=I, hidden_features=8, num_experts=E, k=1, noisy_gating=False)
  model = moe.LSTMMoE(**kw, capacity_factor=1e-6, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(9).normal(size=(2, 6, I)), jnp.float32)
  h = model.lstms[0](x)
  y_moe = model.moes[0](h)
  assert 1 <= int((np.abs(np.asarray(y_moe)).sum(-1) > 0).sum()) <= E  # 1 slot per expert
  expected = model.lstms[1](h + y_moe)
  np.testing.assert_allclose(np.asarray(model(x)), np.asarray(expected), atol=1e-6)


@pytest.mark.parametrize("kw,match", [
    (dict(k=5), "k=5"), (dict(capacity_factor=0.0), "capacity_factor=0.0"),
    (dict(num_experts=0, k=1), "num_experts=0"), (dict(load_weight=-1.0), "load_weight=-1.0"),
])
def test_bad_arguments(kw, match):
  with pytest.raises(ValueError, match=match):
    moe.MoE(I, O, F, **{"num_experts": E, **kw}, rngs=nnx.Rngs(0))


def test_shard_experts_rejects_an_unknown_axis():
  mesh = jax.make_mesh((1,), ("expert",))
  with pytest.raises(ValueError, match="axis='model'"):
    moe.shard_experts(_layer(), mesh, axis="model")


# --------------------------------------------------------------------------- sharding

_SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import PartitionSpec as P
    from seqscale.models import moe

    assert jax.device_count() == 4
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6, 8)), jnp.float32)
    for cf in (None, 1.0):
      model = moe.LSTMMoE(8, 8, num_experts=8, k=2, capacity_factor=cf, rngs=nnx.Rngs(0))
      model.eval()
      graphdef, params, rest = nnx.split(model, nnx.Param, ...)

      @jax.jit
      def loss(params, rest, x):
        m = nnx.merge(graphdef, params, rest)
        y = m(x)
        return jnp.mean(y ** 2) + moe.auxiliary_loss(m), y

      grad = jax.jit(jax.grad(lambda p, r, x: loss(p, r, x)[0]))
      (l0, y0), g0 = loss(params, rest, x), grad(params, rest, x)
      moe.shard_experts(model, jax.make_mesh((4,), ("expert",)))
      _, params, rest = nnx.split(model, nnx.Param, ...)
      w1 = model.moes[0].w1[...]
      assert w1.sharding.spec == P("expert"), w1.sharding
      assert {s.data.shape for s in w1.addressable_shards} == {(2, 8, 32)}
      assert model.moes[0].w_gate[...].sharding.spec == P()
      (l1, y1), g1 = loss(params, rest, x), grad(params, rest, x)
      np.testing.assert_allclose(np.asarray(y1), np.asarray(y0), atol=1e-5)
      np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
      for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
      try:
        moe.shard_experts(moe.MoE(8, 8, 8, num_experts=6, rngs=nnx.Rngs(0)),
                          jax.make_mesh((4,), ("expert",)))
        raise AssertionError("6 experts on 4 devices should be refused")
      except ValueError as e:
        assert "6 experts" in str(e)
    print("ok")
""")


@pytest.mark.slow
def test_experts_sharded_over_four_devices_equal_unsharded():
  assert run_with_devices(_SHARDED, 4, fast_compile=True).strip().endswith("ok")
