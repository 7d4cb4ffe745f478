"""Table 1's report: the measured table beside the paper's, findings, raw numbers, plots."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from seqscale import outputs
from seqscale.studies import table1

if TYPE_CHECKING:
  from seqscale.studies.table1 import Settings


# Findings that are not verdicts: shown under the table.
MIXING_NOTE = (
    "Counting only matmuls and convolutions (MIXING), lstm, gru and both linear recurrences "
    "have path length {mixing} at every n: x_s reaches y_t through the input projection and "
    "then only elementwise multiplies and adds (the LSTM cell state, the GRU's "
    "z * h_(t-1), a_t * h_(t-1)). The paper's O(n) for recurrent layers counts the steps "
    "a signal must traverse, which the COMPUTE count measures; the Elman RNN, whose only "
    "path is the recurrent matmul, is O(n) in both counts.")


SEPARABLE_NOTE = (
    "separable_conv's backward: XLA's cost analysis counts the gradient of the depthwise "
    "kernel (a convolution with batch_group_count = d) as if it were dense, 2 k n d (d - 1) "
    "FLOPs too many, so its fwd+bwd / fwd ratio is far above the 3 that the jaxpr count "
    "(and every other layer) gives. The forward count, used in the fits, is right.")


def _fmt(v: float | None) -> str:
  if v is None:
    return "-"
  if isinstance(v, float) and math.isinf(v):
    return "inf"
  return f"{v:.4g}" if isinstance(v, float) and v != int(v) else f"{int(v)}"


def _verdict(agree: bool | None) -> str:
  return {True: "agree", False: "**DISAGREE**", None: "n/a"}[agree]


def _flops_cell(c: dict[str, Any], var: str) -> str:
  if c["exponent"] is None:
    return "n/a"
  text = f"{var}^{c['exponent']:.2f}"
  if c["regime"] != "all":
    text += f" ({c['regime']}; all: {c['exponent_all']:.2f})"
  return f"{text}: {_verdict(c['agree'])}"


def _growth_cell(c: dict[str, Any]) -> str:
  if not c["values"]:
    return "n/a"
  span = f"{_fmt(c['values'][0])} -> {_fmt(c['values'][-1])}"
  if c["class"] == "n/a":
    return f"{span} (one n: no fit)"
  cls = "O(1)" if c["class"] == "1" else f"O({c['class']})"
  return f"{span}, {cls}" + ("" if c["agree"] is None else f": {_verdict(c['agree'])}")


def _header(config: Settings, context: Mapping[str, Any]) -> list[str]:
  ns, ds = config.n_values, config.d_values
  path_ns = [n for n in ns if n <= config.path_max_n]
  return [
      '# Table 1 of "Attention Is All You Need", measured from the compiled program', "",
      f"Backend {context.get('backend')} ({context.get('device_kind')}), jax "
      f"{context.get('jax')}. One layer, batch 1, float32, causal. n sweep: n = {ns[0]} .. "
      f"{ns[-1]} at d = {config.d_fixed}; d sweep: d = {ds[0]} .. {ds[-1]} at n = "
      f"{config.n_fixed}. k = {config.k} (dilated stack: k = {config.k_dilated}, dilations "
      f"{config.k_dilated}^i), r = {config.r}, {config.heads} heads. Path length only at n in "
      f"{path_ns} (unrolled evaluation), through the residual stack that connects all "
      "positions.", ""]


def main_table(cells: Sequence[dict[str, Any]]) -> list[str]:
  """The paper's cells beside the measured ones, one markdown line per layer."""
  lines = ["| layer | paper row | paper: complexity | measured FLOPs vs n | measured FLOPs vs d "
           "| paper: sequential ops | measured depth (ops) vs n | paper: max path | measured "
           "path (ops) vs n |", "|---|---|---|---|---|---|---|---|---|"]
  for c in cells:
    spec = table1.LAYERS[c["layer"]]
    lines.append(
        f"| {c['layer']} | {spec.row} | {spec.complexity} | {_flops_cell(c['flops_n'], 'n')} | "
        f"{_flops_cell(c['flops_d'], 'd')} | {spec.sequential} | {_growth_cell(c['depth'])} | "
        f"{spec.path_text} | {_growth_cell(c['path'])} |")
  return lines


