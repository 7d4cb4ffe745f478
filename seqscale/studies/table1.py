"""Table 1 of "Attention Is All You Need" (Vaswani et al. 2017), measured from the program.

The paper asserts, per layer over n positions of width d (kernel k, window r):

  layer                      complexity    sequential ops   maximum path length
  self-attention             O(n^2 d)      O(1)             O(1)
  recurrent                  O(n d^2)      O(n)             O(n)
  convolutional              O(k n d^2)    O(1)             O(n/k) contiguous, O(log_k n) dilated
  restricted self-attention  O(r n d)      O(1)             O(n/r)

Here every layer type is one pure function ``layer(params, x_BTD) -> y_BTD`` built from
``seqscale.ops`` and every number is read off the program JAX builds by ``seqscale.analysis``:

- FLOPs: XLA's count of the compiled forward, and of forward+backward (gradients with
  respect to the parameters and the input), with loop bodies times their trip counts;
- memory: temporary bytes of the compiled forward+backward;
- sequential depth: the longest chain of dependent primitives in the forward jaxpr (a scan
  of n steps counts its body n times, an associative scan its tree);
- path length: the shortest dependency path, in primitive operations (``COMPUTE``), from
  ``x_s`` to ``y_t``, maximised over s <= t, through a residual stack ``x + layer(x)`` just
  deep enough to connect every pair (1 layer for attention and recurrences, ceil((n-1)/(k-1))
  contiguous convolutions, ceil(log_k n) dilated ones, ceil((n-1)/r) restricted attentions).
  Found by evaluating the unrolled program at small n. The matmul-only count (``MIXING``) is
  kept beside it: it is 1 for the gated cells and linear recurrences, whose state is an
  elementwise highway (a finding, see ``MIXING_NOTE``).

All layers are causal (decoder form). ``sweep`` measures, ``compare`` fits log-log exponents
and gives a verdict per cell in the regime stated, ``run`` writes ``table1.md``, plots and
``results.json``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seqscale import outputs
from seqscale.analysis import cost
from seqscale.analysis import depth
from seqscale.analysis import paths
from seqscale.ops import attention
from seqscale.ops import conv
from seqscale.ops import linear_recurrence
from seqscale.ops import recurrent

Array = jax.Array
Params = Mapping[str, Array]


@dataclasses.dataclass(frozen=True)
class Settings:
  """What ``sweep`` measures. Defaults: about 4.5 min on 2 CPU cores (3.5 min of CPU)."""
  layers: tuple[str, ...] = ()  # empty: every layer in LAYERS
  n_values: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)  # at d_fixed
  d_fixed: int = 64
  d_values: tuple[int, ...] = (32, 64, 128, 256, 512)  # at n_fixed
  n_fixed: int = 4096
  path_max_n: int = 64  # path length (unrolled evaluation) only at n <= this
  k: int = 3  # kernel of the contiguous and separable convolutions
  k_dilated: int = 2  # kernel of the dilated stack, dilations k^i (WaveNet's 2)
  r: int = 8  # window of restricted self-attention: keys t - r .. t
  heads: int = 4
  regime: int = 16  # attention's n^2 d regime: n >= regime * d
  seed: int = 0

  def __post_init__(self):
    validate(self)

  def layer_names(self) -> tuple[str, ...]:
    return self.layers or tuple(LAYERS)


def make_settings(quick: bool = False, n_values: Sequence[int] | None = None,
                  d_values: Sequence[int] | None = None,
                  layers: Sequence[str] | None = None) -> Settings:
  """The default (or quick) settings with the given sweeps; the d sweep runs at max(n)."""
  config = QUICK if quick else Settings()
  changes: dict[str, Any] = {}
  if n_values:
    changes.update(n_values=tuple(n_values), n_fixed=max(n_values))
  if d_values:
    changes["d_values"] = tuple(d_values)
  if layers:
    changes["layers"] = tuple(layers)
  return dataclasses.replace(config, **changes)


def validate(config: Settings) -> None:
  """Raises ``ValueError`` naming the field, its value and what is allowed."""
  unknown = [name for name in config.layers if name not in LAYERS]
  if unknown:
    raise ValueError(f"layers={unknown}: unknown; allowed: {', '.join(LAYERS)}")
  for field in ("n_values", "d_values"):
    values = getattr(config, field)
    if not values or any(not isinstance(v, int) or v < 2 for v in values):
      raise ValueError(f"{field}={values!r}: must be a non-empty list of ints >= 2")
  for field in ("d_fixed", "n_fixed", "k", "k_dilated", "r", "heads", "regime"):
    value = getattr(config, field)
    if not isinstance(value, int) or value < (2 if field.startswith("k") else 1):
      raise ValueError(f"{field}={value!r}: must be an int >= "
                       f"{2 if field.startswith('k') else 1}")
  for field in ("d_values", "d_fixed"):
    value = getattr(config, field)
    if any(d % config.heads for d in (value if field == "d_values" else [value])):
      raise ValueError(f"{field}={value!r}: every d must be a multiple of "
                       f"heads={config.heads}")


# A CPU-minute smoke run: three n, two d, path length at n = 8 only. Its ranges are too
# short to judge the paper's regimes; the verdicts mean little.
QUICK = Settings(n_values=(8, 32, 128), d_fixed=16, d_values=(16, 32), n_fixed=128,
                 path_max_n=8, heads=2, regime=2)


# ------------------------------------------------------------------------- the layers


def _attention(kind: str) -> Callable[..., Array]:
  """kind: "full" (causal), "masked" (causal, local_window=r) or "blocked" (local_attention)."""
  def apply(p: Params, x_BTD: Array, config: Settings, dilation: int) -> Array:
    del dilation
    q, k, v = (attention.project_heads(x_BTD, p[w]) for w in ("wq", "wk", "wv"))
    if kind == "blocked":
      out_BTHK = attention.local_attention(q, k, v, config.r)
    else:
      # The einsum reference: "masked" measures what a mask costs (all n^2 scores).
      out_BTHK = attention.attention(
          q, k, v, impl="reference", causal=True,
          local_window=config.r if kind == "masked" else None)
    return attention.merge_heads(out_BTHK, p["wo"])
  return apply


def _recurrent(cell: str) -> Callable[..., Array]:
  return lambda p, x_BTD, config, dilation: recurrent.run(cell, x_BTD, p)[0]


def _conv(p: Params, x_BTD: Array, config: Settings, dilation: int) -> Array:
  return conv.conv1d(x_BTD, p["w"], p["b"], dilation=dilation, causal=True)


def _separable(p: Params, x_BTD: Array, config: Settings, dilation: int) -> Array:
  return conv.separable_conv1d(x_BTD, p["w_dw"], p["w_pw"], p["b"], dilation=dilation)


def _linear(mode: str) -> Callable[..., Array]:
  def apply(p: Params, x_BTD: Array, config: Settings, dilation: int) -> Array:
    a_BTD, b_BTD = linear_recurrence.mingru_coefficients(x_BTD @ p["wk"], x_BTD @ p["wh"])
    return linear_recurrence.linear_recurrence(a_BTD, b_BTD, mode=mode)[0]
  return apply


def _init(shapes: Callable[[int, Settings], dict[str, tuple[tuple[int, ...], int]]]
          ) -> Callable[..., Params]:
  """``shapes(d, config) -> {name: (shape, fan_in)}``; weights N(0, 1 / fan_in)."""
  def init(key: Array, d: int, config: Settings) -> Params:
    spec = sorted(shapes(d, config).items())
    keys = jax.random.split(key, len(spec))
    return {name: jax.random.normal(k, shape) / math.sqrt(fan_in)
            for k, (name, (shape, fan_in)) in zip(keys, spec)}
  return init


def _attn_shapes(d: int, c: Settings) -> dict[str, tuple[tuple[int, ...], int]]:
  K = d // c.heads
  return {"wq": ((d, c.heads, K), d), "wk": ((d, c.heads, K), d), "wv": ((d, c.heads, K), d),
          "wo": ((c.heads, K, d), d)}


_BIAS = 100  # biases: "fan-in" 100, i.e. N(0, 0.1^2)
_rec_shapes = lambda g: (lambda d, c: {"w_ih": ((d, g * d), d), "w_hh": ((d, g * d), d),
                                       "b_ih": ((g * d,), _BIAS), "b_hh": ((g * d,), _BIAS)})
_conv_shapes = lambda kernel: (lambda d, c: {"w": ((kernel(c), d, d), kernel(c) * d),
                                             "b": ((d,), _BIAS)})
_sep_shapes = lambda d, c: {"w_dw": ((c.k, d), c.k), "w_pw": ((d, d), d),
                            "b": ((d,), _BIAS)}
_lin_shapes = lambda d, c: {"wk": ((d, d), d), "wh": ((d, d), d)}

_one = lambda n, c: 1
_contiguous = lambda n, c: max(1, math.ceil((n - 1) / (c.k - 1)))
_windowed = lambda n, c: max(1, math.ceil((n - 1) / c.r))


def _dilated(n: int, c: Settings) -> int:
  """Least L with k^L >= n: dilations 1, k, .., k^(L-1) reach k^L - 1 positions back."""
  layers = 1
  while c.k_dilated**layers < n:
    layers += 1
  return layers


@dataclasses.dataclass(frozen=True)
class LayerType:
  """A layer, the paper's claims for it, and how its path-length stack is built.

  ``flops_n``/``flops_d``: the paper's exponents of n and d; ``depth``/``path``: the paper's
  growth in n ("1", "log n" or "n", at fixed k and r); ``*_text``: the paper's words.
  ``stack_layers(n, config)`` is the depth of the residual stack that connects all n
  positions (its path lengths are measured, and checked finite). ``n_regime``/``d_regime``
  select the points where the paper's FLOPs claim is meant to hold.
  """
  row: str
  complexity: str
  sequential: str
  path_text: str
  flops_n: float
  flops_d: float
  depth: str
  path: str
  apply: Callable[[Params, Array, Settings, int], Array]
  init: Callable[[Array, int, Settings], Params]
  stack_layers: Callable[[int, Settings], int] = _one
  kernel: Callable[[Settings], int | None] = lambda c: None
  window: Callable[[Settings], int | None] = lambda c: None
  dilated: bool = False
  n_regime: Callable[[int, int, Settings], bool] | None = None
  d_regime: Callable[[int, int, Settings], bool] | None = None
  regime_text: str = ""


_n_gg_d = lambda n, d, c: n >= c.regime * d
_REC = dict(row="recurrent", complexity="O(n d^2)", sequential="O(n)", path_text="O(n)",
            flops_n=1, flops_d=2, depth="n", path="n")
_ATTN = dict(sequential="O(1)", flops_n=2, flops_d=1, depth="1",
             init=_init(_attn_shapes), n_regime=_n_gg_d, d_regime=_n_gg_d,
             regime_text="n >= {regime} d")
_RESTRICTED = dict(row="restricted self-attention", complexity="O(r n d)", sequential="O(1)",
                   path_text="O(n/r)", flops_n=1, flops_d=1, depth="1", path="n",
                   init=_init(_attn_shapes), stack_layers=_windowed, window=lambda c: c.r)
_CONV = dict(sequential="O(1)", flops_n=1, flops_d=2, depth="1", stack_layers=_contiguous,
             kernel=lambda c: c.k)

LAYERS: dict[str, LayerType] = {
    "self_attention": LayerType(row="self-attention", complexity="O(n^2 d)", path_text="O(1)",
                                path="1", apply=_attention("full"), **_ATTN),
    "restricted_attention": LayerType(apply=_attention("blocked"), **_RESTRICTED),
    "restricted_attention_masked": LayerType(apply=_attention("masked"), **_RESTRICTED),
    "rnn": LayerType(apply=_recurrent("rnn"), init=_init(_rec_shapes(1)), **_REC),
    "lstm": LayerType(apply=_recurrent("lstm"), init=_init(_rec_shapes(4)), **_REC),
    "gru": LayerType(apply=_recurrent("gru"), init=_init(_rec_shapes(3)), **_REC),
    "conv": LayerType(row="convolutional, contiguous", complexity="O(k n d^2)",
                      path_text="O(n/k)", path="n", apply=_conv,
                      init=_init(_conv_shapes(lambda c: c.k)), **_CONV),
    "dilated_conv": LayerType(
        row="convolutional, dilated", complexity="O(k n d^2)", path_text="O(log_k n)",
        path="log n", apply=_conv, init=_init(_conv_shapes(lambda c: c.k_dilated)),
        dilated=True, **dict(_CONV, stack_layers=_dilated, kernel=lambda c: c.k_dilated)),
    "separable_conv": LayerType(row="separable convolution (paper, section 4)",
                                complexity="O(k n d + n d^2)", path_text="O(n/k)", path="n",
                                apply=_separable, init=_init(_sep_shapes), **_CONV),
    "linear_recurrence_sequential": LayerType(apply=_linear("sequential"),
                                              init=_init(_lin_shapes), **_REC),
    "linear_recurrence_associative": LayerType(apply=_linear("associative"),
                                               init=_init(_lin_shapes), **_REC),
}
# Why a measurement disagrees with the paper, shown where it does: (layer, cell) -> text.
NOTES: dict[tuple[str, str], str] = {
    ("restricted_attention_masked", "flops_n"):
        "a mask does not skip work: dot_product_attention(local_window=r) computes all n^2 "
        "scores and then zeroes the ones outside the window, so it costs what full attention "
        "costs. restricted_attention (blocks of r queries against 2r keys) gets O(r n d).",
    ("restricted_attention", "flops_d"):
        "the paper's O(r n d) counts only the attention itself; the layer's query, key, value "
        "and output projections cost 8 n d^2, which dominates unless r >> d (r = {r} here).",
    ("restricted_attention_masked", "flops_d"):
        "the projections (8 n d^2) dominate the masked n^2 d scores once d is a sizeable "
        "fraction of n; and the paper's O(r n d) leaves the projections out.",
    ("linear_recurrence_associative", "depth"):
        "a linear recurrence h_t = a_t h_(t-1) + b_t is associative, so "
        "lax.associative_scan evaluates it in about 2 log2 n dependent levels: the paper's "
        "O(n) holds for nonlinear cells (rnn, lstm, gru), not for every recurrence.",
    ("linear_recurrence_associative", "path"):
        "the associative scan's tree also shortens the dependency path from x_s to y_t to "
        "O(log n) operations: the same program computes the same h_t through fewer steps.",
}


# ------------------------------------------------------------------------- measurement


def _struct(tree: Any) -> Any:
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def single_layer(layer: str, n: int, config: Settings) -> Callable[[Params, Array], Array]:
  """``(params, x_BTD) -> y_BTD``, the layer measured for FLOPs, memory and depth.

  For the dilated convolution: the last (largest-dilation) layer of the stack for n.
  """
  spec = LAYERS[layer]
  dilation = config.k_dilated ** (spec.stack_layers(n, config) - 1) if spec.dilated else 1
  return lambda p, x_BTD: spec.apply(p, x_BTD, config, dilation)


def stack(layer: str, n: int, d: int, config: Settings, key: Array,
          num_layers: int | None = None) -> tuple[Callable[[Array], Array], int]:
  """A residual stack ``x <- x + layer_i(x)`` deep enough to connect all n positions.

  Returns ``(x_BTD -> y_BTD, number of layers)``; parameters are drawn from ``key``.
  ``num_layers`` overrides the depth (``LayerType.stack_layers``).
  """
  spec = LAYERS[layer]
  num = num_layers or spec.stack_layers(n, config)
  keys = jax.random.split(key, num)
  params = [spec.init(k, d, config) for k in keys]
  dilations = [config.k_dilated**i if spec.dilated else 1 for i in range(num)]

  def f(x_BTD: Array) -> Array:
    for p, dilation in zip(params, dilations):
      x_BTD = x_BTD + spec.apply(p, x_BTD, config, dilation)
    return x_BTD
  return f, num


def measure(layer: str, n: int, d: int, config: Settings, *, path: bool) -> dict[str, Any]:
  """One row: FLOPs, memory, depth of one layer at (n, d) and, if ``path``, path lengths."""
  spec = LAYERS[layer]
  start = time.perf_counter()
  key = jax.random.PRNGKey(config.seed)
  params = _struct(jax.eval_shape(lambda k: spec.init(k, d, config), key))
  x = jax.ShapeDtypeStruct((1, n, d), jnp.float32)
  f = single_layer(layer, n, config)
  mem = cost.memory(f, params, x, backward=True, argnums=(0, 1))
  row: dict[str, Any] = {
      "layer": layer, "n": n, "d": d, "k": spec.kernel(config), "r": spec.window(config),
      "flops_fwd": cost.flops(f, params, x),
      "flops_fwd_bwd": cost.flops(f, params, x, backward=True, argnums=(0, 1)),
      "temp_bytes": mem and mem.temp_bytes,
      "sequential_depth": depth.sequential_depth(f, params, x),
      "path_length": None, "path_length_mixing": None, "stack_layers": None,
      "path_approximated": None,
      "jaxpr_flops_fwd": cost.jaxpr_flops(f, params, x),
      "jaxpr_flops_fwd_bwd": cost.jaxpr_flops(f, params, x, backward=True, argnums=(0, 1)),
      "dilation": (config.k_dilated ** (spec.stack_layers(n, config) - 1)
                   if spec.dilated else None),
  }
  if path:
    fn, num = stack(layer, n, d, config, key)
    x_BTD = jax.random.normal(jax.random.fold_in(key, 1), (1, n, d))
    by_ops = paths.path_length_by_mixing(fn, x_BTD, causal=True, mixing=paths.COMPUTE)
    by_mix = paths.path_length_by_mixing(fn, x_BTD, causal=True, mixing=paths.MIXING)
    row.update(path_length=by_ops.length, path_length_mixing=by_mix.length, stack_layers=num,
               path_approximated=sorted(set(by_ops.approximated + by_mix.approximated)))
  row["seconds"] = round(time.perf_counter() - start, 2)
  return row


def sweep(config: Settings, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Rows for n in ``n_values`` at ``d_fixed`` and d in ``d_values`` at ``n_fixed``."""
  validate(config)
  points = [(n, config.d_fixed) for n in config.n_values]
  points += [(config.n_fixed, d) for d in config.d_values if (config.n_fixed, d) not in points]
  rows = []
  for layer in config.layer_names():
    for n, d in points:
      path = d == config.d_fixed and n <= config.path_max_n
      rows.append(measure(layer, n, d, config, path=path))
      r = rows[-1]
      log(f"{layer:30s} n={n:5d} d={d:4d} flops={r['flops_fwd']:.3g} "
          f"depth={r['sequential_depth']} path={r['path_length']} ({r['seconds']} s)")
  return rows


