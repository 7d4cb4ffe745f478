"""Sequence-sharded recurrences: a nonlinear scan cannot be split over time, a linear one can.

Both functions split T over the mesh axis ``seq`` (N devices, T/N steps each) under
``jax.shard_map``.

- ``carry_passing``: an ``rnn``/``lstm``/``gru`` layer. Device i needs the carry at the end
  of device i-1's block, which needs device i-2's, and so on: N rounds, each a scan of the
  T/N local steps followed by ``jax.lax.ppermute`` of the carry to the next device. After
  round r the carries of devices 0..r+1 are exact; after N-1 rounds all are, and a last
  scan produces the outputs. Every device runs every round in lockstep (SPMD), so the
  critical path is N * T/N = T steps for any N: correct, and as serial as one device.
- ``linear_scan``: h_t = a_t * h_{t-1} + b_t. Each device scans its block from a zero
  state, keeping the product of its a's; one ``all_gather`` of the N per-block summaries
  (A_last, h_last); an associative scan over them gives the exact state entering every
  block (about log2 N levels); one elementwise correction h += A * h_in. Critical path
  about T/N + log N. Equal to the unsharded scan (to rounding).

Shapes: B batch, T length, I input width, D state width, G*D gate width.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from seqscale.ops import linear_recurrence as lr
from seqscale.ops import recurrent

Array = jax.Array


def _check_len(T: int, N: int) -> None:
  if T % N:
    raise ValueError(f"T={T} must be a multiple of the {N} devices on the sequence axis")


def _carry_body(x_BTI, params, *, cell, axis, N):
  step = functools.partial(recurrent.CELLS[cell], params)
  xw_BTG = recurrent.project(x_BTI, params)
  D = params["w_hh"].shape[0]
  c0 = recurrent.zero_carry(cell, x_BTI.shape[0], D, xw_BTG.dtype)
  # The carry differs per device ("varying" over the mesh axes) once it has been scanned.
  c0 = jax.tree.map(lambda c: jax.lax.pcast(c, ("data", axis), to="varying"), c0)
  perm = [(i, i + 1) for i in range(N - 1)]  # device 0 receives nothing (zeros)

  def round_(_, c_in):
    _, c_out = recurrent.scan(step, xw_BTG, c_in)
    return jax.lax.ppermute(c_out, axis, perm)

  c_in = jax.lax.fori_loop(0, N - 1, round_, c0) if N > 1 else c0
  y_BTD, c_fin = recurrent.scan(step, xw_BTG, c_in)
  return y_BTD, jax.tree.map(lambda c: c[None], c_fin)


def carry_passing(cell: str, x_BTI: Array, params: recurrent.Params, mesh: Mesh, *,
                  axis: str = "seq") -> tuple[Array, recurrent.Carry]:
  """A recurrent layer with T sharded over ``axis``, the carry passed device to device.

  Args:
    cell: "rnn", "lstm" or "gru" (``ops.recurrent``).
    x_BTI: [B, T, I] inputs, T a multiple of the axis size.
    params: the cell's parameters, replicated.
    mesh: a mesh with axes ``data`` and ``axis``.

  Returns:
    (y_BTD, final carry), equal to ``recurrent.run(cell, x_BTI, params)`` from a zero carry.
  """
  if cell not in recurrent.CELLS:
    raise ValueError(f"cell={cell!r}; allowed: {', '.join(map(repr, recurrent.CELLS))}")
  N = mesh.shape[axis]
  _check_len(x_BTI.shape[1], N)
  y_BTD, c_NBD = sharded_carry_fn(mesh, cell, axis=axis)(x_BTI, params)
  return y_BTD, jax.tree.map(lambda c: c[-1], c_NBD)


def sharded_carry_fn(mesh: Mesh, cell: str, *, axis: str = "seq"):
  """The jitted ``shard_map`` program of ``carry_passing``: ``f(x_BTI, params) ->
  (y_BTD, per-device final carries [N, B, D])``; the last device's is the true one."""
  N = mesh.shape[axis]
  body = functools.partial(_carry_body, cell=cell, axis=axis, N=N)
  return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P("data", axis), P()),
                               out_specs=(P("data", axis), P(axis, "data"))))


