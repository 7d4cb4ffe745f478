"""The overview: seqscale's argument measured small, in one report (``experiments.overview``).

Seven sections, each a call into the library that the full experiments make at full size:

1. ``running_sum``: the seed's [2, 5, 3, 7] -> [2, 7, 10, 17] by ``lax.scan``,
   ``lax.associative_scan`` and attention, and the sequential depth of each against n
   (``seqscale.studies.running_sum``); then ``connectivity``: which inputs each output
   depends on after 1-4 layers of attention, convolution, dilated convolution and an RNN
   (``seqscale.studies.pictures``); the two make ``story.png``;
2. ``table1``: Table 1 of "Attention Is All You Need" on a compact sweep of five layer types
   (``seqscale.studies.table1``);
3. ``step_time``: forward and forward+backward time of one layer of ``lstm``, ``wavenet``,
   ``transformer`` and ``mingru`` against T at a fixed number of tokens per step
   (``seqscale.studies.bench``);
4. ``sharding``: on 2 devices, causal attention's FLOPs per device halve and the LSTM's
   critical path does not (``seqscale.studies.sharding``; where there are fewer devices
   than that, a CPU or a one-chip GPU/TPU, the devices are forced CPU host devices in a
   subprocess);
5. ``training``: the four families trained briefly on ``running_sum``, accuracy at the
   training length and at 4x (``seqscale.train``; the trainer configs come in
   ``Settings.train_configs``, built by the experiment from
   ``experiments/configs/running_sum.py``).

``run`` writes ``overview.md`` (tables and plots), ``results.json`` and the PNGs, prints a
progress line per section and the summary table at the end. Both files are rewritten
(atomically) as soon as each section finishes, so an interrupted run keeps what it measured;
a section that raises is reported in both (``results["failed"]``) and the run goes on with
the next. The report text lives in ``overview_report``.
"""

from __future__ import annotations

import dataclasses
import os
import time
import traceback
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from seqscale import outputs
from seqscale import train
from seqscale.analysis import timing
from seqscale.studies import bench
from seqscale.studies import bench_peers
from seqscale.studies import running_sum
from seqscale.studies import sharding
from seqscale.studies import table1

Row = dict[str, Any]
Progress = Callable[[str], None]

SECTIONS = ("running_sum", "connectivity", "table1", "step_time", "sharding", "training",
            "parallel_rnn")
STEP_MODELS = ("lstm", "wavenet", "transformer", "mingru")
SHARDING_STRATEGIES = ("attention_compiler", "lstm_carry_passing")
TABLE1_LAYERS = ("self_attention", "lstm", "conv", "dilated_conv",
                 "linear_recurrence_associative")
# Peak learning rates (measured, 1,000 steps of running_sum:quick): the LSTM reaches 0.99
# at 1e-2 but only 0.32 at the config's 3e-3; the Transformer does better at 3e-3 (0.31)
# than at 1e-2 (0.13); wavenet and mingru stay near chance (0.13-0.18) at either.
LEARNING_RATES = {"lstm": 1e-2, "wavenet": 1e-2, "mingru": 1e-2, "transformer": 3e-3}


@dataclasses.dataclass(frozen=True)
class Settings:
  """What ``run`` measures. Defaults: about 4 minutes on 2 CPU cores (see the experiment)."""
  sections: tuple[str, ...] = SECTIONS
  depth_ns: tuple[int, ...] = (4, 16, 64, 256, 1024, 4096)  # running-sum n
  attention_max_n: int = 1024  # attention's [n, n] scores: not run above
  connectivity_T: int = 32  # positions of the connectivity pictures
  table1: table1.Settings = table1.Settings(
      layers=TABLE1_LAYERS, n_values=(16, 64, 256), d_fixed=16, d_values=(16, 64),
      n_fixed=256, path_max_n=0, heads=2, regime=4)  # path lengths: experiments.table1
  step_models: tuple[str, ...] = STEP_MODELS
  step_lengths: tuple[int, ...] = (64, 256, 1024)
  step_tokens: int = 8192  # B = step_tokens // T: every T processes the same tokens
  step_width: int = 64  # D (head dim 16)
  sharding_devices: int = 2
  sharding_T: int = 256
  repeats: int = 3  # timed runs (median)
  # Model name -> trainer ConfigDict (running_sum :quick,<model>) of the training section.
  train_configs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  train_steps: int = 1000  # training steps per model
  quick: bool = False  # smaller training data (T = 8) for a smoke run

  def __post_init__(self):
    self.check()

  def check(self) -> None:
    """Raises ``ValueError`` naming the field, its value and what is allowed."""
    bad = [s for s in self.sections if s not in SECTIONS]
    if bad or not self.sections:
      raise ValueError(f"sections={list(self.sections)}: must be a non-empty subset of "
                       f"{', '.join(SECTIONS)}")
    for field in ("depth_ns", "step_lengths"):
      values = getattr(self, field)
      if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 2
                           for v in values):
        raise ValueError(f"{field}={list(values)}: must be a non-empty list of ints >= 2")
    unknown = [m for m in self.step_models if m not in STEP_MODELS]
    if unknown:
      raise ValueError(f"step_models={list(self.step_models)}: allowed {STEP_MODELS}")
    for field, minimum in (("step_tokens", 1), ("step_width", 16), ("repeats", 1),
                           ("sharding_devices", 2), ("attention_max_n", 1),
                           ("train_steps", 1)):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{field}={value!r}: must be an int >= {minimum}")
    if self.step_width % 16:
      raise ValueError(f"step_width={self.step_width}: must be a multiple of 16 (head dim)")
    if self.sharding_T % (2 * self.sharding_devices):
      raise ValueError(f"sharding_T={self.sharding_T}: must be a multiple of 2 x "
                       f"sharding_devices = {2 * self.sharding_devices}")


