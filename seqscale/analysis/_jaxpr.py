"""Helpers shared by the analysers: walking jaxprs, loop trip counts, op classes.

A jaxpr here is ``jax.extend.core.Jaxpr`` (open) or ``ClosedJaxpr``; ``open_jaxpr`` turns
either into ``(jaxpr, consts)``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax.extend.core as jex
import numpy as np

Jaxpr = jex.Jaxpr
ClosedJaxpr = jex.ClosedJaxpr
Literal = jex.Literal

# Primitives that only move, copy, select by index or re-type elements: no arithmetic.
# They take no sequential step (depth 0) and no FLOPs.
DATA_MOVEMENT = frozenset({
    "reshape", "broadcast_in_dim", "squeeze", "expand_dims", "transpose", "rev", "slice",
    "dynamic_slice", "dynamic_update_slice", "concatenate", "pad", "gather", "scatter",
    "convert_element_type", "bitcast_convert_type", "reduce_precision", "copy", "copy_p",
    "iota", "device_put", "sharding_constraint", "stop_gradient", "real", "imag",
    "complex", "split", "optimization_barrier", "all_gather", "ppermute", "all_to_all",
    "axis_index", "mesh_cast", "reshard", "pvary", "broadcast",
})

# Calls whose body runs once: followed as if inlined.
CALLS = frozenset({
    "pjit", "jit", "closed_call", "core_call", "remat", "remat2", "checkpoint",
    "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr", "shard_map",
})


def open_jaxpr(j: Jaxpr | ClosedJaxpr) -> tuple[Jaxpr, list[Any]]:
  """(open jaxpr, const values) of an open or closed jaxpr."""
  if isinstance(j, ClosedJaxpr):
    return j.jaxpr, list(j.consts)
  return j, []


def call_body(eqn: jex.JaxprEqn) -> Jaxpr | ClosedJaxpr | None:
  """The jaxpr of a call-like equation (run once, same arity), else None."""
  if eqn.primitive.name in ("scan", "while", "cond"):
    return None
  subs = [p for p in eqn.params.values() if isinstance(p, (Jaxpr, ClosedJaxpr))]
  if len(subs) != 1:
    return None
  sub, _ = open_jaxpr(subs[0])
  if len(sub.invars) != len(eqn.invars) or len(sub.outvars) != len(eqn.outvars):
    return None
  return subs[0]


def numel(atom: Any) -> int:
  return math.prod(getattr(atom.aval, "shape", ()))


def literal_int(atom: Any) -> int | None:
  if isinstance(atom, Literal) and np.ndim(atom.val) == 0:
    try:
      return int(atom.val)
    except (TypeError, ValueError):
      return None
  return None


def _producer(jaxpr: Jaxpr, var: Any) -> jex.JaxprEqn | None:
  for e in jaxpr.eqns:
    if any(o is var for o in e.outvars):
      return e
  return None


def _index(seq: Sequence[Any], atom: Any) -> int | None:
  for i, v in enumerate(seq):
    if v is atom:
      return i
  return None


def while_trip_count(eqn: jex.JaxprEqn) -> int | None:
  """Trip count of a ``while`` equation when it is static in the jaxpr, else None.

  Recognises the form ``fori_loop`` and hand-written counters take: the condition is
  ``i < hi`` on a carried counter ``i`` that starts at a literal and the body adds a
  positive literal to it; ``hi`` is a literal, a literal condition constant, or a carry
  that the body passes through unchanged and that starts at a literal.
  """
  p = eqn.params
  cond, _ = open_jaxpr(p["cond_jaxpr"])
  body, _ = open_jaxpr(p["body_jaxpr"])
  cn, bn = p["cond_nconsts"], p["body_nconsts"]
  init = eqn.invars[cn + bn:]
  if len(cond.eqns) != 1 or cond.eqns[0].primitive.name != "lt":
    return None
  lhs, rhs = cond.eqns[0].invars

  def carry_index(atom: Any) -> int | None:
    i = _index(cond.invars, atom)
    return None if i is None or i < cn else i - cn

  def static(atom: Any) -> int | None:
    if (v := literal_int(atom)) is not None:
      return v
    i = _index(cond.invars, atom)
    if i is None:
      return None
    if i < cn:
      return literal_int(eqn.invars[i])
    k = i - cn
    if body.outvars[k] is body.invars[bn + k]:  # passed through unchanged
      return literal_int(init[k])
    return None

  k = carry_index(lhs)
  hi = static(rhs)
  if k is None or hi is None:
    return None
  lo = literal_int(init[k])
  step_eqn = _producer(body, body.outvars[k])
  if lo is None or step_eqn is None or step_eqn.primitive.name != "add":
    return None
  a, b = step_eqn.invars
  counter = body.invars[bn + k]
  step = literal_int(b) if a is counter else literal_int(a) if b is counter else None
  if not step or step <= 0:
    return None
  return max(0, -(-(hi - lo) // step))


def scan_iterations(eqn: jex.JaxprEqn) -> tuple[int, int]:
  """(iterations of the lowered loop, body copies per iteration) of a ``scan``.

  ``unroll=u`` lowers to a loop of ``length // u`` iterations of ``u`` body copies (the
  remainder unrolled outside); ``u >= length`` is no loop at all.
  """
  length, unroll = eqn.params["length"], eqn.params.get("unroll", 1)
  unroll = length if unroll is True else max(1, int(unroll))
  if unroll >= length:
    return (0, length)
  return (length // unroll, unroll)
