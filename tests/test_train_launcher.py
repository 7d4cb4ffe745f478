"""The launcher as users run it (subprocesses): bad input, and kill -9 then resume."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from seqscale import train
from tests.test_entry_points import HEAVY, LIGHT, run_forked
from tests.test_train_helpers import DATA_DIR, ROOT, losses_of, subprocess_env

QUICK = "experiments/configs/running_sum.py:quick"
SMALL = [f"--config.task.data_dir={DATA_DIR}", "--config.task.num_train=256",
         "--config.task.num_eval=64", "--config.eval_batch_size=32", "--config.task.length=8",
         "--config.model.hparams.hidden_features=32"]


def launch(*args: str, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", "experiments.train", *args], cwd=ROOT,
                          env=env or subprocess_env(), **popen)


# -- bad input: one line, non-zero exit, no traceback -------------------------------------

BAD = {  # case: (config file, overrides, what the message says)
    "unknown model": (QUICK, ["--config.model.name=nosuch"], "unknown model 'nosuch'; known "),
    "unknown task": (QUICK, ["--config.task.name=nosuch"], "unknown task 'nosuch'; known "),
    "unknown config field": (QUICK, ["--config.optimizer.nosuch=1"],
                             "unknown config field 'config.optimizer.nosuch'"),
    "zero length": (QUICK, ["--config.task.length=0"], "config.task.length=0"),
    "negative length": (QUICK, ["--config.task.length=-4"], "config.task.length=-4"),
    "batch not divisible": (QUICK, ["--config.batch_size=6"],
                            "config.batch_size=6 is not divisible by the 4 devices"),
    "workdir is a file": (QUICK, [], "is a file"),
    "missing config file": ("experiments/configs/nosuch.py", [],
                            "config file 'experiments/configs/nosuch.py' does not exist"),
    "bad config argument": ("experiments/configs/running_sum.py:nosuch", [],
                            "config argument 'nosuch'"),
    "non-numeric value": (QUICK, ["--config.num_steps=many"], "--config.num_steps=many"),
    "unknown hparam": (QUICK, ["--config.model.name=transformer",
                               "--config.model.hparams.nosuch=1"],
                       "config.model.hparams.nosuch: model 'transformer' takes no keyword "
                       "'nosuch'; it takes: in_features, hidden_features, num_layers, "
                       "num_heads"),
    # Parsed (rank is None in the config): it gets as far as the workdir check.
    "hparam the config leaves None": ("experiments/configs/flstm.py:quick",
                                      ["--config.model.hparams.rank=4"], "is a file"),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
  """Every bad input, forked from one interpreter that has imported the libraries
  (``test_entry_points.run_forked``: each child runs ``python -m experiments.train ARGS``)."""
  tmp = tmp_path_factory.mktemp("bad")
  a_file = tmp / "a_file"
  a_file.write_text("")
  cases = {}
  for case, (config, args, _) in BAD.items():
    workdir = a_file if BAD[case][2] == "is a file" else tmp / case.replace(" ", "_")
    cases[case] = ("train", [f"--config={config}", *SMALL, *args, f"--workdir={workdir}"])
  env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=4")
  runs = run_forked(cases, str(tmp / "out"), env, LIGHT + HEAVY)
  return {case: (r["code"], r["stdout"], r["stderr"]) for case, r in runs.items()}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_ends_with_one_line(case, bad_runs):
  code, stdout, stderr = bad_runs[case]
  assert code != 0
  assert "Traceback" not in stdout + stderr
  errors = [line for line in (stdout + stderr).splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, stderr[-2000:]
  assert stderr.strip().splitlines()[-1] == errors[0]
  assert BAD[case][2] in errors[0]


# -- kill -9 and resume --------------------------------------------------------------------

@pytest.mark.slow
def test_kill_and_resume_equals_the_uninterrupted_run(tmp_path):
  args = ["--config=" + QUICK, *SMALL, "--config.num_steps=300", "--config.log_every=10",
          "--config.checkpoint_every=20", "--config.model.hparams.hidden_features=64"]
  quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  # The data exists before two runs start at once.
  train.get_task({"name": "running_sum", "length": 8, "num_train": 256, "num_eval": 64,
                  "data_dir": DATA_DIR})
  whole = launch(*args, f"--workdir={tmp_path / 'whole'}", **quiet)
  killed = launch(*args, f"--workdir={tmp_path / 'killed'}", **quiet)
  first = tmp_path / "killed" / "checkpoints" / "20"
  deadline = time.time() + 300
  while not first.is_dir():
    assert killed.poll() is None, "the run ended before it could be killed"
    assert time.time() < deadline
    time.sleep(0.01)
  killed.send_signal(signal.SIGKILL)
  assert killed.wait() == -signal.SIGKILL
  assert not (tmp_path / "killed" / "results.json").exists()
  assert launch(*args, f"--workdir={tmp_path / 'killed'}", **quiet).wait() == 0
  assert whole.wait() == 0

  with open(tmp_path / "killed" / "results.json") as f:
    resumed_from = json.load(f)["resumed_from_step"]
  assert 20 <= resumed_from < 300
  step_a, whole_arrays = train.load_arrays(str(tmp_path / "whole"))
  step_b, resumed_arrays = train.load_arrays(str(tmp_path / "killed"))
  assert step_a == step_b == 300
  assert whole_arrays.keys() == resumed_arrays.keys()
  for name, value in whole_arrays.items():
    np.testing.assert_array_equal(resumed_arrays[name], value, err_msg=name)
  assert losses_of(str(tmp_path / "killed")) == losses_of(str(tmp_path / "whole"))
