"""The sharding experiment: attention shards over devices, a nonlinear scan cannot, a linear
scan can. ``run(settings, workdir)`` measures every strategy at every device count and
writes ``results.json``, ``results.md`` and the plots. On a CPU each device count runs in a
subprocess with that many forced host devices (``--xla_force_host_platform_device_count``
must be set before JAX starts), as ``processes`` ``jax.distributed`` processes on 127.0.0.1
when asked (``subprocess_rows``).

For each strategy and device count N (mesh ``('data', 'seq') = (1, N)``, T split N ways):

- ``max_abs_err``: against the one-device (unsharded) function in the same process.
- ``flops_per_device``: for ``shard_map`` programs, ``cost.jaxpr_flops`` of the program,
  which counts the ``shard_map`` body once at its per-device shapes with every loop times
  its trip count (XLA's CPU count would see each ``while`` body once); for the compiler's
  sharding, XLA's count of the partitioned (per-device) module, which has no loop.
- ``received_bytes``: per device, what arrives: all-gather result less operand, the operand
  of the other collectives (an all-gather's operand is only the device's own block).
- ``collective_bytes``: per device, the operand bytes of every all-gather, all-reduce,
  reduce-scatter, collective-permute and all-to-all in the compiled HLO, times the trip
  counts of the ``while`` loops around it (``collective_bytes_in_hlo``).
- ``critical_path``: ``depth.sequential_depth`` of the whole jitted program, which follows
  the ``shard_map`` body (per-device shapes) and multiplies loop bodies by trip counts. The
  rule: devices run the body in lockstep, so the longest dependent chain across the mesh
  is the body's depth, in which a loop of R serial rounds (the carry hand-offs, the ring
  rounds) counts R times the depth of one round; collectives count 0 steps (data
  movement), so the path counts compute steps only. Carry passing: (N-1 rounds + 1) x
  (T/N scan steps x depth of a cell) = depth of the whole sequence, whatever N. Sharded
  linear scan: T/N scan steps + ~2 log2 N (associative scan over N summaries) + 1.
  LSTM wavefront (L = N layers, M time chunks): (M + L - 1) ticks x T/M steps, about
  T + (L-1) T/M steps where the one-device stack takes L x T.
- ``run_s``, ``compile_s``: ``timing.time_fn`` (median run; compile apart).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seqscale import outputs
from seqscale.analysis import cost
from seqscale.analysis import depth
from seqscale.analysis import timing as timing_lib
from seqscale.checks import check_int
from seqscale.ops import attention as attention_ops
from seqscale.ops import linear_recurrence as lr
from seqscale.ops import recurrent
from seqscale.parallel import mesh as mesh_lib
from seqscale.parallel import sequence
from seqscale.parallel import sequence_scan

STRATEGIES = ("attention_compiler", "attention_ring", "attention_ring_zigzag",
              "lstm_carry_passing", "lstm_wavefront", "linear_scan_sharded")
WAVEFRONT_CHUNKS = 8  # M time chunks of the layer pipeline
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute",
               "all-to-all")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_DEF_RE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\([^=]*?\)|\w+\[[\d,]*\])")
_ARRAY_RE = re.compile(r"(\w+)\[([\d,]*)\]")
_COLL_RE = re.compile(r"\b(" + "|".join(COLLECTIVES) + r")(-start)?\(([^)]*)\)")


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Problem sizes: batch, length (a multiple of 2N for every N measured), heads, head dim,
  LSTM input and state widths, linear-scan width."""
  B: int = 2
  T: int = 256
  H: int = 2
  K: int = 16
  I: int = 16
  D: int = 32


@dataclasses.dataclass(frozen=True)
class Settings:
  """What ``run`` measures. Defaults: about 45 s on 2 shared CPU cores."""
  devices: tuple[int, ...] = (1, 2, 4, 8)  # N, devices on the seq axis
  seq_len: int = 256  # T: a multiple of 2N for every N
  repeats: int = 5  # timed runs per measurement (median)
  processes: int = 1  # CPU only: jax.distributed processes per N (N / processes devices each)

  def __post_init__(self):
    check_int("seq_len", self.seq_len, 2)
    check_int("repeats", self.repeats, 1)
    check_int("processes", self.processes, 1)
    if not self.devices:
      raise ValueError("devices=(); give device counts >= 1, e.g. 1,2,4,8")
    for n in self.devices:
      check_int("devices", n, 1)
    if any(self.seq_len % (2 * n) for n in self.devices):
      raise ValueError(f"seq_len={self.seq_len}: must be a multiple of 2N for every N in "
                       f"devices={list(self.devices)}")
    if any(n % self.processes for n in self.devices):
      raise ValueError(f"processes={self.processes}: must divide every N in "
                       f"devices={list(self.devices)}")


