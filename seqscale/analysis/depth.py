"""Sequential depth: the longest chain of dependent primitive operations in a jaxpr.

The rule, applied to the program ``jax.make_jaxpr`` builds:

- A *compute* primitive (arithmetic, comparisons, ``select_n``, reductions, ``dot_general``,
  convolutions, ...) is one step, whatever its size: the model is a parallel machine
  that runs one primitive per step, so a matmul is 1 and so is ``jnp.sum`` (a
  hand-written pairwise tree over n elements is log2 n).
- *Data movement* (reshape, broadcast, transpose, slice, pad, concatenate, gather,
  scatter, dynamic slices, dtype conversions, iota; ``_jaxpr.DATA_MOVEMENT``) is zero
  steps, and so is any primitive with an empty result and an ``add`` that merely merges
  two zero-padded arrays with disjoint support (``associative_scan`` interleaves its even
  and odd results that way).
- Calls (``jit``, ``closed_call``, ``remat``, ``custom_jvp_call``, ``custom_vjp_call``, ...)
  are followed; ``cond`` takes its deepest branch.
- ``scan`` of length n (and ``while`` with a static trip count, e.g. ``fori_loop``) is its
  body applied n times along the carry: with the body's longest-path matrix over
  (inputs -> outputs), carries go through its max-plus n-th power, so a carry-independent
  part of the body counts once, not n times. Stacked outputs ``ys`` count their deepest
  step.

Depth is tracked per array, not per element: an array is as deep as its deepest element.
This never underestimates the critical path; it can overestimate where a consumer only
needs early elements (two stacked scans count n + n, not n + 1 as a wavefront would).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import jax
import numpy as np

from seqscale.analysis import _jaxpr
from seqscale.analysis import cost

NEG = -np.inf


def _mp(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Max-plus product: ``out[i, j] = max_k a[i, k] + b[k, j]``."""
  if a.shape[1] == 0:
    return np.full((a.shape[0], b.shape[1]), NEG)
  return np.max(a[:, :, None] + b[None, :, :], axis=1)


def _identity(n: int) -> np.ndarray:
  eye = np.full((n, n), NEG)
  np.fill_diagonal(eye, 0.0)
  return eye


