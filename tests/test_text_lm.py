"""Real text: the stdlib corpus and its TFDS builder, tokenizers, windows, bits per
character, tiny_shakespeare on a prepared stand-in, the sizes, the study's budget loop, and
one tiny training run through the trainer and ``generate``."""

import hashlib
import math
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath
from flax import nnx

from seqscale import data
from seqscale import outputs
from seqscale import train
from seqscale.data import real
from seqscale.data import text
from seqscale.studies import text_lm
from seqscale.train import evaluate as evaluate_lib
from seqscale.train import model as model_lib

SAMPLE = "def f(x):\n    return x + 1  # café ✓\n"


def test_byte_tokens_are_the_utf8_bytes():
  tok = text.Tokenizer("bytes")
  assert tok.vocab_size == 256 and tok.unknown(SAMPLE) == []
  assert tok.encode(SAMPLE).tolist() == list(SAMPLE.encode("utf-8"))
  assert tok.decode(tok.encode(SAMPLE)) == SAMPLE


def test_char_tokens_index_the_sorted_training_characters_and_0_is_unknown():
  tok = text.Tokenizer.fit("chars", "cab")
  assert tok.vocab_size == 4
  ids = {c: i + 1 for i, c in enumerate(sorted("abc"))}
  assert tok.encode("abcxa").tolist() == [ids["a"], ids["b"], ids["c"], 0, ids["a"]]
  assert tok.unknown("axyx") == ["x", "y"]
  assert tok.decode(tok.encode("cab")) == "cab"


def test_split_of_hashes_the_path_into_90_5_5():
  paths = [f"pkg{i % 7}/mod_{i}.py" for i in range(4000)]
  splits = [text.split_of(p) for p in paths]
  for p, s in zip(paths[:50], splits):
    bucket = int(hashlib.sha256(p.encode()).hexdigest()[:8], 16) % 100
    assert s == ("train" if bucket < 90 else "validation" if bucket < 95 else "test")
  freq = {s: splits.count(s) / len(splits) for s in text.SPLITS}
  assert abs(freq["train"] - 0.9) < 0.02 and abs(freq["test"] - 0.05) < 0.015


def _fake_stdlib(root, per_split=2, size=600):
  """A folder of .py files, ``per_split`` in each split, and files that must be skipped."""
  rng = np.random.default_rng(0)
  made = {s: 0 for s in text.SPLITS}
  i = 0
  while min(made.values()) < per_split:
    rel = f"pkg/m{i}.py"
    i += 1
    split = text.split_of(rel)
    if made[split] >= per_split:
      continue
    made[split] += 1
    os.makedirs(os.path.join(root, "pkg"), exist_ok=True)
    body = "".join(rng.choice(list("abc é\n=()"), size=size))
    with open(os.path.join(root, rel), "w", encoding="utf-8") as f:
      f.write(f"# {rel}\n{body}")
  for skipped in ("test/t.py", "site-packages/x.py", "pkg/tests/y.py", "pkg/notes.txt"):
    os.makedirs(os.path.dirname(os.path.join(root, skipped)), exist_ok=True)
    with open(os.path.join(root, skipped), "w") as f:
      f.write("skip me")
  return root


@pytest.fixture(scope="module")
def stdlib(tmp_path_factory):
  return _fake_stdlib(str(tmp_path_factory.mktemp("stdlib")))


def _files(root):
  out = []
  for folder, _, files in os.walk(os.path.join(root, "pkg")):
    if "tests" not in folder:
      out += [os.path.relpath(os.path.join(folder, f), root) for f in files if f.endswith(".py")]
  return sorted(out)


