"""The sharding experiment's report: the table, the plots and the schematic timeline."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from seqscale import outputs
from seqscale.studies.sharding import STRATEGIES
from seqscale.studies.sharding import WAVEFRONT_CHUNKS


def table(rows: list[dict[str, Any]]) -> str:
  """A markdown table of the rows, one per (strategy, devices)."""
  head = ("| strategy | devices | max_abs_err | flops_per_device | collective_bytes | "
          "received_bytes | critical_path | critical_path_one_device | run_s | compile_s |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  fmt = lambda v, f: "-" if v is None else format(v, f)
  lines = [head]
  for r in sorted(rows, key=lambda r: (STRATEGIES.index(r["strategy"])
                                       if r["strategy"] in STRATEGIES else 99, r["devices"])):
    lines.append(f"| {r['strategy']} | {r['devices']} | {r['max_abs_err']:.1e} | "
                 f"{r['flops_per_device']:.3g} | {r['collective_bytes']} | "
                 f"{r.get('received_bytes', '-')} | "
                 f"{r['critical_path']} | {r.get('critical_path_one_device', '-')} | "
                 f"{fmt(r['run_s'], '.2e')} | "
                 f"{fmt(r['compile_s'], '.2f')} |")
  return "\n".join(lines)


def plot(rows: list[dict[str, Any]], workdir: str) -> list[str]:
  """FLOPs per device and run time against devices, one line per strategy; PNG paths."""
  plt = outputs.pyplot()
  paths = []
  for key, name, ylabel in (("flops_per_device", "flops_per_device.png", "FLOPs per device"),
                            ("run_s", "time.png", "run time (s)"),
                            ("critical_path", "critical_path.png", "critical path (steps)")):
    fig, ax = plt.subplots(figsize=(6, 4))
    for strategy in STRATEGIES:
      pts = sorted((r["devices"], r[key]) for r in rows
                   if r["strategy"] == strategy and r[key] is not None)
      if pts:
        ax.plot(*zip(*pts), marker="o", label=strategy)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("devices on the seq axis")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(workdir, name)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
  return paths


def write(rows: list[dict[str, Any]], workdir: str, context: dict[str, Any]) -> str:
  """``results.json``, ``results.md`` and the plots in ``workdir``; returns the table."""
  workdir = outputs.prepare_workdir(workdir)
  text = table(rows)
  outputs.write_json(os.path.join(workdir, "results.json"), {"context": context, "rows": rows})
  outputs.write_text(os.path.join(workdir, "results.md"), text + "\n")
  plot(rows, workdir)
  timeline(os.path.join(workdir, "timeline.png"))
  return text


def schedule(strategy: str, N: int, T: int, M: int = WAVEFRONT_CHUNKS
             ) -> list[list[tuple[float, float, str]]]:
  """Per device, (start, length, kind) intervals in time steps of the program's schedule.

  Read off the programs' structure, not measured: "work" is compute whose result is kept,
  "redundant" compute every device runs in lockstep but discards (carry passing before a
  device's carry is exact; wavefront ticks outside a layer's chunks), "comm" a collective.
  """
  Tb = T / N
  rows = []
  for d in range(N):
    if strategy == "lstm_carry_passing":
      row = [(r * Tb, Tb, "work" if r == d else "redundant") for r in range(N)]
    elif strategy == "attention_ring":
      row = [(r * Tb, Tb, "work") for r in range(N)]
    elif strategy == "linear_scan_sharded":
      lg = max(1.0, np.log2(N))
      row = [(0.0, Tb, "work"), (Tb, lg, "comm"), (Tb + lg, 1.0, "work")]
    elif strategy == "lstm_wavefront":
      C = T / M
      row = [(t * C, C, "work" if 0 <= t - d < M else "redundant") for t in range(M + N - 1)]
    else:
      raise ValueError(f"strategy={strategy!r}; no schedule")
    rows.append(row)
  return rows


def timeline(path: str, N: int = 4, T: int = 64) -> str:
  """Which device works when: carry passing, ring attention, wavefront, linear scan."""
  plt = outputs.pyplot()
  colors = {"work": "tab:blue", "redundant": "lightgray", "comm": "tab:orange"}
  names = ("lstm_carry_passing", "attention_ring", "lstm_wavefront", "linear_scan_sharded")
  fig, axes = plt.subplots(len(names), 1, figsize=(7, 7), sharex=True)
  for ax, name in zip(axes, names):
    for d, row in enumerate(schedule(name, N, T)):
      for start, length, kind in row:
        ax.broken_barh([(start, length)], (d - 0.4, 0.8), color=colors[kind],
                       edgecolor="white")
    ax.set_yticks(range(N), [f"dev {d}" for d in range(N)])
    ax.invert_yaxis()
    notes = {"lstm_wavefront": f" (L={N} layers, M={WAVEFRONT_CHUNKS} chunks)",
             "attention_ring": " (a round: one k/v block, drawn as T/N units; its depth is "
                               "O(1), not T/N)"}
    ax.set_title(name + notes.get(name, ""), fontsize=9)
  axes[-1].set_xlabel(f"time steps (T={T}, N={N}; schematic from the programs' structure; "
                      "blue work, gray redundant, orange collective)", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
