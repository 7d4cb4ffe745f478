"""The bench's report: the targets and rows as markdown tables, and its plots."""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

from seqscale import outputs

Row = dict[str, Any]


def _fmt(v: Any, scale: float = 1.0, digits: int = 3) -> str:
  if v is None:
    return "-"
  if isinstance(v, bool):
    return "yes" if v else "NO"
  if isinstance(v, (int, float)):
    x = v * scale
    return f"{x:.{digits}g}" if abs(x) < 1e5 else f"{x:.3e}"
  return str(v)


def _measured(v: Row) -> str:
  m = v.get("measured")
  return m if isinstance(m, str) else _fmt(m)


def targets_table(verdicts: Sequence[Row]) -> str:
  """Markdown: one line per target, the measured number (a time ratio ours / peer, or the
  MFU) next to its target, pass or fail, and the load average when it was measured."""
  lines = ["| measurement | B | T | ours (s) | peer (s) | measured | target | pass/fail | "
           "load avg | other |", "|---|---|---|---|---|---|---|---|---|---|"]
  for v in verdicts:
    other = ""
    if v.get("mfu") is not None:
      other = (f"MFU against the best matmul timed alongside ({v.get('peak_impl')}, "
               f"{v['peak_flops_per_s'] / 1e9:.0f} GFLOP/s); {v['flops']:.3g} FLOPs/step")
      if v.get("mfu_vs_sweep_peak") is not None:
        other += f"; {v['mfu_vs_sweep_peak']:.2f} against the sweep's peak"
      if v.get("mfu_reference_attention") is not None:
        other += f"; reference attention: MFU {v['mfu_reference_attention']:.2f}"
    elif v.get("peak_bytes"):
      other = f"peak {v['peak_bytes'] / 1e9:.2f} GB"
    load = " ".join(f"{x:.1f}" for x in v.get("loadavg") or []) or "-"
    lines.append(f"| {v['target']} | {v['B']} | {v['T']} | {_fmt(v.get('ours_s'))} | "
                 f"{_fmt(v.get('peer_s'))} | {_measured(v)} | {v.get('goal', '-')} | "
                 f"{'pass' if v.get('met') else 'FAIL' if v.get('met') is False else '-'} | "
                 f"{load} | {other} |")
  return "\n".join(lines)


def matmul_table(rows: Sequence[Row]) -> str:
  """Markdown: GFLOP/s of [n, n] @ [n, n] per library and dtype, side by side."""
  rates: dict[int, dict[tuple[str, str], float]] = {}
  for r in rows:
    if r["layer"] == "matmul" and r.get("flops_per_s"):
      rates.setdefault(r["T"], {})[(r["impl"], r["dtype"])] = r["flops_per_s"]
  cols = sorted({k for by in rates.values() for k in by}, key=lambda k: (k[1] != "float32", k))
  lines = ["| n | " + " | ".join(f"{impl} {dtype}" for impl, dtype in cols) + " |",
           "|---|" + "---|" * len(cols)]
  for n in sorted(rates):
    lines.append(f"| {n} | " + " | ".join(_fmt(rates[n].get(k), 1e-9) for k in cols) + " |")
  return "\n".join(lines)


