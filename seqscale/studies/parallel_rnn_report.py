"""The parallel-RNN study's report: markdown tables, summary numbers and PNG plots.

Everything here reads the rows of ``studies.parallel_rnn`` (``ROW_KEYS``, a ``kind`` each);
nothing is measured. ``overview_text`` and ``plot_overview`` are the overview's row and plot.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

from seqscale import outputs

Row = dict[str, Any]
NEWTON = ("deer", "quasi_deer", "elk")
ELK_NOTE = ("elk here is a simple damped Newton (Jacobians scaled by 1/(1+lambda), a "
            "fixed-point step where Newton does not reduce the residual), not the "
            "Kalman-smoother ELK of Gonzalez et al. 2024.")


def _of(rows: Sequence[Row], kind: str, **match: Any) -> list[Row]:
  return [r for r in rows if r["kind"] == kind
          and all(r.get(k) == v for k, v in match.items())]


def _e(v: Any) -> str:
  return "-" if v is None else f"{v:.1e}"


def _k(r: Row | None) -> str:
  if r is None or r["iterations"] is None:
    return "-" if r is None or not r.get("note") else "n/r"
  return f"{r['iterations']}" + ("" if r["converged"] in (True, None) else "!")


# ------------------------------------------------------------------ summaries

def depth_growth(rows: Sequence[Row]) -> dict[str, dict[str, Any]]:
  """Per method: depth at the two T of the ``depth`` rows, their ratio, and for the Newton
  methods the growth of depth per iteration, depth1 / k1 - depth0 / k0 (k may differ at
  the two T), to compare with 4 log2(T1 / T0) (two primitives per associative-scan level)."""
  out = {}
  for method in ("sequential", *NEWTON):
    mine = sorted(_of(rows, "depth", method=method), key=lambda r: r["T"])
    if len(mine) < 2:
      continue
    a, b = mine[0], mine[-1]
    out[method] = {"T0": a["T"], "T1": b["T"], "depth0": a["sequential_depth"],
                   "depth1": b["sequential_depth"], "k0": a["iterations"],
                   "k1": b["iterations"],
                   "ratio": b["sequential_depth"] / max(a["sequential_depth"], 1),
                   "growth_per_iteration": (
                       b["sequential_depth"] / b["iterations"]
                       - a["sequential_depth"] / a["iterations"]
                       if method != "sequential" and a["iterations"] and b["iterations"]
                       else None),
                   "log2_T_ratio": math.log2(b["T"] / a["T"])}
  return out


def ratios(rows: Sequence[Row]) -> list[Row]:
  """Per timed (cell, T) and method: FLOPs, peak bytes and median time over lax.scan's."""
  out = []
  for r in _of(rows, "time"):
    base = next((b for b in _of(rows, "time", cell=r["cell"], T=r["T"], B=r["B"], D=r["D"])
                 if b.get("impl") == "sequential"), None)
    if base is None or r.get("impl") == "sequential":
      continue
    div = lambda key: (r[key] / base[key] if r[key] is not None and base[key] else None)
    out.append({"cell": r["cell"], "T": r["T"], "D": r["D"], "B": r["B"], "impl": r["impl"],
                "iterations": r["iterations"], "flops": div("flops_fwd"),
                "peak_bytes": div("peak_bytes"), "time": div("median_s")})
  return out


def crossover(rows: Sequence[Row]) -> list[str]:
  """One sentence per (cell, method): the T at which it is faster than lax.scan, if any."""
  lines = []
  rs = ratios(rows)
  for cell in sorted({r["cell"] for r in rs}):
    for impl in ("fast", *NEWTON):
      mine = sorted((r for r in rs if r["cell"] == cell and r["impl"] == impl
                     and r["time"] is not None), key=lambda r: r["T"])
      if not mine:
        continue
      faster = [r["T"] for r in mine if r["time"] < 1]
      span = ", ".join(f"{r['time']:.2f}x at T={r['T']:,}" for r in mine)
      verdict = (f"faster than lax.scan at T = {', '.join(f'{t:,}' for t in faster)}"
                 if faster else "never faster than lax.scan here")
      lines.append(f"{cell} {impl}: {verdict} (time / lax.scan's: {span}).")
  return lines


