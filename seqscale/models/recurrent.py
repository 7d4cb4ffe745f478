"""Stacked, optionally bidirectional RNN, LSTM and GRU (registered ``rnn``, ``lstm``, ``gru``).

A thin owner of parameters around ``seqscale.ops.recurrent``. Parameters are named and laid
out so that copying from PyTorch is a transpose:

  model.layers[l].fwd.w_ih = torch_module.weight_ih_l{l}.T          # [I, G*D]
  model.layers[l].bwd.w_hh = torch_module.weight_hh_l{l}_reverse.T  # [D, G*D]

and likewise ``b_ih``, ``b_hh`` (no transpose). States are tuples over layers of tuples over
directions of carries: ``state[l][d]`` is h_BD, or (h_BD, c_BD) for the LSTM.

``impl="fast"`` (the default) runs ``ops.fast_recurrent`` (a hand-written backward pass:
the recurrent weight gradient as one matmul over all steps); ``impl="reference"`` runs the
plain ``ops.recurrent`` scan. Both compute the same function and gradient.
``impl="deer"``, ``"quasi_deer"`` and ``"elk"`` evaluate the same cells in parallel over
time by Newton iterations of an associative scan (``ops.newton``; ``unroll`` is unused,
and a solve that does not converge falls back to the sequential scan).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from seqscale.checks import check_int
from seqscale.models.registry import register
from seqscale.ops import fast_recurrent
from seqscale.ops import newton
from seqscale.ops import recurrent as ops

Array = jax.Array


def _newton_run(method: str):
  """``ops.recurrent.run``'s signature and results, solved by ``ops.newton``."""
  def run(cell, x_BTI, params, carry=None, lengths_B=None, *, reverse=False, unroll=None):
    del unroll  # no sequential loop to unroll
    return newton.run(cell, x_BTI, params, carry, lengths_B, reverse=reverse,
                      method=method)[:2]
  return run


_IMPLS = {"fast": fast_recurrent.run, "reference": ops.run,
          **{m: _newton_run(m) for m in newton.METHODS}}


class Weights(nnx.Module):
  """One direction of one layer: w_ih [I, G*D], w_hh [D, G*D], b_ih [G*D], b_hh [G*D]."""

  def __init__(self, in_features: int, hidden_features: int, num_gates: int, *,
               rngs: nnx.Rngs):
    # PyTorch's init: every weight and bias uniform in (-1/sqrt(D), 1/sqrt(D)).
    bound = 1.0 / math.sqrt(hidden_features)
    shapes = {"w_ih": (in_features, num_gates * hidden_features),
              "w_hh": (hidden_features, num_gates * hidden_features),
              "b_ih": (num_gates * hidden_features,),
              "b_hh": (num_gates * hidden_features,)}
    for name, shape in shapes.items():
      value = jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound)
      setattr(self, name, nnx.Param(value))

  def params(self, dtype: Any) -> dict[str, Array]:
    """The four arrays, cast to the computation dtype, as ``ops.recurrent`` takes them."""
    return {k: getattr(self, k)[...].astype(dtype) for k in ("w_ih", "w_hh", "b_ih", "b_hh")}


class Layer(nnx.Module):
  """One layer: the forward direction, and the backward one when bidirectional."""

  def __init__(self, in_features: int, hidden_features: int, num_gates: int,
               bidirectional: bool, *, rngs: nnx.Rngs):
    self.fwd = Weights(in_features, hidden_features, num_gates, rngs=rngs)
    self.bwd = (Weights(in_features, hidden_features, num_gates, rngs=rngs)
                if bidirectional else None)

  def directions(self) -> list[Weights]:
    return [self.fwd] if self.bwd is None else [self.fwd, self.bwd]


