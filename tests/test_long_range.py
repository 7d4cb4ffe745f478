"""The long-range experiment: solved criterion, early stopping, resume, outputs, bad input."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from seqscale import data
from seqscale import models
from seqscale.studies import long_range

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ the solved criterion

@pytest.mark.parametrize("length", [100, 1000])
def test_baselines_and_thresholds_by_hand(length, tmp_path):
  adding = data.get_task("adding_problem", length=length, data_dir=str(tmp_path))
  copy = data.get_task("copy_memory", length=length, data_dir=str(tmp_path))
  assert long_range.baseline(adding) == pytest.approx(2 * (1 / 12))  # Var(U1 + U2)
  # Memoryless: ln 8 nats on each of the 10 recalled symbols, 0 on T + 10 blanks.
  copy_base = 10 * 2.0794415416798357 / (length + 20)
  assert long_range.baseline(copy) == pytest.approx(copy_base, rel=1e-12)
  assert long_range.is_solved(0.0166, 1 / 6) and not long_range.is_solved(0.0167, 1 / 6)
  assert long_range.is_solved(0.099 * copy_base, copy_base)
  assert not long_range.is_solved(0.101 * copy_base, copy_base)


def test_non_finite_loss_is_not_solved():
  assert not long_range.is_solved(float("nan"), 1.0)
  assert not long_range.is_solved(float("-inf"), 1.0)


# ------------------------------------------------------------------ the early-stopping loop

class _Fake:
  """A train_chunk / evaluate pair with scripted held-out losses and a counting clock."""

  def __init__(self, eval_losses, chunk_seconds=1.0, train_losses=None):
    self.eval_losses, self.chunk_seconds = list(eval_losses), chunk_seconds
    self.train_losses = train_losses
    self.chunks, self.evals, self.now = [], 0, 0.0

  def clock(self):
    return self.now

  def train_chunk(self, start, num, seconds):
    del seconds
    self.chunks.append((start, num))
    self.now += self.chunk_seconds
    loss = 1.0 if self.train_losses is None else self.train_losses[len(self.chunks) - 1]
    return np.full(num, loss)

  def evaluate(self):
    self.evals += 1
    self.now += 100.0  # evaluation time must not count as training time
    return {"loss": self.eval_losses[self.evals - 1]}


def _loop(fake, **kw):
  kw = {"threshold": 0.1, "max_steps": 100, "eval_every": 10, **kw}
  return long_range.train_until_solved(fake.train_chunk, fake.evaluate, clock=fake.clock, **kw)


def test_stops_at_first_evaluation_below_threshold():
  fake = _Fake([0.5, 0.2, 0.05, 0.01, 0.001], chunk_seconds=2.0)
  r = _loop(fake)
  assert r.stop == "solved" and r.solved_step == 30 and r.steps == 30
  assert fake.chunks == [(0, 10), (10, 10), (20, 10)] and fake.evals == 3
  assert r.solve_s == pytest.approx(6.0) and r.train_s == pytest.approx(6.0)
  assert r.eval_s == pytest.approx(300.0)
  assert [h["step"] for h in r.history] == [10, 20, 30]


def test_threshold_is_strict_and_max_steps_stops():
  fake = _Fake([0.1] * 3)  # equal to the threshold: not below it
  r = _loop(fake, max_steps=25)
  assert r.stop == "max_steps" and r.solved_step is None and r.solve_s is None
  assert fake.chunks == [(0, 10), (10, 10), (20, 5)] and r.steps == 25


def test_time_limit_stops_after_an_evaluation():
  fake = _Fake([0.5] * 10, chunk_seconds=4.0)
  r = _loop(fake, max_train_s=10.0)
  assert r.stop == "max_train_s" and r.steps == 30 and fake.evals == 3


def test_nan_training_loss_stops_the_cell():
  fake = _Fake([0.5] * 5, train_losses=[1.0, float("nan")])
  r = _loop(fake)
  assert r.stop.startswith("nan: training loss nan at step 11") and r.solved_step is None
  assert fake.evals == 1


# ------------------------------------------------------------------ settings and models

@pytest.mark.parametrize("kwargs, field", [
    (dict(tasks=["bogus"]), "tasks="), (dict(models=["rnn"]), "models="),
    (dict(lengths=["0"]), "lengths="), (dict(lengths=["ten"]), "lengths="),
    (dict(lengths=[]), "lengths="), (dict(seeds=0), "seeds="),
    (dict(max_steps=0), "max_steps="), (dict(eval_every=-1), "eval_every="),
    (dict(max_train_s=-1.0), "max_train_s="),
])
def test_bad_settings_name_the_field(kwargs, field):
  with pytest.raises(ValueError, match=field):
    long_range.make_settings(**kwargs)
  with pytest.raises(ValueError, match=field):  # the settings check themselves
    long_range.Settings(**{k: tuple(v) if isinstance(v, list) else v
                           for k, v in kwargs.items()})


def test_quick_settings_and_overrides():
  s = long_range.make_settings(True, lengths=["30"], seeds=3)
  assert s.lengths == (30,) and s.seeds == 3 and s.models == ("lstm", "transformer")


@pytest.mark.parametrize("seq_len", [40, 120, 1000, 1020])
def test_wavenet_receptive_field_covers_the_sequence(seq_len):
  hp = long_range.model_hparams("wavenet", seq_len)
  net = models.create("wavenet", rngs=nnx.Rngs(0), **hp)
  assert net.receptive_field >= seq_len
  assert 2 ** (hp["num_layers"] - 1) < seq_len  # one layer fewer would not


# ------------------------------------------------------------------ the experiment

def _run(workdir, *args):
  return subprocess.run([sys.executable, "-m", "experiments.long_range", f"--workdir={workdir}",
                         *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


_SMALL = ("--quick", "--lengths=12", "--models=lstm", "--max_steps=40", "--eval_every=20")


def test_experiment_writes_outputs_and_resumes(tmp_path):
  first = _run(tmp_path, *_SMALL)
  assert first.returncode == 0, first.stderr[-3000:]
  for name in ("long_range.md", "results.json", "adding_problem.png", "copy_memory.png",
               "cells/adding_problem_T12_lstm_s0.json", "cells/copy_memory_T12_lstm_s0.json"):
    assert os.path.getsize(tmp_path / name) > 0, name
  assert "| adding_problem | 12 | lstm |" in first.stdout
  results = json.loads((tmp_path / "results.json").read_text())
  assert len(results["cells"]) == 2 and "jax" in results["context"]
  assert len(results["context"]["loadavg_start"]) == 3
  for row in results["cells"]:
    assert row["steps"] <= 40 and row["threshold"] == pytest.approx(0.1 * row["baseline"])
    assert row["solved"] == (row["final_loss"] < row["threshold"])
  mtimes = {p: os.path.getmtime(tmp_path / "cells" / p) for p in os.listdir(tmp_path / "cells")}

  second = _run(tmp_path, *_SMALL)  # resume: nothing left to train
  assert second.returncode == 0, second.stderr[-3000:]
  assert second.stdout.count("[done earlier, skipped]") == 2
  assert "compile)" in second.stdout
  again = json.loads((tmp_path / "results.json").read_text())
  assert again["cells"] == results["cells"]
  assert mtimes == {p: os.path.getmtime(tmp_path / "cells" / p) for p in mtimes}

  path = str(tmp_path / "cells" / "copy_memory_T12_lstm_s0.json")
  same = long_range.make_settings(True, lengths=["12"], models=["lstm"], max_steps=40,
                                  eval_every=20)
  assert long_range.load_cell(path, same) == results["cells"][1]
  with pytest.raises(ValueError, match="other settings"):  # not reused after a change
    long_range.load_cell(path, long_range.make_settings(True, max_steps=40, eval_every=10))


def test_bad_flag_is_one_error_line(tmp_path):
  proc = _run(tmp_path, "--quick", "--models=lstm,rnn")
  flag = "--models"
  assert proc.returncode != 0
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0], proc.stderr
  assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_quick_experiment(tmp_path):
  # The quick settings, on the one cell whose result is asserted (the LSTM cells and the
  # adding problem are trained end to end by test_experiment_writes_outputs_and_resumes).
  proc = _run(tmp_path, "--quick", "--lengths=20", "--tasks=copy_memory", "--models=transformer")
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / "results.json").read_text())
  assert len(results["cells"]) == 1 and len(results["summary"]) == 1
  assert results["cells"][0]["steps"] <= 300  # QUICK's max_steps
  copy = [r for r in results["cells"] if r["task"] == "copy_memory" and r["length"] == 20
          and r["model"] == "transformer"]
  assert copy[0]["solved"], copy  # a causal transformer looks straight back 30 positions


@pytest.mark.slow
def test_nan_is_recorded_not_raised(tmp_path):
  settings = long_range.make_settings(True, learning_rate=1e30, max_steps=20, eval_every=10)
  row, model = long_range.train_cell("adding_problem", 10, "transformer", 0, settings,
                                     cache=long_range.Cache(str(tmp_path)))
  assert not row["solved"] and row["stop"].startswith("nan"), row["stop"]
  assert isinstance(model.backbone, models.lookup("transformer"))
  assert math.isfinite(row["baseline"])
