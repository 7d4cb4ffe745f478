"""Checks every registered model passes: init, forward and gradient under jit at two
lengths; causality by gradients; step-by-step equals the full call.

A new registered model must be added to SMALL below (the first test fails until it is), so
no model escapes these checks.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqscale import models
from seqscale.models import moe as moe_models
from seqscale.ops import moe as moe_ops
from tests.conftest import FAST_COMPILE

I, D, V = 3, 8, 11  # input features, width, vocabulary
SMALL = {
    "rnn": dict(in_features=I, hidden_features=D, num_layers=2),
    "lstm": dict(in_features=I, hidden_features=D, num_layers=2),
    "gru": dict(in_features=I, hidden_features=D, num_layers=2),
    "transformer": dict(in_features=I, hidden_features=D, num_layers=2, num_heads=2),
    "transformer_seq2seq": dict(in_features=I, hidden_features=D, num_layers=2, num_heads=2),
    "transformer_lm": dict(vocab_size=V, hidden_features=D, num_layers=2, num_heads=2),
    "wavenet": dict(in_features=I, hidden_features=D, num_layers=3),
    "bytenet": dict(in_features=I, hidden_features=D, num_layers=2),
    "convs2s": dict(in_features=I, hidden_features=D, num_layers=2),
    "cummean": dict(in_features=I, hidden_features=D),  # forks/example, via the registry
    "mingru": dict(in_features=I, hidden_features=D, num_layers=2),
    "minlstm": dict(in_features=I, hidden_features=D, num_layers=2),
    "lru": dict(in_features=I, hidden_features=D, num_layers=2, state_features=6),
    "memn2n": dict(vocab_size=V, hidden_features=D, num_hops=2),
    "neural_gpu": dict(in_features=I, hidden_features=D, num_layers=2),
    "extended_neural_gpu": dict(in_features=I, hidden_features=D, num_layers=2),
    "lstm_attention": dict(in_features=I, hidden_features=D, num_layers=2),
    "flstm": dict(in_features=I, hidden_features=D, num_layers=2, rank=4),
    "glstm": dict(in_features=I, hidden_features=6, num_layers=2, num_groups=3),
    # No gate noise or balancing loss: a call without state updates (see seqscale/models/moe.py).
    "moe": dict(in_features=I, hidden_features=D, num_experts=4, k=2, capacity_factor=2.0,
                noisy_gating=False, importance_weight=0.0, load_weight=0.0),
    "lstm_moe": dict(in_features=I, hidden_features=D, num_experts=4, k=2, noisy_gating=False,
                     importance_weight=0.0, load_weight=0.0),
    "transformer_moe": dict(in_features=I, hidden_features=D, num_heads=2, num_experts=4,
                            noisy_gating=False, importance_weight=0.0, load_weight=0.0),
}

# (name, extra hparams) of every configuration whose causality is claimed.
CAUSAL = [("rnn", {}), ("lstm", {}), ("gru", {}), ("lstm", dict(num_layers=1)),
          ("transformer", dict(causal=True)),
          ("transformer", dict(causal=True, local_window=2)),
          ("transformer", dict(causal=True, norm="pre", positions="learned")),
          ("wavenet", {}), ("transformer_seq2seq", {}), ("bytenet", {}), ("convs2s", {}),
          ("transformer_lm", {}),
          ("mingru", {}), ("minlstm", {}), ("lru", {}), ("mingru", dict(log_space=True)),
          ("minlstm", dict(log_space=True, mode="chunked", chunk_size=4)),
          ("mingru", dict(mode="sequential")), ("lru", dict(mode="chunked", chunk_size=4)),
          ("lstm_attention", {}), ("lstm_attention", dict(attention="multiplicative")),
          ("lstm_attention", dict(attention="none")), ("flstm", {}), ("glstm", {}), ("moe", {}),
          ("lstm_moe", {}), ("transformer_moe", dict(causal=True))]
NON_CAUSAL = [("lstm", dict(bidirectional=True)), ("gru", dict(bidirectional=True)),
              ("transformer", {}), ("transformer", dict(local_window=2)),
              ("neural_gpu", {})]


def _build(name, **extra):
  import forks.example.cummean  # noqa: F401  (registers the fork's model)
  return models.create(name, **{**SMALL[name], **extra}, rngs=nnx.Rngs(0))


def _inputs(model, T, seed=0):
  rng = np.random.default_rng(seed)
  if model.interface == "qa":  # a story of T sentences of 4 words, and a question
    return (jnp.asarray(rng.integers(0, V, size=(2, T, 4)), jnp.int32),
            jnp.asarray(rng.integers(1, V, size=(2, 4)), jnp.int32))
  if model.interface == "lm":
    return (jnp.asarray(rng.integers(0, V, size=(2, T)), jnp.int32),)
  x = jnp.asarray(rng.normal(size=(2, T, I)), jnp.float32)
  if model.interface == "seq2seq":
    src = jnp.asarray(rng.normal(size=(2, T + 1, I)), jnp.float32)
    return (src, x)
  return (x,)


def test_every_registered_model_is_covered():
  import forks.example.cummean  # noqa: F401
  assert set(models.names()) == set(SMALL)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_init_forward_and_gradient_under_jit_at_two_lengths(name):
  model = _build(name)
  assert model.interface in ("sequence", "seq2seq", "lm", "qa")
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss_fn(params, inputs):
    y = nnx.merge(graphdef, params, rest)(*inputs)
    return jnp.mean(jnp.square(y.astype(jnp.float32))), y

  # The loss and its gradient in one program (one compile per T).
  loss_and_grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True),
                          compiler_options=FAST_COMPILE)
  for T in (5, 12):
    inputs = _inputs(model, T)
    (loss, y), grads = loss_and_grad(params, inputs)
    width = V if model.interface in ("lm", "qa") else model.out_features
    assert y.shape == ((2, width) if model.interface == "qa" else (2, T, width))
    assert np.isfinite(np.asarray(y)).all() and np.isfinite(float(loss))
    leaves = jax.tree.leaves(grads)
    assert leaves and all(np.isfinite(np.asarray(g)).all() for g in leaves)
    assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0


def _dependence(model, T):
  """|d y[0, t] / d x[0, s]| summed over features, as a [T, T] matrix (t, s).

  x is the target stream for seq2seq; for an LM, the change of logits when token s changes.
  """
  inputs = _inputs(model, T)
  if model.interface == "lm":
    tokens = np.asarray(inputs[0])
    call = jax.jit(lambda t: model(t), compiler_options=FAST_COMPILE)  # one for T + 1 calls
    base = np.asarray(call(inputs[0]))
    dep = np.zeros((T, T))
    for s in range(T):
      t2 = tokens.copy()
      t2[0, s] = (t2[0, s] + 1) % V
      dep[:, s] = np.abs(np.asarray(call(jnp.asarray(t2))) - base)[0].max(-1)
    return dep

  # A fixed random projection, not a plain sum: a LayerNorm output sums to zero over features.
  w = jnp.asarray(np.random.default_rng(1).normal(size=(model.out_features,)), jnp.float32)

  def f(x):
    return model(*inputs[:-1], x)[0] @ w  # [T]

  jac = jax.jit(jax.jacrev(f), compiler_options=FAST_COMPILE)(inputs[-1])  # [T, B, T, I]
  return np.abs(np.asarray(jac[:, 0])).sum(-1)


@pytest.mark.parametrize("name,extra", CAUSAL, ids=lambda v: str(v))
def test_causal_by_gradients(name, extra):
  model = _build(name, **extra)
  assert model.causal
  dep = _dependence(model, T=7)
  future = np.triu(dep, k=1)
  assert future.max() == 0.0, f"output depends on the future: {future.max()}"
  assert (dep.max(axis=1) > 0).all(), "some output depends on no input at all"


@pytest.mark.parametrize("name,extra", NON_CAUSAL, ids=lambda v: str(v))
def test_non_causal_models_see_the_future(name, extra):
  model = _build(name, **extra)
  assert not model.causal
  dep = _dependence(model, T=7)
  assert np.triu(dep, k=1).max() > 0


@pytest.mark.parametrize("name", ["transformer_seq2seq", "bytenet", "convs2s",
                                  "lstm_attention", "extended_neural_gpu"])
def test_seq2seq_encoder_sees_the_whole_source(name):
  model = _build(name)
  src, tgt = _inputs(model, T=6)
  w = jnp.asarray(np.random.default_rng(1).normal(size=(model.out_features,)), jnp.float32)
  jac = jax.jit(jax.jacrev(lambda s: model(s, tgt)[0, 0] @ w),  # d y_0 / d src
                compiler_options=FAST_COMPILE)(src)
  assert np.abs(np.asarray(jac[0, 1:])).max() > 0  # the first target position sees later src


STEPPABLE = [(n, e) for n, e in CAUSAL if n not in ("transformer_seq2seq", "bytenet", "convs2s",
                                                        "lstm_attention")]


@pytest.mark.parametrize("name,extra", STEPPABLE, ids=lambda v: str(v))
def test_step_by_step_equals_full_call(name, extra):
  model = _build(name, **extra)
  model.eval()
  T = 9
  (x,) = _inputs(model, T)
  full = np.asarray(model(x))
  state = model.init_state(batch_size=2, max_length=T)
  graphdef, weights = nnx.split(model)
  # Under jit, as a decoder runs it: the position counter must be traced, not Python.
  step = jax.jit(lambda w, x_BI, s: nnx.merge(graphdef, w).step(x_BI, s),
                 compiler_options=FAST_COMPILE)
  outs = []
  for t in range(T):
    y, state = step(weights, x[:, t], state)
    outs.append(np.asarray(y))
  np.testing.assert_allclose(np.stack(outs, axis=1), full, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name,extra", NON_CAUSAL[:3], ids=lambda v: str(v))
def test_models_that_cannot_step_say_why(name, extra):
  model = _build(name, **extra)
  with pytest.raises(ValueError):
    model.step(jnp.zeros((2, I)), model.init_state(batch_size=2, max_length=4))


# -- the mixtures of experts with gate noise on and a balancing loss ------------------------


def _np_balancing_loss(x_NI, w_gate_IE, w_noise_IE, eps_NE, k, w_importance, w_load):
  """Shazeer et al. (2017), eqs. 4-10, in float64: H = x W_g + eps softplus(x W_noise)
  (+ 1e-2, Tensor2Tensor's floor on the noise scale), gates = softmax over the top k of H,
  Importance = sum_x G(x), Load_e = sum_x P(x, e) with P(x, e) = Phi((x W_g)_e - kth_excluding
  (H(x), k, e)) / noise scale_e), loss = w_imp CV(Importance)^2 + w_load CV(Load)^2."""
  phi = lambda z: 0.5 * math.erfc(-z / math.sqrt(2))  # the standard normal CDF
  x = np.asarray(x_NI, np.float64)
  clean = x @ np.asarray(w_gate_IE, np.float64)
  std = np.log1p(np.exp(x @ np.asarray(w_noise_IE, np.float64))) + 1e-2
  noisy = clean + eps_NE * std
  N, E = noisy.shape
  gates, prob = np.zeros((N, E)), np.zeros((N, E))
  for n in range(N):
    top = np.argsort(-noisy[n])[:k]
    g = np.exp(noisy[n, top] - noisy[n, top].max())
    gates[n, top] = g / g.sum()
    for e in range(E):
      kth_excluding = np.sort(np.delete(noisy[n], e))[::-1][k - 1]
      prob[n, e] = phi((clean[n, e] - kth_excluding) / std[n, e])
  cv2 = lambda v: v.var() / v.mean() ** 2
  return w_importance * cv2(gates.sum(0)) + w_load * cv2(prob.sum(0)), gates


MOE_MODELS = ["moe", "lstm_moe", "transformer_moe"]


@pytest.mark.parametrize("name", MOE_MODELS)
def test_moe_models_with_noise_and_balancing_loss(name, monkeypatch):
  """Noise on and non-zero loss weights (SMALL has neither): the recorded auxiliary loss is
  Shazeer's, computed in NumPy from the mixture's inputs and noise; the same gating stream
  gives the same output, another stream (or the next call) another."""
  w_imp, w_load = 0.1, 0.3

  def build(gating_seed):
    kw = {**SMALL[name], "noisy_gating": True, "importance_weight": w_imp,
          "load_weight": w_load}
    model = models.create(name, **kw, rngs=nnx.Rngs(0, gating=gating_seed))
    mixtures = [m for _, m in nnx.iter_graph(model) if isinstance(m, moe_models.MoE)]
    rng = np.random.default_rng(3)  # non-zero gates: the paper initialises them to zero
    for m in mixtures:
      m.w_gate[...] = jnp.asarray(rng.normal(size=m.w_gate.shape), jnp.float32)
      m.w_noise[...] = jnp.asarray(0.5 * rng.normal(size=m.w_noise.shape), jnp.float32)
    return model, mixtures

  calls = []  # what each mixture's gating saw: its tokens and its noise key
  gating = moe_ops.noisy_top_k_gating

  def spy(x_NI, w_gate_IE, w_noise_IE, k, **kw):
    calls.append((np.asarray(x_NI), kw.get("noise_key")))
    return gating(x_NI, w_gate_IE, w_noise_IE, k, **kw)

  monkeypatch.setattr(moe_ops, "noisy_top_k_gating", spy)
  model, mixtures = build(gating_seed=1)
  (x,) = _inputs(model, T=6)
  y = np.asarray(model(x))
  assert len(calls) == len(mixtures) >= 1
  for m, (x_NI, key) in zip(mixtures, calls):
    assert key is not None  # the noise is on
    eps = np.asarray(jax.random.normal(key, (x_NI.shape[0], m.num_experts)), np.float64)
    want, gates = _np_balancing_loss(x_NI, m.w_gate[...], m.w_noise[...], eps, m.k, w_imp,
                                     w_load)
    assert want > 1e-3  # a non-trivial loss: the check below can fail
    assert float(m.aux_loss[...]) == pytest.approx(want, rel=1e-4)
  assert float(moe_models.auxiliary_loss(model)) == pytest.approx(
      sum(float(m.aux_loss[...]) for m in mixtures), rel=1e-6)
  if name == "moe":  # the layer alone: y = sum_e G(x)_e E_e(x) (capacity drops nothing here)
    m = mixtures[0]
    w1, b1, w2, b2 = (np.asarray(getattr(m, n)[...], np.float64) for n in ("w1", "b1", "w2",
                                                                           "b2"))
    x_NI = calls[0][0].astype(np.float64)
    experts = [np.maximum(x_NI @ w1[e] + b1[e], 0) @ w2[e] + b2[e] for e in range(len(w1))]
    want_y = sum(gates[:, [e]] * experts[e] for e in range(len(w1)))
    np.testing.assert_allclose(y.reshape(want_y.shape), want_y, atol=1e-5)
  # The noise is drawn from the model's "gating" stream: same stream, same output.
  np.testing.assert_array_equal(np.asarray(build(gating_seed=1)[0](x)), y)
  assert not np.allclose(np.asarray(build(gating_seed=2)[0](x)), y)