def test_corpus_identity_is_python_version_file_count_and_sha256(stdlib):
  corpus = text.Corpus(stdlib)
  rels = _files(stdlib)
  digest = hashlib.sha256()
  for rel in rels:
    with open(os.path.join(stdlib, rel), "rb") as f:
      digest.update(rel.encode() + b"\0" + f.read() + b"\0")
  info = corpus.info()
  assert info["num_files"] == len(rels) == 6 and info["sha256"] == digest.hexdigest()
  assert info["python_version"].count(".") == 2
  train_files = [r for r in rels if text.split_of(r) == "train"]
  assert corpus.texts["train"] == "".join(
      epath.Path(stdlib, r).read_text() for r in train_files)


@pytest.fixture(scope="module")
def task(stdlib, tmp_path_factory):
  return data.get_task("python_stdlib", length=16, num_eval=4, stdlib=stdlib,
                       data_dir=str(tmp_path_factory.mktemp("tfds")))


def test_windows_are_slices_of_the_split_bytes_read_through_tfds(task, stdlib):
  corpus = text.Corpus(stdlib)
  train_bytes = np.frombuffer(corpus.texts["train"].encode("utf-8"), np.uint8)
  assert os.path.isdir(task.data_path)  # an array_record TFDS dataset
  assert task.num_examples("train") == (len(train_bytes) - 17) // 16 + 1
  batch = task.dataset("train", batch_size=3, seed=0)[0]
  for inputs, targets in zip(batch["inputs"], batch["targets"]):
    starts = [s for s in range(0, len(train_bytes) - 16, 16)
              if np.array_equal(train_bytes[s:s + 16], inputs)]
    assert starts and np.array_equal(train_bytes[starts[0] + 1:starts[0] + 17], targets)
  assert batch["weights"].sum() == 3 * 16 and batch["mask"].all()
  test_bytes = np.frombuffer(corpus.texts["test"].encode("utf-8"), np.uint8)
  ev = task.dataset("test", batch_size=4, seed=0)[0]
  step = (len(test_bytes) - 17) // 3
  for k in range(4):  # 4 windows spread evenly from the first byte to the last window
    np.testing.assert_array_equal(ev["inputs"][k], test_bytes[k * step:k * step + 16])


def test_bits_per_char_counts_the_characters_of_the_evaluated_text(task, stdlib):
  corpus = text.Corpus(stdlib)
  src = task.dataset("validation", batch_size=4, seed=0)[0]
  raw = bytes(np.asarray(src["targets"], np.uint8).reshape(-1))
  per_token = {"byte": 1.0, "char": len(raw.decode("utf-8", "replace")) / len(raw)}
  assert task.units_per_token["validation"] == pytest.approx(per_token)
  assert per_token["char"] < 1.0  # "é" is two bytes
  got = evaluate_lib.bits_per(task, "validation", {"loss": 2.0})
  assert got["bits_per_token"] == pytest.approx(2.0 / math.log(2))
  assert got["bits_per_byte"] == pytest.approx(2.0 / math.log(2))
  assert got["bits_per_char"] == pytest.approx(2.0 / math.log(2) / per_token["char"])
  assert evaluate_lib.bits_per(object(), "test", {"loss": 1.0}) == {}
  del corpus


