"""Any recurrent cell in parallel over time: Newton iterations of an associative scan.

A cell h_t = f(h_{t-1}, x_t) looks inherently serial. Treat all T states as unknowns of
one system h = F(h), with F(h)_t = f(h_{t-1}, x_t), and solve it by Newton's method
(DEER, Lim et al. 2024). Linearising around the current guess h^k gives

  h_t = A_t h_{t-1} + b_t,   A_t = df/dh (h_{t-1}^k, x_t),   b_t = f(h_{t-1}^k, x_t) - A_t h_{t-1}^k,

a *linear* recurrence with matrix coefficients: ``jax.lax.associative_scan`` solves it in
about 2 log2(T) dependent levels with the operator

  (A_i, b_i) then (A_j, b_j) = (A_j A_i, A_j b_i + b_j)

(``ops.linear_recurrence.combine`` where A is diagonal). Whatever A is, if h_{t-1}^k is
already exact so is h_t^{k+1}: after k iterations at least the first k states are exact,
so every method below reaches the solution in at most T iterations (in exact arithmetic);
contracting cells need far fewer, chaotic ones up to T (Gonzalez et al., NeurIPS 2025).

Methods (``METHODS``), D the flattened carry width:

  ``deer``        full Jacobians, ``jax.jacfwd`` under ``vmap``: O(T B D^2) memory,
                  D x D matmuls in the scan; quadratic convergence near the solution.
  ``quasi_deer``  only the exact diagonal of each Jacobian (Gonzalez et al. 2024): D
                  Jacobian-vector products with unit tangents, in chunks of ``DIAG_CHUNK``
                  (``lax.map``), keeping entry i of product i. The cell work equals the
                  full Jacobian's (D jvps), but only O(T B D) is stored and the scan is
                  elementwise. Linear convergence: more iterations.
  ``elk``         damped Newton for cells where DEER's scan overflows (products of
                  Jacobians linearised far from the solution grow like gain^T). Each
                  iteration tries the Newton step with Jacobians scaled by a trust factor
                  alpha = 1 / (1 + lambda) (Levenberg-Marquardt's damping, here as a scale
                  on A); the step is kept if its residual is finite and smaller, else the
                  iteration takes the fixed-point step h <- F(h) (alpha = 0: bounded, and
                  still one more exact state) and lambda grows (4 lambda + 1); a kept step
                  shrinks lambda by 4. This is a simple trust-region form, NOT the
                  Kalman-smoother step of Gonzalez et al. 2024 ("ELK"); full Jacobians.

Convergence: the residual is max |h - F(h)| over T, B and D; a solve has converged when
it is <= tol * max(1, max |F(h)|), with ``tol`` 16 machine epsilons of the state's dtype
unless given. A solve that did not converge is never returned silently: ``on_fail``
"fallback" reruns the cell with ``jax.lax.scan`` (inside ``lax.cond``, so only when needed;
``info.fell_back`` says so) and "raise" raises, naming the residual. Outside ``jit`` the
check runs on the host and raises ``FloatingPointError``; under ``jit`` the same message
comes from a ``jax.debug.callback`` (an ``XlaRuntimeError`` at run time): chosen over
``checkify``, which would make every caller wrap its function.

Gradients: the solver is a ``jax.custom_jvp``. At the solution h* the tangent satisfies
the linear recurrence  dh_t = A_t dh_{t-1} + df_t  (df_t: the cell's jvp in x_t and in the
parameters it closes over, plus A_0 dh_0), solved by one more associative scan; JAX
transposes that scan for reverse mode, so ``jax.grad`` costs one linear scan in reverse
with the transposed Jacobians (implicit differentiation: the Newton iterations are not
differentiated). Exact for ``deer`` and ``elk`` (full A); ``quasi_deer`` uses its
diagonal A here as well, an approximation (tests/test_newton.py measures the gap).
Forward mode (``jax.jvp``) is the rule itself.

Shapes: T time, B batch, D the flattened carry width of one example.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from seqscale.ops import linear_recurrence
from seqscale.ops import recurrent as ref

Array = jax.Array
Carry = Any  # a pytree of floating arrays, each [B, ...]
# cell(carry, x_t) -> carry, batched: carry leaves [B, ...], x_t leaves [B, ...]. Rows of
# the batch must not interact (true of every recurrent cell).
CellFn = Callable[[Carry, Any], Carry]

METHODS = ("deer", "quasi_deer", "elk")
ON_FAIL = ("fallback", "raise")
DEFAULT_MAX_ITERS = 100  # the cap is min(T, this) unless given; T always suffices
DIAG_CHUNK = 16  # unit tangents per vmapped batch when quasi_deer builds the diagonal
TOL_EPS = 16  # default tolerance in machine epsilons of the state dtype


class NewtonInfo(NamedTuple):
  """What a solve did (scalars over the whole batch)."""
  iterations: Array  # int32: Newton updates (linear scans) performed
  converged: Array  # bool: the Newton solution met the tolerance
  residual: Array  # max |h - F(h)| of the Newton solution (before any fallback)
  fell_back: Array  # bool: the states returned come from the sequential lax.scan


class _Settings(NamedTuple):
  method: str
  max_iters: int
  fixed_iters: int | None
  tol: float
  damping: float


# ------------------------------------------------------------------------ the linear step

def combine_matrix(x: tuple[Array, Array], y: tuple[Array, Array]) -> tuple[Array, Array]:
  """Step x then step y, full matrices: ``(A_x, b_x), (A_y, b_y) -> (A_y A_x, A_y b_x + b_y)``.

  A [..., D, D], b [..., D].
  """
  a_x, b_x = x
  a_y, b_y = y
  return (jnp.einsum("...ij,...jk->...ik", a_y, a_x),
          jnp.einsum("...ij,...j->...i", a_y, b_x) + b_y)


def linear_scan(a_TBX: Array, b_TBD: Array) -> Array:
  """h_t = A_t h_{t-1} + b_t from h_{-1} = 0 by ``associative_scan`` over time.

  a_TBX: [T, B, D] (diagonal) or [T, B, D, D]; b_TBD [T, B, D]. Returns h_TBD.
  """
  combine = linear_recurrence.combine if a_TBX.ndim == b_TBD.ndim else combine_matrix
  return jax.lax.associative_scan(combine, (a_TBX, b_TBD), axis=0)[1]


def _apply(a_TBX, h_TBD):
  return a_TBX * h_TBD if a_TBX.ndim == h_TBD.ndim else jnp.einsum("...ij,...j->...i",
                                                                      a_TBX, h_TBD)


def _shift(h0_BD, h_TBD):
  """The state each step starts from: [h0, h_0, ..., h_{T-2}]."""
  return jnp.concatenate([h0_BD[None], h_TBD[:-1]], axis=0)


# ------------------------------------------------------------------ the cell, vectorised
# step(h_D, x, *consts) -> h_D is one example at one time step (closure-converted, so the
# parameters the cell closes over are explicit and get tangents).

def _over_TB(fn):
  return jax.vmap(jax.vmap(fn, (0, 0, None)), (0, 0, None))


def _cell(step, prev_TBD, xs, consts):
  return _over_TB(lambda h, x, c: step(h, x, *c))(prev_TBD, xs, consts)


def _jacobian(step, prev_TBD, xs, consts):  # [T, B, D, D]
  return _over_TB(jax.jacfwd(lambda h, x, c: step(h, x, *c)))(prev_TBD, xs, consts)


def _jacobian_diagonal(step, prev_TBD, xs, consts):  # [T, B, D], no D x D array stored
  D = prev_TBD.shape[-1]

  def entry(i):
    e_TBD = jnp.broadcast_to(jax.nn.one_hot(i, D, dtype=prev_TBD.dtype), prev_TBD.shape)
    col_TBD = jax.jvp(lambda h: _cell(step, h, xs, consts), (prev_TBD,), (e_TBD,))[1]
    return jnp.take(col_TBD, i, axis=-1)

  diag_DTB = jax.lax.map(entry, jnp.arange(D), batch_size=min(D, DIAG_CHUNK))
  return jnp.moveaxis(diag_DTB, 0, -1)


def _coefficients(step, method, prev_TBD, xs, consts):
  if method == "quasi_deer":
    return _jacobian_diagonal(step, prev_TBD, xs, consts)
  return _jacobian(step, prev_TBD, xs, consts)


def _newton_step(a_TBX, f_TBD, prev_TBD):
  # b_t = f_t - A_t h_{t-1}^k; the first step starts from the known h0, so b_0 = f_0.
  b_TBD = f_TBD - _apply(a_TBX, prev_TBD)
  return linear_scan(a_TBX, b_TBD.at[0].set(f_TBD[0]))


def _residual(h_TBD, f_TBD):
  # NaN -> inf by hand: XLA's CPU max reduction may drop NaNs (it gave -inf, measured).
  r = jnp.max(jnp.where(jnp.isnan(h_TBD - f_TBD), jnp.inf, jnp.abs(h_TBD - f_TBD)))
  scale = jnp.max(jnp.where(jnp.isnan(f_TBD), jnp.inf, jnp.abs(f_TBD)))
  return r, jnp.maximum(1.0, scale)


# ------------------------------------------------------------------------ the iterations

def _iterate(step, s: _Settings, h0_BD, xs, consts, h_TBD):
  """Newton iterations from the guess h_TBD: (h_TBD, iterations, converged, residual)."""
  cell = lambda h: _cell(step, _shift(h0_BD, h), xs, consts)
  f_TBD = cell(h_TBD)
  r, scale = _residual(h_TBD, f_TBD)
  dtype = h_TBD.dtype
  lam = jnp.asarray(s.damping, dtype)

  def update(state):
    k, h, f, r, scale, lam = state
    prev = _shift(h0_BD, h)
    a = _coefficients(step, s.method, prev, xs, consts)
    if s.method != "elk":
      h = _newton_step(a, f, prev)
      f = cell(h)
      return (k + 1, h, f, *_residual(h, f), lam)
    h_try = _newton_step(a / (1 + lam), f, prev)
    f_try = cell(h_try)
    r_try, scale_try = _residual(h_try, f_try)
    f_fix = cell(f)  # the fixed-point step h <- F(h)
    r_fix, scale_fix = _residual(f, f_fix)
    ok = jnp.isfinite(r_try) & (r_try < r)
    pick = lambda a_, b_: jnp.where(ok, a_, b_)
    lam = jnp.where(ok, lam / 4, 4 * lam + 1)
    return (k + 1, pick(h_try, f), pick(f_try, f_fix), pick(r_try, r_fix),
            pick(scale_try, scale_fix), lam)

  state = (jnp.int32(0), h_TBD, f_TBD, r, scale, lam)
  if s.fixed_iters is not None:
    state = jax.lax.fori_loop(0, s.fixed_iters, lambda _, st: update(st), state)
  else:
    def going(state):
      k, _, _, r, scale, _ = state
      return (k < s.max_iters) & ~(r <= s.tol * scale) & jnp.isfinite(r)
    state = jax.lax.while_loop(going, update, state)
  k, h_TBD, _, r, scale, _ = state
  return h_TBD, k, jnp.isfinite(r) & (r <= s.tol * scale), r


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _solve(step, s, h0_BD, xs, consts, init_TBD):
  return _iterate(step, s, h0_BD, xs, consts, init_TBD)


@_solve.defjvp
def _solve_jvp(step, s, primals, tangents):
  h0_BD, xs, consts, init_TBD = primals
  dh0_BD, dxs, dconsts, _ = tangents  # the guess does not move the solution
  out = _solve(step, s, h0_BD, xs, consts, init_TBD)
  h_TBD = jax.lax.stop_gradient(out[0])
  prev = _shift(h0_BD, h_TBD)
  a = _coefficients(step, "quasi_deer" if s.method == "quasi_deer" else "deer", prev, xs,
                    consts)
  dprev = jnp.concatenate([dh0_BD[None], jnp.zeros_like(h_TBD[:-1])], axis=0)
  # df_t: the cell's response to dx_t and to the parameters, plus A_0 dh0 at t = 0.
  df_TBD = jax.jvp(lambda p, x, c: _cell(step, p, x, c), (prev, xs, consts),
                   (dprev, dxs, dconsts))[1]
  dh_TBD = linear_scan(a, df_TBD)
  zero = lambda v: np.zeros(np.shape(v), jax.dtypes.float0)
  return out, (dh_TBD, zero(out[1]), zero(out[2]), jnp.zeros_like(out[3]))


def _sequential(step, h0_BD, xs, consts):
  body = jax.vmap(lambda h, x, c: step(h, x, *c), (0, 0, None))
  return jax.lax.scan(lambda h, x: (body(h, x, consts),) * 2, h0_BD, xs)[1]


# ------------------------------------------------------------------------ checks

def _check_settings(method, max_iters, fixed_iters, tol, on_fail, damping):
  if method not in METHODS:
    raise ValueError(f"method={method!r}; allowed: {', '.join(map(repr, METHODS))}")
  for name, value in (("max_iters", max_iters), ("fixed_iters", fixed_iters)):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
      raise ValueError(f"{name}={value!r}; must be None or an int >= 1")
  if on_fail not in ON_FAIL:
    raise ValueError(f"on_fail={on_fail!r}; allowed: {', '.join(map(repr, ON_FAIL))}")
  if tol is not None and not (isinstance(tol, (int, float)) and tol > 0):
    raise ValueError(f"tol={tol!r}; must be None (dtype-dependent) or a float > 0")
  if not (isinstance(damping, (int, float)) and damping >= 0):
    raise ValueError(f"damping={damping!r}; must be a float >= 0")


def _array_leaves(tree, name, leading):
  """The leaves of ``tree``, each an array with ``leading`` leading axes, or one error."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  want = "floating-point arrays" if name == "h0" else "arrays"
  axes = "[B, ...]" if leading == 1 else "[T, B, ...]"
  if not leaves:
    raise TypeError(f"{name} must be a pytree of {want} {axes}; it has no arrays")
  for path, leaf in leaves:
    where = f"{name}{jax.tree_util.keystr(path)}"
    if not isinstance(leaf, (jax.Array, np.ndarray)):
      raise TypeError(f"{name} must be a pytree of {want} {axes}; {where} is a "
                      f"{type(leaf).__name__}")
    if name == "h0" and not jnp.issubdtype(leaf.dtype, jnp.floating):
      raise TypeError(f"{name} must be a pytree of {want} {axes}; {where} has dtype "
                      f"{leaf.dtype}")
    if leaf.ndim < leading:
      raise ValueError(f"{name} must be a pytree of {want} {axes}; {where} has shape "
                       f"{leaf.shape}")
  return [leaf for _, leaf in leaves]


