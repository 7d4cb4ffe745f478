"""FLOPs and memory of a function of arrays, read off what XLA compiles.

``xla_flops`` is XLA's own count (``compiled.cost_analysis()['flops']``). On CPU (XLA's
``HloCostAnalysis``, checked with jax 0.10) a ``while`` loop's body is counted **once**,
whatever its trip count: a ``lax.scan`` of n matmuls reports the FLOPs of one matmul, so a
recurrent layer would look O(1) in n. ``flops`` corrects that: for every loop that
survives into the compiled program (its trip count is in the HLO), it compiles the loop
body on its own and adds ``(trips - 1)`` more copies of XLA's count for it. ``jaxpr_flops``
is an independent count from the jaxpr (2mkn per matmul, one per element otherwise, loop
bodies times trip count), kept as a cross-check.

Forward+backward is ``fwd_bwd(f)``: the value and the gradient of the sum of the outputs
with respect to chosen arguments.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seqscale.analysis import _jaxpr

_TRIP_RE = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def fwd_bwd(f: Callable[..., Any], argnums: int | Sequence[int] = 0) -> Callable[..., Any]:
  """``f`` followed by its backward pass: returns ``(sum of outputs, grads)``.

  The gradient is of the sum of every (real part of every) inexact output leaf with
  respect to the arguments ``argnums``.
  """
  def total(*args):
    leaves = [y for y in jax.tree.leaves(f(*args)) if jnp.issubdtype(y.dtype, jnp.inexact)]
    return sum(jnp.sum(jnp.real(y)) for y in leaves)
  return jax.value_and_grad(total, argnums=argnums)


def compile_fn(f: Callable[..., Any], *args: Any) -> jax.stages.Compiled:
  """``jax.jit(f).lower(*args).compile()``; args may be arrays or ``ShapeDtypeStruct``s."""
  return jax.jit(f).lower(*args).compile()


def xla_cost(compiled: jax.stages.Compiled) -> dict[str, float]:
  """``compiled.cost_analysis()`` as one dict (older jax returns a list of dicts)."""
  cost = compiled.cost_analysis()
  if cost is None:
    return {}
  if isinstance(cost, (list, tuple)):
    merged: dict[str, float] = collections.defaultdict(float)
    for part in cost:
      for key, value in (part or {}).items():
        merged[key] += float(value)
    return dict(merged)
  return {key: float(value) for key, value in cost.items()}


def xla_flops(f: Callable[..., Any], *args: Any) -> float:
  """XLA's FLOP count of ``f``, as reported (loop bodies counted once on CPU)."""
  return xla_cost(compile_fn(f, *args)).get("flops", 0.0)


def trip_counts_in_hlo(hlo_text: str) -> list[int]:
  """Trip counts of the ``while`` loops in HLO text, in program order.

  Read from ``known_trip_count`` in a loop's backend config; a loop without it falls back
  to the integer constant in its condition computation (a ``0..N`` counter); a loop with
  neither is skipped.
  """
  comps: dict[str, str] = {}
  for block in re.split(r"\n(?=\S)", hlo_text):
    m = re.match(r"(?:ENTRY\s+)?%?([\w.\-]+)", block)
    if m:
      comps[m.group(1)] = block
  counts = []
  for line in hlo_text.splitlines():
    if not re.search(r"\bwhile\(", line):
      continue
    if (m := _TRIP_RE.search(line)) is not None:
      counts.append(int(m.group(1)))
      continue
    cond = re.search(r"condition=%?([\w.\-]+)", line)
    consts = re.findall(r"s(?:32|64)\[\] constant\((\d+)\)", comps.get(cond.group(1), "")
                        ) if cond else []
    if len(consts) == 1:
      counts.append(int(consts[0]))
  return counts


def hlo_trip_counts(f: Callable[..., Any], *args: Any) -> list[int]:
  """Trip counts of the ``while`` loops XLA kept in the compiled ``f``."""
  return trip_counts_in_hlo(compile_fn(f, *args).as_text())


def _avals(atoms: Sequence[Any]) -> list[jax.ShapeDtypeStruct]:
  return [jax.ShapeDtypeStruct(a.aval.shape, a.aval.dtype) for a in atoms]


