"""Speed of seqscale's layers next to the best peers, measured side by side in one run.

``run(settings)`` times, for every registered model (one layer of each family) and for
the attention op, forward and forward+backward steps over lengths T and dtypes, with the
peers in the *same group*: ``torch.nn.LSTM``/``GRU``/``RNN``, ``flax.nnx.RNN`` with Flax's
cells, ``torch.nn.functional.scaled_dot_product_attention``, ``jax.nn.dot_product_attention``,
``flax.nnx.MultiHeadAttention``, and a large matmul for the machine's peak FLOP/s. Within a
group the candidates are compiled first (compile time apart), then run round-robin, so
that a shared, noisy machine slows every candidate alike; each time is the median of the
repetitions. ``targets`` measures the issue's targets (ratios in the same run).

One row per measurement: ``{"layer", "impl", "T", "B", "D", "dtype", "pass", "median_s",
"tokens_per_s", "peak_bytes", "compile_s"}`` (plus ``runs`` and, where a candidate could
not run, ``note``). ``peak_bytes`` is XLA's compiled memory analysis (arguments + outputs
+ temporaries - aliased); PyTorch rows have none. Torch is optional: without it its rows
are absent and ``notes`` says so.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from seqscale import models
from seqscale import outputs
from seqscale.checks import check_int
from seqscale.analysis import cost
from seqscale.analysis import timing
from seqscale.analysis.timing import measure_group
from seqscale.studies.bench_peers import DTYPES
from seqscale.studies.bench_peers import attention_candidates
from seqscale.studies.bench_peers import layer_candidates
from seqscale.studies.bench_peers import lm_train_candidates
from seqscale.studies.bench_peers import matmul_candidates
from seqscale.studies.bench_peers import mha_candidates
from seqscale.studies import bench_report
from seqscale.studies.bench_peers import torch_module

Array = jax.Array
Row = dict[str, Any]
Progress = Callable[[str], None]

PASSES = ("fwd", "fwd_bwd")


@dataclasses.dataclass(frozen=True)
class Settings:
  """What ``run`` measures. B = max(1, tokens // T), so every T sees the same tokens."""
  lengths: tuple[int, ...] = (128, 512, 2048, 8192)
  bf16_lengths: tuple[int, ...] | None = (512, 2048)  # None: ``lengths`` (a shorter run)
  tokens: int = 4096
  width: int = 256  # D
  head_dim: int = 64  # K; H = D // K
  vocab_size: int = 256  # V of the "lm" models
  dtypes: tuple[str, ...] = ("float32", "bfloat16")
  layers: tuple[str, ...] | None = None  # None: every registered model
  repeats: int = 5  # timed runs per candidate (median reported) ...
  min_repeats: int = 3  # ... cut down to this when a group would exceed group_seconds
  group_seconds: float = 10.0
  max_call_s: float = 5.0  # a slower candidate runs once, and not at longer T
  memory_limit: float = 6e9  # bytes; candidates whose compiled peak exceeds it are skipped
  matmul_size: int = 2048
  targets: bool = True
  quick: bool = False

  def __post_init__(self):
    for name in ("tokens", "width", "head_dim", "repeats", "min_repeats", "matmul_size"):
      check_int(name, getattr(self, name), 1)
    if not self.lengths:
      raise ValueError("lengths=(); give lengths T >= 1, e.g. 128,512")
    for t in self.lengths:
      check_int("lengths", t, 1)
    if self.width % self.head_dim:
      raise ValueError(f"width={self.width}: must be divisible by head_dim={self.head_dim}")
    bad = [d for d in self.dtypes if d not in DTYPES]
    if bad or not self.dtypes:
      raise ValueError(f"dtypes={','.join(self.dtypes)}: allowed: {', '.join(DTYPES)}")
    known = set(models.names()) | {"attention", "mha"}
    unknown = sorted(set(self.layers or ()) - known)
    if unknown:
      raise ValueError(f"layers={','.join(unknown)}: unknown; allowed: "
                       f"{', '.join(sorted(known))}")


QUICK = Settings(lengths=(128,), bf16_lengths=None, tokens=512, width=64, head_dim=32,
                 dtypes=("float32",), repeats=3, group_seconds=2.0, max_call_s=1.0,
                 matmul_size=512, quick=True)


# ----------------------------------------------------------------------------- builders


# ----------------------------------------------------------------------------- the grid


def _meta(layer: str, T: int, B: int, D: int, dtype: str, pass_: str, tokens: int | None
          ) -> Row:
  return {"layer": layer, "T": T, "B": B, "D": D, "dtype": dtype, "pass": pass_,
          "tokens": tokens}


def group_kwargs(s: Settings) -> dict[str, Any]:
  """``s``'s keywords of ``timing.measure_group``."""
  return dict(repeats=s.repeats, min_repeats=s.min_repeats, group_seconds=s.group_seconds,
              memory_limit=s.memory_limit, max_call_s=s.max_call_s)


def _failed(meta: Row, impl: str, e: Exception | None) -> Row:
  row = {k: v for k, v in meta.items() if k != "tokens"}
  row.update(impl=impl, median_s=None, tokens_per_s=None, peak_bytes=None, compile_s=None)
  if e is not None:
    row["note"] = f"failed to build: {type(e).__name__}: {' '.join(str(e).split())[:160]}"
  return row


def matmul_rows(s: Settings, rng: np.random.Generator,
                progress: Progress | None = None) -> list[Row]:
  """The large matmul in each dtype; rows carry ``flops_per_s``."""
  n, rows = s.matmul_size, []
  for dtype in s.dtypes:
    group = measure_group(matmul_candidates(n, dtype, rng),
                          _meta("matmul", n, n, n, dtype, "fwd", None), progress=progress,
                          **group_kwargs(s))
    for row in group:
      row["flops_per_s"] = row["median_s"] and 2.0 * n ** 3 / row["median_s"]
    rows += group
  return rows


def grid_layers(s: Settings) -> list[str]:
  """Registered models (or ``s.layers``), then the ops-level "attention" and "mha"."""
  return list(s.layers) if s.layers is not None else [*models.names(), "attention", "mha"]


def probe(name: str, s: Settings, rng: np.random.Generator) -> float | None:
  """Seconds per token of one float32 forward step of ``name`` at B=1 and the shortest T
  (None if it cannot run): a guard against models too slow to measure at full size."""
  T = min(s.lengths)
  try:
    cand = layer_candidates(name, s, T, 1, "float32", "fwd", rng, peers=False)[0][0]
    compiled = jax.jit(cand.fn).lower(*cand.args).compile()
    jax.block_until_ready(compiled(*cand.args))
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*cand.args))
    return (time.perf_counter() - t0) / T
  except Exception:  # pylint: disable=broad-except  # the grid reports the failure itself
    return None