def peak_lines(peaks: dict[str, Any], cpu_flags: Sequence[str] = ()) -> list[str]:
  """The practical peak per dtype, and plainly how the two libraries compare."""
  lines = []
  for dtype, p in peaks.items():
    own = ", ".join(f"{impl} {rate / 1e9:.0f} GFLOP/s at n={n}"
                    for impl, (n, rate) in sorted(p["by_impl"].items()))
    lines.append(f"Practical peak, {dtype}: {p['flops_per_s'] / 1e9:.1f} GFLOP/s ({p['impl']}, "
                 f"n={p['n']}); each library's best: {own}.")
  by = {d: p["by_impl"] for d, p in peaks.items()}
  if "torch" in by.get("bfloat16", {}) and "jax" in by.get("bfloat16", {}):
    t, j = by["bfloat16"]["torch"][1], by["bfloat16"]["jax"][1]
    amx = " (this CPU has AMX)" if "amx_bf16" in cpu_flags else ""
    faster = (f"{t / j:.1f}x faster than XLA's" if t > j else f"{j / t:.1f}x slower than XLA's")
    lines.append(f"bfloat16{amx}: torch's best matmul is {faster} ({t / 1e9:.0f} against "
                 f"{j / 1e9:.0f} GFLOP/s).")
    if "float32" in by:
      lines.append(f"XLA: bfloat16 at {j / by['float32']['jax'][1]:.2f}x its float32 rate; "
                   f"torch: {t / by['float32']['torch'][1]:.2f}x its float32 rate.")
  return lines


def dtype_table(rows: Sequence[Row], pass_: str = "fwd_bwd") -> str:
  """Markdown: every (layer, T, impl) measured in both float32 and bfloat16, side by side."""
  times: dict[tuple, dict[str, float]] = {}
  for r in rows:
    if r["layer"] != "matmul" and r["pass"] == pass_ and r.get("median_s"):
      times.setdefault((r["layer"], r["T"], r["B"], r["impl"]), {})[r["dtype"]] = r["median_s"]
  lines = [f"| layer | T | B | impl | float32 ms | bfloat16 ms | bfloat16 / float32 |",
           "|---|---|---|---|---|---|---|"]
  for (layer, T, B, impl), by in times.items():
    if "float32" in by and "bfloat16" in by:
      lines.append(f"| {layer} | {T} | {B} | {impl} | {_fmt(by['float32'], 1e3)} | "
                   f"{_fmt(by['bfloat16'], 1e3)} | {_fmt(by['bfloat16'] / by['float32'])} |")
  return "\n".join(lines) if len(lines) > 2 else ""


def machine_line(result: dict[str, Any]) -> str:
  """The CPU, the peer's settings, the load and the wall time of this run."""
  ctx = result.get("context") or {}
  cpu = f"{ctx.get('cpu', '?')} [{', '.join(ctx.get('cpu_flags') or [])}], " \
        f"{ctx.get('cpu_count', '?')} cores"
  torch = (f"torch {ctx['torch']} ({ctx.get('torch_threads')} threads, OMP_WAIT_POLICY="
           f"{ctx.get('omp_wait_policy')})" if ctx.get("torch") else "torch: absent")
  load = f"load average {result.get('loadavg_start')} before, {result.get('loadavg_end')} after"
  parts = ", ".join(f"{k} {v / 60:.1f} min" for k, v in (result.get("section_s") or {}).items())
  wall = f"{result['wall_s'] / 60:.1f} min ({parts})" if result.get("wall_s") else ""
  return f"Machine: {cpu}; {torch}; {load}; run time {wall}"


