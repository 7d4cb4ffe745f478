"""The seed's running sum three ways, its measured depths, the crossover summary, and the
two experiments end to end."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqscale.studies import crossover as co
from seqscale.studies import running_sum as rs
from seqscale.analysis import sequential_depth
from seqscale.ops import linear_recurrence as lr_ops
from tests.conftest import fast_compile_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- the seed's four numbers

@pytest.mark.parametrize("method", rs.METHODS)
def test_seed_numbers_each_way(method):
  y = rs.RUNNING_SUMS[method](jnp.asarray([2, 5, 3, 7], jnp.int32))
  np.testing.assert_array_equal(np.asarray(y), [2, 7, 10, 17])


def test_seed_demo_rows():
  rows = {r["method"]: r for r in rs.seed_demo()}
  assert list(rows) == list(rs.METHODS)
  for r in rows.values():
    assert r["outputs"] == [2, 7, 10, 17] and r["exact"]
  # Counted by hand from the programs: the input projection (1 matmul), then 4 steps of
  # (h @ W_hh, + x W_ih): 1 + 4 * 2.
  assert rows["rnn_scan"]["sequential_depth"] == 9
  # associative_scan on 4: odd pairs summed (1), the 2 pair sums combined (1), the even
  # positions fixed up (1).
  assert rows["associative_scan"]["sequential_depth"] == 3
  table = rs.seed_table(rs.seed_demo())
  assert "[2, 7, 10, 17]" in table and "attention" in table


def test_attention_running_sum_is_uniform_attention():
  # Independent: mean of the prefix (a lower-triangular average) times t + 1, in float64.
  x = np.random.default_rng(1).integers(0, 10, 37)
  tri = np.tril(np.ones((37, 37)))
  want = (tri / tri.sum(1, keepdims=True)) @ x * np.arange(1, 38)
  got = rs.attention_running_sum(jnp.asarray(x, jnp.int32))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


# ---------------------------------------------------------------- exact integers

@pytest.mark.parametrize("method", ["rnn_scan", "associative_scan"])
def test_integer_sums_exact_at_100k(method):
  x = np.random.default_rng(2).integers(0, 1000, 100_000)  # sums up to ~1e8 < 2**31
  fn, args = rs.program(method, jnp.asarray(x, jnp.int32))
  y = jax.jit(fn)(*args)
  assert y.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(y), np.cumsum(x))


def test_exactness_int32_and_int64():
  out = rs.exactness(100_000)
  assert {(e["method"], e["dtype"]) for e in out} == {
      (m, d) for m in ("rnn_scan", "associative_scan") for d in ("int32", "int64")}
  assert all(e["exact"] for e in out)


@pytest.mark.parametrize("mode,n", [("sequential", 100_000), ("associative", 100_000),
                                    ("chunked", 10_000)])
def test_linear_recurrence_with_unit_decay_is_the_running_sum(mode, n):
  x = np.random.default_rng(3).integers(0, 10, (1, n, 1))
  f = jax.jit(lambda a, b: lr_ops.linear_recurrence(a, b, mode=mode)[0])
  h = f(jnp.ones(x.shape, jnp.int32), jnp.asarray(x, jnp.int32))
  np.testing.assert_array_equal(np.asarray(h), np.cumsum(x, axis=1))


# ---------------------------------------------------------------- measured depth vs n

def _fit(xs, ys):
  """Least squares y = s * x + c; returns (slope, max abs residual)."""
  xs, ys = np.asarray(xs, float), np.asarray(ys, float)
  s, c = np.polyfit(xs, ys, 1)
  return s, float(np.max(np.abs(s * xs + c - ys)))


NS = (8, 16, 32, 64, 128, 256)


def test_running_sum_depths_grow_like_n_log_n_and_constant():
  def measured(method, n):
    fn, args = rs.program(method, rs.digits(n))
    return sequential_depth(fn, *args)
  depths = {m: [measured(m, n) for n in NS] for m in rs.METHODS}
  slope, resid = _fit(NS, depths["rnn_scan"])
  assert slope == pytest.approx(2.0) and resid < 1e-6  # linear in n, 2 primitives a step
  slope, resid = _fit(np.log2(NS), depths["associative_scan"])
  assert slope == pytest.approx(2.0) and resid < 1e-6  # linear in log2 n
  assert len(set(depths["attention"])) == 1  # constant


# Per step of the scan: a_t * h, + b_t (2). Per level of the associative scan: the combine's
# a_y * b_x, + b_y (2), and about 2 levels per doubling of n (up the tree and back down).
@pytest.mark.parametrize("mode,axis,slope", [("sequential", "n", 2.0),
                                             ("associative", "log2 n", 4.0)])
def test_linear_recurrence_mode_depth_growth(mode, axis, slope):
  spec = lambda n: jax.ShapeDtypeStruct((1, n, 2), jnp.float32)
  depths = [sequential_depth(lambda a, b: lr_ops.linear_recurrence(a, b, mode=mode)[0],
                             spec(n), spec(n)) for n in NS]
  xs = NS if axis == "n" else np.log2(NS)
  fitted, resid = _fit(xs, depths)
  assert fitted == pytest.approx(slope, rel=0.05) and resid <= 1.0
  # And not the other growth: doubling n doubles (about) the sequential depth only.
  ratio = depths[-1] / depths[-2]
  assert (ratio > 1.9) if mode == "sequential" else (ratio < 1.2)


# ---------------------------------------------------------------- sweep and crossover

def test_sweep_rows_and_attention_cap():
  rows, skipped = rs.sweep([4, 8], attention_max_n=4, repeats=1)
  assert [(r["method"], r["n"]) for r in rows] == [
      ("rnn_scan", 4), ("associative_scan", 4), ("attention", 4), ("rnn_scan", 8),
      ("associative_scan", 8)]
  assert skipped == [{"method": "attention", "n": 8, "reason": skipped[0]["reason"]}]
  assert "O(n^2)" in skipped[0]["reason"]
  for r in rows:
    assert set(rs.ROW_KEYS) <= set(r) and r["exact"]
    assert r["flops"] > 0 and r["run_s"] > 0 and r["compile_s"] > 0
  assert "not run" in rs.sweep_table(rows, skipped)


def test_sweep_lengths():
  assert rs.sweep_lengths(100_000)[:3] == [4, 8, 16]
  assert rs.sweep_lengths(100_000)[-2:] == [65_536, 100_000]
  assert rs.sweep_lengths(64) == [4, 8, 16, 32, 64]
  assert co.crossover_lengths(65_536)[0] == 128 and co.crossover_lengths(65_536)[-1] == 65_536


def _rows(times):
  return [{"mode": m, "pass": "fwd", "T": T, "run_min_s": s} for (m, T), s in times.items()]


def test_wins_from():
  times = {("sequential", 128): 1.0, ("associative", 128): 0.5,
           ("sequential", 256): 1.0, ("associative", 256): 2.0,
           ("sequential", 512): 1.0, ("associative", 512): 0.9,
           ("sequential", 1024): 1.0, ("associative", 1024): 0.4}
  w = co.wins_from(_rows(times), "associative", "fwd")
  assert w["faster_at"] == [128, 512, 1024] and w["wins_from"] == 512
  assert w["time_ratio_at_longest"] == pytest.approx(0.4)
  times[("associative", 1024)] = 1.5
  w = co.wins_from(_rows(times), "associative", "fwd")
  assert w["wins_from"] is None and "not faster at the longest" in co.describe_win(w)
  w = co.wins_from(_rows({("sequential", 128): 1.0, ("associative", 128): 3.0}),
                   "associative", "fwd")
  assert w["faster_at"] == [] and "never faster" in co.describe_win(w)


def test_measure_recurrence_modes_agree():
  for mode in lr_ops.MODES:
    r = co.measure_recurrence(mode, 200, B=2, D=3, chunk_size=16, repeats=1)
    assert set(co.CROSSOVER_KEYS) <= set(r) and r["pass"] == "fwd"
    assert r["max_abs_diff"] < 1e-4
  r = co.measure_recurrence("chunked", 200, B=2, D=3, chunk_size=16, backward=True, repeats=1)
  assert r["pass"] == "fwd_bwd" and r["run_s"] > 0 and r["compile_s"] > 0


@pytest.mark.parametrize("call,name", [
    (lambda: rs.sweep_lengths(3), "max_n=3"),
    (lambda: co.crossover_lengths(64), "max_t=64"),
    (lambda: rs.measure("lstm", 8), "method='lstm'"),
    (lambda: rs.sweep([4], attention_max_n=0), "attention_max_n=0"),
    (lambda: co.measure_recurrence("parallel", 8, B=1, D=1), "mode='parallel'"),
    (lambda: rs.exactness(8, dtypes=("float32",)), "dtype='float32'"),
])
def test_bad_input(call, name):
  with pytest.raises(ValueError, match=name.replace("(", r"\(")):
    call()


# ---------------------------------------------------------------- end to end

def _run(module, *args, env=None, timeout=600, fast_compile=False):
  env = fast_compile_env(**env or {}) if fast_compile else {**os.environ, **(env or {})}
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, env=env)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stdout


def test_crossover_experiment_quick(tmp_path):
  _run("experiments.crossover", f"--workdir={tmp_path}", "--quick", "--max_t=128",
       "--repeats=1", "--batch=2", "--width=8")
  results = json.load(open(tmp_path / "results.json"))
  assert {(r["mode"], r["pass"], r["T"]) for r in results["rows"]} == {
      (m, p, 128) for m in lr_ops.MODES for p in co.PASSES}
  assert len(results["crossover"]) == 4 and results["settings"]["B"] == 2
  assert (tmp_path / "crossover.png").exists()


def test_bad_settings_name_the_field():
  with pytest.raises(ValueError, match="max_n=2; must be an int >= 4"):
    rs.Settings(max_n=2)
  with pytest.raises(ValueError, match="train_steps=0"):
    rs.Settings(train_steps=0)
  with pytest.raises(ValueError, match=r"train_configs=\['gru'\]: unknown"):
    rs.Settings(train_configs={"gru": None})
  with pytest.raises(ValueError, match="max_t=0"):
    co.Settings(max_t=0)
  with pytest.raises(ValueError, match="chunk_size=0"):
    co.Settings(chunk_size=0)


def test_run_writes_before_training(tmp_path):
  out = rs.run(rs.Settings(max_n=8, repeats=1), str(tmp_path), progress=lambda _: None)
  assert {r["n"] for r in out["rows"]} == {4, 8} and out["training"] == []
  assert "Sequential depth (" in out["markdown"]
  saved = json.load(open(tmp_path / "results.json"))
  assert saved["settings"]["max_n"] == 8 and saved["context"]["jax"]


@pytest.mark.slow
def test_running_sum_experiment_sweeps_and_trains(tmp_path):
  # One run of the experiment: the quick sweep (n up to 64) and a short training of each model.
  out = _run("experiments.running_sum", f"--workdir={tmp_path}", "--quick", "--max_n=64",
             "--train_steps=2", env={"TFDS_DATA_DIR": str(tmp_path / "data")},
             fast_compile=True)  # compiles dominate: 34 -> 25 s of CPU
  assert "[2, 7, 10, 17]" in out
  results = json.load(open(tmp_path / "results.json"))
  assert {r["n"] for r in results["rows"]} == {4, 8, 16, 32, 64}
  for r in results["rows"]:
    assert set(rs.ROW_KEYS) <= set(r)
  assert all(e["exact"] for e in results["exactness"])
  assert results["context"]["backend"] and (tmp_path / "running_sum.png").exists()
  assert [t["model"] for t in results["training"]] == ["lstm", "mingru", "transformer"]
  for t in results["training"]:
    assert t["train_length"] == 32 and t["length_4x"] == 128
    assert 0.0 <= t["accuracy"] <= 1.0 and 0.0 <= t["accuracy_4x"] <= 1.0


@pytest.mark.slow
def test_mingru_associative_trains_like_sequential(tmp_path):
  from experiments.configs import running_sum as config_lib  # pylint: disable=g-import-not-at-top
  from seqscale.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  results = {}
  for mode in ("sequential", "associative"):
    c = config_lib.get_config("quick")
    c.model.name = "mingru"
    c.model.hparams.mode = mode
    c.task.update(length=16, num_train=2000, num_eval=200, data_dir=str(tmp_path / "data"))
    c.num_steps, c.optimizer.warmup_steps, c.checkpoint_every = 100, 20, 100
    results[mode] = train_and_evaluate(c, str(tmp_path / mode))
  seq, assoc = results["sequential"], results["associative"]
  assert assoc["final_train_loss"] == pytest.approx(seq["final_train_loss"], rel=1e-3)
  for split in ("test", "test_4x"):
    assert abs(assoc["eval"][split]["accuracy"] - seq["eval"][split]["accuracy"]) <= 0.01
  # It trained: above chance (0.1); 0.159 at 100 steps with seeds 0, 1 and 2.
  assert seq["eval"]["test"]["accuracy"] > 0.12
