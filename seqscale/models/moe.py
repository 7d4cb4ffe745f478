"""Sparsely-gated mixture of experts (Shazeer et al. 2017): registered ``moe``, ``lstm_moe``,
``transformer_moe``; ``MoEFeedForward`` for a Transformer; expert sharding over a mesh.

The math is in ``seqscale.ops.moe``. ``MoE`` owns the gate weights (zero-initialised, as in
the paper, so every expert starts equally likely) and E stacked feed-forward experts. In
training (``model.train()``, the default) the gates are noisy; ``model.eval()`` removes the
noise. Each call stores Shazeer's load-balancing loss in an ``AuxLoss`` variable; a trainer
adds ``auxiliary_loss(model)`` (the sum over every MoE in the model) to its objective. The
noise (an RNG counter) and the loss are state updates, so under a raw ``jax`` transform the model must come in through
``nnx.split`` / ``nnx.merge`` of its state as an argument (as the trainer does) or an ``nnx``
transform; ``noisy_gating=False`` with both loss weights 0 gives a call with no side effects.

``capacity_factor=None`` runs every expert on every token and combines with the sparse gates
(nothing dropped; E/k times the expert FLOPs; the reference). A float caps each expert at
``ceil(capacity_factor * k * N / E)`` of the call's N tokens (GShard's capacity):
choices past the cap are dropped, and the residual around the layer in ``lstm_moe`` and
``transformer_moe`` passes such a token through. With a cap, a token's output depends on which
other tokens share the call (earlier ones claim slots first), so stepping equals the full
call only where nothing is dropped.

``dtype`` (e.g. ``bfloat16``) is the experts' computation dtype; the parameters stay float32
and the router (gate logits, noise, top-k, softmax, load) computes in float32.

Shapes: B batch, T length, I input features, D width, F expert hidden width, E experts.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from seqscale.checks import check_int
from seqscale.models import recurrent
from seqscale.models import transformer
from seqscale.models.registry import AuxLoss, auxiliary_loss, register  # noqa: F401
from seqscale.ops import moe as ops

Array = jax.Array


class ExpertParam(nnx.Param):
  """A parameter whose leading axis is the expert axis E (sharded by ``shard_experts``)."""


def _check_moe(num_experts: int, k: int, capacity_factor: float | None,
               importance_weight: float, load_weight: float) -> None:
  check_int("num_experts", num_experts, 1)
  check_int("k", k, 1)
  if k > num_experts:
    raise ValueError(f"k={k!r}; must be <= num_experts={num_experts!r}")
  if capacity_factor is not None and (isinstance(capacity_factor, bool) or not isinstance(
      capacity_factor, (int, float)) or capacity_factor <= 0):
    raise ValueError(f"capacity_factor={capacity_factor!r}; must be None (no cap) or > 0")
  for name, value in (("importance_weight", importance_weight), ("load_weight", load_weight)):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
      raise ValueError(f"{name}={value!r}; must be a number >= 0")


class MoE(nnx.Module):
  """Noisy top-k mixture of E feed-forward experts, position-wise: [..., I] -> [..., O]."""

  def __init__(self, in_features: int, out_features: int, ff_features: int,
               num_experts: int = 8, k: int = 2, capacity_factor: float | None = None,
               noisy_gating: bool = True, importance_weight: float = 0.1,
               load_weight: float = 0.1, dtype: Any = None, *, rngs: nnx.Rngs):
    check_int("in_features", in_features, 1)
    check_int("out_features", out_features, 1)
    check_int("ff_features", ff_features, 1)
    _check_moe(num_experts, k, capacity_factor, importance_weight, load_weight)
    I, O, F, E = in_features, out_features, ff_features, num_experts
    self.in_features, self.out_features, self.num_experts, self.k = I, O, E, k
    self.capacity_factor, self.noisy_gating, self.dtype = capacity_factor, noisy_gating, dtype
    self.importance_weight, self.load_weight = importance_weight, load_weight
    self.w_gate = nnx.Param(jnp.zeros((I, E), jnp.float32))
    self.w_noise = nnx.Param(jnp.zeros((I, E), jnp.float32))
    # Each expert as nnx.Linear would initialise it (LeCun normal, zero bias).
    init = nnx.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
    self.w1 = ExpertParam(init(rngs.params(), (E, I, F)))
    self.b1 = ExpertParam(jnp.zeros((E, F), jnp.float32))
    self.w2 = ExpertParam(init(rngs.params(), (E, F, O)))
    self.b2 = ExpertParam(jnp.zeros((E, O), jnp.float32))
    self.deterministic = False  # model.eval() sets True: no gate noise
    self.rngs = rngs["gating"].fork()  # the "gating" stream, else the default one
    self.aux_loss = AuxLoss(jnp.zeros((), jnp.float32))

  def experts(self, dtype: Any) -> ops.Experts:
    return ops.Experts(*(getattr(self, n)[...].astype(dtype) for n in ("w1", "b1", "w2", "b2")))

  def __call__(self, x_BxI: Array, *, mask: Array | None = None) -> Array:
    """Routes each position to k experts. ``mask`` (bool, x's leading shape): padding
    positions get zero output and count in neither the balancing loss nor the capacity."""
    if x_BxI.shape[-1] != self.in_features:
      raise ValueError(f"x has shape {x_BxI.shape}; expected [..., {self.in_features}]")
    dtype = self.dtype if self.dtype is not None else jnp.promote_types(x_BxI.dtype,
                                                                         jnp.float32)
    lead = x_BxI.shape[:-1]
    x_NI = x_BxI.reshape(-1, self.in_features).astype(dtype)
    valid_N = None if mask is None else jnp.asarray(mask, bool).reshape(-1)
    noise_key = None if self.deterministic or not self.noisy_gating else self.rngs()
    # The router in float32 (ops.moe's gating promotes the tokens), the experts in ``dtype``.
    gating = ops.noisy_top_k_gating(x_NI, self.w_gate[...], self.w_noise[...], self.k,
                                    noise_key=noise_key, valid_N=valid_N)
    if self.capacity_factor is None:
      y_NO = ops.moe_dense(x_NI, gating.gates_NE, self.experts(dtype))
    else:
      cap = ops.capacity(x_NI.shape[0], self.num_experts, self.k, self.capacity_factor)
      y_NO, _ = ops.moe_dispatch(x_NI, gating, self.experts(dtype), cap, valid_N)
    if self.importance_weight or self.load_weight:
      # Without a loss to record the call stays free of side effects (and of TraceContextError
      # when the module is closed over by a raw jax transform).
      self.aux_loss[...] = ops.load_balancing_loss(
          gating, self.importance_weight, self.load_weight).astype(jnp.float32)
    return y_NO.reshape(*lead, self.out_features)


class MoEFeedForward(MoE):
  """A Transformer feed-forward sub-layer made of experts: [..., D] -> [..., D] via width F.

  Same call as ``transformer._FeedForward``; ``TransformerMoE`` puts it in place of it.
  """

  def __init__(self, D: int, F: int, *, num_experts: int = 8, k: int = 2,
               capacity_factor: float | None = None, noisy_gating: bool = True,
               importance_weight: float = 0.1, load_weight: float = 0.1, dtype: Any = None,
               rngs: nnx.Rngs):
    super().__init__(D, D, F, num_experts, k, capacity_factor, noisy_gating,
                     importance_weight, load_weight, dtype, rngs=rngs)


@register("moe")
class MoELayer(nnx.Module):
  """A mixture of experts as a sequence layer (position-wise, so causal): x_BTI -> y_BTD.

  ``y = sum_e G(x)_e E_e(x)`` with experts ``I -> ff_features -> hidden_features``; no
  residual (a dropped token's output is zero). A building block, e.g. between recurrent
  layers (see ``lstm_moe``); alone it cannot carry anything along time.
  """

  interface = "sequence"

  def __init__(self, in_features: int, hidden_features: int, ff_features: int | None = None,
               num_experts: int = 8, k: int = 2, capacity_factor: float | None = None,
               noisy_gating: bool = True, importance_weight: float = 0.1,
               load_weight: float = 0.1, dtype: Any = None, *, rngs: nnx.Rngs):
    ff_features = 4 * hidden_features if ff_features is None else ff_features
    self.moe = MoE(in_features, hidden_features, ff_features, num_experts, k, capacity_factor,
                   noisy_gating, importance_weight, load_weight, dtype, rngs=rngs)
    self.causal, self.out_features = True, hidden_features

  def __call__(self, x_BTI: Array, *, mask: Array | None = None) -> Array:
    """[B, T, I] -> [B, T, D]; ``mask`` bool [B, T] True at valid positions."""
    return self.moe(x_BTI, mask=mask)

  def init_state(self, batch_size: int, max_length: int) -> tuple:
    """Position-wise: there is no state."""
    del batch_size, max_length
    return ()

  def step(self, x_BI: Array, state: tuple) -> tuple[Array, tuple]:
    """One position: x_BI -> (y_BD, state)."""
    return self.moe(x_BI), state


@register("lstm_moe")
class LSTMMoE(nnx.Module):
  """Stacked LSTMs with a residual MoE between consecutive layers (Shazeer et al.'s LM).

  ``num_layers`` LSTM layers of width D; after each but the last, ``h = h + MoE(h)``
  (experts D -> ff_features -> D), so a token the capacity drops passes through unchanged.
  """

  interface = "sequence"

  def __init__(self, in_features: int, hidden_features: int, num_layers: int = 2,
               ff_features: int | None = None, num_experts: int = 8, k: int = 2,
               capacity_factor: float | None = None, noisy_gating: bool = True,
               importance_weight: float = 0.1, load_weight: float = 0.1,
               dropout_rate: float = 0.0, dtype: Any = None, *, rngs: nnx.Rngs):
    check_int("num_layers", num_layers, 2)
    D = hidden_features
    ff_features = 4 * D if ff_features is None else ff_features
    self.lstms = nnx.List([
        recurrent.LSTM(in_features if l == 0 else D, D, dtype=dtype, rngs=rngs)
        for l in range(num_layers)])
    self.moes = nnx.List([
        MoE(D, D, ff_features, num_experts, k, capacity_factor, noisy_gating,
            importance_weight, load_weight, dtype, rngs=rngs) for _ in range(num_layers - 1)])
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self.causal, self.out_features = True, D

  def __call__(self, x_BTI: Array, *, mask: Array | None = None) -> Array:
    """[B, T, I] -> [B, T, D]; ``mask`` bool [B, T] True at valid positions."""
    h_BTD = self.lstms[0](x_BTI, mask=mask)
    for moe, lstm in zip(self.moes, self.lstms[1:]):
      h_BTD = h_BTD + self.dropout(moe(h_BTD, mask=mask))
      h_BTD = lstm(self.dropout(h_BTD), mask=mask)
    return h_BTD

  def init_state(self, batch_size: int, max_length: int) -> tuple:
    """The LSTMs' carries, ``state[l]``."""
    return tuple(lstm.init_state(batch_size, max_length) for lstm in self.lstms)

  def step(self, x_BI: Array, state: tuple) -> tuple[Array, tuple]:
    """One time step: x_BI -> (y_BD, next state)."""
    h_BD, s0 = self.lstms[0].step(x_BI, state[0])
    new_state = [s0]
    for moe, lstm, s in zip(self.moes, self.lstms[1:], state[1:]):
      h_BD = h_BD + self.dropout(moe(h_BD))
      h_BD, s = lstm.step(self.dropout(h_BD), s)
      new_state.append(s)
    return h_BD, tuple(new_state)


@register("transformer_moe")
class TransformerMoE(transformer.Transformer):
  """The ``transformer`` with an MoE feed-forward (``MoEFeedForward``) in every
  ``moe_every``-th layer (layers moe_every-1, 2*moe_every-1, ...; GShard uses 2).

  The mixture sees the padding positions of a masked batch (the Transformer's layers do not
  pass the mask to their feed-forward), so they take part in routing and capacity.
  """

  def __init__(self, in_features: int, hidden_features: int, num_layers: int = 2,
               num_heads: int = 4, ff_features: int | None = None, causal: bool = False,
               positions: str = "sinusoidal", max_length: int = 2048, norm: str = "post",
               local_window: int | None = None, dropout_rate: float = 0.0,
               num_experts: int = 8, k: int = 2, capacity_factor: float | None = None,
               noisy_gating: bool = True, importance_weight: float = 0.1,
               load_weight: float = 0.1, moe_every: int = 2, dtype: Any = None, *,
               rngs: nnx.Rngs):
    check_int("moe_every", moe_every, 1)
    if moe_every > num_layers:
      raise ValueError(f"moe_every={moe_every!r}; must be <= num_layers={num_layers!r} "
                       "(else no layer gets experts)")
    super().__init__(in_features, hidden_features, num_layers=num_layers,
                     num_heads=num_heads, ff_features=ff_features, causal=causal,
                     positions=positions, max_length=max_length, norm=norm,
                     local_window=local_window, dropout_rate=dropout_rate, dtype=dtype,
                     rngs=rngs)
    F = 4 * hidden_features if ff_features is None else ff_features
    for l, layer in enumerate(self.stack.layers):
      if l % moe_every == moe_every - 1:
        layer.ff = MoEFeedForward(
            hidden_features, F, num_experts=num_experts, k=k, capacity_factor=capacity_factor,
            noisy_gating=noisy_gating, importance_weight=importance_weight,
            load_weight=load_weight, dtype=dtype, rngs=rngs)


def shard_experts(model: nnx.Module, mesh: Mesh, axis: str = "expert") -> nnx.Module:
  """Places ``model``'s expert parameters with their E axis split over ``mesh`` axis ``axis``
  (``NamedSharding(mesh, P(axis))``) and replicates everything else on ``mesh``; in place.
  The mesh's axes are used as ``AxisType.Auto``.

  Under ``jit`` the compiler then runs each device's experts where they live and moves
  tokens to them. Raises ValueError if an expert count does not divide by the axis size.
  """
  if axis not in mesh.shape:
    raise ValueError(f"axis={axis!r}; mesh axes are {tuple(mesh.shape)}")
  # Auto axes: the compiler lays out the routing's gathers and scatters itself (an Explicit
  # axis would ask every gather for an output sharding).
  mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))
  n = mesh.shape[axis]
  experts = nnx.state(model, ExpertParam)
  for leaf in jax.tree.leaves(experts):
    if leaf.shape[0] % n:
      raise ValueError(f"{leaf.shape[0]} experts do not divide over mesh axis {axis!r} of "
                       f"size {n}; use a multiple of {n} experts")
  rest = nnx.state(model, nnx.Not(ExpertParam))
  nnx.update(model, jax.device_put(experts, NamedSharding(mesh, P(axis))),
             jax.device_put(rest, NamedSharding(mesh, P())))
  return model


def expert_param_count(model: nnx.Module) -> tuple[int, int]:
  """(expert parameters, all parameters). A token uses k/E of the expert parameters."""
  count = lambda s: sum(math.prod(x.shape) for x in jax.tree.leaves(s))
  return count(nnx.state(model, ExpertParam)), count(nnx.state(model, nnx.Param))