def _check_carry(cell, h0, xs):
  h0_leaves = _array_leaves(h0, "h0", 1)
  xs_leaves = _array_leaves(xs, "xs", 2)
  B, T = h0_leaves[0].shape[0], xs_leaves[0].shape[0]
  if T == 0 or any(a.shape[0] != B for a in h0_leaves) or any(
      a.shape[:2] != (T, B) for a in xs_leaves):
    raise ValueError(f"h0 leaves must be [B, ...] and xs leaves [T, B, ...] with one B and "
                     f"T >= 1; got h0 {[a.shape for a in h0_leaves]}, xs "
                     f"{[a.shape for a in xs_leaves]}")
  x0 = jax.tree.map(lambda a: a[0], xs)
  out = jax.eval_shape(cell, h0, x0)
  same = jax.tree.structure(out) == jax.tree.structure(h0) and all(
      o.shape == a.shape for o, a in zip(jax.tree.leaves(out), h0_leaves))
  if not same:
    got = jax.tree.map(lambda o: o.shape, out)
    raise TypeError(f"cell must map a carry to a carry of the same structure and shapes "
                    f"as h0; h0 {jax.tree.map(jnp.shape, h0)}, cell returned {got}")
  return T


def _raise(converged, residual, iterations, method, tol):
  if not np.all(converged):
    raise FloatingPointError(
        f"parallel_scan(method={method!r}) did not converge: residual={float(residual):.3g}"
        f" (max |h - F(h)|) after {int(iterations)} iterations, tol={tol:.3g}; raise "
        "max_iters, try method='elk', or pass on_fail='fallback'")


