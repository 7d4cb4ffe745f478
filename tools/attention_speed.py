"""Times causal attention forward+backward: seqscale's default path against torch's SDPA.

One process, candidates alternating round by round, the median of `--repeats` rounds (wall
time and this process's CPU time, all threads). float32 q, k, v [B, T, H, K] (torch gets
its own [B, H, T, K] layout: neither pays a transpose); forward+backward is the value and
gradient of sum(out * ct) for a fixed random ct. The peer, `torch.nn.functional.
scaled_dot_product_attention(is_causal=True)`, runs with OMP_WAIT_POLICY=PASSIVE (set
before torch loads) and `torch.set_num_threads(os.cpu_count())`.

Candidates: `seqscale` (ops.attention.attention, impl="auto": what the models run),
`blockwise` (the blockwise kernel at its default blocks) where "auto" runs another path at
that T (the chunked one, at short T), `blockwise_<bq>x<bk>` for `--blocks`, and `xla`
(jax.nn.dot_product_attention) and `reference` (the einsum reference) up to
`--quadratic_upto`. This is how the tables in ops.blockwise_attention (QUERY_BLOCKS,
KEY_BLOCKS), ops.chunked_attention (CHUNK_ROWS), the C++ kernel's block sizes
(ops/native/flash_attention.cc) and the CPU rows of ops.attention.choose_impl (with
ops.native_attention.NATIVE_FROM) were chosen.

  python tools/attention_speed.py --lengths=256,512,2048,8192 --out=/tmp/attention_speed.json
  python tools/attention_speed.py --lengths=2048 --blocks=64x64,128x128,256x256
  python tools/attention_speed.py --lengths=512,2048 --matmuls   # the kernel's block matmuls

``--matmuls`` also times the batched matmuls the blockwise kernel runs at each T (its block
shapes, [B*H] batches: scores q k^T and the product p v) in XLA and in torch (``torch.bmm``),
each as a chain of ``MATMUL_CHAIN`` products, alternating, and prints both rates: where
XLA's own matmul is slower at these shapes, no blocking of the kernel closes the gap.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from seqscale import outputs
from seqscale.analysis import timing
from seqscale.ops import attention as attn_ops
from seqscale.ops import blockwise_attention as bw_ops

_LENGTHS = flags.DEFINE_list("lengths", ["256", "512", "2048", "8192"], "Sequence lengths T.")
_BLOCKS = flags.DEFINE_list("blocks", [], "Extra blockwise candidates, as <bq>x<bk>.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Alternating rounds (the median is reported).")
_QUADRATIC_UPTO = flags.DEFINE_integer(
    "quadratic_upto", 2048, "Longest T at which the [T, T] candidates (xla, reference) run.")
_B = flags.DEFINE_integer("batch", 4, "B.")
_H = flags.DEFINE_integer("heads", 8, "H.")
_K = flags.DEFINE_integer("head_dim", 64, "K.")
_OUT = flags.DEFINE_string("out", None, "Write the rows and the context here as JSON.")
_MATMULS = flags.DEFINE_bool("matmuls", False, "Also time the kernel's block matmuls in XLA "
                             "and torch.bmm.")
MATMUL_CHAIN = 20  # products per timed call: one call is not one lucky time slice


def _jax_candidate(fn, q, k, v, ct):
  step = jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(fn(q, k, v) * ct),
                                    argnums=(0, 1, 2)))
  jax.block_until_ready(step(q, k, v))  # compile outside the timing
  return lambda: jax.block_until_ready(step(q, k, v))


def _torch_candidate(torch, arrays):
  q, k, v, ct = (torch.tensor(np.asarray(a).transpose(0, 2, 1, 3).copy()) for a in arrays)
  for t in (q, k, v):
    t.requires_grad_(True)

  def run():
    for t in (q, k, v):
      t.grad = None
    torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).backward(ct)
  run()
  return run


def measure(T: int, torch) -> list[dict]:
  """Rows {impl, T, wall_s, cpu_s, wall_ratio, cpu_ratio} (ratios to torch's SDPA)."""
  B, H, K = _B.value, _H.value, _K.value
  rng = np.random.default_rng(T)
  arrays = [jnp.asarray(rng.normal(size=(B, T, H, K)), jnp.float32) for _ in range(4)]
  fns = {"seqscale": lambda q, k, v: attn_ops.attention(q, k, v, causal=True)}
  if attn_ops.choose_impl("auto", num_queries=T, head_dim=K, batch_heads=B * H,
                          causal=True) != "blockwise":
    fns["blockwise"] = lambda q, k, v: bw_ops.blockwise_attention(q, k, v, causal=True)
  for spec in _BLOCKS.value:
    bq, bk = (int(x) for x in spec.split("x"))
    fns[f"blockwise_{bq}x{bk}"] = (lambda q, k, v, bq=bq, bk=bk: bw_ops.blockwise_attention(
        q, k, v, causal=True, block_q=bq, block_k=bk))
  if T <= _QUADRATIC_UPTO.value:
    fns["xla"] = lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=True, implementation="xla")
    fns["reference"] = lambda q, k, v: attn_ops.dot_product_attention(q, k, v, causal=True)
  cands = {name: _jax_candidate(fn, *arrays) for name, fn in fns.items()}
  if torch is not None:
    cands["torch_sdpa"] = _torch_candidate(torch, arrays)
  wall, cpu = timing.alternate(cands, _REPEATS.value)
  med = lambda xs: float(np.median(xs))
  peer = "torch_sdpa" if torch is not None else None
  rows = []
  for name in cands:
    row = dict(impl=name, T=T, B=B, H=H, K=K, wall_s=med(wall[name]), cpu_s=med(cpu[name]),
               wall_s_all=wall[name], cpu_s_all=cpu[name])
    if peer:
      row.update(wall_ratio=row["wall_s"] / med(wall[peer]),
                 cpu_ratio=row["cpu_s"] / med(cpu[peer]))
    rows.append(row)
  return rows