class _Recurrent(nnx.Module):
  """A stack of recurrent layers; subclasses set ``cell``."""

  interface = "sequence"
  cell: str = ""

  def __init__(self, in_features: int, hidden_features: int, num_layers: int = 1,
               bidirectional: bool = False, dropout_rate: float = 0.0,
               unroll: int | None = None, dtype: Any = None, impl: str = "fast", *,
               rngs: nnx.Rngs):
    check_int("in_features", in_features, 1)
    check_int("hidden_features", hidden_features, 1)
    check_int("num_layers", num_layers, 1)
    if unroll is not None:
      check_int("unroll", unroll, 1)
    if impl not in _IMPLS:
      raise ValueError(f"impl={impl!r}; allowed: {', '.join(_IMPLS)}")
    if not isinstance(bidirectional, bool):
      raise ValueError(f"bidirectional={bidirectional!r}; must be True or False")
    if (isinstance(dropout_rate, bool) or not isinstance(dropout_rate, (int, float))
        or not 0.0 <= dropout_rate < 1.0):
      raise ValueError(f"dropout_rate={dropout_rate!r}; must be a float in [0, 1)")
    self.in_features = in_features
    self.hidden_features = hidden_features
    self.num_layers = num_layers
    self.bidirectional = bidirectional
    self.unroll = unroll  # None: the implementation's tuned default
    self.impl = impl
    self.dtype = dtype
    self.causal = not bidirectional
    num_dirs = 2 if bidirectional else 1
    self.out_features = hidden_features * num_dirs
    gates = ops.NUM_GATES[self.cell]
    self.layers = nnx.List([
        Layer(in_features if l == 0 else self.out_features, hidden_features, gates,
              bidirectional, rngs=rngs) for l in range(num_layers)])
    # Between layers only, as PyTorch's ``dropout``.
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

  def _dtype(self, x: Array) -> Any:
    return self.dtype if self.dtype is not None else jnp.promote_types(x.dtype, jnp.float32)

  def __call__(self, x_BTI: Array, *, mask: Array | None = None,
               initial_state: Any = None) -> Array:
    """[B, T, I] -> [B, T, out_features]; ``mask`` bool [B, T], padding on the right.

    Bidirectional outputs are [forward, backward] on the last axis, as PyTorch's.
    ``initial_state`` (``state[l][d]``, zeros when None) starts the recurrences.
    """
    return self.run(x_BTI, mask=mask, initial_state=initial_state)[0]

  def run(self, x_BTI: Array, *, mask: Array | None = None,
          initial_state: Any = None) -> tuple[Array, Any]:
    """As ``__call__``, also returning the final state ``state[l][d]``.

    With a mask, the final forward carry is the one at each example's last valid step
    (and the backward one at step 0), as PyTorch's ``h_n`` for packed sequences.
    """
    if x_BTI.ndim != 3 or x_BTI.shape[-1] != self.in_features:
      raise ValueError(f"x_BTI has shape {x_BTI.shape}; expected [B, T, {self.in_features}]")
    dtype = self._dtype(x_BTI)
    lengths_B = None if mask is None else jnp.sum(mask, axis=-1, dtype=jnp.int32)
    h_BTD = x_BTI.astype(dtype)
    final = []
    for l, layer in enumerate(self.layers):
      if l > 0:
        h_BTD = self.dropout(h_BTD)
      outs, carries = [], []
      for d, weights in enumerate(layer.directions()):
        carry = None if initial_state is None else initial_state[l][d]
        y_BTD, carry = _IMPLS[self.impl](
            self.cell, h_BTD, weights.params(dtype), carry, lengths_B, reverse=d == 1,
            unroll=self.unroll if self.unroll is not None or self.impl == "fast" else 1)
        outs.append(y_BTD)
        carries.append(carry)
      h_BTD = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-1)
      final.append(tuple(carries))
    return h_BTD, tuple(final)

  def _check_steppable(self) -> None:
    if self.bidirectional:
      raise ValueError(
          f"a bidirectional {self.cell} cannot run step by step: its backward direction "
          "reads the sequence from the end; use bidirectional=False to step")

  def init_state(self, batch_size: int, max_length: int) -> tuple:
    """Zero carries ``state[l][0]`` (``max_length`` is unused: the carry is all there is)."""
    del max_length
    self._check_steppable()
    dtype = self.dtype if self.dtype is not None else jnp.float32
    return tuple((ops.zero_carry(self.cell, batch_size, self.hidden_features, dtype),)
                 for _ in range(self.num_layers))

  def step(self, x_BI: Array, state: tuple) -> tuple[Array, tuple]:
    """One time step: x_BI [B, I] -> (y_BD [B, hidden_features], next state)."""
    self._check_steppable()
    dtype = self._dtype(x_BI)
    h_BD = x_BI.astype(dtype)
    new_state = []
    for l, layer in enumerate(self.layers):
      if l > 0:
        h_BD = self.dropout(h_BD)
      carry, h_BD = ops.step(self.cell, layer.fwd.params(dtype), state[l][0], h_BD)
      new_state.append((carry,))
    return h_BD, tuple(new_state)


@register("rnn")
class RNN(_Recurrent):
  """Elman RNN with tanh, as ``torch.nn.RNN(batch_first=True)``."""

  cell = "rnn"


@register("lstm")
class LSTM(_Recurrent):
  """LSTM (gates i, f, g, o), as ``torch.nn.LSTM(batch_first=True)``."""

  cell = "lstm"


@register("gru")
class GRU(_Recurrent):
  """GRU (gates r, z, n), as ``torch.nn.GRU(batch_first=True)``."""

  cell = "gru"