def _local_scan(a_BTD, b_BTD):
  """From a zero state: (A_BTD running product of a, h_BTD states), one ``lax.scan``."""
  def body(carry, ab):
    (A, h), (a, b) = carry, ab
    A, h = a * A, a * h + b
    return (A, h), (A, h)

  init = (jnp.ones_like(b_BTD[:, 0]), jnp.zeros_like(b_BTD[:, 0]))
  _, (A_TBD, h_TBD) = jax.lax.scan(body, init, (jnp.swapaxes(a_BTD, 0, 1),
                                                jnp.swapaxes(b_BTD, 0, 1)))
  return jnp.swapaxes(A_TBD, 0, 1), jnp.swapaxes(h_TBD, 0, 1)


def _linear_body(a_BTD, b_BTD, *, axis):
  A_BTD, h_BTD = _local_scan(a_BTD, b_BTD)
  # One all-gather of every block's summary: (product of its a's, its end state from 0).
  A_NBD = jax.lax.all_gather(A_BTD[:, -1], axis)
  h_NBD = jax.lax.all_gather(h_BTD[:, -1], axis)
  _, end_NBD = jax.lax.associative_scan(lr.combine, (A_NBD, h_NBD), axis=0)
  me = jax.lax.axis_index(axis)
  prev = jax.lax.dynamic_index_in_dim(end_NBD, jnp.maximum(me - 1, 0), 0, keepdims=False)
  h_in_BD = jnp.where(me == 0, jnp.zeros_like(prev), prev)
  h_BTD = h_BTD + A_BTD * h_in_BD[:, None]
  return h_BTD, end_NBD[-1][None]


def sharded_linear_fn(mesh: Mesh, *, axis: str = "seq"):
  """The jitted ``shard_map`` program of ``linear_scan``: ``f(a_BTD, b_BTD) -> (h_BTD,
  final [N, B, D])`` (every device's copy of the final state)."""
  body = functools.partial(_linear_body, axis=axis)
  return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P("data", axis), P("data", axis)),
                               out_specs=(P("data", axis), P(axis, "data"))))


def linear_scan(a_BTD: Array, b_BTD: Array, mesh: Mesh, h0_BD: Array | None = None, *,
                axis: str = "seq") -> tuple[Array, Array]:
  """h_t = a_t * h_{t-1} + b_t with T sharded over ``axis``: local scans, one all-gather
  of per-block summaries, one correction.

  Args:
    a_BTD: [B, T, D] decays (or anything broadcasting to ``b_BTD``).
    b_BTD: [B, T, D] inputs, T a multiple of the axis size.
    mesh: a mesh with axes ``data`` and ``axis``.
    h0_BD: [B, D] initial state (zeros when None).

  Returns:
    (h_BTD, final h_BD), equal to ``linear_recurrence(a_BTD, b_BTD, h0_BD)``.
  """
  b_BTD = jnp.asarray(b_BTD)
  if b_BTD.ndim != 3:
    raise ValueError(f"b_BTD has shape {b_BTD.shape}; expected [B, T, D]")
  a_BTD = jnp.broadcast_to(jnp.asarray(a_BTD, b_BTD.dtype), b_BTD.shape)
  _check_len(b_BTD.shape[1], mesh.shape[axis])
  if h0_BD is not None:
    b_BTD = b_BTD.at[:, 0].add(a_BTD[:, 0] * h0_BD)
  h_BTD, fin_NBD = sharded_linear_fn(mesh, axis=axis)(a_BTD, b_BTD)
  return h_BTD, fin_NBD[0]


