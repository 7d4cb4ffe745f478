r"""Nonlinear RNNs in parallel over time (``ops.newton``), measured against ``lax.scan``
(commands: ``experiments/parallel_rnn.py``; the overview's row: ``parallel_rnn_overview``).

The seed says an RNN's sequential dependency cannot be eliminated. ``ops.newton`` solves
all T states of a cell at once by Newton iterations whose linear step is an associative
scan: ``deer`` (full Jacobians), ``quasi_deer`` (their diagonal) and ``elk`` (here a simple
damped Newton, Jacobians scaled by 1/(1+lambda) with a fixed-point step as fallback, NOT
the Kalman-smoother form of Gonzalez et al. 2024). ``run`` measures, each a row ``kind``:

  ``exactness``  states and gradients against ``lax.scan`` (float32, float64), per cell,
                 D and T, with the iterations k each solve needed;
  ``depth``      ``analysis.sequential_depth`` with k fixed (``fixed_iters``) at T and 16 T;
  ``gain``       k against the recurrent gain g of a tanh RNN, beside its largest
                 Lyapunov exponent (``lyapunov_exponents``, QR method);
  ``trained``    k for an LSTM before and after training on running_sum;
  ``time``       FLOPs (XLA, loops times trip count), peak bytes and the median forward
                 time of lax.scan, the ``fast`` path and the Newton methods, timed
                 round-robin in one process (``analysis.timing.measure_group``);
  ``training``   the running_sum LSTM trained with impl="deer" and impl="reference":
                 losses step by step.

It writes ``results.json`` (``rows`` with ``ROW_KEYS``; None where a field does not apply
to a kind), ``results.md`` and PNGs (``parallel_rnn_report``).
Shapes: B batch, T length, I input width, D hidden width.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seqscale import outputs
from seqscale.analysis import cost
from seqscale.analysis import depth
from seqscale.analysis import timing
from seqscale.checks import check_int
from seqscale.ops import fast_recurrent
from seqscale.ops import newton
from seqscale.ops import recurrent as ref

Array = jax.Array
Row = dict[str, Any]
Progress = Callable[[str], None]

CELLS = tuple(ref.CELLS)  # rnn, lstm, gru
METHODS = ("sequential", *newton.METHODS)
DTYPES = ("float32", "float64")
KINDS = ("exactness", "depth", "gain", "trained", "time", "training")
ROW_KEYS = ("kind", "cell", "method", "T", "D", "B", "dtype", "iterations", "converged",
            "max_abs_err", "grad_max_abs_err", "sequential_depth", "flops_fwd", "peak_bytes",
            "median_s", "gain", "lyapunov", "note")
INPUT_WIDTH = 8  # I of every synthetic measurement
EXACT_GAIN = 0.5  # w_hh gain of the exactness, depth and timing weights (contracting)


@dataclasses.dataclass(frozen=True)
class Settings:
  """What ``run`` measures. Defaults: the full CPU run (about 30 min on 2 cores)."""
  cells: tuple[str, ...] = CELLS  # exactness
  widths: tuple[int, ...] = (8, 32, 64)  # D of the exactness rows
  lengths: tuple[int, ...] = (1024, 4096, 16384, 65536)  # T of the float32 exactness rows
  x64_lengths: tuple[int, ...] = (1024,)  # T of the float64 exactness rows (() for none)
  methods: tuple[str, ...] = newton.METHODS  # the Newton methods measured
  batch: int = 1  # B of the exactness, depth and gain rows
  depth_cell: str = "lstm"
  depth_width: int = 8
  depth_lengths: tuple[int, int] = (1024, 16384)  # two T, the second >= 16x the first
  gains: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)  # tanh RNN, D = 32
  gain_width: int = 32
  gain_length: int = 1024
  # Input drive of the gain sweep (x ~ scale N(0, 1)): strong inputs saturate tanh and keep
  # the RNN contracting up to g = 2; weak ones leave it chaotic above g ~ 1.3.
  gain_input_scales: tuple[float, ...] = (1.0, 0.1)
  time_cells: tuple[str, ...] = ("rnn", "lstm")
  time_width: int = 32
  time_batch: int = 1
  time_lengths: tuple[int, ...] = (1024, 4096, 16384, 65536)
  repeats: int = 5  # timed round-robin rounds (median)
  group_seconds: float = 20.0  # cap on one group's timed rounds
  memory_limit: float = 3e9  # bytes: a program whose compiled peak exceeds it is not run
  max_solve_s: float = 30.0  # a (cell, D, dtype, method) slower than this stops growing T
  train_length: int = 32  # running_sum T of the training rows
  train_width: int = 32  # LSTM hidden (= input) width
  equal_steps: int = 100  # deer vs reference, loss step by step
  train_steps: int = 1000  # the trained LSTM of the ``trained`` rows (impl fast)
  quick: bool = False  # recorded only
  gpu_sweep: bool = False  # recorded only

  def __post_init__(self):
    for name, allowed in (("cells", CELLS), ("methods", newton.METHODS), ("time_cells", CELLS)):
      _check_tuple(self, name, lambda v, a=allowed: v in a, "names in " + ", ".join(allowed),
                   empty_ok=name == "time_cells")
    for name in ("widths", "lengths", "x64_lengths", "time_lengths", "depth_lengths"):
      _check_tuple(self, name, _positive_int, "ints >= 1", empty_ok=name == "x64_lengths")
    for name in ("gains", "gain_input_scales"):
      _check_tuple(self, name, _positive_number, "numbers > 0")
    if self.depth_cell not in CELLS:
      raise ValueError(f"depth_cell={self.depth_cell!r}; allowed: {', '.join(CELLS)}")
    t = self.depth_lengths
    if len(t) != 2 or t[1] < 16 * t[0]:
      raise ValueError(f"depth_lengths={t!r}; must be two lengths (T0, T1), T1 >= 16 T0")
    for name in ("batch", "depth_width", "gain_width", "gain_length", "time_width",
                 "time_batch", "repeats", "train_length", "train_width"):
      check_int(name, getattr(self, name), 1)
    for name in ("equal_steps", "train_steps"):
      check_int(name, getattr(self, name), 0)
    for name in ("group_seconds", "memory_limit", "max_solve_s"):
      if not _positive_number(getattr(self, name)):
        raise ValueError(f"{name}={getattr(self, name)!r}; must be a number > 0")


def _positive_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _positive_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def _check_tuple(s: Settings, name: str, ok: Callable[[Any], bool], what: str,
                 empty_ok: bool = False) -> None:
  v = getattr(s, name)
  if not isinstance(v, tuple) or (not v and not empty_ok) or not all(map(ok, v)):
    raise ValueError(f"{name}={v!r}; must be a {'' if empty_ok else 'non-empty '}tuple of "
                     f"{what}")


QUICK = Settings(
    cells=CELLS, widths=(8,), lengths=(1024,), x64_lengths=(64,), depth_width=8,
    depth_lengths=(64, 1024), gains=(0.5, 1.0, 1.5, 2.0), gain_length=256,
    time_cells=("lstm",), time_width=8, time_lengths=(1024,), repeats=3, group_seconds=3.0,
    memory_limit=1e9, max_solve_s=10.0, train_length=8, train_width=16, equal_steps=10,
    train_steps=10, quick=True)

# Part 6 of issue 14, for a GPU (not run on the CPU machine where this was written): D in
# {2, 8, 32, 64}, B in {1, 16}, T in {1k, 16k, 64k}, tanh RNN and LSTM; exactness in float32
# at the same D and T; no training.
GPU_SWEEP = Settings(
    cells=("rnn", "lstm"), widths=(2, 8, 32, 64), lengths=(1024, 16384, 65536),
    x64_lengths=(1024,), depth_lengths=(1024, 16384), gain_length=4096,
    time_cells=("rnn", "lstm"), time_lengths=(1024, 16384, 65536), repeats=10,
    memory_limit=100e9, max_solve_s=120.0, equal_steps=0, train_steps=0, gpu_sweep=True)
GPU_WIDTHS = (2, 8, 32, 64)
GPU_BATCHES = (1, 16)


def row(kind: str, **fields: Any) -> Row:
  """A row with every ``ROW_KEYS`` field (None unless given)."""
  out = dict.fromkeys(ROW_KEYS)
  out.update(kind=kind, **fields)
  return out


# ------------------------------------------------------------------ weights and inputs

def cell_params(cell: str, I: int, D: int, gain: float, dtype: Any = jnp.float32,
                seed: int = 0) -> dict[str, Array]:
  """w_ih [I, G*D] ~ N(0, 1/I), w_hh [D, G*D] ~ gain N(0, 1/D), biases ~ 0.1 N(0, 1).

  For the tanh RNN ``gain`` is about w_hh's spectral radius (circular law).
  """
  rng = np.random.default_rng(seed)
  G = ref.NUM_GATES[cell]
  p = {"w_ih": rng.standard_normal((I, G * D)) / np.sqrt(I),
       "w_hh": gain * rng.standard_normal((D, G * D)) / np.sqrt(D),
       "b_ih": 0.1 * rng.standard_normal(G * D), "b_hh": 0.1 * rng.standard_normal(G * D)}
  return {k: jnp.asarray(v, dtype) for k, v in p.items()}


def inputs(B: int, T: int, I: int, dtype: Any = jnp.float32, seed: int = 1) -> Array:
  """x_BTI, standard normal."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal((B, T, I)), dtype)