def _side_table(rows: Sequence[dict[str, Any]], cells: Sequence[dict[str, Any]],
                config: Settings) -> list[str]:
  lines = ["Beside the paper (it states neither): memory of forward+backward, and the path "
           "counting matmuls and convolutions only.", "",
           "| layer | temp bytes fwd+bwd vs n | path (matmuls/convs only) vs n | stack layers "
           "(largest path n) | fwd+bwd / fwd FLOPs, XLA (jaxpr count), largest n |",
           "|---|---|---|---|---|"]
  for c in cells:
    mine = [r for r in rows if r["layer"] == c["layer"] and r["d"] == config.d_fixed]
    stacks = [r["stack_layers"] for r in mine if r["stack_layers"] is not None]
    last = max(mine, key=lambda r: r["n"]) if mine else {}
    ratio = lambda pre: (last[f"{pre}flops_fwd_bwd"] / last[f"{pre}flops_fwd"]
                         if last.get(f"{pre}flops_fwd") else None)
    mem = c["memory"]
    mem_text = (f"n^{mem['exponent']:.2f} ({_fmt(mem['values'][0])} -> "
                f"{_fmt(mem['values'][-1])})" if mem["exponent"] is not None else "n/a")
    lines.append(f"| {c['layer']} | {mem_text} | {_growth_cell(c['path_mixing'])} | "
                 f"{stacks[-1] if stacks else '-'} | {_fmt(ratio(''))} "
                 f"({_fmt(ratio('jaxpr_'))}) |")
  if any(c["layer"] == "separable_conv" for c in cells):
    lines += ["", SEPARABLE_NOTE]
  return lines


def _findings(cells: Sequence[dict[str, Any]]) -> list[str]:
  lines = ["## Where the measurement disagrees with the paper", ""]
  lines += [f"- **{c['layer']}, {name}**: {c[name]['note']}" for c in cells
            for name in ("flops_n", "flops_d", "depth", "path")
            if c[name]["agree"] is False] or ["- nowhere"]
  mixing = sorted({_fmt(v) for c in cells if c["layer"] in _HIGHWAY
                   for v in c["path_mixing"]["values"]})
  if mixing:
    lines += ["", "Finding: " + MIXING_NOTE.format(mixing=" or ".join(mixing))]
  return lines


def _raw_tables(rows: Sequence[dict[str, Any]], config: Settings) -> list[str]:
  lines = []
  for key, title in (("flops_fwd", "FLOPs of the forward pass"),
                     ("sequential_depth", "sequential depth (dependent primitive steps)"),
                     ("path_length", "path length (operations, COMPUTE)"),
                     ("path_length_mixing", "path length (matmuls/convs only, MIXING)")):
    cols = [n for n in config.n_values if not key.startswith("path") or n <= config.path_max_n]
    lines += ["", f"### {title}, d = {config.d_fixed}", "",
              "| layer | " + " | ".join(f"n={n}" for n in cols) + " |",
              "|---|" + "---|" * len(cols)]
    for layer in config.layer_names():
      by_n = {r["n"]: r[key] for r in rows if r["layer"] == layer and r["d"] == config.d_fixed}
      text = [("-" if by_n.get(n) is None else f"{by_n[n]:.3g}" if key == "flops_fwd"
               else _fmt(by_n[n])) for n in cols]
      lines.append(f"| {layer} | " + " | ".join(text) + " |")
  return lines


def markdown(rows: Sequence[dict[str, Any]], cells: Sequence[dict[str, Any]], config: Settings,
             context: Mapping[str, Any]) -> str:
  """``table1.md``: the paper's table beside the measured one, findings, definitions, data."""
  definitions = DEFINITIONS.format(**dataclasses.asdict(config))
  return "\n".join([*_header(config, context), *main_table(cells), "",
                    *_side_table(rows, cells, config), "", *_findings(cells), "", definitions,
                    *_raw_tables(rows, config)]) + "\n"