def _wavefront_body(x_BTD, params, *, cell, axis, L, M):
  params = jax.tree.map(lambda p: p[0], params)  # this device's layer
  step = functools.partial(recurrent.CELLS[cell], params)
  B, T, D = x_BTD.shape
  C = T // M
  x_MBCD = jnp.swapaxes(x_BTD.reshape(B, M, C, D), 0, 1)
  me = jax.lax.axis_index(axis)
  vary = lambda t: jax.tree.map(lambda a: jax.lax.pcast(a, ("data", axis), to="varying"), t)
  carry = vary(recurrent.zero_carry(cell, B, D, x_BTD.dtype))
  inbuf_BCD = vary(jnp.zeros((B, C, D), x_BTD.dtype))
  ys_MBCD = vary(jnp.zeros((M, B, C, D), x_BTD.dtype))
  perm = [(i, i + 1) for i in range(L - 1)]

  def tick(t, state):
    carry, inbuf_BCD, ys_MBCD = state
    j = t - me  # the time chunk this layer works on at tick t
    active = (j >= 0) & (j < M)
    jc = jnp.clip(j, 0, M - 1)
    inp_BCD = jnp.where(me == 0, x_MBCD[jc], inbuf_BCD)
    y_BCD, new_carry = recurrent.scan(step, recurrent.project(inp_BCD, params), carry)
    carry = jax.tree.map(lambda n, o: jnp.where(active, n, o), new_carry, carry)
    ys_MBCD = ys_MBCD.at[jc].set(jnp.where(active, y_BCD, ys_MBCD[jc]))
    inbuf_BCD = jax.lax.ppermute(y_BCD, axis, perm) if L > 1 else y_BCD
    return carry, inbuf_BCD, ys_MBCD

  _, _, ys_MBCD = jax.lax.fori_loop(0, M + L - 1, tick, (carry, inbuf_BCD, ys_MBCD))
  return jnp.swapaxes(ys_MBCD, 0, 1).reshape(B, T, D)[None]


def sharded_wavefront_fn(mesh: Mesh, cell: str, num_chunks: int, *, axis: str = "seq"):
  """The jitted ``shard_map`` program of ``wavefront``: ``f(x_BTD, stacked params [L, ...])
  -> [L, B, T, D]`` (every device's last-layer buffer; the last device's is the output)."""
  L = mesh.shape[axis]
  body = functools.partial(_wavefront_body, cell=cell, axis=axis, L=L, M=num_chunks)
  return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P("data"), P(axis)),
                               out_specs=P(axis, "data")))


def wavefront(cell: str, x_BTD: Array, params: recurrent.Params, mesh: Mesh, *,
              num_chunks: int, axis: str = "seq") -> Array:
  """L stacked recurrent layers on the L devices of ``axis``, pipelined over time chunks.

  Device l owns layer l. At tick t it runs its layer over time chunk t - l (a scan of
  T / num_chunks steps from its own carry) and passes the chunk's outputs to device l+1
  (``ppermute``). Devices work at once on different layers, never on different times of
  one layer: M + L - 1 ticks of T/M steps, i.e. about T + (L-1) T/M serial steps where one
  device would take L * T.

  Args:
    cell: "rnn", "lstm" or "gru".
    x_BTD: [B, T, D] inputs (width D = the state width, so all layers share shapes).
    params: every leaf stacked over layers: w_ih [L, D, G*D], w_hh [L, D, G*D], b_* [L, G*D].
    mesh: a mesh whose ``axis`` has L devices.
    num_chunks: M, time chunks; T a multiple of it.

  Returns:
    y_BTD of the last layer, equal to running the L layers one after the other.
  """
  if cell not in recurrent.CELLS:
    raise ValueError(f"cell={cell!r}; allowed: {', '.join(map(repr, recurrent.CELLS))}")
  L = mesh.shape[axis]
  if params["w_hh"].shape[0] != L:
    raise ValueError(f"params have {params['w_hh'].shape[0]} layers; the mesh axis "
                     f"{axis!r} has {L} devices (one layer per device)")
  if isinstance(num_chunks, bool) or not isinstance(num_chunks, int) or num_chunks < 1 or (
      x_BTD.shape[1] % num_chunks):
    raise ValueError(f"num_chunks={num_chunks!r}; must be an int >= 1 dividing "
                     f"T={x_BTD.shape[1]}")
  return sharded_wavefront_fn(mesh, cell, num_chunks, axis=axis)(x_BTD, params)[-1]
