"""Speed of seqscale's layers next to the best peers, measured side by side in one run.

``run(settings)`` times, for every registered model (one layer of each family) and for
the attention op, forward and forward+backward steps over lengths T and dtypes, with the
peers in the *same group*: ``torch.nn.LSTM``/``GRU``/``RNN``, ``flax.nnx.RNN`` with Flax's
cells, ``torch.nn.functional.scaled_dot_product_attention``, ``jax.nn.dot_product_attention``,
``flax.nnx.MultiHeadAttention``. Within a group the candidates are compiled first (compile
time apart), then run round-robin, so that a shared, noisy machine slows every candidate
alike; each time is the median of the repetitions.

The machine's practical peak is measured, not assumed: [n, n] matmuls of XLA and torch at
every n of ``matmul_sizes``, float32 and bfloat16 side by side; the best float32 rate of
either library is the peak (``peaks``). ``targets`` measures issue 18's targets, each a
number against its limit with the load average beside it: LSTM and GRU fwd+bwd against
``torch.nn``'s, causal attention against torch's SDPA, and the Transformer LM train step's
MFU against the best matmul of either library timed in the same group.

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
from seqscale.ops import attention as attn_ops
from seqscale.ops import native_attention
from seqscale.studies.bench_peers import DTYPES
from seqscale.studies.bench_peers import attention_candidates
from seqscale.studies.bench_peers import layer_candidates
from seqscale.studies.bench_peers import lm_train_candidates
from seqscale.studies.bench_peers import matmul_candidates
from seqscale.studies.bench_peers import matmul_chain
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
  # [n, n] matmuls of both libraries: the best float32 rate is the machine's practical peak.
  matmul_sizes: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
  targets: bool = True
  quick: bool = False

  def __post_init__(self):
    for name in ("tokens", "width", "head_dim", "repeats", "min_repeats"):
      check_int(name, getattr(self, name), 1)
    if not self.matmul_sizes:
      raise ValueError("matmul_sizes=(); give sizes n >= 1, e.g. 256,1024")
    for n in self.matmul_sizes:
      check_int("matmul_sizes", n, 1)
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
                 matmul_sizes=(256, 512), quick=True)

# Timed runs per candidate in a target's group, whatever ``Settings.repeats`` says: a ratio
# is a median of at least this many alternating runs.
TARGET_REPEATS = 5


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
  """[n, n] @ [n, n] for every n of ``s.matmul_sizes`` and dtype, XLA's and torch's side by
  side; rows carry ``flops_per_s`` and ``matmul_chain`` (products per timed call)."""
  rows = []
  for dtype in s.dtypes:
    for n in s.matmul_sizes:
      group = measure_group(matmul_candidates(n, dtype, rng),
                            _meta("matmul", n, n, n, dtype, "fwd", None), progress=progress,
                            **group_kwargs(s))
      for row in group:
        row["matmul_chain"] = matmul_chain(n)
        row["flops_per_s"] = row["median_s"] and 2.0 * n ** 3 * matmul_chain(n) / row[
            "median_s"]
      rows += group
  return rows


def peaks(rows: Sequence[Row]) -> dict[str, dict[str, Any]]:
  """Per dtype: the best matmul rate of either library (the machine's practical peak: ``n``,
  ``impl``, ``flops_per_s``) and each library's own best (``by_impl``: impl -> (n, rate))."""
  out: dict[str, dict[str, Any]] = {}
  for r in rows:
    if r["layer"] != "matmul" or not r.get("flops_per_s"):
      continue
    d = out.setdefault(r["dtype"], {"flops_per_s": 0.0, "by_impl": {}})
    n_best = d["by_impl"].get(r["impl"])
    if n_best is None or r["flops_per_s"] > n_best[1]:
      d["by_impl"][r["impl"]] = (r["T"], r["flops_per_s"])
    if r["flops_per_s"] > d["flops_per_s"]:
      d.update(flops_per_s=r["flops_per_s"], n=r["T"], impl=r["impl"])
  return out


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
# Each verdict: the ``measured`` number, its ``goal`` (``sense`` "<=" or ">=" ``limit``),
# ``met``, and the load average when it was measured (a ratio under load is still fair: the
# candidates alternate, but the load is part of the record).

