"""The overview: seqscale's argument measured small, in one report (``experiments.overview``).

Six sections, each a call into the library that the full experiments make at full size:

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
   critical path does not (``seqscale.studies.sharding``; on a CPU with one device the
   2 devices are forced host devices in a subprocess);
5. ``training``: the four families trained briefly on ``running_sum``, accuracy at the
   training length and at 4x (``seqscale.train``).

``run`` writes ``overview.md`` (tables and plots), ``results.json`` and the PNGs, prints a
progress line per section and the summary table at the end. The report text lives in
``overview_report``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from seqscale import outputs
from seqscale.analysis import timing
from seqscale.studies import bench
from seqscale.studies import bench_peers
from seqscale.studies import running_sum
from seqscale.studies import sharding
from seqscale.studies import table1

Row = dict[str, Any]
Progress = Callable[[str], None]
TrainFn = Callable[[Any, str], Row]  # (config, workdir) -> results, as train_and_evaluate

SECTIONS = ("running_sum", "connectivity", "table1", "step_time", "sharding", "training")
STEP_MODELS = ("lstm", "wavenet", "transformer", "mingru")
SHARDING_STRATEGIES = ("attention_compiler", "lstm_carry_passing")
TABLE1_LAYERS = ("self_attention", "lstm", "conv", "dilated_conv",
                 "linear_recurrence_associative")


@dataclasses.dataclass(frozen=True)
class Settings:
  """What ``run`` measures. Defaults: about 4 minutes on 2 CPU cores (see the experiment)."""
  sections: tuple[str, ...] = SECTIONS
  depth_ns: tuple[int, ...] = (4, 16, 64, 256, 1024, 4096)  # running-sum n
  attention_max_n: int = 1024  # attention's [n, n] scores: not run above
  connectivity_T: int = 32  # positions of the connectivity pictures
  table1: table1.Config = table1.Config(
      layers=TABLE1_LAYERS, n_values=(16, 64, 256), d_fixed=16, d_values=(16, 64),
      n_fixed=256, path_max_n=0, heads=2, regime=4)  # path lengths: experiments.table1
  step_models: tuple[str, ...] = STEP_MODELS
  step_lengths: tuple[int, ...] = (64, 256, 1024)
  step_tokens: int = 8192  # B = step_tokens // T: every T processes the same tokens
  step_width: int = 64  # D (head dim 16)
  sharding_devices: int = 2
  sharding_T: int = 256
  repeats: int = 3  # timed runs (median)

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
                           ("sharding_devices", 2), ("attention_max_n", 1)):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{field}={value!r}: must be an int >= {minimum}")
    if self.step_width % 16:
      raise ValueError(f"step_width={self.step_width}: must be a multiple of 16 (head dim)")
    if self.sharding_T % (2 * self.sharding_devices):
      raise ValueError(f"sharding_T={self.sharding_T}: must be a multiple of 2 x "
                       f"sharding_devices = {2 * self.sharding_devices}")
    table1.validate(self.table1)


QUICK = Settings(
    depth_ns=(4, 16, 64), attention_max_n=64, connectivity_T=8,
    table1=table1.Config(layers=("self_attention", "lstm", "conv"), n_values=(8, 32),
                         d_fixed=8, d_values=(8, 16), n_fixed=32, path_max_n=0, heads=2,
                         regime=2),
    step_lengths=(16,), step_tokens=256, step_width=16, sharding_T=32, repeats=1)


# ------------------------------------------------------------------------------ sections


def section_running_sum(s: Settings, workdir: str, progress: Progress) -> Row:
  """The seed's four numbers three ways, then sequential depth (and time) against n."""
  demo = running_sum.seed_demo()
  rows, skipped = running_sum.sweep(s.depth_ns, attention_max_n=s.attention_max_n,
                                    repeats=s.repeats, progress=progress)
  running_sum.plot_sweep(rows, os.path.join(workdir, "running_sum.png"))
  return {"seed_demo": demo, "rows": rows, "skipped": skipped, "plots": ["running_sum.png"]}


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
                   log=lambda line: progress(line) if " n=" in line else None)
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
        rows += timing.measure_group(cands, meta, progress=progress, **_group_kw(b))
  from seqscale.studies import overview_report  # pylint: disable=g-import-not-at-top
  overview_report.plot_step_time(rows, os.path.join(workdir, "step_time.png"))
  return {"rows": rows, "plots": ["step_time.png"]}


def _group_kw(b: bench.Settings) -> dict[str, Any]:
  return dict(repeats=b.repeats, min_repeats=b.min_repeats, group_seconds=b.group_seconds,
              memory_limit=b.memory_limit, max_call_s=b.max_call_s)


_CHILD = """
import json, sys
from seqscale.studies import sharding
a = json.loads(sys.argv[1])
rows = [sharding.measure(name, n, sharding.Sizes(**a["sizes"]), repeats=a["repeats"])
        for n in a["counts"] for name in a["strategies"]]
print("ROWS " + json.dumps(rows))
"""


def sharding_rows(counts: Sequence[int], strategies: Sequence[str], sizes: sharding.Sizes,
                  repeats: int = 3) -> list[Row]:
  """``sharding.measure`` rows for each device count in ``counts``.

  Runs here where JAX has enough devices; on a CPU with fewer, in one subprocess with
  ``--xla_force_host_platform_device_count=max(counts)`` (the flag must be set before JAX
  starts). Raises ``ValueError`` on a GPU/TPU with too few devices.
  """
  need = max(counts)
  if jax.device_count() >= need:
    return [sharding.measure(name, n, sizes, repeats=repeats)
            for n in counts for name in strategies]
  if jax.default_backend() != "cpu":
    raise ValueError(f"sharding_devices={need}: only {jax.device_count()} "
                     f"{jax.default_backend()} devices here")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                      + f" --xla_force_host_platform_device_count={need}").strip()
  arg = json.dumps({"counts": list(counts), "strategies": list(strategies),
                    "sizes": dataclasses.asdict(sizes), "repeats": repeats})
  proc = subprocess.run([sys.executable, "-c", _CHILD, arg], env=env, capture_output=True,
                        text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("ROWS ")]
  if proc.returncode or not lines:
    raise RuntimeError(f"the {need}-device sharding subprocess failed (exit "
                       f"{proc.returncode}): {proc.stderr[-2000:]}")
  return [dict(r, forced_cpu_devices=need) for r in json.loads(lines[-1][5:])]


