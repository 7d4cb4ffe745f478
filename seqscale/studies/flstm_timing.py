"""F-LSTM and G-LSTM against the LSTM at the same width: FLOPs, time, and the serial chain.

Kuchaiev & Ginsburg (2017) make each LSTM step cheaper (fewer parameters and FLOPs in the
gate matmul) but not the recurrence shorter: step t still needs h_{t-1}. ``compare``
measures both sides for one layer on ``[B, T, I]`` inputs, the three cells run by the same
scan driver (``ops.recurrent.scan``; the ``lstm`` model's own faster implementation is not
what is compared here):

- ``params``; ``flops_per_step``: XLA's FLOPs of the whole forward pass (loops times their
  trip counts) over T; ``serial_flops_per_step``: the jaxpr count of one cell step, the work
  inside the chain (the input projection is outside it, parallel over T);
- ``run_ms``/``ms_per_step``: measured forward time (compile excluded; median of
  ``repeats`` runs taken round-robin over the models, so load bursts hit all alike);
- ``scan_steps``: the length of the program's ``scan`` (T for all three);
  ``xla_loop_trips``: the compiled loop's trip count (XLA may unroll a loop, e.g. T/4 trips
  of 4 steps: the same chain); ``sequential_depth``: the longest chain of dependent
  primitives of the forward pass (``seqscale.analysis.sequential_depth``);
  ``depth_per_step``: its growth per time step; ``step_depth``: the depth of one cell step.

The parameters go in as arguments, not closed-over constants, so the compiler cannot fold
them (e.g. multiply an F-LSTM's factors back together). ``run(settings, workdir)`` compares
and writes ``results.json``, ``results.md`` and ``flstm_timing.png``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seqscale import models
from seqscale import outputs
from seqscale.analysis import cost
from seqscale.analysis import depth
from seqscale.analysis import timing
from seqscale.checks import check_int
from seqscale.models import factorized_lstm as fl
from seqscale.ops import recurrent as rec_ops


@dataclasses.dataclass(frozen=True)
class Settings:
  """What ``run`` compares. Defaults: about 40 s on 2 CPU cores."""
  width: int = 512  # hidden width D of every model
  in_features: int | None = None  # input width I; None: width
  rank: int | None = None  # F-LSTM rank r; None: width // 4
  num_groups: int = 4  # G-LSTM groups G
  batch_size: int = 32  # B
  lengths: tuple[int, ...] = (64, 128)  # T
  repeats: int = 20  # timed runs per model (median, round-robin)

  def __post_init__(self):
    for name in ("width", "num_groups", "batch_size", "repeats"):
      check_int(name, getattr(self, name), 1)
    for name in ("in_features", "rank"):
      if getattr(self, name) is not None:
        check_int(name, getattr(self, name), 1)
    if not self.lengths:
      raise ValueError("lengths=(); give lengths T >= 1, e.g. 64,128")
    for t in self.lengths:
      check_int("lengths", t, 1)


def _variants(width: int, in_features: int, rank: int, num_groups: int
              ) -> list[tuple[str, Any, Any, dict[str, Any]]]:
  """(label, layer(x, p) -> (y, carry), cell(p, carry, xw), params) for the three cells.

  All three run through the same driver (``ops.recurrent.scan`` of the input projection
  computed up front), so they differ only in their gate matmuls.
  """
  kw = dict(in_features=in_features, hidden_features=width, rngs=nnx.Rngs(0))
  lstm = models.create("lstm", **kw).layers[0].fwd.params(jnp.float32)
  flstm = models.create("flstm", rank=rank, **kw).layers[0].params(jnp.float32)
  glstm = models.create("glstm", num_groups=num_groups, **kw).layers[0].params(jnp.float32)
  return [("lstm", rec_ops.lstm, rec_ops.lstm_cell, lstm),
          (f"flstm r={rank}", fl.flstm, fl.flstm_cell, flstm),
          (f"glstm G={num_groups}", fl.glstm, fl.glstm_cell, glstm)]


def _step_args(cell: Any, p: dict[str, Any], batch_size: int, width: int,
               in_features: int) -> tuple[Any, Any]:
  """One step's carry and pre-projected input, in the cell's own layout."""
  carry = rec_ops.zero_carry("lstm", batch_size, width)
  xw = (fl.glstm_project(jnp.zeros((batch_size, in_features)), p) if cell is fl.glstm_cell
        else jnp.zeros((batch_size, 4 * width)))
  return carry, xw


def compare(width: int = 512, in_features: int | None = None, rank: int | None = None,
            num_groups: int = 4, batch_size: int = 32, lengths: Sequence[int] = (128,),
            repeats: int = 5) -> list[dict[str, Any]]:
  """One row per (model, length): the measurements listed in the module docstring.

  ``in_features`` defaults to ``width``, ``rank`` to ``width // 4``.
  """
  in_features = width if in_features is None else in_features
  rank = max(1, width // 4) if rank is None else rank
  for name, value in (("width", width), ("in_features", in_features), ("rank", rank),
                      ("num_groups", num_groups), ("batch_size", batch_size),
                      ("repeats", repeats)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name}={value!r}; must be an int >= 1")
  if not lengths or any(not isinstance(t, int) or t < 1 for t in lengths):
    raise ValueError(f"lengths={lengths!r}; must be a non-empty sequence of ints >= 1")
  rows, runs = [], []
  for label, layer, cell, p in _variants(width, in_features, rank, num_groups):
    forward = lambda p, x, layer=layer: layer(x, p)[0]
    carry, xw = _step_args(cell, p, batch_size, width, in_features)
    serial = cost.jaxpr_flops(lambda p, c, xw, cell=cell: cell(p, c, xw), p, carry, xw)
    step_depth = depth.sequential_depth(lambda c, xw, p=p, cell=cell: cell(p, c, xw)[0],
                                        carry, xw)
    params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(p))
    for T in lengths:
      x = jax.random.normal(jax.random.key(1), (batch_size, T, in_features), jnp.float32)
      times = timing.time_fn(forward, p, x, repeats=1)
      runs.append(functools.partial(jax.jit(forward), p, x))
      rows.append({
          "model": label, "width": width, "in_features": in_features, "batch_size": batch_size,
          "length": T, "params": params,
          "flops_per_step": cost.flops(forward, p, x) / T,
          "serial_flops_per_step": serial,
          "compile_s": times.compile_s,
          "scan_steps": max(depth.scan_lengths(forward, p, x), default=0),
          "xla_loop_trips": max(depth.loop_trip_counts(forward, p, x), default=0),
          "sequential_depth": depth.sequential_depth(forward, p, x),
          "step_depth": step_depth,
      })
  # Timed round-robin, so a burst of load on a shared machine hits every model alike.
  times = [[] for _ in runs]
  for _ in range(repeats):
    for i, fn in enumerate(runs):
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[i].append(time.perf_counter() - start)
  for r, t in zip(rows, times):
    r["run_ms"] = statistics.median(t) * 1e3
    r["ms_per_step"] = r["run_ms"] / r["length"]
  for r in rows:  # the chain's growth per step, from the longest and shortest lengths
    same = [q for q in rows if q["model"] == r["model"]]
    lo, hi = min(same, key=lambda q: q["length"]), max(same, key=lambda q: q["length"])
    r["depth_per_step"] = ((hi["sequential_depth"] - lo["sequential_depth"])
                           / (hi["length"] - lo["length"]) if hi is not lo else None)
  return rows


def markdown(rows: list[dict[str, Any]]) -> str:
  """The comparison as a markdown table, ratios against the LSTM at the same length."""
  base = {r["length"]: r for r in rows if r["model"] == "lstm"}
  lines = ["| model | T | params | FLOPs/step (fwd) | serial FLOPs/step | time/step (ms, "
           "compile excl.) | vs lstm (FLOPs / time) | scan steps (XLA loop trips) | "
           "sequential depth |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    b = base[r["length"]]
    flops, time = (r[k] / b[k] for k in ("flops_per_step", "ms_per_step"))
    lines.append(
        f"| {r['model']} | {r['length']} | {r['params']:,} | {r['flops_per_step']:,.0f} | "
        f"{r['serial_flops_per_step']:,.0f} | {r['ms_per_step']:.4f} | {flops:.2f} / "
        f"{time:.2f} | {r['scan_steps']} ({r['xla_loop_trips']}) | {r['sequential_depth']:,} |")
  return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: str) -> None:
  """Bars of FLOPs per step, time per step and sequential depth at the longest length (PNG)."""
  plt = outputs.pyplot()
  T = max(r["length"] for r in rows)
  last = [r for r in rows if r["length"] == T]
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
  for ax, key, label in zip(axes, ("flops_per_step", "ms_per_step", "sequential_depth"),
                            ("FLOPs per step (forward)", "ms per step (compile excluded)",
                             f"sequential depth at T = {T}")):
    ax.bar([r["model"] for r in last], [r[key] for r in last],
           color=["tab:gray", "tab:blue", "tab:orange"][:len(last)])
    ax.set_title(label)
  fig.suptitle(f"width {last[0]['width']}, batch {last[0]['batch_size']}: cheaper steps, "
               "same serial chain")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(rows: list[dict[str, Any]], workdir: str, context: dict[str, Any]) -> str:
  """Writes results.json (rows and ``context``), results.md and flstm_timing.png to
  ``workdir``; returns the markdown table."""
  workdir = outputs.prepare_workdir(workdir)
  table = markdown(rows)
  outputs.write_text(os.path.join(workdir, "results.md"), table)
  outputs.write_json(os.path.join(workdir, "results.json"), {"rows": rows, "context": context})
  plot(rows, os.path.join(workdir, "flstm_timing.png"))
  return table


def run(settings: Settings, workdir: str,
        progress: Callable[[str], None] | None = print) -> dict[str, Any]:
  """``compare`` with ``settings``, then ``write``; returns ``{"markdown", "rows",
  "context"}``."""
  workdir = outputs.prepare_workdir(workdir)
  recorded = dataclasses.asdict(settings)
  rows = compare(**{k: (list(v) if k == "lengths" else v) for k, v in recorded.items()})
  context = outputs.run_context(settings=recorded, dtype="float32")
  md = write(rows, workdir, context)
  if progress is not None:
    progress(f"wrote {workdir}/results.json, results.md and flstm_timing.png")
  return {"markdown": md, "rows": rows, "context": context}