# (layer, B, T, D, most ours/torch.nn time) of issue 18; --quick: (B, T, D) reduced.
RNN_TARGETS = (("lstm", 32, 512, 256, 0.9), ("gru", 32, 512, 256, 0.9),
               ("lstm", 1, 8192, 256, 1.0), ("gru", 1, 8192, 256, 1.0))
RNN_TARGETS_QUICK = {(32, 512, 256): (8, 128, 64), (1, 8192, 256): (1, 1024, 64)}
ATTENTION_LENGTHS = (256, 512, 2048, 8192)  # causal attention fwd+bwd at B=4, H=8, K=64
ATTENTION_DENSE_MAX_T = 2048  # longer: the dense peers (T^2 scores) are left out
MFU_TARGET = 0.5


def _by_impl(rows: Sequence[Row]) -> dict[str, Row]:
  return {r["impl"]: r for r in rows}


def _verdict(target: str, measured: float | None, sense: str, limit: float, **fields: Any
             ) -> Row:
  met = None if measured is None else (measured <= limit if sense == "<=" else
                                       measured >= limit)
  return {"target": target, **fields, "measured": measured, "sense": sense, "limit": limit,
          "goal": f"{sense} {limit:g}", "met": met, "loadavg": outputs.load_average()}


def _ratio(target: str, rows: Sequence[Row], ours: str, peer: str, limit: float = 1.0) -> Row:
  """``ours`` time over ``peer`` time in one group; met when <= ``limit``."""
  by = _by_impl(rows)
  a, b = by.get(ours, {}).get("median_s"), by.get(peer, {}).get("median_s")
  ratio = a / b if a and b else None
  r0 = rows[0]
  return _verdict(target, ratio, "<=", limit, ours=ours, peer=peer, T=r0["T"], B=r0["B"],
                  D=r0["D"], dtype=r0["dtype"], ours_s=a, peer_s=b, ratio=ratio)


def _target_kwargs(s: Settings) -> dict[str, Any]:
  n = max(TARGET_REPEATS, s.repeats)
  return dict(group_kwargs(s), repeats=n, min_repeats=n, max_call_s=math.inf)


def rnn_targets(s: Settings, rng: np.random.Generator, progress: Progress | None = None
                ) -> tuple[list[Row], list[Row]]:
  """LSTM and GRU forward+backward against torch.nn's (and our reference scan beside)."""
  rows, verdicts = [], []
  for name, B, T, D, limit in RNN_TARGETS:
    if s.quick:
      B, T, D = RNN_TARGETS_QUICK[(B, T, D)]
    cands, tokens = layer_candidates(name, dataclasses.replace(s, width=D), T, B, "float32",
                                     "fwd_bwd", rng)
    cands = [c for c in cands if not c.impl.startswith("flax")]
    group = measure_group(cands, _meta(f"target_{name}", T, B, D, "float32", "fwd_bwd",
                                       tokens), progress=progress, **_target_kwargs(s))
    rows += group
    verdicts.append(_ratio(f"{name} fwd+bwd / torch.nn.{name.upper()} (B={B}, D=H={D})",
                           group, "seqscale", f"torch_nn_{name}", limit))
  return rows, verdicts


def attention_targets(s: Settings, rng: np.random.Generator,
                      progress: Progress | None = None) -> tuple[list[Row], list[Row]]:
  """Causal self-attention fwd+bwd against torch's sdpa (and jax.nn's where T is short)."""
  rows, verdicts = [], []
  B, H, K = (2, 4, 32) if s.quick else (4, 8, 64)
  for T in ((256, 512) if s.quick else ATTENTION_LENGTHS):
    dense = T <= ATTENTION_DENSE_MAX_T
    cands = [c for c in attention_candidates(s, T, B, H, K, "float32", "fwd_bwd", rng,
                                             reference=dense)
             if dense or not c.impl.startswith("jax_nn")]
    group = measure_group(cands, _meta("target_attention", T, B, H * K, "float32", "fwd_bwd",
                                       B * T), progress=progress, **_target_kwargs(s))
    rows += group
    verdicts.append(_ratio(f"causal attention fwd+bwd / torch sdpa (H={H}, K={K})", group,
                           "seqscale", "torch_sdpa"))
    if dense:
      verdicts.append(_ratio(f"causal attention fwd+bwd / jax.nn.dot_product_attention "
                             f"(H={H}, K={K})", group, "seqscale", "jax_nn_dpa_xla"))
  return rows, verdicts