# ------------------------------------------------------------------------- fits and verdicts


def fit_exponent(xs: Sequence[float], ys: Sequence[float]) -> float | None:
  """Slope of log y against log x (least squares); None with fewer than 2 points."""
  if len(xs) < 2 or any(y is None or y <= 0 for y in ys):
    return None
  return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def _r2(xs: np.ndarray, ys: np.ndarray) -> float:
  if np.ptp(ys) == 0:
    return 1.0
  return float(np.corrcoef(xs, ys)[0, 1] ** 2)


def growth(ns: Sequence[int], ys: Sequence[float]) -> tuple[str, float | None]:
  """Classifies y(n) as "1", "log n", "n", "n^2" (or "n^p"), with the log-log exponent p.

  Constant: p < 0.1. Logarithmic: p < 0.6, y grows, and y is at least as linear in log n
  (R^2 >= 0.95) as in n. Power: p rounded, if within 0.2 of an integer.
  """
  if not all(math.isfinite(y) for y in ys):
    return "not connected", None
  p = fit_exponent(ns, ys)
  if p is None:
    return "n/a", None
  ns_, ys_ = np.asarray(ns, float), np.asarray(ys, float)
  if p < 0.1:
    return "1", p
  r2_log, r2_lin = _r2(np.log(ns_), ys_), _r2(ns_, ys_)
  if p < 0.6 and ys_[-1] > ys_[0] and r2_log >= 0.95 and r2_log >= r2_lin:
    return "log n", p
  q = round(p)
  return ("n" if q == 1 else f"n^{q}") if abs(p - q) <= 0.2 else f"n^{p:.2f}", p