def training_summary(rows: Sequence[Row]) -> str | None:
  """deer vs reference training losses, one sentence."""
  tr = {r.get("impl"): r for r in _of(rows, "training")}
  if "reference" not in tr or "deer" not in tr:
    return None
  a, b = tr["reference"]["losses"], tr["deer"]["losses"]
  n = min(len(a), len(b))
  rel = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a[:n], b[:n]))
  return (f"running_sum LSTM (D={tr['deer']['D']}, T={tr['deer']['T']}, B=16), {n} steps: "
          f"max |loss(deer) - loss(reference)| = {tr['deer']['loss_max_abs_diff']:.2e} "
          f"(relative {rel:.2e}); loss {a[0]:.4f} -> {a[n - 1]:.4f} (reference), "
          f"{b[0]:.4f} -> {b[n - 1]:.4f} (deer); wall {tr['reference']['median_s']:.0f} s "
          f"(reference) vs {tr['deer']['median_s']:.0f} s (deer), compile and eval included.")


def overview_text(rows: Sequence[Row]) -> str:
  """The overview's one line: LSTM depth under lax.scan and DEER at the shortest and
  longest T, with DEER's iterations."""
  seq = sorted(_of(rows, "depth", method="sequential"), key=lambda r: r["T"])
  deer = sorted(_of(rows, "depth", method="deer"), key=lambda r: r["T"])
  if len(seq) < 2 or len(deer) < 2:
    return "-"
  return (f"LSTM depth T={seq[0]['T']:,} -> {seq[-1]['T']:,}: lax.scan "
          f"{seq[0]['sequential_depth']:,} -> {seq[-1]['sequential_depth']:,}, DEER "
          f"{deer[0]['sequential_depth']:,} -> {deer[-1]['sequential_depth']:,} "
          f"(k = {', '.join(str(r['iterations']) for r in deer)})")


# ------------------------------------------------------------------ tables

def exactness_table(rows: Sequence[Row]) -> str:
  """One line per (cell, D, dtype, T): each method's k, max |dy| and max |dgrad|."""
  ex = _of(rows, "exactness")
  keys = sorted({(r["cell"], r["D"], r["dtype"], r["T"]) for r in ex},
                key=lambda k: (k[2], k[0], k[1], k[3]))
  head = " | ".join(f"{m} k | {m} max abs dy | {m} max abs dgrad" for m in NEWTON)
  lines = [f"| cell | D | dtype | T | {head} | max abs grad (lax.scan) | note |",
           "|---|---|---|---|" + "---|" * (3 * len(NEWTON)) + "---|---|"]
  for cell, D, dtype, T in keys:
    by = {r["method"]: r for r in _of(ex, "exactness", cell=cell, D=D, dtype=dtype, T=T)}
    cols = " | ".join(f"{_k(by.get(m))} | {_e((by.get(m) or {}).get('max_abs_err'))} | "
                      f"{_e((by.get(m) or {}).get('grad_max_abs_err'))}" for m in NEWTON)
    notes = sorted({r["note"] for r in by.values() if r.get("note")})
    scale = _e(by["sequential"].get("grad_scale")) if "sequential" in by else "-"
    lines.append(f"| {cell} | {D} | {dtype} | {T:,} | {cols} | {scale} | {'; '.join(notes)} |")
  return "\n".join(lines) + "\n"


def depth_table(rows: Sequence[Row]) -> str:
  """Depth at T0 and T1 per method, k fixed at the measured count."""
  lines = ["| method | T0 | depth (k) | T1 | depth (k) | depth ratio | depth/k growth "
           "(4 log2 T1/T0) |", "|---|---|---|---|---|---|---|"]
  for m, g in depth_growth(rows).items():
    per = "-" if g["growth_per_iteration"] is None else f"{g['growth_per_iteration']:.1f}"
    lines.append(f"| {m} | {g['T0']:,} | {g['depth0']:,} ({g['k0']}) | {g['T1']:,} | "
                 f"{g['depth1']:,} ({g['k1']}) | {g['ratio']:.2f}x | {per} "
                 f"({4 * g['log2_T_ratio']:.0f}) |")
  return "\n".join(lines) + "\n"


def gain_table(rows: Sequence[Row]) -> str:
  """k per method against the gain, beside the largest Lyapunov exponent."""
  gs = _of(rows, "gain")
  lines = ["| input scale | gain g | largest Lyapunov exponent (per step) | "
           + " | ".join(f"{m} k" for m in NEWTON) + " |", "|---|---|---|" + "---|" * len(NEWTON)]
  for scale, g in sorted({(r["input_scale"], r["gain"]) for r in gs}, key=lambda k: (-k[0], k[1])):
    by = {r["method"]: r for r in _of(gs, "gain", gain=g, input_scale=scale)}
    lam = next(iter(by.values()))["lyapunov"]
    lines.append(f"| {scale:g} | {g:g} | {lam:+.3f} | "
                 + " | ".join(_k(by.get(m)) for m in NEWTON) + " |")
  return "\n".join(lines) + "\n"


