"""Times the fast recurrent layers forward+backward against torch.nn's LSTM and GRU.

One process, candidates alternating round by round, the median of `--repeats` rounds (wall
time and this process's CPU time, all threads). float32 x [B, T, D], D = H; forward+backward
is the value and gradient (weights, biases and x) of sum(y * ct) for a fixed random ct, as
in the bench's target rows. The peer, `torch.nn.LSTM`/`GRU(batch_first=True)`, runs with
OMP_WAIT_POLICY=PASSIVE (set before torch loads) and `torch.set_num_threads(os.cpu_count())`.

Candidates: `seqscale` (ops.fast_recurrent.run: what the models run), `rows_<n>` for each
`--rows` (the same code with CHUNK_ROWS = n while it compiles), `baseline` (the `run` of
another copy of fast_recurrent.py given by `--baseline`, e.g. an older commit's), and
`reference` (ops.recurrent.run, the plain scan). This is how CHUNK_ROWS was chosen.

  python tools/recurrent_speed.py --out=/tmp/recurrent_speed.json
  python tools/recurrent_speed.py --shapes=lstm:32:512:256 --rows=256,512,2048
  git show 0472aa6:seqscale/ops/fast_recurrent.py > /tmp/fast_recurrent_0472aa6.py
  python tools/recurrent_speed.py --baseline=/tmp/fast_recurrent_0472aa6.py
"""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments.cli import fail
from seqscale import outputs
from seqscale.analysis import timing
from seqscale.ops import fast_recurrent as fast
from seqscale.ops import recurrent as ref

_SHAPES = flags.DEFINE_list(
    "shapes", ["lstm:32:512:256", "gru:32:512:256", "lstm:1:8192:256", "gru:1:8192:256"],
    "cell:B:T:D, cell one of lstm, gru.")
_ROWS = flags.DEFINE_list("rows", [], "Extra candidates: CHUNK_ROWS values.")
_BASELINE = flags.DEFINE_string("baseline", None, "Another fast_recurrent.py to time.")
_REFERENCE = flags.DEFINE_bool("reference", False, "Also time the plain scan.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Alternating rounds (the median is reported).")
_OUT = flags.DEFINE_string("out", None, "Write the rows and the context here as JSON.")
GATES = {"lstm": 4, "gru": 3}


def parse_shape(spec: str) -> tuple[str, int, int, int]:
  parts = spec.split(":")
  if len(parts) != 4 or parts[0] not in GATES or not all(p.isdigit() and int(p) > 0
                                                          for p in parts[1:]):
    fail(f"--shapes={spec}: want cell:B:T:D with cell one of {', '.join(GATES)} and "
         "B, T, D >= 1, e.g. lstm:32:512:256")
  return parts[0], int(parts[1]), int(parts[2]), int(parts[3])


def _load(path: str):
  spec = importlib.util.spec_from_file_location("fast_recurrent_baseline", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _jax_candidate(run, cell, params, x, ct, rows=None):
  step = jax.jit(jax.value_and_grad(
      lambda p, x: jnp.sum(run(cell, x, p)[0] * ct), argnums=(0, 1)))
  saved = fast.CHUNK_ROWS
  fast.CHUNK_ROWS = rows or saved
  try:  # CHUNK_ROWS is read while tracing: compile now
    jax.block_until_ready(step(params, x))
  finally:
    fast.CHUNK_ROWS = saved
  return lambda: jax.block_until_ready(step(params, x))


def _torch_candidate(torch, cell, params, x, ct):
  module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](
      x.shape[-1], params["w_hh"].shape[0], batch_first=True)
  with torch.no_grad():  # the same weights (torch keeps [G*D, in] matrices)
    for name, value in params.items():
      getattr(module, f"{name.replace('w_', 'weight_').replace('b_', 'bias_')}_l0").copy_(
          torch.tensor(np.asarray(value).T.copy()))
  xt = torch.tensor(np.asarray(x), requires_grad=True)
  ctt = torch.tensor(np.asarray(ct))
  with torch.no_grad():  # the peer computes the same function
    gap = float(np.max(np.abs(module(xt)[0].numpy() - np.asarray(fast.run(cell, x, params)[0]))))
  if gap > 1e-4:
    raise RuntimeError(f"torch.nn.{cell.upper()} differs from seqscale's by {gap:.2g}")

  def run():
    xt.grad = None
    module.zero_grad(set_to_none=True)
    module(xt)[0].backward(ctt)
  run()
  return run