QUICK = Settings(
    depth_ns=(4, 16, 64), attention_max_n=64, connectivity_T=8,
    table1=table1.Settings(layers=("self_attention", "lstm", "conv"), n_values=(8, 32),
                           d_fixed=8, d_values=(8, 16), n_fixed=32, path_max_n=0, heads=2,
                           regime=2),
    step_lengths=(16,), step_tokens=256, step_width=16, sharding_T=32, repeats=1,
    train_steps=20, quick=True)


# ------------------------------------------------------------------------------ sections


def section_running_sum(s: Settings, workdir: str, progress: Progress) -> Row:
  """The seed's four numbers three ways, then sequential depth (and time) against n."""
  demo = running_sum.seed_demo()
  rows, skipped = running_sum.sweep(s.depth_ns, attention_max_n=s.attention_max_n,
                                    repeats=s.repeats, progress=progress)
  running_sum.plot_sweep(rows, os.path.join(workdir, "running_sum.png"))
  return {"seed_demo": demo, "rows": rows, "skipped": skipped, "plots": ["running_sum.png"]}


def section_parallel_rnn(s: Settings, workdir: str, progress: Progress) -> Row:
  """An LSTM's sequential depth against T under lax.scan and under DEER (``ops.newton``),
  beside the Newton iterations DEER needed (``studies.parallel_rnn``)."""
  from seqscale.studies import parallel_rnn_overview  # pylint: disable=g-import-not-at-top
  lengths = (64, 256, 1024) if s.quick else (64, 256, 1024, 4096)
  return parallel_rnn_overview.section(workdir, lengths, progress=progress)


def section_connectivity(s: Settings, workdir: str, progress: Progress) -> Row:
  """|dy_t/dx_s| of residual stacks of 1..4 layers per kind, T = 32 (``pictures``)."""
  from seqscale.studies import pictures  # pylint: disable=g-import-not-at-top
  table = pictures.plot_connectivity(os.path.join(workdir, "connectivity.png"),
                                     T=s.connectivity_T)
  rows = {kind: {"receptive_field": v["receptive_field"],
                 "layers_to_connect": v["layers_to_connect"]} for kind, v in table.items()}
  for kind, v in rows.items():
    progress(f"{kind}: the last output sees {v['receptive_field']} of {s.connectivity_T} "
             f"inputs after L = 1..{len(v['receptive_field'])} layers; all pairs connected "
             f"at L = {v['layers_to_connect']}")
  return {"T": s.connectivity_T, "kinds": rows, "plots": ["connectivity.png"]}


def section_table1(s: Settings, workdir: str, progress: Progress) -> Row:
  """Table 1 on ``s.table1`` (written in full to ``workdir/table1``)."""
  out = table1.run(s.table1, os.path.join(workdir, "table1"),
                   progress=lambda line: progress(line) if " n=" in line else None)
  return {"rows": out["rows"], "cells": out["cells"], "config": dataclasses.asdict(s.table1),
          "plots": [os.path.join("table1", p) for p in out["plots"]
                    if p in ("depth_vs_n.png", "flops_vs_n.png")]}


