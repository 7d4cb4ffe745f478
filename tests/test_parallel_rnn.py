"""studies.parallel_rnn: the Lyapunov exponent against hand-derived cases, the settings'
errors, the report's arithmetic, and one tiny end-to-end run (numbers, not shapes)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from seqscale.studies import parallel_rnn as pr
from seqscale.studies import parallel_rnn_report as report


def test_lyapunov_of_a_triangular_linear_map_is_log_of_its_diagonal():
  """h_t = W h_{t-1} + x_t with W upper triangular: J_t = W at every step, Q stays the
  identity (up to signs) and R = W, so the exponents are log 0.9 and log 0.5 exactly."""
  w = jnp.array([[0.9, 0.3], [0.0, 0.5]])
  xs = jnp.asarray(np.random.default_rng(0).standard_normal((50, 2)), jnp.float32)
  got = pr.lyapunov_exponents(lambda h, x: w @ h + x, jnp.zeros(2), xs)
  np.testing.assert_allclose(got, np.log([0.9, 0.5]), atol=1e-6)


def test_largest_lyapunov_of_a_linear_rnn_is_log_spectral_radius():
  """A general W (complex eigenvalues): the largest exponent tends to log max |eig W|."""
  rng = np.random.default_rng(1)
  w = rng.standard_normal((5, 5)) / np.sqrt(5)
  want = np.log(np.max(np.abs(np.linalg.eigvals(w))))
  xs = jnp.zeros((3000, 5))
  got = pr.lyapunov_exponents(lambda h, x: jnp.asarray(w, jnp.float32) @ h + x,
                              jnp.ones(5), xs, num=1)
  assert abs(float(got[0]) - want) < 0.01, (float(got[0]), want)


def test_tanh_rnn_lyapunov_at_its_zero_fixed_point():
  """No biases, no input: h stays 0, J_t = w_hh^T (tanh'(0) = 1): log rho(w_hh)."""
  p = pr.cell_params("rnn", 3, 6, 0.7)
  p = {**p, "b_ih": jnp.zeros(6), "b_hh": jnp.zeros(6)}
  want = np.log(np.max(np.abs(np.linalg.eigvals(np.asarray(p["w_hh"], np.float64)))))
  got = float(pr.rnn_lyapunov(p, jnp.zeros((2000, 3))))
  assert want < 0 and abs(got - want) < 0.01, (got, want)


@pytest.mark.parametrize("changes, message", [
    (dict(cells=("lstm", "transformer")), r"cells=\('lstm', 'transformer'\); must be a "
                                          r"non-empty tuple of names in rnn, lstm, gru"),
    (dict(methods=()), r"methods=\(\); must be a non-empty tuple of names in deer"),
    (dict(widths=(8, 0)), r"widths=\(8, 0\); must be a non-empty tuple of ints >= 1"),
    (dict(lengths=[1024]), r"lengths=\[1024\]; must be a non-empty tuple"),
    (dict(depth_lengths=(64, 512)), r"depth_lengths=\(64, 512\); must be two lengths"),
    (dict(gains=(0.5, -1.0)), r"gains=\(0.5, -1.0\); must be a non-empty tuple of numbers"),
    (dict(repeats=0), r"repeats=0; must be an int >= 1"),
    (dict(memory_limit=0), r"memory_limit=0; must be a number > 0"),
    (dict(depth_cell="mingru"), r"depth_cell='mingru'; allowed: rnn, lstm, gru"),
])
def test_settings_errors_name_the_field(changes, message):
  with pytest.raises(ValueError, match=message):
    pr.Settings(**changes)


def test_crossover_and_ratios_from_rows():
  rows = [pr.row("time", cell="rnn", T=T, D=4, B=1, median_s=s, flops_fwd=f, peak_bytes=10)
          for T, s, f in ((256, 1.0, 100.0), (4096, 16.0, 1600.0))]
  rows += [pr.row("time", cell="rnn", T=T, D=4, B=1, median_s=s, flops_fwd=f, peak_bytes=40)
           for T, s, f in ((256, 3.0, 900.0), (4096, 8.0, 14400.0))]
  for r, impl in zip(rows, ("sequential", "sequential", "deer", "deer")):
    r["impl"] = impl
  got = {r["T"]: r for r in report.ratios(rows)}
  assert (got[256]["time"], got[256]["flops"], got[256]["peak_bytes"]) == (3.0, 9.0, 4.0)
  assert got[4096]["time"] == 0.5
  assert report.crossover(rows) == ["rnn deer: faster than lax.scan at T = 4,096 (time / "
                                    "lax.scan's: 3.00x at T=256, 0.50x at T=4,096)."]


def test_tiny_run_end_to_end(tmp_path):
  """One cell, one width, deer only, no timing or training: exactness, depth at T and 16 T,
  and the gain sweep, written to results.json and results.md."""
  s = pr.Settings(cells=("lstm",), widths=(4,), lengths=(16,), x64_lengths=(),
                  methods=("deer",), depth_width=4, depth_lengths=(16, 256), gains=(0.5,),
                  gain_input_scales=(1.0,), gain_width=4, gain_length=16, time_cells=(),
                  equal_steps=0, train_steps=0)
  out = pr.run(s, str(tmp_path / "w"), progress=lambda line: None)
  rows = out["rows"]
  ex = {r["method"]: r for r in rows if r["kind"] == "exactness"}
  assert ex["deer"]["converged"] and 1 <= ex["deer"]["iterations"] <= 6
  assert ex["deer"]["max_abs_err"] < 1e-5 and ex["deer"]["grad_max_abs_err"] < 1e-5
  growth = report.depth_growth(rows)
  assert growth["sequential"]["ratio"] >= 15  # 129 -> 2049 measured
  # depth / k grows by 4 log2(16) = 16 (two primitives per scan level, up and down)
  assert 0 < growth["deer"]["growth_per_iteration"] <= 4 * np.log2(16) + 2, growth["deer"]
  deer_growth = growth["deer"]["depth1"] - growth["deer"]["depth0"]
  # 48 (k = 3) against lax.scan's 1920 measured
  assert deer_growth < 0.05 * (growth["sequential"]["depth1"] - growth["sequential"]["depth0"])
  gain = {r["method"]: r for r in rows if r["kind"] == "gain"}
  assert gain["deer"]["converged"] and gain["deer"]["lyapunov"] < 0
  saved = json.load(open(tmp_path / "w" / "results.json"))
  assert saved["experiment"] == "parallel_rnn" and len(saved["rows"]) == len(rows)
  for r in saved["rows"]:
    assert set(pr.ROW_KEYS) <= set(r), set(pr.ROW_KEYS) - set(r)
  assert "| lstm | 4 | float32 | 16 |" in open(tmp_path / "w" / "results.md").read()
  assert os.path.exists(tmp_path / "w" / "depth.png")


def test_entry_point_bad_value_is_one_error_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.parallel_rnn", f"--workdir={tmp_path}", "--quick",
       "--gpu_sweep"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == "error: --quick and --gpu_sweep: choose one"
