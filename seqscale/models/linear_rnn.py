"""Linear recurrent models: minGRU, minLSTM (Feng et al. 2024) and the LRU (Orvieto et al. 2023).

Their state evolves linearly, h_t = a_t * h_{t-1} + b_t, with a_t and b_t depending on x_t
only, so ``seqscale.ops.linear_recurrence`` can compute all T states with a sequential scan,
an associative (parallel) scan or a chunked mix: ``mode`` picks which, and all give the
same outputs. States for ``step`` are tuples over layers of h_BD (complex for the LRU).

The projections run in ``dtype``; the recurrence in at least float32, because a long
product of decays in bfloat16 loses the state.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from seqscale.checks import check_int
from seqscale.models.registry import register
from seqscale.ops import linear_recurrence as ops

Array = jax.Array


class _Base(nnx.Module):
  """What every linear RNN here shares: the common arguments, dtypes, input checks, masks."""

  interface = "sequence"

  def __init__(self, in_features: int, hidden_features: int, num_layers: int, mode: str,
               chunk_size: int, dropout_rate: float, dtype: Any):
    check_int("in_features", in_features, 1)
    check_int("hidden_features", hidden_features, 1)
    check_int("num_layers", num_layers, 1)
    check_int("chunk_size", chunk_size, 1)
    if mode not in ops.MODES:
      raise ValueError(f"mode={mode!r}; allowed: {', '.join(map(repr, ops.MODES))}")
    if (isinstance(dropout_rate, bool) or not isinstance(dropout_rate, (int, float))
        or not 0.0 <= dropout_rate < 1.0):
      raise ValueError(f"dropout_rate={dropout_rate!r}; must be a float in [0, 1)")
    self.in_features, self.hidden_features, self.num_layers = (
        in_features, hidden_features, num_layers)
    self.mode, self.chunk_size, self.dtype = mode, chunk_size, dtype
    self.causal, self.out_features = True, hidden_features

  def _dtypes(self, x: Array) -> tuple[Any, Any]:
    dtype = self.dtype if self.dtype is not None else jnp.promote_types(x.dtype, jnp.float32)
    return dtype, jnp.promote_types(dtype, jnp.float32)

  def _param_dtype(self) -> Any:
    return self.dtype if self.dtype is not None else jnp.float32

  def _lengths(self, x_BTI: Array, mask: Array | None) -> Array | None:
    """Checks x_BTI; the valid lengths_B of a right-padded ``mask`` (None: no padding)."""
    if x_BTI.ndim != 3 or x_BTI.shape[-1] != self.in_features:
      raise ValueError(f"x_BTI has shape {x_BTI.shape}; expected [B, T, {self.in_features}]")
    return None if mask is None else jnp.sum(mask, axis=-1, dtype=jnp.int32)

  @staticmethod
  def _zero_padding(y_BTD: Array, mask: Array | None) -> Array:
    return y_BTD if mask is None else jnp.where(mask[..., None], y_BTD, 0)

  def _zero_states(self, width: int, dtype: Any, batch_size: int) -> tuple[Array, ...]:
    return tuple(jnp.zeros((batch_size, width), dtype) for _ in range(self.num_layers))

  def _scan(self, a_BTD: Array, b_BTD: Array, lengths_B: Array | None) -> Array:
    h_BTD, _ = ops.linear_recurrence(a_BTD, b_BTD, mode=self.mode, chunk_size=self.chunk_size,
                                     lengths_B=lengths_B)
    return h_BTD


# ------------------------------------------------------------------------ minGRU, minLSTM

class _MinRNN(_Base):
  """A stack of minGRU / minLSTM layers; subclasses set ``num_gates`` and ``_coefficients``.

  Layers stack as the LSTM's do: layer l reads layer l-1's states, with dropout between
  layers, and nothing else (no residuals, no norms), so the model is the paper's equations.
  Each layer has one ``nnx.Linear`` (``layers[l].kernel`` [I, G*D], ``.bias`` [G*D]) whose
  output splits into the G pre-activations, in the order the subclass names.
  """

  num_gates: int = 0

  def __init__(self, in_features: int, hidden_features: int, num_layers: int = 1,
               mode: str = "associative", chunk_size: int = 64, log_space: bool = False,
               dropout_rate: float = 0.0, dtype: Any = None, *, rngs: nnx.Rngs):
    super().__init__(in_features, hidden_features, num_layers, mode, chunk_size, dropout_rate,
                     dtype)
    if not isinstance(log_space, bool):
      raise ValueError(f"log_space={log_space!r}; must be True or False")
    self.log_space = log_space
    self.layers = nnx.List([
        nnx.Linear(in_features if l == 0 else hidden_features,
                   self.num_gates * hidden_features, dtype=dtype, rngs=rngs)
        for l in range(num_layers)])
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

  def _coefficients(self, pre_BxG: Array) -> tuple[Array, Array]:
    raise NotImplementedError

  def __call__(self, x_BTI: Array, *, mask: Array | None = None) -> Array:
    """[B, T, I] -> [B, T, hidden_features]; ``mask`` bool [B, T], padding on the right.

    With ``log_space``, h~ = g(.) > 0 and ``mode="associative"`` runs the paper's log-space
    parallel scan (``ops.log_linear_recurrence``); "sequential" and "chunked" run the same
    recurrence in linear space. Outputs at padding are zero.
    """
    lengths_B = self._lengths(x_BTI, mask)
    dtype, scan_dtype = self._dtypes(x_BTI)
    h_BTD = x_BTI.astype(dtype)
    for l, layer in enumerate(self.layers):
      if l > 0:
        h_BTD = self.dropout(h_BTD)
      a_BTD, b_BTD = self._coefficients(layer(h_BTD).astype(scan_dtype))
      if self.log_space and self.mode == "associative":
        h_BTD = ops.log_linear_recurrence(a_BTD, b_BTD)
      elif self.log_space:
        h_BTD = self._scan(jnp.exp(a_BTD), jnp.exp(b_BTD), lengths_B)
      else:
        h_BTD = self._scan(a_BTD, b_BTD, lengths_B)
      h_BTD = h_BTD.astype(dtype)
    # The log-space scan does not take lengths; it is causal, so zeroing afterwards is exact.
    return self._zero_padding(h_BTD, mask)

  def init_state(self, batch_size: int, max_length: int) -> tuple[Array, ...]:
    """Zero states h_BD per layer (``max_length`` is unused: the state is all there is)."""
    del max_length
    scan_dtype = jnp.promote_types(self._param_dtype(), jnp.float32)
    return self._zero_states(self.hidden_features, scan_dtype, batch_size)

  def step(self, x_BI: Array, state: tuple[Array, ...]) -> tuple[Array, tuple[Array, ...]]:
    """One time step: x_BI [B, I] -> (y_BD [B, hidden_features], next state)."""
    dtype, scan_dtype = self._dtypes(x_BI)
    y_BD = x_BI.astype(dtype)
    new_state = []
    for l, layer in enumerate(self.layers):
      if l > 0:
        y_BD = self.dropout(y_BD)
      a_BD, b_BD = self._coefficients(layer(y_BD).astype(scan_dtype))
      if self.log_space:
        a_BD, b_BD = jnp.exp(a_BD), jnp.exp(b_BD)
      h_BD = a_BD * state[l] + b_BD
      new_state.append(h_BD)
      y_BD = h_BD.astype(dtype)
    return y_BD, tuple(new_state)


@register("mingru")
class MinGRU(_MinRNN):
  """minGRU: z = sigmoid(W_z x), h~ = W_h x, h_t = (1 - z) h_{t-1} + z h~ (gates z, h~).

  ``log_space=True`` uses h~ = g(W_h x) (g(v) = v + 0.5 for v >= 0, sigmoid(v) below) so
  the state stays positive and the parallel scan can run in log space, as in the paper.
  """

  num_gates = 2

  def _coefficients(self, pre_BxG: Array) -> tuple[Array, Array]:
    k, pre_h = jnp.split(pre_BxG, 2, axis=-1)
    return ops.mingru_coefficients(k, pre_h, log_space=self.log_space)


@register("minlstm")
class MinLSTM(_MinRNN):
  """minLSTM: f, i = sigmoid(W_f x), sigmoid(W_i x), h~ = W_h x (gates f, i, h~);
  h_t = f/(f+i) h_{t-1} + i/(f+i) h~. ``log_space`` as in ``MinGRU``.
  """

  num_gates = 3

  def _coefficients(self, pre_BxG: Array) -> tuple[Array, Array]:
    k_f, k_i, pre_h = jnp.split(pre_BxG, 3, axis=-1)
    return ops.minlstm_coefficients(k_f, k_i, pre_h, log_space=self.log_space)


# ---------------------------------------------------------------------------------- LRU

class LRULayer(nnx.Module):
  """One LRU (the paper's Appendix A) plus its position-wise mixing and a residual.

    x_t = lambda * x_{t-1} + gamma * (B u_t)      lambda, gamma, x_t: [N] complex / real
    y_t = Re(C x_t) + D * u_t                     u_t, y_t: [H]
    out_t = u_t + Dense(GELU(y_t))

  Parameters: ``nu_log``, ``theta_log``, ``gamma_log`` [N]; ``B_re``, ``B_im`` [H, N] and
  ``C_re``, ``C_im`` [N, H] (laid out for ``u @ B``, ``x @ C``: the paper's transposes);
  ``D`` [H]; ``mix`` (Dense H -> H). The paper's GLU is simplified to GELU + Dense.
  """

  def __init__(self, hidden_features: int, state_features: int, r_min: float, r_max: float,
               max_phase: float, dropout_rate: float, dtype: Any, *, rngs: nnx.Rngs):
    H, N = hidden_features, state_features
    nu_log, theta_log, gamma_log = ops.lru_ring_init(rngs.params(), N, r_min, r_max,
                                                     max_phase)
    self.nu_log = nnx.Param(nu_log)
    self.theta_log = nnx.Param(theta_log)
    self.gamma_log = nnx.Param(gamma_log)
    # Glorot-like, as the paper: B ~ N(0, 1/(2H)) per part, C ~ N(0, 1/N) per part.
    normal = lambda shape, scale: nnx.Param(
        jax.random.normal(rngs.params(), shape, jnp.float32) * scale)
    self.B_re = normal((H, N), 1.0 / math.sqrt(2 * H))
    self.B_im = normal((H, N), 1.0 / math.sqrt(2 * H))
    self.C_re = normal((N, H), 1.0 / math.sqrt(N))
    self.C_im = normal((N, H), 1.0 / math.sqrt(N))
    self.D = normal((H,), 1.0)
    self.mix = nnx.Linear(H, H, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

  def coefficients(self, u_BxH: Array, dtype: Any) -> tuple[Array, Array]:
    """(lambda_N, gamma * B u [..., N]) in the complex ``dtype``; ``B u`` computed in u's
    dtype (the projections' dtype), then widened for the recurrence."""
    real = jnp.finfo(dtype).dtype
    lam_N = ops.lru_lambda(self.nu_log[...].astype(real), self.theta_log[...].astype(real))
    gamma_N = jnp.exp(self.gamma_log[...].astype(real))
    proj = lambda w: (u_BxH @ w[...].astype(u_BxH.dtype)).astype(real)
    bu = proj(self.B_re) + 1j * proj(self.B_im)
    return lam_N.astype(dtype), (bu * gamma_N).astype(dtype)

  def readout(self, x_BxN: Array, u_BxH: Array) -> Array:
    """``u + Dense(GELU(Re(C x) + D u))``, [..., N] complex, [..., H] -> [..., H], in u's
    dtype (the state narrowed to it for ``C x``)."""
    dtype = u_BxH.dtype
    cast = lambda a: a.astype(dtype)
    y = (cast(x_BxN.real) @ cast(self.C_re[...]) - cast(x_BxN.imag) @ cast(self.C_im[...])
         + cast(self.D[...]) * u_BxH)
    y = self.mix(jax.nn.gelu(y))
    return u_BxH + self.dropout(y)


@register("lru")
class LRU(_Base):
  """Linear Recurrent Unit (Orvieto et al. 2023): ``Linear(I -> H)``, then ``num_layers``
  ``LRULayer``s of width H = ``hidden_features`` and state size N = ``state_features``
  (default H). Causal; stepping equals the full call.
  """

  def __init__(self, in_features: int, hidden_features: int, state_features: int | None = None,
               num_layers: int = 1, r_min: float = 0.0, r_max: float = 1.0,
               max_phase: float = 2 * math.pi, mode: str = "associative", chunk_size: int = 64,
               dropout_rate: float = 0.0, dtype: Any = None, *, rngs: nnx.Rngs):
    super().__init__(in_features, hidden_features, num_layers, mode, chunk_size, dropout_rate,
                     dtype)
    if state_features is not None:
      check_int("state_features", state_features, 1)
    for name, value in (("r_min", r_min), ("r_max", r_max), ("max_phase", max_phase)):
      if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r}; must be a number")
    if not 0.0 <= r_min <= r_max <= 1.0:
      raise ValueError(f"r_min={r_min!r}, r_max={r_max!r}; need 0 <= r_min <= r_max <= 1")
    if not max_phase > 0:
      raise ValueError(f"max_phase={max_phase!r}; must be > 0")
    self.state_features = state_features or hidden_features
    self.encoder = nnx.Linear(in_features, hidden_features, dtype=dtype, rngs=rngs)
    self.layers = nnx.List([
        LRULayer(hidden_features, self.state_features, r_min, r_max, max_phase, dropout_rate,
                 dtype, rngs=rngs) for _ in range(num_layers)])

  def _complex(self, x: Array) -> Any:
    return jnp.promote_types(self._dtypes(x)[1], jnp.complex64)

  def __call__(self, x_BTI: Array, *, mask: Array | None = None) -> Array:
    """[B, T, I] -> [B, T, hidden_features]; ``mask`` bool [B, T], padding on the right.

    Outputs at padding are zero.
    """
    lengths_B = self._lengths(x_BTI, mask)
    dtype, cdtype = self._dtypes(x_BTI)[0], self._complex(x_BTI)
    u_BTH = self.encoder(x_BTI.astype(dtype))
    for layer in self.layers:
      lam_N, bu_BTN = layer.coefficients(u_BTH, cdtype)
      u_BTH = layer.readout(self._scan(lam_N, bu_BTN, lengths_B), u_BTH)
    return self._zero_padding(u_BTH, mask)

  def init_state(self, batch_size: int, max_length: int) -> tuple[Array, ...]:
    """Zero complex states x_BN per layer (``max_length`` is unused)."""
    del max_length
    cdtype = jnp.promote_types(self._param_dtype(), jnp.complex64)
    return self._zero_states(self.state_features, cdtype, batch_size)

  def step(self, x_BI: Array, state: tuple[Array, ...]) -> tuple[Array, tuple[Array, ...]]:
    """One time step: x_BI [B, I] -> (y_BD [B, hidden_features], next state)."""
    dtype, cdtype = self._dtypes(x_BI)[0], self._complex(x_BI)
    u_BH = self.encoder(x_BI.astype(dtype))
    new_state = []
    for l, layer in enumerate(self.layers):
      lam_N, bu_BN = layer.coefficients(u_BH, cdtype)
      h_BN = lam_N * state[l] + bu_BN
      new_state.append(h_BN)
      u_BH = layer.readout(h_BN, u_BH)
    return u_BH, tuple(new_state)
