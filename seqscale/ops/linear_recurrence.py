"""Linear recurrences h_t = a_t * h_{t-1} + b_t (diagonal), computed three ways.

A nonlinear cell (``ops.recurrent``) must run its T steps one after another. A *linear*
recurrence need not: the pairs (a_t, b_t) compose with the associative operator

  (a1, b1) . (a2, b2) = (a2 * a1, a2 * b1 + b2)

(apply step 1, then step 2), so every prefix comes out of a parallel scan in about
log2(T) dependent levels. ``linear_recurrence`` offers:

  ``sequential``   ``jax.lax.scan``: T dependent steps, O(T) work.
  ``associative``  ``jax.lax.associative_scan``: ~2 log2(T) levels, O(T) work (more than
                   the scan by a constant factor).
  ``chunked``      a scan inside chunks of ``chunk_size`` steps (all chunks at once), an
                   associative scan across the T / chunk_size chunk summaries, then one
                   elementwise correction: ~chunk_size + 2 log2(T / chunk_size) levels.

All three give the same numbers (to rounding), for real and complex values.
``log_linear_recurrence`` is the log-space variant for positive values (Heinsen 2023, as
used by minGRU / minLSTM, Feng et al. 2024). Shapes: B batch, T length, D width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

MODES = ("sequential", "associative", "chunked")


def combine(x: tuple[Array, Array], y: tuple[Array, Array]) -> tuple[Array, Array]:
  """The associative operator: step x, then step y. ``(a_x, b_x), (a_y, b_y) -> (a, b)``."""
  a_x, b_x = x
  a_y, b_y = y
  return a_y * a_x, a_y * b_x + b_y


def _sequential(a_BTD: Array, b_BTD: Array, reverse: bool) -> Array:
  def body(h_BD, ab):
    a_BD, b_BD = ab
    h_BD = a_BD * h_BD + b_BD
    return h_BD, h_BD

  h0_BD = jnp.zeros_like(b_BTD[:, 0])
  _, h_TBD = jax.lax.scan(body, h0_BD, (jnp.swapaxes(a_BTD, 0, 1), jnp.swapaxes(b_BTD, 0, 1)),
                          reverse=reverse)
  return jnp.swapaxes(h_TBD, 0, 1)


def _associative(a_BTD: Array, b_BTD: Array, reverse: bool) -> Array:
  _, h_BTD = jax.lax.associative_scan(combine, (a_BTD, b_BTD), reverse=reverse, axis=1)
  return h_BTD


def _chunked(a_BTD: Array, b_BTD: Array, chunk_size: int) -> Array:
  """Forward only, zero initial state. T need not be a multiple of ``chunk_size``."""
  B, T = b_BTD.shape[:2]
  C = chunk_size
  N = -(-T // C)  # number of chunks
  pad = [(0, 0), (0, N * C - T)] + [(0, 0)] * (b_BTD.ndim - 2)
  # Identity steps (a=1, b=0) at the end change nothing before them.
  a_BNCD = jnp.pad(a_BTD, pad, constant_values=1).reshape(B, N, C, *a_BTD.shape[2:])
  b_BNCD = jnp.pad(b_BTD, pad).reshape(B, N, C, *b_BTD.shape[2:])

  # 1. Inside every chunk at once, from a zero state: the local states and the running
  #    product of a (how much of the state entering the chunk survives to step c).
  def body(carry, ab):
    (A_BND, h_BND), (a_BND, b_BND) = carry, ab
    A_BND, h_BND = a_BND * A_BND, a_BND * h_BND + b_BND
    return (A_BND, h_BND), (A_BND, h_BND)

  init = (jnp.ones_like(b_BNCD[:, :, 0]), jnp.zeros_like(b_BNCD[:, :, 0]))
  _, (A_CBND, h_CBND) = jax.lax.scan(
      body, init, (jnp.moveaxis(a_BNCD, 2, 0), jnp.moveaxis(b_BNCD, 2, 0)))
  # 2. Across chunks: each chunk is one step (A, h) at its last position; scanning them gives
  #    the true state at the end of every chunk.
  _, end_BND = jax.lax.associative_scan(combine, (A_CBND[-1], h_CBND[-1]), axis=1)
  start_BND = jnp.concatenate([jnp.zeros_like(end_BND[:, :1]), end_BND[:, :-1]], axis=1)
  # 3. Correction: add what the state entering each chunk contributes to each step.
  h_CBND = h_CBND + A_CBND * start_BND[None]
  h_BNCD = jnp.moveaxis(h_CBND, 0, 2)
  return h_BNCD.reshape(B, N * C, *b_BTD.shape[2:])[:, :T]


def _check_args(mode: str, chunk_size: int, reverse: bool) -> None:
  if mode not in MODES:
    raise ValueError(f"mode={mode!r}; allowed: {', '.join(map(repr, MODES))}")
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"chunk_size={chunk_size!r}; must be an int >= 1")
  if not isinstance(reverse, bool):
    raise ValueError(f"reverse={reverse!r}; must be True or False")


def linear_recurrence(a_BTD: Array, b_BTD: Array, h0_BD: Array | None = None, *,
                      mode: str = "sequential", chunk_size: int = 64, reverse: bool = False,
                      lengths_B: Array | None = None) -> tuple[Array, Array]:
  """h_t = a_t * h_{t-1} + b_t elementwise, for t = 0..T-1 (or T-1..0 with ``reverse``).

  Args:
    a_BTD: [B, T, D] decays (real or complex); anything that broadcasts to ``b_BTD``'s
      shape also works, e.g. [D] for a time-invariant decay. D may be several axes.
    b_BTD: [B, T, D] inputs.
    h0_BD: [B, D] initial state (zeros when None).
    mode: "sequential", "associative" or "chunked" (see the module docstring).
    chunk_size: steps per chunk in "chunked" mode; T need not be a multiple of it.
    reverse: run from t = T-1 down to 0 (h_t = a_t * h_{t+1} + b_t); outputs stay
      aligned with the inputs.
    lengths_B: int [B] valid lengths (padding on the right), or None for all T. After an
      example ends its state stops changing and its outputs are zero; with ``reverse`` the
      state stays ``h0`` until the example's own last valid step, where the pass starts.

  Returns:
    (h_BTD, final state h_BD): the state after the last step processed (for each example:
    after its last valid step, or after step 0 with ``reverse``; ``h0`` if it is empty).
  """
  _check_args(mode, chunk_size, reverse)
  b_BTD = jnp.asarray(b_BTD)
  if b_BTD.ndim < 3 or b_BTD.shape[1] == 0:
    raise ValueError(f"b_BTD has shape {b_BTD.shape}; expected [B, T, D] with T >= 1")
  dtype = jnp.result_type(*(v for v in (a_BTD, b_BTD, h0_BD) if v is not None))
  try:
    a_BTD = jnp.broadcast_to(jnp.asarray(a_BTD, dtype), b_BTD.shape)
  except ValueError:
    raise ValueError(f"a_BTD has shape {jnp.shape(a_BTD)}; it must broadcast to "
                     f"b_BTD's shape {b_BTD.shape}") from None
  b_BTD = b_BTD.astype(dtype)
  B, T = b_BTD.shape[:2]
  first = T - 1 if reverse else 0

  valid_BT = None
  if lengths_B is not None:
    lengths_B = jnp.asarray(lengths_B)
    if lengths_B.shape != (B,):
      raise ValueError(f"lengths_B has shape {lengths_B.shape}; expected [{B}]")
    valid_BT = jnp.arange(T)[None, :] < lengths_B[:, None]
    valid_BTD = valid_BT.reshape(B, T, *([1] * (b_BTD.ndim - 2)))
    # Identity steps at padding: the state passes through unchanged.
    a_BTD = jnp.where(valid_BTD, a_BTD, jnp.ones((), dtype))
    b_BTD = jnp.where(valid_BTD, b_BTD, jnp.zeros((), dtype))
  if h0_BD is not None:
    h0_BD = jnp.broadcast_to(jnp.asarray(h0_BD, dtype), b_BTD[:, 0].shape)
    # Fold h0 into the first step processed: h_first = a_first * h0 + b_first.
    b_BTD = b_BTD.at[:, first].add(a_BTD[:, first] * h0_BD)

  if mode == "sequential":
    h_BTD = _sequential(a_BTD, b_BTD, reverse)
  elif mode == "associative":
    h_BTD = _associative(a_BTD, b_BTD, reverse)
  elif reverse:
    h_BTD = jnp.flip(_chunked(jnp.flip(a_BTD, 1), jnp.flip(b_BTD, 1), chunk_size), 1)
  else:
    h_BTD = _chunked(a_BTD, b_BTD, chunk_size)

  final_BD = h_BTD[:, 0] if reverse else h_BTD[:, -1]
  if valid_BT is not None:
    h_BTD = jnp.where(valid_BTD, h_BTD, jnp.zeros((), dtype))
  return h_BTD, final_BD


def log_linear_recurrence(log_a_BTD: Array, log_b_BTD: Array,
                          log_h0_BD: Array | None = None) -> Array:
  """h_t = exp(log_a_t) * h_{t-1} + exp(log_b_t) for positive values, in log space.

  Heinsen (2023): with a*_t = sum_{s<=t} log_a_s,
  ``log h_t = a*_t + logsumexp(log_h0, logcumsumexp_t(log_b - a*))``: a cumulative sum and a
  cumulative log-sum-exp, both parallel scans (the "parallel mode" of Feng et al. 2024).
  The subtraction ``log_b - a*`` grows with T; float32 keeps ~1e-5 relative error while
  |a*_T| stays below a few hundred.

  Args:
    log_a_BTD: [B, T, D] log decays (real).
    log_b_BTD: [B, T, D] log inputs (real; -inf for an input of 0).
    log_h0_BD: [B, D] log initial state, or None for h0 = 0.

  Returns:
    h_BTD (not its log).
  """
  log_a_BTD, log_b_BTD = jnp.broadcast_arrays(jnp.asarray(log_a_BTD), jnp.asarray(log_b_BTD))
  if log_b_BTD.ndim < 3:
    raise ValueError(f"log_b_BTD has shape {log_b_BTD.shape}; expected [B, T, D]")
  if jnp.iscomplexobj(log_a_BTD) or jnp.iscomplexobj(log_b_BTD):
    raise ValueError("log_linear_recurrence takes real log values (positive h); "
                     "use linear_recurrence for complex values")
  a_star_BTD = jnp.cumsum(log_a_BTD, axis=1)
  log_sum_BTD = jax.lax.cumlogsumexp(log_b_BTD - a_star_BTD, axis=1)
  if log_h0_BD is not None:
    log_sum_BTD = jnp.logaddexp(jnp.asarray(log_h0_BD)[:, None], log_sum_BTD)
  return jnp.exp(a_star_BTD + log_sum_BTD)


# ------------------------------------------------------------ coefficients of the models

def g(x: Array) -> Array:
  """minGRU's positive activation: x + 0.5 for x >= 0, sigmoid(x) below (continuous)."""
  return jnp.where(x >= 0, jnp.maximum(x, 0) + 0.5, jax.nn.sigmoid(x))