def _array_bytes(type_text: str) -> int:
  total = 0
  for dtype, dims in _ARRAY_RE.findall(type_text):
    n = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
    total += n * _BYTES.get(dtype, 4)
  return total


def _computations(hlo_text: str) -> dict[str, str]:
  comps = {}
  for block in re.split(r"\n(?=\S)", hlo_text):
    m = re.match(r"(ENTRY\s+)?%?([\w.\-]+)", block)
    if m:
      comps["ENTRY" if m.group(1) else m.group(2)] = block
  return comps


def collective_bytes_in_hlo(hlo_text: str) -> dict[str, int]:
  """Per collective kind, operand bytes per device in compiled HLO text, loops unrolled.

  Keys: the collective kinds found, plus ``"all-gather received"`` (result less operand
  bytes: what each device receives; for the others the operand is what moves). Each
  computation's multiplier is its caller's, times the trip count where it is a
  ``while`` body (``cost.trip_counts_in_hlo`` rules); async ``-start``/``-done`` pairs
  count once.
  """
  comps = _computations(hlo_text)
  shapes: dict[str, str] = {}
  for line in hlo_text.splitlines():
    if (m := _DEF_RE.match(line)) is not None:
      shapes[m.group(1)] = m.group(2)
  mult: dict[str, int] = {}

  def visit(name: str, factor: int) -> None:
    if name not in comps or mult.get(name, 0) >= factor:
      return
    mult[name] = factor
    for line in comps[name].splitlines()[1:]:
      trips = 1
      if re.search(r"\bwhile\(", line):
        counts = cost.trip_counts_in_hlo(line + "\n" + "\n".join(
            comps.get(c, "") for c in re.findall(r"condition=%?([\w.\-]+)", line)))
        trips = counts[0] if counts else 1
      for key, callee in re.findall(r"(body|condition|to_apply|calls|branch_computations)="
                                    r"\{?%?([\w.\-]+)", line):
        visit(callee, factor * (trips if key == "body" else 1))
      for callee in re.findall(r"branch_computations=\{([^}]*)\}", line):
        for c in re.findall(r"%?([\w.\-]+)", callee):
          visit(c, factor)

  visit("ENTRY", 1)
  totals: dict[str, int] = collections.defaultdict(int)
  for name, factor in mult.items():
    for line in comps[name].splitlines()[1:]:
      for kind, _, operands in _COLL_RE.findall(line):
        size = sum(_array_bytes(shapes.get(op.strip().lstrip("%"), ""))
                   for op in operands.split(",") if op.strip())
        totals[kind] += factor * size
        if kind == "all-gather" and (m := _DEF_RE.match(line)) is not None:
          # What a device receives: the gathered result less its own operand.
          totals["all-gather received"] += factor * (_array_bytes(m.group(2)) - size)
  return dict(totals)


def _randn(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> jax.Array:
  return jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)


_Fn = Callable[..., Any]


