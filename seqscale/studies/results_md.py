"""RESULTS.md: every experiment run into one workdir, then their reports gathered in one file.

``run_missing`` runs each experiment of ``EXPERIMENTS`` as ``python -m ...`` into
``workdir/<name>`` unless it already finished there (its ``results.json`` exists), so a
stopped regeneration resumes; each run's command, seconds, date, exit code and load average
go to ``workdir/<name>/run.json`` and its output to ``workdir/<name>.log``. ``compose``
writes ``RESULTS.md``: per experiment the command, the hardware and versions read from its
``results.json``, the date, the run time, its own markdown report and its plots (copied
into ``docs/results/<name>/`` so the file shows them on GitHub).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

from seqscale import outputs

Progress = Callable[[str], None]


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


def _train(config: str, title: str, minutes: float = 1.0) -> Experiment:
  return Experiment(f"train_{config}_quick", title,
                    ("experiments.train", f"--config=experiments/configs/{config}.py:quick",
                     "--workdir={dir}"), minutes=minutes)


EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment("overview", "Overview (the README's main job)",
               ("experiments.overview", "--workdir={dir}"), report="overview.md", minutes=3.5),
    Experiment("long_range", "Long-range tasks: adding problem and copy memory",
               ("experiments.long_range", "--workdir={dir}"), report="long_range.md",
               plots=("adding_problem.png", "copy_memory.png"), minutes=28),
    Experiment("pictures", "Pictures: gradient connectivity and attention maps",
               ("experiments.pictures", "--workdir={dir}"), report="pictures.md",
               plots=("connectivity.png", "attention_maps.png"), minutes=1.5),
    Experiment("running_sum", "The seed's running sum, n = 4 .. 100,000, and training",
               ("experiments.running_sum", "--workdir={dir}"), plots=("running_sum.png",),
               minutes=3.5),
    Experiment("crossover", "Sequential against associative scan: the crossover",
               ("experiments.crossover", "--workdir={dir}"), plots=("crossover.png",),
               minutes=3.5),
    Experiment("table1", 'Table 1 of "Attention Is All You Need", measured',
               ("experiments.table1", "--workdir={dir}"), report="table1.md",
               plots=("flops_vs_n.png", "depth_vs_n.png", "path_vs_n.png"), minutes=6),
    Experiment("sharding", "Sequence parallelism on 1, 2, 4, 8 devices",
               ("experiments.sharding", "--workdir={dir}", "--devices=1,2,4,8"),
               plots=("flops_per_device.png", "critical_path.png", "timeline.png"), minutes=1),
    Experiment("flstm_timing", "Factorized and group LSTMs against the LSTM",
               ("experiments.flstm_timing", "--workdir={dir}"), plots=("flstm_timing.png",),
               minutes=1),
    Experiment("bench", "Performance against peers (PyTorch, jax.nn, Flax)",
               ("experiments.bench", "--workdir={dir}"),
               plots=("targets.png", "tokens_per_s_float32.png"), minutes=15),
    _train("running_sum", "Training: running_sum (LSTM), quick"),
    _train("adding_problem", "Training: adding problem (LSTM), quick"),
    _train("copy_memory", "Training: copy memory (Transformer), quick"),
    _train("algorithmic", "Training: algorithmic, quick"),
    _train("associative_recall", "Training: associative recall, quick"),
    _train("listops", "Training: listops, quick"),
    _train("lstm_attention", "Training: RNN encoder-decoder with attention, quick"),
    _train("memn2n", "Training: end-to-end memory network, quick"),
    _train("neural_gpu", "Training: Neural GPU, quick"),
    _train("moe", "Training: mixture of experts, quick"),
    _train("flstm", "Training: factorized LSTM, quick"),
)


def select(names: Sequence[str] | None = None, skip: Sequence[str] = ()) -> list[Experiment]:
  """The experiments named (default all), less ``skip``; unknown names raise ValueError."""
  known = {e.name: e for e in EXPERIMENTS}
  unknown = [n for n in [*(names or []), *skip] if n not in known]
  if unknown:
    raise ValueError(f"experiments {unknown}: unknown; allowed: {', '.join(known)}")
  chosen = [known[n] for n in names] if names else list(EXPERIMENTS)
  return [e for e in chosen if e.name not in skip]


def finished(workdir: str, e: Experiment) -> bool:
  """Its results.json exists, and its recorded run (if any) exited 0: an experiment that
  writes results.json part way (running_sum before its training) is not finished."""
  run = os.path.join(workdir, e.name, "run.json")
  if os.path.exists(run) and _read(run).get("exit_code") != 0:
    return False
  return os.path.exists(os.path.join(workdir, e.name, "results.json"))


def run_missing(experiments: Sequence[Experiment], workdir: str, *,
                rerun: Sequence[str] = (), progress: Progress = print) -> list[str]:
  """Runs each experiment not yet finished in ``workdir``, and those in ``rerun`` from
  scratch (their folder removed first: no resume).

  Returns the names that failed (their output is in ``workdir/<name>.log``); the others
  still run.
  """
  os.makedirs(workdir, exist_ok=True)
  failed = []
  for i, e in enumerate(experiments, 1):
    tag = f"[results {i}/{len(experiments)}] {e.name}"
    if finished(workdir, e) and e.name not in rerun:
      progress(f"{tag}: finished earlier in {os.path.join(workdir, e.name)}; kept")
      continue
    if e.name in rerun and os.path.isdir(os.path.join(workdir, e.name)):
      shutil.rmtree(os.path.join(workdir, e.name))  # from scratch: nothing to resume from
    cmd = e.command(workdir)
    progress(f"{tag}: {cmd} (about {e.minutes:g} min on 2 CPU cores) ...")
    load_before, start = outputs.load_average(), time.perf_counter()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    os.makedirs(os.path.join(workdir, e.name), exist_ok=True)
    with open(os.path.join(workdir, f"{e.name}.log"), "w") as log:
      code = subprocess.run([sys.executable, "-m", *e.args(workdir)], stdout=log,
                            stderr=subprocess.STDOUT, check=False).returncode
    seconds = round(time.perf_counter() - start, 1)
    with open(os.path.join(workdir, e.name, "run.json"), "w") as f:
      json.dump({"command": cmd, "seconds": seconds, "date": date, "exit_code": code,
                 "load_average_before": load_before, "load_average_after": outputs.load_average()},
                f, indent=1)
    if code or not finished(workdir, e):
      failed.append(e.name)
      progress(f"{tag}: FAILED (exit code {code}) after {seconds:.0f} s; see "
               f"{os.path.join(workdir, e.name)}.log")
    else:
      progress(f"{tag}: done in {seconds:.0f} s")
  return failed


# ------------------------------------------------------------------------------ compose


def _read(path: str) -> Any:
  with open(path) as f:
    return json.load(f) if path.endswith(".json") else f.read()


def _context_line(ctx: dict[str, Any], run: dict[str, Any], cores: int | None) -> str:
  devices = f"{ctx.get('device_count', '?')} x {ctx.get('device_kind', '?')}"
  parts = [f"backend {ctx.get('backend', '?')} ({devices}"
           + (f", {cores} CPU cores" if cores else "") + ")",
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
            docs_dir: str) -> str:
  """Writes ``out_path`` (RESULTS.md) from the experiments' reports in ``workdir`` and copies
  their plots into ``docs_dir``; returns the text."""
  docs_rel = os.path.relpath(docs_dir, os.path.dirname(os.path.abspath(out_path)))
  if os.path.isdir(docs_dir):
    shutil.rmtree(docs_dir)  # plots of experiments no longer listed go too
  rows = []
  for e in experiments:
    run_path = os.path.join(workdir, e.name, "run.json")
    run = _read(run_path) if os.path.exists(run_path) else {}
    status = ("not run" if not finished(workdir, e) else
              f"{run['seconds'] / 60:.1f} min, {run['date']}" if run.get("seconds") else "run")
    rows.append(f"| [{e.title}](#{_anchor(e.title)}) | `{e.command()}` | {status} |")
  names = ",".join(e.name for e in experiments)
  everything = len(experiments) == len(EXPERIMENTS)
  lines = [
      "# seqscale: results", "",
      "Every table below was produced by the command above it, on the machine and with the "
      "versions named under it. Regenerate the whole file (runs what is missing from DIR, "
      "then gathers):", "",
      "```bash",
      "python -m experiments.results --workdir=DIR"
      + ("" if everything else f" --only={names}"), "```", "",
      "`--compose_only` only gathers what DIR holds; `--rerun=NAME,...` runs those again. "
      "Timings on a shared machine move with its load: the load average before each run is "
      "recorded beside it.", "",
      "| experiment | command | run time, date |", "|---|---|---|", *rows, ""]
  for e in experiments:
    lines += _section(e, workdir, docs_dir, docs_rel)
  text = "\n".join(lines).rstrip() + "\n"
  with open(out_path, "w") as f:
    f.write(text)
  return text


def _anchor(title: str) -> str:
  return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")
