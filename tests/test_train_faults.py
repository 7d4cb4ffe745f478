"""Faults caused for real: SIGTERM, SIGINT, SIGKILL during a save, two runs in one workdir,
damaged checkpoints, a changed config, a full disk, a finished run rerun, unwritable paths.

Every run that resumes must end bit-identical to one uninterrupted reference run (shared by
the module): the loss and accuracy at every logged step, the evaluation and the final
parameters and optimizer state. Every refusal is one line, with no traceback. Only the
signal tests are subprocesses; the rest runs ``train_and_evaluate`` in this process.
"""

import errno
import glob
import json
import os
import platform
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from etils.epath import gpath

from seqscale import train
from seqscale.train import checkpoint as checkpoint_lib
from seqscale.train import faults
from tests.test_train_helpers import (  # pylint: disable=unused-import
    DATA_DIR, ROOT, compile_cache, subprocess_env, tiny)

pytestmark = pytest.mark.usefixtures("compile_cache")

STEPS = 100
FIELDS = {"task.length": 8, "model.hparams.hidden_features": 8, "model.hparams.in_features": 8,
          "num_steps": STEPS, "log_every": 5, "checkpoint_every": 20}  # keeps 60, 80, 100
# The same config as ``tiny(**FIELDS)`` on the command line.
FLAGS = ["--config=experiments/configs/running_sum.py:quick", f"--config.task.data_dir={DATA_DIR}",
         "--config.task.num_train=256", "--config.task.num_eval=64",
         "--config.eval_batch_size=32", *(f"--config.{k}={v}" for k, v in FIELDS.items())]
TIMING = ("steps_per_s", "tokens_per_s")
# A save that never ends: the meta item's write sleeps (the temporary folder exists).
SLOW_SAVE = """
import runpy, sys, time
import orbax.checkpoint as ocp
async def slow(self, item, directory):
  time.sleep(120)
ocp.handlers.JsonCheckpointHandler._save_fn = slow
sys.argv = ["experiments.train", *sys.argv[1:]]
runpy.run_module("experiments.train", run_name="__main__", alter_sys=True)
"""


def config(**fields):
  return tiny(**{**FIELDS, **fields})


def jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def logged(workdir):
  """Every logged step's metrics, timings left out."""
  return [{k: v for k, v in r.items() if k not in TIMING}
          for r in jsonl(os.path.join(workdir, "metrics.jsonl"))]


def assert_same_run(workdir, reference):
  assert logged(workdir) == logged(reference)
  results, expected = (json.load(open(os.path.join(w, "results.json")))
                       for w in (workdir, reference))
  assert results["status"] == "finished" and results["eval"] == expected["eval"]
  assert results["final_train_loss"] == expected["final_train_loss"]
  step, arrays = train.load_arrays(workdir)
  step_ref, expected_arrays = train.load_arrays(reference)
  assert step == step_ref == STEPS and arrays.keys() == expected_arrays.keys()
  for name, value in expected_arrays.items():
    np.testing.assert_array_equal(arrays[name], value, err_msg=name)


def one_line(error):
  text = str(error)
  assert "\n" not in text and "Traceback" not in text and len(text) < 600, text
  return text


def copy_of(reference, tmp_path, name="run"):
  return shutil.copytree(reference, tmp_path / name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, compile_cache):  # pylint: disable=redefined-outer-name
  """The uninterrupted run: ``tiny(**FIELDS)`` into a fresh workdir."""
  del compile_cache
  workdir = str(tmp_path_factory.mktemp("reference"))
  train.train_and_evaluate(config(), workdir)
  return workdir


# -- signals and a second run, as a user's shell causes them (subprocesses) ---------------------

def launch(workdir, *args, code=None):
  python = [sys.executable, "-c", code] if code else [sys.executable, "-m", "experiments.train"]
  return subprocess.Popen([*python, *FLAGS, *args, f"--workdir={workdir}"], cwd=ROOT,
                          env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def finish(proc, timeout=240):
  out, err = proc.communicate(timeout=timeout)
  errors = [l for l in (out + err).splitlines() if l.startswith("error: ")]
  return proc.returncode, errors, out + err


def wait_for(predicate, proc, what):
  deadline = time.time() + 240
  while not predicate():
    assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()}"
    assert time.time() < deadline, what
    time.sleep(0.01)