def build(strategy: str, mesh: Any, sizes: Sizes, seed: int = 0
          ) -> tuple[_Fn, tuple[Any, ...], tuple[_Fn, tuple[Any, ...]],
                     Callable[[Any], np.ndarray], str]:
  """(jitted program, its arguments, (one-device function, its arguments), output -> array
  to compare, FLOP source "jaxpr"/"xla") for ``strategy`` on ``mesh``."""
  rng = np.random.default_rng(seed)
  s = sizes
  N = mesh.shape["seq"]
  if strategy.startswith("attention"):
    q, k, v = (_randn(rng, s.B, s.T, s.H, s.K) for _ in range(3))
    ref = (_causal_attention, (q, k, v))
    if strategy == "attention_compiler":
      return (sequence.compiler_attention(mesh, causal=True), (q, k, v), ref, np.asarray,
              "xla")
    layout = "zigzag" if strategy == "attention_ring_zigzag" else "contiguous"
    order = sequence.layout_order(s.T, N, layout)
    inv = np.argsort(order)
    f = sequence.ring_attention_sharded(mesh, causal=True, skip_masked=layout == "zigzag"
                                        and N > 1)
    args = (q[:, order], k[:, order], v[:, order], jnp.asarray(order))
    return f, args, ref, lambda out: np.asarray(out)[:, inv], "jaxpr"
  if strategy == "lstm_carry_passing":
    G = 4
    x = _randn(rng, s.B, s.T, s.I)
    params = {"w_ih": _randn(rng, s.I, G * s.D, scale=0.3),
              "w_hh": _randn(rng, s.D, G * s.D, scale=0.3),
              "b_ih": _randn(rng, G * s.D, scale=0.1), "b_hh": _randn(rng, G * s.D, scale=0.1)}
    ref = (lambda x, p: recurrent.run("lstm", x, p)[0], (x, params))
    return (sequence_scan.sharded_carry_fn(mesh, "lstm"), (x, params), ref,
            lambda out: np.asarray(out[0]), "jaxpr")
  if strategy == "lstm_wavefront":
    # L = N layers of width D, one per device: the problem grows with N (the reference is
    # the same N layers run one after the other on one device).
    G = 4
    x = _randn(rng, s.B, s.T, s.D)
    params = {"w_ih": _randn(rng, N, s.D, G * s.D, scale=0.3),
              "w_hh": _randn(rng, N, s.D, G * s.D, scale=0.3),
              "b_ih": _randn(rng, N, G * s.D, scale=0.1),
              "b_hh": _randn(rng, N, G * s.D, scale=0.1)}

    def stack(x, p):
      for layer in range(N):
        x = recurrent.run("lstm", x, {name: w[layer] for name, w in p.items()})[0]
      return x

    ref = (stack, (x, params))
    return (sequence_scan.sharded_wavefront_fn(mesh, "lstm", WAVEFRONT_CHUNKS), (x, params),
            ref, lambda out: np.asarray(out[-1]), "jaxpr")
  if strategy == "linear_scan_sharded":
    a = jnp.asarray(rng.uniform(0.5, 1.0, size=(s.B, s.T, s.D)), jnp.float32)
    b = _randn(rng, s.B, s.T, s.D)
    ref = (lambda a, b: lr.linear_recurrence(a, b)[0], (a, b))
    return (sequence_scan.sharded_linear_fn(mesh), (a, b), ref, lambda out: np.asarray(out[0]),
            "jaxpr")
  raise ValueError(f"strategy={strategy!r}; allowed: {', '.join(map(repr, STRATEGIES))}")


def _causal_attention(q, k, v):
  return attention_ops.dot_product_attention(q, k, v, causal=True)


def _to_host(tree: Any) -> Any:
  """Whole arrays on this host, also where they span other processes' devices."""
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.process_allgather(tree, tiled=True)


def measure(strategy: str, num_devices: int, sizes: Sizes = Sizes(), *, repeats: int = 5,
            timing: bool = True) -> dict[str, Any]:
  """One result row for ``strategy`` on the first ``num_devices`` devices (see module)."""
  mesh = mesh_lib.make_mesh(1, num_devices)
  f, args, ref, pick, flop_source = build(strategy, mesh, sizes)
  compiled = f.lower(*args).compile()
  ref_fn, ref_args = ref
  err = float(np.max(np.abs(pick(_to_host(compiled(*args)))
                            - np.asarray(jax.jit(ref_fn)(*ref_args)))))
  if flop_source == "xla":
    flops = cost.xla_cost(compiled).get("flops", 0.0)
  else:
    flops = cost.jaxpr_flops(f, *args)
  coll = collective_bytes_in_hlo(compiled.as_text())
  received = coll.pop("all-gather received", 0)
  row = {"strategy": strategy, "devices": num_devices, "max_abs_err": err,
         "flops_per_device": float(flops), "flops_source": flop_source,
         "collective_bytes": int(sum(coll.values())), "collectives": coll,
         "received_bytes": int(received + sum(v for k, v in coll.items()
                                              if k != "all-gather")),
         "critical_path": int(depth.sequential_depth(f, *args)),
         "critical_path_one_device": int(depth.sequential_depth(ref_fn, *ref_args)),
         "run_s": None, "compile_s": None, "T": sizes.T}
  if timing:
    t = timing_lib.time_fn(f, *args, repeats=repeats)
    row["run_s"], row["compile_s"] = t.run_s, t.compile_s
  return row


def measure_all(num_devices: int, strategies: tuple[str, ...] = STRATEGIES,
                sizes: Sizes = Sizes(), **kwargs: Any) -> list[dict[str, Any]]:
  return [measure(s, num_devices, sizes, **kwargs) for s in strategies]


