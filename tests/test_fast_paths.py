"""The fast paths equal the readable references: outputs and gradients.

``ops.fast_recurrent`` (hand-written VJP) against ``ops.recurrent`` (a plain scan), and
``ops.blockwise_attention`` (online softmax, skipped blocks, recomputed backward) and
``ops.chunked_attention`` (query chunks against their visible keys; its other tests are in
test_chunked_attention.py) against ``ops.attention`` (the einsum reference); both
references are themselves checked against PyTorch, Flax and NumPy in test_recurrent.py and
test_attention.py. Then the models' default paths against their ``impl="reference"``
twins, and a smoke run of the benchmark.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqscale import analysis
from seqscale import models
from seqscale.studies import bench
from seqscale.ops import attention as attn_ref
from seqscale.ops import blockwise_attention as bw
from seqscale.ops import chunked_attention as chunked
from seqscale.ops import fast_recurrent as fast
from seqscale.ops import recurrent as rec_ref
from tests.conftest import FAST_COMPILE

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _close(a, b, atol=2e-5, rtol=2e-5):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(u, np.float32), np.asarray(v, np.float32),
                               atol=atol, rtol=rtol)


def _value_and_grads(fn, *args):
  """fn's outputs and the gradient of a fixed random projection of them w.r.t. args."""
  out = fn(*args)
  weights = jax.tree.map(
      lambda y: jnp.cos(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape)), out)
  loss = lambda *a: sum(jnp.sum(y.astype(jnp.float32) * w) for y, w in
                        zip(jax.tree.leaves(fn(*a)), jax.tree.leaves(weights)))
  return out, jax.grad(loss, argnums=tuple(range(len(args))))(*args)


# ----------------------------------------------------------------------------- recurrent


def _rec_inputs(cell, rng, B=3, T=9, I=5, D=6):
  g = GATES[cell] * D
  shapes = dict(w_ih=(I, g), w_hh=(D, g), b_ih=(g,), b_hh=(g,))
  params = {k: jnp.asarray(rng.uniform(-0.5, 0.5, s), jnp.float32) for k, s in shapes.items()}
  x = jnp.asarray(rng.normal(size=(B, T, I)), jnp.float32)
  h = jnp.asarray(rng.normal(size=(B, D)) * 0.5, jnp.float32)
  carry = (h, 0.3 * h) if cell == "lstm" else h
  return params, x, carry


# At B=3, T=9: 12 rows make chunks of 4 steps (one left-over step first, then two full
# chunks); 64 rows, one chunk of all 9 steps.
@pytest.mark.parametrize("cell,rows", [
    ("rnn", 12), ("lstm", 12), ("lstm", 64), ("gru", 12), ("gru", 64)])
def test_fast_recurrent_equals_reference(cell, rows, rng, monkeypatch):
  monkeypatch.setattr(fast, "CHUNK_ROWS", rows)
  params, x, carry = _rec_inputs(cell, rng)
  for lengths, reverse in ((None, False), (jnp.array([9, 4, 0]), False),
                           (jnp.array([9, 4, 0]), True), (None, True)):
    def run(module, params, x, carry, lengths=lengths, reverse=reverse):
      return module.run(cell, x, params, carry, lengths, reverse=reverse)
    # One compiled program for both paths (op-by-op dispatch costs more than compiling).
    got, want = jax.jit(lambda *a: (_value_and_grads(lambda *b: run(fast, *b), *a),
                                    _value_and_grads(lambda *b: run(rec_ref, *b), *a)),
                        compiler_options=FAST_COMPILE)(params, x, carry)
    _close(got, want)


def test_fast_recurrent_chunk_steps():
  # About CHUNK_ROWS rows per chunk, at least one step, at most T.
  rows = fast.CHUNK_ROWS
  assert fast.chunk_steps(32, 512) == rows // 32
  assert fast.chunk_steps(1, 8192) == rows
  assert fast.chunk_steps(1, 7) == 7
  assert fast.chunk_steps(2 * rows, 5) == 1


