"""Maximum path length between positions, found from the program. Two methods.

**Mixing operations** (``path_length_by_mixing``): run the jaxpr of ``f(x)`` on concrete
values (loops unrolled, so keep n small) and carry, for every element of every
intermediate array and every input position s, the fewest *mixing* primitives
(``dot_general``, ``conv_general_dilated`` by default) on a dependency path from ``x[:, s]``
to that element: a shortest-path (min, +) propagation through the dataflow graph.
Everything else passes dependencies on at cost 0: elementwise ops take the minimum over
their operands, reductions over the reduced axes, data movement moves the distances with
the data (the primitive itself is applied to them). A product term with an exactly-zero
factor carries no dependence, as it carries no gradient, and ``select_n`` follows the case
it selects: so masked attention weights (``exp(-inf) = 0``) and causal masks cut paths.
Each application of a recurrent matmul is one mixing op, so one Elman RNN layer over n
positions gives n (input projection 1 + n - 1 recurrent steps from x_0 to y_{n-1});
attention gives a constant; a plain stack of L layers gives at least L for every pair
(every path goes through every layer), so stacks are measured with residual connections
``x + layer(x)``, which let a path skip the layers it does not need: then a contiguous
causal convolution stack of kernel k gives ceil((t - s) / (k - 1)) for the pair (t, s).

Gated cells have elementwise highways: an LSTM's cell state ``c_t = f * c_{t-1} + ...``
and a GRU's ``h_t = z * h_{t-1} + ...`` carry x_s to y_t through no matmul at all, so
their mixing path is 1 (the input projection) whatever t - s. ``mixing=COMPUTE`` counts
every arithmetic primitive instead (the shortest dependency path in operations, the
shortest-path counterpart of ``sequential_depth``): linear in t - s for every recurrent
cell, constant for attention, the layers needed times a per-layer constant for stacks.

**Stacked layers** (``path_length_by_layers``): the fewest layers L of a stack, built by
``make_fn(L)``, such that ``d y_t / d x_s != 0`` (gradient reachability). A recurrent layer
reaches every s <= t within one layer, so this counts layers, not recurrent steps;
the mixing method counts the steps. Vanishing gradients can underflow to exactly zero in
long chains: use small n and well-scaled random weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seqscale.analysis import _jaxpr

Array = jax.Array
MIXING = frozenset({"dot_general", "conv_general_dilated"})
COMPUTE = "compute"  # ``mixing=COMPUTE``: every primitive that is not data movement counts

_REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and",
                         "reduce_or", "reduce_xor", "argmax", "argmin"})
_CUMULATIVE = frozenset({"cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"})
# Data movement applied to the distances themselves; value = indices of operands that are
# data (the others are indices, used by value).
_MOVES: dict[str, tuple[int, ...] | None] = {
    "reshape": None, "broadcast_in_dim": None, "squeeze": None, "expand_dims": None,
    "transpose": None, "rev": None, "slice": None, "concatenate": None, "pad": None,
    "split": None, "dynamic_slice": (0,), "dynamic_update_slice": (0, 1), "gather": (0,),
    "scatter": (0, 2),
}
_SCATTER_COMBINE = frozenset({"scatter-add", "scatter_add", "scatter-mul", "scatter_mul",
                              "scatter-min", "scatter_min", "scatter-max", "scatter_max"})


@dataclasses.dataclass(frozen=True)
class PathLengths:
  """Path lengths from input positions s to output positions t.

  Attributes:
    length: the maximum of ``matrix`` over the required pairs (all pairs, or s <= t when
      causal); ``inf`` if some required pair is not connected.
    matrix: ``[T_out, S]`` fewest mixing ops (or layers) from ``x_s`` to ``y_t``; ``inf``
      where ``y_t`` does not depend on ``x_s``.
    approximated: primitives handled by the conservative all-to-all rule (every output
      element depends on every input element), which can only shorten paths.
  """
  length: float
  matrix: np.ndarray
  approximated: tuple[str, ...] = ()


def max_path_length(matrix: np.ndarray, causal: bool = False) -> float:
  """Max of ``matrix[t, s]`` over all pairs, or over s <= t if ``causal``."""
  required = np.ones(matrix.shape, bool)
  if causal:
    required = np.tril(required)
  return float(matrix[required].max(initial=0.0))


def _inf(shape: Sequence[int], s: int) -> Array:
  return jnp.full((*shape, s), jnp.inf, jnp.float32)


def _bcast(d: Array, shape: Sequence[int]) -> Array:
  return jnp.broadcast_to(d, (*shape, d.shape[-1]))


def _all_min(d: Array) -> Array:
  return jnp.min(d.reshape(-1, d.shape[-1]), axis=0)


def _dot_fast(d: Array, contract: Sequence[int], batch: Sequence[int], n_other_free: int,
              own_first: bool) -> Array:
  """min over the contracted axes of one operand, laid out as dot_general's output."""
  ndim = d.ndim - 1
  kept = [i for i in range(ndim) if i not in contract]
  r = jnp.min(d, axis=tuple(contract)) if contract else d
  free = [i for i in kept if i not in batch]
  r = jnp.transpose(r, [kept.index(i) for i in (*batch, *free)] + [len(kept)])
  at = len(batch) + (len(free) if own_first else 0)
  return r.reshape(r.shape[:at] + (1,) * n_other_free + r.shape[at:])