def _loops(jaxpr: _jaxpr.Jaxpr) -> list[tuple[_jaxpr.ClosedJaxpr, int, int]]:
  """(body, loop iterations, body copies per iteration) of the loops of one level.

  Calls are followed; loop bodies are not (the caller recurses into them); ``cond``
  branches are not (XLA's count of a conditional is left as it is).
  """
  found = []
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "scan":
      iters, copies = _jaxpr.scan_iterations(eqn)
      found.append((eqn.params["jaxpr"], iters, copies))
    elif name == "while":
      trips = _jaxpr.while_trip_count(eqn)
      if trips is not None:
        found.append((eqn.params["body_jaxpr"], trips, 1))
    elif (sub := _jaxpr.call_body(eqn)) is not None:
      found += _loops(_jaxpr.open_jaxpr(sub)[0])
  return found


def _corrected_flops(closed: _jaxpr.ClosedJaxpr) -> tuple[float, float]:
  """(XLA's count as reported, the count with every kept loop times its trip count)."""
  fn = jax.extend.core.jaxpr_as_fun(closed)
  compiled = compile_fn(fn, *_avals(closed.jaxpr.invars))
  reported = xla_cost(compiled).get("flops", 0.0)
  total = reported
  kept = collections.Counter(trip_counts_in_hlo(compiled.as_text()))
  for body, iters, copies in _loops(closed.jaxpr):
    if iters <= 1 or kept[iters] == 0:
      continue  # no loop left in the HLO: XLA already counted every copy
    kept[iters] -= 1
    body = body if isinstance(body, _jaxpr.ClosedJaxpr) else _jaxpr.ClosedJaxpr(body, [])
    body_reported, body_total = _corrected_flops(body)
    # XLA counted ``copies`` bodies once each (their inner loops once too): replace them.
    total += iters * copies * body_total - copies * body_reported
  return reported, total


def flops(f: Callable[..., Any], *args: Any, backward: bool = False,
          argnums: int | Sequence[int] = 0) -> float:
  """XLA's FLOP count of ``f`` (or of ``fwd_bwd(f, argnums)``), loops times trip count.

  Each loop that XLA kept (its trip count appears in the compiled HLO) has its body
  compiled alone and counted ``trips - 1`` more times, recursively for nested loops.
  """
  g = fwd_bwd(f, argnums) if backward else f
  return _corrected_flops(jax.make_jaxpr(g)(*args))[1]


def _dot_flops(eqn: Any) -> float:
  (lc, _), _ = eqn.params["dimension_numbers"]
  lhs_shape = eqn.invars[0].aval.shape
  return 2.0 * _jaxpr.numel(eqn.outvars[0]) * float(np.prod([lhs_shape[d] for d in lc]))


def _conv_flops(eqn: Any) -> float:
  rhs = eqn.invars[1].aval.shape
  out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
  return 2.0 * _jaxpr.numel(eqn.outvars[0]) * (float(np.prod(rhs)) / out_features)


def _jaxpr_flops(jaxpr: _jaxpr.Jaxpr) -> float:
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "scan":
      total += eqn.params["length"] * _jaxpr_flops(eqn.params["jaxpr"].jaxpr)
    elif name == "while":
      trips = _jaxpr.while_trip_count(eqn)
      if trips is None:
        raise ValueError("jaxpr_flops: a while loop whose trip count is not static")
      total += trips * (_jaxpr_flops(eqn.params["body_jaxpr"].jaxpr)
                        + _jaxpr_flops(eqn.params["cond_jaxpr"].jaxpr))
    elif name == "cond":
      total += max(_jaxpr_flops(b.jaxpr) for b in eqn.params["branches"])
    elif (sub := _jaxpr.call_body(eqn)) is not None:
      total += _jaxpr_flops(_jaxpr.open_jaxpr(sub)[0])
    elif name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "conv_general_dilated":
      total += _conv_flops(eqn)
    elif name not in _jaxpr.DATA_MOVEMENT:
      # Elementwise: one per output element; reductions: one per input element.
      total += max(_jaxpr.numel(a) for a in [*eqn.invars, *eqn.outvars])
  return total