@pytest.fixture(scope="module")
def signalled(reference, tmp_path_factory):
  """One workdir through SIGTERM (a second run tried meanwhile), SIGKILL during a save, and a
  final rerun; and a finished copy of the reference rerun with another seed. Returns what
  each process did."""
  tmp = tmp_path_factory.mktemp("signals")
  workdir, seen = str(tmp / "run"), {}
  changed = launch(copy_of(reference, tmp, "changed"), "--config.seed=1")
  first = launch(workdir)
  wait_for(lambda: os.path.isdir(os.path.join(workdir, "checkpoints", "20")), first,
           "checkpoint 20")
  os.kill(first.pid, signal.SIGSTOP)  # alive and holding the lock, but not training on
  seen["second"] = finish(launch(workdir)) + (first.pid,)
  os.kill(first.pid, signal.SIGTERM)
  os.kill(first.pid, signal.SIGCONT)
  seen["sigterm"] = finish(first)
  seen["after_sigterm"] = json.load(open(os.path.join(workdir, "results.json")))
  seen["changed"] = finish(changed)

  killed = launch(workdir, code=SLOW_SAVE)
  pattern = os.path.join(workdir, "checkpoints", "*.orbax-checkpoint-tmp*")
  wait_for(lambda: glob.glob(pattern), killed, "a save started")
  killed.send_signal(signal.SIGKILL)
  killed.communicate()
  newest = sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*")))[-1]
  seen["sigkill"] = killed.returncode, glob.glob(pattern), _scalars_in(newest)
  seen["rerun"] = finish(launch(workdir))
  seen["workdir"] = workdir
  return seen


def test_second_run_into_a_live_workdir_is_refused_in_one_line(signalled):
  code, errors, output, pid = signalled["second"]
  assert code == 1 and "Traceback" not in output, output[-3000:]
  assert len(errors) == 1 and output.strip().splitlines()[-1] == errors[0]
  assert f"is in use by pid {pid} on host {platform.node()}" in errors[0]


def test_sigterm_saves_the_step_and_exits_143(signalled):
  code, errors, output = signalled["sigterm"]
  assert code == 128 + signal.SIGTERM and "Traceback" not in output, output[-3000:]
  assert len(errors) == 1 and output.strip().splitlines()[-1] == errors[0]
  step = int(errors[0].split("at step ")[1].split()[0])
  assert 20 <= step < STEPS and f"saved checkpoint {step}" in errors[0]
  partial = signalled["after_sigterm"]
  assert partial["status"] == "interrupted by SIGTERM" and partial["steps_done"] == step
  assert partial["eval"] == {}


def test_changed_seed_is_refused_in_one_line(signalled):
  code, errors, output = signalled["changed"]
  assert code == 1 and "Traceback" not in output, output[-3000:]
  assert len(errors) == 1 and "seed 0 -> 1" in errors[0] and "--config.resume=force" in errors[0]


def test_sigkill_during_a_save_then_resume_equals_the_uninterrupted_run(signalled, reference):
  code, leftovers, logged_scalars = signalled["sigkill"]
  assert code == -signal.SIGKILL and leftovers  # killed with a save half-written
  assert logged_scalars > 0, "the killed run's TensorBoard file holds none of its lines"
  code, errors, output = signalled["rerun"]
  assert code == 0 and not errors and "Traceback" not in output, output[-3000:]
  workdir = signalled["workdir"]
  assert_same_run(workdir, reference)
  assert not glob.glob(os.path.join(workdir, "checkpoints", "*.orbax-checkpoint-tmp*"))
  assert not os.path.exists(os.path.join(workdir, faults.LOCK_FILE))
  # TensorBoard, after its purge of the steps a resume repeated: each step once, equal.
  assert events(workdir) == events(reference)


# -- TensorBoard event files -------------------------------------------------------------------

def _records(path):
  with open(path, "rb") as f:
    data = f.read()
  at = 0
  while at + 12 <= len(data):
    (length,) = struct.unpack("<Q", data[at:at + 8])
    if at + 16 + length > len(data):
      break  # cut short by a kill
    yield data[at + 12:at + 12 + length]
    at += 16 + length


def _scalars_in(path):
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  return sum(len(event_pb2.Event.FromString(r).summary.value) for r in _records(path))


