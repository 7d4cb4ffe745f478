"""Factorized and group LSTMs (Kuchaiev & Ginsburg 2017): registered ``flstm`` and ``glstm``.

An LSTM layer's gates are one affine map of ``[x_t; h_{t-1}]`` (width I + D) to 4D:
``gates = [x; h] W + b`` with W [(I + D), 4D]. The two "tricks" shrink W:

- F-LSTM (``flstm``): W = W1 W2 with W1 [(I + D), r], W2 [r, 4D] (rank r). Parameters and
  matmul FLOPs go from 4D(I + D) to r(I + D + 4D).
- G-LSTM (``glstm``): split x and h into G groups; group g computes its own gates from its
  own ``[x^g; h^g]`` alone, i.e. W is block-diagonal with G blocks [(I + D)/G, 4D/G]: G
  independent small LSTMs side by side, 1/G of the parameters and FLOPs.

Neither makes the recurrence shorter: step t still needs h_{t-1}, so T steps are T dependent
matmuls (F-LSTM's are two in a row per step). ``seqscale.studies.flstm_timing`` measures it.

As in ``ops.recurrent``, the input half ``x W_x`` is computed for all steps at once outside
the scan; only the hidden half is in the serial chain. Parameters (per layer):

  flstm: w1_ih [I, r], w1_hh [D, r], w2 [r, 4D], b [4D]           (W1 = [w1_ih; w1_hh])
  glstm: w_ih [G, I/G, 4D/G], w_hh [G, D/G, 4D/G], b_ih, b_hh [G, 4D/G]
         (group g's gates i, f, g, o are its slice of width 4D/G, as a PyTorch LSTM of
         width D/G; its hidden state is h[:, g*D/G:(g+1)*D/G])

States as ``seqscale.models.recurrent``: ``state[l]`` is the carry (h_BD, c_BD) of layer l.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from seqscale.checks import check_int
from seqscale.models.registry import register
from seqscale.ops import recurrent as ops

Array = jax.Array
Carry = tuple[Array, Array]


def _uniform(rngs: nnx.Rngs, shape: tuple[int, ...], bound: float) -> nnx.Param:
  return nnx.Param(jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound))


# ---------------------------------------------------------------------------------------
# The math: pure functions of arrays (project the input half, then one cell per step).


def flstm_project(x_BxI: Array, p: dict[str, Array]) -> Array:
  """The input half of the factorized gates, ``(x @ w1_ih) @ w2 + b``: [..., I] -> [..., 4D]."""
  return (x_BxI @ p["w1_ih"]) @ p["w2"] + p["b"]


def flstm_cell(p: dict[str, Array], carry: Carry, xw_BG: Array) -> tuple[Carry, Array]:
  """F-LSTM step: gates ``xw + (h @ w1_hh) @ w2``, then the LSTM's. -> ((h', c'), h')."""
  h_BD, c_BD = carry
  # lstm_cell adds ``h @ w_hh + b_hh``: hand it the rank-r code h @ w1_hh and w_hh = w2.
  return ops.lstm_cell({"w_hh": p["w2"], "b_hh": jnp.zeros((), xw_BG.dtype)},
                       (h_BD @ p["w1_hh"], c_BD), xw_BG)


def glstm_project(x_BxI: Array, p: dict[str, Array]) -> Array:
  """The input half of each group's gates: [..., I] -> [..., G, 4D/G]."""
  G, Ig, _ = p["w_ih"].shape
  x_BxGi = x_BxI.reshape(*x_BxI.shape[:-1], G, Ig)
  return jnp.einsum("...Gi,Gig->...Gg", x_BxGi, p["w_ih"]) + p["b_ih"]


def glstm_cell(p: dict[str, Array], carry: Carry, xw_BGg: Array) -> tuple[Carry, Array]:
  """G-LSTM step: G independent LSTM cells (one batched einsum). -> ((h', c'), h'), [B, D]."""
  h_BD, c_BD = carry
  B, (G, Dg, _) = h_BD.shape[0], p["w_hh"].shape
  split = lambda a: a.reshape(B, G, Dg)
  # Group g's h^g only meets its own block of W_hh: a batched matmul, no cross-group terms.
  gates_BGg = xw_BGg + jnp.einsum("BGd,Gdg->BGg", split(h_BD), p["w_hh"]) + p["b_hh"]
  i, f, g, o = jnp.split(gates_BGg, 4, axis=-1)
  c_BGd = jax.nn.sigmoid(f) * split(c_BD) + jax.nn.sigmoid(i) * jnp.tanh(g)
  h_BGd = jax.nn.sigmoid(o) * jnp.tanh(c_BGd)
  h_BD, c_BD = h_BGd.reshape(B, G * Dg), c_BGd.reshape(B, G * Dg)
  return (h_BD, c_BD), h_BD