def jaxpr_flops(f: Callable[..., Any], *args: Any, backward: bool = False,
                argnums: int | Sequence[int] = 0) -> float:
  """FLOPs counted from the jaxpr: a cross-check of ``flops`` that needs no compiler.

  dot_general ``2 * out elements * contracted size``, convolution likewise, any other
  arithmetic primitive one per element of its largest operand or result (transcendentals
  included, which XLA reports apart), data movement zero; ``scan``/static ``while`` bodies
  times their trip count, ``cond`` its most expensive branch.
  """
  g = fwd_bwd(f, argnums) if backward else f
  return _jaxpr_flops(jax.make_jaxpr(g)(*args).jaxpr)


@dataclasses.dataclass(frozen=True)
class Memory:
  """Bytes from ``compiled.memory_analysis()``; None where the backend does not say."""
  temp_bytes: int | None
  argument_bytes: int | None
  output_bytes: int | None
  alias_bytes: int | None
  generated_code_bytes: int | None
  peak_bytes: int | None = None  # what the backend reports as its peak, where it does

  @property
  def total_bytes(self) -> int | None:
    """Arguments + outputs + temporaries - aliased, or the reported peak if larger (on CPU,
    jax 0.10's ``peak_memory_in_bytes`` leaves the temporaries out)."""
    parts = (self.argument_bytes, self.output_bytes, self.temp_bytes)
    if any(p is None for p in parts):
      return self.peak_bytes
    total = sum(parts) - (self.alias_bytes or 0)
    return max(total, self.peak_bytes or 0)


def compiled_memory(compiled: jax.stages.Compiled) -> Memory | None:
  """``Memory`` of a compiled program; None where the backend has no memory analysis."""
  try:
    stats = compiled.memory_analysis()
  except (NotImplementedError, jax.errors.JaxRuntimeError, AttributeError):
    return None
  if stats is None:
    return None
  get = lambda name: (None if getattr(stats, name, None) is None
                      else int(getattr(stats, name)))
  return Memory(temp_bytes=get("temp_size_in_bytes"),
                argument_bytes=get("argument_size_in_bytes"),
                output_bytes=get("output_size_in_bytes"),
                alias_bytes=get("alias_size_in_bytes"),
                generated_code_bytes=get("generated_code_size_in_bytes"),
                peak_bytes=get("peak_memory_in_bytes") or None)


def memory(f: Callable[..., Any], *args: Any, backward: bool = False,
           argnums: int | Sequence[int] = 0) -> Memory | None:
  """Compiled memory of ``f`` (or ``fwd_bwd(f, argnums)``); None if unavailable."""
  g = fwd_bwd(f, argnums) if backward else f
  return compiled_memory(compile_fn(g, *args))


def cost_summary(f: Callable[..., Any], *args: Any,
                 argnums: int | Sequence[int] = 0) -> dict[str, float | int | None]:
  """FLOPs forward and forward+backward (three ways) and fwd+bwd memory, one dict.

  Keys: ``flops_fwd``, ``flops_fwd_bwd`` (loop-corrected XLA), ``xla_flops_fwd``,
  ``xla_flops_fwd_bwd`` (XLA as reported), ``jaxpr_flops_fwd``, ``jaxpr_flops_fwd_bwd``,
  ``temp_bytes``, ``argument_bytes``, ``output_bytes`` (of forward+backward).
  """
  g = fwd_bwd(f, argnums)
  mem = memory(g, *args)
  return {
      "flops_fwd": flops(f, *args),
      "flops_fwd_bwd": flops(g, *args),
      "xla_flops_fwd": xla_flops(f, *args),
      "xla_flops_fwd_bwd": xla_flops(g, *args),
      "jaxpr_flops_fwd": jaxpr_flops(f, *args),
      "jaxpr_flops_fwd_bwd": jaxpr_flops(g, *args),
      "temp_bytes": mem and mem.temp_bytes,
      "argument_bytes": mem and mem.argument_bytes,
      "output_bytes": mem and mem.output_bytes,
  }