def _powers(a: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
  """(A^n, A^0 + ... + A^(n-1)) in the max-plus semiring, by doubling."""
  if n == 0:
    return _identity(a.shape[0]), np.full(a.shape, NEG)
  if n % 2:
    p, s = _powers(a, n - 1)
    return _mp(p, a), np.maximum(s, p)
  p, s = _powers(a, n // 2)
  return _mp(p, p), np.maximum(s, _mp(p, s))


def _pad_support(eqn: Any) -> list[set[int]] | None:
  """Per dimension, the positions a ``pad`` by a literal zero fills from its operand."""
  if eqn is None or eqn.primitive.name != "pad":
    return None
  value = eqn.invars[1]
  if not isinstance(value, _jaxpr.Literal) or np.any(np.asarray(value.val) != 0):
    return None
  support = []
  for size, out, (lo, _, interior) in zip(eqn.invars[0].aval.shape,
                                          eqn.outvars[0].aval.shape,
                                          eqn.params["padding_config"]):
    support.append({p for p in (lo + i * (interior + 1) for i in range(size)) if 0 <= p < out})
  return support


def _is_merge(eqn: Any, producers: dict[Any, Any]) -> bool:
  """An ``add`` of two zero-padded arrays whose filled positions do not overlap."""
  if eqn.primitive.name != "add" or not all(isinstance(v, _jaxpr.jex.Var) for v in eqn.invars):
    return False
  a, b = (_pad_support(producers.get(v)) for v in eqn.invars)
  return a is not None and b is not None and any(not (x & y) for x, y in zip(a, b))


class _Analyser:
  """Longest-path ("transfer") matrices of jaxprs, memoised per jaxpr."""

  def __init__(self, default_trip_count: int | None):
    self.default_trip_count = default_trip_count
    self.memo: dict[int, np.ndarray] = {}
    self.opaque: set[str] = set()

  def transfer(self, jaxpr: _jaxpr.Jaxpr) -> np.ndarray:
    """``[1 + inputs, outputs]``: longest path from each input (row 0: from the start,
    i.e. constants) to each output; -inf where an output does not depend on an input."""
    key = id(jaxpr)
    if key not in self.memo:
      self.memo[key] = self._transfer(jaxpr)
    return self.memo[key]

  def _transfer(self, jaxpr: _jaxpr.Jaxpr) -> np.ndarray:
    width = 1 + len(jaxpr.invars)
    start = np.full(width, NEG)
    start[0] = 0.0
    env: dict[Any, np.ndarray] = {v: start for v in jaxpr.constvars}
    for i, v in enumerate(jaxpr.invars):
      env[v] = np.full(width, NEG)
      env[v][i + 1] = 0.0
    read = lambda a: start if isinstance(a, _jaxpr.Literal) else env[a]
    producers: dict[Any, Any] = {}
    for eqn in jaxpr.eqns:
      rows = np.stack([start] + [read(a) for a in eqn.invars])  # [1 + k_in, width]
      out = _mp(rows.T, self.eqn_transfer(eqn, producers))  # [width, k_out]
      for j, v in enumerate(eqn.outvars):
        env[v] = out[:, j]
        producers[v] = eqn
    return np.stack([read(a) for a in jaxpr.outvars], axis=1).reshape(width, -1)

  def eqn_transfer(self, eqn: Any, producers: dict[Any, Any]) -> np.ndarray:
    """``[1 + k_in, k_out]`` longest paths through one equation."""
    name = eqn.primitive.name
    if name == "scan":
      p = eqn.params
      return self._loop(p["jaxpr"].jaxpr, p["length"], p["num_consts"], p["num_carry"],
                        len(eqn.invars), len(eqn.outvars))
    if name == "while":
      return self._while(eqn)
    if name == "cond":
      branches = [self.transfer(b.jaxpr) for b in eqn.params["branches"]]
      best = np.maximum.reduce(branches)
      index_row = np.zeros((1, best.shape[1]))  # which branch runs: a dependence, no step
      return np.concatenate([best[:1], index_row, best[1:]])
    if (sub := _jaxpr.call_body(eqn)) is not None:
      return self.transfer(_jaxpr.open_jaxpr(sub)[0])
    if any(isinstance(p, (_jaxpr.Jaxpr, _jaxpr.ClosedJaxpr)) for p in eqn.params.values()):
      self.opaque.add(name)
    weight = 0.0 if (name in _jaxpr.DATA_MOVEMENT
                     or all(_jaxpr.numel(v) == 0 for v in eqn.outvars)
                     or _is_merge(eqn, producers)) else 1.0
    return np.full((1 + len(eqn.invars), len(eqn.outvars)), weight)

  def _loop(self, body: _jaxpr.Jaxpr, length: int, num_consts: int, num_carry: int,
            num_in: int, num_out: int) -> np.ndarray:
    """Transfer of ``length`` iterations of a body with inputs [consts, carry, xs] and
    outputs [carry, ys]; rows of the result: [start, consts, carry, xs]."""
    m = self.transfer(body)
    k, c = num_consts, num_carry
    rc = np.arange(1 + k, 1 + k + c)
    ro = np.array([0, *range(1, 1 + k), *range(1 + k + c, 1 + num_in)], dtype=int)
    a, b = m[np.ix_(rc, range(c))], m[np.ix_(rc, range(c, num_out))]
    u, v = m[np.ix_(ro, range(c))], m[np.ix_(ro, range(c, num_out))]
    e = np.full((1 + num_in, num_out), NEG)
    if length == 0:
      e[np.ix_(rc, range(c))] = _identity(c)
      e[0, c:] = 0.0
      return e
    p_n, s_n = _powers(a, length)
    _, s_prev = _powers(a, length - 1)
    e[np.ix_(rc, range(c))] = p_n
    e[np.ix_(ro, range(c))] = _mp(u, s_n)
    e[np.ix_(rc, range(c, num_out))] = _mp(s_n, b)
    e[np.ix_(ro, range(c, num_out))] = np.maximum(_mp(_mp(u, s_prev), b), v)
    return e

  def _while(self, eqn: Any) -> np.ndarray:
    trips = _jaxpr.while_trip_count(eqn)
    if trips is None:
      if self.default_trip_count is None:
        raise ValueError(
            "sequential_depth: a while_loop whose trip count is not static in the jaxpr; "
            "use fori_loop/scan with Python-int bounds or pass default_trip_count")
      trips = self.default_trip_count
    p = eqn.params
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    # The condition only decides when to stop; its own steps are not counted.
    body = self._loop(p["body_jaxpr"].jaxpr, trips, bn, len(eqn.outvars),
                      len(eqn.invars) - cn, len(eqn.outvars))
    cond_rows = np.full((cn, len(eqn.outvars)), NEG)
    return np.concatenate([body[:1], cond_rows, body[1:]])


def depth_transfer(f: Callable[..., Any], *args: Any,
                   default_trip_count: int | None = None) -> np.ndarray:
  """Longest-path matrix ``[1 + flat inputs, flat outputs]`` of ``f`` at ``args``.

  Entry ``[1 + i, j]`` is the most sequential steps from flat input ``i`` to flat output
  ``j`` (-inf if ``j`` does not depend on ``i``); row 0 is from constants.
  """
  analyser = _Analyser(default_trip_count)
  t = analyser.transfer(jax.make_jaxpr(f)(*args).jaxpr)
  if analyser.opaque:
    warnings.warn("sequential_depth: counted as one step each, bodies not followed: "
                  + ", ".join(sorted(analyser.opaque)))
  return t


def sequential_depth(f: Callable[..., Any], *args: Any,
                     default_trip_count: int | None = None) -> int:
  """The longest chain of dependent compute primitives in ``jax.make_jaxpr(f)(*args)``.

  Args:
    f: a function of arrays (a model goes in as a pure function the caller builds).
    *args: example arguments (arrays or ``jax.ShapeDtypeStruct``s).
    default_trip_count: trip count assumed for a ``while`` loop whose count is not static;
      None raises instead.

  Returns:
    The depth in primitive steps (see the module docstring for what counts).
  """
  t = depth_transfer(f, *args, default_trip_count=default_trip_count)
  return int(max(0.0, t.max(initial=0.0)))


def loop_trip_counts(f: Callable[..., Any], *args: Any) -> list[int]:
  """Cross-check: trip counts of the ``while`` loops in the compiled HLO of ``f``."""
  return cost.hlo_trip_counts(f, *args)


def scan_lengths(f: Callable[..., Any], *args: Any) -> list[int]:
  """The lengths of every ``scan`` in ``jax.make_jaxpr(f)(*args)``, nested calls included."""
  found = []

  def walk(jaxpr):
    for eqn in _jaxpr.open_jaxpr(jaxpr)[0].eqns:
      if eqn.primitive.name == "scan":
        found.append(int(eqn.params["length"]))
      for sub in eqn.params.values():
        if isinstance(sub, (_jaxpr.Jaxpr, _jaxpr.ClosedJaxpr)):
          walk(sub)

  walk(jax.make_jaxpr(f)(*args))
  return found
