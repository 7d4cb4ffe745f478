"""The seed's running sum computed three ways and measured, and the linear-recurrence crossover.

The seed's example, [2, 5, 3, 7] -> [2, 7, 10, 17], is the simplest linear recurrence
(h_t = h_{t-1} + x_t). Three programs compute it:

  ``rnn_scan``          a linear Elman cell with identity weights under ``jax.lax.scan``
                        (``ops.recurrent.project`` + ``ops.recurrent.scan``): step t waits
                        for step t-1;
  ``associative_scan``  ``jax.lax.associative_scan(jnp.add, x)``: a tree of pairwise sums,
                        up and back down;
  ``attention``         one causal attention layer (``ops.attention``) with zero queries, so
                        the weights are softmax(0) = 1/(t+1) over s <= t, times (t+1).

Their weights are arguments (``program``), as a trained model's are, so XLA cannot fold
them away. ``sweep`` measures, for n from 4 to 100,000, each program's sequential depth
(read off its jaxpr by ``analysis.sequential_depth``), compiled FLOPs (``analysis.flops``)
and run time (``analysis.time_fn``, compile time apart), and checks the sums against
NumPy's ``cumsum``.
``crossover`` times ``ops.linear_recurrence`` in its three modes over T, forward and
forward+backward. Shapes: B batch, T (or n) length, D width.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seqscale.analysis import cost
from seqscale.analysis import depth
from seqscale.ops import attention as attention_ops
from seqscale.ops import linear_recurrence as lr_ops
from seqscale.ops import recurrent as recurrent_ops

Array = jax.Array

SEED_INPUTS = (2, 5, 3, 7)
SEED_OUTPUTS = (2, 7, 10, 17)
METHODS = ("rnn_scan", "associative_scan", "attention")
HOW = {
    "rnn_scan": "lax.scan, 4 steps: h_t = h_{t-1} @ W_hh + x_t W_ih, each step waits for "
                "the previous one",
    "associative_scan": "lax.associative_scan(add): pairwise sums up a tree, then back down",
    "attention": "1 causal attention layer, zero queries: softmax weights 1/(t+1) on s <= t, "
                 "then times (t+1); no position waits for another",
}
ROW_KEYS = ("method", "n", "sequential_depth", "flops", "run_s", "compile_s")
# Tables, plots and the crossover compare the fastest of the timed runs: on a machine shared
# with other jobs the median moves with their load, the fastest run much less. results.json
# keeps both (run_s: median, run_min_s: fastest).
TIME_KEY = "run_min_s"
DEFAULT_ATTENTION_MAX_N = 16_384


# ------------------------------------------------------------------ the three programs

def _linear_cell(w_hh_DD: Array, h_BD: Array, xw_BD: Array) -> tuple[Array, Array]:
  # The Elman cell of ops.recurrent without its tanh: a linear RNN.
  h_BD = h_BD @ w_hh_DD + xw_BD
  return h_BD, h_BD


def rnn_running_sum(x_T: Array, w_ih_ID: Array | None = None,
                    w_hh_DD: Array | None = None) -> Array:
  """[T] -> [T] running sum by a linear RNN under ``lax.scan`` (I = D = 1).

  h_t = h_{t-1} @ w_hh + x_t @ w_ih, with identity weights [1, 1] when None.
  """
  one_DD = jnp.ones((1, 1), x_T.dtype)
  w_ih_ID = one_DD if w_ih_ID is None else w_ih_ID
  w_hh_DD = one_DD if w_hh_DD is None else w_hh_DD
  params = {"w_ih": w_ih_ID, "b_ih": jnp.zeros((1,), x_T.dtype)}
  xw_BTD = recurrent_ops.project(x_T[None, :, None], params)
  y_BTD, _ = recurrent_ops.scan(lambda h, xw: _linear_cell(w_hh_DD, h, xw), xw_BTD,
                                jnp.zeros((1, 1), x_T.dtype))
  return y_BTD[0, :, 0]


def associative_running_sum(x_T: Array) -> Array:
  """[T] -> [T] running sum by ``jax.lax.associative_scan(jnp.add, x_T)``."""
  return jax.lax.associative_scan(jnp.add, x_T)


def attention_running_sum(x_T: Array, w_q_DHK: Array | None = None,
                          w_k_DHK: Array | None = None,
                          w_v_DHK: Array | None = None) -> Array:
  """[T] -> [T] float32 running sum: causal attention with uniform weights, times (t+1).

  D = H = K = 1. The query weight is 0 (the key and value weights 1 when None), so every
  score is 0 and the causal softmax puts 1/(t+1) on each s <= t: the output is the mean of
  x_0..x_t, multiplied by t + 1. The [T, T] score matrix makes memory O(T^2).
  """
  x_BTD = x_T.astype(jnp.float32)[None, :, None]
  w_q_DHK = jnp.zeros((1, 1, 1)) if w_q_DHK is None else w_q_DHK
  w_k_DHK = jnp.ones((1, 1, 1)) if w_k_DHK is None else w_k_DHK
  w_v_DHK = jnp.ones((1, 1, 1)) if w_v_DHK is None else w_v_DHK
  q_BTHK = attention_ops.project_heads(x_BTD, w_q_DHK)
  k_BTHK = attention_ops.project_heads(x_BTD, w_k_DHK)
  v_BTHK = attention_ops.project_heads(x_BTD, w_v_DHK)
  mean_T = attention_ops.dot_product_attention(q_BTHK, k_BTHK, v_BTHK, causal=True)[0, :, 0, 0]
  return mean_T * jnp.arange(1, x_T.shape[0] + 1, dtype=jnp.float32)


RUNNING_SUMS: dict[str, Callable[..., Array]] = {
    "rnn_scan": rnn_running_sum,
    "associative_scan": associative_running_sum,
    "attention": attention_running_sum,
}


def program(method: str, x_T: Array) -> tuple[Callable[..., Array], tuple[Array, ...]]:
  """(function, arguments) that compute ``method``'s running sum of x_T.

  The weights are arguments, not constants, as in a trained model: XLA would otherwise fold
  the identity matmuls (and the zero queries) away before anything is measured.
  """
  _check_method(method)
  if method == "rnn_scan":
    one_DD = jnp.ones((1, 1), x_T.dtype)
    return rnn_running_sum, (x_T, one_DD, one_DD)
  if method == "attention":
    return attention_running_sum, (x_T, jnp.zeros((1, 1, 1)), jnp.ones((1, 1, 1)),
                                   jnp.ones((1, 1, 1)))
  return associative_running_sum, (x_T,)


def _time(fn: Callable[..., Any], *args: Any, repeats: int,
          min_total_s: float = 0.1) -> dict[str, float]:
  """Compile and run times of ``jax.jit(fn)``; fast programs get more runs (at least
  ``min_total_s`` of them in all, at most 1,000), since one run of a few microseconds is
  mostly noise on a shared machine. JAX's caches are cleared first, so the compile time is
  never a cache hit of an earlier measurement."""
  jax.clear_caches()
  timing = cost.time_fn(fn, *args, repeats=repeats)
  runs = timing.runs
  if sum(runs) < min_total_s:
    more = min(1000, math.ceil(min_total_s / max(timing.run_s, 1e-7)))
    runs = cost.time_fn(fn, *args, repeats=more, warmup=0).runs
  return {"run_s": float(np.median(runs)), "run_min_s": float(min(runs)),
          "compile_s": timing.compile_s, "lower_s": timing.lower_s, "runs": len(runs)}


def _check_method(method: str) -> None:
  if method not in RUNNING_SUMS:
    raise ValueError(f"method={method!r}; allowed: {', '.join(map(repr, METHODS))}")


def _check_int(name: str, value: Any, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name}={value!r}; must be an int >= {minimum}")


def digits(n: int, seed: int = 0, dtype: Any = jnp.int32) -> Array:
  """[n] random digits 0..9 (the running_sum task's inputs), as ``dtype``."""
  _check_int("n", n, 1)
  return jnp.asarray(np.random.default_rng(seed).integers(0, 10, n), dtype)


# ------------------------------------------------------------------ the seed's four numbers

def seed_demo() -> list[dict[str, Any]]:
  """The seed's [2, 5, 3, 7] three ways: outputs and the measured sequential depth."""
  x_T = jnp.asarray(SEED_INPUTS, jnp.int32)
  rows = []
  for method in METHODS:
    fn, args = program(method, x_T)
    y_T = np.asarray(jax.jit(fn)(*args))
    rows.append({"method": method, "inputs": list(SEED_INPUTS),
                 "outputs": [v.item() for v in y_T],
                 "sequential_depth": depth.sequential_depth(fn, *args),
                 "exact": bool(np.array_equal(y_T, SEED_OUTPUTS)), "how": HOW[method]})
  return rows


def seed_table(rows: Sequence[dict[str, Any]]) -> str:
  """Markdown table of ``seed_demo`` rows."""
  fmt = lambda ys: "[" + ", ".join(f"{y:g}" for y in ys) + "]"
  lines = [f"The seed's numbers {list(SEED_INPUTS)} -> {list(SEED_OUTPUTS)}, three ways "
           "(sequential depth: the longest chain of dependent primitives in the program's "
           "jaxpr, a scan counting its body once per step):", "",
           "| method | outputs | sequential depth (measured) | how |", "|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['method']} | {fmt(r['outputs'])} | {r['sequential_depth']} | "
                 f"{r['how']} |")
  return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ n from 4 to 100,000

def sweep_lengths(max_n: int, start: int = 4) -> list[int]:
  """start, 2 start, 4 start, ... up to ``max_n``, and ``max_n`` itself."""
  _check_int("start", start, 1)
  _check_int("max_n", max_n, start)
  ns = [start]
  while ns[-1] * 2 <= max_n:
    ns.append(ns[-1] * 2)
  return ns if ns[-1] == max_n else ns + [max_n]


def scores_bytes(n: int) -> int:
  """Bytes of one [n, n] float32 score matrix (attention's O(n^2) memory)."""
  return 4 * n * n


def measure(method: str, n: int, *, seed: int = 0, repeats: int = 3,
            dtype: Any = jnp.int32) -> dict[str, Any]:
  """One row: the program's depth, FLOPs, times and its error against ``np.cumsum``.

  Keys: ``ROW_KEYS``; ``run_min_s``, ``lower_s``, ``runs`` (run time is the median of
  ``repeats`` runs or more, see ``_time``; compile time apart); ``dtype``,
  ``max_abs_err`` and ``exact`` (outputs equal to the int64 NumPy cumsum).
  """
  _check_method(method)
  _check_int("repeats", repeats, 1)
  x_T = digits(n, seed, dtype)
  fn, args = program(method, x_T)
  timing = _time(fn, *args, repeats=repeats)
  y_T = np.asarray(jax.jit(fn)(*args))
  want_T = np.cumsum(np.asarray(x_T), dtype=np.int64)
  err = float(np.max(np.abs(y_T.astype(np.float64) - want_T)))
  return {"method": method, "n": n, "sequential_depth": depth.sequential_depth(fn, *args),
          "flops": cost.flops(fn, *args), **timing, "dtype": str(y_T.dtype), "max_abs_err": err,
          "exact": bool(np.array_equal(y_T, want_T))}


def sweep(ns: Iterable[int], *, methods: Sequence[str] = METHODS,
          attention_max_n: int = DEFAULT_ATTENTION_MAX_N, repeats: int = 3, seed: int = 0,
          progress: Callable[[str], None] | None = None
          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
  """``measure`` every method at every n; attention only up to ``attention_max_n``.

  Returns:
    (rows, skipped): measured rows, and ``{"method", "n", "reason"}`` for each skipped one.
  """
  for m in methods:
    _check_method(m)
  _check_int("attention_max_n", attention_max_n, 1)
  rows, skipped = [], []
  for n in ns:
    for method in methods:
      if method == "attention" and n > attention_max_n:
        skipped.append({"method": method, "n": n, "reason": (
            f"not run above n={attention_max_n}: O(n^2) memory, one [n, n] float32 score "
            f"matrix is {scores_bytes(n) / 2**30:.1f} GiB")})
        continue
      row = measure(method, n, seed=seed, repeats=repeats)
      rows.append(row)
      if progress:
        progress(f"{method:>16} n={n:>6}: depth {row['sequential_depth']:>6}, "
                 f"{row['flops']:.3g} FLOPs, run {row[TIME_KEY] * 1e3:.3f} ms, "
                 f"compile {row['compile_s']:.2f} s, max |err| {row['max_abs_err']:g}")
  return rows, skipped


def exactness(n: int, *, methods: Sequence[str] = ("rnn_scan", "associative_scan"),
              dtypes: Sequence[str] = ("int32", "int64"), seed: int = 0
              ) -> list[dict[str, Any]]:
  """Integer outputs vs ``np.cumsum`` at length n (int64 runs with x64 enabled)."""
  out = []
  for dtype in dtypes:
    if dtype not in ("int32", "int64"):
      raise ValueError(f"dtype={dtype!r}; allowed: 'int32', 'int64'")
    with jax.enable_x64(dtype == "int64"):
      for method in methods:
        _check_method(method)
        fn, args = program(method, digits(n, seed, dtype))
        x_T, y_T = args[0], np.asarray(jax.jit(fn)(*args))
        out.append({"method": method, "n": n, "dtype": str(y_T.dtype),
                    "exact": bool(np.array_equal(y_T, np.cumsum(np.asarray(x_T))))})
  return out


def _by(rows: Iterable[dict[str, Any]], *keys: str) -> dict[tuple[Any, ...], dict[str, Any]]:
  return {tuple(r[k] for k in keys): r for r in rows}


def sweep_table(rows: Sequence[dict[str, Any]], skipped: Sequence[dict[str, Any]] = ()) -> str:
  """Markdown: a wide depth/time table over n, then every measurement in full."""
  by = _by(rows, "n", "method")
  ns = sorted({r["n"] for r in rows} | {s["n"] for s in skipped})
  methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
  cell = lambda n, m, f: f(by[n, m]) if (n, m) in by else "not run"
  lines = ["Sequential depth (primitives on the longest dependent chain, from the jaxpr) "
           "and run time (ms, fastest run, compile excluded):", "",
           "| n | " + " | ".join(f"depth: {m}" for m in methods) + " | "
           + " | ".join(f"ms: {m}" for m in methods) + " |",
           "|---|" + "---|" * (2 * len(methods))]
  for n in ns:
    lines.append(f"| {n:,} | "
                 + " | ".join(cell(n, m, lambda r: str(r["sequential_depth"])) for m in methods)
                 + " | "
                 + " | ".join(cell(n, m, lambda r: f"{r[TIME_KEY] * 1e3:.3f}") for m in methods)
                 + " |")
  lines += ["", "| n | method | sequential depth | FLOPs (compiled) | run (ms, fastest) "
            "| compile (s) | dtype | max abs error vs np.cumsum |",
            "|---|---|---|---|---|---|---|---|"]
  for r in sorted(rows, key=lambda r: (r["n"], METHODS.index(r["method"]))):
    lines.append(f"| {r['n']:,} | {r['method']} | {r['sequential_depth']} | {r['flops']:.3g} "
                 f"| {r[TIME_KEY] * 1e3:.3f} | {r['compile_s']:.3f} | {r['dtype']} "
                 f"| {r['max_abs_err']:g} |")
  if skipped:
    first = min(skipped, key=lambda s: s["n"])
    lines += ["", f"{first['method']}: {first['reason']} (skipped: "
              + ", ".join(f"n={s['n']:,}" for s in skipped) + ")"]
  return "\n".join(lines) + "\n"


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_sweep(rows: Sequence[dict[str, Any]], path: str) -> None:
  """Log-log PNG: sequential depth, FLOPs and run time against n, one line per method."""
  plt = _plt()
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  panels = (("sequential_depth", "sequential depth (primitives)"),
            ("flops", "FLOPs (compiled)"), (TIME_KEY, "run time (s, fastest run)"))
  for ax, (key, label) in zip(axes, panels):
    for method in METHODS:
      mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["n"])
      if mine:
        ax.plot([r["n"] for r in mine], [max(r[key], 1e-12) for r in mine], "o-", ms=3,
                label=method)
    ax.set(xscale="log", yscale="log", xlabel="n (sequence length)", ylabel=label)
    ax.grid(True, which="both", alpha=0.3)
  axes[0].legend()
  fig.suptitle("Running sum of n digits, three ways")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# ------------------------------------------------------------------ training results

def training_row(model: str, hparams: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
  """Accuracy at the training length and at 4x from ``train_and_evaluate``'s results."""
  ev = results["eval"]
  pick = lambda split, key: ev.get(split, {}).get(key)
  return {"model": model, "hparams": dict(hparams), "num_steps": results["num_steps"],
          "num_params": results.get("num_params"), "train_length": results["train_length"],
          "accuracy": pick("test", "accuracy"), "accuracy_2x": pick("test_2x", "accuracy"),
          "accuracy_4x": pick("test_4x", "accuracy"),
          "length_4x": pick("test_4x", "length"),
          "final_train_loss": results.get("final_train_loss"),
          "wall_time_s": results.get("wall_time_s")}


def training_table(rows: Sequence[dict[str, Any]]) -> str:
  """Markdown table of ``training_row`` rows."""
  fmt = lambda v: "-" if v is None else f"{v:.4f}"
  lines = ["Training on running_sum (per-position accuracy; chance 0.1):", "",
           "| model | settings | steps | params | accuracy at train length | at 2x | at 4x "
           "| wall (s) |", "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    settings = ", ".join(f"{k}={v}" for k, v in r["hparams"].items())
    lines.append(f"| {r['model']} | {settings} | {r['num_steps']} | {r['num_params']} "
                 f"| {fmt(r['accuracy'])} (T={r['train_length']}) | {fmt(r['accuracy_2x'])} "
                 f"| {fmt(r['accuracy_4x'])} (T={r['length_4x']}) "
                 f"| {r['wall_time_s']:.0f} |")
  return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ crossover benchmark

CROSSOVER_KEYS = ("mode", "pass", "T", "B", "D", "chunk_size", "run_s", "compile_s")
PASSES = ("fwd", "fwd_bwd")


def crossover_lengths(max_t: int, start: int = 128) -> list[int]:
  """128, 256, ... up to ``max_t`` (and ``max_t``)."""
  _check_int("max_t", max_t, start)
  return sweep_lengths(max_t, start)


def recurrence_inputs(B: int, T: int, D: int, seed: int = 0) -> tuple[Array, Array]:
  """(a_BTD decays uniform in [0.9, 1), b_BTD standard normal), float32."""
  k_a, k_b = jax.random.split(jax.random.key(seed))
  return (jax.random.uniform(k_a, (B, T, D), jnp.float32, 0.9, 1.0),
          jax.random.normal(k_b, (B, T, D), jnp.float32))


def _recurrence_fn(mode: str, chunk_size: int) -> Callable[[Array, Array], Array]:
  return lambda a_BTD, b_BTD: lr_ops.linear_recurrence(a_BTD, b_BTD, mode=mode,
                                                       chunk_size=chunk_size)[0]


def measure_recurrence(mode: str, T: int, *, B: int, D: int, chunk_size: int = 64,
                       backward: bool = False, repeats: int = 5, seed: int = 0
                       ) -> dict[str, Any]:
  """Times ``linear_recurrence`` (or its forward+backward) at one length; compile apart.

  Keys: ``CROSSOVER_KEYS``, ``run_min_s``, ``lower_s``, ``runs`` (see ``_time``),
  ``sequential_depth`` and ``max_abs_diff`` (forward outputs against mode ``sequential``;
  0 for it; None for the forward+backward pass, which is not compared).
  """
  if mode not in lr_ops.MODES:
    raise ValueError(f"mode={mode!r}; allowed: {', '.join(map(repr, lr_ops.MODES))}")
  for name, value in (("T", T), ("B", B), ("D", D), ("chunk_size", chunk_size),
                      ("repeats", repeats)):
    _check_int(name, value, 1)
  a_BTD, b_BTD = recurrence_inputs(B, T, D, seed)
  fn = _recurrence_fn(mode, chunk_size)
  timed = cost.fwd_bwd(fn, argnums=(0, 1)) if backward else fn
  timing = _time(timed, a_BTD, b_BTD, repeats=repeats)
  diff = None if backward else 0.0
  if mode != "sequential" and not backward:
    ref = jax.jit(_recurrence_fn("sequential", chunk_size))(a_BTD, b_BTD)
    diff = float(jnp.max(jnp.abs(jax.jit(fn)(a_BTD, b_BTD) - ref)))
  return {"mode": mode, "pass": "fwd_bwd" if backward else "fwd", "T": T, "B": B, "D": D,
          "chunk_size": chunk_size, **timing,
          "sequential_depth": depth.sequential_depth(timed, a_BTD, b_BTD),
          "max_abs_diff": diff}


def crossover(ts: Iterable[int], *, B: int = 4, D: int = 64, chunk_size: int = 64,
              repeats: int = 5, seed: int = 0,
              progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
  """``measure_recurrence`` for every T, mode and pass (forward, forward+backward)."""
  rows = []
  for T in ts:
    for backward in (False, True):
      for mode in lr_ops.MODES:
        row = measure_recurrence(mode, T, B=B, D=D, chunk_size=chunk_size, backward=backward,
                                 repeats=repeats, seed=seed)
        rows.append(row)
        if progress:
          progress(f"T={T:>6} {row['pass']:>7} {mode:>11}: run {row[TIME_KEY] * 1e3:9.3f} ms, "
                   f"compile {row['compile_s']:.2f} s, depth {row['sequential_depth']}")
  return rows


def wins_from(rows: Sequence[dict[str, Any]], mode: str, pass_: str,
              against: str = "sequential", key: str = TIME_KEY) -> dict[str, Any]:
  """Where ``mode`` runs faster than ``against``: the T values, and the smallest T from
  which it is faster at every longer T measured (None if it is not faster at the longest)."""
  by = _by(rows, "mode", "pass", "T")
  ts = sorted(T for (m, p, T) in by if m == mode and p == pass_ and (against, p, T) in by)
  faster = [T for T in ts if by[mode, pass_, T][key] < by[against, pass_, T][key]]
  since = None
  for T in reversed(ts):
    if T not in faster:
      break
    since = T
  ratio = (by[mode, pass_, ts[-1]][key] / by[against, pass_, ts[-1]][key]
           if ts else None)
  return {"mode": mode, "pass": pass_, "against": against, "faster_at": faster,
          "wins_from": since, "time_ratio_at_longest": ratio,
          "longest": ts[-1] if ts else None}


def crossover_summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """``wins_from`` for associative and chunked against sequential, each pass."""
  return [wins_from(rows, mode, p) for p in PASSES for mode in ("associative", "chunked")]


def crossover_table(rows: Sequence[dict[str, Any]],
                    summary: Sequence[dict[str, Any]] | None = None) -> str:
  """Markdown: run times per T and pass, ratios to sequential, and the crossover lines."""
  by = _by(rows, "mode", "pass", "T")
  first = rows[0] if rows else {}
  lines = [f"linear_recurrence, B={first.get('B')}, D={first.get('D')}, float32, chunked "
           f"chunk_size={first.get('chunk_size')}; run time (ms, fastest run, compile excluded); "
           "ratio = mode / sequential (< 1: faster than sequential):", "",
           "| T | pass | sequential | associative | chunked | assoc / seq | chunked / seq "
           "| compile s (seq / assoc / chunked) |", "|---|---|---|---|---|---|---|---|"]
  for T in sorted({r["T"] for r in rows}):
    for p in PASSES:
      if ("sequential", p, T) not in by:
        continue
      r = {m: by.get((m, p, T)) for m in lr_ops.MODES}
      ms = lambda m: f"{r[m][TIME_KEY] * 1e3:.3f}" if r[m] else "-"
      ratio = lambda m: (f"{r[m][TIME_KEY] / r['sequential'][TIME_KEY]:.2f}" if r[m] else "-")
      comp = " / ".join(f"{r[m]['compile_s']:.2f}" if r[m] else "-" for m in lr_ops.MODES)
      lines.append(f"| {T:,} | {p} | {ms('sequential')} | {ms('associative')} | {ms('chunked')} "
                   f"| {ratio('associative')} | {ratio('chunked')} | {comp} |")
  for s in summary if summary is not None else crossover_summary(rows):
    lines.append("")
    lines.append(describe_win(s))
  return "\n".join(lines) + "\n"


def describe_win(s: dict[str, Any]) -> str:
  """One sentence for a ``wins_from`` result."""
  head = f"{s['mode']} vs {s['against']} ({s['pass']}): "
  if s["wins_from"] is not None:
    return (head + f"faster from T={s['wins_from']:,} on (every longer T measured); "
            f"{s['time_ratio_at_longest']:.2f}x the time at T={s['longest']:,}.")
  ratio = f"{s['time_ratio_at_longest']:.2f}x the time at T={s['longest']:,}."
  if not s["faster_at"]:
    return head + f"never faster at any T measured on this machine; {ratio}"
  return (head + "not faster at the longest T on this machine (faster only at T = "
          + ", ".join(f"{t:,}" for t in s["faster_at"]) + f"); {ratio}")


def plot_crossover(rows: Sequence[dict[str, Any]], path: str) -> None:
  """Log-log PNG: run time against T per mode, forward and forward+backward."""
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
  for ax, p in zip(axes, PASSES):
    for mode in lr_ops.MODES:
      mine = sorted((r for r in rows if r["mode"] == mode and r["pass"] == p),
                    key=lambda r: r["T"])
      ax.plot([r["T"] for r in mine], [r[TIME_KEY] for r in mine], "o-", ms=3, label=mode)
    ax.set(xscale="log", yscale="log", xlabel="T (sequence length)",
           title={"fwd": "forward", "fwd_bwd": "forward + backward"}[p])
    ax.grid(True, which="both", alpha=0.3)
  axes[0].set_ylabel("run time (s, fastest run, compile excluded)")
  axes[0].legend()
  if rows:
    fig.suptitle(f"linear_recurrence modes, B={rows[0]['B']}, D={rows[0]['D']}, "
                 f"{jax.default_backend()}")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# ------------------------------------------------------------------ outputs

def write_json(path: str, payload: dict[str, Any]) -> None:
  """Writes ``payload`` as indented JSON (non-finite floats as null-safe strings)."""
  def clean(v):
    if isinstance(v, float) and not math.isfinite(v):
      return str(v)
    if isinstance(v, dict):
      return {k: clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
      return [clean(x) for x in v]
    return v
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(clean(payload), f, indent=2, default=str)


def _load_average() -> list[float] | None:
  # Timings on a machine shared with other jobs move with their load: recorded with them.
  try:
    return [round(v, 2) for v in os.getloadavg()]
  except OSError:
    return None


def _workdir(workdir: str) -> str:
  if not workdir:
    raise ValueError("workdir is empty; pass --workdir=DIR (a directory, existing or new)")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"workdir {workdir!r} is a file; pass a directory (existing or new)")
  os.makedirs(workdir, exist_ok=True)
  return workdir


def save_running_sum(workdir: str, *, demo: Sequence[dict[str, Any]],
                     rows: Sequence[dict[str, Any]], skipped: Sequence[dict[str, Any]] = (),
                     exact: Sequence[dict[str, Any]] = (),
                     training: Sequence[dict[str, Any]] = (),
                     settings: dict[str, Any] | None = None,
                     context: dict[str, Any] | None = None) -> str:
  """Writes ``results.json``, ``results.md`` and ``running_sum.png``; returns the markdown."""
  workdir = _workdir(workdir)
  md = seed_table(demo) + "\n" + sweep_table(rows, skipped)
  if exact:
    md += "\nInteger sums against np.cumsum: " + "; ".join(
        f"{e['method']} {e['dtype']} n={e['n']:,}: {'exact' if e['exact'] else 'NOT exact'}"
        for e in exact) + "\n"
  if training:
    md += "\n" + training_table(training)
  write_json(os.path.join(workdir, "results.json"), {
      "experiment": "running_sum", "seed_demo": list(demo), "rows": list(rows),
      "skipped": list(skipped), "exactness": list(exact), "training": list(training),
      "settings": dict(settings or {}), "context": dict(context or {}),
      "load_average_1_5_15min": _load_average()})
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(md)
  if rows:
    plot_sweep(rows, os.path.join(workdir, "running_sum.png"))
  return md


def save_crossover(workdir: str, rows: Sequence[dict[str, Any]], *,
                   settings: dict[str, Any] | None = None,
                   context: dict[str, Any] | None = None) -> str:
  """Writes ``results.json``, ``results.md`` and ``crossover.png``; returns the markdown."""
  workdir = _workdir(workdir)
  summary = crossover_summary(rows)
  md = crossover_table(rows, summary)
  write_json(os.path.join(workdir, "results.json"), {
      "experiment": "crossover", "rows": list(rows), "crossover": summary,
      "settings": dict(settings or {}), "context": dict(context or {}),
      "load_average_1_5_15min": _load_average()})
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(md)
  if rows:
    plot_crossover(rows, os.path.join(workdir, "crossover.png"))
  return md
