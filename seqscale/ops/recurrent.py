"""Nonlinear recurrent cells (Elman RNN, LSTM, GRU) and one scan driver over time.

Parameters are PyTorch's (and cuDNN's) transposed for ``x @ W``, same gate order, so
copying a ``torch.nn.LSTM`` is a transpose (``w_ih = weight_ih_l0.T``):

  w_ih [I, G*D], w_hh [D, G*D], b_ih [G*D], b_hh [G*D]
  G = 1 (RNN), 4 (LSTM: i, f, g, o), 3 (GRU: r, z, n).

The input projection of every time step is one matmul outside the scan (``project``); the
scan body holds only ``h @ w_hh`` and the gates. That matmul is the serial chain: step t
needs step t-1, so T steps take T sequential matmuls however many devices there are.

Carries: ``h_BD`` for the RNN and GRU, ``(h_BD, c_BD)`` for the LSTM (PyTorch's order).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

Array = jax.Array
Params = Mapping[str, Array]  # w_ih, w_hh, b_ih, b_hh as above
Carry = Any  # h_BD, or (h_BD, c_BD) for the LSTM
# cell(params, carry, xw_BG) -> (carry, y_BD), where xw_BG = x_BI @ w_ih + b_ih.
Cell = Callable[[Params, Carry, Array], tuple[Carry, Array]]

NUM_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def project(x_BxI: Array, params: Params) -> Array:
  """The input half of every gate: ``x @ w_ih + b_ih``, [..., I] -> [..., G*D]."""
  return x_BxI @ params["w_ih"] + params["b_ih"]


def rnn_cell(params: Params, h_BD: Array, xw_BD: Array) -> tuple[Array, Array]:
  """Elman step: ``h' = tanh(xw + h @ w_hh + b_hh)``. Returns (h'_BD, h'_BD)."""
  h_BD = jnp.tanh(xw_BD + h_BD @ params["w_hh"] + params["b_hh"])
  return h_BD, h_BD


def lstm_cell(params: Params, carry: tuple[Array, Array],
              xw_BG: Array) -> tuple[tuple[Array, Array], Array]:
  """LSTM step, gates i, f, g, o. carry (h_BD, c_BD), xw_BG [B, 4D] -> ((h', c'), h')."""
  h_BD, c_BD = carry
  i, f, g, o = jnp.split(xw_BG + h_BD @ params["w_hh"] + params["b_hh"], 4, axis=-1)
  c_BD = jax.nn.sigmoid(f) * c_BD + jax.nn.sigmoid(i) * jnp.tanh(g)
  h_BD = jax.nn.sigmoid(o) * jnp.tanh(c_BD)
  return (h_BD, c_BD), h_BD


def gru_cell(params: Params, h_BD: Array, xw_BG: Array) -> tuple[Array, Array]:
  """GRU step (PyTorch): gates r, z, n with ``n = tanh(xw_n + r * (h @ w_hn + b_hn))``.

  h_BD [B, D], xw_BG [B, 3D] -> (h'_BD, h'_BD), ``h' = (1 - z) * n + z * h``.
  """
  # The reset gate multiplies the hidden projection *including* its bias, so the hidden
  # half cannot be folded into xw: keep the two halves apart until the gates.
  xr, xz, xn = jnp.split(xw_BG, 3, axis=-1)
  hr, hz, hn = jnp.split(h_BD @ params["w_hh"] + params["b_hh"], 3, axis=-1)
  r = jax.nn.sigmoid(xr + hr)
  z = jax.nn.sigmoid(xz + hz)
  n = jnp.tanh(xn + r * hn)
  h_BD = n + z * (h_BD - n)
  return h_BD, h_BD


CELLS: dict[str, Cell] = {"rnn": rnn_cell, "lstm": lstm_cell, "gru": gru_cell}


def zero_carry(cell: str, batch_size: int, hidden_features: int,
               dtype: Any = jnp.float32) -> Carry:
  """The zero carry of ``cell``: h_BD, or (h_BD, c_BD) for the LSTM."""
  h_BD = jnp.zeros((batch_size, hidden_features), dtype)
  return (h_BD, h_BD) if cell == "lstm" else h_BD