def max_abs_err(a: Any, b: Any) -> float:
  """Max |a - b| over the leaves of two pytrees (in float64)."""
  return max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
             for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ------------------------------------------------------------------ Lyapunov exponents

def lyapunov_exponents(step: Callable[[Array, Array], Array], h0_D: Array, xs_T: Array,
                       num: int | None = None) -> Array:
  """The ``num`` largest Lyapunov exponents (nats per step) of ``h_t = step(h_{t-1}, x_t)``.

  QR method: Q_0 = I; at each step Z = J_t Q_{t-1} with J_t = d step / dh at h_{t-1},
  Z = Q_t R_t, and exponent i is the mean over t of log |R_t[i, i]|.

  Args:
    step: one example's cell, h_D, x_t -> h_D.
    h0_D: [D] initial state.
    xs_T: inputs with a leading time axis [T, ...].
    num: how many exponents (all D when None).

  Returns:
    [num] exponents, largest first.
  """
  D = h0_D.shape[-1]
  num = D if num is None else num
  q0 = jnp.eye(D, num, dtype=h0_D.dtype)

  def body(carry, x):
    h, q = carry
    jac = jax.jacfwd(step)(h, x)
    q, r = jnp.linalg.qr(jac @ q)
    return (step(h, x), q), jnp.log(jnp.abs(jnp.diagonal(r)))

  _, logs_TN = jax.lax.scan(body, (h0_D, q0), xs_T)
  return jnp.sort(jnp.mean(logs_TN, axis=0))[::-1]