def events(workdir):
  """``{tag: [(step, value)]}`` as TensorBoard shows it: event files in name order, and a
  file's start (``purge_step``) dropping the events at and after its step."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  scalars = {}
  for path in sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))):
    for record in _records(path):
      event = event_pb2.Event.FromString(record)
      if event.HasField("session_log") and event.session_log.status == event.session_log.START:
        scalars = {tag: [(s, v) for s, v in points if s < event.step]
                   for tag, points in scalars.items()}
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return {tag: points for tag, points in scalars.items() if not tag.endswith(TIMING)}


def test_tensorboard_has_no_split_lengths_or_weights(reference):
  tags = events(reference)
  assert "eval_test/loss" in tags and "train/loss" in tags
  assert not [t for t in tags if t.endswith(("/length", "/weight"))]


# -- SIGINT between log lines (in this process: the signal raised at a chosen step) ----------

def test_sigint_mid_interval_saves_and_resume_equals_the_uninterrupted_run(
    reference, tmp_path, monkeypatch):
  polls = []
  poll = checkpoint_lib.Checkpointer.poll

  def poll_then_interrupt(self):  # called once per step; step 37 is not a log step
    polls.append(1)
    if len(polls) == 37:
      signal.raise_signal(signal.SIGINT)
    return poll(self)

  handler = signal.getsignal(signal.SIGINT)
  with monkeypatch.context() as m:
    m.setattr(checkpoint_lib.Checkpointer, "poll", poll_then_interrupt)
    with pytest.raises(train.Interrupted) as info:
      train.train_and_evaluate(config(), str(tmp_path))
  assert info.value.exit_code == 130
  assert "interrupted by SIGINT at step 37 of 100: saved checkpoint 37" in one_line(info.value)
  assert train.load_arrays(str(tmp_path))[0] == 37
  assert signal.getsignal(signal.SIGINT) is handler  # restored
  train.train_and_evaluate(config(), str(tmp_path))
  assert_same_run(str(tmp_path), reference)


# -- damaged checkpoints -----------------------------------------------------------------------

def _damage(workdir, step, what):
  folder = os.path.join(workdir, "checkpoints", str(step))
  if what == "truncated":  # the largest array file cut in half
    path = max(glob.glob(os.path.join(folder, "state", "d", "*")), key=os.path.getsize)
    os.truncate(path, os.path.getsize(path) // 2)
  elif what == "emptied":
    os.truncate(os.path.join(folder, "meta", "metadata"), 0)
  else:
    os.remove(os.path.join(folder, "state", "manifest.ocdbt"))


def test_damaged_checkpoints_are_skipped_and_the_run_equals_the_uninterrupted_one(
    reference, tmp_path, caplog):
  workdir = str(copy_of(reference, tmp_path))
  os.remove(os.path.join(workdir, "results.json"))  # as if stopped after its last save
  _damage(workdir, 100, "truncated")
  _damage(workdir, 80, "emptied")
  with caplog.at_level("WARNING"):
    results = train.train_and_evaluate(config(), workdir)
  skipped = [r.getMessage() for r in caplog.records if "skipping checkpoint" in r.getMessage()]
  assert len(skipped) == 2 and "checkpoint 100 " in skipped[0] and "checkpoint 80 " in skipped[1]
  assert all("\n" not in s and len(s) < 600 for s in skipped)
  assert results["resumed_from_step"] == 60
  assert sorted(os.listdir(os.path.join(workdir, checkpoint_lib.DAMAGED))) == ["100", "80"]
  assert_same_run(workdir, reference)


def test_no_readable_checkpoint_is_one_line_naming_the_folder(reference, tmp_path):
  workdir = str(copy_of(reference, tmp_path))
  for step, what in ((100, "truncated"), (80, "emptied"), (60, "deleted")):
    _damage(workdir, step, what)
  os.remove(os.path.join(workdir, "results.json"))
  with pytest.raises(train.CheckpointError) as info:
    train.train_and_evaluate(config(), workdir)
  assert f"no checkpoint in {workdir}/checkpoints can be read" in one_line(info.value)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["100", "60", "80"]


# -- a changed config --------------------------------------------------------------------------

@pytest.mark.parametrize("fields, says", [
    ({"seed": 1}, "seed 0 -> 1"),
    ({"model.hparams.hidden_features": 16}, "model.hparams.hidden_features 8 -> 16"),
    ({"optimizer.name": "sgd", "batch_size": 16},
     "batch_size 32 -> 16; optimizer.name 'adamw' -> 'sgd'"),
])
def test_a_config_that_changes_the_run_is_refused(reference, tmp_path, fields, says):
  workdir = str(copy_of(reference, tmp_path))
  os.remove(os.path.join(workdir, "results.json"))  # not finished: a resume
  before = open(os.path.join(workdir, "config.json")).read()
  with pytest.raises(ValueError) as info:
    train.train_and_evaluate(config(**fields), workdir)
  assert f"the config differs from checkpoint 100 in {workdir}/checkpoints: {says};" in (
      one_line(info.value))
  assert open(os.path.join(workdir, "config.json")).read() == before


def test_forced_resume_records_each_change_with_its_step(reference, tmp_path):
  workdir = str(copy_of(reference, tmp_path))
  with pytest.raises(train.CheckpointError, match="does not fit the changed config"):
    train.train_and_evaluate(config(**{"num_steps": 110, "resume": "force",
                                       "model.hparams.hidden_features": 16}), workdir)
  results = train.train_and_evaluate(
      config(**{"num_steps": 110, "log_every": 10, "resume": "force",
                "optimizer.learning_rate": 0.01}), workdir)
  assert results["resumed_from_step"] == 100 and results["num_steps"] == 110
  assert results["config_changes"] == [
      {"step": 100, "field": "log_every", "old": 5, "new": 10, "forced": False},
      {"step": 100, "field": "num_steps", "old": 100, "new": 110, "forced": False},
      {"step": 100, "field": "optimizer.learning_rate", "old": 0.003, "new": 0.01,
       "forced": True}]
  assert results["context"]["config"]["optimizer"]["learning_rate"] == 0.01
  assert "optimizer.learning_rate 0.003 -> 0.01 at step 100 (forced)" in open(
      os.path.join(workdir, "results.md")).read()
  assert [r["step"] for r in jsonl(os.path.join(workdir, "metrics.jsonl"))][-2:] == [100, 110]


# -- disk full ---------------------------------------------------------------------------------

def test_disk_full_during_a_save_stops_at_once_and_keeps_the_last_good_checkpoint(
    reference, tmp_path, monkeypatch):
  workdir = str(tmp_path)
  write_text = gpath.PosixGPath.write_text

  def full(self, *args, **kwargs):  # every write into checkpoint 80's temporary folder
    if "/80.orbax-checkpoint-tmp" in str(self):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
    return write_text(self, *args, **kwargs)

  with monkeypatch.context() as m:
    m.setattr(gpath.PosixGPath, "write_text", full)
    with pytest.raises(train.CheckpointError) as info:
      train.train_and_evaluate(config(), workdir)
  message = one_line(info.value)
  assert "saving checkpoint 80" in message and "No space left on device" in message
  assert "the last good checkpoint is step 60" in message
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["20", "40", "60"]
  assert max(r["step"] for r in jsonl(os.path.join(workdir, "metrics.jsonl"))) <= 85
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  assert not os.path.exists(os.path.join(workdir, faults.LOCK_FILE))
  train.train_and_evaluate(config(), workdir)  # the disk has room again
  assert_same_run(workdir, reference)


# -- a finished run, the lock, paths ------------------------------------------------------------

def _snapshot(workdir):
  out = {}
  for path in sorted(glob.glob(os.path.join(workdir, "**"), recursive=True)):
    if os.path.isfile(path):
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = f.read()
  return out


def test_rerunning_a_finished_run_changes_nothing_and_more_steps_continue(
    reference, tmp_path, capsys):
  workdir = str(copy_of(reference, tmp_path))
  before = _snapshot(workdir)
  capsys.readouterr()
  results = train.train_and_evaluate(config(), workdir)
  out = capsys.readouterr().out.strip().splitlines()
  assert out == [f"this run already finished ({STEPS} steps): results in "
                 f"{workdir}/results.json and results.md; raise --config.num_steps to train on"]
  assert _snapshot(workdir) == before
  assert results == json.load(open(os.path.join(workdir, "results.json")))
  more = train.train_and_evaluate(config(num_steps=STEPS + 10), workdir)
  assert more["resumed_from_step"] == STEPS and more["steps_done"] == STEPS + 10
  assert [c["field"] for c in more["config_changes"]] == ["num_steps"]


def test_a_stale_lock_is_taken_over_and_a_live_one_refused(reference, tmp_path, caplog):
  workdir = str(copy_of(reference, tmp_path))
  gone = subprocess.Popen(["true"])
  gone.wait()
  lock = os.path.join(workdir, faults.LOCK_FILE)
  with open(lock, "w") as f:
    json.dump({"host": platform.node(), "pid": gone.pid, "start": "earlier"}, f)
  with caplog.at_level("WARNING"):
    train.train_and_evaluate(config(), workdir)
  assert any(f"taking over the lock of pid {gone.pid}" in r.getMessage() for r in caplog.records)
  assert not os.path.exists(lock)
  with open(lock, "w") as f:
    json.dump({"host": "elsewhere", "pid": 4242, "start": "earlier"}, f)
  with pytest.raises(train.RunError) as info:
    train.train_and_evaluate(config(), workdir)
  assert "is in use by pid 4242 on host elsewhere" in one_line(info.value)
  assert os.path.exists(lock)


@pytest.mark.parametrize("where", ["workdir", "checkpoints", "task.data_dir"])
def test_an_unwritable_path_is_one_line_before_training(tmp_path, where):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  workdir, fields = tmp_path / "run", {}
  if where == "workdir":
    workdir = blocker / "run"
  elif where == "checkpoints":
    os.makedirs(workdir)
    (workdir / "checkpoints").write_text("")
  else:
    fields = {"task.data_dir": str(blocker / "data")}
  with pytest.raises(ValueError) as info:
    train.train_and_evaluate(config(**fields), str(workdir))
  assert re.search(r"=\S+: (cannot be created or written|is a file)", one_line(info.value))
  assert not os.path.exists(workdir / "metrics.jsonl")
