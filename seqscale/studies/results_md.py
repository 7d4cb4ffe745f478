"""RESULTS.md: every experiment's report gathered in one file.

``EXPERIMENTS`` lists them as data: the command (``python -m ...`` with ``{dir}`` its own
folder of the workdir), the report and the plots. ``experiments.results`` runs the ones not
yet ``finished`` (a library module launches no entry point), each writing
``workdir/<name>/run.json`` (command, seconds, date, exit code, load average). ``compose``
writes ``RESULTS.md``: per experiment the command, the hardware and versions read from its
``results.json``, the date, the run time, its own markdown report and its plots (copied
into ``docs/results/<name>/`` so the file shows them on GitHub).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from typing import Any, Sequence

from seqscale import outputs


@dataclasses.dataclass(frozen=True)
class Experiment:
  """One entry of RESULTS.md: ``python -m <argv>`` with ``{dir}`` its own workdir."""
  name: str
  title: str
  argv: tuple[str, ...]
  report: str = "results.md"  # its markdown, in its workdir
  plots: tuple[str, ...] = ()  # PNGs (in its workdir) shown under the report
  minutes: float = 1.0  # run time measured on 2 CPU cores, for the progress line

  def args(self, workdir: str) -> list[str]:
    return [a.replace("{dir}", os.path.join(workdir, self.name)) for a in self.argv]

  def command(self, workdir: str = "DIR") -> str:
    return "python -m " + " ".join(self.args(workdir))


def finished(workdir: str, e: Experiment) -> bool:
  """Its results.json exists, and its recorded run (if any) exited 0: an experiment that
  writes results.json part way (running_sum before its training) is not finished."""
  run = os.path.join(workdir, e.name, "run.json")
  if os.path.exists(run) and _read(run).get("exit_code") != 0:
    return False
  return os.path.exists(os.path.join(workdir, e.name, "results.json"))


# ------------------------------------------------------------------------------ compose


def _read(path: str) -> Any:
  with open(path) as f:
    return json.load(f) if path.endswith(".json") else f.read()


def _context_line(ctx: dict[str, Any], run: dict[str, Any], cores: int | None) -> str:
  devices = f"{ctx.get('device_count', '?')} x {ctx.get('device_kind', '?')}"
  cpu = ctx.get("cpu") and ctx["cpu"] + (
      f" [{', '.join(ctx['cpu_flags'])}]" if ctx.get("cpu_flags") else "")
  parts = [f"backend {ctx.get('backend', '?')} ({devices}"
           + (f", {cores} CPU cores" if cores else "") + ")",
           f"CPU {cpu}" if cpu else None,
           f"jax {ctx.get('jax', '?')}" + (f", flax {ctx['flax']}" if ctx.get("flax") else ""),
           f"git {str(ctx.get('git_commit'))[:10]}" if ctx.get("git_commit") else None,
           f"run {run['date']}" if run.get("date") else None,
           f"{run['seconds'] / 60:.1f} min" if run.get("seconds") else None,
           f"load average {run.get('load_average_before')} before" if run.get(
               "load_average_before") else None]
  return "; ".join(p for p in parts if p)


_HEADING = re.compile(r"^(#+) ", re.M)
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")


def _section(e: Experiment, workdir: str, docs_dir: str, docs_rel: str) -> list[str]:
  src = os.path.join(workdir, e.name)
  report_path = os.path.join(src, e.report)
  if not os.path.exists(report_path):
    return [f"## {e.title}", "", f"`{e.command()}`", "",
            f"Not run into this workdir (no `{e.report}`).", ""]
  results = _read(os.path.join(src, "results.json"))
  ctx = results.get("context") or {}
  run = _read(os.path.join(src, "run.json")) if os.path.exists(
      os.path.join(src, "run.json")) else {}
  report = _HEADING.sub(lambda m: "#" * (len(m.group(1)) + 2) + " ", _read(report_path))
  dest = os.path.join(docs_dir, e.name)
  copied: list[str] = []

  def image(m: re.Match[str]) -> str:
    name = m.group(2)
    if not os.path.exists(os.path.join(src, name)):
      return m.group(0)
    target = os.path.join(dest, name.replace("/", "_"))
    os.makedirs(dest, exist_ok=True)
    shutil.copyfile(os.path.join(src, name), target)
    copied.append(name)
    return f"![{m.group(1)}]({docs_rel}/{e.name}/{name.replace('/', '_')})"

  report = _IMAGE.sub(image, report)
  plots = []
  for name in e.plots:
    if name not in copied and os.path.exists(os.path.join(src, name)):
      os.makedirs(dest, exist_ok=True)
      shutil.copyfile(os.path.join(src, name), os.path.join(dest, name))
      plots.append(f"![{name}]({docs_rel}/{e.name}/{name})")
  return [f"## {e.title}", "", f"`{e.command()}`", "",
          _context_line(ctx, run, os.cpu_count() if ctx.get("backend") == "cpu" else None),
          "", report.strip(), "", *plots, ""]


def compose(experiments: Sequence[Experiment], workdir: str, out_path: str,
            docs_dir: str, regenerate: str = "") -> str:
  """Writes ``out_path`` (RESULTS.md) from the experiments' reports in ``workdir`` and copies
  their plots into ``docs_dir``; returns the text. ``regenerate``: the command line that
  reruns what is missing and gathers again (the entry point's), shown at the top."""
  docs_rel = os.path.relpath(docs_dir, os.path.dirname(os.path.abspath(out_path)))
  for e in experiments:  # this experiment's old plots go; other experiments' stay
    shutil.rmtree(os.path.join(docs_dir, e.name), ignore_errors=True)
  rows = []
  for e in experiments:
    run_path = os.path.join(workdir, e.name, "run.json")
    run = _read(run_path) if os.path.exists(run_path) else {}
    status = ("not run" if not finished(workdir, e) else
              f"{run['seconds'] / 60:.1f} min, {run['date']}" if run.get("seconds") else "run")
    rows.append(f"| [{e.title}](#{_anchor(e.title)}) | `{e.command()}` | {status} |")
  lines = [
      "# seqscale: results", "",
      "Every table below was produced by the command above it, on the machine and with the "
      "versions named under it. Regenerate the whole file (runs what is missing from DIR, "
      "then gathers):", "",
      "```bash",
      regenerate or "(the command that ran the experiments)", "```", "",
      "`--compose_only` only gathers what DIR holds; `--rerun=NAME,...` runs those again. "
      "Timings on a shared machine move with its load: the load average before each run is "
      "recorded beside it.", "",
      "| experiment | command | run time, date |", "|---|---|---|", *rows, ""]
  for e in experiments:
    lines += _section(e, workdir, docs_dir, docs_rel)
  text = "\n".join(lines).rstrip() + "\n"
  outputs.write_text(out_path, text)
  return text


def _anchor(title: str) -> str:
  return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")
