"""The seed's running sum computed three ways and measured.

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
and run time (``analysis.time_fresh``, compile time apart), and checks the sums against
NumPy's ``cumsum``. ``train_models`` trains ``TRAIN_MODELS`` on the running_sum task
(``seqscale.train``) and reports accuracy at the training length and at 4x. ``run``
does all of it and writes ``results.json``, ``results.md`` and ``running_sum.png``.
``studies.crossover`` times the general linear recurrence the same way.
Shapes: B batch, T (or n) length, D width.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seqscale import outputs
from seqscale.analysis import cost
from seqscale.analysis import depth
from seqscale.analysis import timing
from seqscale.checks import check_int
from seqscale.ops import attention as attention_ops
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
# The models trained, each with its config's hparams plus these.
TRAIN_MODELS = {
    "lstm": {},
    "mingru": {"mode": "associative"},
    "transformer": {"causal": True, "num_layers": 2},
}


@dataclasses.dataclass(frozen=True)
class Settings:
  """What ``run`` measures and trains. Defaults: the full run (about 8 min on 2 CPU cores)."""
  max_n: int = 100_000  # longest n of the sweep (4, 8, 16, ... and max_n)
  attention_max_n: int = DEFAULT_ATTENTION_MAX_N  # attention not run above (O(n^2) scores)
  repeats: int = 3  # timed runs per measurement (median reported)
  # Model name (in TRAIN_MODELS) -> its trainer ConfigDict (experiments/configs/running_sum.py);
  # empty: no training.
  train_configs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  train_steps: int | None = None  # training steps per model; None: each config's num_steps
  quick: bool = False  # recorded only: the entry point's --quick

  def __post_init__(self):
    check_int("max_n", self.max_n, 4)
    check_int("attention_max_n", self.attention_max_n, 1)
    check_int("repeats", self.repeats, 1)
    if self.train_steps is not None:
      check_int("train_steps", self.train_steps, 1)
    unknown = sorted(set(self.train_configs) - set(TRAIN_MODELS))
    if unknown:
      raise ValueError(f"train_configs={unknown}: unknown models; allowed: "
                       f"{', '.join(TRAIN_MODELS)}")


QUICK = Settings(max_n=4096, quick=True)


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


def _check_method(method: str) -> None:
  if method not in RUNNING_SUMS:
    raise ValueError(f"method={method!r}; allowed: {', '.join(map(repr, METHODS))}")


def digits(n: int, seed: int = 0, dtype: Any = jnp.int32) -> Array:
  """[n] random digits 0..9 (the running_sum task's inputs), as ``dtype``."""
  check_int("n", n, 1)
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
  check_int("start", start, 1)
  check_int("max_n", max_n, start)
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
  check_int("repeats", repeats, 1)
  x_T = digits(n, seed, dtype)
  fn, args = program(method, x_T)
  times = timing.time_fresh(fn, *args, repeats=repeats)
  y_T = np.asarray(jax.jit(fn)(*args))
  want_T = np.cumsum(np.asarray(x_T), dtype=np.int64)
  err = float(np.max(np.abs(y_T.astype(np.float64) - want_T)))
  return {"method": method, "n": n, "sequential_depth": depth.sequential_depth(fn, *args),
          "flops": cost.flops(fn, *args), **times, "dtype": str(y_T.dtype), "max_abs_err": err,
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
  check_int("attention_max_n", attention_max_n, 1)
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


def rows_by(rows: Iterable[dict[str, Any]], *keys: str) -> dict[tuple[Any, ...], dict[str, Any]]:
  return {tuple(r[k] for k in keys): r for r in rows}


def sweep_table(rows: Sequence[dict[str, Any]], skipped: Sequence[dict[str, Any]] = ()) -> str:
  """Markdown: a wide depth/time table over n, then every measurement in full."""
  by = rows_by(rows, "n", "method")
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


def plot_sweep(rows: Sequence[dict[str, Any]], path: str) -> None:
  """Log-log PNG: sequential depth, FLOPs and run time against n, one line per method."""
  plt = outputs.pyplot()
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


def train_models(settings: Settings, workdir: str,
                 progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Trains each model of ``settings.train_configs`` into ``workdir/train/<model>`` (a
  finished run resumes at its end); returns one ``training_row`` per model."""
  from seqscale import train  # pylint: disable=g-import-not-at-top  # only when training
  rows = []
  for name, base in settings.train_configs.items():
    config = base.copy_and_resolve_references()
    config.model.name = name
    config.model.hparams.update(TRAIN_MODELS[name])
    steps = settings.train_steps
    if steps:
      config.num_steps = steps
      config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, steps // 10)
      config.checkpoint_every = steps
    results = train.train_and_evaluate(config, os.path.join(workdir, "train", name))
    rows.append(training_row(name, config.model.hparams.to_dict(), results))
    progress(f"trained {name}: accuracy {rows[-1]['accuracy']} at T={rows[-1]['train_length']}")
  return rows


# ------------------------------------------------------------------ outputs

def save_running_sum(workdir: str, *, demo: Sequence[dict[str, Any]],
                     rows: Sequence[dict[str, Any]], skipped: Sequence[dict[str, Any]] = (),
                     exact: Sequence[dict[str, Any]] = (),
                     training: Sequence[dict[str, Any]] = (),
                     settings: dict[str, Any] | None = None,
                     context: dict[str, Any] | None = None) -> str:
  """Writes ``results.json``, ``results.md`` and ``running_sum.png``; returns the markdown."""
  workdir = outputs.prepare_workdir(workdir)
  md = seed_table(demo) + "\n" + sweep_table(rows, skipped)
  if exact:
    md += "\nInteger sums against np.cumsum: " + "; ".join(
        f"{e['method']} {e['dtype']} n={e['n']:,}: {'exact' if e['exact'] else 'NOT exact'}"
        for e in exact) + "\n"
  if training:
    md += "\n" + training_table(training)
  outputs.write_json(os.path.join(workdir, "results.json"), {
      "experiment": "running_sum", "seed_demo": list(demo), "rows": list(rows),
      "skipped": list(skipped), "exactness": list(exact), "training": list(training),
      "settings": dict(settings or {}), "context": dict(context or {}),
      "load_average_1_5_15min": outputs.load_average()})
  outputs.write_text(os.path.join(workdir, "results.md"), md)
  if rows:
    plot_sweep(rows, os.path.join(workdir, "running_sum.png"))
  return md




def run(settings: Settings, workdir: str,
        progress: Callable[[str], None] = print) -> dict[str, Any]:
  """The seed's numbers, the sweep, exactness, then (with ``train_configs``) training.

  Writes ``results.json``, ``results.md`` and ``running_sum.png`` after the sweep, and
  again after training. Returns ``{"markdown", "rows", "skipped", "training", "context"}``.
  """
  workdir = outputs.prepare_workdir(workdir)
  ns = sweep_lengths(settings.max_n)
  demo = seed_demo()
  progress(seed_table(demo))
  rows, skipped = sweep(ns, attention_max_n=settings.attention_max_n,
                        repeats=settings.repeats, progress=progress)
  exact = exactness(settings.max_n)
  recorded = {**dataclasses.asdict(dataclasses.replace(settings, train_configs={})),
              "ns": ns, "inputs": "digits 0..9", "seed": 0,
              "train_models": {name: dict(TRAIN_MODELS[name]) for name in settings.train_configs},
              "train_configs": {k: v.to_dict() for k, v in settings.train_configs.items()}}
  context = outputs.run_context(seed=0)
  save = lambda training: save_running_sum(
      workdir, demo=demo, rows=rows, skipped=skipped, exact=exact, training=training,
      settings=recorded, context=context)
  md = save([])
  training = train_models(settings, workdir, progress) if settings.train_configs else []
  if training:
    md = save(training)
  return {"markdown": md, "rows": rows, "skipped": skipped, "training": training,
          "context": context}