def _levels(d: Array) -> np.ndarray:
  v = np.asarray(d)
  return np.unique(v[np.isfinite(v)])


def _threshold(d: Array, op: Callable[[Array], Array], out_shape: Sequence[int]) -> Array:
  """min over linear-op supports: the least level m at which ``op(d <= m) > 0``."""
  out = _inf(out_shape, d.shape[-1])
  apply = jax.vmap(op, in_axes=-1, out_axes=-1)
  for m in _levels(d):
    reach = apply((d <= m).astype(jnp.float32)) > 0
    out = jnp.where(reach & jnp.isinf(out), m, out)
  return out


class _Interpreter:
  """Evaluates a jaxpr on (value, distances) pairs."""

  def __init__(self, num_sources: int, mixing: frozenset[str] | str):
    self.s = num_sources
    self.mixing = mixing
    self.approximated: set[str] = set()

  def run(self, jaxpr: _jaxpr.Jaxpr, consts: Sequence[Any],
          args: Sequence[tuple[Any, Array]]) -> list[tuple[Any, Array]]:
    env: dict[Any, tuple[Any, Array]] = {}
    for v, c in zip(jaxpr.constvars, consts):
      env[v] = (c, _inf(np.shape(c), self.s))
    for v, a in zip(jaxpr.invars, args):
      env[v] = a

    def read(atom):
      if isinstance(atom, _jaxpr.Literal):
        return atom.val, _inf(np.shape(atom.val), self.s)
      return env[atom]

    for eqn in jaxpr.eqns:
      ins = [read(a) for a in eqn.invars]
      outs = self.eqn(eqn, [v for v, _ in ins], [d for _, d in ins])
      for var, out in zip(eqn.outvars, outs):
        env[var] = out
    return [read(a) for a in jaxpr.outvars]

  def eqn(self, eqn: Any, vals: list[Any], dists: list[Array]) -> list[tuple[Any, Array]]:
    name = eqn.primitive.name
    if name == "scan":
      return self.scan(eqn, vals, dists)
    if name == "while":
      return self.while_(eqn, vals, dists)
    if name == "cond":
      index = int(vals[0])
      jaxpr, consts = _jaxpr.open_jaxpr(eqn.params["branches"][index])
      outs = self.run(jaxpr, consts, list(zip(vals[1:], dists[1:])))
      dep = _all_min(dists[0])
      return [(v, jnp.minimum(d, dep)) for v, d in outs]
    if (sub := _jaxpr.call_body(eqn)) is not None:
      jaxpr, consts = _jaxpr.open_jaxpr(sub)
      return self.run(jaxpr, consts, list(zip(vals, dists)))
    out = eqn.primitive.bind(*vals, **eqn.params)
    out_vals = list(out) if eqn.primitive.multiple_results else [out]
    shapes = [v.aval.shape for v in eqn.outvars]
    return list(zip(out_vals, self.dists(eqn, vals, dists, shapes)))

  def dists(self, eqn: Any, vals: list[Any], dists: list[Array],
            shapes: list[Sequence[int]]) -> list[Array]:
    name, params = eqn.primitive.name, eqn.params
    if self.mixing == COMPUTE:
      step = float(name not in _jaxpr.DATA_MOVEMENT)
    else:
      step = float(name in self.mixing)
    if name == "dot_general":
      return [self.dot(params, vals, dists, shapes[0]) + step]
    if name == "conv_general_dilated":
      return [self.conv(params, vals, dists, shapes[0]) + step]
    if name == "mul":
      (a, b), (da, db) = vals, dists
      nz = lambda v: (jnp.asarray(v) != 0)[..., None]
      return [jnp.minimum(_bcast(jnp.where(nz(b), da, jnp.inf), shapes[0]),
                          _bcast(jnp.where(nz(a), db, jnp.inf), shapes[0])) + step]
    if name == "select_n":
      pred = jnp.asarray(vals[0])[..., None]
      out = _inf(shapes[0], self.s)
      for i, d in enumerate(dists[1:]):
        out = jnp.where(pred == i, _bcast(d, shapes[0]), out)
      return [jnp.minimum(out, _bcast(dists[0], shapes[0])) + step]
    if name in _MOVES or name in _SCATTER_COMBINE:
      return [d + step for d in self.move(eqn, vals, dists)]
    if name in _REDUCTIONS or name == "reduce":
      axes = tuple(params["axes"] if "axes" in params else params["dimensions"])
      n = len(vals) // 2 if name == "reduce" else 1  # reduce: operands, then init values
      d = jnp.min(jnp.stack([jnp.min(d, axis=axes) for d in dists[:n]]), axis=0)
      return [d + step for _ in shapes]
    if name in _CUMULATIVE:
      return [jax.lax.cummin(dists[0], axis=params["axis"], reverse=params["reverse"]) + step]
    if name == "sort":
      d = jnp.min(jnp.stack([_bcast(d, shapes[0]) for d in dists]), axis=0)
      d = _bcast(jnp.min(d, axis=params["dimension"], keepdims=True), shapes[0])
      return [d + step for _ in shapes]
    try:
      same = all(tuple(np.broadcast_shapes(*[np.shape(v) for v in vals], s)) == tuple(s)
                 for s in shapes)
    except ValueError:
      same = False
    if same and all(np.ndim(v) in (0, len(shapes[0])) for v in vals):  # elementwise
      d = (jnp.min(jnp.stack([_bcast(d, shapes[0]) for d in dists]), axis=0) if dists
           else _inf(shapes[0], self.s))
      return [d + step for _ in shapes]
    self.approximated.add(name)
    d = (jnp.min(jnp.stack([_all_min(d) for d in dists]), axis=0) if dists
         else jnp.full((self.s,), jnp.inf))
    return [_bcast(d, s) + step for s in shapes]

  def dot(self, params: dict[str, Any], vals: list[Any], dists: list[Array],
          shape: Sequence[int]) -> Array:
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    (a, b), (da, db) = vals, dists
    n_free = lambda v, c, bt: np.ndim(v) - len(c) - len(bt)
    dot = lambda x, y: jax.lax.dot_general(x, y, params["dimension_numbers"])
    if bool(jnp.all(jnp.asarray(b) != 0)):
      ta = _bcast(_dot_fast(da, lc, lb, n_free(b, rc, rb), True), shape)
    else:
      nzb = (jnp.asarray(b) != 0).astype(jnp.float32)
      ta = _threshold(da, lambda x: dot(x, nzb), shape)
    if bool(jnp.all(jnp.asarray(a) != 0)):
      tb = _bcast(_dot_fast(db, rc, rb, n_free(a, lc, lb), False), shape)
    else:
      nza = (jnp.asarray(a) != 0).astype(jnp.float32)
      tb = _threshold(db, lambda y: dot(nza, y), shape)
    return jnp.minimum(ta, tb)

  def conv(self, params: dict[str, Any], vals: list[Any], dists: list[Array],
           shape: Sequence[int]) -> Array:
    (_, w), (dx, dw) = vals, dists
    nzw = (jnp.asarray(w) != 0).astype(jnp.float32)
    p = dict(params, preferred_element_type=None, precision=None)
    out = _threshold(dx, lambda x: jax.lax.conv_general_dilated_p.bind(x, nzw, **p), shape)
    if bool(jnp.any(jnp.isfinite(dw))):  # a kernel that depends on x: all-to-all
      self.approximated.add("conv_general_dilated(kernel)")
      out = jnp.minimum(out, _bcast(_all_min(dw), shape))
    return out

  def move(self, eqn: Any, vals: list[Any], dists: list[Array]) -> list[Array]:
    name, params = eqn.primitive.name, eqn.params
    if name in _SCATTER_COMBINE:
      data = (0, 2)
      fn = lambda op, idx, upd: jax.lax.scatter_min(
          op, idx, upd, params["dimension_numbers"], indices_are_sorted=
          params["indices_are_sorted"], unique_indices=params["unique_indices"],
          mode=params["mode"])
    else:
      data = _MOVES[name] or tuple(range(len(vals)))
      fn = lambda *xs: eqn.primitive.bind(*xs, **params)
    args = [dists[i] if i in data else vals[i] for i in range(len(vals))]
    axes = [-1 if i in data else None for i in range(len(vals))]
    out = jax.vmap(fn, in_axes=axes, out_axes=-1)(*args)
    out = list(out) if eqn.primitive.multiple_results else [out]
    out = [jnp.where(jnp.isnan(d), jnp.inf, d) for d in out]  # gather fills with NaN
    index = [_all_min(dists[i]) for i in range(len(vals)) if i not in data]
    if index:
      dep = jnp.min(jnp.stack(index), axis=0)
      out = [jnp.minimum(d, dep) for d in out]
    return out

  def scan(self, eqn: Any, vals: list[Any], dists: list[Array]) -> list[tuple[Any, Array]]:
    p = eqn.params
    k, c, n = p["num_consts"], p["num_carry"], p["length"]
    jaxpr, consts = _jaxpr.open_jaxpr(p["jaxpr"])
    pairs = list(zip(vals, dists))
    fixed, carry, xs = pairs[:k], pairs[k:k + c], pairs[k + c:]
    ys: list[list[tuple[Any, Array]]] = [None] * n  # type: ignore[list-item]
    for i in (reversed(range(n)) if p["reverse"] else range(n)):
      outs = self.run(jaxpr, consts, fixed + carry + [(v[i], d[i]) for v, d in xs])
      carry, ys[i] = outs[:c], outs[c:]
    stacked = []
    for j, var in enumerate(eqn.outvars[c:]):
      if n == 0:
        stacked.append((jnp.zeros(var.aval.shape, var.aval.dtype),
                        _inf(var.aval.shape, self.s)))
      else:
        stacked.append((jnp.stack([y[j][0] for y in ys]), jnp.stack([y[j][1] for y in ys])))
    return carry + stacked

  def while_(self, eqn: Any, vals: list[Any], dists: list[Array]) -> list[tuple[Any, Array]]:
    p = eqn.params
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    pairs = list(zip(vals, dists))
    cconsts, bconsts, carry = pairs[:cn], pairs[cn:cn + bn], pairs[cn + bn:]
    cond, cond_consts = _jaxpr.open_jaxpr(p["cond_jaxpr"])
    body, body_consts = _jaxpr.open_jaxpr(p["body_jaxpr"])
    while bool(self.run(cond, cond_consts, cconsts + carry)[0][0]):
      carry = self.run(body, body_consts, bconsts + carry)
    return carry


