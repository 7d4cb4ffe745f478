"""The overview (README's main job): settings checks, the summary arithmetic, and a quick run
end to end through the command line."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, fast_compile_env
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


def _sharding_rows(counts, strategies, sizes, repeats=3):
  """Rows shaped like ``sharding.subprocess_rows``'s (attention halves, the LSTM does not)."""
  del sizes, repeats
  return [dict(strategy=s, devices=n, flops_per_device=100.0 / (n if s.startswith("att") else 1),
               critical_path=257 if s.startswith("lstm") else 13, collective_bytes=64 * (n - 1),
               max_abs_err=0.0, forced_cpu_devices=max(counts), processes=1)
          for n in counts for s in strategies]


@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_one_device_accelerator_measures_sharding_on_forced_cpu_devices(tmp_path, monkeypatch,
                                                                         backend):
  # A one-chip Colab TPU or a single GPU, simulated: what the overview asks of JAX.
  monkeypatch.setattr(overview.jax, "default_backend", lambda: backend)
  monkeypatch.setattr(overview.jax, "device_count", lambda: 1)
  calls = []
  monkeypatch.setattr(overview.sharding, "subprocess_rows",
                      lambda *a, **kw: calls.append(a) or _sharding_rows(*a, **kw))
  monkeypatch.setattr(overview.sharding, "measure", lambda *a, **kw: pytest.fail(
      "measured on the one accelerator instead of forced CPU devices"))
  lines = []
  s = dataclasses.replace(overview.QUICK, sections=("sharding",), sharding_devices=4,
                          sharding_T=32)
  results = overview.run(s, str(tmp_path), progress=lines.append)
  [(counts, strategies, sizes)] = calls
  assert counts == (1, 4) and tuple(strategies) == overview.SHARDING_STRATEGIES
  assert sizes.T == 32
  assert not results["failed"] and results["status"] == "finished"
  where = results["sections"]["sharding"]["where"]
  assert where.startswith("on 4 forced CPU host devices in a subprocess")
  assert f"is 1 {backend} device here" in where
  assert any(where in line for line in lines)
  assert where in (tmp_path / "overview.md").read_text()
  assert os.path.getsize(tmp_path / "sharding.png") > 1000
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk["sections"]["sharding"]["rows"][-1]["forced_cpu_devices"] == 4


def test_failed_section_is_reported_others_kept_each_written_when_done(tmp_path, monkeypatch):
  results_json, md = tmp_path / "results.json", tmp_path / "overview.md"
  seen = {}

  def step_time(s, workdir, progress):
    assert not results_json.exists()  # nothing is written before the first section ends
    return {"rows": [], "plots": []}

  def sharding_fails(s, workdir, progress):
    seen["after_step_time"] = json.loads(results_json.read_text())
    raise RuntimeError("the sharding subprocess\nfailed")

  def parallel_rnn(s, workdir, progress):
    seen["after_sharding"] = json.loads(results_json.read_text())
    seen["md_after_sharding"] = md.read_text()
    return {"summary": "depth 513 -> 97", "rows": [], "plots": []}

  monkeypatch.setattr(overview, "section_step_time", step_time)
  monkeypatch.setattr(overview, "section_sharding", sharding_fails)
  monkeypatch.setattr(overview, "section_parallel_rnn", parallel_rnn)
  lines = []
  s = dataclasses.replace(overview.QUICK, sections=("parallel_rnn", "sharding", "step_time"))
  results = overview.run(s, str(tmp_path), progress=lines.append)

  first, second = seen["after_step_time"], seen["after_sharding"]
  assert first["status"] == "running" and list(first["sections"]) == ["step_time"]
  assert first["pending"] == ["sharding", "parallel_rnn"] and not first["failed"]
  assert list(second["sections"]) == ["step_time"] and second["pending"] == ["parallel_rnn"]
  assert second["failed"]["sharding"]["error"] == "RuntimeError: the sharding subprocess failed"
  assert "raise RuntimeError" in second["failed"]["sharding"]["traceback"]
  assert "`sharding`: RuntimeError: the sharding subprocess failed" in seen["md_after_sharding"]
  assert "not yet run: parallel_rnn." in seen["md_after_sharding"]

  final = json.loads(results_json.read_text())
  assert final == json.loads(json.dumps(results))
  assert final["status"] == "finished" and final["pending"] == []
  assert list(final["sections"]) == ["step_time", "parallel_rnn"]
  assert list(final["failed"]) == ["sharding"]
  assert any("sharding FAILED: RuntimeError" in line for line in lines)
  assert any("parallel_rnn done in" in line for line in lines)
  rows = {r["section"]: r["measured"] for r in final["summary"]}
  assert rows["sharding"] == "FAILED: RuntimeError: the sharding subprocess failed"
  assert rows["parallel_rnn"] == "depth 513 -> 97"
  text = md.read_text()
  assert "1 section(s) failed" in text and "depth 513 -> 97" in text
  assert "Incomplete" not in text
  assert overview_report.failure_line(final) == (
      "1 overview section(s) failed: sharding: RuntimeError: the sharding subprocess failed "
      "(kept: step_time, parallel_rnn; see overview.md and results.json)")
  assert overview_report.failure_line(seen["after_step_time"]) is None


def test_interrupted_training_stops_the_run_keeping_what_was_measured(tmp_path, monkeypatch):
  from seqscale import train  # pylint: disable=g-import-not-at-top

  def interrupted(s, workdir, progress):
    raise train.Interrupted("SIGTERM: stopped after saving step 4", 15)

  monkeypatch.setattr(overview, "section_step_time", lambda *a: {"rows": [], "plots": []})
  monkeypatch.setattr(overview, "section_sharding", interrupted)
  s = dataclasses.replace(overview.QUICK, sections=("step_time", "sharding", "parallel_rnn"))
  with pytest.raises(train.Interrupted):
    overview.run(s, str(tmp_path), progress=lambda line: None)
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk["status"] == "running" and list(on_disk["sections"]) == ["step_time"]
  assert not on_disk["failed"]


@pytest.mark.slow
def test_quick_overview_end_to_end(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "experiments.overview", "--quick",
                         f"--workdir={tmp_path}", "--train_models=lstm",
                         "--train_steps=1"], cwd=ROOT, env=fast_compile_env(),
                        capture_output=True, text=True, timeout=900)  # 47 -> 32 s of CPU
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
