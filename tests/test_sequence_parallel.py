"""Sequence parallelism on 4 and 6 forced CPU devices: sharded = unsharded, and the measures.

Both device counts run in one subprocess of 6 devices (``run_with_devices``) that computes every
check and prints one JSON line; the tests below assert on it. References are independent
of the code under test: ``jax.nn.dot_product_attention`` for attention, the one-device
``recurrent.run`` / ``linear_recurrence`` (sequential mode) for the scans. A last (slow)
test runs two ``jax.distributed`` processes on 127.0.0.1.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, run_with_devices
from seqscale.studies import sharding
from seqscale.parallel import mesh as mesh_lib
from seqscale.parallel import sequence
from seqscale.parallel import sequence_scan

_CODE = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from seqscale.studies import sharding
from seqscale.ops import linear_recurrence as lr, recurrent
from seqscale.parallel import mesh as mesh_lib, sequence, sequence_scan

rng = np.random.default_rng(0)
r = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
B, T, H, K, I, D = 2, 48, 2, 8, 5, 8
err = lambda x, y: float(jnp.max(jnp.abs(x - y)))
sizes = sharding.Sizes(T=48, H=2, K=8, I=8, D=16)
ones = {s: sharding.measure(s, 1, sizes, timing=False) for s in sharding.STRATEGIES}
outs = {}
for N in (4, 6):  # meshes of the first N of 6 devices: one process for both counts
  rng = np.random.default_rng(0)
  mesh = mesh_lib.make_mesh(1, N)
  out = outs[N] = {"N": N}
  q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, H, K)
  for causal in (False, True):
    ref = jax.nn.dot_product_attention(q, k, v, is_causal=causal)
    out[f"compiler_{causal}"] = err(sequence.compiler_attention(mesh, causal=causal)(q, k, v), ref)
    for layout in ("contiguous", "zigzag"):
      out[f"ring_{layout}_{causal}"] = err(
          sequence.ring_attention(q, k, v, mesh, causal=causal, layout=layout), ref)
  # Gradients of a fixed random projection of the causal output, w.r.t. q, k and v: the
  # contiguous ring masks inside fold_all, the zig-zag one skips half blocks under a cond.
  w_out = jnp.asarray(np.random.default_rng(1).normal(size=(B, T, H, K)), jnp.float32)
  grads = lambda f: jax.grad(lambda *a: jnp.sum(f(*a) * w_out), argnums=(0, 1, 2))(q, k, v)
  g_ref = grads(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True))
  out["ring_grad_scale"] = max(float(jnp.max(jnp.abs(b))) for b in g_ref)
  for layout in ("contiguous", "zigzag"):
    g = grads(lambda q, k, v: sequence.ring_attention(q, k, v, mesh, causal=True, layout=layout))
    out[f"ring_grad_{layout}"] = max(err(a, b) for a, b in zip(g, g_ref))
  x = r(B, T, I)
  for cell in ("lstm", "gru"):
    G = recurrent.NUM_GATES[cell]
    p = {"w_ih": r(I, G * D) * .3, "w_hh": r(D, G * D) * .3, "b_ih": r(G * D) * .1,
         "b_hh": r(G * D) * .1}
    y, c = sequence_scan.carry_passing(cell, x, p, mesh)
    y0, c0 = recurrent.run(cell, x, p)
    out[f"carry_{cell}"] = max([err(y, y0)] + [err(a, b) for a, b in
                                               zip(jax.tree.leaves(c), jax.tree.leaves(c0))])
  a = jnp.asarray(rng.uniform(0.5, 1.0, size=(B, T, D)), jnp.float32)
  b, h0 = r(B, T, D), r(B, D)
  h, f = sequence_scan.linear_scan(a, b, mesh, h0)
  h_ref, f_ref = lr.linear_recurrence(a, b, h0, mode="sequential")
  out["linear"] = max(err(h, h_ref), err(f, f_ref))
  xs = r(B, T, D)
  p = {"w_ih": r(N, D, 4 * D) * .3, "w_hh": r(N, D, 4 * D) * .3, "b_ih": r(N, 4 * D) * .1,
       "b_hh": r(N, 4 * D) * .1}
  y_ref = xs
  for layer in range(N):
    y_ref = recurrent.run("lstm", y_ref, {n: w[layer] for n, w in p.items()})[0]
  out["wavefront"] = err(sequence_scan.wavefront("lstm", xs, p, mesh, num_chunks=4), y_ref)
  emesh = mesh_lib.make_mesh(1, N, explicit=True)
  with jax.set_mesh(emesh):
    qs = jax.device_put(q, jax.sharding.NamedSharding(emesh, jax.P("data", "seq")))
    try:
      jax.jit(jax.nn.dot_product_attention)(qs, qs, qs)
      out["explicit_raises"] = False
    except Exception as e:  # jax's ShardingTypeError: seq would shard two result axes
      out["explicit_raises"] = "illegally sharded" in str(e)
  for s in sharding.STRATEGIES:
    out[f"{s}_1"] = ones[s]
    out[f"{s}_{N}"] = sharding.measure(s, N, sizes, timing=False)
print(json.dumps(outs))
"""