@pytest.mark.parametrize("cell", ["lstm"])
def test_fast_recurrent_unroll_and_zero_carry(cell, rng):
  params, x, _ = _rec_inputs(cell, rng)
  # One compiled program for the reference and both unrolls.
  want, *gots = jax.jit(lambda p, x: [_value_and_grads(run, p, x) for run in (
      lambda p, x: rec_ref.run(cell, x, p),
      *(lambda p, x, u=unroll: fast.run(cell, x, p, unroll=u) for unroll in (3, True)))],
                        compiler_options=FAST_COMPILE)(params, x)
  for got in gots:
    _close(got, want)


_U = 2.0**-8  # bfloat16's unit roundoff: one rounding moves a value by <= u |value|
_bf16 = lambda t: jax.tree.map(lambda a: a.astype(jnp.bfloat16), t)
_f32 = lambda t: jax.tree.map(lambda a: a.astype(jnp.float32), t)


def _bf16_errors(got, want, rounding_steps):
  """Per leaf: max |got - want| over the bf16 tolerance u sqrt(steps) max|want|.

  ``want`` is float32 on the same bf16-rounded inputs, so only the rounding inside the
  computation differs; independent roundings of <= u each add up like a random walk over
  the ``rounding_steps`` dependent ops, relative to the leaf's scale.
  """
  return [float(np.max(np.abs(np.asarray(g, np.float32) - np.asarray(w, np.float32)))
                / (_U * np.sqrt(rounding_steps) * np.max(np.abs(np.asarray(w)))))
          for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want))]


def _mutant_params(params, G, kind, gate=0):
  """Plausible bugs as weights: gates 0 and 1 swapped, each gate's w_hh transposed, or
  gate ``gate`` missing (its pre-activation pushed to +100, so it is a constant 1)."""
  blocks = lambda w: jnp.split(w, G, axis=-1)
  if kind == "swapped_gates":
    swap = lambda w: jnp.concatenate([blocks(w)[i] for i in (1, 0, *range(2, G))], -1)
    return {n: swap(w) for n, w in params.items()}
  if kind == "missing_gate":
    D = params["w_hh"].shape[0]
    return dict(params, b_ih=params["b_ih"].at[gate * D:(gate + 1) * D].add(100.0))
  return dict(params, w_hh=jnp.concatenate([b.T for b in blocks(params["w_hh"])], -1))


# Dependent ops per step on the recurrent path (h @ w_hh, bias and input adds, the gates'
# products, activations): the counts test_table1 derives from the cell equations.
_OPS_PER_STEP = {"lstm": 8, "gru": 10}
_FORGET_OR_RESET = {"lstm": 1, "gru": 0}  # the gate that "missing_gate" removes


# B=3, T=16: 15 rows, chunks of 5 steps and one left over; 96, one chunk.
@pytest.mark.parametrize("cell,rows", [("lstm", 15), ("lstm", 96), ("gru", 15)])
def test_fast_recurrent_bfloat16_follows_float32(cell, rows, rng, monkeypatch):
  monkeypatch.setattr(fast, "CHUNK_ROWS", rows)
  T = 16
  args = _bf16(_rec_inputs(cell, rng, T=T))  # (params, x, carry), rounded once to bf16
  run = lambda module: (lambda p, x, c: module.run(cell, x, p, c))
  # The float32 reference (the readable scan) on the same bf16-rounded values.
  want = _value_and_grads(run(rec_ref), *_f32(args))
  got = _value_and_grads(run(fast), *args)
  assert jax.tree.leaves(got[0])[0].dtype == jnp.bfloat16
  steps = T * _OPS_PER_STEP[cell]  # forward; the backward pass walks the chain once more
  assert max(_bf16_errors(got[0], want[0], steps)) <= 1.0  # measured: ~0.2
  assert max(_bf16_errors(got[1], want[1], 2 * steps)) <= 1.0  # measured: ~0.2
  # The tolerance is tight enough to catch a gate-order, transposition or missing-gate bug:
  # each, run in float32, is off by more than 2 tolerances (measured: 8 to 16).
  params, x, carry = _f32(args)
  for kind in ("swapped_gates", "transposed_w_hh", "missing_gate"):
    bad_params = _mutant_params(params, GATES[cell], kind, _FORGET_OR_RESET[cell])
    bad = rec_ref.run(cell, x, bad_params, carry)
    assert max(_bf16_errors(bad, want[0], steps)) > 2.0, kind