def series(rows: Sequence[dict[str, Any]], layer: str, key: str, *, n: int | None = None,
            d: int | None = None, keep: Callable[[int, int], bool] = lambda n, d: True
            ) -> tuple[list[int], list[float]]:
  pts = sorted((r["d"] if n is not None else r["n"], r[key]) for r in rows
               if r["layer"] == layer and r[key] is not None and (n is None or r["n"] == n)
               and (d is None or r["d"] == d) and keep(r["n"], r["d"]))
  return [p[0] for p in pts], [p[1] for p in pts]


def _note(layer: str, cell: str, config: Settings) -> str:
  note = NOTES.get((layer, cell), "unexpected: not explained")
  return note.format(**dataclasses.asdict(config))


def compare(rows: Sequence[dict[str, Any]], config: Settings) -> list[dict[str, Any]]:
  """Per layer: fitted exponents and growth classes against the paper, a verdict per cell.

  Cells: ``flops_n`` (exponent vs the paper's, agree within 0.15, on the points of the
  paper's regime), ``flops_d`` (likewise), ``depth`` and ``path`` (growth class vs the
  paper's), ``path_mixing`` and ``memory`` (measured only: the paper states neither).
  """
  out = []
  for layer in config.layer_names():
    spec = LAYERS[layer]
    cells: dict[str, Any] = {"layer": layer, "paper_row": spec.row}
    for cell, axis, expected, regime in (("flops_n", "n", spec.flops_n, spec.n_regime),
                                         ("flops_d", "d", spec.flops_d, spec.d_regime)):
      fixed = {"d": config.d_fixed} if axis == "n" else {"n": config.n_fixed}
      xs_all, ys_all = series(rows, layer, "flops_fwd", **fixed)
      keep = (lambda n, d: regime(n, d, config)) if regime else (lambda n, d: True)
      xs, ys = series(rows, layer, "flops_fwd", keep=keep, **fixed)
      regime_text = spec.regime_text.format(regime=config.regime) if regime else "all"
      if len(xs) < 2:  # the regime is not reached in this sweep: say so, fit the top two
        xs, ys, regime_text = xs_all[-2:], ys_all[-2:], regime_text + " (not reached)"
      p = fit_exponent(xs, ys)
      agree = None if p is None else abs(p - expected) <= 0.15
      cells[cell] = {"expected": expected, "exponent": p, "range": [xs[0], xs[-1]] if xs else [],
                     "regime": regime_text, "exponent_all": fit_exponent(xs_all, ys_all),
                     "agree": agree, "note": None if agree in (None, True)
                     else _note(layer, cell, config)}
    for cell, key, expected in (("depth", "sequential_depth", spec.depth),
                                ("path", "path_length", spec.path),
                                ("path_mixing", "path_length_mixing", None),
                                ("memory", "temp_bytes", None)):
      ns, ys = series(rows, layer, key, d=config.d_fixed)
      cls, p = growth(ns, ys)
      agree = None if expected is None or cls == "n/a" else cls == expected
      cells[cell] = {"expected": expected, "class": cls, "exponent": p, "n": ns,
                     "values": ys, "agree": agree,
                     "note": None if agree in (None, True) else _note(layer, cell, config)}
    out.append(cells)
  return out


