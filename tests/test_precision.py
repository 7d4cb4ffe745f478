"""Mixed precision: every registered model trains in bfloat16 (``dtype="bfloat16"``, as the
command line gives it) with float32 parameters, bfloat16 activations, float32 losses.

What would break each claim, and which check catches it:
- a model that ignores ``dtype`` and runs in float32: its matmuls are float32
  (``test_bf16_training_...``: most matmul FLOPs must take bfloat16 operands);
- parameters stored or updated in bfloat16: the parameter and optimizer-state dtypes;
- a loss or softmax computed in bfloat16: ``metric_sums`` on bfloat16 logits against a
  float64 NumPy cross-entropy (a bfloat16 log-softmax is off by ~1e-3, the check is 1e-6),
  the MoE router against its float32 self;
- a broken bfloat16 path (NaN, a wrong cast, a different function): the first steps' losses
  against the float32 model's at the same parameters (measured: within 2.5e-3 relative;
  checked at 1e-2), and the loss must differ from float32's and go down.

The MoE models run with their gate noise and balancing loss on (where bfloat16 crashed in
``ndtr``); every model is test_models_common's small one, with one layer where it can.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from seqscale import models
from seqscale.ops import moe as moe_ops
from seqscale.train import losses
from seqscale.train import model as model_lib
from seqscale.train import step as step_lib
from tests.conftest import FAST_COMPILE
from tests.test_models_common import MOE_MODELS as MOE, SMALL

V, B, T, I = 11, 2, 5, 3  # vocabulary (= classes), batch, length, SMALL's in_features
STEPS = 3
# Every model seqscale registers (a fork's, e.g. forks/example's, may not take ``dtype``).
NAMES = sorted(n for n in models.names() if models.lookup(n).__module__.startswith("seqscale."))
# test_models_common's small models, one layer where they can have one (compile time).
TINY = {n: {**SMALL[n], **({"num_layers": 1} if "num_layers" in SMALL[n] else {})}
        for n in NAMES}
TINY["transformer_moe"].update(num_layers=1, moe_every=1)
TINY["lstm_moe"].update(num_layers=2)  # its least: an MoE between two LSTMs
TINY["memn2n"].update(num_hops=1)


def _spec(interface):
  return model_lib.TaskSpec(
      name="synthetic", input_type="tokens", vocab_size=V, in_features=None,
      output="pooled" if interface == "qa" else "per_position", target_type="classes",
      num_classes=V, requires_causal=False, has_seq2seq=interface == "seq2seq",
      has_qa=interface == "qa")


def _batch(interface):
  rng = np.random.default_rng(0)
  tokens = lambda *shape: jnp.asarray(rng.integers(1, V, size=shape), jnp.int32)
  if interface == "qa":
    return {"story": tokens(B, 3, 4), "query": tokens(B, 4), "targets": tokens(B),
            "weights": jnp.ones((B,), jnp.float32)}
  mask = jnp.asarray(np.arange(T)[None, :] < np.array([[T], [T - 2]]))
  if interface == "seq2seq":
    return {"src": tokens(B, T + 1), "tgt_in": tokens(B, T), "tgt_out": tokens(B, T),
            "tgt_weights": mask.astype(jnp.float32), "tgt_mask": mask}
  return {"inputs": tokens(B, T), "mask": mask, "targets": tokens(B, T),
          "weights": mask.astype(jnp.float32)}


def _backbone_inputs(interface):
  """What a backbone takes: tokens (lm, qa) or float features (the task's embedding)."""
  batch = _batch(interface)
  x = lambda tokens: jax.nn.one_hot(tokens, I, dtype=jnp.float32)
  if interface == "qa":
    return batch["story"], batch["query"]
  if interface == "lm":
    return (batch["inputs"],)
  if interface == "seq2seq":
    return x(batch["src"]), x(batch["tgt_in"])
  return (x(batch["inputs"]),)


def _build(name, dtype):
  interface = models.lookup(name).interface
  hparams = {**TINY[name], "dtype": dtype}
  if name in MOE:  # the gate noise and balancing loss on: where bfloat16 crashed (ndtr)
    hparams.update(noisy_gating=True, importance_weight=0.1, load_weight=0.1)
  model = model_lib.build(name, hparams, _spec(interface), rngs=nnx.Rngs(0))
  return model, nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)


def _train(name):
  """STEPS bfloat16 training steps; each step also returns the float32 model's loss at the
  parameters (and gate noise) the bfloat16 step started from."""
  model, optimizer = _build(name, "bfloat16")
  graphdef, state = nnx.split((model, optimizer))
  graphdef32 = nnx.graphdef(_build(name, "float32"))
  batch = _batch(model.interface)
  train_step = step_lib.make_train_step(graphdef)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)  # compiled once, run STEPS times
  def step(state, batch):
    # A copy: merging shares the state's variables, and the call advances the RNG count.
    model32, _ = nnx.merge(graphdef32, jax.tree.map(jnp.copy, state))
    sums = losses.metric_sums(model32(batch), *_targets(model32, batch), regression=False)
    loss32 = sums["loss"] / sums["weight"] + models.auxiliary_loss(model32)
    state, metrics = train_step(state, batch)
    return state, metrics["loss"] + metrics["aux_loss"], loss32

  history = []
  for _ in range(STEPS):
    state, loss16, loss32 = step(state, batch)
    history.append((float(loss16), float(loss32)))
  return nnx.merge(graphdef, state), batch, np.array(history).T


