"""Runs the experiments of RESULTS.md that are missing: ``python -m ...`` subprocesses.

Entry-point wiring for ``experiments.results``: ``EXPERIMENTS`` names each experiment's
command line (a library module names no entry point); the composing of RESULTS.md lives in
``seqscale.studies.results_md``.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
import time
from typing import Callable, Sequence

from seqscale import outputs
from seqscale.studies import results_md
from seqscale.studies.results_md import Experiment


def run_missing(experiments: Sequence[results_md.Experiment], workdir: str, *,
                rerun: Sequence[str] = (), progress: Callable[[str], None] = print
                ) -> list[str]:
  """Runs each experiment not yet finished in ``workdir``, and those in ``rerun`` from
  scratch (their folder removed first: no resume). Each run's output goes to
  ``workdir/<name>.log``, its command, seconds, date, exit code and load average to
  ``workdir/<name>/run.json``.

  Returns the names that failed; the others still run.
  """
  os.makedirs(workdir, exist_ok=True)
  failed = []
  for i, e in enumerate(experiments, 1):
    tag = f"[results {i}/{len(experiments)}] {e.name}"
    if results_md.finished(workdir, e) and e.name not in rerun:
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
    outputs.write_json(os.path.join(workdir, e.name, "run.json"), {
        "command": cmd, "seconds": seconds, "date": date, "exit_code": code,
        "load_average_before": load_before, "load_average_after": outputs.load_average()})
    if code or not results_md.finished(workdir, e):
      failed.append(e.name)
      progress(f"{tag}: FAILED (exit code {code}) after {seconds:.0f} s; see "
               f"{os.path.join(workdir, e.name)}.log")
    else:
      progress(f"{tag}: done in {seconds:.0f} s")
  return failed


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
    Experiment("parallel_rnn", "Nonlinear RNNs in parallel over time: DEER, quasi-DEER, ELK",
               ("experiments.parallel_rnn", "--workdir={dir}"),
               plots=("depth.png", "gain.png", "time.png"), minutes=28),
    Experiment("text_lm", "Real text: bits per character against time and FLOPs",
               ("experiments.text_lm", "--workdir={dir}"), report="text_lm.md",
               plots=("text_lm.png",), minutes=30),
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
               plots=("targets.png", "tokens_per_s_float32.png"), minutes=35),
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
    _train("text_lm", "Training: real text (stdlib source, LSTM), quick", minutes=2.5),
)


def select(names: Sequence[str] | None = None, skip: Sequence[str] = ()) -> list[Experiment]:
  """The experiments named (default all), less ``skip``; unknown names raise ValueError."""
  known = {e.name: e for e in EXPERIMENTS}
  unknown = [n for n in [*(names or []), *skip] if n not in known]
  if unknown:
    raise ValueError(f"experiments {unknown}: unknown; allowed: {', '.join(known)}")
  chosen = [known[n] for n in names] if names else list(EXPERIMENTS)
  return [e for e in chosen if e.name not in skip]