def section_sharding(s: Settings, workdir: str, progress: Progress) -> Row:
  """Attention and the LSTM's carry passing on 1 and ``s.sharding_devices`` devices."""
  counts = (1, s.sharding_devices)
  if jax.device_count() < s.sharding_devices and jax.default_backend() == "cpu":
    progress(f"forcing {s.sharding_devices} CPU host devices in a subprocess "
             f"(XLA_FLAGS=--xla_force_host_platform_device_count={s.sharding_devices})")
  rows = sharding_rows(counts, SHARDING_STRATEGIES, sharding.Sizes(T=s.sharding_T),
                       repeats=s.repeats)
  for r in rows:
    progress(f"{r['strategy']} on {r['devices']} device(s): {r['flops_per_device']:.3g} "
             f"FLOPs/device, critical path {r['critical_path']}, max |err| "
             f"{r['max_abs_err']:.1e}")
  from seqscale.studies import overview_report  # pylint: disable=g-import-not-at-top
  overview_report.plot_sharding(rows, os.path.join(workdir, "sharding.png"))
  return {"rows": rows, "T": s.sharding_T, "plots": ["sharding.png"]}


def section_training(configs: Mapping[str, Any], train_fn: TrainFn, workdir: str,
                     progress: Progress) -> Row:
  """``train_fn(config, workdir/train/<name>)`` for each (model name -> config).

  ``train_fn`` is ``seqscale.train.train_and_evaluate`` (passed in: ``train`` sits above
  ``analysis``); a finished run resumes at its end, so rerunning re-trains nothing.
  """
  rows = []
  for name, config in configs.items():
    start = time.perf_counter()
    results = train_fn(config, os.path.join(workdir, "train", name))
    row = running_sum.training_row(name, config.model.hparams.to_dict(), results)
    rows.append(row)
    progress(f"{name}: accuracy {row['accuracy']:.3f} at T={row['train_length']}, "
             f"{row['accuracy_4x']:.3f} at T={row['length_4x']} "
             f"({time.perf_counter() - start:.0f} s)")
  from seqscale.studies import overview_report  # pylint: disable=g-import-not-at-top
  overview_report.plot_training(rows, os.path.join(workdir, "training.png"))
  return {"rows": rows, "plots": ["training.png"]}


# ------------------------------------------------------------------------------ the run


def run(settings: Settings, workdir: str, *, train_configs: Mapping[str, Any] | None = None,
        train_fn: TrainFn | None = None, context: Mapping[str, Any] | None = None,
        progress: Progress = print) -> Row:
  """Runs the sections, writes ``overview.md``, ``results.json`` and PNGs; returns results.

  Args:
    settings: what to measure.
    workdir: output directory (created).
    train_configs: model name -> trainer config for the ``training`` section (the
      experiment builds them from ``experiments/configs/running_sum.py``); required when
      ``training`` is among the sections.
    train_fn: ``seqscale.train.train_and_evaluate``, required with ``train_configs``.
    context: versions, devices, git commit (``seqscale.train.context.run_context()``).
    progress: called with one line per step of the work.
  """
  from seqscale.studies import overview_report  # pylint: disable=g-import-not-at-top
  settings.check()
  if "training" in settings.sections and not (train_configs and train_fn):
    raise ValueError("the training section needs train_configs (model name -> config) and "
                     "train_fn (seqscale.train.train_and_evaluate)")
  workdir = outputs.prepare_workdir(workdir)
  fns = {"running_sum": section_running_sum, "connectivity": section_connectivity,
         "table1": section_table1,
         "step_time": section_step_time, "sharding": section_sharding,
         "training": lambda s, w, p: section_training(train_configs, train_fn, w, p)}
  start = time.perf_counter()
  results: Row = {"experiment": "overview", "settings": outputs.json_safe(dataclasses.asdict(settings)),
                  "context": dict(context or outputs.run_context()), "sections": {},
                  "seconds": {}}
  names = [n for n in SECTIONS if n in settings.sections]
  for i, name in enumerate(names, 1):
    progress(f"[overview {i}/{len(names)}] {name}: {overview_report.TITLES[name]} ...")
    t0 = time.perf_counter()
    prefix = f"[overview {i}/{len(names)} {name}] "
    results["sections"][name] = fns[name](settings, workdir, lambda l: progress(prefix + l))
    results["seconds"][name] = round(time.perf_counter() - t0, 1)
    progress(f"[overview {i}/{len(names)}] {name} done in {results['seconds'][name]} s "
             f"(elapsed {time.perf_counter() - start:.0f} s)")
  results["seconds"]["total"] = round(time.perf_counter() - start, 1)
  results["load_average_1_5_15min"] = outputs.load_average()
  results["summary"] = overview_report.summary_rows(results)
  if "running_sum" in results["sections"] and "connectivity" in results["sections"]:
    overview_report.plot_story(results["sections"], os.path.join(workdir, "story.png"))
  outputs.write_text(os.path.join(workdir, "overview.md"), overview_report.markdown(results))
  outputs.write_json(os.path.join(workdir, "results.json"), results)
  return results