def scan(step_fn: Callable[[Carry, Array], tuple[Carry, Array]], xw_BTG: Array,
         carry: Carry, lengths_B: Array | None = None, *, reverse: bool = False,
         unroll: int | bool = 1) -> tuple[Array, Carry]:
  """Runs ``step_fn(carry, xw_BG) -> (carry, y_BD)`` over time with ``jax.lax.scan``.

  Args:
    step_fn: one recurrent step on pre-projected inputs (e.g. ``partial(lstm_cell, params)``).
    xw_BTG: [B, T, G*D] inputs already projected for every step.
    carry: initial carry, a pytree of [B, ...] arrays.
    lengths_B: int [B] valid lengths (padding on the right), or None for all T. After an
      example ends its carry stops changing and its outputs are zero. With ``reverse`` the
      carry stays initial until the example's own last valid step, where the backward pass
      starts (PyTorch packed-sequence semantics).
    reverse: run from t = T-1 down to 0; outputs stay aligned with the inputs.
    unroll: passed to ``jax.lax.scan``.

  Returns:
    (y_BTD, final carry).
  """
  xw_TBG = jnp.swapaxes(xw_BTG, 0, 1)  # scan walks the leading axis
  if lengths_B is None:
    carry, y_TBD = jax.lax.scan(step_fn, carry, xw_TBG, reverse=reverse, unroll=unroll)
    return jnp.swapaxes(y_TBD, 0, 1), carry

  valid_TB = jnp.arange(xw_TBG.shape[0])[:, None] < jnp.asarray(lengths_B)[None, :]

  def body(carry, inputs):
    xw_BG, valid_B = inputs
    new_carry, y_BD = step_fn(carry, xw_BG)
    keep = lambda new, old: jnp.where(valid_B[:, None], new, old)
    return jax.tree.map(keep, new_carry, carry), keep(y_BD, jnp.zeros_like(y_BD))

  carry, y_TBD = jax.lax.scan(body, carry, (xw_TBG, valid_TB), reverse=reverse,
                              unroll=unroll)
  return jnp.swapaxes(y_TBD, 0, 1), carry


def run(cell: str, x_BTI: Array, params: Params, carry: Carry | None = None,
        lengths_B: Array | None = None, *, reverse: bool = False,
        unroll: int | bool = 1) -> tuple[Array, Carry]:
  """One recurrent layer over a sequence: project all steps at once, then ``scan``.

  Args:
    cell: "rnn", "lstm" or "gru".
    x_BTI: [B, T, I] inputs.
    params: w_ih [I, G*D], w_hh [D, G*D], b_ih [G*D], b_hh [G*D].
    carry: initial carry (zeros when None).
    lengths_B, reverse, unroll: as in ``scan``.

  Returns:
    (y_BTD, final carry).
  """
  if cell not in CELLS:
    raise ValueError(f"cell={cell!r}; allowed: {', '.join(CELLS)}")
  if carry is None:
    carry = zero_carry(cell, x_BTI.shape[0], params["w_hh"].shape[0],
                       jnp.result_type(x_BTI, params["w_ih"]))
  xw_BTG = project(x_BTI, params)
  step_fn = functools.partial(CELLS[cell], params)
  return scan(step_fn, xw_BTG, carry, lengths_B, reverse=reverse, unroll=unroll)


def rnn(x_BTI: Array, params: Params, h_BD: Array | None = None,
        lengths_B: Array | None = None, *, reverse: bool = False,
        unroll: int | bool = 1) -> tuple[Array, Array]:
  """Elman RNN (tanh) over [B, T, I] -> (y_BTD, h_BD). See ``run``."""
  return run("rnn", x_BTI, params, h_BD, lengths_B, reverse=reverse, unroll=unroll)


def lstm(x_BTI: Array, params: Params, carry: tuple[Array, Array] | None = None,
         lengths_B: Array | None = None, *, reverse: bool = False,
         unroll: int | bool = 1) -> tuple[Array, tuple[Array, Array]]:
  """LSTM over [B, T, I] -> (y_BTD, (h_BD, c_BD)). See ``run``."""
  return run("lstm", x_BTI, params, carry, lengths_B, reverse=reverse, unroll=unroll)


def gru(x_BTI: Array, params: Params, h_BD: Array | None = None,
        lengths_B: Array | None = None, *, reverse: bool = False,
        unroll: int | bool = 1) -> tuple[Array, Array]:
  """GRU (PyTorch semantics) over [B, T, I] -> (y_BTD, h_BD). See ``run``."""
  return run("gru", x_BTI, params, h_BD, lengths_B, reverse=reverse, unroll=unroll)


def step(cell: str, params: Params, carry: Carry, x_BI: Array) -> tuple[Carry, Array]:
  """One time step from raw inputs x_BI [B, I]: ``(carry, y_BD)``, for decoding."""
  return CELLS[cell](params, carry, project(x_BI, params))


def rnn_step(params: Params, h_BD: Array, x_BI: Array) -> tuple[Array, Array]:
  """One Elman step: (h_BD, x_BI) -> (h'_BD, y_BD)."""
  return step("rnn", params, h_BD, x_BI)


def lstm_step(params: Params, carry: tuple[Array, Array],
              x_BI: Array) -> tuple[tuple[Array, Array], Array]:
  """One LSTM step: ((h_BD, c_BD), x_BI) -> ((h'_BD, c'_BD), y_BD)."""
  return step("lstm", params, carry, x_BI)


def gru_step(params: Params, h_BD: Array, x_BI: Array) -> tuple[Array, Array]:
  """One GRU step: (h_BD, x_BI) -> (h'_BD, y_BD)."""
  return step("gru", params, h_BD, x_BI)
