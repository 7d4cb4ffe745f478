"""The Newton impls (ops.newton) inside the recurrent models: stepping one token at a time
equals the full call, and training through the trainer gives the losses of impl reference."""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import ROOT
from seqscale import train
from seqscale.models import recurrent as models


@pytest.mark.parametrize("cls,impl", [(models.RNN, "deer"), (models.GRU, "quasi_deer"),
                                      (models.LSTM, "elk")])
def test_step_by_step_equals_the_newton_full_call(cls, impl):
  model = cls(3, 4, impl=impl, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 6, 3))
  full, _ = model.run(x)
  state = model.init_state(2, 6)
  steps = []
  for t in range(6):
    y, state = model.step(x[:, t], state)
    steps.append(y)
  np.testing.assert_allclose(np.stack(steps, 1), full, atol=2e-6)


def _config(impl: str):
  path = os.path.join(ROOT, "experiments", "configs", "running_sum.py")
  spec = importlib.util.spec_from_file_location("_rs_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("quick")
  c.task.length, c.task.num_train, c.task.num_eval = 8, 64, 32
  c.model.hparams.update(in_features=8, hidden_features=8, impl=impl)
  c.batch_size, c.num_steps, c.log_every, c.checkpoint_every = 8, 6, 1, 0
  c.optimizer.warmup_steps = 1
  return c


def test_lstm_trains_through_the_trainer_with_deer_like_reference(tmp_path):
  losses = {}
  for impl in ("reference", "deer"):
    train.train_and_evaluate(_config(impl), str(tmp_path / impl))
    with open(tmp_path / impl / "metrics.jsonl") as f:
      losses[impl] = [json.loads(line)["loss"] for line in f if line.strip()]
  assert len(losses["deer"]) == 6
  np.testing.assert_allclose(losses["deer"], losses["reference"], rtol=1e-5)
  assert jnp.isfinite(jnp.asarray(losses["deer"])).all()
