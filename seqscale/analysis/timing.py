"""Time: compile apart from run, and candidates timed side by side in one process.

On a shared, noisy machine an absolute time says little; a ratio between two candidates
run in the same process, alternating, says much more. ``measure_group`` compiles every
candidate of a group first, then runs them round-robin, so a load that comes and goes
slows every candidate alike. PyTorch peers join a group as plain thunks.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from seqscale.analysis import cost

Row = dict[str, Any]
Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Timing:
  """Seconds: lowering and compiling apart from running (median of ``runs``)."""
  lower_s: float
  compile_s: float
  run_s: float
  runs: tuple[float, ...]


def time_fn(f: Callable[..., Any], *args: Any, repeats: int = 5, warmup: int = 1) -> Timing:
  """Times ``jax.jit(f)`` on concrete ``args``: lower, compile, then ``repeats`` runs.

  Each run waits with ``block_until_ready``; ``warmup`` runs after compiling are not
  counted.
  """
  t0 = time.perf_counter()
  lowered = jax.jit(f).lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  for _ in range(warmup):
    jax.block_until_ready(compiled(*args))
  runs = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    runs.append(time.perf_counter() - start)
  return Timing(lower_s=t1 - t0, compile_s=t2 - t1, run_s=statistics.median(runs),
                runs=tuple(runs))


def time_fresh(f: Callable[..., Any], *args: Any, repeats: int,
               min_total_s: float = 0.1) -> dict[str, float]:
  """``time_fn`` after clearing JAX's caches (so the compile time is never a cache hit),
  with more runs for fast programs: at least ``min_total_s`` in all, at most 1,000, since
  one run of a few microseconds is mostly noise on a shared machine.

  Keys: ``run_s`` (median), ``run_min_s`` (fastest), ``compile_s``, ``lower_s``, ``runs``.
  """
  jax.clear_caches()
  timing = time_fn(f, *args, repeats=repeats)
  runs = timing.runs
  if sum(runs) < min_total_s:
    more = min(1000, math.ceil(min_total_s / max(timing.run_s, 1e-7)))
    runs = time_fn(f, *args, repeats=more, warmup=0).runs
  return {"run_s": float(np.median(runs)), "run_min_s": float(min(runs)),
          "compile_s": timing.compile_s, "lower_s": timing.lower_s, "runs": len(runs)}


def alternate(runs: dict[str, Callable[[], Any]], rounds: int
              ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
  """Calls every thunk of ``runs`` once per round, in turn, for ``rounds`` rounds, so that
  a change in the machine's load falls on all of them alike; returns (wall, cpu) seconds
  per name, one entry per round (cpu: this process's CPU time, all threads)."""
  wall: dict[str, list[float]] = {n: [] for n in runs}
  cpu: dict[str, list[float]] = {n: [] for n in runs}
  for _ in range(rounds):
    for name, run in runs.items():
      c0, t0 = time.process_time(), time.perf_counter()
      run()
      wall[name].append(time.perf_counter() - t0)
      cpu[name].append(time.process_time() - c0)
  return wall, cpu


def peak_bytes(compiled: jax.stages.Compiled) -> int | None:
  """Peak memory of a compiled program (``cost.Memory.total_bytes``), None if unknown."""
  mem = cost.compiled_memory(compiled)
  return None if mem is None else mem.total_bytes


@dataclasses.dataclass
class Candidate:
  """One implementation in a group: a JAX function of ``args`` or a PyTorch thunk."""
  impl: str
  fn: Callable[..., Any]
  args: tuple[Any, ...] = ()
  torch: bool = False


def _prepare(c: Candidate, row: Row, memory_limit: float) -> Callable[[], Any] | None:
  """Compiles a JAX candidate (a PyTorch one needs nothing); None when it is skipped."""
  if c.torch:
    return c.fn
  t0 = time.perf_counter()
  compiled = jax.jit(c.fn).lower(*c.args).compile()
  row["compile_s"] = time.perf_counter() - t0
  row["peak_bytes"] = peak_bytes(compiled)
  if row["peak_bytes"] is not None and row["peak_bytes"] > memory_limit:
    row["note"] = (f"skipped: needs {row['peak_bytes'] / 1e9:.1f} GB > memory_limit "
                   f"{memory_limit / 1e9:.1f} GB")
    return None
  return lambda: jax.block_until_ready(compiled(*c.args))


def measure_group(cands: Sequence[Candidate], meta: Row, *, repeats: int, min_repeats: int,
                  group_seconds: float, memory_limit: float, max_call_s: float = math.inf,
                  progress: Progress | None = None) -> list[Row]:
  """Compiles every candidate, then times them round-robin; one row per candidate.

  ``meta`` holds the shared fields (layer, T, B, D, dtype, pass, and ``tokens``, the
  tokens one step processes). Each row adds ``impl``, ``median_s``, ``tokens_per_s``,
  ``peak_bytes``, ``compile_s`` and ``runs``. A candidate that fails or is skipped keeps
  its row with a ``note`` and no time; one whose first run took over ``max_call_s`` is not
  repeated (``runs`` 1). The repetitions are cut from ``repeats`` towards ``min_repeats``
  when a round-robin would exceed ``group_seconds``.
  """
  rows, ready = [], []
  for c in cands:
    row = {k: v for k, v in meta.items() if k != "tokens"}
    row.update(impl=c.impl, median_s=None, tokens_per_s=None, peak_bytes=None,
               compile_s=None)
    try:
      call = _prepare(c, row, memory_limit)
    except Exception as e:  # pylint: disable=broad-except  # a peer that cannot run here
      call = None
      row["note"] = f"failed: {type(e).__name__}: {' '.join(str(e).split())[:160]}"
    rows.append(row)
    if call is not None:  # a first, untimed run (warm-up), which also says how long one is
      t0 = time.perf_counter()
      call()
      ready.append((row, call, time.perf_counter() - t0))
  times = {id(row): [t] for row, _, t in ready if t > max_call_s}
  ready = [r for r in ready if id(r[0]) not in times]
  if ready:
    one_round = sum(t for _, _, t in ready)
    n = max(min(repeats, int(group_seconds / max(one_round, 1e-9))), min_repeats)
    times.update({id(row): [] for row, _, _ in ready})
    for _ in range(n):
      for row, call, _ in ready:
        t0 = time.perf_counter()
        call()
        times[id(row)].append(time.perf_counter() - t0)
  for row in rows:
    if id(row) in times:
      row["median_s"] = statistics.median(times[id(row)])
      row["runs"] = len(times[id(row)])
      if meta.get("tokens"):
        row["tokens_per_s"] = meta["tokens"] / row["median_s"]
  if progress is not None:
    progress(group_line(meta, rows))
  return rows


def group_line(meta: Row, rows: Sequence[Row]) -> str:
  """One progress line for a measured group: each candidate's median time or its note."""
  parts = [f"{r['impl']}={r['median_s'] * 1e3:.1f}ms" if r["median_s"] else
           f"{r['impl']}=({r.get('note', 'n/a')[:40]})" for r in rows]
  return (f"{meta['layer']} {meta['dtype']} {meta['pass']} T={meta['T']} B={meta['B']}: "
          + ", ".join(parts))