def test_fast_recurrent_rejects_bad_arguments(rng):
  params, x, _ = _rec_inputs("lstm", rng)
  with pytest.raises(ValueError, match="cell"):
    fast.run("elman", x, params)
  with pytest.raises(ValueError, match="unroll"):
    fast.run("lstm", x, params, unroll=0)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_recurrent_models_default_equals_reference(name, rng):
  kw = dict(in_features=4, hidden_features=5, num_layers=2, bidirectional=True)
  fast_model = models.create(name, rngs=nnx.Rngs(0), **kw)
  ref_model = models.create(name, rngs=nnx.Rngs(0), impl="reference", **kw)
  assert fast_model.impl == "fast"
  x = jnp.asarray(rng.normal(size=(3, 7, 4)), jnp.float32)
  mask = jnp.arange(7)[None, :] < jnp.array([7, 5, 2])[:, None]

  def fn(model):
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    return lambda p, x: nnx.merge(graphdef, p, rest)(x, mask=mask)

  params = nnx.state(fast_model, nnx.Param)
  # One compiled program for both paths (op-by-op dispatch costs more than compiling).
  got, want = jax.jit(lambda p, x: (_value_and_grads(fn(fast_model), p, x),
                                    _value_and_grads(fn(ref_model), p, x)),
                      compiler_options=FAST_COMPILE)(params, x)
  _close(got, want)
  with pytest.raises(ValueError, match="impl"):
    models.create(name, rngs=nnx.Rngs(0), impl="cudnn", **kw)


# ----------------------------------------------------------------------------- attention


def _qkv(rng, B=2, T=13, S=13, H=3, K=8, dtype=jnp.float32):
  mk = lambda n: jnp.asarray(rng.normal(size=(B, n, H, K)), dtype)
  return mk(T), mk(S), mk(S)


ATTENTION_CASES = {
    "non_causal": dict(),
    "causal": dict(causal=True),
    "padding": dict(key_padding_mask_BS=np.arange(13)[None, :] < np.array([13, 5])[:, None]),
    "causal_padding": dict(causal=True, key_padding_mask_BS=np.arange(13)[None, :]
                           < np.array([1, 8])[:, None]),
    "window": dict(local_window=2),
    "causal_window": dict(causal=True, local_window=3),
    "query_offset": dict(causal=True, query_offset=4),  # T=13 queries at positions 4..16
}


# The fast attention paths at sizes that leave ragged pieces: the blockwise kernel in 4x4
# and 3x5 blocks; the chunked one in chunks of 4 (three full, one row left over) or 5,
# and in one chunk (the inputs' own layout, no transposes).
_FAST_ATTENTION = {
    "blockwise_b4x4": lambda **kw: bw.blockwise_attention(**kw, block_q=4, block_k=4),
    "blockwise_b3x5": lambda **kw: bw.blockwise_attention(**kw, block_q=3, block_k=5),
    "chunked_4": lambda **kw: chunked.chunked_attention(**kw, chunk=4),
    "chunked_5": lambda **kw: chunked.chunked_attention(**kw, chunk=5),
    "chunked_one": lambda **kw: chunked.chunked_attention(**kw, chunk=64),  # one chunk
}