_HIGHWAY = ("lstm", "gru", "linear_recurrence_sequential", "linear_recurrence_associative")


DEFINITIONS = """## What is measured, and the regimes

- **FLOPs**: XLA's cost analysis of the compiled forward pass (`seqscale.analysis.flops`),
  with every loop body counted times its trip count (XLA on CPU counts a `while` body once).
  The layer includes its projections: Q, K, V and output for attention, `x @ w_ih` for the
  recurrent cells. Exponents are least-squares slopes of log FLOPs against log n (at fixed d)
  or log d (at fixed n); a cell agrees when the slope is within 0.15 of the paper's exponent.
- **Regime**: attention's O(n^2 d) holds for n >> d. The layer costs 4 n^2 d (scores and
  weighted values) + 8 n d^2 (projections), so its slopes are fitted on the points with
  n >= {regime} d, and the slope over all points is shown beside. The paper's O(r n d) for
  restricted attention likewise leaves out the 8 n d^2 of the projections; it would need
  r >> d, which a window of r = {r} never reaches here.
- **Sequential depth**: the longest chain of dependent primitives in the forward jaxpr
  (`seqscale.analysis.sequential_depth`): a primitive is one step whatever its size, data
  movement is free, a scan of n steps counts its carried path n times. Growth classes:
  O(1) when the log-log slope is below 0.1; O(log n) when the slope is below 0.6 and the
  values are at least as linear in log n as in n; otherwise the nearest integer power.
- **Path length**: the paper's "length of the paths forward and backward signals have to
  traverse" between two positions. Measured as the fewest dependent operations (every
  primitive that is not data movement, `mixing=COMPUTE`) from x_s to y_t, maximised over
  s <= t (`seqscale.analysis.path_length_by_mixing`), through a residual stack
  x <- x + layer(x) just deep enough to connect every pair: 1 layer for attention and the
  recurrences, ceil((n-1)/(k-1)) contiguous or separable convolutions, ceil(log_k n)
  dilated ones (dilations k^i), ceil((n-1)/r) restricted attentions. The residual lets a
  path skip layers it does not need. This counts recurrent steps: each step of a cell is a
  few dependent operations. Counting matmuls/convolutions only (`MIXING`) is shown beside:
  it misses the elementwise highways of gated cells (see the finding above). The
  evaluation is unrolled and costly, hence small n only; its growth class uses those n.
- **Memory**: temporary bytes of the compiled forward+backward (`memory_analysis`).
- The dilated convolution's FLOPs and depth are those of one layer with the largest
  dilation of its stack; a contiguous and a dilated layer cost the same per layer.
"""


def plot(rows: Sequence[dict[str, Any]], config: Settings, workdir: str) -> list[str]:
  """PNG plots, one line per layer: FLOPs, depth, path length, memory vs n; FLOPs vs d."""
  plt = outputs.pyplot()
  written = []
  markers = "os^vD<>ph*x+"
  for key, axis, ylabel, name in (
      ("flops_fwd", "n", "FLOPs (forward)", "flops_vs_n.png"),
      ("flops_fwd", "d", "FLOPs (forward)", "flops_vs_d.png"),
      ("sequential_depth", "n", "sequential depth (dependent ops)", "depth_vs_n.png"),
      ("path_length", "n", "max path length (ops, COMPUTE)", "path_vs_n.png"),
      ("temp_bytes", "n", "temp bytes (forward+backward)", "memory_vs_n.png")):
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, layer in enumerate(config.layer_names()):
      fixed = {"d": config.d_fixed} if axis == "n" else {"n": config.n_fixed}
      xs, ys = table1.series(rows, layer, key, **fixed)
      if xs:
        ax.plot(xs, ys, marker=markers[i % len(markers)], label=layer,
                color=plt.cm.tab20(i % 20))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    fixed_text = f"d = {config.d_fixed}" if axis == "n" else f"n = {config.n_fixed}"
    ax.set(xlabel=axis, ylabel=ylabel, title=f"{ylabel} vs {axis} ({fixed_text})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(workdir, name)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
  return written
