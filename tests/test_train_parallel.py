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




def test_pmap_draws_dropout_and_noise_per_device():
  """Both devices get the same rows. The pmap train step of a one-parameter model with
  dropout has the mean loss of that model called eagerly with its key folded with device
  0 and with device 1 (the two differ; with the replicated keys every device drew the same
  mask), and a noisy MoE layer gives each device its own output. The keys come back
  replicated and unchanged. Without randomness pmap and jit agree:
  ``test_jit_pmap_and_one_device_agree``."""
  code = """
import jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
from seqscale.models import moe
from seqscale.train import step as step_lib
stack = lambda t: jax.tree.map(lambda x: jnp.broadcast_to(x, (2,) + x.shape), t)
key_data = lambda t: [np.asarray(jax.random.key_data(k)) for k in jax.tree.leaves(t)]

class Scale(nnx.Module):
  interface, regression = "sequence", True
  def __init__(self):
    self.w = nnx.Param(jnp.full((), 0.5))
    self.dropout = nnx.Dropout(0.5, rngs=nnx.Rngs(0))
  def __call__(self, batch):
    return self.dropout(batch["inputs"] * self.w)

batch = {"inputs": jnp.arange(1.0, 25.0).reshape(4, 6), "targets": jnp.zeros((4, 6)),
         "weights": jnp.ones((4, 6))}
model = Scale()
keys = jax.tree.map(lambda k: k, nnx.state(model, nnx.RngKey))  # copies
graphdef, state = nnx.split((model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)))
new, metrics = jax.pmap(step_lib.make_train_step(graphdef, "batch"), axis_name="batch")(
    stack(state), stack(batch))
back = nnx.state(nnx.merge(graphdef, new)[0], nnx.RngKey)
per_device = []
for index in range(2):
  reference = Scale()
  nnx.update(reference, jax.tree.map(lambda k: jax.random.fold_in(k, index), keys))
  per_device.append(float(jnp.mean(reference(batch) ** 2)))
print("step", repr(float(metrics["loss"][0])), *map(repr, per_device),
      all((b == a).all() for a, b in zip(key_data(keys), key_data(back))))

layer = moe.MoE(2, 2, 4, num_experts=2, k=1, noisy_gating=True, rngs=nnx.Rngs(0))
graphdef, state = nnx.split(layer)
def call(state, x):
  layer = nnx.merge(graphdef, state)
  keys = step_lib.fold_device_index(layer, "batch")
  y = layer(x)
  nnx.update(layer, keys)
  return y, nnx.state(layer, nnx.RngKey)
y, back = jax.pmap(call, axis_name="batch")(stack(state), stack(jnp.ones((3, 5, 2))))
print("moe", float(jnp.abs(y[0] - y[1]).max()), all(
    (b == a).all() for a, b in zip(key_data(nnx.state(layer, nnx.RngKey)), key_data(back))))
"""
  out = run_with_devices(code, 2)
  lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
  pmap_loss, device0, device1, keys_back = lines["step"]
  assert keys_back == "True", lines
  assert abs(float(device0) - float(device1)) > 1e-3, lines
  np.testing.assert_allclose(float(pmap_loss), (float(device0) + float(device1)) / 2, rtol=1e-6)
  difference, keys_back = lines["moe"]
  assert float(difference) > 1e-3 and keys_back == "True", lines