def rows_table(rows: Sequence[Row]) -> str:
  """Markdown: every row, with its time relative to ``seqscale`` in the same group."""
  groups: dict[tuple, dict[str, Row]] = {}
  for r in rows:
    groups.setdefault((r["layer"], r["T"], r["B"], r["dtype"], r["pass"]), {})[r["impl"]] = r
  lines = ["| layer | dtype | pass | T | B | impl | ms/step | tokens/s | peak MB | "
           "compile s | x seqscale |", "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    if "median_s" not in r:
      continue
    ours = groups[(r["layer"], r["T"], r["B"], r["dtype"], r["pass"])].get("seqscale", {})
    rel = (r["median_s"] / ours["median_s"] if r["median_s"] and ours.get("median_s")
           else None)
    ms = _fmt(r["median_s"], 1e3) if r["median_s"] else r.get("note", "-")
    lines.append(f"| {r['layer']} | {r['dtype']} | {r['pass']} | {r['T']} | {r['B']} | "
                 f"{r['impl']} | {ms} | {_fmt(r['tokens_per_s'])} | "
                 f"{_fmt(r['peak_bytes'], 1e-6)} | {_fmt(r['compile_s'])} | {_fmt(rel)} |")
  return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
  """The whole report: machine, matmul peaks, targets, float32 against bfloat16, then every
  measurement."""
  ctx = result.get("context") or {}
  parts = [machine_line(result), ""]
  parts += peak_lines(result.get("peaks") or {}, ctx.get("cpu_flags") or ())
  parts += [f"Note: {n}" for n in result.get("notes", [])]
  parts += ["", "## Matmul GFLOP/s, [n, n] @ [n, n] (median of the runs; below n = 2048 each "
            "timed call chains (2048 / n)^3 products, at most 512)", "",
            matmul_table(result["rows"])]
  if result.get("targets"):
    parts += ["", "## Targets (time ratios ours / peer in the same run, candidates alternating; "
              "< 1 is faster than the peer)", "", targets_table(result["targets"])]
  both = dtype_table(result["rows"])
  if both:
    parts += ["", "## float32 and bfloat16 side by side (forward+backward)", "", both]
  parts += ["", "## Every layer (median of the runs; compile time apart)", "",
            rows_table(result["rows"])]
  return "\n".join(parts) + "\n"


def plot_tokens_per_s(rows: Sequence[Row], path: str, dtype: str = "float32",
                      pass_: str = "fwd_bwd") -> None:
  """tokens/s over T, one panel per layer, one line per implementation."""
  plt = outputs.pyplot()
  rows = [r for r in rows if r["dtype"] == dtype and r["pass"] == pass_
          and r.get("tokens_per_s") and r["layer"] != "matmul"]
  layers = sorted({r["layer"] for r in rows})
  if not layers:
    return
  cols = 4
  nrows = math.ceil(len(layers) / cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False)
  for ax, layer in zip(axes.flat, layers):
    for impl in sorted({r["impl"] for r in rows if r["layer"] == layer}):
      pts = sorted((r["T"], r["tokens_per_s"]) for r in rows
                   if r["layer"] == layer and r["impl"] == impl)
      ax.plot(*zip(*pts), marker="o", label=impl)
    ax.set(title=layer, xscale="log", yscale="log", xlabel="T")
    ax.legend(fontsize=6)
  for ax in list(axes.flat)[len(layers):]:
    ax.axis("off")
  axes[0][0].set_ylabel(f"tokens/s ({dtype}, {pass_})")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_targets(verdicts: Sequence[Row], path: str) -> None:
  """Bar chart of the targets' time ratios (ours / peer), a line at 1, each target marked."""
  vs = [v for v in verdicts if v.get("ratio")]
  if not vs:
    return
  plt = outputs.pyplot()
  fig, ax = plt.subplots(figsize=(8, 0.5 * len(vs) + 1))
  labels = [f"{v['target']} (T={v['T']})" for v in vs]
  ax.barh(range(len(vs)), [v["ratio"] for v in vs],
          color=["tab:green" if v["met"] else "tab:red" for v in vs])
  ax.axvline(1.0, color="k", lw=1)
  ax.scatter([v.get("limit", 1.0) for v in vs], range(len(vs)), marker="|", s=300, c="k",
             label="target")
  ax.legend(fontsize=7)
  ax.set_yticks(range(len(vs)), labels, fontsize=7)
  ax.set_xlabel("time ours / peer (same run)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def save(workdir: str, result: dict[str, Any]) -> str:
  """Writes results.json, results.md and the plots into ``workdir``; returns the markdown."""
  outputs.write_json(os.path.join(workdir, "results.json"), result)
  md = markdown(result)
  outputs.write_text(os.path.join(workdir, "results.md"), md)
  for dtype in result["settings"]["dtypes"]:
    plot_tokens_per_s(result["rows"], os.path.join(workdir, f"tokens_per_s_{dtype}.png"),
                      dtype)
  plot_targets(result.get("targets", []), os.path.join(workdir, "targets.png"))
  return md