def grid_lengths(s: Settings, dtype: str) -> tuple[int, ...]:
  if dtype == "bfloat16" and s.bf16_lengths is not None:
    return tuple(t for t in s.lengths if t in s.bf16_lengths) or s.lengths
  return s.lengths


def grid_rows(s: Settings, rng: np.random.Generator,
              progress: Progress | None = None) -> list[Row]:
  """Every layer x dtype x T x pass, each group with its peers.

  A candidate slower than ``s.max_call_s`` at some T is not run at longer T (its row
  says so): the bench's run time stays bounded whatever a model costs.
  """
  rows = []
  H = max(1, s.width // s.head_dim)
  slow: dict[tuple[str, str, str, str], tuple[int, float]] = {}
  for name in grid_layers(s):
    per_token = None if name in ("attention", "mha") else probe(name, s, rng)
    for dtype in s.dtypes:
      for T in grid_lengths(s, dtype):
        B = max(1, s.tokens // T)
        for pass_ in PASSES:
          meta = _meta(name, T, B, s.width, dtype, pass_, B * T)
          guess = per_token and per_token * B * T * (3 if pass_ == "fwd_bwd" else 1)
          if guess and guess > 3 * s.max_call_s:
            rows.append(_failed(meta, "seqscale", None))
            rows[-1]["note"] = (f"skipped: a B=1 forward predicts ~{guess:.0f} s per step "
                                "> 3 x max_call_s")
            continue
          try:
            if name == "attention":
              cands = attention_candidates(s, T, B, H, s.head_dim, dtype, pass_, rng)
            elif name == "mha":
              cands = mha_candidates(s, T, B, dtype, pass_, rng)
            else:
              cands, meta["tokens"] = layer_candidates(name, s, T, B, dtype, pass_, rng)
          except Exception as e:  # pylint: disable=broad-except  # keep the other layers
            rows.append(_failed(meta, "seqscale", e))
            if progress is not None:
              progress(f"{name} {dtype} {pass_} T={T}: {rows[-1]['note']}")
            continue
          keep = []
          for c in cands:
            if (name, dtype, pass_, c.impl) in slow:
              t_at, secs = slow[(name, dtype, pass_, c.impl)]
              row = _failed(meta, c.impl, None)
              row["note"] = f"skipped: {secs:.1f} s per step at T={t_at} > max_call_s"
              rows.append(row)
            else:
              keep.append(c)
          group = measure_group(keep, meta, progress=progress, **group_kwargs(s))
          for row in group:
            if row["median_s"] and row["median_s"] > s.max_call_s:
              slow[(name, dtype, pass_, row["impl"])] = (T, row["median_s"])
          rows += group
  return rows


# ----------------------------------------------------------------------------- targets


def _by_impl(rows: Sequence[Row]) -> dict[str, Row]:
  return {r["impl"]: r for r in rows}


def _ratio(target: str, rows: Sequence[Row], ours: str, peer: str, limit: float = 1.0) -> Row:
  """``ours`` time over ``peer`` time in one group; met when <= ``limit``."""
  by = _by_impl(rows)
  a, b = by.get(ours, {}).get("median_s"), by.get(peer, {}).get("median_s")
  ratio = a / b if a and b else None
  r0 = rows[0]
  return {"target": target, "ours": ours, "peer": peer, "T": r0["T"], "B": r0["B"],
          "dtype": r0["dtype"], "ours_s": a, "peer_s": b, "ratio": ratio,
          "met": None if ratio is None else ratio <= limit}


def target_rows(s: Settings, rng: np.random.Generator, peak_flops: float | None = None,
                progress: Progress | None = None) -> tuple[list[Row], list[Row]]:
  """Measures the issue's targets; returns (their measurement rows, the target verdicts).

  With ``s.quick`` the shapes are reduced (and the verdicts say so).
  """
  q = s.quick
  rows, verdicts = [], []
  kw = dict(group_kwargs(s), max_call_s=math.inf)
  # 1. lstm / gru forward+backward against torch.nn's.
  B, T, D = (8, 128, 64) if q else (32, 512, 256)
  rs = dataclasses.replace(s, width=D)
  for name in ("lstm", "gru"):
    cands, tokens = layer_candidates(name, rs, T, B, "float32", "fwd_bwd", rng)
    group = measure_group(cands, _meta(f"target_{name}", T, B, D, "float32", "fwd_bwd",
                                       tokens), progress=progress, **kw)
    rows += group
    verdicts.append(_ratio(f"{name} fwd+bwd <= torch.nn.{name.upper()}", group, "seqscale",
                           f"torch_nn_{name}"))
  # 2. causal self-attention against torch's sdpa and jax.nn's.
  B, H, K = (2, 4, 32) if q else (4, 8, 64)
  for T in ((256, 512) if q else (512, 2048)):
    cands = attention_candidates(s, T, B, H, K, "float32", "fwd_bwd", rng)
    group = measure_group(cands, _meta("target_attention", T, B, H * K, "float32", "fwd_bwd",
                                       B * T), progress=progress, **kw)
    rows += group
    verdicts.append(_ratio("causal attention fwd+bwd <= torch sdpa", group, "seqscale",
                           "torch_sdpa"))
    verdicts.append(_ratio("causal attention fwd+bwd <= jax.nn.dot_product_attention",
                           group, "seqscale", "jax_nn_dpa_xla"))
  # 3. memory-efficient attention at a long T: compiled memory over T, and one run.
  B, H, K = (1, 4, 32) if q else (1, 8, 64)
  T_long = 4096 if q else 32768
  for T in (T_long // 8, T_long // 4, T_long // 2, T_long):
    for impl in ("seqscale", "seqscale_reference"):
      c = next(c for c in attention_candidates(s, T, B, H, K, "float32", "fwd_bwd", rng)
               if c.impl == impl)
      row = {**_meta("target_long_attention_memory", T, B, H * K, "float32", "fwd_bwd",
                     None), "impl": impl}
      row.pop("tokens")
      row["peak_bytes"] = timing.peak_bytes(jax.jit(c.fn).lower(*c.args).compile())
      rows.append(row)
  cands = [c for c in attention_candidates(s, T_long, B, H, K, "float32", "fwd_bwd", rng,
                                           reference=False) if c.impl == "seqscale"]
  # One run (max_call_s=0: the first run is the measurement): it takes tens of seconds.
  group = measure_group(cands, _meta("target_long_attention", T_long, B, H * K, "float32",
                                     "fwd_bwd", B * T_long), progress=progress,
                        **dict(kw, max_call_s=0.0, memory_limit=math.inf))
  rows += group
  verdicts.append({"target": f"memory-efficient attention fwd+bwd runs at T={T_long}",
                   "T": T_long, "B": B, "dtype": "float32", "ours": "seqscale",
                   "ours_s": group[0]["median_s"], "peak_bytes": group[0]["peak_bytes"],
                   "met": group[0]["median_s"] is not None})
  # 4. model FLOPs utilisation of a Transformer LM training step, next to large matmuls
  # (the peak) in the same group. FLOPs: XLA's count of the same step with the reference
  # attention (a static program; the blockwise one's loops have data-dependent trip
  # counts), less the masked half of its dense causal attention, counted analytically.
  V, D, L, H, T, B = (256, 128, 2, 4, 128, 4) if q else (8192, 512, 6, 8, 512, 8)
  pairs = lm_train_candidates(vocab_size=V, D=D, L=L, H=H, T=T, B=B,
                              impls=("auto", "reference"), rng=rng)
  sizes = (s.matmul_size,) if q else (2048, 4096)
  mms = [dataclasses.replace(matmul_candidates(n, "float32", rng)[0], impl=f"matmul_{n}")
         for n in sizes]
  group = measure_group([c for c, _ in pairs] + mms, _meta(
      "target_lm_train_step", T, B, D, "float32", "train_step", B * T), progress=progress,
                        **kw)
  rows += group
  rates = [2.0 * n ** 3 / r["median_s"] for n, r in zip(sizes, group[len(pairs):])
           if r["median_s"]]
  peak_here = max(rates) if rates else peak_flops
  dense = cost.flops(pairs[1][1], *pairs[1][0].args)
  # Reference attention: 6 [T, T] matmuls per layer (QK^T, PV forward; dV, dP, dQ, dK
  # backward), each 2 B T^2 D FLOPs; the masked upper triangle is (T - 1) / (2 T) of them.
  masked = 6 * 2.0 * B * T * T * D * L * (T - 1) / (2 * T)
  for row in group[:len(pairs)]:
    row.update(flops_dense=dense, flops=dense - masked, peak_flops_per_s=peak_here)
    if row["median_s"] and peak_here:
      row["flops_per_s"] = row["flops"] / row["median_s"]
      row["mfu"] = row["flops_per_s"] / peak_here
  ours = group[0]
  verdicts.append({"target": f"transformer_lm (d={D}, L={L}, T={T}, B={B}, V={V}) train "
                             "step MFU >= 0.5 of measured matmul peak",
                   "T": T, "B": B, "dtype": "float32", "ours": ours["impl"],
                   "ours_s": ours["median_s"], "flops": ours["flops"],
                   "peak_flops_per_s": peak_here, "mfu": ours.get("mfu"),
                   "mfu_reference_attention": group[1].get("mfu"),
                   # Against the best matmul rate of the whole run (often a quieter moment
                   # on a shared machine): the stricter figure.
                   "mfu_vs_run_peak": (ours["flops_per_s"] / max(peak_flops, peak_here)
                                       if ours.get("flops_per_s") and peak_flops else None),
                   "met": None if ours.get("mfu") is None else ours["mfu"] >= 0.5})
  if q:
    for v in verdicts:
      v["target"] += " (--quick: reduced shapes)"
  return rows, verdicts


# ----------------------------------------------------------------------------- run, save


def measure(s: Settings = Settings(), progress: Progress | None = None) -> dict[str, Any]:
  """Matmul peak, the grid and (``s.targets``) the targets: one dict for ``save``."""
  rng = np.random.default_rng(0)
  notes = []
  if torch_module() is None:
    notes.append("torch is not installed: the PyTorch peers' rows are absent")
  t0 = time.perf_counter()
  load0 = outputs.load_average()
  rows = matmul_rows(s, rng, progress)
  f32 = [r["flops_per_s"] for r in rows
         if r["impl"] == "jax" and r["dtype"] == "float32" and r.get("flops_per_s")]
  peak = max(f32) if f32 else None
  rows += grid_rows(s, rng, progress)
  targets, verdicts = ([], [])
  if s.targets:
    targets, verdicts = target_rows(s, rng, peak, progress)
  return {"settings": dataclasses.asdict(s), "rows": rows, "target_rows": targets,
          "targets": verdicts, "peak_flops_per_s": peak, "notes": notes,
          "wall_s": time.perf_counter() - t0, "loadavg_start": load0,
          "loadavg_end": outputs.load_average()}


def machine() -> dict[str, Any]:
  """The peer's side of the run context: torch's version and threads, where installed."""
  torch = torch_module()
  if torch is None:
    return {"torch": None}
  return {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
          "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def run(settings: Settings, workdir: str, progress: Progress | None = print) -> dict[str, Any]:
  """Measures (``measure``) and writes results.json, results.md and plots to ``workdir``.

  Returns the result, with its ``context`` (versions, CPU, devices) and ``markdown``.
  """
  workdir = outputs.prepare_workdir(workdir)
  result = measure(settings, progress)
  result["context"] = outputs.run_context(config=dataclasses.asdict(settings), **machine())
  result["markdown"] = bench_report.save(workdir, result)
  return result