def rnn_lyapunov(params: dict[str, Array], x_TI: Array) -> Array:
  """Largest Lyapunov exponent of the tanh RNN (``ops.recurrent.rnn_cell``) along the
  trajectory driven by x_TI [T, I] from h = 0."""
  step = lambda h, xw: ref.rnn_cell(params, h[None], xw[None])[0][0]
  xw_TD = ref.project(x_TI, params)
  h0 = jnp.zeros(params["w_hh"].shape[0], x_TI.dtype)
  return lyapunov_exponents(step, h0, xw_TD, num=1)[0]


# ------------------------------------------------------------------ the solves

def _solve_fn(cell: str, method: str, **solver: Any) -> Callable[..., Any]:
  """jit(x, p, w) -> (y_BTD, iterations, converged, fell_back, grads of sum(y w) in p, x)."""
  def loss(p, x, w):
    if method == "sequential":
      y, _ = ref.run(cell, x, p)
      info = (jnp.int32(0), jnp.bool_(True), jnp.bool_(False))
    else:
      y, _, i = newton.run(cell, x, p, method=method, **solver)
      info = (i.iterations, i.converged, i.fell_back)
    return jnp.sum(y * w), (y, info)

  def fn(x, p, w):
    (_, (y, info)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(p, x, w)
    return y, *info, grads
  return fn


def _compile(fn: Callable[..., Any], *args: Any, memory_limit: float
             ) -> tuple[Any, int | None, str | None]:
  compiled = jax.jit(fn).lower(*args).compile()
  peak = timing.peak_bytes(compiled)
  if peak is not None and peak > memory_limit:
    return None, peak, (f"not run: compiled peak {peak / 1e9:.2f} GB > memory_limit "
                        f"{memory_limit / 1e9:.2f} GB")
  return compiled, peak, None


def exactness(s: Settings, progress: Progress) -> list[Row]:
  """States and gradients of every method against lax.scan, per cell, D, dtype and T.

  A (cell, D, dtype, method) whose solve took over ``s.max_solve_s`` is not run at longer
  T; a program whose compiled peak exceeds ``s.memory_limit`` is not run (rows say so).
  """
  rows = []
  for dtype_name, lengths in (("float32", s.lengths), ("float64", s.x64_lengths)):
    with jax.enable_x64(dtype_name == "float64"):
      dtype = jnp.dtype(dtype_name)
      for cell in s.cells:
        for D in s.widths:
          slow: dict[str, str] = {}
          for T in sorted(lengths):
            rows += _exact_case(s, cell, D, T, dtype, slow, progress)
  return rows


def _exact_case(s: Settings, cell: str, D: int, T: int, dtype: Any, slow: dict[str, str],
                progress: Progress) -> list[Row]:
  p = cell_params(cell, INPUT_WIDTH, D, EXACT_GAIN, dtype)
  x = inputs(s.batch, T, INPUT_WIDTH, dtype)
  w = inputs(s.batch, T, D, dtype, seed=2)
  meta = dict(cell=cell, T=T, D=D, B=s.batch, dtype=dtype.name)
  want, _, peak, note = _run_case(_solve_fn(cell, "sequential"), x, p, w, s.memory_limit)
  rows = [row("exactness", method="sequential", iterations=0, converged=True, max_abs_err=0.0,
              grad_max_abs_err=0.0, peak_bytes=peak, note=note, **meta)]
  if want is not None:  # what the gradient errors compare with
    meta["grad_scale"] = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(want[4]))
    rows[0]["grad_scale"] = meta["grad_scale"]
  for method in s.methods:
    if want is None or method in slow:
      rows.append(row("exactness", method=method, note=slow.get(method, note), **meta))
      continue
    got, seconds, peak, note = _run_case(_solve_fn(cell, method), x, p, w, s.memory_limit)
    r = row("exactness", method=method, peak_bytes=peak, note=note, **meta)
    if got is not None:
      y, k, conv, fell, grads = got
      r.update(iterations=int(k), converged=bool(conv), max_abs_err=max_abs_err(y, want[0]),
               grad_max_abs_err=max_abs_err(grads, want[4]), median_s=seconds)
      if bool(fell):
        r["note"] = "not converged: fell back to lax.scan (errors are the fallback's)"
      if seconds > s.max_solve_s:
        slow[method] = f"not run: T={T:,} took {seconds:.0f} s > max_solve_s"
      progress(f"exactness {cell} D={D} T={T:,} {dtype.name} {method}: k={r['iterations']}, "
               f"max|dy|={r['max_abs_err']:.1e}, max|dgrad|={r['grad_max_abs_err']:.1e}")
    rows.append(r)
  return rows


