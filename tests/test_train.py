"""The trainer in one process: configs, losses, schedules, heads, NaN handling, determinism.

Subprocess tests (launcher, kill-and-resume, several devices and hosts) are in
``test_train_launcher.py`` and ``test_train_parallel.py``.
"""

import glob
import json
import math
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from seqscale import parallel, train
from seqscale.train import losses, model as model_lib, optim, step as step_lib
from tests.test_train_helpers import (CONFIGS, DATA_DIR, compile_cache, load_module, losses_of,
                                      tiny)  # pylint: disable=unused-import

pytestmark = pytest.mark.usefixtures("compile_cache")


# -- every config's quick variant: one real training step ---------------------------------

def test_every_task_has_a_config():
  assert {"running_sum", "adding_problem", "copy_memory", "algorithmic", "listops",
          "associative_recall"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_quick_config_trains_one_step(name, tmp_path):
  config = tiny(name)
  results = train.train_and_evaluate(config, str(tmp_path))
  assert math.isfinite(results["final_train_loss"])
  task = train.get_task(config.task.to_dict())
  assert set(results["eval"]) == set(task.eval_splits)
  for split, metrics in results["eval"].items():
    assert metrics["length"] == task.eval_splits[split]
    assert math.isfinite(metrics["loss"]) and metrics["weight"] > 0
  with open(tmp_path / "results.json") as f:
    saved = json.load(f)
  assert saved["eval"] == results["eval"]
  for key in ("jax", "flax", "backend", "device_kind", "device_count", "git_commit", "seed",
              "dtype", "config"):
    assert key in saved["context"]
  assert saved["compile_time_s"] > 0 and saved["wall_time_s"] > saved["compile_time_s"]
  (record,) = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert record["step"] == 1
  assert {"loss", "steps_per_s", "tokens_per_s"} <= set(record)
  assert os.listdir(tmp_path / "checkpoints") == ["1"]  # the final save
  assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
  report = (tmp_path / "results.md").read_text()
  for split in task.eval_splits:  # one table row per split
    assert report.count(f"\n| {split} |") == 1, split


@pytest.mark.parametrize("name", CONFIGS)
def test_config_variants_fit_their_task(name):
  """Every variant a config offers (``MODELS``: ``:<key>`` and ``:quick,<key>``), and its
  default, builds on its task's shapes (``nnx.eval_shape``: no compute)."""
  module = load_module(name)
  args = [None, "quick"] + [a for k in getattr(module, "MODELS", {}) for a in (k, f"quick,{k}")]
  task = train.get_task(tiny(name).task.to_dict())
  batch = task.dataset("train", batch_size=2, seed=0)[0]
  spec = model_lib.TaskSpec.of(task, has_seq2seq="src" in batch, has_qa="story" in batch)
  for arg in args:
    c = train.validate(module.get_config(arg))
    assert c.task.name == task.name or c.task.name.endswith(task.name)
    nnx.eval_shape(lambda: model_lib.build(c.model.name, c.model.hparams.to_dict(), spec,
                                           rngs=nnx.Rngs(0), pooling=c.model.pooling))


# -- learning --------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("arg", ["quick", "quick,transformer"])
def test_running_sum_loss_falls(arg, tmp_path):
  """lstm and a causal transformer on running_sum: the loss falls clearly in 300 steps."""
  config = tiny("running_sum", arg, **{"task.length": 8, "task.num_train": 2000,
                                        "num_steps": 300, "log_every": 50,
                                        "optimizer.warmup_steps": 50})
  train.train_and_evaluate(config, str(tmp_path))
  curve = losses_of(str(tmp_path))
  assert curve[0] > 0.95 * math.log(10)  # starts at chance
  assert curve[-1] < 0.8 * math.log(10), curve
  with open(tmp_path / "results.json") as f:  # what attention ran, chosen for this backend
    context = json.load(f)["context"]
  if arg.endswith("transformer"):
    assert re.match(r"attention: chunked \(CPU\b.*T=8\b", context["attention"]), context
  else:
    assert "attention" not in context


def test_same_seed_same_losses_other_seed_other_losses(tmp_path):
  runs = {}
  for name, seed in (("a", 0), ("b", 0), ("c", 1)):
    config = tiny(**{"num_steps": 5, "seed": seed, "model.hparams.hidden_features": 16})
    train.train_and_evaluate(config, str(tmp_path / name))
    runs[name] = losses_of(str(tmp_path / name))
  assert runs["a"] == runs["b"]
  assert runs["a"] != runs["c"]


def test_rerun_when_finished_returns_the_results(tmp_path):
  """(More in test_train_faults.py: results stay byte-identical, more steps continue.)"""
  config = tiny(**{"num_steps": 3, "model.hparams.hidden_features": 16})
  first = train.train_and_evaluate(config, str(tmp_path))
  again = train.train_and_evaluate(config, str(tmp_path))
  assert again == json.loads(json.dumps(first)) and again["resumed_from_step"] == 0


# -- NaN ---------------------------------------------------------------------------------

def test_nan_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
  # A huge learning rate sends the parameters to Inf within a few steps.
  config = tiny(**{"num_steps": 20, "checkpoint_every": 1, "model.hparams.hidden_features": 16,
                   "optimizer.learning_rate": 1e30, "optimizer.warmup_steps": 2})
  with pytest.raises(train.NonFiniteLossError, match=r"at step (\d+)") as info:
    train.train_and_evaluate(config, str(tmp_path))
  bad_step = int(re.search(r"at step (\d+)", str(info.value)).group(1))
  saved, arrays = train.load_arrays(str(tmp_path))
  assert saved == bad_step - 1
  assert f"last good checkpoint is step {saved}" in str(info.value)
  for name, value in arrays.items():
    assert np.all(np.isfinite(value)), name
  assert not os.path.exists(tmp_path / "results.json")


# -- model / task checks -----------------------------------------------------------------

def test_refuses_a_noncausal_model_on_a_task_that_requires_causality(tmp_path):
  config = tiny("algorithmic", "quick,transformer", **{"model.hparams.causal": False})
  with pytest.raises(ValueError, match="is not causal.*requires a causal model"):
    train.train_and_evaluate(config, str(tmp_path))
  config = tiny("algorithmic", "quick,lstm", **{"model.hparams.bidirectional": True})
  with pytest.raises(ValueError, match="not causal"):
    train.train_and_evaluate(config, str(tmp_path))


def test_seq2seq_model_needs_a_seq2seq_task(tmp_path):
  config = tiny(**{"model.name": "transformer_seq2seq"})
  with pytest.raises(ValueError, match="sequence-to-sequence.*src"):
    train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.parametrize("bad, match", [
    ({"nosuch": 1}, "unknown config field 'nosuch'"),
    ({"optimizer": {"nosuch": 1}}, "unknown config field 'optimizer.nosuch'"),
    ({"task": {"name": "running_sum", "length": 0}}, r"config.task.length=0"),
    ({"task": {"name": "running_sum", "length": -5}}, r"config.task.length=-5"),
    ({"batch_size": 0}, r"config.batch_size=0"),
    ({"parallel": {"strategy": "spmd"}}, "allowed: jit, pmap"),
    ({"optimizer": {"schedule": "linear"}}, "allowed: cosine, rsqrt, constant"),
    ({"prefetch": -1}, r"config.prefetch=-1; must be an integer >= 0"),
    ({"model": {"hparams": {"dtype": "bf16"}}},
     r"config.model.hparams.dtype='bf16'; allowed: float32, bfloat16, float16, float64"),
])
def test_validate_names_the_bad_field(bad, match):
  with pytest.raises(ValueError, match=match):
    train.validate(ml_collections.ConfigDict(bad))


def test_workdir_that_is_a_file(tmp_path):
  path = tmp_path / "file"
  path.write_text("")
  with pytest.raises(ValueError, match="is a file"):
    train.train_and_evaluate(tiny(), str(path))


def test_unknown_model_and_task(tmp_path):
  with pytest.raises(ValueError, match="unknown model 'nosuch'; known models: .*lstm"):
    train.train_and_evaluate(tiny(**{"model.name": "nosuch"}), str(tmp_path))
  with pytest.raises(ValueError, match="unknown task 'nosuch'; known tasks: .*running_sum"):
    train.train_and_evaluate(tiny(**{"task.name": "nosuch"}), str(tmp_path))


def test_a_forks_task_and_model_by_dotted_path(tmp_path):
  """A task and a model outside the registries, both as 'package.module:Class'."""
  config = ml_collections.ConfigDict({
      "task": {"name": "tests.test_train_helpers:RunningSumTask", "length": 6, "base": 3,
               "regression": True},
      "model": {"name": "forks.example.cummean:CumulativeMean",
                "hparams": {"hidden_features": 8}},
      "batch_size": 8, "num_steps": 2, "log_every": 1, "checkpoint_every": 0,
      "eval_batch_size": 16})
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["target_type"] == "regression" and "accuracy" not in results["eval"]["test"]
  assert math.isfinite(results["eval"]["test_4x"]["loss"])


def test_every_registered_model_traces_a_train_step():
  """Each registry model, with the task head that fits it, traces the train step (shapes
  and wiring; ``jax.eval_shape``, no compilation)."""
  from seqscale import data, models  # pylint: disable=g-import-not-at-top
  small = dict(num_train=64, num_eval=16, data_dir=DATA_DIR)
  tasks = {"sequence": data.get_task("running_sum", length=6, **small),
           "seq2seq": data.get_task("algorithmic", length=4, **small)}
  tasks["lm"] = tasks["sequence"]
  if "babi_like" in data.task_names():
    tasks["qa"] = data.get_task("babi_like", length=3, **small)
  for name in models.names():
    task = tasks.get(models.lookup(name).interface)
    if task is None:
      continue
    batch = task.dataset("train", batch_size=4, seed=0)[0]
    spec = model_lib.TaskSpec.of(task, has_seq2seq="src" in batch, has_qa="story" in batch)
    hparams = {"hidden_features": 8}  # every other keyword at the model's default

    def make():
      model = model_lib.build(name, hparams, spec, rngs=nnx.Rngs(0))
      return model, nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    graphdef, state = nnx.split(nnx.eval_shape(make))
    _, metrics = jax.eval_shape(step_lib.make_train_step(graphdef), state, batch)
    assert metrics["loss"].shape == (), name


# -- pieces ------------------------------------------------------------------------------

def test_metric_sums_match_a_numpy_loop(rng):
  logits = rng.normal(size=(3, 5, 4)).astype(np.float32)
  targets = rng.integers(0, 4, size=(3, 5))
  weights = (rng.random((3, 5)) > 0.3).astype(np.float32)
  weights[2] = 0.0  # an all-padding example
  sums = {k: float(v) for k, v in losses.metric_sums(jnp.asarray(logits), jnp.asarray(targets),
                                                     jnp.asarray(weights), False).items()}
  loss = correct = 0.0
  for b in range(3):
    for t in range(5):
      z = logits[b, t] - logits[b, t].max()
      loss += weights[b, t] * (np.log(np.exp(z).sum()) - z[targets[b, t]])
      correct += weights[b, t] * (logits[b, t].argmax() == targets[b, t])
  np.testing.assert_allclose(sums["loss"], loss, rtol=1e-5)
  assert sums["correct"] == correct and sums["weight"] == weights.sum()
  hit = logits.argmax(-1) == targets
  assert sums["seqs"] == 2
  assert sums["seq_correct"] == sum(all(hit[b][weights[b] > 0]) for b in range(2))
  means = losses.finalize(sums)
  np.testing.assert_allclose(means["loss"], loss / weights.sum(), rtol=1e-5)
  mse = losses.metric_sums(jnp.ones((2, 3)), jnp.zeros((2, 3)), jnp.ones((2, 3)), True)
  assert float(mse["loss"]) == 6.0 and "correct" not in mse


def test_rsqrt_schedule_is_the_papers():
  d, warmup = 512, 4000
  lr = optim.schedule("rsqrt", learning_rate=1.0, warmup_steps=warmup, num_steps=10**5,
                      model_dim=d)
  for step in (0, 100, 3999, 4000, 10_000, 99_999):
    n = step + 1
    np.testing.assert_allclose(float(lr(step)), d**-0.5 * min(n**-0.5, n * warmup**-1.5),
                               rtol=1e-5)
  peak = max(float(lr(s)) for s in range(3990, 4010))
  np.testing.assert_allclose(peak, d**-0.5 * warmup**-0.5, rtol=1e-3)


def test_cosine_schedule_warms_up_and_decays():
  lr = optim.schedule("cosine", learning_rate=1e-3, warmup_steps=10, num_steps=110)
  assert float(lr(0)) == 0.0
  np.testing.assert_allclose(float(lr(10)), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(float(lr(60)), 0.5e-3, rtol=1e-4)
  assert float(lr(110)) < 1e-9


def test_gradient_clipping_is_applied():
  tx, _ = optim.make(dict(train.default_config().optimizer.to_dict(), name="sgd", b1=0.0,
                          schedule="constant", warmup_steps=0, learning_rate=1.0,
                          clip_norm=1.0), num_steps=10, model_dim=8)
  params = {"w": jnp.zeros(4)}
  updates, _ = tx.update({"w": jnp.full(4, 10.0)}, tx.init(params), params)
  np.testing.assert_allclose(float(optax.tree.norm(updates)), 1.0, rtol=1e-5)


def test_pooling():
  y = jnp.arange(2 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 1)
  mask = jnp.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
  np.testing.assert_allclose(model_lib.pool(y, mask, "mean")[:, 0], [1.0, 5.5])
  np.testing.assert_allclose(model_lib.pool(y, mask, "last")[:, 0], [2.0, 7.0])


def test_cluster_from_config_and_environment(monkeypatch):
  for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(var, raising=False)
  assert parallel.cluster_from() is None
  assert parallel.cluster_from("10.0.0.1:1234", 4, 2) == parallel.Cluster("10.0.0.1:1234", 4, 2)
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "h:1")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  assert parallel.cluster_from() == parallel.Cluster("h:1", 2, 1)
  monkeypatch.setenv("JAX_PROCESS_ID", "2")
  with pytest.raises(ValueError, match="process_id=2"):
    parallel.cluster_from()
  monkeypatch.delenv("JAX_NUM_PROCESSES")
  with pytest.raises(ValueError, match="num_processes=0"):
    parallel.cluster_from()


def test_eval_mode_turns_dropout_off():
  from seqscale.train import trainer  # pylint: disable=g-import-not-at-top
  config = train.validate(tiny(**{"model.hparams.num_layers": 2,
                                  "model.hparams.dropout_rate": 0.5}))
  task = train.get_task(config.task.to_dict())
  built = trainer._model(config, task, task.dataset("train", batch_size=2, seed=0)[0])
  state = jax.jit(built.init)()
  assert not nnx.merge(built.graphdef, state)[0].backbone.dropout.deterministic
  assert nnx.merge(built.eval_graphdef, state)[0].backbone.dropout.deterministic


def test_moe_balancing_loss_reaches_the_trainer(tmp_path):
  """The MoE's recorded load-balancing loss is added to the training loss and logged."""
  config = tiny("moe")
  train.train_and_evaluate(config, str(tmp_path))
  (record,) = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert record["aux_loss"] > 0


# -- prefetch ------------------------------------------------------------------------------

def test_prefetch_makes_the_same_items_ahead_in_a_thread_and_reraises():
  import threading  # pylint: disable=g-import-not-at-top
  from seqscale.data.prefetch import Prefetch  # pylint: disable=g-import-not-at-top
  made, three_made = [], threading.Event()

  def make(i):
    made.append((i, threading.get_ident()))
    if len(made) == 3:
      three_made.set()
    if i == 7:
      raise OSError(f"cannot read batch {i}")
    return {"batch": np.full(2, i)}

  with Prefetch(make, range(4, 9), depth=2) as batches:
    assert three_made.wait(60)  # 4, 5 queued and 6 made before anyone asked
    assert all(thread != threading.get_ident() for _, thread in made)
    for i in (4, 5, 6):
      np.testing.assert_array_equal(batches.next(i)["batch"], [i, i])
    with pytest.raises(OSError, match="cannot read batch 7"):
      batches.next(7)
  assert [i for i, _ in made] == [4, 5, 6, 7]
  with Prefetch(make, range(3), depth=1) as blocked:  # closes while the thread waits
    with pytest.raises(ValueError, match="index=1 is out of order; the next one is 0"):
      blocked.next(1)
  inline = Prefetch(lambda i: (i, threading.get_ident()), range(2), depth=0)
  assert [inline.next(i) for i in range(2)] == [(i, threading.get_ident()) for i in range(2)]


def test_resume_with_prefetch_equals_the_uninterrupted_run_without(tmp_path):
  """A run without prefetch, and a resume from its step-2 checkpoint with prefetch on,
  train on the same batches: losses and final parameters bit-identical."""
  import shutil  # pylint: disable=g-import-not-at-top
  fields = {"num_steps": 5, "model.hparams.hidden_features": 16}  # as test_same_seed's
  train.train_and_evaluate(tiny(**fields, checkpoint_every=2, prefetch=0),
                           str(tmp_path / "whole"))
  shutil.copytree(tmp_path / "whole" / "checkpoints" / "2",
                  tmp_path / "resumed" / "checkpoints" / "2")
  resumed = train.train_and_evaluate(tiny(**fields, prefetch=2), str(tmp_path / "resumed"))
  assert resumed["resumed_from_step"] == 2
  assert losses_of(str(tmp_path / "resumed")) == losses_of(str(tmp_path / "whole"))[2:]
  (_, whole), (_, again) = (train.load_arrays(str(tmp_path / n)) for n in ("whole", "resumed"))
  assert whole.keys() == again.keys()
  for name, value in whole.items():
    np.testing.assert_array_equal(again[name], value, err_msg=name)