# ------------------------------------------------------------------------ the entry points

def parallel_scan(cell: CellFn, h0: Carry, xs: Any, *, method: str = "deer",
                  init: Carry | None = None, max_iters: int | None = None,
                  fixed_iters: int | None = None, tol: float | None = None,
                  on_fail: str = "fallback", damping: float = 0.0
                  ) -> tuple[Carry, NewtonInfo]:
  """The carries of ``lax.scan(lambda c, x: (cell(c, x),) * 2, h0, xs)``, by Newton.

  Args:
    cell: ``cell(carry, x_t) -> carry`` on a batch (carry leaves [B, ...], x_t leaves
      [B, ...]); rows must not interact. It may close over parameters (they get gradients).
    h0: initial carry, a pytree of floating arrays [B, ...] (e.g. (h_BD, c_BD)); flattened
      to D numbers per example.
    xs: pytree of arrays [T, B, ...], time-major.
    method: "deer", "quasi_deer" or "elk" (module docstring).
    init: initial guess for every carry, leaves [T, B, ...]; h0 repeated when None.
    max_iters: cap on Newton updates; min(T, DEFAULT_MAX_ITERS) when None.
    fixed_iters: run exactly this many updates (``lax.fori_loop``, no early stop), so that
      the program has a static depth for ``seqscale.analysis.sequential_depth``; the
      convergence check and ``on_fail`` still apply to the result.
    tol: convergence threshold on max |h - F(h)| (relative to max(1, max |F(h)|));
      ``TOL_EPS`` epsilons of the carry dtype when None.
    on_fail: "fallback" (sequential ``lax.scan``) or "raise" (module docstring).
    damping: ``elk``'s initial Levenberg-Marquardt lambda (0: start with the full step).

  Returns:
    (carries, info): carries with leaves [T, B, ...] (the carry after every step), and a
    ``NewtonInfo``.
  """
  _check_settings(method, max_iters, fixed_iters, tol, on_fail, damping)
  if not callable(cell):
    raise TypeError(f"cell={cell!r}; must be a callable cell(carry, x_t) -> carry")
  T = _check_carry(cell, h0, xs)
  flat0, unravel = ravel_pytree(jax.tree.map(lambda a: a[0], h0))
  dtype = flat0.dtype
  tol = float(TOL_EPS * jnp.finfo(dtype).eps) if tol is None else float(tol)
  settings = _Settings(method, min(T, DEFAULT_MAX_ITERS) if max_iters is None else max_iters,
                       fixed_iters, tol, float(damping))

  add_b = lambda t: jax.tree.map(lambda a: a[None], t)
  drop_b = lambda t: jax.tree.map(lambda a: a[0], t)

  def step(h_D, x):
    new = cell(add_b(unravel(h_D)), add_b(x))
    return ravel_pytree(drop_b(new))[0].astype(dtype)

  step, consts = jax.closure_convert(step, flat0, jax.tree.map(lambda a: a[0, 0], xs))
  flatten = jax.vmap(lambda c: ravel_pytree(c)[0].astype(dtype))
  h0_BD = flatten(h0)
  init_TBD = (jnp.broadcast_to(h0_BD, (T, *h0_BD.shape)) if init is None
              else jax.vmap(flatten)(init))
  h_TBD, iters, converged, residual = _solve(step, settings, h0_BD, xs, tuple(consts),
                                             init_TBD)
  fell_back = jnp.zeros((), bool)
  if on_fail == "fallback":
    fell_back = ~converged
    h_TBD = jax.lax.cond(converged, lambda: h_TBD,
                         lambda: _sequential(step, h0_BD, xs, tuple(consts)))
  elif isinstance(converged, jax.core.Tracer):
    jax.debug.callback(functools.partial(_raise, method=method, tol=tol), converged,
                       residual, iters)
  else:
    _raise(converged, residual, iters, method, tol)
  carries = jax.vmap(jax.vmap(unravel))(h_TBD)
  return carries, NewtonInfo(iters, converged, residual, fell_back)


