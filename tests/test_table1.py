"""Table 1 measured: the analysers on the layers at small sizes, and the experiment end to end."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqscale import analysis
from seqscale.studies import table1
from seqscale.ops import attention
from seqscale.ops import attention as attention_ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = table1.Settings(heads=2, k=3, k_dilated=2, r=4)
KEY = jax.random.PRNGKey(0)
REQUIRED = {"layer", "n", "d", "k", "r", "flops_fwd", "flops_fwd_bwd", "temp_bytes",
            "sequential_depth", "path_length"}


def _args(layer, n, d, config=CFG):
  params = table1.LAYERS[layer].init(KEY, d, config)
  return table1.single_layer(layer, n, config), params, jax.ShapeDtypeStruct((1, n, d),
                                                                             jnp.float32)


def _flops(layer, n, d, config=CFG):
  return analysis.flops(*_args(layer, n, d, config))


def _depth(layer, n, d=8):
  return analysis.sequential_depth(*_args(layer, n, d))


def _path(layer, n, mixing=analysis.COMPUTE, d=4):
  fn, _ = table1.stack(layer, n, d, CFG, KEY)
  x = jax.random.normal(jax.random.PRNGKey(1), (1, n, d))
  return analysis.path_length_by_mixing(fn, x, causal=True, mixing=mixing)


@pytest.mark.parametrize("T,r", [(16, 4), (13, 5), (7, 8)])
def test_blocked_local_attention_equals_masked_attention(T, r):
  q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, T, 2, 4)) for i in range(3))
  masked = jax.jit(lambda q, k, v: attention.dot_product_attention(
      q, k, v, causal=True, local_window=r))
  np.testing.assert_allclose(jax.jit(attention_ops.local_attention, static_argnums=3)(q, k, v, r),
                             masked(q, k, v), atol=1e-6)


# FLOPs.


def test_flops_exponent_in_n_is_2_for_attention_and_1_for_recurrences():
  ns = [128, 512]  # n >= 16 d
  assert table1.fit_exponent(ns, [_flops("self_attention", n, 8) for n in ns]) == pytest.approx(
      2.0, abs=0.12)
  for layer in ("rnn", "restricted_attention", "conv"):
    ns = [16, 64]
    assert table1.fit_exponent(ns, [_flops(layer, n, 8) for n in ns]) == pytest.approx(
        1.0, abs=0.05), layer
  # The masked window does all n^2 work: the finding the table reports.
  ns = [128, 512]
  assert table1.fit_exponent(ns, [_flops("restricted_attention_masked", n, 8)
                                  for n in ns]) > 1.8


def test_flops_exponent_in_d_is_1_for_attention_and_2_for_recurrences():
  ds = [16, 64]  # n = 1024 >= 16 d; at tiny d the softmax's O(n^2 H) would dominate
  assert table1.fit_exponent(ds, [_flops("self_attention", 1024, d)
                                  for d in ds]) == pytest.approx(1.0, abs=0.1)
  ds = [32, 64]
  assert table1.fit_exponent(ds, [_flops("lstm", 16, d) for d in ds]) == pytest.approx(
      2.0, abs=0.1)


def _lstm_flops_bounds(n, d):
  """One LSTM layer over n positions of width d, counted by hand from the shapes:
  ((lo, hi) forward, (lo, hi) forward+backward).

  Matmuls, exactly: x @ w_ih ([n, d] @ [d, 4d], before the scan) is 2 n d 4d = 8 n d^2 and
  h @ w_hh over the n steps as much again: 16 n d^2 forward. The backward pass of each is
  two matmuls of the same size (the input's and the weight's gradients): 48 n d^2 in all.
  Elementwise, per position: three 4d-wide adds (b_ih, xw, b_hh) and the cell's three
  products and one sum (d wide), 16 d; plus 3 sigmoids and 2 tanh, which XLA counts as 0
  to ~5 FLOPs an element each (it expands them): [16, 40] n d forward. The backward pass
  does one to three times the forward's elementwise work: [32, 160] n d in all. Both
  windows are narrower than one missing (or extra) matmul, 8 n d^2, once d >= 16.
  """
  fwd, both = 16 * n * d * d, 48 * n * d * d
  return (fwd + 16 * n * d, fwd + 40 * n * d), (both + 32 * n * d, both + 160 * n * d)


def test_flops_match_hand_counts():
  # LSTM: the matmuls dominate at d = 64 (a wrong trip count, MACs counted as FLOPs or a
  # missing backward matmul falls far outside the windows).
  (lo, hi), (lo_bwd, hi_bwd) = _lstm_flops_bounds(16, 64)
  f, params, x = _args("lstm", 16, 64)
  assert lo <= analysis.flops(f, params, x) <= hi
  assert lo_bwd <= analysis.flops(f, params, x, backward=True, argnums=(0, 1)) <= hi_bwd
  n, d = 32, 16
  # Convolution: 2 d^2 per tap, k taps per position less the k(k-1)/2 that fall on the
  # causal left padding (XLA does not count them), + the bias.
  k = CFG.k
  assert _flops("conv", n, d) == 2 * d * d * (k * n - k * (k - 1) // 2) + n * d
  # Elman RNN: x @ w_ih and h @ w_hh per step dominate (4 n d^2), a few n d elementwise.
  assert _flops("rnn", n, 64) == pytest.approx(4 * n * 64 * 64, rel=0.05)
  # Attention: projections 8 n d^2, scores and weighted values 4 n^2 d, softmax O(n^2 H).
  f = _flops("self_attention", n, d)
  assert 8 * n * d * d + 4 * n * n * d < f < 1.5 * (8 * n * d * d + 4 * n * n * d)


# Sequential depth.


def test_depth_is_flat_for_attention_and_convolutions():
  for layer in ("self_attention", "restricted_attention", "conv", "dilated_conv"):
    assert len({_depth(layer, n) for n in (8, 64, 512)}) == 1, layer


# Each cell's longest chain of dependent primitives from h_(t-1) to h_t, read off its
# equations under the depth rule (an arithmetic primitive is one step, whatever its size;
# slicing a matmul's output into gates is free). A scan of n steps repeats it n times, so
# doubling n adds n times the chain.
STEP_CHAINS = {
    # h' = tanh(xw + h @ w_hh + b_hh)
    "rnn": ("h @ w_hh", "+ xw", "+ b_hh", "tanh"),
    # c' = sigmoid(f) c + sigmoid(i) tanh(g), h' = sigmoid(o) tanh(c'); the gates come from
    # xw + h @ w_hh + b_hh. The c -> c' cycle (2 ops) and the h -> c' -> h' detour are
    # shorter than this one.
    "lstm": ("h @ w_hh", "+ xw", "+ b_hh", "tanh(g)", "sigmoid(i) * tanh(g)",
             "sigmoid(f) c + ...", "tanh(c')", "sigmoid(o) * tanh(c')"),
    # r = sigmoid(xr + hr), n = tanh(xn + r * hn), h' = n + z * (h - n), where
    # (hr, hz, hn) = h @ w_hh + b_hh.
    "gru": ("h @ w_hh", "+ b_hh", "xr + hr", "sigmoid (r)", "r * hn", "xn + ...",
            "tanh (n)", "h - n", "z * (h - n)", "n + ..."),
    # h' = a h + b
    "linear_recurrence_sequential": ("a * h", "+ b"),
}


@pytest.mark.parametrize("layer", sorted(STEP_CHAINS))
def test_depth_is_linear_for_recurrences(layer):
  per_step = len(STEP_CHAINS[layer])
  depths = [_depth(layer, n) for n in (16, 32, 64)]
  assert depths[1] - depths[0] == 16 * per_step
  assert depths[2] - depths[1] == 32 * per_step


def test_depth_is_logarithmic_for_the_associative_scan():
  # jax.lax.associative_scan combines adjacent pairs (one level), scans the n/2 results
  # recursively, then combines once more to fill the even positions (one level): 2 levels
  # per doubling of n, about 2 log2 n in all. A level is one combine (a_j a_i, a_j b_i + b_j)
  # whose b part is a multiply then an add: 2 ops. So depth(4n) - depth(n) = 2 doublings x
  # 2 levels x 2 ops = 8, whatever n (a sequential scan would add 3n x 2).
  ns = [16, 64, 256, 1024, 4096]
  depths = [_depth("linear_recurrence_associative", n, 4) for n in ns]
  assert np.diff(depths).tolist() == [2 * 2 * 2] * (len(ns) - 1)
  assert table1.growth(ns, depths)[0] == "log n"


# Path length.


def test_attention_path_is_constant_and_rnn_path_linear():
  assert _path("self_attention", 4).length == _path("self_attention", 8).length
  assert _path("rnn", 8).length - _path("rnn", 4).length == 4 * 4  # 4 dependent ops a step
  assert _path("rnn", 8, analysis.MIXING).length == 8  # x @ w_ih, then 7 h @ w_hh


def test_gated_cells_are_linear_in_ops_but_one_matmul():
  for layer in ("lstm", "gru", "linear_recurrence_sequential"):
    assert _path(layer, 8).length - _path(layer, 4).length >= 2 * 4, layer  # 2+ ops a step
    assert _path(layer, 8, analysis.MIXING).length == 1, layer


@pytest.mark.parametrize("layer,expected", [
    ("conv", lambda n: math.ceil((n - 1) / (CFG.k - 1))),
    ("separable_conv", lambda n: 2 * math.ceil((n - 1) / (CFG.k - 1))),  # depthwise + pointwise
    ("dilated_conv", lambda n: math.ceil(math.log2(n))),
    ("restricted_attention", lambda n: 3 * math.ceil((n - 1) / CFG.r)),  # v, weights @ v, out
])
def test_stack_paths_count_mixing_ops(layer, expected):
  for n in (16,) if layer == "restricted_attention" else (8, 16):
    r = _path(layer, n, analysis.MIXING)
    assert r.length == expected(n) and not r.approximated


@pytest.mark.parametrize("layer", ["conv", "dilated_conv"])
def test_stack_depth_is_the_least_that_connects_all_positions(layer):
  n, d = 16, 4
  need = table1.LAYERS[layer].stack_layers(n, CFG)
  x = jax.random.normal(KEY, (1, n, d))

  def make(layers):
    fn, _ = table1.stack(layer, n, d, CFG, KEY, num_layers=layers)
    return lambda x: jnp.tanh(fn(x))
  r = analysis.path_length_by_layers(make, x, need + 1, causal=True)
  assert r.length == need  # independent: gradient reachability, layer by layer


def test_associative_scan_path_is_logarithmic():
  lengths = [_path("linear_recurrence_associative", n).length for n in (4, 8, 16)]
  assert lengths[0] < lengths[1] < lengths[2] < _path("linear_recurrence_sequential", 16).length
  # A few ops more per doubling of n (one tree level), not 2 per step.
  assert lengths[2] - lengths[1] <= 6 and lengths[1] - lengths[0] <= 6


# Fits and verdicts.


def test_growth_classes():
  ns = [16, 32, 64, 128, 256]
  assert table1.growth(ns, [7] * 5)[0] == "1"
  assert table1.growth(ns, [3 + 2 * math.log2(n) for n in ns])[0] == "log n"
  assert table1.growth(ns, [5 + 4 * n for n in ns])[0] == "n"
  assert table1.growth(ns, [n * n for n in ns])[0] == "n^2"
  assert table1.growth([16], [3])[0] == "n/a"


def test_bad_config_names_the_field():
  with pytest.raises(ValueError, match="layers="):
    table1.make_settings(layers=["transformerish"])
  with pytest.raises(ValueError, match="n_values="):
    table1.make_settings(n_values=[1, 8])
  with pytest.raises(ValueError, match="multiple of heads"):
    table1.make_settings(d_values=[30])


def _check_results(workdir, layers):
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["context"]["backend"] and "config" in results["context"]
  assert {row["layer"] for row in results["rows"]} == set(layers)
  for row in results["rows"]:
    assert REQUIRED <= set(row), row
    assert row["flops_fwd_bwd"] > row["flops_fwd"] > 0 and row["sequential_depth"] >= 1
  for name in ("table1.md", *results["plots"]):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  return results


@pytest.mark.slow
def test_quick_experiment_end_to_end(tmp_path):
  # Four layer types at one d keep the run short (the d sweep: test_flops_exponent_in_d_...).
  layers = ("self_attention", "rnn", "lstm", "linear_recurrence_associative")
  proc = subprocess.run([sys.executable, "-m", "experiments.table1", "--quick",
                         f"--layers={','.join(layers)}", "--d_values=16",
                         f"--workdir={tmp_path}"],
                        capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| self_attention |" in proc.stdout
  results = _check_results(tmp_path, layers)
  assert "git_commit" in results["context"]  # the experiment passes the full run context
  cells = {c["layer"]: c for c in results["cells"]}
  assert cells["rnn"]["depth"]["class"] == "n" and cells["rnn"]["depth"]["agree"]
  assert cells["self_attention"]["depth"]["class"] == "1"
  assert cells["self_attention"]["depth"]["agree"]
  assert "| rnn | recurrent | O(n d^2) |" in (tmp_path / "table1.md").read_text()
  assert cells["linear_recurrence_associative"]["depth"]["class"] == "log n"
  assert cells["linear_recurrence_associative"]["depth"]["agree"] is False  # the finding
  assert "linear_recurrence_associative, depth**: a linear recurrence" in proc.stdout
  assert all(r["path_length"] is not None for r in results["rows"] if r["n"] == 8)
  # The experiment compiles with --xla_backend_optimization_level=0; same numbers as here.
  row = next(r for r in results["rows"] if r["layer"] == "lstm" and r["n"] == 32)
  config = table1.QUICK
  f, params, x = _args("lstm", 32, config.d_fixed, config)
  (lo, hi), (lo_bwd, hi_bwd) = _lstm_flops_bounds(row["n"], row["d"])  # by hand, not XLA
  assert lo <= row["flops_fwd"] <= hi
  assert lo_bwd <= row["flops_fwd_bwd"] <= hi_bwd
  mem = analysis.memory(f, params, x, backward=True, argnums=(0, 1))
  assert mem is None or row["temp_bytes"] == mem.temp_bytes
