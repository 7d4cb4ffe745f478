"""The overview's report: summary rows, ``overview.md`` and the plots of its sections."""

from __future__ import annotations

import datetime
from typing import Any, Sequence

from seqscale import outputs
from seqscale.studies import running_sum
from seqscale.studies import table1_report

Row = dict[str, Any]

TITLES = {
    "running_sum": "the running sum of [2, 5, 3, 7] three ways, sequential depth against n",
    "connectivity": "which inputs each output depends on, after 1 to 4 layers",
    "table1": 'Table 1 of "Attention Is All You Need", measured (compact sweep)',
    "step_time": "step time against sequence length, forward and forward+backward",
    "sharding": "2 devices: attention's FLOPs per device against the LSTM's critical path",
    "training": "a short training on running_sum, accuracy at the training length and 4x",
    "parallel_rnn": "a nonlinear RNN in parallel over time: LSTM depth, lax.scan against DEER",
}


# ------------------------------------------------------------------------------ plots


def plot_step_time(rows: Sequence[Row], path: str) -> None:
  """Two log-log panels (forward, forward+backward): seconds per step against T."""
  plt = outputs.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for ax, pass_ in zip(axes, ("fwd", "fwd_bwd")):
    for layer in dict.fromkeys(r["layer"] for r in rows):
      pts = sorted((r["T"], r["median_s"]) for r in rows
                   if r["layer"] == layer and r["pass"] == pass_ and r["median_s"])
      if pts:
        ax.plot(*zip(*pts), "o-", label=layer)
    ax.set(xscale="log", yscale="log", xlabel="T (sequence length; B = tokens / T)",
           title={"fwd": "forward", "fwd_bwd": "forward + backward"}[pass_])
    ax.grid(True, which="both", alpha=0.3)
  axes[0].set_ylabel("seconds per step (median, compile excluded)")
  axes[0].legend()
  fig.suptitle("One layer, same tokens per step: time against T")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_sharding(rows: Sequence[Row], path: str) -> None:
  """Bars: FLOPs per device and critical path, 1 device against N, relative to 1 device."""
  plt = outputs.pyplot()
  strategies = list(dict.fromkeys(r["strategy"] for r in rows))
  counts = sorted({r["devices"] for r in rows})
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for ax, key, label in ((axes[0], "flops_per_device", "FLOPs per device"),
                         (axes[1], "critical_path", "critical path (dependent steps)")):
    for j, n in enumerate(counts):
      values = []
      for s in strategies:
        mine = {r["devices"]: r[key] for r in rows if r["strategy"] == s}
        values.append(mine.get(n, 0) / mine[counts[0]] if mine.get(counts[0]) else 0)
      xs = [i + 0.38 * j for i in range(len(strategies))]
      bars = ax.bar(xs, values, width=0.36, label=f"{n} device{'s' * (n > 1)}")
      ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks([i + 0.19 for i in range(len(strategies))], strategies)
    ax.set_ylabel(f"{label}, relative to 1 device")
    ax.set_ylim(0, 1.25)
  axes[0].legend()
  fig.suptitle("Sequence sharded over devices: attention's work splits, the LSTM's chain "
               "does not")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_training(rows: Sequence[Row], path: str) -> None:
  """Bars: per-position accuracy at the training length, 2x and 4x, per model."""
  plt = outputs.pyplot()
  fig, ax = plt.subplots(figsize=(7, 3.8))
  keys = (("accuracy", "train length"), ("accuracy_2x", "2x"), ("accuracy_4x", "4x"))
  for j, (key, label) in enumerate(keys):
    xs = [i + 0.27 * j for i in range(len(rows))]
    bars = ax.bar(xs, [r[key] or 0 for r in rows], width=0.25, label=label)
    ax.bar_label(bars, fmt="%.2f", fontsize=7)
  ax.axhline(0.1, color="gray", ls="--", lw=1, label="chance (0.1)")
  ax.set_xticks([i + 0.27 for i in range(len(rows))], [r["model"] for r in rows])
  ax.set(ylabel="per-position accuracy", ylim=(0, 1.1),
         title="running_sum (sum of digits mod 10 at every position)")
  ax.legend(fontsize=8, loc="upper right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_story(sections: Row, path: str) -> None:
  """The README's picture: sequential depth against n, and receptive field against layers."""
  plt = outputs.pyplot()
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  # One colour per family in both panels; the RNN dashed, since it overlaps attention right.
  style = {"rnn_scan": ("RNN (lax.scan)", "C0", "o--"),
           "associative_scan": ("linear RNN (associative scan)", "C1", "o-"),
           "attention": ("self-attention", "C2", "o-")}
  for method in running_sum.METHODS:
    mine = sorted((r["n"], r["sequential_depth"]) for r in sections["running_sum"]["rows"]
                  if r["method"] == method)
    if mine:
      label, color, fmt = style[method]
      ax1.plot(*zip(*mine), fmt, color=color, label=label)
  ax1.set(xscale="log", yscale="log", xlabel="n (numbers to add)",
          ylabel="sequential depth (dependent steps)",
          title="Running sum of n numbers: steps that must wait")
  ax1.grid(True, which="both", alpha=0.3)
  ax1.legend()
  conn = sections["connectivity"]
  names = {"attention": ("self-attention", "C2", "o-", 6), "conv": ("convolution (k=3)",
                                                                   "C3", "o-", 6),
           "dilated_conv": ("dilated convolution (k=2)", "C4", "o-", 6),
           "rnn": ("RNN (gradient fades with distance)", "C0", "s--", 4)}
  for kind, v in conn["kinds"].items():
    fields = v["receptive_field"]
    label, color, fmt, size = names.get(kind, (kind, None, "o-", 6))
    ax2.plot(range(1, len(fields) + 1), fields, fmt, color=color, ms=size, label=label)
  ax2.set(xlabel="layers L", ylabel=f"inputs the last output sees (of {conn['T']})",
          title="Reach: positions connected after L layers", ylim=(0, conn["T"] * 1.08))
  ax2.set_xticks(range(1, len(fields) + 1))
  ax2.grid(True, alpha=0.3)
  ax2.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ------------------------------------------------------------------------------ summary


def _seed_text(sec: Row) -> str:
  demo = sec["seed_demo"]
  same = all(r["exact"] for r in demo)
  outputs = ", ".join(str(v) for v in demo[0]["outputs"])
  depths = ", ".join(f"{r['method']} {r['sequential_depth']}" for r in demo)
  return (f"[{outputs}] by all three ({'exact' if same else 'NOT all exact'}); "
          f"sequential depth {depths}")


def _depth_text(sec: Row) -> str:
  rows = sec["rows"]
  parts = []
  for method in running_sum.METHODS:
    mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["n"])
    if mine:
      parts.append(f"{method} {mine[0]['sequential_depth']} -> "
                   f"{mine[-1]['sequential_depth']:,} (n = {mine[0]['n']} -> "
                   f"{mine[-1]['n']:,})")
  return "; ".join(parts)