# ------------------------------------------------------------------------- output


def run(settings: Settings, workdir: str,
        progress: Callable[[str], None] = print) -> dict[str, Any]:
  """Sweeps, compares, and writes ``table1.md``, PNG plots and ``results.json`` to ``workdir``.

  Returns the results dict (``context``, ``rows``, ``cells``, ``plots``, ``seconds``); the
  context names versions, devices, CPU and git commit. ``progress`` gets progress lines and
  the table.
  """
  from seqscale.studies import table1_report  # pylint: disable=g-import-not-at-top  # it reads LAYERS
  config, log = settings, progress
  workdir = outputs.prepare_workdir(workdir)
  start = time.perf_counter()
  rows = sweep(config, log)
  cells = compare(rows, config)
  context = outputs.run_context(config=dataclasses.asdict(config), dtype="float32", batch=1)
  text = table1_report.markdown(rows, cells, config, context)
  outputs.write_text(os.path.join(workdir, "table1.md"), text)
  plots = table1_report.plot(rows, config, workdir)
  results = {"context": context, "rows": rows, "cells": cells,
             "plots": [os.path.basename(p) for p in plots],
             "seconds": round(time.perf_counter() - start, 1)}
  outputs.write_json(os.path.join(workdir, "results.json"), results)
  log(text)
  log(f"wrote {workdir}/table1.md, results.json, {len(plots)} plots in {results['seconds']} s")
  return results