def run(project: Any, cell: Any, x_BTI: Array, p: dict[str, Array],
        carry: Carry | None = None, lengths_B: Array | None = None, *,
        unroll: int = 1) -> tuple[Array, Carry]:
  """One layer over a sequence: ``project`` all steps at once, then ``ops.recurrent.scan``
  of ``cell`` (``flstm_project``/``flstm_cell`` or ``glstm_project``/``glstm_cell``).

  Returns (y_BTD, final carry); ``carry`` is (h_BD, c_BD), zeros when None.
  """
  if carry is None:
    D = p["w2"].shape[-1] // 4 if "w2" in p else p["w_hh"].shape[0] * p["w_hh"].shape[1]
    carry = ops.zero_carry("lstm", x_BTI.shape[0], D, jnp.result_type(x_BTI, *p.values()))
  return ops.scan(lambda c, xw: cell(p, c, xw), project(x_BTI, p), carry, lengths_B,
                  unroll=unroll)


def flstm(x_BTI: Array, p: dict[str, Array], carry: Carry | None = None,
          lengths_B: Array | None = None, *, unroll: int = 1) -> tuple[Array, Carry]:
  """F-LSTM layer over [B, T, I] -> (y_BTD, (h_BD, c_BD)). See ``run``."""
  return run(flstm_project, flstm_cell, x_BTI, p, carry, lengths_B, unroll=unroll)


def glstm(x_BTI: Array, p: dict[str, Array], carry: Carry | None = None,
          lengths_B: Array | None = None, *, unroll: int = 1) -> tuple[Array, Carry]:
  """G-LSTM layer over [B, T, I] -> (y_BTD, (h_BD, c_BD)). See ``run``."""
  return run(glstm_project, glstm_cell, x_BTI, p, carry, lengths_B, unroll=unroll)


# ---------------------------------------------------------------------------------------
# Modules


class FLSTMWeights(nnx.Module):
  """One F-LSTM layer: w1_ih [I, r], w1_hh [D, r], w2 [r, 4D], b [4D]."""

  def __init__(self, in_features: int, hidden_features: int, rank: int, *, rngs: nnx.Rngs):
    # W1 W2 then has entries of about the spread of an LSTM's W at the same width.
    fan1 = in_features + hidden_features
    self.w1_ih = _uniform(rngs, (in_features, rank), 1.0 / math.sqrt(fan1))
    self.w1_hh = _uniform(rngs, (hidden_features, rank), 1.0 / math.sqrt(fan1))
    self.w2 = _uniform(rngs, (rank, 4 * hidden_features), 1.0 / math.sqrt(rank))
    self.b = _uniform(rngs, (4 * hidden_features,), 1.0 / math.sqrt(hidden_features))

  def params(self, dtype: Any) -> dict[str, Array]:
    return {k: getattr(self, k)[...].astype(dtype) for k in ("w1_ih", "w1_hh", "w2", "b")}