def path_length_by_mixing(f: Callable[[Array], Any], x: Array, *, time_axis: int = 1,
                          causal: bool = False,
                          mixing: frozenset[str] | str = MIXING) -> PathLengths:
  """Fewest mixing primitives on a dependency path from ``x_s`` to ``y_t``, all pairs.

  Args:
    f: a function of one array (parameters closed over), e.g. ``x_BTD -> y_BTD``; if it
      returns a pytree, its first leaf is ``y``.
    x: a concrete example input; position s is ``x`` at index s along ``time_axis``.
    time_axis: the time axis of ``x`` and of ``y``.
    causal: take the maximum over s <= t only.
    mixing: primitive names that count one each, or ``COMPUTE`` for every primitive that
      is not data movement (the shortest path in dependent operations: see below).

  Returns:
    ``PathLengths``; see the module docstring for the rule.
  """
  closed = jax.make_jaxpr(f)(x)
  s = x.shape[time_axis]
  onehot = jnp.moveaxis(jnp.eye(s, dtype=bool), 0, time_axis % x.ndim)
  onehot = onehot.reshape([s if i == time_axis % x.ndim else 1 for i in range(x.ndim)] + [s])
  d0 = jnp.where(jnp.broadcast_to(onehot, (*x.shape, s)), 0.0, jnp.inf).astype(jnp.float32)
  interp = _Interpreter(s, mixing if mixing == COMPUTE else frozenset(mixing))
  outs = interp.run(closed.jaxpr, closed.consts, [(x, d0)])
  d = outs[0][1]  # the first output leaf: [*y.shape, S]
  t_axis = time_axis % (d.ndim - 1)
  other = tuple(i for i in range(d.ndim - 1) if i != t_axis)
  matrix = np.asarray(jnp.min(d, axis=other))
  return PathLengths(length=max_path_length(matrix, causal), matrix=matrix,
                     approximated=tuple(sorted(interp.approximated)))


