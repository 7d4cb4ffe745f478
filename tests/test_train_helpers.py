"""Shared by the trainer tests: small configs, data and compilation caches, a fork's task.

``RunningSumTask`` follows the Task interface of docs/CONTRACT.md without ``seqscale.data``
(``config.task.name = 'tests.test_train_helpers:RunningSumTask'``): digits 0..base-1 in
(token id = digit + 1, 0 is padding), the running sum mod ``base`` out.
"""

import importlib.util
import json
import os
import tempfile

import grain
import jax
import ml_collections
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Generated data and compiled steps are deterministic, so test runs share them.
DATA_DIR = os.path.join(tempfile.gettempdir(), "seqscale_test_tfds")
CACHE_DIR = os.path.join(tempfile.gettempdir(), "seqscale_test_jax_cache")
CACHE_FLAGS = {"jax_compilation_cache_dir": CACHE_DIR,
               "jax_persistent_cache_min_compile_time_secs": 0,
               "jax_persistent_cache_min_entry_size_bytes": 0}
CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "experiments", "configs"))
                 if f.endswith(".py") and not f.startswith("_") and f != "common.py")


@pytest.fixture(scope="module")
def compile_cache():
  """A persistent compilation cache for this module's tests only: the many small runs
  compile the same steps again and again."""
  old = {k: getattr(jax.config, k) for k in CACHE_FLAGS}
  for k, v in CACHE_FLAGS.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()
  yield
  for k, v in old.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()


def subprocess_env(**extra: str) -> dict[str, str]:
  """Environment for a trainer subprocess: CPU, the shared compilation cache."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", **{k.upper(): str(v)
                                                  for k, v in CACHE_FLAGS.items()})
  env.update(extra)
  return env


def load_module(name: str):
  path = os.path.join(ROOT, "experiments", "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tiny(name: str = "running_sum", arg: str | None = "quick", **fields
         ) -> ml_collections.ConfigDict:
  """A config's variant with little data, one step, no periodic checkpoints; ``fields``
  override dotted paths (``**{"task.length": 8}``)."""
  c = load_module(name).get_config(arg)
  c.task.num_train, c.task.num_eval, c.task.data_dir = 256, 64, DATA_DIR
  c.num_steps, c.log_every, c.checkpoint_every, c.eval_every = 1, 1, 0, 0
  c.eval_batch_size = 32
  for key, value in fields.items():
    *path, last = key.split(".")
    node = c
    for p in path:
      node = node[p]
    node[last] = value
  return c


def overrides(config: ml_collections.ConfigDict, prefix: str = "--config") -> list[str]:
  """``--config.a.b=value`` flags for every leaf of ``config``."""
  out = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out += overrides(value, f"{prefix}.{key}")
    else:
      out.append(f"{prefix}.{key}={value}")
  return out


def losses_of(workdir: str) -> list[float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f]

_SPLIT_IDS = {"train": 0, "test": 1, "test_2x": 2, "test_4x": 3}


class RunningSumTask:
  """Running sum modulo ``base``, per position, token inputs."""

  input_type = "tokens"
  output = "per_position"
  target_type = "classes"
  requires_causal = False
  in_features = None

  def __init__(self, length: int = 8, base: int = 4, num_eval: int = 64, seed: int = 0,
               regression: bool = False):
    if length <= 0:
      raise ValueError(f"length={length}; must be a positive integer")
    self.name = "fake_running_sum"
    self.length, self.base, self.num_eval, self.data_seed = length, base, num_eval, seed
    self.vocab_size = base + 1
    self.num_classes = 1 if regression else base
    self.target_type = "regression" if regression else "classes"
    self.train_length = length
    self.eval_splits = {"test": length, "test_2x": 2 * length, "test_4x": 4 * length}
    self.baseline = {"accuracy": 1.0 / base}

  def _batch(self, split: str, index: int, batch_size: int, seed: int, length: int,
             shard_index: int, num_shards: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.data_seed, seed, _SPLIT_IDS[split], index])
    digits = rng.integers(0, self.base, size=(batch_size, length))
    rows = slice(shard_index * batch_size // num_shards,
                 (shard_index + 1) * batch_size // num_shards)
    digits = digits[rows]
    sums = np.cumsum(digits, axis=1) % self.base
    targets = (sums / (self.base - 1)).astype(np.float32) if self.num_classes == 1 else sums
    return {"inputs": (digits + 1).astype(np.int32),
            "targets": targets.astype(np.float32 if self.num_classes == 1 else np.int32),
            "weights": np.ones(digits.shape, np.float32),
            "mask": np.ones(digits.shape, bool)}

  def dataset(self, split: str, *, batch_size: int, seed: int, shard_index: int = 0,
              num_shards: int = 1) -> grain.MapDataset:
    if split == "train":
      length, count = self.length, 2 ** 40
    else:
      length, count = self.eval_splits[split], self.num_eval // batch_size
    return grain.MapDataset.range(count).map(
        lambda i: self._batch(split, i, batch_size, seed, length, shard_index, num_shards))


def test_fake_task_follows_contract():
  task = RunningSumTask(length=5, base=3)
  whole = task.dataset("train", batch_size=4, seed=1)[7]
  halves = [task.dataset("train", batch_size=4, seed=1, shard_index=i, num_shards=2)[7]
            for i in range(2)]
  for key in whole:
    np.testing.assert_array_equal(whole[key], np.concatenate([h[key] for h in halves]))
  assert whole["inputs"].shape == (4, 5) and whole["inputs"].dtype == np.int32
  assert whole["inputs"].min() >= 1 and whole["inputs"].max() < task.vocab_size
  np.testing.assert_array_equal(whole["targets"],
                                np.cumsum(whole["inputs"] - 1, axis=1) % 3)
  assert len(task.dataset("test_2x", batch_size=16, seed=0)) == 4
  assert task.dataset("test_2x", batch_size=16, seed=0)[0]["inputs"].shape == (16, 10)