def _runs_native(T: int, B: int, H: int, K: int) -> bool:
  return attn_ops.choose_impl("auto", num_queries=T, head_dim=K, batch_heads=B * H,
                              causal=True) == "flash_cpu"


def long_attention_target(s: Settings, rng: np.random.Generator,
                          progress: Progress | None = None) -> tuple[list[Row], list[Row]]:
  """Memory-efficient attention at a long T: compiled memory over T, and one run."""
  rows = []
  B, H, K = (1, 4, 32) if s.quick else (1, 8, 64)
  T_long = 4096 if s.quick else 32768
  for T in (T_long // 8, T_long // 4, T_long // 2, T_long):
    for impl in ("seqscale", "seqscale_reference"):
      c = next(c for c in attention_candidates(s, T, B, H, K, "float32", "fwd_bwd", rng)
               if c.impl == impl)
      row = {**_meta("target_long_attention_memory", T, B, H * K, "float32", "fwd_bwd",
                     None), "impl": impl}
      row.pop("tokens")
      row["peak_bytes"] = timing.peak_bytes(jax.jit(c.fn).lower(*c.args).compile())
      if impl == "seqscale" and row["peak_bytes"] is not None and _runs_native(T, B, H, K):
        # The C++ kernel's own buffers are outside XLA's count.
        row["peak_bytes"] += native_attention.scratch_bytes(T, K)
      rows.append(row)
  cands = [c for c in attention_candidates(s, T_long, B, H, K, "float32", "fwd_bwd", rng,
                                           reference=False) if c.impl == "seqscale"]
  # One run (max_call_s=0: the first run is the measurement): it takes tens of seconds.
  group = measure_group(cands, _meta("target_long_attention", T_long, B, H * K, "float32",
                                     "fwd_bwd", B * T_long), progress=progress,
                        **dict(_target_kwargs(s), max_call_s=0.0, memory_limit=math.inf))
  if group[0].get("peak_bytes") is not None and _runs_native(T_long, B, H, K):
    group[0]["peak_bytes"] += native_attention.scratch_bytes(T_long, K)
  rows += group
  ran = group[0]["median_s"] is not None
  verdicts = [_verdict(f"memory-efficient attention fwd+bwd runs at T={T_long}",
                       1.0 if ran else 0.0, ">=", 1, T=T_long, B=B, dtype="float32",
                       ours="seqscale", ours_s=group[0]["median_s"],
                       peak_bytes=group[0]["peak_bytes"])]
  verdicts[0].update(measured="runs" if ran else "fails", goal="runs")
  return rows, verdicts


def lm_target(s: Settings, rng: np.random.Generator, peak: dict[str, Any] | None = None,
              progress: Progress | None = None) -> tuple[list[Row], list[Row]]:
  """Model FLOPs utilisation of a Transformer LM training step against the machine's
  practical peak: the best float32 matmul of either library at any of ``s.matmul_sizes``,
  timed in the same group. ``peak`` (the sweep of ``matmul_rows``) gives a second figure.

  FLOPs: XLA's count of the same step with the reference attention (a static program; the
  blockwise one's loops have data-dependent trip counts), less the masked half of its dense
  causal attention, counted analytically.
  """
  V, D, L, H, T, B = (256, 128, 2, 4, 128, 4) if s.quick else (8192, 512, 6, 8, 512, 8)
  pairs = lm_train_candidates(vocab_size=V, D=D, L=L, H=H, T=T, B=B,
                              impls=("auto", "reference"), rng=rng)
  # Every size of the sweep, both libraries: under load the best size moves from run to run.
  mms = [(n, dataclasses.replace(c, impl=f"{c.impl}_matmul_{n}"))
         for n in s.matmul_sizes for c in matmul_candidates(n, "float32", rng)]
  group = measure_group([c for c, _ in pairs] + [c for _, c in mms], _meta(
      "target_lm_train_step", T, B, D, "float32", "train_step", B * T), progress=progress,
                        **_target_kwargs(s))
  rates = {r["impl"]: 2.0 * n ** 3 * matmul_chain(n) / r["median_s"]
           for (n, _), r in zip(mms, group[len(pairs):]) if r["median_s"]}
  for r in group[len(pairs):]:
    r["flops_per_s"] = rates.get(r["impl"])
  peak_impl = max(rates, key=rates.get) if rates else None
  peak_here = rates.get(peak_impl)
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
  sweep = (peak or {}).get("flops_per_s")
  verdict = _verdict(
      f"transformer_lm train step MFU (d={D}, L={L}, T={T}, B={B}, V={V}) against the best "
      "float32 matmul of XLA and torch", ours.get("mfu"), ">=", MFU_TARGET, T=T, B=B, D=D,
      dtype="float32", ours=ours["impl"], ours_s=ours["median_s"], flops=ours["flops"],
      peak_flops_per_s=peak_here, peak_impl=peak_impl, mfu=ours.get("mfu"),
      matmul_rates=rates,
      mfu_reference_attention=group[1].get("mfu"),
      # Against the sweep's best rate (often a quieter moment on a shared machine): the
      # stricter figure, not the verdict (its runs did not alternate with the step's).
      mfu_vs_sweep_peak=(ours["flops_per_s"] / max(sweep, peak_here)
                         if ours.get("flops_per_s") and sweep and peak_here else None))
  return group, [verdict]


def target_rows(s: Settings, rng: np.random.Generator,
                peak: dict[str, Any] | None = None,
                progress: Progress | None = None) -> tuple[list[Row], list[Row]]:
  """Measures the issue's targets; returns (their measurement rows, the target verdicts).

  ``peak`` is ``peaks(...)["float32"]``. With ``s.quick`` the shapes are reduced (and the
  verdicts say so).
  """
  rows, verdicts = [], []
  for part in (rnn_targets(s, rng, progress), attention_targets(s, rng, progress),
               long_attention_target(s, rng, progress), lm_target(s, rng, peak, progress)):
    rows += part[0]
    verdicts += part[1]
  if s.quick:
    for v in verdicts:
      v["target"] += " (--quick: reduced shapes)"
  return rows, verdicts


# ----------------------------------------------------------------------------- run, save


def measure(s: Settings = Settings(), progress: Progress | None = None) -> dict[str, Any]:
  """Matmul sweep (the practical peak), the grid and (``s.targets``) the targets: one dict
  for ``save``, with each part's wall time in ``section_s``."""
  rng = np.random.default_rng(0)
  notes = []
  if torch_module() is None:
    notes.append("torch is not installed: the PyTorch peers' rows are absent")
  t0 = time.perf_counter()
  load0 = outputs.load_average()
  rows = matmul_rows(s, rng, progress)
  peak = peaks(rows)
  section_s = {"matmul_sweep": time.perf_counter() - t0}
  rows += grid_rows(s, rng, progress)
  section_s["grid"] = time.perf_counter() - t0 - section_s["matmul_sweep"]
  targets, verdicts = ([], [])
  if s.targets:
    targets, verdicts = target_rows(s, rng, peak.get("float32"), progress)
    section_s["targets"] = time.perf_counter() - t0 - sum(section_s.values())
  return {"settings": dataclasses.asdict(s), "rows": rows, "target_rows": targets,
          "targets": verdicts, "peaks": peak,
          "peak_flops_per_s": peak.get("float32", {}).get("flops_per_s"), "notes": notes,
          "wall_s": time.perf_counter() - t0, "section_s": section_s, "loadavg_start": load0,
          "loadavg_end": outputs.load_average()}


def machine() -> dict[str, Any]:
  """The peer's side of the run context: torch's version and threads, where installed."""
  torch = torch_module()
  if torch is None:
    return {"torch": None}
  return {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
          "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def use_all_cores() -> None:
  """The peer at its best: torch's intra-op threads = the machine's cores (torch's default
  counts physical cores only). No-op without torch."""
  torch = torch_module()
  if torch is not None:
    torch.set_num_threads(os.cpu_count() or 1)


def run(settings: Settings, workdir: str, progress: Progress | None = print) -> dict[str, Any]:
  """Measures (``measure``) and writes results.json, results.md and plots to ``workdir``.

  Returns the result, with its ``context`` (versions, CPU, devices) and ``markdown``.
  """
  workdir = outputs.prepare_workdir(workdir)
  result = measure(settings, progress)
  result["context"] = outputs.run_context(config=dataclasses.asdict(settings), **machine())
  result["markdown"] = bench_report.save(workdir, result)
  return result
