"""seqscale.data: tasks checked against independent computations (Python loops, a small
ListOps evaluator, Python integers), plus the pipeline's promises: determinism, batch i by
random access, host shards, eval padding, on-disk caching, atomic preparation, and the
errors a user sees."""

import io
import math
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from seqscale import data
from seqscale.data import real
from seqscale.data.running_sum import RunningSum

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = {  # Small settings for each synthetic task.
    "running_sum": dict(length=12),
    "adding_problem": dict(length=10),
    "copy_memory": dict(length=6),
    "associative_recall": dict(length=11),
    "algorithmic": dict(length=5, problem="reverse"),
    "listops": dict(length=32),
}


def small(name, tmp_path, **kwargs):
  kw = dict(SYNTHETIC.get(name, {}), num_train=24, num_eval=10, data_dir=str(tmp_path))
  kw.update(kwargs)
  return data.get_task(name, **kw)


def all_examples(task, split, batch_size=8):
  """Every real (weight > 0) example of an eval split, by stacking its batches."""
  ds = task.dataset(split, batch_size=batch_size, seed=0)
  batches = [ds[i] for i in range(len(ds))]
  out = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  w = out["weights"] if out["weights"].ndim == 1 else out["weights"].max(axis=1)
  return {k: v[w > 0] for k, v in out.items()}


# -- registry and errors ------------------------------------------------------------------


def test_task_names_and_unknown_name():
  assert set(SYNTHETIC) | {"imdb_reviews", "lm1b", "mnist"} <= set(data.task_names())
  with pytest.raises(ValueError) as e:
    data.get_task("running_summ")
  assert "'running_summ'" in str(e.value) and "running_sum" in str(e.value)
  assert "listops" in str(e.value)


@pytest.mark.parametrize("name, kwargs, words", [
    ("running_sum", dict(length=0), ["length=0"]),
    ("running_sum", dict(length=-5), ["length=-5"]),
    ("running_sum", dict(num_train=0), ["num_train=0"]),
    ("running_sum", dict(base=1), ["base=1"]),
    ("adding_problem", dict(length=1), ["length=1", "[2,"]),
    ("algorithmic", dict(problem="multiply"), ["problem='multiply'", "'reverse'", "'addition'"]),
    ("algorithmic", dict(problem="addition", length=2), ["length=2", "[3,"]),
    ("listops", dict(min_fraction=1.5), ["min_fraction=1.5"]),
    ("running_sum", dict(lenght=5), ["'lenght'", "length"]),
    ("mnist", dict(length=100), ["length=100", "784"]),
])
def test_bad_task_arguments_name_the_argument(tmp_path, name, kwargs, words):
  with pytest.raises(ValueError) as e:
    data.get_task(name, data_dir=str(tmp_path), **kwargs)
  for w in words:
    assert w in str(e.value), (w, str(e.value))


@pytest.mark.parametrize("kwargs, words", [
    (dict(split="valid", batch_size=4, seed=0), ["split='valid'", "'test_2x'"]),
    (dict(split="train", batch_size=6, seed=0, num_shards=4), ["batch_size=6", "num_shards=4"]),
    (dict(split="train", batch_size=0, seed=0), ["batch_size=0"]),
    (dict(split="train", batch_size=4, seed=0, shard_index=2, num_shards=2), ["shard_index=2"]),
    (dict(split="train", batch_size=4, seed=-1), ["seed=-1"]),
])
def test_bad_dataset_arguments_name_the_argument(tmp_path, kwargs, words):
  task = small("running_sum", tmp_path)
  with pytest.raises(ValueError) as e:
    task.dataset(**kwargs)
  for w in words:
    assert w in str(e.value), (w, str(e.value))


def test_missing_real_datasets_say_what_and_how(tmp_path):
  for name in ("imdb_reviews", "lm1b", "mnist"):
    with pytest.raises(real.DatasetNotPreparedError) as e:
      data.get_task(name, data_dir=str(tmp_path))
    msg = str(e.value)
    assert f"'{name}'" in msg and str(tmp_path) in msg
    assert f"tfds build {name}" in msg and "--file_format=array_record" in msg


# -- task contents ------------------------------------------------------------------------


def test_running_sum_targets_equal_a_python_loop(tmp_path):
  task = small("running_sum", tmp_path, base=7)
  assert (task.vocab_size, task.num_classes, task.output) == (8, 7, "per_position")
  batch = task.dataset("train", batch_size=8, seed=1)[2]
  assert batch["inputs"].dtype == np.int32 and batch["targets"].dtype == np.int32
  for inputs, targets in zip(batch["inputs"], batch["targets"]):
    total, expected = 0, []
    for token in inputs.tolist():
      assert 1 <= token <= 7
      total += token - 1
      expected.append(total % 7)
    assert targets.tolist() == expected
  assert batch["weights"].all() and batch["mask"].all()
  assert task.baseline["xent"] == pytest.approx(math.log(7))