class GLSTMWeights(nnx.Module):
  """One G-LSTM layer: w_ih [G, I/G, 4D/G], w_hh [G, D/G, 4D/G], b_ih, b_hh [G, 4D/G]."""

  def __init__(self, in_features: int, hidden_features: int, num_groups: int, *,
               rngs: nnx.Rngs):
    G, Dg = num_groups, hidden_features // num_groups
    bound = 1.0 / math.sqrt(Dg)  # PyTorch's init for each group's LSTM of width D/G
    self.w_ih = _uniform(rngs, (G, in_features // G, 4 * Dg), bound)
    self.w_hh = _uniform(rngs, (G, Dg, 4 * Dg), bound)
    self.b_ih = _uniform(rngs, (G, 4 * Dg), bound)
    self.b_hh = _uniform(rngs, (G, 4 * Dg), bound)

  def params(self, dtype: Any) -> dict[str, Array]:
    return {k: getattr(self, k)[...].astype(dtype) for k in ("w_ih", "w_hh", "b_ih", "b_hh")}


class _Stack(nnx.Module):
  """A stack of unidirectional layers of one kind; subclasses set the cell and weights."""

  interface = "sequence"
  project = staticmethod(flstm_project)
  cell = staticmethod(flstm_cell)

  def _setup(self, in_features: int, hidden_features: int, num_layers: int,
             dropout_rate: float, unroll: int, dtype: Any, make_layer: Any,
             rngs: nnx.Rngs) -> None:
    check_int("num_layers", num_layers, 1)
    check_int("unroll", unroll, 1)
    if (isinstance(dropout_rate, bool) or not isinstance(dropout_rate, (int, float))
        or not 0.0 <= dropout_rate < 1.0):
      raise ValueError(f"dropout_rate={dropout_rate!r}; must be a float in [0, 1)")
    self.in_features, self.hidden_features = in_features, hidden_features
    self.num_layers, self.unroll, self.dtype = num_layers, unroll, dtype
    self.causal, self.out_features = True, hidden_features
    self.layers = nnx.List([make_layer(in_features if l == 0 else hidden_features)
                            for l in range(num_layers)])
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)  # between layers, as PyTorch's

  def _dtype(self, x: Array) -> Any:
    return self.dtype if self.dtype is not None else jnp.promote_types(x.dtype, jnp.float32)

  def __call__(self, x_BTI: Array, *, mask: Array | None = None,
               initial_state: Any = None) -> Array:
    """[B, T, I] -> [B, T, D]; ``mask`` bool [B, T] (True = valid, padding on the right)."""
    return self.run(x_BTI, mask=mask, initial_state=initial_state)[0]

  def run(self, x_BTI: Array, *, mask: Array | None = None,
          initial_state: Any = None) -> tuple[Array, tuple[Carry, ...]]:
    """As ``__call__``, also returning the final state (each example's last valid step)."""
    if x_BTI.ndim != 3 or x_BTI.shape[-1] != self.in_features:
      raise ValueError(f"x_BTI has shape {x_BTI.shape}; expected [B, T, {self.in_features}]")
    dtype = self._dtype(x_BTI)
    lengths_B = None if mask is None else jnp.sum(mask, axis=-1, dtype=jnp.int32)
    h_BTD, final = x_BTI.astype(dtype), []
    for l, layer in enumerate(self.layers):
      if l > 0:
        h_BTD = self.dropout(h_BTD)
      carry = None if initial_state is None else initial_state[l]
      h_BTD, carry = run(self.project, self.cell, h_BTD, layer.params(dtype), carry,
                         lengths_B, unroll=self.unroll)
      final.append(carry)
    return h_BTD, tuple(final)

  def init_state(self, batch_size: int, max_length: int) -> tuple[Carry, ...]:
    """Zero carries ``state[l] = (h_BD, c_BD)`` (``max_length`` unused)."""
    del max_length
    dtype = self.dtype if self.dtype is not None else jnp.float32
    return tuple(ops.zero_carry("lstm", batch_size, self.hidden_features, dtype)
                 for _ in range(self.num_layers))

  def step(self, x_BI: Array, state: tuple[Carry, ...]) -> tuple[Array, tuple[Carry, ...]]:
    """One time step: x_BI [B, I] -> (y_BD, next state)."""
    h_BD, new_state = x_BI.astype(self._dtype(x_BI)), []
    for l, layer in enumerate(self.layers):
      if l > 0:
        h_BD = self.dropout(h_BD)
      p = layer.params(h_BD.dtype)
      carry, h_BD = self.cell(p, state[l], self.project(h_BD, p))
      new_state.append(carry)
    return h_BD, tuple(new_state)


@register("flstm")
class FLSTM(_Stack):
  """Factorized LSTM: the gate matrix [(I + D), 4D] as a product of rank ``rank``.

  ``rank`` defaults to D/4; any r < 4D(I + D)/(I + 5D) has fewer parameters and FLOPs per
  step than the LSTM, and r >= min(I + D, 4D) can express every LSTM ("full rank").
  """

  project = staticmethod(flstm_project)
  cell = staticmethod(flstm_cell)

  def __init__(self, in_features: int, hidden_features: int, rank: int | None = None,
               num_layers: int = 1, dropout_rate: float = 0.0, unroll: int = 1,
               dtype: Any = None, *, rngs: nnx.Rngs):
    check_int("in_features", in_features, 1)
    check_int("hidden_features", hidden_features, 1)
    rank = max(1, hidden_features // 4) if rank is None else rank
    check_int("rank", rank, 1)
    self.rank = rank
    self._setup(in_features, hidden_features, num_layers, dropout_rate, unroll, dtype,
                lambda i: FLSTMWeights(i, hidden_features, rank, rngs=rngs), rngs)


@register("glstm")
class GLSTM(_Stack):
  """Group LSTM: ``num_groups`` independent LSTMs of width D/G on the G slices of the input.

  ``in_features`` and ``hidden_features`` must be divisible by ``num_groups``. Groups do
  not mix within the stack; whatever reads the output (the next layer of a model, a head)
  mixes them.
  """

  project = staticmethod(glstm_project)
  cell = staticmethod(glstm_cell)

  def __init__(self, in_features: int, hidden_features: int, num_groups: int = 2,
               num_layers: int = 1, dropout_rate: float = 0.0, unroll: int = 1,
               dtype: Any = None, *, rngs: nnx.Rngs):
    check_int("in_features", in_features, 1)
    check_int("hidden_features", hidden_features, 1)
    check_int("num_groups", num_groups, 1)
    for name, value in (("in_features", in_features), ("hidden_features", hidden_features)):
      if value % num_groups:
        raise ValueError(f"{name}={value!r}; must be divisible by num_groups={num_groups!r}")
    self.num_groups = num_groups
    self._setup(in_features, hidden_features, num_layers, dropout_rate, unroll, dtype,
                lambda i: GLSTMWeights(i, hidden_features, num_groups, rngs=rngs), rngs)
