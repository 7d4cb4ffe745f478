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


def targets_table(verdicts: Sequence[Row]) -> str:
  """Markdown: one line per target with the ratio (ours / peer time) or the number."""
  lines = ["| target | T | B | ours (s) | peer (s) | ratio ours/peer | other | met |",
           "|---|---|---|---|---|---|---|---|"]
  for v in verdicts:
    other = ""
    if v.get("mfu") is not None:
      other = (f"MFU {v['mfu']:.2f} vs the matmul peak measured alongside "
               f"({v['peak_flops_per_s'] / 1e9:.0f} GFLOP/s); {v['flops']:.3g} FLOPs/step")
      if v.get("mfu_vs_run_peak") is not None:
        other += f"; {v['mfu_vs_run_peak']:.2f} vs the run's best matmul rate"
      if v.get("mfu_reference_attention") is not None:
        other += f"; reference attention: MFU {v['mfu_reference_attention']:.2f}"
    elif v.get("peak_bytes"):
      other = f"peak {v['peak_bytes'] / 1e9:.2f} GB"
    lines.append(f"| {v['target']} | {v['T']} | {v['B']} | {_fmt(v.get('ours_s'))} | "
                 f"{_fmt(v.get('peer_s'))} | {_fmt(v.get('ratio'))} | {other} | "
                 f"{_fmt(v.get('met'))} |")
  return "\n".join(lines)


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
  """The whole report: peak FLOP/s, targets, then every measurement."""
  peak = result.get("peak_flops_per_s")
  parts = [f"Matmul peak (jax, float32, {result['settings']['matmul_size']}^2): "
           f"{peak / 1e9:.1f} GFLOP/s" if peak else "Matmul peak: not measured"]
  parts += [f"Note: {n}" for n in result.get("notes", [])]
  if result.get("targets"):
    parts += ["", "## Targets (time ratios in the same run; < 1 is faster than the peer)",
              "", targets_table(result["targets"])]
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
  """Bar chart of the targets' time ratios (ours / peer), a line at 1."""
  vs = [v for v in verdicts if v.get("ratio")]
  if not vs:
    return
  plt = outputs.pyplot()
  fig, ax = plt.subplots(figsize=(8, 0.5 * len(vs) + 1))
  labels = [f"{v['target']} (T={v['T']})" for v in vs]
  ax.barh(range(len(vs)), [v["ratio"] for v in vs],
          color=["tab:green" if v["met"] else "tab:red" for v in vs])
  ax.axvline(1.0, color="k", lw=1)
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