@pytest.mark.parametrize("case", sorted(ATTENTION_CASES))
@pytest.mark.parametrize("path", sorted(_FAST_ATTENTION))
def test_fast_attention_equals_reference(case, path, rng):
  kw = ATTENTION_CASES[case]
  S = 17 if "query_offset" in kw else 13
  q, k, v = _qkv(rng, S=S)
  if "key_padding_mask_BS" in kw:
    kw = dict(kw, key_padding_mask_BS=jnp.asarray(kw["key_padding_mask_BS"]))
  fast_fn = _FAST_ATTENTION[path]
  # One compiled program for both paths (op-by-op dispatch costs more than compiling).
  got, want = jax.jit(lambda q, k, v: (_value_and_grads(
      lambda q, k, v: fast_fn(q_BTHK=q, k_BSHK=k, v_BSHK=v, **kw), q, k, v),
      _value_and_grads(lambda q, k, v: attn_ref.dot_product_attention(q, k, v, **kw),
                       q, k, v)), compiler_options=FAST_COMPILE)(q, k, v)
  _close(got, want)


def test_blockwise_attention_default_blocks_past_512_equal_jax_nn(rng):
  # Past 512 positions the default blocks differ for queries and keys (KEY_BLOCKS is wider
  # than QUERY_BLOCKS), and 700 leaves a ragged last block of each.
  T = 700
  assert bw.default_block(T) != bw.default_block(T, bw.KEY_BLOCKS)
  q, k, v = _qkv(rng, B=1, T=T, S=T, H=2, K=8)
  want = _value_and_grads(lambda q, k, v: jax.nn.dot_product_attention(
      q, k, v, is_causal=True, implementation="xla"), q, k, v)
  got = jax.jit(lambda q, k, v: _value_and_grads(
      lambda q, k, v: bw.blockwise_attention(q, k, v, causal=True), q, k, v))(q, k, v)
  _close(got, want)


def test_blockwise_attention_fully_masked_rows_are_zero_and_finite(rng):
  q, k, v = _qkv(rng, T=6, S=6)
  kpm = jnp.array([[True] * 6, [False] * 6])  # example 1 may see no key at all
  out, grads = jax.jit(lambda q, k, v: _value_and_grads(
      lambda q, k, v: bw.blockwise_attention(q, k, v, causal=True, key_padding_mask_BS=kpm,
                                             block_q=2, block_k=4), q, k, v),
                       compiler_options=FAST_COMPILE)(q, k, v)
  assert np.all(np.asarray(out[1]) == 0)
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_blockwise_attention_traced_query_offset_decoding(rng):
  # One query at a traced position against a cache, as the KV-cache step does.
  q, k, v = _qkv(rng, T=1, S=11)
  step = jax.jit(lambda q, k, v, i: bw.blockwise_attention(
      q, k, v, causal=True, local_window=4, query_offset=i, block_k=4),
                 compiler_options=FAST_COMPILE)
  for i in (0, 5, 10):
    _close(step(q, k, v, i), attn_ref.dot_product_attention(
        q, k, v, causal=True, local_window=4, query_offset=i))


def test_blockwise_attention_bfloat16_follows_float32(rng):
  q, k, v = _bf16(_qkv(rng, T=32, S=32))
  fn = lambda q, k, v: bw.blockwise_attention(q, k, v, causal=True, block_q=8, block_k=8)
  got = _value_and_grads(fn, q, k, v)
  assert got[0].dtype == jnp.bfloat16
  # The float32 einsum reference on the same bf16-rounded inputs.
  ref = lambda q, k, v: attn_ref.dot_product_attention(q, k, v, causal=True)
  want = _value_and_grads(ref, *_f32((q, k, v)))
  # Scores and softmax in float32 leave two bf16 roundings forward (weights, output: see
  # test_attention.test_bf16_softmax_is_float32_accurate) and about four backward (dout v,
  # the softmax's Jacobian product, the matmul with q or k, the cast): 4 steps in all.
  assert max(_bf16_errors(got, want, 4)) <= 1.0  # measured: ~0.6
  # Tight enough: a missing 1/sqrt(K) scale, or heads crossed in k, is far outside.
  for bad in (attn_ref.dot_product_attention(*_f32((q, k, v)), causal=True, scale=1.0),
              ref(*_f32((q, k[:, :, ::-1], v)))):
    assert max(_bf16_errors(bad, want[0], 4)) > 2.0