def time_table(rows: Sequence[Row]) -> str:
  """FLOPs, peak bytes and median forward time of each impl, and ratios to lax.scan."""
  rs = {(r["cell"], r["T"], r["B"], r["D"], r["impl"]): r for r in ratios(rows)}
  lines = ["| cell | T | B | D | impl | k | FLOPs fwd | x lax.scan | peak MB | x lax.scan | "
           "median ms (fwd, compile excluded) | x lax.scan |", "|---|" * 12]
  lines[-1] = "|" + "---|" * 12
  for r in _of(rows, "time"):
    q = rs.get((r["cell"], r["T"], r["B"], r["D"], r.get("impl")), {})
    x = lambda key: "1" if r.get("impl") == "sequential" else (
        "-" if q.get(key) is None else f"{q[key]:.2f}")
    fl = "-" if r["flops_fwd"] is None else f"{r['flops_fwd']:.3g}"
    mb = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 1e6:.1f}"
    ms = "-" if r["median_s"] is None else f"{r['median_s'] * 1e3:.2f}"
    lines.append(f"| {r['cell']} | {r['T']:,} | {r['B']} | {r['D']} | {r.get('impl')} | "
                 f"{'-' if r['iterations'] is None else r['iterations']} | {fl} | {x('flops')} "
                 f"| {mb} | {x('peak_bytes')} | {ms} | {x('time')} |")
  return "\n".join(lines) + "\n"


def trained_table(rows: Sequence[Row]) -> str:
  """k of each method for the LSTM before and after training."""
  lines = ["| stage | training steps | T | accuracy | " + " | ".join(f"{m} k" for m in NEWTON)
           + " |", "|---|---|---|---|" + "---|" * len(NEWTON)]
  tr = _of(rows, "trained")
  for stage in ("before", "after"):
    for T in sorted({r["T"] for r in tr}):
      by = {r["method"]: r for r in tr if r.get("stage") == stage and r["T"] == T}
      if by:
        first = next(iter(by.values()))
        acc = "-" if first.get("accuracy") is None else f"{first['accuracy']:.3f}"
        lines.append(f"| {stage} | {first['train_steps']} | {T} | {acc} | "
                     + " | ".join(_k(by.get(m)) for m in NEWTON) + " |")
  return "\n".join(lines) + "\n"


def markdown(rows: Sequence[Row], seconds: dict[str, float] | None = None) -> str:
  """The report: every table that has rows, then the crossover and training sentences."""
  parts = ["# Nonlinear RNNs in parallel over time (ops.newton)\n", ELK_NOTE + " `k!`: not "
           "converged (overflow or cap; the run fell back to lax.scan); `n/r`: not run (see "
           "note).\n"]
  if _of(rows, "exactness"):
    parts += ["## Exactness against lax.scan (weights gain 0.5: contracting)\n",
              exactness_table(rows)]
  if _of(rows, "depth"):
    parts += ["## Sequential depth (analysis.sequential_depth, k fixed at the measured "
              "count)\n", depth_table(rows)]
  if _of(rows, "gain"):
    parts += ["## Iterations against the tanh RNN's gain (iteration cap T)\n",
              gain_table(rows)]
    diverged = [r for r in _of(rows, "gain", method="deer") if not r["converged"]]
    for r in diverged:
      elk = next((e for e in _of(rows, "gain", method="elk", gain=r["gain"],
                                 input_scale=r["input_scale"])), None)
      if elk is not None:
        parts.append(f"- input scale {r['input_scale']:g}, g={r['gain']:g}: deer failed after "
                     f"{r['iterations']} iterations ({r['note']}); elk "
                     f"{'converged in' if elk['converged'] else 'failed after'} "
                     f"{elk['iterations']}.")
    parts.append("")
  if _of(rows, "time"):
    parts += ["## Cost and wall clock (forward; same process, round-robin)\n",
              time_table(rows), *[f"- {line}" for line in crossover(rows)], ""]
  if _of(rows, "training"):
    parts += ["## Training: impl deer against impl reference\n",
              training_summary(rows) or "-", ""]
  if _of(rows, "trained"):
    parts += ["## LSTM iterations before and after training on running_sum\n",
              trained_table(rows)]
  if seconds:
    parts.append("Seconds per part: " + ", ".join(f"{k} {v}" for k, v in seconds.items()))
  return "\n".join(parts) + "\n"


# ------------------------------------------------------------------ plots