@pytest.fixture(scope="module")
def all_res():
  """Both device counts from one process of 6 devices (meshes of the first 4 and all 6)."""
  # Level 0 changes no measured FLOPs, collective bytes or critical path (compared: the same
  # JSON but for max |err| values of ~1e-7 either way), and compiles ~25% faster.
  lines = run_with_devices(_CODE, 6, timeout=300, fast_compile=True).strip().splitlines()
  return json.loads(lines[-1])


@pytest.fixture(scope="module", params=[4, 6])
def res(request, all_res):
  return all_res[str(request.param)]


@pytest.mark.parametrize("causal", [False, True])
def test_attention_paths_equal_full_attention(res, causal):
  for path in ("compiler", "ring_contiguous", "ring_zigzag"):
    assert res[f"{path}_{causal}"] < 1e-5, (res["N"], path, causal)


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
def test_ring_attention_gradients_equal_full_attention(res, layout):
  # jax.grad through the ring (ppermute in a fori_loop, the zig-zag's cond) against
  # jax.grad of jax.nn.dot_product_attention. The gradients are O(1) (max ~3, checked), so
  # 1e-5 is a few float32 ulps (measured ~1e-6); a wrong mask is off by ~3.
  assert res["ring_grad_scale"] > 0.5
  assert res[f"ring_grad_{layout}"] < 1e-5, (res["N"], layout)


def test_explicit_axes_refuse_the_implicit_all_gather(res):
  # mesh.py's docstring: with Explicit axes, T-sharded q and k conflict in the score einsum.
  assert res["explicit_raises"]


def test_carry_passing_equals_one_device(res):
  assert res["carry_lstm"] < 1e-5 and res["carry_gru"] < 1e-5


def test_wavefront_equals_stacked_layers(res):
  assert res["wavefront"] < 1e-5


def test_sharded_linear_scan_equals_unsharded(res):
  assert res["linear"] < 1e-5


def test_measured_rows_match_one_device(res):
  for s in sharding.STRATEGIES:
    assert res[f"{s}_{res['N']}"]["max_abs_err"] < 1e-5, s


def test_attention_flops_per_device_fall_as_one_over_n(res):
  N = res["N"]
  for s in ("attention_compiler", "attention_ring"):
    ratio = res[f"{s}_1"]["flops_per_device"] / res[f"{s}_{N}"]["flops_per_device"]
    assert abs(ratio / N - 1) < 0.1, (s, N, ratio)
  # Zig-zag skips the masked half of every block after the first: below the dense ring.
  assert (res[f"attention_ring_zigzag_{N}"]["flops_per_device"]
          < 0.8 * res[f"attention_ring_{N}"]["flops_per_device"])