def test_blockwise_attention_memory_grows_linearly_in_T():
  def peak(fn, T):
    x = jax.ShapeDtypeStruct((1, T, 2, 16), jnp.float32)
    g = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), argnums=(0, 1, 2))
    return analysis.peak_bytes(jax.jit(g).lower(x, x, x).compile())
  blockwise = lambda q, k, v: bw.blockwise_attention(q, k, v, causal=True)
  reference = lambda q, k, v: attn_ref.dot_product_attention(q, k, v, causal=True)
  assert peak(blockwise, 4096) < 5 * peak(blockwise, 1024)  # linear: about 4x
  assert peak(reference, 4096) > 10 * peak(reference, 1024)  # quadratic: about 16x
  assert peak(blockwise, 4096) * 20 < peak(reference, 4096)


def test_attention_dispatch(rng):
  q, k, v = _qkv(rng)  # T = 13 < the default block: one block each way
  want = attn_ref.dot_product_attention(q, k, v, causal=True, local_window=3)
  for impl in ("auto", "blockwise", "chunked", "reference", "xla"):
    _close(bw.attention(q, k, v, impl=impl, causal=True, local_window=3), want)
  decode = jax.jit(lambda q, k, v, i: bw.attention(q[:, :1], k, v, impl="xla", causal=True,
                                                   query_offset=i),
                   compiler_options=FAST_COMPILE)
  _close(decode(q, k, v, 5), attn_ref.dot_product_attention(q[:, :1], k, v, causal=True,
                                                            query_offset=5))
  with pytest.raises(ValueError, match="impl"):
    bw.attention(q, k, v, impl="flash")
  with pytest.raises(ValueError, match="mask"):
    bw.attention(q, k, v, impl="blockwise", mask=jnp.ones((1, 1, 13, 13), bool))
  with pytest.raises(ValueError, match="local_window"):
    bw.blockwise_attention(q, k, v, local_window=-1)
  with pytest.raises(ValueError, match="block_q"):
    bw.blockwise_attention(q, k, v, block_q=0)


@pytest.mark.parametrize("name,kw", [
    ("transformer", dict(in_features=3, causal=True, local_window=4)),
    pytest.param("transformer", dict(in_features=3, norm="pre"), marks=pytest.mark.slow),
    ("transformer_lm", dict(vocab_size=11)),
    pytest.param("transformer_seq2seq", dict(in_features=3), marks=pytest.mark.slow),
])
def test_transformer_default_equals_reference(name, kw, rng):
  kw = dict(kw, hidden_features=8, num_layers=1, num_heads=2)  # one layer: compile time
  ours = models.create(name, rngs=nnx.Rngs(0), **kw)
  ref = models.create(name, rngs=nnx.Rngs(0), attention_impl="reference", **kw)
  B, T = 2, 10
  if name == "transformer_lm":
    inputs = (jnp.asarray(rng.integers(0, 11, (B, T)), jnp.int32),)
  else:
    x = jnp.asarray(rng.normal(size=(B, T, 3)), jnp.float32)
    inputs = (x,) if name == "transformer" else (x[:, :7], x)
  mask = jnp.arange(T)[None, :] < jnp.array([T, 6])[:, None]
  call_kw = {"mask": mask} if name == "transformer" else {}

  def fn(model):
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    return lambda p: nnx.merge(graphdef, p, rest)(*inputs, **call_kw)

  params = nnx.state(ours, nnx.Param)
  # One compiled program for both paths (op-by-op dispatch costs more than compiling).
  got, want = jax.jit(lambda p: (_value_and_grads(fn(ours), p),
                                 _value_and_grads(fn(ref), p)),
                      compiler_options=FAST_COMPILE)(params)
  _close(got, want)
  with pytest.raises(ValueError, match="attention_impl"):
    models.create(name, rngs=nnx.Rngs(0), attention_impl="flash", **kw)


# ----------------------------------------------------------------------------- bench