def _run_case(fn, x, p, w, memory_limit):
  """(outputs or None, seconds of one run (compile apart), peak bytes, note)."""
  try:
    compiled, peak, note = _compile(fn, x, p, w, memory_limit=memory_limit)
  except Exception as e:  # pylint: disable=broad-except  # out of memory while compiling
    return None, None, None, f"failed: {type(e).__name__}: {' '.join(str(e).split())[:120]}"
  if compiled is None:
    return None, None, peak, note
  t0 = time.perf_counter()
  out = jax.block_until_ready(compiled(x, p, w))
  return out, time.perf_counter() - t0, peak, None


def measured_iterations(rows: Sequence[Row], cell: str, D: int, T: int, method: str,
                        dtype: str = "float32") -> int | None:
  """k of a converged ``exactness`` row, None if there is none."""
  for r in rows:
    if (r["kind"], r["cell"], r["D"], r["T"], r["method"], r["dtype"]) == (
        "exactness", cell, D, T, method, dtype) and r["converged"]:
      return r["iterations"]
  return None


def iterations(cell: str, D: int, T: int, method: str, B: int = 1) -> int:
  """k of one float32 forward solve (the exactness weights and inputs)."""
  p = cell_params(cell, INPUT_WIDTH, D, EXACT_GAIN)
  x = inputs(B, T, INPUT_WIDTH)
  info = jax.jit(functools.partial(newton.run, cell, method=method))(x, p)[2]
  return int(info.iterations)