class _StandIn(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A small tiny_shakespeare prepared like the real one: one text per split."""

  name = "tiny_shakespeare"
  VERSION = tfds.core.Version("1.0.0")
  code_path = epath.Path(__file__)
  TEXTS = {"train": "First Citizen:\nBefore we proceed.\n" * 4, "validation": "ROMEO:\nO.\n" * 5,
           "test": "JULIET:\nAy me!\n" * 5}

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {s: self._generate_examples(s) for s in self.TEXTS}

  def _generate_examples(self, split):
    yield 0, {"text": self.TEXTS[split]}


def test_tiny_shakespeare_reads_a_prepared_dataset_and_says_how_to_prepare_one(tmp_path):
  with pytest.raises(real.DatasetNotPreparedError, match="tfds build tiny_shakespeare"):
    data.get_task("tiny_shakespeare", data_dir=str(tmp_path / "none"))
  _StandIn(data_dir=str(tmp_path)).download_and_prepare(file_format="array_record")
  t = data.get_task("tiny_shakespeare", length=8, tokenizer="chars", data_dir=str(tmp_path))
  assert t.vocab_size == len(set(_StandIn.TEXTS["train"])) + 1
  batch = t.dataset("train", batch_size=2, seed=0)[0]
  train_text = _StandIn.TEXTS["train"]
  for inputs in batch["inputs"]:
    assert t.tokenizer.decode(inputs) in train_text
  assert t.tokenizer.unknown("JULIET!") == ["J", "U", "L", "I", "E", "T", "!"]  # not in train


@pytest.mark.parametrize("size, target", [("1m", 1e6), ("5m", 5e6)])
def test_families_are_matched_in_size(size, target):
  class Text:  # the task the sizes are for: 256 byte ids, next-byte classes
    name, input_type, vocab_size, in_features, output = "t", "tokens", 256, None, "per_position"
    target_type, num_classes, requires_causal = "classes", 256, True

  spec = model_lib.TaskSpec.of(Text, has_seq2seq=False)
  for family, hparams in text_lm.SIZES[size].items():
    m = nnx.eval_shape(lambda: model_lib.build(family, hparams, spec, rngs=nnx.Rngs(0)))
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
    assert abs(n / target - 1) < 0.1, (family, n)


def test_training_stops_when_both_budgets_are_used():
  now = [0.0]
  clock = lambda: now[0]

  def train_chunk(start, max_steps, seconds):  # 1 s per step
    n = min(max_steps, max(1, math.ceil(seconds)))
    now[0] += n
    return np.ones(n)

  budgets = text_lm.Budgets(max_train_s=10, flop_steps=25, cap_s=40, eval_every_s=4)
  hist, stop = text_lm.train_with_budgets(train_chunk, lambda: {"loss": 1.0}, budgets, clock)
  assert stop == "budgets" and hist[-1]["step"] == 25
  steps = [h["step"] for h in hist]
  assert 10 in steps and 25 in steps and steps[:3] == [1, 2, 4]  # budgets and early marks
  budgets = text_lm.Budgets(max_train_s=10, flop_steps=100, cap_s=20, eval_every_s=4)
  hist, stop = text_lm.train_with_budgets(train_chunk, lambda: {"loss": 1.0}, budgets, clock)
  assert stop == "cap" and hist[-1]["train_s"] == 20
  assert text_lm.reach([{"x": 1, "b": 4.0}, {"x": 2, "b": 2.9}], "b", 3.0, "x") == 2


def test_a_tiny_run_records_bits_flops_corpus_and_a_sample_and_generate_reads_it(
    stdlib, tmp_path):
  c = train.default_config()
  c.task.update(name="python_stdlib", length=16, tokenizer="chars", num_eval=2,
                stdlib=stdlib, data_dir=str(tmp_path / "tfds"))
  c.model.name = "gru"
  c.model.hparams.update(in_features=8, hidden_features=8)
  c.update(batch_size=4, num_steps=2, log_every=1)
  results = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert results["eval"]["test"]["bits_per_char"] == pytest.approx(
      results["eval"]["test"]["loss"] / math.log(2))  # chars tokenizer: a token is a char
  assert results["flops_per_token"] > 0 and results["tokens_per_s"] > 0
  assert results["task_info"]["sha256"] == text.Corpus(stdlib).sha256
  md = (tmp_path / "run" / "results.md").read_text()
  assert md.rstrip().endswith("```") and "sample (seed 0" in md
  s = text_lm.generate_settings(str(tmp_path / "run"), prompt="abc", length=12, seed=3)
  first = text_lm.generate(s)  # (a seed giving the same text: tests/test_generate.py)
  assert first.startswith("abc") and len(first) == 15
  with pytest.raises(ValueError, match="outside the chars vocabulary.*'Z'"):
    text_lm.generate(text_lm.generate_settings(str(tmp_path / "run"), prompt="aZ", length=3))
  assert outputs.read_json(str(tmp_path / "run" / "results.json"))["sample"].startswith("\n")