def section_step_time(s: Settings, workdir: str, progress: Progress) -> Row:
  """One layer of each model, float32, forward and forward+backward, at every T."""
  b = bench.Settings(width=s.step_width, head_dim=16, repeats=s.repeats,
                     min_repeats=min(s.repeats, 2), group_seconds=2.0, targets=False)
  rng = np.random.default_rng(0)
  rows = []
  for name in s.step_models:
    for T in s.step_lengths:
      B = max(1, s.step_tokens // T)
      for pass_ in bench.PASSES:
        cands, tokens = bench_peers.layer_candidates(name, b, T, B, "float32", pass_, rng,
                                               peers=False)
        meta = {"layer": name, "T": T, "B": B, "D": s.step_width, "dtype": "float32",
                "pass": pass_, "tokens": tokens}
        rows += timing.measure_group(cands, meta, progress=progress, **bench.group_kwargs(b))
  from seqscale.studies import overview_report  # pylint: disable=g-import-not-at-top
  overview_report.plot_step_time(rows, os.path.join(workdir, "step_time.png"))
  return {"rows": rows, "plots": ["step_time.png"]}


def sharding_rows(counts: Sequence[int], strategies: Sequence[str], sizes: sharding.Sizes,
                  repeats: int = 3) -> list[Row]:
  """``sharding.measure`` rows for each device count in ``counts``.

  Runs here where JAX has ``max(counts)`` devices. Elsewhere (a CPU with fewer, or a GPU or
  TPU with fewer: a one-chip Colab TPU, a single-GPU machine) it runs in one subprocess on
  ``max(counts)`` forced CPU host devices (``JAX_PLATFORMS=cpu`` and
  ``--xla_force_host_platform_device_count``, set before JAX starts there); those rows
  carry ``forced_cpu_devices``. FLOPs per device and the critical path, the section's
  numbers, are properties of the program and the same on either.
  """
  if jax.device_count() >= max(counts):
    return [sharding.measure(name, n, sizes, repeats=repeats)
            for n in counts for name in strategies]
  return sharding.subprocess_rows(counts, strategies, sizes, repeats=repeats)


def sharding_where(num_devices: int) -> str:
  """Where ``sharding_rows`` measures ``num_devices`` devices, as one line."""
  have, backend = jax.device_count(), jax.default_backend()
  if have >= num_devices:
    return f"on {num_devices} of the {have} {backend} devices here"
  return (f"on {num_devices} forced CPU host devices in a subprocess (XLA_FLAGS="
          f"--xla_force_host_platform_device_count={num_devices}), since there "
          f"{'is' if have == 1 else 'are'} {have} {backend} device{'s' * (have > 1)} here")


def section_sharding(s: Settings, workdir: str, progress: Progress) -> Row:
  """Attention and the LSTM's carry passing on 1 and ``s.sharding_devices`` devices."""
  counts = (1, s.sharding_devices)
  where = sharding_where(s.sharding_devices)
  progress("measuring " + where)
  rows = sharding_rows(counts, SHARDING_STRATEGIES, sharding.Sizes(T=s.sharding_T),
                       repeats=s.repeats)
  for r in rows:
    progress(f"{r['strategy']} on {r['devices']} device(s): {r['flops_per_device']:.3g} "
             f"FLOPs/device, critical path {r['critical_path']}, max |err| "
             f"{r['max_abs_err']:.1e}")
  from seqscale.studies import overview_report  # pylint: disable=g-import-not-at-top
  overview_report.plot_sharding(rows, os.path.join(workdir, "sharding.png"))
  return {"rows": rows, "T": s.sharding_T, "where": where, "plots": ["sharding.png"]}


def training_configs(s: Settings) -> dict[str, Any]:
  """``s.train_configs`` set for the overview: ``s.train_steps`` steps, ``LEARNING_RATES``,
  one device, and with ``s.quick`` a tiny dataset (T = 8)."""
  configs = {}
  for name, base in s.train_configs.items():
    config, steps = base.copy_and_resolve_references(), s.train_steps
    config.num_steps = steps
    config.optimizer.learning_rate = LEARNING_RATES.get(name, config.optimizer.learning_rate)
    config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, max(steps // 10, 1))
    config.checkpoint_every = steps
    config.log_every = max(1, min(config.log_every, steps // 4))
    config.parallel.num_devices = 1
    if s.quick:
      config.task.num_train, config.task.num_eval = 256, 64
      config.task.length, config.batch_size, config.eval_batch_size = 8, 8, 16
    configs[name] = config
  return configs


def section_training(s: Settings, workdir: str, progress: Progress) -> Row:
  """``train.train_and_evaluate`` of each ``training_configs(s)`` into
  ``workdir/train/<name>``; a finished run resumes at its end, so a rerun re-trains nothing."""
  rows = []
  for name, config in training_configs(s).items():
    start = time.perf_counter()
    results = train.train_and_evaluate(config, os.path.join(workdir, "train", name))
    row = running_sum.training_row(name, config.model.hparams.to_dict(), results)
    rows.append(row)
    progress(f"{name}: accuracy {row['accuracy']:.3f} at T={row['train_length']}, "
             f"{row['accuracy_4x']:.3f} at T={row['length_4x']} "
             f"({time.perf_counter() - start:.0f} s)")
  from seqscale.studies import overview_report  # pylint: disable=g-import-not-at-top
  overview_report.plot_training(rows, os.path.join(workdir, "training.png"))
  return {"rows": rows, "plots": ["training.png"]}


# ------------------------------------------------------------------------------ the run


def run(settings: Settings, workdir: str, progress: Progress = print) -> Row:
  """Runs the sections, writes ``overview.md``, ``results.json`` and PNGs; returns results.

  Both files are rewritten (atomically) after every section, ``results["status"]`` saying
  ``"running"`` until the last. A section that raises an ``Exception`` is recorded in
  ``results["failed"]`` (``{name: {"error", "traceback"}}``) and reported in both files;
  the others are kept and the run goes on (``overview_report.failure_line`` says it in a
  line). ``train.Interrupted`` (SIGTERM/SIGINT during training) stops the run, after
  writing what the finished sections measured.

  Args:
    settings: what to measure; its ``train_configs`` must not be empty when ``training``
      is among the sections.
    workdir: output directory (created).
    progress: called with one line per step of the work.
  """
  from seqscale.studies import overview_report  # pylint: disable=g-import-not-at-top
  if "training" in settings.sections and not settings.train_configs:
    raise ValueError("train_configs={}: the training section needs them (model name -> "
                     "trainer config), or leave training out of sections")
  workdir = outputs.prepare_workdir(workdir)
  fns = {"running_sum": section_running_sum, "connectivity": section_connectivity,
         "table1": section_table1, "step_time": section_step_time,
         "sharding": section_sharding, "training": section_training,
         "parallel_rnn": section_parallel_rnn}
  start = time.perf_counter()
  recorded = dataclasses.asdict(dataclasses.replace(settings, train_configs={}))
  recorded["train_configs"] = {k: c.to_dict() for k, c in training_configs(settings).items()}
  names = [n for n in SECTIONS if n in settings.sections]
  results: Row = {"experiment": "overview", "status": "running", "settings":
                  outputs.json_safe(recorded),
                  "context": outputs.run_context(seed=0, quick=settings.quick),
                  "sections": {}, "failed": {}, "pending": list(names), "seconds": {}}
  for i, name in enumerate(names, 1):
    progress(f"[overview {i}/{len(names)}] {name}: {overview_report.TITLES[name]} ...")
    t0 = time.perf_counter()
    prefix = f"[overview {i}/{len(names)} {name}] "
    try:
      results["sections"][name] = fns[name](settings, workdir, lambda l: progress(prefix + l))
    except train.Interrupted:  # SIGTERM/SIGINT: stop, keeping what the sections measured
      _write(results, workdir, start, finished=False)
      raise
    except Exception as e:  # pylint: disable=broad-except  # reported; the others go on
      error = " ".join(f"{type(e).__name__}: {e}".split())
      results["failed"][name] = {"error": error, "traceback": traceback.format_exc()[-4000:]}
      progress(f"[overview {i}/{len(names)}] {name} FAILED: {error} (the other sections go "
               "on; overview.md and results.json report it)")
    results["pending"].remove(name)
    results["seconds"][name] = round(time.perf_counter() - t0, 1)
    if name in results["sections"]:
      progress(f"[overview {i}/{len(names)}] {name} done in {results['seconds'][name]} s "
               f"(elapsed {time.perf_counter() - start:.0f} s)")
    if (name in ("running_sum", "connectivity") and "running_sum" in results["sections"]
        and "connectivity" in results["sections"]):
      overview_report.plot_story(results["sections"], os.path.join(workdir, "story.png"))
    _write(results, workdir, start, finished=i == len(names))
  return results


def _write(results: Row, workdir: str, start: float, finished: bool) -> None:
  """``results.json`` and ``overview.md`` as they stand (atomic writes)."""
  from seqscale.studies import overview_report  # pylint: disable=g-import-not-at-top
  results["status"] = "finished" if finished else "running"
  results["seconds"]["total"] = round(time.perf_counter() - start, 1)
  results["load_average_1_5_15min"] = outputs.load_average()
  results["summary"] = overview_report.summary_rows(results)
  outputs.write_json(os.path.join(workdir, "results.json"), results)
  outputs.write_text(os.path.join(workdir, "overview.md"), overview_report.markdown(results))