def depth_rows(s: Settings, known: Sequence[Row], progress: Progress) -> list[Row]:
  """Sequential depth of lax.scan and of each method with k fixed, at T0 and T1 >= 16 T0."""
  cell, D = s.depth_cell, s.depth_width
  p = cell_params(cell, INPUT_WIDTH, D, EXACT_GAIN)
  rows = []
  for T in s.depth_lengths:
    x = jax.ShapeDtypeStruct((s.batch, T, INPUT_WIDTH), jnp.float32)
    meta = dict(cell=cell, T=T, D=D, B=s.batch, dtype="float32")
    d = depth.sequential_depth(lambda x: ref.run(cell, x, p)[0], x)
    rows.append(row("depth", method="sequential", iterations=0, sequential_depth=d, **meta))
    for m in s.methods:
      k = measured_iterations(known, cell, D, T, m) or iterations(cell, D, T, m, s.batch)
      fn = lambda x: newton.run(cell, x, p, method=m, fixed_iters=k, on_fail="raise")[0]
      rows.append(row("depth", method=m, iterations=k,
                      sequential_depth=depth.sequential_depth(fn, x), **meta))
    progress(f"depth {cell} D={D} T={T:,}: " + ", ".join(
        f"{r['method']} {r['sequential_depth']} (k={r['iterations']})" for r in rows[-4:]))
  return rows


def gain_rows(s: Settings, progress: Progress) -> list[Row]:
  """k of each method against the gain of a tanh RNN, beside its Lyapunov exponent.

  The iteration cap is T (enough in exact arithmetic); a solve that overflows or hits the
  cap is reported not converged (and fell back to lax.scan).
  """
  D, T = s.gain_width, s.gain_length
  lyap = jax.jit(rnn_lyapunov)
  solve = {m: jax.jit(functools.partial(newton.run, "rnn", method=m, max_iters=T))
           for m in s.methods}
  seq = jax.jit(functools.partial(ref.run, "rnn"))
  rows = []
  for scale, g in ((scale, g) for scale in s.gain_input_scales for g in s.gains):
    x = scale * inputs(s.batch, T, INPUT_WIDTH)
    p = cell_params("rnn", INPUT_WIDTH, D, g)
    lam = float(lyap(p, x[0]))
    want = seq(x, p)[0]
    meta = dict(cell="rnn", T=T, D=D, B=s.batch, dtype="float32", gain=float(g), lyapunov=lam,
                input_scale=float(scale))
    rows.append(row("gain", method="sequential", iterations=0, converged=True, **meta))
    for m in s.methods:
      t0 = time.perf_counter()
      y, _, info = jax.block_until_ready(solve[m](x, p))
      r = row("gain", method=m, iterations=int(info.iterations),
              converged=bool(info.converged), max_abs_err=max_abs_err(y, want),
              median_s=time.perf_counter() - t0, **meta)
      if not r["converged"]:
        r["note"] = f"residual {float(info.residual):.3g}; fell back to lax.scan"
      rows.append(r)
    progress(f"gain {g} (input scale {scale:g}): lyapunov {lam:+.3f}; " + ", ".join(
        f"{r['method']} k={r['iterations']}{'' if r['converged'] else ' (failed)'}"
        for r in rows[-len(s.methods):]))
  return rows


def _forward(cell: str, impl: str) -> Callable[[Array, Any], Array]:
  if impl == "sequential":
    return lambda x, p: ref.run(cell, x, p)[0]
  if impl == "fast":
    return lambda x, p: fast_recurrent.run(cell, x, p)[0]
  return lambda x, p: newton.run(cell, x, p, method=impl)[0]


def time_rows(s: Settings, known: Sequence[Row], progress: Progress) -> list[Row]:
  """Forward of lax.scan, ``fast`` and each method, timed round-robin per (cell, T); FLOPs
  with k fixed (XLA cannot count a while loop of unknown trip count)."""
  rows = []
  D, B = s.time_width, s.time_batch
  for cell in s.time_cells:
    p = cell_params(cell, INPUT_WIDTH, D, EXACT_GAIN)
    for T in s.time_lengths:
      x = inputs(B, T, INPUT_WIDTH)
      impls = ("sequential", "fast", *s.methods)
      cands = [timing.Candidate(i, _forward(cell, i), (x, p)) for i in impls]
      meta = {"layer": cell, "T": T, "B": B, "dtype": "float32", "pass": "fwd",
              "tokens": B * T}
      group = timing.measure_group(cands, meta, repeats=s.repeats, min_repeats=2,
                                   group_seconds=s.group_seconds,
                                   memory_limit=s.memory_limit, max_call_s=s.max_solve_s,
                                   progress=progress)
      for g in group:
        impl = g["impl"]
        r = row("time", cell=cell, method=impl, T=T, D=D, B=B, dtype="float32",
                peak_bytes=g["peak_bytes"], median_s=g["median_s"], note=g.get("note"))
        r["impl"] = impl  # "fast" is lax.scan with a hand-written backward pass
        if impl == "fast":
          r["method"] = "sequential"
        if g["median_s"] is not None:
          r.update(_flops_and_k(cell, impl, x, p, D, T, B, known))
        rows.append(r)
  return rows