def _connectivity_text(sec: Row) -> str:
  return "; ".join(f"{kind} {'/'.join(map(str, v['receptive_field']))} (all pairs at L = "
                   f"{v['layers_to_connect']})" for kind, v in sec["kinds"].items()
                   ) + f" (of T = {sec['T']})"


def _table1_text(sec: Row) -> str:
  parts = []
  for c in sec["cells"]:
    p = c["flops_n"].get("exponent")
    d = c["depth"]
    depth_text = (f"depth {_num(d['values'][0])} -> {_num(d['values'][-1])} "
                  f"(O({d['class']}))" if d["values"] else "depth n/a")
    parts.append(f"{c['layer']}: FLOPs n^{p:.2f}, {depth_text}" if p is not None
                 else f"{c['layer']}: {depth_text}")
  disagree = sum(c[k]["agree"] is False for c in sec["cells"]
                 for k in ("flops_n", "flops_d", "depth", "path"))
  return "; ".join(parts) + f" ({disagree} cells disagree with the paper, see table1/)"


def _num(v: Any) -> str:
  return "-" if v is None else f"{v:,.0f}"


def _step_text(sec: Row) -> str:
  rows = [r for r in sec["rows"] if r["pass"] == "fwd_bwd" and r["median_s"]]
  if not rows:
    return "no timings"
  t_max = max(r["T"] for r in rows)
  t_min = min(r["T"] for r in rows)
  parts = []
  for layer in dict.fromkeys(r["layer"] for r in rows):
    by_t = {r["T"]: r["median_s"] for r in rows if r["layer"] == layer}
    if t_max in by_t and t_min in by_t:
      parts.append(f"{layer} {by_t[t_max] * 1e3:.1f} ms ({by_t[t_max] / by_t[t_min]:.1f}x "
                   f"T={t_min})")
  return f"fwd+bwd at T={t_max}: " + ", ".join(parts)