def log_g(x: Array) -> Array:
  """log g(x), computed without forming g(x) where it is small."""
  return jnp.where(x >= 0, jnp.log(jnp.maximum(x, 0) + 0.5), -jax.nn.softplus(-x))


def mingru_coefficients(k_BTD: Array, pre_h_BTD: Array, *,
                        log_space: bool = False) -> tuple[Array, Array]:
  """minGRU as h_t = a_t h_{t-1} + b_t: z = sigmoid(k), a = 1 - z, b = z * h~.

  h~ = pre_h, or g(pre_h) with ``log_space`` (positive, as log space needs). Returns
  (a_BTD, b_BTD), or (log a, log b) with ``log_space``.
  """
  if log_space:
    return -jax.nn.softplus(k_BTD), -jax.nn.softplus(-k_BTD) + log_g(pre_h_BTD)
  return jax.nn.sigmoid(-k_BTD), jax.nn.sigmoid(k_BTD) * pre_h_BTD


def minlstm_coefficients(k_f_BTD: Array, k_i_BTD: Array, pre_h_BTD: Array, *,
                         log_space: bool = False) -> tuple[Array, Array]:
  """minLSTM: f' = f / (f + i), i' = i / (f + i) (f, i sigmoids); a = f', b = i' * h~.

  Computed as in the paper through ``d = log(i / f) = softplus(-k_f) - softplus(-k_i)``:
  f' = sigmoid(-d), i' = sigmoid(d). Returns (a, b), or (log a, log b) with ``log_space``
  (where h~ = g(pre_h)).
  """
  d_BTD = jax.nn.softplus(-k_f_BTD) - jax.nn.softplus(-k_i_BTD)
  if log_space:
    return -jax.nn.softplus(d_BTD), -jax.nn.softplus(-d_BTD) + log_g(pre_h_BTD)
  return jax.nn.sigmoid(-d_BTD), jax.nn.sigmoid(d_BTD) * pre_h_BTD