def reachability(f: Callable[[Array], Any], x: Array, *, time_axis: int = 1) -> np.ndarray:
  """``[T_out, S]`` bool: whether ``d y_t / d x_s`` is nonzero (``y`` = first output leaf)."""
  y_fn = lambda x: jax.tree.leaves(f(x))[0]
  jac = np.asarray(jax.jacrev(y_fn)(x))
  y_ndim = jac.ndim - x.ndim
  ty, tx = time_axis % y_ndim, y_ndim + time_axis % x.ndim
  jac = np.moveaxis(np.abs(jac) > 0, (ty, tx), (0, 1))
  return jac.reshape(jac.shape[0], jac.shape[1], -1).any(axis=-1)


def path_length_by_layers(make_fn: Callable[[int], Callable[[Array], Any]], x: Array,
                          max_layers: int, *, time_axis: int = 1,
                          causal: bool = False) -> PathLengths:
  """Fewest stacked layers connecting ``x_s`` to ``y_t``, by gradient reachability.

  Args:
    make_fn: ``L -> f_L``, a stack of L layers as a function of ``x`` (parameters fixed
      inside, nonzero and well scaled so gradients do not underflow).
    x: example input; position s is index s along ``time_axis``.
    max_layers: the deepest stack tried; pairs still unconnected stay ``inf``.
    time_axis: the time axis of ``x`` and of the output.
    causal: require (and maximise over) only s <= t.

  Returns:
    ``PathLengths`` with ``matrix[t, s]`` the least L with ``d y_t / d x_s != 0``.
  """
  matrix = None
  for layers in range(1, max_layers + 1):
    reach = reachability(make_fn(layers), x, time_axis=time_axis)
    if matrix is None:
      matrix = np.full(reach.shape, np.inf)
    matrix[reach & np.isinf(matrix)] = layers
    required = np.tril(np.ones(matrix.shape, bool)) if causal else np.ones(matrix.shape, bool)
    if np.isfinite(matrix[required]).all():
      break
  assert matrix is not None, "max_layers must be >= 1"
  return PathLengths(length=max_path_length(matrix, causal), matrix=matrix)