def matmul_rows(T: int, torch) -> list[dict]:
  """The blockwise kernel's two forward block products at length T, XLA against torch.bmm:
  rows {product, shape, xla_gflops, torch_gflops, ratio} (ratio: XLA time / torch time)."""
  n = _B.value * _H.value
  bq = min(bw_ops.default_block(T), T)
  bk = min(bw_ops.default_block(T, bw_ops.KEY_BLOCKS), T)
  K = _K.value
  rng = np.random.default_rng(0)
  rows = []
  for product, (m, k, c) in (("scores q k^T", (bq, K, bk)), ("p v", (bq, bk, K))):
    a = rng.normal(size=(n, m, k)).astype(np.float32)
    b = rng.normal(size=(n, k, c)).astype(np.float32)

    @jax.jit
    def chain(x, y):
      body = lambda i, acc: acc + jnp.einsum("bij,bjk->bik", x + i * 1e-9, y)
      return jax.lax.fori_loop(0, MATMUL_CHAIN, body, jnp.zeros((n, m, c), jnp.float32))

    xa, xb = jnp.asarray(a), jnp.asarray(b)
    jax.block_until_ready(chain(xa, xb))
    runs = {"xla": lambda: jax.block_until_ready(chain(xa, xb))}
    if torch is not None:
      ta, tb, out = torch.tensor(a), torch.tensor(b), torch.empty(n, m, c)

      def torch_chain():
        acc = torch.zeros(n, m, c)
        for _ in range(MATMUL_CHAIN):
          torch.bmm(ta, tb, out=out)
          acc += out
      runs["torch"] = torch_chain
    for run in runs.values():
      run()
    times = timing.alternate(runs, _REPEATS.value)[0]
    flops = 2.0 * n * m * k * c * MATMUL_CHAIN
    rate = {name: flops / float(np.median(ts)) / 1e9 for name, ts in times.items() if ts}
    rows.append(dict(T=T, product=product, shape=f"[{n},{m},{k}]x[{n},{k},{c}]",
                     xla_gflops=rate["xla"], torch_gflops=rate.get("torch"),
                     ratio=rate["torch"] / rate["xla"] if "torch" in rate else None))
  return rows


def main(argv):
  del argv
  try:
    import torch
    torch.set_num_threads(os.cpu_count())
  except ImportError:
    torch = None
  choice = attn_ops.describe_choice(num_queries=int(_LENGTHS.value[0]), head_dim=_K.value,
                                    batch_heads=_B.value * _H.value, causal=True)
  print(choice)
  print(f"cpu: {outputs.cpu_info()}")
  rows = []
  for T in (int(t) for t in _LENGTHS.value):
    load = outputs.load_average()
    for row in measure(T, torch):
      row["load_average_before"] = load
      rows.append(row)
      print(f"T={T:6d} {row['impl']:20s} wall {row['wall_s'] * 1e3:9.1f} ms"
            f" (x{row.get('wall_ratio', float('nan')):.2f})   cpu {row['cpu_s'] * 1e3:9.1f} ms"
            f" (x{row.get('cpu_ratio', float('nan')):.2f})   load {load}")
  matmuls = []
  for T in (int(t) for t in _LENGTHS.value) if _MATMULS.value else ():
    for row in matmul_rows(T, torch):
      matmuls.append(row)
      print(f"T={T:6d} {row['product']:13s} {row['shape']:24s} XLA {row['xla_gflops']:6.1f} "
            f"GFLOP/s, torch.bmm {row['torch_gflops'] or float('nan'):6.1f} GFLOP/s "
            f"(XLA time x{row['ratio'] or float('nan'):.2f})   load {outputs.load_average()}")
  if _OUT.value:
    peer = None if torch is None else dict(
        name="torch.nn.functional.scaled_dot_product_attention(is_causal=True)",
        version=torch.__version__, num_threads=torch.get_num_threads(),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))
    outputs.write_json(_OUT.value, dict(
        context=outputs.run_context(peer=peer, attention=choice,
                                    load_average_after=outputs.load_average()),
        rows=rows, matmuls=matmuls))


if __name__ == "__main__":
  app.run(main)