def measure(cell: str, B: int, T: int, D: int, torch, baseline) -> list[dict]:
  """Rows {impl, cell, B, T, D, wall_s, cpu_s, wall_ratio, cpu_ratio} (ratios to torch)."""
  rng = np.random.default_rng(T)
  G = GATES[cell] * D
  bound = 1 / np.sqrt(D)
  params = {k: jnp.asarray(rng.uniform(-bound, bound, size=s), jnp.float32) for k, s in
            dict(w_ih=(D, G), w_hh=(D, G), b_ih=(G,), b_hh=(G,)).items()}
  x, ct = (jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32) for _ in range(2))
  cands = {"seqscale": _jax_candidate(fast.run, cell, params, x, ct)}
  for rows in _ROWS.value:
    cands[f"rows_{rows}"] = _jax_candidate(fast.run, cell, params, x, ct, int(rows))
  if baseline is not None:
    cands["baseline"] = _jax_candidate(baseline.run, cell, params, x, ct)
  if _REFERENCE.value:
    cands["reference"] = _jax_candidate(ref.run, cell, params, x, ct)
  peer = None
  if torch is not None:
    peer = f"torch_nn_{cell}"
    cands[peer] = _torch_candidate(torch, cell, params, x, ct)
  wall, cpu = timing.alternate(cands, _REPEATS.value)
  med = lambda xs: float(np.median(xs))
  rows = []
  for name in cands:
    row = dict(impl=name, cell=cell, B=B, T=T, D=D, wall_s=med(wall[name]),
               cpu_s=med(cpu[name]), wall_s_all=wall[name], cpu_s_all=cpu[name],
               steps_per_chunk=fast.chunk_steps(B, T) if name == "seqscale" else None)
    if peer:
      row.update(wall_ratio=row["wall_s"] / med(wall[peer]),
                 cpu_ratio=row["cpu_s"] / med(cpu[peer]))
    rows.append(row)
  return rows


def main(argv):
  del argv
  shapes = [parse_shape(s) for s in _SHAPES.value]
  for rows in _ROWS.value:
    if not rows.isdigit() or int(rows) < 1:
      fail(f"--rows={rows}: want integers >= 1, e.g. 512,2048")
  if _BASELINE.value and not os.path.isfile(_BASELINE.value):
    fail(f"--baseline={_BASELINE.value}: no such file")
  baseline = _load(_BASELINE.value) if _BASELINE.value else None
  try:
    import torch
    torch.set_num_threads(os.cpu_count())
  except ImportError:
    torch = None
  print(f"cpu: {outputs.cpu_info()}")
  rows = []
  for cell, B, T, D in shapes:
    load = outputs.load_average()
    for row in measure(cell, B, T, D, torch, baseline):
      row["load_average_before"] = load
      rows.append(row)
      print(f"{cell} B={B:3d} T={T:5d} D={D:4d} {row['impl']:14s} wall "
            f"{row['wall_s'] * 1e3:8.1f} ms (x{row.get('wall_ratio', float('nan')):.3f})   "
            f"cpu {row['cpu_s'] * 1e3:8.1f} ms (x{row.get('cpu_ratio', float('nan')):.3f})   "
            f"load {load}", flush=True)
  if _OUT.value:
    peer = None if torch is None else dict(
        name="torch.nn.LSTM/GRU(batch_first=True)", version=torch.__version__,
        num_threads=torch.get_num_threads(), omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))
    outputs.write_json(_OUT.value, dict(
        context=outputs.run_context(peer=peer, chunk_rows=fast.CHUNK_ROWS,
                                    baseline=_BASELINE.value,
                                    load_average_after=outputs.load_average()),
        rows=rows))


if __name__ == "__main__":
  app.run(main)
