"""The text study's report: the table, a paragraph on who is ahead, ``results.json``, a plot.

Rows are ``text_lm.train_cell``'s, one per (family, size).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

from seqscale import outputs
from seqscale.studies import text_lm

RECURRENT = ("lstm", "gru")  # a nonlinear carry: T dependent steps, whatever the hardware


def _f(v: float | None, fmt: str) -> str:
  return "-" if v is None else format(v, fmt)


def table(rows: Sequence[Mapping[str, Any]], settings: text_lm.Settings) -> list[str]:
  """The markdown table: one line per (family, size)."""
  levels = settings.levels
  head = ("| model | size | params | tokens/s | FLOPs/token | forward depth | steps | "
          f"bpc at {settings.max_train_s:g} s | bpc at {settings.flop_budget:.3g} FLOPs | "
          + " | ".join(f"s to {v:g}" for v in levels) + " | "
          + " | ".join(f"FLOPs to {v:g}" for v in levels) + " | test bpc |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in rows:
    hist = r["history"]
    secs = [text_lm.reach(hist, "bits_per_char", v, "train_s") for v in levels]
    flops = [text_lm.reach(hist, "bits_per_char", v, "flops") for v in levels]
    lines.append(
        f"| {r['model']} | {r['size']} | {r['num_params'] / 1e6:.2f}M | "
        f"{r['tokens_per_s']:,.0f} | {r['flops_per_token']:.3g} | "
        f"{r['forward_sequential_depth']:,} | {r['steps']} | "
        f"{_f(r['bpc_at_time_budget'], '.3f')} | {_f(r['bpc_at_flop_budget'], '.3f')} | "
        + " | ".join(_f(s, ".1f") for s in secs) + " | "
        + " | ".join(_f(f, ".2e") for f in flops) + f" | {_f(r['final_bpc_test'], '.3f')} |")
  return lines


def verdict(rows: Sequence[Mapping[str, Any]], settings: text_lm.Settings) -> list[str]:
  """Who is ahead at each budget on this machine, and what parallel hardware would change."""
  out = []
  for size in dict.fromkeys(r["size"] for r in rows):
    rs = [r for r in rows if r["size"] == size]
    by_time = sorted((r for r in rs if r["bpc_at_time_budget"] is not None),
                     key=lambda r: r["bpc_at_time_budget"])
    by_flops = sorted((r for r in rs if r["bpc_at_flop_budget"] is not None),
                      key=lambda r: r["bpc_at_flop_budget"])
    if not by_time:
      continue
    order = lambda rr, key: ", ".join(f"{r['model']} {r[key]:.3f}" for r in rr)
    out.append(f"- **{size}**: at the same {settings.max_train_s:g} s of training on this CPU "
               f"the order (held-out bits per character) is {order(by_time, 'bpc_at_time_budget')}"
               + (f"; at the same {settings.flop_budget:.3g} training FLOPs it is "
                  f"{order(by_flops, 'bpc_at_flop_budget')}." if by_flops else "."))
    fast = max(rs, key=lambda r: r["tokens_per_s"])
    serial = [r for r in rs if r["model"] in RECURRENT]
    parallel = [r for r in rs if r["model"] not in RECURRENT]
    if serial and parallel:
      deep = max(serial, key=lambda r: r["forward_sequential_depth"])
      shallow = min(parallel, key=lambda r: r["forward_sequential_depth"])
      out.append(
          f"  On parallel hardware the time per step follows the sequential depth rather "
          f"than the FLOPs: the forward pass of {deep['model']} is "
          f"{deep['forward_sequential_depth']:,} dependent steps at T = {settings.length} "
          f"(it grows with T), that of {shallow['model']} "
          f"{shallow['forward_sequential_depth']:,}. On a GPU/TPU, where a step of the "
          f"parallel families costs about its depth, the order moves towards the "
          f"FLOP-budget column, and lstm and gru, whose depth grows with T, gain the least "
          f"from the extra parallel units. Fastest here: {fast['model']}, "
          f"{fast['tokens_per_s']:,.0f} tokens/s.")
  return out


def markdown(rows: Sequence[Mapping[str, Any]], settings: text_lm.Settings,
             context: Mapping[str, Any]) -> str:
  """The report: settings, table, verdict, the corpus."""
  corpus = rows[0].get("corpus", {}) if rows else {}
  lines = [
      "## Real text: bits per character against time and FLOPs",
      "",
      f"Byte-level language model of the Python {corpus.get('python_version', '?')} standard "
      f"library's source ({corpus.get('num_files', '?')} files, SHA-256 "
      f"{str(corpus.get('sha256', '?'))[:16]}..., split by file), windows of "
      f"{settings.length} bytes, batch {settings.batch_size}, Adam {settings.learning_rate:g} "
      f"(constant after {settings.warmup_steps} warmup steps). Every family trains until it "
      f"has used both budgets: {settings.max_train_s:g} s of training (compilation and "
      f"evaluation excluded) and {settings.flop_budget:.3g} training FLOPs "
      f"(XLA's count of the compiled step, loops times trip count), at most "
      f"{settings.cap_factor:g} x {settings.max_train_s:g} s. Held-out bits per character "
      f"on {settings.eval_windows} validation windows every {settings.eval_every_s:g} s "
      f"(the curves and the 'to' columns: first evaluation at or below the level; '-': "
      f"not reached); test bpc on {settings.test_windows} test windows at the end. "
      "tokens/s: input tokens per second of training; forward depth: "
      "`analysis.sequential_depth` of the forward pass (dependent primitive steps).",
      "",
      *table(rows, settings),
      "",
      *verdict(rows, settings),
      "",
      f"Load average {context.get('loadavg_start')} at the start, "
      f"{context.get('loadavg_end')} at the end (2 CPU cores shared); wall time "
      f"{context.get('wall_s', 0):.0f} s"
      + (f" ({context['cells_reused']} of the {len(rows)} cells reused from an earlier run)"
         if context.get("cells_reused") else "") + ". Stops: "
      + ", ".join(f"{r['model']} {r['size']} {r['stop']}" for r in rows) + ".",
  ]
  return "\n".join(lines) + "\n"


def plot(path: str, rows: Sequence[Mapping[str, Any]], settings: text_lm.Settings) -> None:
  """Held-out bits per character against seconds, FLOPs and steps, a line per cell."""
  xs = (("train_s", "training seconds"), ("flops", "training FLOPs"), ("step", "steps"))
  styles = {"quick": "-", "1m": "-", "5m": "--"}
  with outputs.figure(path, 1, 3, figsize=(15, 4.5)) as (_, axes):
    for ax, (key, label) in zip(axes, xs):
      for r in rows:
        hist = [h for h in r["history"] if h.get("bits_per_char") is not None]
        ax.plot([h[key] for h in hist], [h["bits_per_char"] for h in hist],
                styles.get(r["size"], "-"), color=f"C{text_lm.FAMILIES.index(r['model'])}",
                marker=".", label=f"{r['model']} {r['size']}" if key == "train_s" else None)
      if key == "train_s":
        ax.axvline(settings.max_train_s, color="gray", lw=0.8, ls=":")
      if key == "flops":
        ax.set_xscale("log")
        ax.axvline(settings.flop_budget, color="gray", lw=0.8, ls=":")
      ax.set_xlabel(label)
      ax.set_ylabel("held-out bits per character")
      ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)


def save(workdir: str, rows: Sequence[Mapping[str, Any]], settings: text_lm.Settings,
         context: Mapping[str, Any]) -> str:
  """Writes ``results.json``, ``text_lm.md`` and ``text_lm.png``; returns the markdown."""
  md = markdown(rows, settings, context)
  outputs.write_text(os.path.join(workdir, "text_lm.md"), md)
  plot(os.path.join(workdir, "text_lm.png"), rows, settings)
  outputs.write_json(os.path.join(workdir, "results.json"), {
      "settings": dataclasses.asdict(settings), "rows": list(rows),
      "markdown": md, "context": dict(context)})
  return md
