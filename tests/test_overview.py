"""The overview (README's main job): settings checks, the summary arithmetic, and a quick run
end to end through the command line."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from seqscale.studies import overview
from seqscale.studies import overview_report


@pytest.mark.parametrize("change, message", [
    (dict(sections=("running_sum", "nope")), "sections=.*subset of running_sum"),
    (dict(sections=()), "sections=.*non-empty"),
    (dict(depth_ns=(4, 1)), "depth_ns=.*ints >= 2"),
    (dict(step_models=("lstm", "gru")), "step_models="),
    (dict(step_width=24), "step_width=24: must be a multiple of 16"),
    (dict(sharding_devices=1), "sharding_devices=1: must be an int >= 2"),
    (dict(sharding_T=250), "sharding_T=250: must be a multiple of 2 x sharding_devices"),
    (dict(repeats=0), "repeats=0"),
    (dict(train_steps=0), "train_steps=0: must be an int >= 1"),
])
def test_bad_settings_name_the_field(change, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(overview.Settings(), **change).check()


def test_default_and_quick_settings_are_valid():
  overview.Settings().check()
  overview.QUICK.check()


def test_training_section_needs_configs(tmp_path):
  with pytest.raises(ValueError, match="train_configs"):
    overview.run(overview.QUICK, str(tmp_path))


def test_sharding_ratios():
  rows = [dict(strategy="attention_compiler", devices=1, flops_per_device=100.0,
               critical_path=13),
          dict(strategy="attention_compiler", devices=2, flops_per_device=52.0,
               critical_path=13),
          dict(strategy="lstm_carry_passing", devices=1, flops_per_device=80.0,
               critical_path=257),
          dict(strategy="lstm_carry_passing", devices=2, flops_per_device=70.0,
               critical_path=257)]
  r = overview_report.sharding_ratios(rows)
  assert r["attention_compiler"]["flops_per_device"] == pytest.approx(0.52)
  assert r["lstm_carry_passing"]["critical_path"] == 1.0
  assert r["lstm_carry_passing"]["devices"] == 2


def test_training_configs_are_set_for_the_overview():
  from experiments.configs import running_sum as config_lib  # pylint: disable=g-import-not-at-top
  s = dataclasses.replace(overview.QUICK, train_steps=40,
                          train_configs={"lstm": config_lib.get_config("quick,lstm")})
  [(name, c)] = overview.training_configs(s).items()
  assert name == "lstm" and c.num_steps == 40 and c.checkpoint_every == 40
  assert c.optimizer.learning_rate == overview.LEARNING_RATES["lstm"]
  assert c.task.length == 8 and c.parallel.num_devices == 1  # quick: tiny data, one device
  assert s.train_configs["lstm"].num_steps != 40  # the settings' config is left as it was


@pytest.mark.slow
def test_quick_overview_end_to_end(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "experiments.overview", "--quick",
                         f"--workdir={tmp_path}", "--train_models=lstm"], cwd=ROOT,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  for i, name in enumerate(overview.SECTIONS, 1):  # a progress line per section
    assert f"[overview {i}/{len(overview.SECTIONS)}] {name} done in" in out
  assert "| running sum of [2, 5, 3, 7] | [2, 7, 10, 17] by all three (exact)" in out
  results = json.loads((tmp_path / "results.json").read_text())
  secs = results["sections"]
  for row in secs["running_sum"]["seed_demo"]:
    assert row["outputs"] == [2, 7, 10, 17]
  # A scan of n steps has depth 2n + 1 here (the seed's n = 4 gives 9): hand-derived.
  for row in secs["running_sum"]["rows"]:
    if row["method"] == "rnn_scan":
      assert row["sequential_depth"] == 2 * row["n"] + 1
  # Attention's work halves on 2 devices; the LSTM's chain does not shorten.
  ratios = overview_report.sharding_ratios(secs["sharding"]["rows"])
  assert ratios["attention_compiler"]["flops_per_device"] < 0.6
  assert ratios["lstm_carry_passing"]["critical_path"] == 1.0
  assert all(r["max_abs_err"] < 1e-4 for r in secs["sharding"]["rows"])
  steps = secs["step_time"]["rows"]
  assert len(steps) == len(overview.STEP_MODELS) * len(overview.QUICK.step_lengths) * 2
  assert all(r["median_s"] > 0 for r in steps)
  [train] = secs["training"]["rows"]
  assert train["model"] == "lstm" and 0 <= train["accuracy"] <= 1
  md = (tmp_path / "overview.md").read_text()
  assert md.index("## Summary") < md.index("## 1.") < md.index("## 6.")
  # Hand-derived reach at T = 8: kernel 3 sees 2L + 1 inputs, dilated kernel 2 sees 2^L.
  kinds = secs["connectivity"]["kinds"]
  assert kinds["conv"]["receptive_field"] == [3, 5, 7, 8]
  assert kinds["dilated_conv"]["receptive_field"] == [2, 4, 8, 8]
  assert kinds["attention"]["receptive_field"] == [8] * 4
  # The LSTM's chain under lax.scan: 8 dependent ops per step (+1); DEER's k iterations
  # each add about 4 log2 T, far less than T.
  prnn = {(r["method"], r["T"]): r for r in secs["parallel_rnn"]["rows"]}
  for T in (64, 256, 1024):
    assert prnn["sequential", T]["sequential_depth"] == 8 * T + 1
    assert prnn["deer", T]["sequential_depth"] < prnn["sequential", T]["sequential_depth"] / 4
  assert md.index("## 6.") < md.index("## 7.")
  for png in ("running_sum.png", "connectivity.png", "story.png", "step_time.png",
              "sharding.png", "training.png", "table1/depth_vs_n.png",
              "parallel_rnn_depth.png"):
    assert f"]({png})" in md and os.path.getsize(tmp_path / png) > 1000
