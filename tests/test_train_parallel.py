"""Data parallel training equals one device: jit over a mesh and pmap on 4 CPU devices, and
2 processes on 127.0.0.1 (``jax.distributed``, gloo). Each runs in subprocesses, since the
device count is fixed when JAX starts."""

import json
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import run_with_devices
from tests.test_train_helpers import (CACHE_FLAGS, ROOT, losses_of, overrides,
                                      subprocess_env, tiny)

pytestmark = pytest.mark.slow


def _eval_losses(workdir) -> dict[str, float]:
  with open(workdir / "results.json") as f:
    return {k: v["loss"] for k, v in json.load(f)["eval"].items()}


def test_jit_pmap_and_one_device_agree(tmp_path):
  code = f"""
import os
os.environ.update({ {k.upper(): str(v) for k, v in CACHE_FLAGS.items()} !r})
import jax, ml_collections
from seqscale import train
assert jax.device_count() == 4
config = ml_collections.ConfigDict({tiny(**{"num_steps": 8,
                                            "model.hparams.hidden_features": 16}).to_dict()!r})
for name, strategy, devices in [("one", "jit", 1), ("jit", "jit", 0), ("pmap", "pmap", 0)]:
  config.parallel.strategy, config.parallel.num_devices = strategy, devices
  results = train.train_and_evaluate(config, os.path.join({str(tmp_path)!r}, name))
  print(name, results["context"]["num_devices"], results["context"]["strategy"])
"""
  out = run_with_devices(code, 4)
  assert "one 1 jit" in out and "jit 4 jit" in out and "pmap 4 pmap" in out
  one = losses_of(str(tmp_path / "one"))
  assert len(one) == 8
  for name in ("jit", "pmap"):
    np.testing.assert_allclose(losses_of(str(tmp_path / name)), one, rtol=2e-5)
    evals = _eval_losses(tmp_path / name)
    for split, loss in _eval_losses(tmp_path / "one").items():
      np.testing.assert_allclose(evals[split], loss, rtol=2e-5)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_agree_with_one(tmp_path):
  config = tiny(**{"num_steps": 8, "checkpoint_every": 4, "model.hparams.hidden_features": 16})
  flags = ["--config=experiments/configs/running_sum.py:quick", *overrides(config)]
  run = lambda *extra, env=None: subprocess.Popen(
      [sys.executable, "-m", "experiments.train", *flags, *extra], cwd=ROOT,
      env=env or subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  single = run(f"--workdir={tmp_path / 'one'}")  # also prepares the data for the two below
  out, _ = single.communicate(timeout=300)
  assert single.returncode == 0, out[-3000:]

  address = f"127.0.0.1:{_free_port()}"
  env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
  procs = [run(f"--workdir={tmp_path / 'two'}", f"--config.parallel.coordinator_address={address}",
               "--config.parallel.num_processes=2", f"--config.parallel.process_id={i}", env=env)
           for i in range(2)]
  for proc in procs:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
  with open(tmp_path / "two" / "results.json") as f:
    context = json.load(f)["context"]
  assert context["process_count"] == 2 and context["device_count"] == 4
  np.testing.assert_allclose(losses_of(str(tmp_path / "two")), losses_of(str(tmp_path / "one")),
                             rtol=2e-5)
  evals = _eval_losses(tmp_path / "two")
  for split, loss in _eval_losses(tmp_path / "one").items():
    np.testing.assert_allclose(evals[split], loss, rtol=2e-5)
  assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["4", "8"]
