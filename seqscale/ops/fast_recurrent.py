"""The recurrent layers of ``ops.recurrent``, with a hand-written backward pass.

Same functions, parameters and results as ``seqscale.ops.recurrent`` (read that file for
the math; it stays the readable reference); only the way they are computed differs.
``jax.grad`` of a ``lax.scan`` closes over the recurrent weights, so its transpose adds
``h_{t-1}^T @ dgates_t`` into a [D, G*D] accumulator *inside* the backward loop: T small
matmuls plus T read-modify-writes of the whole weight gradient. Here the scan's VJP is
written by hand (``jax.custom_vjp``), and both loops run over chunks of steps
(``chunk_steps``: about ``CHUNK_ROWS`` batch rows x steps each):

  forward:  batch-major (no transposes); the biases folded into one; per chunk, one matmul
            projects the chunk's inputs; per step, one matmul (``h @ w_hh``) and few
            elementwise kernels (the LSTM takes one sigmoid over all four gates,
            ``tanh(a) = 2 sigmoid(2a) - 1``); the loop saves the carries it produced and
            the gate activations;
  backward: a reverse loop carries only dh (and dc) and emits dgates_t [B, G*D] into the
            chunk's buffer; per chunk, dW_hh += h_{t-1}^T dgates and dW_ih += x^T dgates
            are one [D, steps*B] @ [steps*B, G*D] matmul each, and dx one matmul.

A chunk's buffers stay in cache. Projecting all T steps before the loop (and the weight
gradients after it) would write and re-read [B, T, G*D] arrays in memory instead; the
per-step buffers are float32 under bfloat16 (see ``_buffer_dtype``).

The serial chain is unchanged: T steps of ``h @ w_hh`` forward and ``dgates @ w_hh^T``
backward.

Forward mode (``jax.jvp``, ``jax.jacfwd``, ``jax.linearize`` excepted, see below): a
``custom_vjp`` alone has no JVP, so the layer is also a ``jax.custom_jvp`` whose rule picks
by what asks for the tangent (``_layer_ad``):

  reverse mode (``jax.grad``, ``jax.vjp``, ``jacrev``, and Hessian-vector products
            forward-over-reverse): the tangents come in unknown, to be transposed, and the
            rule hands them to the ``custom_vjp`` above, so the backward pass is the
            hand-written one, with the same residuals;
  forward mode: the tangents are values, and the rule returns the JVP of the reference
            scan (``ops.recurrent``), primal included; reverse-over-forward (``grad`` of a
            ``jvp``) differentiates that plain code.

A derivative of the layer taken under ``jax.checkpoint`` or ``jax.vmap`` inside ``jax.grad``
(per-example gradients) meets the rule in forward mode and is right but runs the reference
backward. ``jax.linearize`` builds the reverse-mode form and cannot evaluate it, as with any
``custom_vjp``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jax.interpreters import partial_eval as pe

from seqscale.ops import recurrent as ref

Array = jax.Array
Params = ref.Params
Carry = ref.Carry

# Steps per loop iteration. Measured on a 2-core CPU (B=32, T=512, D=256, fwd+bwd): 1 beat
# 2 and 4 by 5-10% for both the LSTM and the GRU; unrolling only grew the program.
DEFAULT_UNROLL = 1


# ------------------------------------------------------------------------------ the cells
# step(carry, inputs) -> (new carry, saved_BX); the step's output is h. For the RNN and
# LSTM ``inputs`` is the whole pre-activation [B, G*D] (input and hidden halves, biases);
# the GRU's reset gate multiplies the hidden half of n, so it gets (xw_BG, hw_BG).
# back(carry_prev, saved_BX, dcarry) -> (dcarry_rest, dxw_BG, dhw_BG): the gradients of the
# input half and of the hidden half (``h @ w_hh``) of the pre-activation, and of the
# previous carry *except* through ``h @ w_hh`` (the caller adds ``dhw @ w_hh^T``).
# ``dcarry`` already includes the gradient of the step's output.


def _rnn_step(h, pre):
  del h
  h = jnp.tanh(pre)
  return h, h


def _rnn_back(h_prev, h, dh):
  da = dh * (1 - h * h)
  return jnp.zeros_like(h_prev), da, da


# LSTM gates i, f, g, o; g's pre-activation is doubled so one sigmoid serves all four.
def _gate_scale(D: int, dtype: Any, g: float) -> Array:
  return jnp.concatenate([jnp.ones(2 * D, dtype), jnp.full((D,), g, dtype),
                          jnp.ones(D, dtype)])


def _lstm_step(carry, pre):
  _, c = carry
  s = jax.nn.sigmoid(pre * _gate_scale(c.shape[-1], pre.dtype, 2))
  i, f, g, o = jnp.split(s, 4, axis=-1)
  c = f * c + i * (2 * g - 1)
  return (o * jnp.tanh(c), c), s


def _lstm_back(carry_prev, s, dcarry):
  h, c = carry_prev
  dh, dc = dcarry
  i, f, g, o = jnp.split(s, 4, axis=-1)
  g = 2 * g - 1
  tc = jnp.tanh(f * c + i * g)  # recomputed: cheaper than saving c' for every step
  dc = dc + dh * o * (1 - tc * tc)
  # d sigmoid = s (1 - s); for g = 2 sigmoid(2a) - 1, dg/da = 4 s (1 - s) = 1 - g^2.
  da = (jnp.concatenate([dc * g, dc * c, dc * i, dh * tc], axis=-1) * s * (1 - s)
        * _gate_scale(c.shape[-1], s.dtype, 4))
  return (jnp.zeros_like(h), dc * f), da, da


def _gru_step(h, xw_hw):
  xw, hw = xw_hw  # hw = h @ w_hh + (0, 0, b_hn): r and z biases are folded into xw
  D = h.shape[-1]
  rz = jax.nn.sigmoid(xw[:, :2 * D] + hw[:, :2 * D])
  r, z = jnp.split(rz, 2, axis=-1)
  hn = hw[:, 2 * D:]
  n = jnp.tanh(xw[:, 2 * D:] + r * hn)
  return n + z * (h - n), jnp.concatenate([rz, n, hn], axis=-1)


def _gru_back(h, rznh, dh):
  r, z, n, hn = jnp.split(rznh, 4, axis=-1)
  dn = dh * (1 - z) * (1 - n * n)
  dz = dh * (h - n) * z * (1 - z)
  dr = dn * hn * r * (1 - r)
  return dh * z, jnp.concatenate([dr, dz, dn], axis=-1), jnp.concatenate(
      [dr, dz, dn * r], axis=-1)


_CELLS = {"rnn": (_rnn_step, _rnn_back), "lstm": (_lstm_step, _lstm_back),
          "gru": (_gru_step, _gru_back)}

# Rows (batch x steps) per chunk. The loops run over chunks of CHUNK_ROWS // B steps: per
# chunk, one [CHUNK_ROWS, I] @ [I, G*D] matmul gives the chunk's input projections
# (forward), and the backward pass adds the chunk's weight gradients and computes its dx
# with one matmul each. The chunk's [B, steps, G*D] buffers stay in cache, where one
# projection of all T steps before the loop writes and re-reads [B, T, G*D] in memory
# (and XLA's CPU backend faults in every page of such a buffer on each call). Measured on
# a 2-core Intel Xeon (AVX-512), fwd+bwd, D=256, one process alternating: see RESULTS.md
# ("The recurrent layers in chunks").
CHUNK_ROWS = 1024


def chunk_steps(B: int, T: int) -> int:
  """Steps per chunk at batch B and length T."""
  return max(1, min(T, CHUNK_ROWS // max(B, 1)))


# ------------------------------------------------------------------------------ the loop
# Batch-major throughout: step t reads [:, t] of its inputs and writes [:, t] of its
# outputs, so no [B, T, .] <-> [T, B, .] transposes are needed, forward or backward.


def _at(a_BTX, t):
  return jax.lax.dynamic_index_in_dim(a_BTX, t, axis=1, keepdims=False)


def _put(buf_BTX, t, x_BX):
  return jax.lax.dynamic_update_index_in_dim(buf_BTX, x_BX.astype(buf_BTX.dtype), t, axis=1)


def _span(a_BTX, t0, size):
  return jax.lax.dynamic_slice_in_dim(a_BTX, t0, size, axis=1)


def _keep(valid_B, new, old):
  return jax.tree.map(lambda a, b: jnp.where(valid_B[:, None], a, b), new, old)


def _buffer_dtype(dtype):
  # XLA's CPU backend writes a step into a bfloat16 buffer some 50x slower than into a
  # float32 one (measured, jax 0.10): the loops keep their per-step buffers, and the
  # backward pass its arithmetic, in float32 whenever the computation is narrower.
  return jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype


def _h(cell, carry):
  return carry[0] if cell == "lstm" else carry


def _chunked(B, T, backwards, chunk, state):
  """``state = chunk(state, t0, size, steps)`` over the steps [0, T), in chunks of
  ``chunk_steps(B, T)`` = C steps, ``backwards`` from T - 1 down to 0; ``steps(j)`` is the
  j-th step's index within [t0, t0 + size) (so in time order or against it). The T % C
  left over form the first chunk taken."""
  C = chunk_steps(B, T)
  n, r = divmod(T, C)
  steps = lambda size: (lambda j: size - 1 - j) if backwards else (lambda j: j)
  if r:
    state = chunk(state, T - r if backwards else 0, r, steps(r))

  def full(k, state):
    i0 = r + k * C  # steps taken before this chunk
    return chunk(state, T - i0 - C if backwards else i0, C, steps(C))
  return jax.lax.fori_loop(0, n, full, state)


def _forward(cell, reverse, unroll, save, w, b_in, b_hh, x_BTI, carry, valid_BT):
  """The loop: every step's carry (h is the output where the step is valid) and, with
  ``save``, the gate values the backward pass needs. ``w`` is (w_ih, w_hh)."""
  w_ih, w_hh = w
  step = _CELLS[cell][0]
  B, T, _ = x_BTI.shape
  if cell == "gru":
    pre = lambda xw, h: (xw, h @ w_hh + b_hh)
  else:
    pre = lambda xw, h: xw + h @ w_hh
  xw0 = jax.ShapeDtypeStruct((B, w_ih.shape[1]), jnp.result_type(x_BTI, w_ih, b_in))
  new0, saved0 = jax.eval_shape(lambda c, xw: step(c, pre(xw, _h(cell, c))), carry, xw0)
  bufs = lambda a: jnp.zeros((B, T) + a.shape[1:], _buffer_dtype(a.dtype))
  outs = (jax.tree.map(bufs, new0), bufs(saved0) if save else None)

  def chunk(state, t0, size, steps):
    xw_BCG = _project(_span(x_BTI, t0, size), w_ih) + b_in

    def body(j, state):
      carry, (carries, saved) = state
      tc = steps(j)
      t = t0 + tc
      new, s = step(carry, pre(_at(xw_BCG, tc), _h(cell, carry)))
      if valid_BT is not None:  # a padded step leaves the carry as it was
        new = _keep(_at(valid_BT, t), new, carry)
      carries = jax.tree.map(lambda buf, x: _put(buf, t, x), carries, new)
      return new, (carries, None if saved is None else _put(saved, t, s))
    return jax.lax.fori_loop(0, size, body, state, unroll=min(unroll, size))

  return _chunked(B, T, reverse, chunk, (carry, outs))


def _outputs(cell, carries, valid_BT, dtype):
  h_BTD = _h(cell, carries).astype(dtype)
  return h_BTD if valid_BT is None else jnp.where(valid_BT[..., None], h_BTD, 0)


def _project(x_BTI, w_ih):
  return (x_BTI.reshape(-1, x_BTI.shape[-1]) @ w_ih).reshape(*x_BTI.shape[:2], -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _layer(cell, reverse, unroll, w, b_in, b_hh, x_BTI, carry, valid_BT):
  final, (carries, _) = _forward(cell, reverse, unroll, False, w, b_in, b_hh, x_BTI, carry,
                                 valid_BT)
  return _outputs(cell, carries, valid_BT, _h(cell, final).dtype), final


def _layer_fwd(cell, reverse, unroll, w, b_in, b_hh, x_BTI, carry, valid_BT):
  final, (carries, saved) = _forward(cell, reverse, unroll, True, w, b_in, b_hh, x_BTI,
                                     carry, valid_BT)
  res = (w, b_hh, x_BTI, carry, carries, saved, valid_BT)
  return (_outputs(cell, carries, valid_BT, _h(cell, final).dtype), final), res


def _matmul_tn(a_NX, b_NY):
  """a^T @ b over the long leading axis, in float32."""
  return jnp.matmul(a_NX.T, b_NY, preferred_element_type=jnp.float32)


def _layer_bwd(cell, reverse, unroll, res, cts):
  (w_ih, w_hh), b_hh, x_BTI, carry0, carries, saved, valid_BT = res
  dy_BTD, dfinal = cts
  back = _CELLS[cell][1]
  (B, T, I), D, G = x_BTI.shape, w_hh.shape[0], w_hh.shape[1]
  bdt = saved.dtype  # the loop computes in this (float32 for narrower computations)
  w_hh_t, w_ih_t = w_hh.T.astype(bdt), w_ih.T.astype(bdt)
  lstm, gru = cell == "lstm", cell == "gru"

  def previous(t):
    """The carry step t started from: the carry the step before emitted, or carry0."""
    first = t == (T - 1 if reverse else 0)
    p = jnp.clip(t + 1 if reverse else t - 1, 0, T - 1)
    return jax.tree.map(lambda buf, c0: jnp.where(first, c0.astype(buf.dtype), _at(buf, p)),
                        carries, carry0)

  def chunk(state, t0, size, steps):
    dcarry, dx_BTI, grads = state

    def body(j, state):
      dcarry, dxw_BCG, hprev_BCD = state
      tc = steps(j)
      t = t0 + tc
      dy_BD = _at(dy_BTD, t).astype(bdt)
      d_in = (dcarry[0] + dy_BD, dcarry[1]) if lstm else dcarry + dy_BD
      if valid_BT is not None:  # a padded step: no gradient through the cell ...
        valid_B = _at(valid_BT, t)
        d_in = _keep(valid_B, d_in, jax.tree.map(jnp.zeros_like, d_in))
      prev = previous(t)
      rest, dxw_BG, dhw_BG = back(prev, _at(saved, t), d_in)
      dh = _h(cell, rest) + dhw_BG @ w_hh_t
      dprev = (dh, rest[1]) if lstm else dh
      if valid_BT is not None:  # ... but the carry's gradient passes straight through
        dprev = jax.tree.map(lambda a, b: a + jnp.where(valid_B[:, None], 0, b), dprev,
                             dcarry)
      return dprev, _put(dxw_BCG, tc, dxw_BG), _put(hprev_BCD, tc, _h(cell, prev))

    dcarry, dxw_BCG, hprev_BCD = jax.lax.fori_loop(
        0, size, body, (dcarry, jnp.zeros((B, size, G), bdt), jnp.zeros((B, size, D), bdt)),
        unroll=min(unroll, size))
    # The chunk's weight gradients: [I or D, size*B] @ [size*B, G*D].
    dxw = dxw_BCG.reshape(B * size, G)
    h_prev = hprev_BCD.reshape(B * size, D)
    dw_ih, dw_hh, db_in, db_hh = grads
    dw_ih = dw_ih + _matmul_tn(_span(x_BTI, t0, size).reshape(B * size, I), dxw)
    db_in = db_in + jnp.sum(dxw, axis=0, dtype=jnp.float32)
    if gru:  # the n gate's hidden half enters multiplied by r (and has b_hn)
      dhn = dxw[:, 2 * D:] * _span(saved, t0, size)[..., :D].reshape(B * size, D)
      dw_hh = dw_hh + jnp.concatenate([_matmul_tn(h_prev, dxw[:, :2 * D]),
                                       _matmul_tn(h_prev, dhn)], axis=1)
      db_hh = db_hh + jnp.sum(dhn, axis=0, dtype=jnp.float32)
    else:
      dw_hh = dw_hh + _matmul_tn(h_prev, dxw)
    dx_BCI = (dxw @ w_ih_t).reshape(B, size, I)
    dx_BTI = jax.lax.dynamic_update_slice_in_dim(dx_BTI, dx_BCI, t0, axis=1)
    return dcarry, dx_BTI, (dw_ih, dw_hh, db_in, db_hh)

  f32 = lambda shape: jnp.zeros(shape, jnp.float32)
  grads0 = (f32(w_ih.shape), f32(w_hh.shape), f32((G,)), f32((D,)) if gru else None)
  dfinal_b = jax.tree.map(lambda a: a.astype(bdt), dfinal)
  dcarry, dx_BTI, (dw_ih, dw_hh, db_in, db_hh) = _chunked(
      B, T, not reverse, chunk, (dfinal_b, jnp.zeros(x_BTI.shape, bdt), grads0))
  dcarry = jax.tree.map(lambda a, c: a.astype(c.dtype), dcarry, dfinal)
  if gru:
    db_hh = jnp.concatenate([jnp.zeros((2 * D,), jnp.float32), db_hh]).astype(b_hh.dtype)
  dvalid = None if valid_BT is None else jnp.zeros(valid_BT.shape, jax.dtypes.float0)
  return ((dw_ih.astype(w_ih.dtype), dw_hh.astype(w_hh.dtype)), db_in.astype(w_ih.dtype),
          db_hh, dx_BTI.astype(x_BTI.dtype), dcarry, dvalid)


_layer.defvjp(_layer_fwd, _layer_bwd)


# ------------------------------------------------------------------------------ forward mode
# The custom_jvp is the outer wrapper: a custom_vjp cannot be differentiated forward, while a
# custom_jvp's rule is what reverse mode linearizes. JAX linearizes a custom_jvp by running its
# rule under a partial-evaluation trace, the tangents unknown ``JaxprTracer``s of it, and
# assumes (as ``_linearizing`` does) that such a trace only builds a linear map to transpose.
# Under another trace on top (a ``vmap`` inside the ``grad``) the rule takes forward mode.


def _linearizing(tangents) -> bool:
  with jex.take_current_trace() as trace:
    pass
  return any(isinstance(t, pe.JaxprTracer) and t._trace is trace and not t.is_known()
             for t in jax.tree.leaves(tangents))


def _reference_layer(cell, reverse, unroll, w, b_in, b_hh, x_BTI, carry, valid_BT):
  """``_layer`` by ``ops.recurrent.run``: the biases as folded by ``run`` (b_hh only holds
  the GRU's b_hn), the lengths from the valid steps."""
  w_ih, w_hh = w
  params = {"w_ih": w_ih, "w_hh": w_hh, "b_ih": b_in,
            "b_hh": jnp.zeros_like(b_in) if b_hh is None else b_hh}
  lengths_B = None if valid_BT is None else jnp.sum(valid_BT, axis=1, dtype=jnp.int32)
  return ref.run(cell, x_BTI, params, carry, lengths_B, reverse=reverse, unroll=unroll)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _layer_ad(cell, reverse, unroll, w, b_in, b_hh, x_BTI, carry, valid_BT):
  return _layer(cell, reverse, unroll, w, b_in, b_hh, x_BTI, carry, valid_BT)


def _layer_ad_jvp(cell, reverse, unroll, primals, tangents):
  layer = _layer if _linearizing(tangents) else _reference_layer
  # Only the perturbed inputs are differentiated (symbolic zeros stay closed over), so the
  # custom_vjp sees the same inputs to differentiate as it would without this wrapper.
  leaves, tree = jax.tree.flatten(primals)
  dots = jax.tree.leaves(tangents, is_leaf=lambda t: isinstance(t, SymbolicZero))
  moved = [i for i, t in enumerate(dots) if not isinstance(t, SymbolicZero)]

  def f(*moving):
    full = list(leaves)
    for i, a in zip(moved, moving):
      full[i] = a
    return layer(cell, reverse, unroll, *jax.tree.unflatten(tree, full))

  return jax.jvp(f, [leaves[i] for i in moved], [dots[i] for i in moved])


_layer_ad.defjvp(_layer_ad_jvp, symbolic_zeros=True)


def run(cell: str, x_BTI: Array, params: Params, carry: Carry | None = None,
        lengths_B: Array | None = None, *, reverse: bool = False,
        unroll: int | bool | None = None) -> tuple[Array, Carry]:
  """As ``ops.recurrent.run`` (same arguments and results), with the hand-written VJP.

  ``unroll`` None takes ``DEFAULT_UNROLL``.
  """
  if cell not in _CELLS:
    raise ValueError(f"cell={cell!r}; allowed: {', '.join(_CELLS)}")
  check_unroll(unroll)
  unroll = DEFAULT_UNROLL if unroll is None else unroll
  if isinstance(unroll, bool):
    unroll = max(x_BTI.shape[1], 1) if unroll else 1
  dtype = jnp.result_type(x_BTI, params["w_ih"])
  if carry is None:
    carry = ref.zero_carry(cell, x_BTI.shape[0], params["w_hh"].shape[0], dtype)
  b_ih, b_hh = params["b_ih"], params["b_hh"]
  if cell == "gru":  # fold b_hh's r and z parts into b_in; its n part stays in hw
    D = params["w_hh"].shape[0]
    b_in, b_hh = b_ih + b_hh.at[2 * D:].set(0), b_hh.at[:2 * D].set(0)
  else:
    b_in, b_hh = b_ih + b_hh, None
  valid_BT = None
  if lengths_B is not None:
    valid_BT = jnp.arange(x_BTI.shape[1])[None, :] < jnp.asarray(lengths_B)[:, None]
  return _layer_ad(cell, reverse, unroll, (params["w_ih"], params["w_hh"]), b_in, b_hh,
                   x_BTI.astype(dtype), carry, valid_BT)


def rnn(x_BTI: Array, params: Params, h_BD: Array | None = None,
        lengths_B: Array | None = None, *, reverse: bool = False,
        unroll: int | bool | None = None) -> tuple[Array, Array]:
  """Elman RNN (tanh) over [B, T, I] -> (y_BTD, h_BD). See ``run``."""
  return run("rnn", x_BTI, params, h_BD, lengths_B, reverse=reverse, unroll=unroll)


def lstm(x_BTI: Array, params: Params, carry: tuple[Array, Array] | None = None,
         lengths_B: Array | None = None, *, reverse: bool = False,
         unroll: int | bool | None = None) -> tuple[Array, tuple[Array, Array]]:
  """LSTM over [B, T, I] -> (y_BTD, (h_BD, c_BD)). See ``run``."""
  return run("lstm", x_BTI, params, carry, lengths_B, reverse=reverse, unroll=unroll)


def gru(x_BTI: Array, params: Params, h_BD: Array | None = None,
        lengths_B: Array | None = None, *, reverse: bool = False,
        unroll: int | bool | None = None) -> tuple[Array, Array]:
  """GRU (PyTorch semantics) over [B, T, I] -> (y_BTD, h_BD). See ``run``."""
  return run("gru", x_BTI, params, h_BD, lengths_B, reverse=reverse, unroll=unroll)


def check_unroll(unroll: Any) -> None:
  """Raises ValueError unless ``unroll`` is None, a bool or an int >= 1."""
  if unroll is None or isinstance(unroll, bool):
    return
  if not isinstance(unroll, int) or unroll < 1:
    raise ValueError(f"unroll={unroll!r}; must be None (the tuned default), a bool or an "
                     "int >= 1")