def _targets(model, batch):
  if model.interface == "seq2seq":
    return batch["tgt_out"], batch["tgt_weights"]
  return batch["targets"], batch["weights"]


def _matmul_flops_by_dtype(jaxpr, out):
  """2 * prod(output) * contracted size of every dot_general, summed per operand dtype."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval
      k = math.prod(lhs.shape[d] for d in lhs_contract)
      key = str(lhs.dtype)
      out[key] = out.get(key, 0) + 2 * k * math.prod(eqn.outvars[0].aval.shape)
    for param in eqn.params.values():
      for p in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(p, "jaxpr", p)
        if hasattr(inner, "eqns"):
          _matmul_flops_by_dtype(inner, out)
  return out


def test_every_core_model_is_checked():
  assert set(NAMES) <= set(SMALL) and len(NAMES) >= 21


@pytest.mark.parametrize("name", NAMES)
def test_bf16_training_matches_float32_with_float32_params(name):
  (model16, opt16), batch, (losses16, losses32) = _train(name)
  assert np.isfinite(losses16).all(), losses16
  # Parameters (and the optimizer's moments) stay float32 through the updates.
  for leaf in jax.tree.leaves(nnx.state((model16, opt16), nnx.Param)):
    assert leaf.dtype == jnp.float32
  for leaf in jax.tree.leaves(nnx.state(opt16)):
    assert not jnp.issubdtype(leaf.dtype, jnp.floating) or leaf.dtype == jnp.float32
  # Activations: the model's output, and most of its matmul work, in bfloat16; the task's
  # head and the loss in float32.
  graphdef, state = nnx.split(model16)
  assert jax.eval_shape(lambda s: nnx.merge(graphdef, s)(batch), state).dtype == jnp.float32
  backbone = lambda s: nnx.merge(graphdef, s).backbone(*_backbone_inputs(model16.interface))
  assert jax.eval_shape(backbone, state).dtype == jnp.bfloat16
  flops = _matmul_flops_by_dtype(jax.make_jaxpr(backbone)(state).jaxpr, {})
  assert flops.get("bfloat16", 0) > 0.5 * sum(flops.values()), flops
  # The first steps' losses against float32 at the same parameters: bfloat16 rounding only.
  np.testing.assert_allclose(losses16, losses32, rtol=1e-2)  # measured: at most 2.5e-3
  assert not np.array_equal(losses16, losses32)
  assert losses16[-1] < losses16[0]  # it trains


def test_losses_are_float32_on_bf16_logits():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(B, T, V)) * 4, jnp.bfloat16)
  targets = jnp.asarray(rng.integers(0, V, size=(B, T)), jnp.int32)
  weights = jnp.asarray(rng.uniform(size=(B, T)), jnp.float32)
  sums = losses.metric_sums(logits, targets, weights, regression=False)
  z = np.asarray(logits, np.float64)
  logp = z - z.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  want = -(np.asarray(weights, np.float64)
           * np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]).sum()
  assert sums["loss"].dtype == jnp.float32
  np.testing.assert_allclose(float(sums["loss"]), want, rtol=1e-6)
  values = jnp.asarray(rng.normal(size=(B, T)), jnp.bfloat16)
  sums = losses.metric_sums(values, values.astype(jnp.float32) + 1e-3, weights, True)
  assert sums["loss"].dtype == jnp.float32
  np.testing.assert_allclose(float(sums["loss"]), 1e-6 * float(weights.sum()), rtol=1e-3)


def test_moe_router_runs_in_float32_on_bf16_tokens():
  """Noisy top-k gating on bfloat16 tokens (``ndtr`` has no bfloat16 kernel) equals the
  float32 gating of the same values; the experts' output stays bfloat16."""
  rng = np.random.default_rng(2)
  N, I, E, k = 6, 4, 4, 2
  x16 = jnp.asarray(rng.normal(size=(N, I)), jnp.bfloat16)
  w_gate, w_noise = (jnp.asarray(rng.normal(size=(I, E)), jnp.float32) for _ in range(2))
  key = jax.random.key(0)
  g16 = moe_ops.noisy_top_k_gating(x16, w_gate, w_noise, k, noise_key=key)
  g32 = moe_ops.noisy_top_k_gating(x16.astype(jnp.float32), w_gate, w_noise, k, noise_key=key)
  for a, b in zip(g16, g32):
    assert a.dtype == b.dtype
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
  assert g16.load_E.dtype == jnp.float32 and float(g16.load_E.sum()) > 0
  experts = moe_ops.Experts(*(jnp.asarray(rng.normal(size=s), jnp.bfloat16)
                              for s in ((E, I, 8), (E, 8), (E, 8, I), (E, I))))
  assert moe_ops.moe_dense(x16, g16.gates_NE, experts).dtype == jnp.bfloat16
  y, _ = moe_ops.moe_dispatch(x16, g16, experts, capacity_=N)
  assert y.dtype == jnp.bfloat16