def sharding_ratios(rows: Sequence[Row]) -> dict[str, dict[str, float]]:
  """Per strategy: FLOPs per device and critical path at N devices over those at 1."""
  out = {}
  for s in dict.fromkeys(r["strategy"] for r in rows):
    by_n = {r["devices"]: r for r in rows if r["strategy"] == s}
    n = max(by_n)
    out[s] = {"devices": n,
              "flops_per_device": by_n[n]["flops_per_device"] / by_n[1]["flops_per_device"],
              "critical_path": by_n[n]["critical_path"] / by_n[1]["critical_path"],
              "critical_path_1": by_n[1]["critical_path"],
              "critical_path_n": by_n[n]["critical_path"]}
  return out


def _sharding_text(sec: Row) -> str:
  ratios = sharding_ratios(sec["rows"])
  a, l = ratios.get("attention_compiler"), ratios.get("lstm_carry_passing")
  parts = []
  if a:
    parts.append(f"attention FLOPs/device x{a['flops_per_device']:.2f} on {a['devices']} "
                 "devices")
  if l:
    parts.append(f"LSTM critical path {l['critical_path_1']:,} -> {l['critical_path_n']:,} "
                 f"(x{l['critical_path']:.2f})")
  return "; ".join(parts)


def _training_text(sec: Row) -> str:
  return "; ".join(f"{r['model']} {r['accuracy']:.2f} / {r['accuracy_4x']:.2f}"
                   for r in sec["rows"]) + " (at train length / 4x; chance 0.10)"


def summary_rows(results: Row) -> list[Row]:
  """One row per measured claim: ``{"section", "what", "measured", "seconds"}``."""
  secs, seconds = results["sections"], results["seconds"]
  rows = []
  add = lambda name, what, text: rows.append(
      {"section": name, "what": what, "measured": text, "seconds": seconds.get(name)})
  if "running_sum" in secs:
    add("running_sum", "running sum of [2, 5, 3, 7]", _seed_text(secs["running_sum"]))
    add("running_sum", "sequential depth against n", _depth_text(secs["running_sum"]))
  if "connectivity" in secs:
    add("connectivity", "inputs the last output sees after L = 1..4 layers",
        _connectivity_text(secs["connectivity"]))
  if "table1" in secs:
    add("table1", "Table 1 (FLOPs and depth growth)", _table1_text(secs["table1"]))
  if "step_time" in secs:
    add("step_time", "step time against T", _step_text(secs["step_time"]))
  if "sharding" in secs:
    add("sharding", "2-device sequence sharding", _sharding_text(secs["sharding"]))
  if "training" in secs:
    add("training", "running_sum accuracy", _training_text(secs["training"]))
  if "parallel_rnn" in secs:
    add("parallel_rnn", "LSTM depth against T: lax.scan vs DEER",
        secs["parallel_rnn"]["summary"])
  for name, failure in results.get("failed", {}).items():
    add(name, TITLES[name], "FAILED: " + failure["error"])
  return rows


def failure_line(results: Row) -> str | None:
  """One line naming the sections that failed and their errors; None when none did."""
  failed = results.get("failed", {})
  if not failed:
    return None
  done = ", ".join(results["sections"]) or "none"
  return (f"{len(failed)} overview section(s) failed: "
          + "; ".join(f"{name}: {f['error']}" for name, f in failed.items())
          + f" (kept: {done}; see overview.md and results.json)")


def summary_table(rows: Sequence[Row]) -> str:
  """Markdown: measurement, result, seconds."""
  lines = ["| measurement | result | time (s) |", "|---|---|---|"]
  lines += [f"| {r['what']} | {r['measured']} | {r['seconds']} |" for r in rows]
  return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ markdown


def _step_table(rows: Sequence[Row]) -> str:
  lengths = sorted({r["T"] for r in rows})
  lines = ["| layer | pass | " + " | ".join(f"T={t} (B={_b(rows, t)})" for t in lengths)
           + " |", "|---|---|" + "---|" * len(lengths)]
  for layer in dict.fromkeys(r["layer"] for r in rows):
    for pass_ in ("fwd", "fwd_bwd"):
      by_t = {r["T"]: r["median_s"] for r in rows if r["layer"] == layer
              and r["pass"] == pass_}
      lines.append(f"| {layer} | {pass_} | " + " | ".join(
          "-" if not by_t.get(t) else f"{by_t[t] * 1e3:.2f}" for t in lengths) + " |")
  return "\n".join(lines) + "\n"


def _b(rows: Sequence[Row], t: int) -> int:
  return next(r["B"] for r in rows if r["T"] == t)