def test_running_sum_at_length_100k(tmp_path):
  start = time.perf_counter()
  task = data.get_task("running_sum", length=100_000, num_train=3, num_eval=1,
                       data_dir=str(tmp_path))
  batch = task.dataset("train", batch_size=2, seed=0)[0]
  assert batch["inputs"].shape == (2, 100_000)
  total = 0
  for t, token in enumerate(batch["inputs"][1].tolist()):
    total += token - 1
    if t % 997 == 0 or t == 99_999:
      assert batch["targets"][1, t] == total % 10
  long = task.dataset("test_4x", batch_size=1, seed=0)[0]
  assert long["inputs"].shape == (1, 400_000)
  digits = long["inputs"][0].astype(np.int64) - 1
  assert long["targets"][0, -1] == int(sum(digits.tolist())) % 10
  assert time.perf_counter() - start < 30


def test_adding_problem_markers_targets_and_baseline(tmp_path):
  task = small("adding_problem", tmp_path, length=21, num_train=2000)
  assert (task.input_type, task.in_features, task.output) == ("features", 2, "pooled")
  assert task.baseline["mse"] == pytest.approx(1 / 6)
  ds = task.dataset("train", batch_size=500, seed=0)
  targets = []
  for i in range(4):
    b = ds[i]
    assert b["inputs"].shape == (500, 21, 2) and b["inputs"].dtype == np.float32
    values, markers = b["inputs"][..., 0], b["inputs"][..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(np.unique(markers)) == {0.0, 1.0}
    assert (markers[:, :10].sum(1) == 1).all() and (markers[:, 10:].sum(1) == 1).all()
    np.testing.assert_allclose(b["targets"], (values * markers).sum(1), rtol=1e-6)
    targets.append(b["targets"])
  targets = np.concatenate(targets).astype(np.float64)
  assert len(targets) == 2000
  # Always predicting the mean (1) has MSE = the target's variance; se of this mean ~0.005.
  assert np.mean((targets - 1.0) ** 2) == pytest.approx(1 / 6, abs=0.02)
  assert np.var(targets) == pytest.approx(task.baseline["mse"], abs=0.02)


def test_copy_memory_layout_and_baseline(tmp_path):
  t = 6
  task = small("copy_memory", tmp_path, length=t)
  assert task.vocab_size == 11 and task.train_length == t
  assert task.sequence_lengths == {"train": 26, "test": 26, "test_2x": 32, "test_4x": 44}
  assert task.baseline["xent"] == pytest.approx(10 * math.log(8) / (t + 20))
  b = task.dataset("train", batch_size=8, seed=0)[0]
  assert b["inputs"].shape == (8, t + 20)
  for inputs, targets in zip(b["inputs"].tolist(), b["targets"].tolist()):
    symbols = inputs[:10]
    assert all(1 <= s <= 8 for s in symbols)
    assert inputs[10:] == [9] * (t - 1) + [10] + [9] * 10
    assert targets == [9] * (t + 10) + symbols
  # The memoryless strategy's cross-entropy on real targets equals the stated baseline.
  blank_part = b["targets"][:, :t + 10]
  assert (blank_part == 9).all()  # -log p(blank) = 0 there
  xent = (b["targets"].shape[0] * 10 * math.log(8)) / b["weights"].sum()
  assert xent == pytest.approx(task.baseline["xent"])
  long = task.dataset("test_4x", batch_size=2, seed=0)[0]
  assert long["inputs"].shape == (2, 4 * t + 20) and (long["inputs"][:, 4 * t + 9] == 10).all()
  assert task.split_baselines["test_4x"]["xent"] == pytest.approx(10 * math.log(8) / 44)


def _digits(ids):
  return "".join("0123456789abcdefghijklmnopqrstuvwxyz"[i - 5] for i in ids)


@pytest.mark.parametrize("problem", ["copy", "reverse", "sort", "addition"])
def test_algorithmic_problems_equal_python(tmp_path, problem):
  base = 7
  task = small("algorithmic", tmp_path, problem=problem, base=base, length=6, num_eval=40)
  assert task.requires_causal and task.vocab_size == base + 5
  for split, s in [("train", 6), ("test_4x", 24)]:
    if split == "train":
      b = task.dataset("train", batch_size=24, seed=0)[0]
    else:
      b = all_examples(task, split)
    assert b["src"].shape[1] == s and b["tgt_out"].shape[1] == s + 1
    assert b["inputs"].shape[1] == 2 * s + 1 == task.sequence_lengths[split]
    longest = 0
    for i in range(len(b["src"])):
      src = b["src"][i][b["src_mask"][i]].tolist()
      tgt = b["tgt_out"][i][b["tgt_weights"][i] > 0].tolist()
      assert tgt[-1] == 3  # EOS
      tgt = tgt[:-1]
      longest = max(longest, len(src))
      if problem == "addition":
        plus = src.index(4)
        a, c = _digits(src[:plus]), _digits(src[plus + 1:])
        assert int(_digits(tgt), base) == int(a, base) + int(c, base)
        assert _digits(tgt) == np.base_repr(int(a, base) + int(c, base), base).lower()
      else:
        expected = {"copy": src, "reverse": src[::-1], "sort": sorted(src)}[problem]
        assert tgt == expected
      # Seq2seq and decoder-only forms agree.
      assert b["tgt_in"][i][:len(tgt) + 1].tolist() == [1] + tgt
      n = len(src)
      assert b["inputs"][i][:n + 1 + len(tgt)].tolist() == src + [2] + tgt
      w = b["weights"][i] > 0
      assert b["targets"][i][w].tolist() == tgt + [3]
      assert np.flatnonzero(w)[0] == n  # the SEP position predicts the first answer token
      assert b["mask"][i].sum() == n + 1 + len(tgt)
    assert longest <= s
  assert longest > 6  # evaluation really is longer than training


def _evaluate_listops(expression):
  """A small independent evaluator: a stack of open operators."""
  stack = []
  for tok in expression.split():
    if tok.startswith("["):
      stack.append([tok])
      continue
    if tok == "]":
      op, *args = stack.pop()
      a, h = sorted(args), len(args) // 2
      median = a[h] if len(a) % 2 else (a[h - 1] + a[h]) // 2  # rounded down, as int(np.median)
      value = {"[MAX": max(a), "[MIN": min(a), "[SM": sum(a) % 10, "[MED": median}[op]
    else:
      value = int(tok)
    if not stack:
      return value
    stack[-1].append(value)
  raise AssertionError(f"unbalanced: {expression}")


def test_listops_answers_equal_an_independent_evaluator(tmp_path):
  words = {d + 1: str(d) for d in range(10)}
  words.update({11: "[MIN", 12: "[MAX", 13: "[MED", 14: "[SM", 15: "]"})
  task = small("listops", tmp_path, length=40, max_depth=6, num_train=40, num_eval=20)
  assert (task.vocab_size, task.num_classes, task.output) == (16, 10, "pooled")
  seen_ops = set()
  for split, length in [("train", 40), ("test", 40), ("test_2x", 80), ("test_4x", 160)]:
    b = all_examples(task, split) if split != "train" else \
        task.dataset("train", batch_size=40, seed=0)[0]
    assert b["inputs"].shape[1] == length
    for inputs, mask, target in zip(b["inputs"], b["mask"], b["targets"]):
      n = int(mask.sum())
      assert (inputs[:n] != 0).all() and (inputs[n:] == 0).all()
      assert math.ceil(0.25 * length) <= n <= length
      expression = " ".join(words[i] for i in inputs[:n].tolist())
      seen_ops |= {w for w in expression.split() if w.startswith("[")}
      assert _evaluate_listops(expression) == target, expression
      assert data.listops.decode(inputs) == expression
  assert seen_ops == {"[MIN", "[MAX", "[MED", "[SM"}


def test_associative_recall_answers_the_queried_value(tmp_path):
  k, v = 5, 4
  task = small("associative_recall", tmp_path, length=11, num_keys=k, num_values=v)
  assert task.vocab_size == k + v + 2 and task.num_classes == v
  b = task.dataset("train", batch_size=24, seed=0)[0]
  for inputs, mask, target in zip(b["inputs"].tolist(), b["mask"], b["targets"]):
    assert inputs[-1] == 0 and not mask[-1] and mask[:-1].all()  # odd length: one pad
    pairs, query = inputs[:8], inputs[9]
    assert inputs[8] == k + v + 1
    table = {}
    for key, value in zip(pairs[0::2], pairs[1::2]):
      assert 1 <= key <= k and k + 1 <= value <= k + v
      assert table.setdefault(key, value) == value  # one dictionary per sequence
    assert table[query] - k - 1 == target


def test_eval_splits_are_1x_2x_4x(tmp_path):
  for name in SYNTHETIC:
    task = small(name, tmp_path)
    n = task.train_length
    assert task.eval_splits == {"test": n, "test_2x": 2 * n, "test_4x": 4 * n}, name
    for split in task.splits:
      b = task.dataset(split, batch_size=4, seed=0)[0]
      assert b["inputs"].shape[:2] == (4, task.sequence_lengths[split]), (name, split)
      assert b["mask"].shape == b["inputs"].shape[:2]
      per_position = task.output == "per_position"
      assert b["weights"].shape == ((4, b["inputs"].shape[1]) if per_position else (4,))
      assert b["targets"].shape == b["weights"].shape
      assert b["weights"].dtype == np.float32 and b["mask"].dtype == bool


# -- the pipeline -------------------------------------------------------------------------


def test_same_seed_same_data_different_seed_different(tmp_path):
  a = small("running_sum", tmp_path / "a", seed=3)
  b = small("running_sum", tmp_path / "b", seed=3)  # regenerated in another data_dir
  c = small("running_sum", tmp_path / "a", seed=4)
  for split in ("train", "test_2x"):
    da, db, dc = (t.dataset(split, batch_size=4, seed=7) for t in (a, b, c))
    np.testing.assert_array_equal(da[1]["inputs"], db[1]["inputs"])
    assert not np.array_equal(da[1]["inputs"], dc[1]["inputs"])
  train = a.dataset("train", batch_size=4, seed=7)
  other = a.dataset("train", batch_size=4, seed=8)
  assert not np.array_equal(train[0]["inputs"], other[0]["inputs"])
  assert not np.array_equal(a.dataset("train", batch_size=4, seed=7)[0]["inputs"],
                            a.dataset("test", batch_size=4, seed=7)[0]["inputs"])


def test_batch_i_by_random_access_equals_iteration_and_epochs_reshuffle(tmp_path):
  task = small("running_sum", tmp_path, num_train=8)
  ds = task.dataset("train", batch_size=4, seed=5)
  it = iter(ds)
  batches = [next(it) for _ in range(6)]
  fresh = task.dataset("train", batch_size=4, seed=5)
  for i in (5, 0, 3):  # any order: the position is the step
    for key in batches[i]:
      np.testing.assert_array_equal(fresh[i][key], batches[i][key])
  rows = lambda bs: sorted(map(tuple, np.concatenate([b["inputs"] for b in bs]).tolist()))
  assert rows(batches[0:2]) == rows(batches[2:4]) == rows(batches[4:6])  # whole epochs
  order = lambda bs: np.concatenate([b["inputs"] for b in bs]).tolist()
  assert order(batches[0:2]) != order(batches[2:4])  # reshuffled per epoch


def test_datasets_pickle_for_grain_workers(tmp_path):
  task = small("listops", tmp_path)
  for split in ("train", "test_4x"):
    ds = task.dataset(split, batch_size=4, seed=1)
    copy = pickle.loads(pickle.dumps(ds))
    for key in ds[2]:
      np.testing.assert_array_equal(copy[2][key], ds[2][key])


def test_shards_partition_the_global_batch(tmp_path):
  task = small("associative_recall", tmp_path)
  for split in ("train", "test_2x"):
    whole = task.dataset(split, batch_size=8, seed=2)
    parts = [task.dataset(split, batch_size=8, seed=2, shard_index=k, num_shards=4)
             for k in range(4)]
    assert len(parts[0]) == len(whole) or split == "train"
    for i in range(2):
      for key in whole[i]:
        np.testing.assert_array_equal(np.concatenate([p[i][key] for p in parts]), whole[i][key])
      assert parts[0][i]["inputs"].shape[0] == 2


def test_eval_split_is_one_padded_pass(tmp_path):
  task = small("copy_memory", tmp_path, num_eval=7)
  ds = task.dataset("test", batch_size=4, seed=0)
  assert len(ds) == 2 == task.num_batches("test", 4)
  b = ds[1]
  assert b["weights"][:3].all() and not b["weights"][3].any() and not b["mask"][3].any()
  rows = np.concatenate([ds[0]["inputs"], b["inputs"][:3]])
  assert len({tuple(r) for r in rows.tolist()}) == 7 == task.num_examples("test")


def test_prepared_data_is_cached_and_keyed_by_parameters(tmp_path, monkeypatch):
  calls = []
  original = RunningSum.generate

  def counting(self, rng, num, length):
    calls.append(length)
    yield from original(self, rng, num, length)

  monkeypatch.setattr(RunningSum, "generate", counting)
  first = small("running_sum", tmp_path)
  first_batch = first.dataset("train", batch_size=4, seed=0)[0]
  path = first.data_path
  files = sorted(f for f in os.listdir(path) if "array_record" in f)
  assert len(files) == 4 and len(calls) == 4  # train + 3 eval splits
  mtimes = [os.stat(os.path.join(path, f)).st_mtime_ns for f in files]

  second = small("running_sum", tmp_path)
  np.testing.assert_array_equal(second.dataset("train", batch_size=4, seed=0)[0]["inputs"],
                                first_batch["inputs"])
  assert len(calls) == 4 and second.data_path == path
  assert [os.stat(os.path.join(path, f)).st_mtime_ns for f in files] == mtimes

  third = small("running_sum", tmp_path, num_train=25)  # another setting, another folder
  assert third.data_path != path and len(calls) == 8
  assert "num_train_25" in third.data_path and "seqscale_running_sum" in third.data_path


def test_a_killed_preparation_leaves_no_half_dataset(tmp_path):
  code = f"""
import os, signal
from seqscale.data.running_sum import RunningSum
from seqscale import data
original = RunningSum.generate
def dying(self, rng, num, length):
  for i, example in enumerate(original(self, rng, num, length)):
    if length == 24 and i == 3:  # midway through test_2x
      os.kill(os.getpid(), signal.SIGKILL)
    yield example
RunningSum.generate = dying
data.get_task("running_sum", length=12, num_train=24, num_eval=10,
              data_dir={str(tmp_path)!r}).dataset("train", batch_size=4, seed=0)
"""
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                        timeout=120)
  assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
  task = small("running_sum", tmp_path)
  config_dir = tmp_path / "seqscale_running_sum" / task.config_name
  assert not (config_dir / "1.0.0").exists()  # no half dataset under the final name
  assert any(p.name.startswith("incomplete") for p in config_dir.iterdir())
  # The next call prepares it whole, identical to a preparation never interrupted.
  assert task.num_examples("test_2x") == 10 and task.num_examples("train") == 24
  clean = small("running_sum", tmp_path / "clean")
  for split in task.splits:
    np.testing.assert_array_equal(task.dataset(split, batch_size=2, seed=0)[4]["targets"],
                                  clean.dataset(split, batch_size=2, seed=0)[4]["targets"])