def _flops_and_k(cell, impl, x, p, D, T, B, known) -> Row:
  if impl in ("sequential", "fast"):
    return {"iterations": 0, "flops_fwd": cost.flops(_forward(cell, impl), x, p)}
  k = measured_iterations(known, cell, D, T, impl) if B == 1 else None
  k = k or iterations(cell, D, T, impl, B)
  fn = lambda x, p: newton.run(cell, x, p, method=impl, fixed_iters=k, on_fail="raise")[0]
  return {"iterations": k, "flops_fwd": cost.flops(fn, x, p)}


def gpu_sweep_rows(s: Settings, progress: Progress) -> list[Row]:
  """Part 6 of issue 14: ``time_rows`` at every D in ``GPU_WIDTHS`` and B in
  ``GPU_BATCHES``. Written for a GPU and not run where this was written (no GPU there)."""
  rows = []
  for D in GPU_WIDTHS:
    for B in GPU_BATCHES:
      rows += time_rows(dataclasses.replace(s, time_width=D, time_batch=B), [], progress)
  return rows


# ------------------------------------------------------------------ the run

def run(settings: Settings, workdir: str, progress: Progress = print) -> dict[str, Any]:
  """Measures every kind (``KINDS``), writing the outputs after each part.

  Returns ``{"markdown", "rows", "context", "seconds"}``.
  """
  from seqscale.studies import parallel_rnn_report as report  # pylint: disable=g-import-not-at-top
  from seqscale.studies import parallel_rnn_train  # pylint: disable=g-import-not-at-top
  workdir = outputs.prepare_workdir(workdir)
  s = settings
  context = outputs.run_context(seed=0, quick=s.quick, gpu_sweep=s.gpu_sweep,
                                settings=dataclasses.asdict(s))
  rows: list[Row] = []
  seconds: dict[str, float] = {}
  start, cpu_start = time.perf_counter(), time.process_time()

  def part(name: str, fn: Callable[[], list[Row]]) -> None:
    t0, c0 = time.perf_counter(), time.process_time()
    progress(f"[parallel_rnn] {name} ...")
    rows.extend(fn())
    seconds[name] = round(time.perf_counter() - t0, 1)
    seconds[name + "_cpu"] = round(time.process_time() - c0, 1)
    progress(f"[parallel_rnn] {name} done in {seconds[name]} s, CPU {seconds[name + '_cpu']} s "
             f"(elapsed {time.perf_counter() - start:.0f} s)")
    report.save(workdir, rows, context=context, seconds=seconds, plots=False)

  part("exactness", lambda: exactness(s, progress))
  part("depth", lambda: depth_rows(s, rows, progress))
  part("gain", lambda: gain_rows(s, progress))
  if s.gpu_sweep:
    part("time", lambda: gpu_sweep_rows(s, progress))
  else:
    part("time", lambda: time_rows(s, rows, progress))
  if s.equal_steps:
    ref_dir: list[str] = []

    def train_part() -> list[Row]:
      out, path = parallel_rnn_train.training_rows(s, workdir, progress)
      ref_dir.append(path)
      return out
    part("training", train_part)
    if s.train_steps:
      part("trained", lambda: parallel_rnn_train.trained_rows(s, workdir, ref_dir[0],
                                                              progress))
  seconds["total"] = round(time.perf_counter() - start, 1)
  seconds["total_cpu"] = round(time.process_time() - cpu_start, 1)
  md = report.save(workdir, rows, context=context, seconds=seconds, plots=True)
  return {"markdown": md, "rows": rows, "context": context, "seconds": seconds}