@pytest.mark.slow
def test_bench_smoke(tmp_path):
  s = bench.Settings(lengths=(8,), bf16_lengths=None, tokens=16, width=8, head_dim=4,
                     dtypes=("float32",), layers=("lstm", "attention"), repeats=1,
                     min_repeats=1, matmul_sizes=(16, 32), targets=False)
  result = bench.run(s, str(tmp_path), progress=None)
  rows = result["rows"]
  keys = {"layer", "impl", "T", "B", "D", "dtype", "pass", "median_s", "tokens_per_s",
          "peak_bytes", "compile_s"}
  assert all(keys <= set(r) for r in rows)
  got = {(r["layer"], r["impl"], r["pass"]) for r in rows if r["median_s"]}
  for layer, impl in [("lstm", "seqscale"), ("lstm", "seqscale_reference"),
                      ("lstm", "flax_nnx_rnn_lstmcell"), ("attention", "seqscale"),
                      ("attention", "jax_nn_dpa_xla"), ("matmul", "jax")]:
    for pass_ in (("fwd",) if layer == "matmul" else ("fwd", "fwd_bwd")):
      assert (layer, impl, pass_) in got
  md = result["markdown"]
  assert "| lstm | float32 | fwd_bwd | 8 | 2 | seqscale |" in md
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["context"]["cpu_count"] and len(saved["rows"]) == len(rows)
  assert (tmp_path / "tokens_per_s_float32.png").exists()
  assert {r["T"] for r in rows if r["layer"] == "matmul"} == {16, 32}
  assert "Practical peak, float32" in md and saved["peaks"]["float32"]["flops_per_s"] > 0
  with pytest.raises(ValueError, match="layers"):
    bench.measure(bench.Settings(layers=("nope",)))
  with pytest.raises(ValueError, match="dtypes"):
    bench.measure(bench.Settings(dtypes=("float64",)))
  with pytest.raises(ValueError, match="matmul_sizes"):
    bench.Settings(matmul_sizes=())


def test_bench_peak_is_the_best_of_either_library_and_verdicts_compare_to_limits():
  from seqscale.studies import bench_report  # pylint: disable=g-import-not-at-top
  rate = lambda impl, n, dtype, r: {"layer": "matmul", "impl": impl, "T": n, "dtype": dtype,
                                    "flops_per_s": r}
  rows = [rate("jax", 256, "float32", 1e11), rate("torch", 256, "float32", 2e11),
          rate("jax", 1024, "float32", 3e11), rate("torch", 1024, "float32", None),
          rate("jax", 256, "bfloat16", 1e11), rate("torch", 256, "bfloat16", 8e11)]
  peaks = bench.peaks(rows)
  assert (peaks["float32"]["flops_per_s"], peaks["float32"]["impl"], peaks["float32"]["n"]) \
      == (3e11, "jax", 1024)
  assert peaks["float32"]["by_impl"] == {"jax": (1024, 3e11), "torch": (256, 2e11)}
  assert peaks["bfloat16"]["impl"] == "torch"
  assert any("8.0x faster than XLA's" in line
             for line in bench_report.peak_lines(peaks, ["amx_bf16"]))
  group = [{"impl": "seqscale", "median_s": 0.9, "T": 8, "B": 2, "D": 4, "dtype": "float32"},
           {"impl": "torch_nn_lstm", "median_s": 1.0, "T": 8, "B": 2, "D": 4,
            "dtype": "float32"}]
  ok = bench._ratio("lstm", group, "seqscale", "torch_nn_lstm", 0.9)
  late = bench._ratio("lstm", group, "seqscale", "torch_nn_lstm", 0.89)
  assert (ok["measured"], ok["met"], late["met"]) == (pytest.approx(0.9), True, False)
  mfu = bench._verdict("mfu", 0.49, ">=", 0.5, T=8, B=2)
  table = bench_report.targets_table([ok, late, mfu])
  assert table.count("| pass |") == 1 and table.count("| FAIL |") == 2
  assert "| <= 0.9 |" in table and "| >= 0.5 |" in table