def lru_lambda(nu_log_D: Array, theta_log_D: Array) -> Array:
  """LRU eigenvalues lambda = exp(-exp(nu_log) + i exp(theta_log)), |lambda| < 1. [D] complex."""
  return jnp.exp(-jnp.exp(nu_log_D) + 1j * jnp.exp(theta_log_D))


def lru_ring_init(key: Array, size: int, r_min: float, r_max: float,
                  max_phase: float) -> tuple[Array, Array, Array]:
  """Orvieto et al. (2023): lambda uniform on the ring r_min <= |lambda| <= r_max.

  Returns (nu_log_D, theta_log_D, gamma_log_D), float32, with gamma = sqrt(1 - |lambda|^2)
  the input normalisation (kept trainable, as in the paper).
  """
  k1, k2 = jax.random.split(key)
  # Away from 0 so that the logs stay finite.
  u1 = jax.random.uniform(k1, (size,), jnp.float32, 1e-7, 1.0)
  u2 = jax.random.uniform(k2, (size,), jnp.float32, 1e-7, 1.0)
  r2 = jnp.minimum(u1 * (r_max**2 - r_min**2) + r_min**2, 1.0 - 2.0**-24)  # |lambda|^2 < 1
  nu_log = jnp.log(-0.5 * jnp.log(r2))
  theta_log = jnp.log(max_phase * u2)
  # 1 - |lambda|^2 = 1 - exp(-2 nu), via expm1 so |lambda| -> 1 does not round to log(0).
  gamma_log = 0.5 * jnp.log(-jnp.expm1(-2.0 * jnp.exp(nu_log)))
  return nu_log, theta_log, gamma_log