_CHILD = """
import json, sys
from seqscale import parallel
parallel.initialize(parallel.cluster_from())  # JAX_* environment; no-op for one process
import jax
from seqscale.studies import sharding
a = json.loads(sys.argv[1])
rows = [sharding.measure(name, n, sharding.Sizes(**a["sizes"]), repeats=a["repeats"])
        for n in a["counts"] for name in a["strategies"]]
if jax.process_index() == 0:
  print("ROWS " + json.dumps(rows))
"""


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def subprocess_rows(counts: Sequence[int], strategies: Sequence[str], sizes: Sizes, *,
                    devices: int | None = None, repeats: int = 5,
                    processes: int = 1) -> list[dict[str, Any]]:
  """``measure`` rows for each N in ``counts`` and each strategy, measured on CPU in
  ``processes`` subprocesses (``jax.distributed`` on 127.0.0.1 when more than one) with
  ``devices`` (default max(counts)) forced host devices in all.

  Raises:
    RuntimeError: a subprocess failed (the message ends with its last line of output).
  """
  devices = devices or max(counts)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count="
                      f"{devices // processes}").strip()
  env["JAX_NUM_PROCESSES"] = str(processes)  # explicit: no multi-host detection from SLURM/MPI
  if processes > 1:
    env["JAX_COORDINATOR_ADDRESS"] = f"127.0.0.1:{_free_port()}"
  arg = json.dumps({"counts": list(counts), "strategies": list(strategies),
                    "sizes": dataclasses.asdict(sizes), "repeats": repeats})
  errs = [tempfile.TemporaryFile("w+") for _ in range(processes)]  # no pipe fills up
  procs = [subprocess.Popen([sys.executable, "-c", _CHILD, arg], text=True, stderr=errs[i],
                            stdout=subprocess.PIPE if i == 0 else subprocess.DEVNULL,
                            env=dict(env, JAX_PROCESS_ID=str(i)) if processes > 1 else env)
           for i in range(processes)]
  lines = [l for l in procs[0].communicate()[0].splitlines() if l.startswith("ROWS ")]
  codes = [p.wait() for p in procs]
  last = ""
  for err in errs:
    err.seek(0)
    last = last or next((l for l in reversed(err.read().splitlines()) if l.strip()), "")
    err.close()
  if any(codes) or not lines:
    raise RuntimeError(f"the sharding subprocess with {devices} forced CPU devices failed "
                       f"(exit codes {codes}): {last}")
  return [dict(r, forced_cpu_devices=devices, processes=processes)
          for r in json.loads(lines[-1][5:])]


def run(settings: Settings, workdir: str,
        progress: Callable[[str], None] = print) -> dict[str, Any]:
  """Every strategy at every N of ``settings.devices``; writes the outputs (``write``).

  On a CPU each N runs in subprocesses (``subprocess_rows``); on a GPU/TPU on the real
  devices, and an N above their count is skipped. Returns ``{"markdown", "rows",
  "context"}``.
  """
  from seqscale.studies import sharding_report  # pylint: disable=g-import-not-at-top  # it reads STRATEGIES
  workdir = outputs.prepare_workdir(workdir)
  s, sizes = settings, Sizes(T=settings.seq_len)
  cpu = jax.default_backend() == "cpu"
  rows = []
  for n in s.devices:
    if cpu:
      where = "a subprocess" if s.processes == 1 else f"each of {s.processes} processes"
      progress(f"CPU: forcing {n // s.processes} host device(s) in {where} "
               f"(XLA_FLAGS=--xla_force_host_platform_device_count={n // s.processes})")
      rows += subprocess_rows([n], STRATEGIES, sizes, repeats=s.repeats,
                              processes=s.processes)
    elif n <= jax.device_count():
      rows += measure_all(n, sizes=sizes, repeats=s.repeats)
    else:
      progress(f"skipping devices={n}: {jax.device_count()} devices here")
  cores = os.cpu_count() or 1
  note = (f"CPU with {cores} cores: the N devices are forced host devices sharing them, so "
          f"times beyond N = {cores} are not speed-ups; FLOPs per device, collective bytes "
          "and the critical path carry the argument." if cpu else "")
  context = outputs.run_context(devices=list(s.devices), sizes=dataclasses.asdict(sizes),
                                forced_cpu_devices=cpu, processes=s.processes, note=note)
  md = sharding_report.write(rows, workdir, context)
  return {"markdown": md + ("\n\n" + note if note else ""), "rows": rows, "context": context}
