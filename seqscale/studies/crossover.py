"""Where the associative scan overtakes the sequential one: ``ops.linear_recurrence`` timed
in its three modes (sequential, associative, chunked) over T, forward and
forward+backward, in one process: ``run(settings, workdir)`` writes ``results.json``
(rows and the crossover), ``results.md`` and ``crossover.png``.
Shapes: B batch, T length, D width.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp

from seqscale import outputs
from seqscale.analysis import cost
from seqscale.analysis import depth
from seqscale.analysis import timing
from seqscale.checks import check_int
from seqscale.ops import linear_recurrence as lr_ops
from seqscale.studies import running_sum
from seqscale.studies.running_sum import TIME_KEY

Array = jax.Array


CROSSOVER_KEYS = ("mode", "pass", "T", "B", "D", "chunk_size", "run_s", "compile_s")


PASSES = ("fwd", "fwd_bwd")


@dataclasses.dataclass(frozen=True)
class Settings:
  """What ``run`` times. Defaults: T = 128 .. 65,536 (about 11 min on 2 shared CPU cores)."""
  max_t: int = 65_536  # longest T (128, 256, ... and max_t)
  batch: int = 4  # B
  width: int = 64  # D
  chunk_size: int = 64  # steps per chunk in mode chunked
  repeats: int = 5  # timed runs per measurement (median reported)
  quick: bool = False  # recorded only: the entry point's --quick

  def __post_init__(self):
    check_int("max_t", self.max_t, 128)
    for name in ("batch", "width", "chunk_size", "repeats"):
      check_int(name, getattr(self, name), 1)


QUICK = Settings(max_t=4096, quick=True)


def crossover_lengths(max_t: int, start: int = 128) -> list[int]:
  """128, 256, ... up to ``max_t`` (and ``max_t``)."""
  check_int("max_t", max_t, start)
  return running_sum.sweep_lengths(max_t, start)


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
    check_int(name, value, 1)
  a_BTD, b_BTD = recurrence_inputs(B, T, D, seed)
  fn = _recurrence_fn(mode, chunk_size)
  timed = cost.fwd_bwd(fn, argnums=(0, 1)) if backward else fn
  times = timing.time_fresh(timed, a_BTD, b_BTD, repeats=repeats)
  diff = None if backward else 0.0
  if mode != "sequential" and not backward:
    ref = jax.jit(_recurrence_fn("sequential", chunk_size))(a_BTD, b_BTD)
    diff = float(jnp.max(jnp.abs(jax.jit(fn)(a_BTD, b_BTD) - ref)))
  return {"mode": mode, "pass": "fwd_bwd" if backward else "fwd", "T": T, "B": B, "D": D,
          "chunk_size": chunk_size, **times,
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
  by = running_sum.rows_by(rows, "mode", "pass", "T")
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
  by = running_sum.rows_by(rows, "mode", "pass", "T")
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
  plt = outputs.pyplot()
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


def save_crossover(workdir: str, rows: Sequence[dict[str, Any]], *,
                   settings: dict[str, Any] | None = None,
                   context: dict[str, Any] | None = None) -> str:
  """Writes ``results.json``, ``results.md`` and ``crossover.png``; returns the markdown."""
  workdir = outputs.prepare_workdir(workdir)
  summary = crossover_summary(rows)
  md = crossover_table(rows, summary)
  outputs.write_json(os.path.join(workdir, "results.json"), {
      "experiment": "crossover", "rows": list(rows), "crossover": summary,
      "settings": dict(settings or {}), "context": dict(context or {}),
      "load_average_1_5_15min": outputs.load_average()})
  outputs.write_text(os.path.join(workdir, "results.md"), md)
  if rows:
    plot_crossover(rows, os.path.join(workdir, "crossover.png"))
  return md


def run(settings: Settings, workdir: str,
        progress: Callable[[str], None] | None = print) -> dict[str, Any]:
  """``crossover`` over ``crossover_lengths(settings.max_t)``, then ``save_crossover``.

  Returns ``{"markdown", "rows", "context"}``.
  """
  workdir = outputs.prepare_workdir(workdir)
  s = settings
  ts = crossover_lengths(s.max_t)
  rows = crossover(ts, B=s.batch, D=s.width, chunk_size=s.chunk_size, repeats=s.repeats,
                   progress=progress)
  recorded = {"ts": ts, "B": s.batch, "D": s.width, "chunk_size": s.chunk_size,
              "repeats": s.repeats, "dtype": "float32", "quick": s.quick,
              "inputs": "a uniform in [0.9, 1), b standard normal"}
  context = outputs.run_context(seed=0, dtype="float32")
  md = save_crossover(workdir, rows, settings=recorded, context=context)
  return {"markdown": md, "rows": rows, "context": context}
