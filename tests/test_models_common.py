"""Checks every registered model passes: init, forward and gradient under jit at two
lengths; causality by gradients; step-by-step equals the full call.

A new registered model must be added to SMALL below (the first test fails until it is), so
no model escapes these checks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqscale import models

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

  @jax.jit
  def loss_fn(params, inputs):
    y = nnx.merge(graphdef, params, rest)(*inputs)
    return jnp.mean(jnp.square(y.astype(jnp.float32))), y

  for T in (5, 12):
    inputs = _inputs(model, T)
    (loss, y), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, inputs)
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
    base = np.asarray(model(inputs[0]))
    dep = np.zeros((T, T))
    for s in range(T):
      t2 = tokens.copy()
      t2[0, s] = (t2[0, s] + 1) % V
      dep[:, s] = np.abs(np.asarray(model(jnp.asarray(t2))) - base)[0].max(-1)
    return dep

  # A fixed random projection, not a plain sum: a LayerNorm output sums to zero over features.
  w = jnp.asarray(np.random.default_rng(1).normal(size=(model.out_features,)), jnp.float32)

  def f(x):
    return model(*inputs[:-1], x)[0] @ w  # [T]

  jac = jax.jacrev(f)(inputs[-1])  # [T, B, T, I]
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
  jac = jax.jacrev(lambda s: model(s, tgt)[0, 0] @ w)(src)  # d y_0 / d src
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
  step = jax.jit(lambda w, x_BI, s: nnx.merge(graphdef, w).step(x_BI, s))
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
