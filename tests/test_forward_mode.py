"""Forward-mode autodiff (``jax.jvp``, Hessian-vector products) through every registered
model's default path, against the reference path.

The default paths of ``rnn``, ``lstm``, ``gru`` (and the LSTMs inside ``lstm_moe`` and
``lstm_attention``) run ``ops.fast_recurrent``, and the Transformer family's attention runs
a blockwise kernel on CPU: both have hand-written backward passes, which alone do not support
``jax.jvp``. The reference path is the same model with every recurrent layer at
``impl="reference"`` (``ops.recurrent``'s scan) and every attention at ``impl="reference"``
(the einsum). A model with one path is checked against itself across modes instead: the
JVP of a scalar against its reverse-mode gradient, ``d/dt L(p + t v) = <grad L, v>``, and
the Hessian-vector product against forward over forward, ``d2/dt2 L(p + t v) = <v, H v>``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqscale import models
from seqscale.models import attention as attention_models
from seqscale.models import recurrent as recurrent_models
from seqscale.ops import fast_recurrent
from seqscale.ops import recurrent as recurrent_ops
from tests.conftest import FAST_COMPILE
from tests.test_precision import NAMES, TINY

B, T, I, V = 2, 4, 3, 11  # batch, length, input features (SMALL's), vocabulary
SWITCHED = {"rnn", "lstm", "gru", "lstm_moe", "lstm_attention", "transformer",
            "transformer_seq2seq", "transformer_lm", "transformer_moe"}


def _inputs(model):
  rng = np.random.default_rng(0)
  if model.interface == "qa":
    return (jnp.asarray(rng.integers(0, V, size=(B, T, 4)), jnp.int32),
            jnp.asarray(rng.integers(1, V, size=(B, 4)), jnp.int32))
  if model.interface == "lm":
    return (jnp.asarray(rng.integers(0, V, size=(B, T)), jnp.int32),)
  x = jnp.asarray(rng.normal(size=(B, T, I)), jnp.float32)
  if model.interface == "seq2seq":
    return (jnp.asarray(rng.normal(size=(B, T + 1, I)), jnp.float32), x)
  return (x,)


def _reference(model):
  """Switches ``model`` to its reference path in place; returns how many layers changed."""
  changed = 0
  for _, node in nnx.iter_graph(model):
    if isinstance(node, (recurrent_models.LSTM, recurrent_models.GRU, recurrent_models.RNN,
                         attention_models.MultiHeadAttention)) and node.impl != "reference":
      node.impl = "reference"
      changed += 1
  return changed


def _random_like(tree, seed):
  leaves, treedef = jax.tree.flatten(tree)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(treedef, [jnp.asarray(rng.normal(size=a.shape), a.dtype)
                                      for a in leaves])


def _vdot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _derivatives(model, inputs, params, v, across_modes):
  """For the model's output y (float32) and L = sum(tanh(y) * w), w fixed: (J v, H v) and,
  ``across_modes``, (<grad L, v>, d/dt L(p + t v), <v, H v>, d2/dt2 L(p + t v)); J and H in
  the parameters, J v also moving float inputs along ones."""
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  x = inputs[-1]
  floats = jnp.issubdtype(x.dtype, jnp.floating)
  f = lambda p, x: nnx.merge(graphdef, p, rest)(*inputs[:-1], x).astype(jnp.float32)
  if floats:
    _, jv = jax.jvp(f, (params, x), (v, jnp.ones_like(x)))
  else:
    _, jv = jax.jvp(lambda p: f(p, x), (params,), (v,))
  w = _random_like(jax.eval_shape(lambda: f(params, x)), 2)
  loss = lambda p: jnp.sum(jnp.tanh(f(p, x)) * w)
  grad, hv = jax.jvp(jax.grad(loss), (params,), (v,))
  if not across_modes:
    return jv, hv
  (_, d1), (_, d2) = jax.jvp(lambda p: jax.jvp(loss, (p,), (v,)), (params,), (v,))
  return jv, hv, (_vdot(grad, v), d1, _vdot(v, hv), d2)


def _build(name):
  return models.create(name, **TINY[name], rngs=nnx.Rngs(0))


def test_the_fast_paths_are_the_ones_switched():
  """The models whose default path is a hand-written backward are those compared with a
  reference path below (a new such model must say how to reach its reference)."""
  assert {n for n in NAMES if _reference(nnx.eval_shape(lambda: _build(n)))} == SWITCHED


@pytest.mark.parametrize("name", NAMES)
def test_jvp_and_hessian_vector_product_on_the_default_path(name):
  switched = name in SWITCHED  # two paths: compared; one path: checked across modes
  model, reference = _build(name), _build(name) if switched else None
  if switched:
    _reference(reference)
  inputs = _inputs(model)
  params = nnx.state(model, nnx.Param)
  v = _random_like(params, 1)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)  # compiled once, run once
  def run(params):
    return (_derivatives(model, inputs, params, v, not switched),
            _derivatives(reference, inputs, params, v, False) if switched else None)

  out, ref = run(params)
  jv, hv = out[:2]
  scale = lambda a: float(jnp.max(jnp.abs(jnp.asarray(a))))
  assert scale(jv) > 0 and max(scale(a) for a in jax.tree.leaves(hv)) > 0
  if not switched:
    g_v, d1, v_hv, d2 = (float(a) for a in out[2])
    np.testing.assert_allclose(d1, g_v, rtol=1e-4, atol=1e-5 * abs(g_v))
    np.testing.assert_allclose(d2, v_hv, rtol=1e-3)
  else:
    jv_ref, hv_ref = ref
    np.testing.assert_allclose(np.asarray(jv), np.asarray(jv_ref), rtol=1e-4,
                               atol=1e-5 * scale(jv_ref))
    hv_scale = max(scale(a) for a in jax.tree.leaves(hv_ref))
    for a, b in zip(jax.tree.leaves(hv), jax.tree.leaves(hv_ref)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * hv_scale)


def _matmuls(jaxpr):
  """(dot_generals outside any loop, dot_generals in the bodies of the innermost loops:
  the per-step ones, whatever chunks of steps the loops run over), counted through nested
  calls, and whether ``jaxpr`` holds a loop (scan/while)."""
  outside, per_step, loops = 0, 0, False
  for eqn in jaxpr.eqns:
    outside += eqn.primitive.name == "dot_general"
    loop = eqn.primitive.name in ("scan", "while")
    for param in eqn.params.values():
      for p in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(p, "jaxpr", p)
        if hasattr(inner, "eqns"):
          o, s, l = _matmuls(inner)
          if loop:  # a body that holds no loop is an innermost one
            per_step += s if l else o
          else:
            outside, per_step = outside + o, per_step + s
          loops = loops or loop or l
  return outside, per_step, loops


def _step_matmuls(jaxpr):
  return _matmuls(jaxpr)[1]


def _cell_params(cell, D=5, seed=0):
  G = recurrent_ops.NUM_GATES[cell]
  rng = np.random.default_rng(seed)
  shapes = dict(w_ih=(I, G * D), w_hh=(D, G * D), b_ih=(G * D,), b_hh=(G * D,))
  return {k: jnp.asarray(0.5 * rng.normal(size=s), jnp.float32) for k, s in shapes.items()}


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_grad_still_runs_the_hand_written_backward(cell):
  """Reverse mode goes through the custom VJP: its per-step loops hold one matmul each
  (forward ``h @ w_hh``, backward ``dgates @ w_hh^T``); the weight gradients are matmuls
  over a chunk of steps, outside them. The reference scan's transpose accumulates
  ``h^T dgates`` inside its per-step loop."""
  params = _cell_params(cell)
  x = jnp.ones((B, T, I))
  loss = lambda run: lambda p: jnp.sum(run(cell, x, p, lengths_B=jnp.array([T, 2]))[0] ** 2)
  fast = jax.make_jaxpr(jax.grad(loss(fast_recurrent.run)))(params).jaxpr
  ref = jax.make_jaxpr(jax.grad(loss(recurrent_ops.run)))(params).jaxpr
  assert _step_matmuls(fast) == 2
  assert _step_matmuls(ref) == 3


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_fast_recurrent_forward_mode_equals_the_reference(cell):
  """``jax.jvp`` (reverse direction, padding, an initial carry, every input perturbed) and
  ``jax.grad`` of a ``jax.jvp`` (reverse over forward) against ``ops.recurrent``."""
  params, dparams = _cell_params(cell), _cell_params(cell, seed=1)
  rng = np.random.default_rng(2)
  x, dx = (jnp.asarray(rng.normal(size=(B, T, I)), jnp.float32) for _ in range(2))
  h0 = recurrent_ops.zero_carry(cell, B, 5)
  carry, dcarry = (jax.tree.map(lambda a: a + jnp.asarray(rng.normal(size=a.shape),
                                                           jnp.float32), h0) for _ in range(2))
  lengths = jnp.array([T, 2])

  def jvp(run, p):
    f = lambda p, x, c: run(cell, x, p, c, lengths, reverse=True)
    return jax.jvp(f, (p, x, carry), (dparams, dx, dcarry))

  grad_of_jvp = lambda run: jax.grad(lambda p: jnp.sum(jvp(run, p)[1][0] ** 2))(params)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)  # both paths, one compile
  def both():
    return [(jvp(run, params), grad_of_jvp(run)) for run in (fast_recurrent.run,
                                                              recurrent_ops.run)]

  (got, got_grad), (want, want_grad) = both()
  (y, final), (dy, dfinal) = got
  (y_ref, final_ref), (dy_ref, dfinal_ref) = want
  for a, b in zip(jax.tree.leaves((y, final, dy, dfinal)),
                  jax.tree.leaves((y_ref, final_ref, dy_ref, dfinal_ref))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