def test_critical_paths(res):
  N, T = res["N"], 48
  lstm_1, lstm_n = (res[f"lstm_carry_passing_{n}"]["critical_path"] for n in (1, N))
  assert lstm_n == lstm_1 > T  # the whole sequence, whatever N
  # The pipeline of N layers: (M + N - 1) ticks of T/M steps, below N whole sequences.
  wave = res[f"lstm_wavefront_{N}"]
  assert wave["critical_path"] < 0.5 * wave["critical_path_one_device"]
  assert wave["critical_path"] > wave["critical_path_one_device"] / N
  lin_1, lin_n = (res[f"linear_scan_sharded_{n}"]["critical_path"] for n in (1, N))
  # Two dependent ops per local scan step, plus ~2 log2 N levels and a correction.
  assert lin_n < lin_1 / N + 2 * np.log2(N) + 8 and lin_n > lin_1 / N


def test_ring_collective_bytes(res):
  # N - 1 rounds, each passing one k and one v block (f32) and their positions (s32).
  N = res["N"]
  Tb = 48 // N
  row = res[f"attention_ring_{N}"]
  assert row["collectives"] == {"collective-permute": (N - 1) * (2 * 2 * Tb * 2 * 8 + Tb) * 4}
  # The compiler's version all-gathers k and v once: each device receives (N - 1) blocks.
  row = res[f"attention_compiler_{N}"]
  assert row["received_bytes"] == 2 * (N - 1) * 2 * Tb * 2 * 8 * 4


def test_collective_bytes_multiplies_loop_trips():
  hlo = """HloModule m

body {
  p = (s32[], f32[4,8]) parameter(0)
  x = f32[4,8]{1,0} get-tuple-element(p), index=1
  cp = f32[4,8]{1,0} collective-permute(x), source_target_pairs={{0,1},{1,0}}
}

cond {
  p = (s32[], f32[4,8]) parameter(0)
  n = s32[] constant(5)
}

ENTRY main {
  a = f32[4,8]{1,0} parameter(0)
  g = f32[8,8]{1,0} all-gather(a), dimensions={0}
  w = (s32[], f32[4,8]) while(t), condition=cond, body=body
}
"""
  got = sharding.collective_bytes_in_hlo(hlo)
  assert got == {"collective-permute": 5 * 128, "all-gather": 128, "all-gather received": 128}


def test_bad_sizes_raise():
  with pytest.raises(ValueError, match="T=10"):
    sequence.layout_order(10, 4, "contiguous")
  with pytest.raises(ValueError, match="layout="):
    sequence.layout_order(8, 2, "striped")
  with pytest.raises(ValueError, match="seq="):
    mesh_lib.make_mesh(1, -1)
  mesh = mesh_lib.make_mesh(1, 1)
  x = np.zeros((1, 4, 2), np.float32)
  with pytest.raises(ValueError, match="cell='tanh'"):
    sequence_scan.carry_passing("tanh", x, {}, mesh)
  params = {"w_hh": np.zeros((3, 2, 8), np.float32)}
  with pytest.raises(ValueError, match="3 layers"):
    sequence_scan.wavefront("lstm", x, params, mesh, num_chunks=2)


_MULTIHOST_CODE = r"""
import json
from seqscale import parallel
parallel.initialize(parallel.cluster_from())
import jax
from seqscale.studies import sharding
sizes = sharding.Sizes(T=48, H=2, K=8, I=8, D=16)
rows = {s: sharding.measure(s, 4, sizes, timing=False)
        for s in ("attention_ring", "linear_scan_sharded")}
print(json.dumps([jax.process_count(), jax.device_count(), rows]))
"""


@pytest.mark.slow
def test_two_processes_give_the_same_rows():
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_PROCESSES="2",
             JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  procs = [subprocess.Popen([sys.executable, "-c", _MULTIHOST_CODE], cwd=ROOT, text=True,
                            env=dict(env, JAX_PROCESS_ID=str(i)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  assert all(p.returncode == 0 for p in procs), outs[0][1][-3000:]
  results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
  assert results[0] == results[1]
  count, devices, rows = results[0]
  assert (count, devices) == (2, 4)
  Tb = 48 // 4
  ring = rows["attention_ring"]
  assert ring["max_abs_err"] < 1e-5
  assert ring["collectives"] == {"collective-permute": 3 * (2 * 2 * Tb * 2 * 8 + Tb) * 4}
  lin = rows["linear_scan_sharded"]
  assert lin["max_abs_err"] < 1e-5
  assert lin["critical_path"] < lin["critical_path_one_device"] / 2
