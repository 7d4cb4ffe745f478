"""The long-range experiment's report: a table per (task, T, model), ``results.json``, plots.

Rows are ``long_range.train_cell``'s (one per seed); ``summarize`` aggregates the seeds of
one (task, T, model): how many solved, median steps and training seconds to solve (over the
solved seeds), mean final held-out loss over the baseline.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from typing import Any, Mapping, Sequence

from seqscale import outputs
from seqscale.studies import long_range

METRIC = {"adding_problem": "MSE", "copy_memory": "cross-entropy"}


def _median(values: Sequence[float | None]) -> float | None:
  values = [v for v in values if v is not None]
  return statistics.median(values) if values else None


def _mean(values: Sequence[float | None]) -> float | None:
  values = [v for v in values if v is not None]
  return sum(values) / len(values) if values else None


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """One summary per (task, T, model), in the order the rows first name them."""
  groups: dict[tuple[str, int, str], list[Mapping[str, Any]]] = {}
  for r in rows:
    groups.setdefault((r["task"], r["length"], r["model"]), []).append(r)
  out = []
  for (task, length, model), rs in groups.items():
    solved = [r for r in rs if r["solved"]]
    out.append({
        "task": task, "length": length, "model": model, "seeds": len(rs),
        "solved": len(solved), "steps_to_solve": _median([r["steps_to_solve"] for r in solved]),
        "seconds_to_solve": _median([r["seconds_to_solve"] for r in solved]),
        "final_loss": _mean([r["final_loss"] for r in rs]),
        "ratio": _mean([r["ratio"] for r in rs]), "baseline": rs[0]["baseline"],
        "final_seq_accuracy": _mean([r.get("final_seq_accuracy") for r in rs]),
        "steps": _median([r["steps"] for r in rs]),
        "ms_per_step": _median([r["ms_per_step"] for r in rs]),
        "compile_s": max(r["compile_s"] for r in rs),
        "stops": sorted({r["stop"] for r in rs if not r["solved"]}),
    })
  return out


def _f(v: float | None, fmt: str) -> str:
  return "-" if v is None else format(v, fmt)


def markdown(rows: Sequence[Mapping[str, Any]], settings: long_range.Settings,
             context: Mapping[str, Any]) -> str:
  """The table (one row per (task, T, model)) with the settings and how the cells stopped."""
  budget = (f"at most {settings.max_steps} steps"
            + (f" and {settings.max_train_s:g} s of training" if settings.max_train_s else ""))
  lines = [
      "# Long-range dependencies: adding problem and copy memory", "",
      f"Solved: held-out loss at the training length below {long_range.SOLVE_FRACTION:g} x "
      "the baseline (adding: MSE 1/6; copy memory: 10 ln 8 / (T + 20)), checked every "
      f"{settings.eval_every} steps on {settings.num_eval} held-out sequences. Each cell: "
      f"{budget}, batch {settings.batch_size}, Adam {settings.learning_rate:g}, width "
      f"{settings.hidden}. Steps and seconds to solve: medians over the solved seeds "
      "(seconds: training only; compile apart). Loss / baseline: mean over seeds.", "",
      f"Backend {context.get('backend')} ({context.get('device_kind')}), jax "
      f"{context.get('jax')}, flax {context.get('flax')}; load average at the start "
      f"{_f((context.get('loadavg_start') or [None])[0], '.2f')}.", "",
      "| task | T | model | solved | steps to solve | s to solve | loss / baseline | "
      "final loss | whole-seq. acc. | steps trained | ms/step | compile s | unsolved: stop |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for s in summarize(rows):
    lines.append(
        f"| {s['task']} | {s['length']} | {s['model']} | {s['solved']}/{s['seeds']} | "
        f"{_f(s['steps_to_solve'], '.0f')} | {_f(s['seconds_to_solve'], '.1f')} | "
        f"{_f(s['ratio'], '.3g')} | {_f(s['final_loss'], '.4g')} | "
        f"{_f(s['final_seq_accuracy'], '.2f')} | {_f(s['steps'], '.0f')} | "
        f"{_f(s['ms_per_step'], '.1f')} | {s['compile_s']:.1f} | "
        f"{', '.join(s['stops']) or '-'} |")
  train_s = sum(r["train_s"] for r in rows)
  other_s = sum(r["compile_s"] + r["eval_s"] for r in rows)
  lines += ["", f"{len(rows)} cells: {sum(r['solved'] for r in rows)} solved; "
            f"{train_s:.0f} s training, {other_s:.0f} s compiling and evaluating "
            "(cells done in an earlier run included)."]
  return "\n".join(lines) + "\n"


def plot(rows: Sequence[Mapping[str, Any]], workdir: str) -> list[str]:
  """One PNG per task: loss / baseline against T (log-log; filled = every seed solved,
  open = not all), and steps to solve against T. Returns the paths written."""
  plt = outputs.pyplot()
  summary = summarize(rows)
  paths = []
  for task in dict.fromkeys(s["task"] for s in summary):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, model in enumerate(dict.fromkeys(s["model"] for s in summary)):
      ss = sorted((s for s in summary if s["task"] == task and s["model"] == model),
                  key=lambda s: s["length"])
      color = f"C{i}"
      pts = [(s["length"], s["ratio"], s["solved"] == s["seeds"]) for s in ss
             if s["ratio"] is not None]
      if pts:
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], "-", color=color, label=model)
        for t, r, ok in pts:
          ax1.plot([t], [r], "o", color=color, mfc=color if ok else "white")
      solved = [(s["length"], s["steps_to_solve"]) for s in ss if s["steps_to_solve"]]
      if solved:
        ax2.plot(*zip(*solved), "o-", color=color, label=model)
    ax1.axhline(1.0, color="gray", ls=":", lw=1)
    ax1.axhline(long_range.SOLVE_FRACTION, color="gray", ls="--", lw=1)
    ax1.set(xscale="log", yscale="log", xlabel="T",
            ylabel=f"held-out {METRIC.get(task, 'loss')} / baseline",
            title=f"{task}: final loss (filled: all seeds solved; dashed: solved line)")
    ax2.set(xscale="log", yscale="log", xlabel="T", ylabel="steps to solve (median, solved)",
            title=f"{task}: steps to solve")
    if not ax2.lines:
      ax2.text(0.5, 0.5, "no cell solved", ha="center", va="center",
               transform=ax2.transAxes)
    lengths = sorted({s["length"] for s in summary if s["task"] == task})
    for ax in (ax1, ax2):
      ax.set_xticks(lengths, [str(t) for t in lengths])
      ax.set_xticks([], minor=True)
      if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(workdir, f"{task}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
  return paths


def save(workdir: str, rows: Sequence[Mapping[str, Any]], settings: long_range.Settings,
         context: Mapping[str, Any]) -> str:
  """Writes ``results.json``, ``long_range.md`` and the PNGs; returns the markdown."""
  md = markdown(rows, settings, context)
  outputs.write_text(os.path.join(workdir, "long_range.md"), md)
  plots = plot(rows, workdir)
  outputs.write_json(os.path.join(workdir, "results.json"), {
      "settings": dataclasses.asdict(settings), "solve_fraction": long_range.SOLVE_FRACTION,
      "summary": summarize(rows), "cells": list(rows), "plots": plots,
      "context": dict(context)})
  return md