def _sharding_table(rows: Sequence[Row]) -> str:
  lines = ["| strategy | devices | FLOPs per device | critical path | collective bytes | "
           "max abs error vs 1 device |", "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['strategy']} | {r['devices']} | {r['flops_per_device']:.3g} | "
                 f"{r['critical_path']:,} | {r['collective_bytes']:,} | "
                 f"{r['max_abs_err']:.1e} |")
  return "\n".join(lines) + "\n"


def _images(sec: Row) -> str:
  return "\n".join(f"![{p}]({p})" for p in sec.get("plots", [])) + "\n"


def markdown(results: Row) -> str:
  """``overview.md``: context, the summary table, then one part per section."""
  ctx, secs = results["context"], results["sections"]
  date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  lines = ["# seqscale overview", "",
           f"{date}; backend {ctx.get('backend')} ({ctx.get('device_kind')}, "
           f"{ctx.get('device_count')} device(s)); jax {ctx.get('jax')}, flax "
           f"{ctx.get('flax', '?')}; git {str(ctx.get('git_commit'))[:10]}; "
           f"{results['seconds']['total']:.0f} s in all; load average "
           f"{results.get('load_average_1_5_15min')}.", ""]
  if results.get("pending"):
    lines += [f"**Incomplete** (still running, or stopped): {len(secs)} section(s) written, "
              f"not yet run: {', '.join(results['pending'])}.", ""]
  if results.get("failed"):
    lines += [f"**{len(results['failed'])} section(s) failed** (the others are kept):", ""]
    lines += [f"- `{name}`: {f['error']}" for name, f in results["failed"].items()]
    lines += ["", "Their tracebacks are in `results.json` (`failed`).", ""]
  lines += ["## Summary", "", summary_table(results["summary"])]
  if "running_sum" in secs:
    sec = secs["running_sum"]
    lines += ["## 1. " + TITLES["running_sum"], "", running_sum.seed_table(sec["seed_demo"]),
              running_sum.sweep_table(sec["rows"], sec["skipped"]).split("\n\n| n | method")[0],
              "", _images(sec)]
  if "connectivity" in secs:
    sec = secs["connectivity"]
    L = len(next(iter(sec["kinds"].values()))["receptive_field"])
    lines += ["## 2. " + TITLES["connectivity"], "",
              f"|dy_t/dx_s| through residual stacks of random layers, T = {sec['T']} "
              "(full experiment: `python -m experiments.pictures`). Inputs the last output "
              "depends on:", "",
              "| layer | " + " | ".join(f"L = {l}" for l in range(1, L + 1))
              + " | layers to connect all s <= t |", "|---|" + "---|" * (L + 1)]
    lines += [f"| {kind} | " + " | ".join(map(str, v["receptive_field"]))
              + f" | {v['layers_to_connect']} |" for kind, v in sec["kinds"].items()]
    lines += ["", _images(sec)]
    if "running_sum" in secs:
      lines += ["Both pictures in one (`story.png`):", "", "![story.png](story.png)", ""]
  if "table1" in secs:
    sec = secs["table1"]
    lines += ["## 3. " + TITLES["table1"], "", "\n".join(table1_report.main_table(sec["cells"])), "",
              "Path lengths are left out of this compact sweep (their unrolled evaluation "
              "costs minutes; the connectivity picture shows them): `python -m "
              "experiments.table1` measures them. The whole compact table, its raw numbers "
              "and the definitions: `table1/table1.md`.", "",
              _images(sec)]
  if "step_time" in secs:
    sec = secs["step_time"]
    lines += ["## 4. " + TITLES["step_time"], "",
              "Milliseconds per step (median of timed runs, compile excluded), float32, one "
              "layer of width D, the same tokens per step at every T:", "",
              _step_table(sec["rows"]), _images(sec)]
  if "sharding" in secs:
    sec = secs["sharding"]
    lines += ["## 5. " + TITLES["sharding"], "",
              f"Causal attention and an LSTM at T = {sec['T']}, the sequence axis split over "
              "the devices, measured " + sec.get("where", "here")
              + " (full experiment: `python -m experiments.sharding`):", "",
              _sharding_table(sec["rows"]), _images(sec)]
  if "training" in secs:
    sec = secs["training"]
    lines += ["## 6. " + TITLES["training"], "", running_sum.training_table(sec["rows"]),
              _images(sec)]
  if "parallel_rnn" in secs:
    sec = secs["parallel_rnn"]
    lines += ["## 7. " + TITLES["parallel_rnn"], "",
              "Sequential depth read off the program, DEER run with the iterations k it "
              "needed fixed (full study: `python -m experiments.parallel_rnn`): "
              + sec["summary"], "", _images(sec)]
  return "\n".join(lines)