def run(cell: str, x_BTI: Array, params: ref.Params, carry: ref.Carry | None = None,
        lengths_B: Array | None = None, *, reverse: bool = False, method: str = "deer",
        **solver: Any) -> tuple[Array, ref.Carry, NewtonInfo]:
  """``ops.recurrent.run`` (same arguments and numbers) by ``parallel_scan``.

  Args:
    cell: "rnn", "lstm" or "gru".
    x_BTI: [B, T, I] inputs.
    params: w_ih [I, G*D], w_hh [D, G*D], b_ih [G*D], b_hh [G*D].
    carry: initial carry (zeros when None).
    lengths_B: int [B] valid lengths; a padded step keeps the carry (its Jacobian is the
      identity) and outputs zero. With ``reverse`` as in ``ops.recurrent.scan``.
    reverse: run from t = T-1 down to 0; outputs stay aligned with the inputs.
    method: "deer", "quasi_deer" or "elk".
    **solver: the other keywords of ``parallel_scan``.

  Returns:
    (y_BTD, final carry, info).
  """
  if cell not in ref.CELLS:
    raise ValueError(f"cell={cell!r}; allowed: {', '.join(map(repr, ref.CELLS))}")
  B, T = x_BTI.shape[:2]
  if carry is None:
    carry = ref.zero_carry(cell, B, params["w_hh"].shape[0],
                           jnp.result_type(x_BTI, params["w_ih"]))
  xw_TBG = jnp.swapaxes(ref.project(x_BTI, params), 0, 1)
  valid_TB = (jnp.ones((T, B), bool) if lengths_B is None
              else jnp.arange(T)[:, None] < jnp.asarray(lengths_B)[None, :])
  if reverse:
    xw_TBG, valid_TB = xw_TBG[::-1], valid_TB[::-1]
  fn = ref.CELLS[cell]

  def step(c, x):
    xw_BG, valid_B = x
    new = fn(params, c, xw_BG)[0]
    return jax.tree.map(lambda n, o: jnp.where(valid_B[:, None], n, o), new, c)

  carries, info = parallel_scan(step, carry, (xw_TBG, valid_TB), method=method, **solver)
  h_TBD = carries[0] if cell == "lstm" else carries
  final = jax.tree.map(lambda a: a[-1], carries)
  h_TBD = jnp.where(valid_TB[..., None], h_TBD, 0)
  if reverse:
    h_TBD = h_TBD[::-1]
  return jnp.swapaxes(h_TBD, 0, 1), final, info