def plot_overview(rows: Sequence[Row], path: str,
                  methods: Sequence[str] = ("sequential", "deer")) -> None:
  """Depth against T of an LSTM under lax.scan and the Newton ``methods`` (k fixed), with
  their iterations k (dotted, x) on a second axis."""
  plt = outputs.pyplot()
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  ax2 = ax.twinx()
  top = 1
  for i, method in enumerate(methods):
    mine = sorted(_of(rows, "depth", method=method), key=lambda r: r["T"])
    name = "lax.scan" if method == "sequential" else f"{method} (k fixed)"
    ax.plot([r["T"] for r in mine], [r["sequential_depth"] for r in mine], "os^v"[i % 4] + "-",
            color=f"C{i}", label=name)
    if method != "sequential":
      ax2.plot([r["T"] for r in mine], [r["iterations"] for r in mine], "x:", color=f"C{i}")
      top = max([top, *(r["iterations"] for r in mine)])
  ax.set(xscale="log", yscale="log", xlabel="T", ylabel="sequential depth (primitive steps)")
  ax2.set_ylabel("iterations k (dotted, x)")
  ax2.set_ylim(0, 2.5 * top)
  ax.legend(loc="upper left", fontsize=8)
  ax.grid(True, which="both", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_gain(rows: Sequence[Row], path: str) -> None:
  """k per method against the gain (one line style per input scale), and the Lyapunov
  exponent."""
  plt = outputs.pyplot()
  fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
  gs = _of(rows, "gain")
  scales = sorted({r["input_scale"] for r in gs}, reverse=True)
  for scale, style in zip(scales, ("-", "--", ":", "-.")):
    for m, color in zip(NEWTON, ("C0", "C1", "C2")):
      mine = sorted(_of(gs, "gain", method=m, input_scale=scale), key=lambda r: r["gain"])
      a.plot([r["gain"] for r in mine], [r["iterations"] for r in mine], "o" + style,
             color=color, ms=3, label=f"{m}, input x{scale:g}")
      bad = [r for r in mine if not r["converged"]]
      a.plot([r["gain"] for r in bad], [r["iterations"] for r in bad], "rx", ms=9)
    seq = sorted(_of(gs, "gain", method="sequential", input_scale=scale),
                 key=lambda r: r["gain"])
    b.plot([r["gain"] for r in seq], [r["lyapunov"] for r in seq], "o" + style,
           label=f"input x{scale:g}")
  a.set(xlabel="recurrent gain g", ylabel="iterations k (red x: failed)", yscale="log",
        title=f"tanh RNN, D={gs[0]['D'] if gs else '?'}, T={gs[0]['T'] if gs else '?'}")
  a.legend(fontsize=7)
  b.axhline(0, color="gray", lw=0.8)
  b.set(xlabel="recurrent gain g", ylabel="largest Lyapunov exponent (per step)")
  b.legend()
  for ax in (a, b):
    ax.grid(True, alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_time(rows: Sequence[Row], path: str) -> None:
  """Median forward time against T per impl, one panel per cell."""
  plt = outputs.pyplot()
  ts = _of(rows, "time")
  cells = sorted({r["cell"] for r in ts})
  fig, axes = plt.subplots(1, len(cells), figsize=(5.5 * len(cells), 4), squeeze=False)
  for ax, cell in zip(axes[0], cells):
    for impl in ("sequential", "fast", *NEWTON):
      mine = sorted((r for r in ts if r["cell"] == cell and r.get("impl") == impl
                     and r["median_s"] is not None), key=lambda r: r["T"])
      ax.plot([r["T"] for r in mine], [r["median_s"] for r in mine], "o-", ms=3,
              label="lax.scan" if impl == "sequential" else impl)
    ax.set(xscale="log", yscale="log", xlabel="T", ylabel="median forward s (compile excl.)",
           title=cell)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def save(workdir: str, rows: Sequence[Row], *, context: dict[str, Any],
         seconds: dict[str, float], plots: bool = True) -> str:
  """Writes ``results.json`` and ``results.md`` (and with ``plots`` the PNGs); returns the
  markdown."""
  md = markdown(rows, seconds)
  written = []
  if plots:
    depth_plot = lambda rows, path: plot_overview(rows, path, ("sequential", *NEWTON))
    for name, fn, kind in (("depth.png", depth_plot, "depth"), ("gain.png", plot_gain, "gain"),
                           ("time.png", plot_time, "time")):
      if _of(rows, kind):
        fn(rows, os.path.join(workdir, name))
        written.append(name)
  outputs.write_json(os.path.join(workdir, "results.json"), {
      "experiment": "parallel_rnn", "rows": list(rows), "depth_growth": depth_growth(rows),
      "ratios": ratios(rows), "crossover": crossover(rows),
      "training": training_summary(rows), "overview": overview_text(rows),
      "elk": ELK_NOTE, "plots": written, "seconds": dict(seconds), "context": context,
      "load_average_1_5_15min": outputs.load_average()})
  outputs.write_text(os.path.join(workdir, "results.md"), md)
  return md