def test_prepared_real_datasets_are_read(tmp_path):
  """Builds tiny stand-ins for imdb_reviews and mnist (same names and features) with TFDS
  itself, then reads them through the real-dataset tasks."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import registered  # pylint: disable=g-import-not-at-top

  def png(value):
    f = io.BytesIO()
    Image.fromarray(np.full((28, 28), value, np.uint8)).save(f, format="PNG")
    return f.getvalue()

  texts = {"train": [b"good film", b"bad"], "test": [b"fine", b"awful movie!", b"ok"]}
  imdb_cls, mnist_cls = tfds.builder_cls("imdb_reviews"), tfds.builder_cls("mnist")
  with registered.skip_registration():

    class FakeImdb(imdb_cls):
      name, code_path = "imdb_reviews", None

      def _split_generators(self, dl_manager):
        return {s: self._generate_examples(s) for s in texts}

      def _generate_examples(self, split):
        for i, t in enumerate(texts[split]):
          yield i, {"text": t, "label": i % 2}

    class FakeMnist(mnist_cls):
      name, code_path = "mnist", None

      def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(2), "test": self._generate_examples(3)}

      def _generate_examples(self, n):
        for i in range(n):
          yield i, {"image": png(50 * i + 5), "label": i}

  for cls in (FakeImdb, FakeMnist):
    cls(data_dir=str(tmp_path)).download_and_prepare(file_format="array_record")

  imdb = data.get_task("imdb_reviews", length=8, data_dir=str(tmp_path))
  batch = all_examples(imdb, "test_2x", batch_size=2)
  assert batch["inputs"].shape == (3, 16) and imdb.vocab_size == 257
  got = {bytes((row[m] - 1).astype(np.uint8).tolist()): int(y)
         for row, m, y in zip(batch["inputs"], batch["mask"], batch["targets"])}
  assert got == {b"fine": 0, b"awful movie!": 1, b"ok": 0}

  mnist = data.get_task("mnist", data_dir=str(tmp_path))
  batch = all_examples(mnist, "test_4x", batch_size=2)
  assert batch["inputs"].shape == (3, 4 * 784, 1)
  for x, y in zip(batch["inputs"], batch["targets"]):
    np.testing.assert_allclose(x, (50 * y + 5) / 255, rtol=1e-6)
