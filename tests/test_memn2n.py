"""End-to-end memory network and the bAbI-like task: a one-hop network against a hand
computation, the full network against a NumPy implementation of the paper's equations (PE,
temporal encoding, both weight tyings), PE against the paper's formula, the task's answers
against an independent simulator, the real bAbI reader on a TFDS stand-in, and a short
training run."""

import math

import numpy as np
import pytest
import jax.numpy as jnp
from flax import nnx

from seqscale import data
from seqscale import models
from seqscale.data import babi_like
from seqscale.data import real
from seqscale.ops import memory as memory_ops


def _set(model, **arrays):
  for name, value in arrays.items():
    getattr(model, name)[...] = jnp.asarray(value, jnp.float32)


# -- the paper's formulas -----------------------------------------------------------------


def test_position_encoding_is_the_papers_formula():
  J, d = 5, 7
  got = np.asarray(memory_ops.position_encoding(J, d))
  for j in range(1, J + 1):
    for k in range(1, d + 1):
      assert got[j - 1, k - 1] == pytest.approx((1 - j / J) - (k / d) * (1 - 2 * j / J))
  # The last word of a sentence: l_kJ = 0 - (k/d)(1 - 2) = k/d.
  np.testing.assert_allclose(got[-1], np.arange(1, d + 1) / d, rtol=1e-6)


def test_sentence_encoding_uses_each_sentences_own_length(rng):
  emb = rng.normal(size=(2, 6, 4)).astype(np.float32)  # two sentences, J_max = 6
  mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  got = np.asarray(memory_ops.encode_sentences(jnp.asarray(emb), jnp.asarray(mask),
                                               position=True))
  for i, J in enumerate([3, 6]):
    table = np.asarray(memory_ops.position_encoding(J, 4))
    np.testing.assert_allclose(got[i], (table * emb[i, :J]).sum(0), rtol=1e-5, atol=1e-6)
  bag = memory_ops.encode_sentences(jnp.asarray(emb), jnp.asarray(mask), position=False)
  np.testing.assert_allclose(np.asarray(bag), (emb * mask[..., None]).sum(1), rtol=1e-6)


# -- one hop by hand ----------------------------------------------------------------------

# 0 pad, 1 mary, 2 john, 3 went, 4 kitchen, 5 garden, 6 where, 7 is
STORY = [[1, 3, 4], [2, 3, 5]]  # mary went kitchen. john went garden.


def _one_hop_model():
  model = models.create("memn2n", vocab_size=8, hidden_features=8, num_hops=1,
                        position_encoding=False, temporal_encoding=False, rngs=nnx.Rngs(0))
  A = np.eye(8)  # E[0] = A = B: one-hot words
  C = np.diag([0.5, 0.5, 0.5, 0.5, 3.0, 3.0, 0.5, 0.5])  # E[1] = C = W^T: places weigh 3
  _set(model, embed=np.stack([A, C]))
  return model


def test_one_hop_with_tied_embeddings_gives_the_hand_computed_answer():
  model = _one_hop_model()
  story = jnp.asarray([STORY], jnp.int32)
  logits, p = model(story, jnp.asarray([[6, 7, 1]], jnp.int32), return_attention=True)
  # By hand: u = e_where + e_is + e_mary; u . m_1 = 1 (mary), u . m_2 = 0, so
  # p = (e / (1 + e), 1 / (1 + e)); o = p_1 c_1 + p_2 c_2 with c_1 = .5(e_mary + e_went)
  # + 3 e_kitchen; the answer W(u + o) = C(u + o) has kitchen = 3 * 3 p_1 = 9e / (1 + e).
  p1 = math.e / (1 + math.e)
  np.testing.assert_allclose(np.asarray(p)[0, 0], [p1, 1 - p1], rtol=1e-6)
  want = {1: 0.5 * (1 + 0.5 * p1), 2: 0.5 * 0.5 * (1 - p1), 3: 0.5 * 0.5,
          4: 9 * p1, 5: 9 * (1 - p1), 6: 0.5, 7: 0.5, 0: 0.0}
  np.testing.assert_allclose(np.asarray(logits)[0], [want[w] for w in range(8)], rtol=1e-5)
  assert int(np.argmax(logits)) == 4  # kitchen
  # Asking about john reads the other sentence: garden.
  assert int(np.argmax(model(story, jnp.asarray([[6, 7, 2]], jnp.int32)))) == 5


def test_padding_words_and_empty_slots_change_nothing():
  model = _one_hop_model()
  q = jnp.asarray([[6, 7, 1]], jnp.int32)
  base = model(jnp.asarray([STORY], jnp.int32), q)
  padded = np.zeros((1, 5, 6), np.int32)
  padded[0, :2, :3] = STORY
  got = model(jnp.asarray(padded), jnp.asarray([[6, 7, 1, 0, 0, 0]], jnp.int32))
  np.testing.assert_allclose(np.asarray(got), np.asarray(base), rtol=1e-6)


# -- K hops against NumPy -----------------------------------------------------------------


def _paper_memn2n(story, query, *, A, C, B, W, T_A, T_C, H, position_encoding,
                  memory_size):
  """End-To-End Memory Networks (Sukhbaatar et al. 2015), section 2 and 4.1, in NumPy.

  Column vectors as in the paper: A[k], C[k] (hop k = 0..K-1), B are [d, V] embedding
  matrices (``A x`` of a one-hot word x is a column), W is [V, d], T_A[k], T_C[k] are
  temporal tables [memory_size, d] (row i - 1 for the i-th sentence counted back from the
  question, the last rows shared beyond), H [d, d] or None. The update between hops is
  u^{k+1} = H u^k + o^k (layer-wise tying) or u^k + o^k, and the answer is W u^{K+1}.
  Knows nothing of how a model stores or ties its weights.
  """
  K, d = len(A), B.shape[0]

  def embed(M, words):  # sum_j l_j * M x_j (position encoding) or sum_j M x_j
    words = [w for w in words if w]
    J, out = len(words), np.zeros(d)
    for j, w in enumerate(words, 1):
      l = np.array([(1 - j / J) - (k / d) * (1 - 2 * j / J) for k in range(1, d + 1)])
      out += (l if position_encoding else 1.0) * M[:, w]
    return out

  logits = []
  for s_MJ, q_J in zip(story, query):
    sentences = [row for row in s_MJ if (row > 0).any()][::-1]  # x_1: the last sentence
    u = embed(B, q_J)
    for k in range(K):
      back = [min(i, memory_size - 1) for i in range(len(sentences))]
      m = np.stack([embed(A[k], x) + (0 if T_A is None else T_A[k][r])
                    for x, r in zip(sentences, back)])
      c = np.stack([embed(C[k], x) + (0 if T_C is None else T_C[k][r])
                    for x, r in zip(sentences, back)])
      scores = m @ u
      p = np.exp(scores - scores.max())
      p /= p.sum()
      o = p @ c
      u = (u if H is None else H @ u) + o
    logits.append(W @ u)
  return np.stack(logits)


def _paper_weights(model):
  """The paper's matrices from the model's parameters, by the tying rules of section 2.2.

  adjacent: A^{k+1} = C^k, B = A^1, W^T = C^K (and T_A^{k+1} = T_C^k); the model stores
  E[0] = A^1, E[k] = C^k (as [V, d] rows). layer-wise: A^1 = .. = A^K, C^1 = .. = C^K, a
  separate B and W, and H; the model stores E = (B, A, C) and W, H for row vectors.
  """
  f64 = lambda a: None if a is None else np.asarray(a[...], np.float64)
  E, T, K = f64(model.embed), f64(model.temporal), model.num_hops
  if model.tying == "adjacent":
    A = [E[k].T for k in range(K)]
    C = [E[k + 1].T for k in range(K)]
    T_A = None if T is None else [T[k] for k in range(K)]
    T_C = None if T is None else [T[k + 1] for k in range(K)]
    return dict(A=A, C=C, B=A[0], W=C[-1].T, T_A=T_A, T_C=T_C, H=None)
  T_A = None if T is None else [T[0]] * K
  T_C = None if T is None else [T[1]] * K
  return dict(A=[E[1].T] * K, C=[E[2].T] * K, B=E[0].T, W=f64(model.W).T, T_A=T_A, T_C=T_C,
              H=f64(model.H).T)


@pytest.mark.parametrize("kwargs", [
    dict(tying="adjacent"),
    dict(tying="layerwise"),
    dict(tying="layerwise", position_encoding=False, memory_size=2),
    dict(tying="adjacent", position_encoding=False, temporal_encoding=False),
    dict(tying="adjacent", memory_size=3),  # old sentences share the last temporal row
])
def test_three_hops_equal_numpy(rng, kwargs):
  V = 12
  model = models.create("memn2n", vocab_size=V, hidden_features=6, num_hops=3,
                        init_scale=0.5, rngs=nnx.Rngs(1), **kwargs)
  story = np.zeros((3, 6, 4), np.int32)
  for b, n in enumerate([6, 4, 1]):
    for i in range(n):
      J = rng.integers(1, 5)
      story[b, i, :J] = rng.integers(1, V, size=J)
  query = np.zeros((3, 4), np.int32)
  query[:, :3] = rng.integers(1, V, size=(3, 3))
  got = np.asarray(model(jnp.asarray(story), jnp.asarray(query)))
  want = _paper_memn2n(story, query, **_paper_weights(model),
                       position_encoding=model.position_encoding,
                       memory_size=model.memory_size)
  # float32 against float64: a few ulps of logits of size ~1 after three hops.
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_attention_sums_to_one_over_real_sentences():
  model = models.create("memn2n", vocab_size=10, hidden_features=6, num_hops=2,
                        rngs=nnx.Rngs(0))
  story = np.zeros((2, 5, 3), np.int32)
  story[0, :3] = [[1, 2, 0], [3, 4, 5], [6, 0, 0]]
  story[1, :5, 0] = [1, 2, 3, 4, 5]
  _, p_KBM = model(jnp.asarray(story), jnp.asarray([[7, 8, 0], [9, 0, 0]]),
                   return_attention=True)
  p = np.asarray(p_KBM)
  np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
  assert (p[:, 0, 3:] == 0).all() and (p[:, 1] > 0).all()


def test_bad_arguments_name_the_argument():
  for kwargs, word in [(dict(tying="rnn"), "tying='rnn'"), (dict(num_hops=0), "num_hops=0"),
                       (dict(vocab_size=1), "vocab_size=1")]:
    with pytest.raises(ValueError, match=word):
      models.create("memn2n", **(dict(vocab_size=10, hidden_features=4) | kwargs),
                    rngs=nnx.Rngs(0))


# -- the bAbI-like task -------------------------------------------------------------------


def _simulate(sentences, query):
  """An independent reading of a story: people's places and who holds what, sentence by
  sentence; returns the answer to ``where is X``."""
  place, holder, spot = {}, {}, {}
  for words in sentences:
    who, last = words[0], words[-1]
    if last in babi_like.PLACES:
      place[who] = last
    elif words[1] in ("picked", "got", "grabbed"):
      holder[last] = who
    else:  # dropped / discarded / put down: it stays where its holder is now
      holder.pop(last, None)
      spot[last] = place.get(who)
  target = query[-1]
  if target in babi_like.PEOPLE:
    return place.get(target)
  return place.get(holder[target]) if target in holder else spot.get(target)


def _words(ids):
  return [babi_like.WORDS[i] for i in ids if i]


@pytest.mark.parametrize("problem", ["one_fact", "two_facts", "mixed"])
def test_babi_like_answers_agree_with_a_simulator(tmp_path, problem):
  task = data.get_task("babi_like", problem=problem, length=8, num_train=64, num_eval=16,
                       data_dir=str(tmp_path))
  assert task.eval_splits == {"test": 8, "test_2x": 16, "test_4x": 32}
  assert task.sequence_lengths["test_2x"] == 16 * 6 + 6 and task.output == "pooled"
  kinds = set()
  for split in ("train", "test_2x"):
    m = task.eval_splits.get(split, 8)
    batch = task.dataset(split, batch_size=16, seed=0)[0]
    assert batch["story"].shape == (16, m, 5) and batch["query"].shape == (16, 5)
    assert batch["inputs"].shape == (16, task.sequence_lengths[split])
    for i in range(16):
      sentences = [_words(r) for r in batch["story"][i] if r.any()]
      query = _words(batch["query"][i])
      assert (m + 1) // 2 <= len(sentences) <= m
      answer = babi_like.WORDS[batch["targets"][i]]
      assert answer == _simulate(sentences, query), (sentences, query, answer)
      kinds.add("person" if query[-1] in babi_like.PEOPLE else "object")
      support = [s for s in batch["support"][i] if s >= 0]
      assert answer in sentences[support[-1]] or answer in sentences[support[0]]
      assert len(support) == (1 if query[-1] in babi_like.PEOPLE else 2)
      # The flat form: sentences with '.', then the question and '?'.
      flat = " ".join(_words(batch["inputs"][i]))
      assert flat == " . ".join(" ".join(s) for s in sentences) + " . " + " ".join(query) + " ?"
      assert batch["mask"][i].sum() == len(flat.split())
  assert kinds == {"one_fact": {"person"}, "two_facts": {"object"},
                   "mixed": {"person", "object"}}[problem]


def test_babi_like_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="problem='three_facts'"):
    data.get_task("babi_like", problem="three_facts", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="length=1"):
    data.get_task("babi_like", length=1, data_dir=str(tmp_path))


# -- the real bAbI --------------------------------------------------------------------------


def test_missing_babi_says_what_and_how(tmp_path):
  with pytest.raises(real.DatasetNotPreparedError) as e:
    data.get_task("babi", task_id=2, data_dir=str(tmp_path))
  msg = str(e.value)
  assert "'babi'" in msg and "en_10k_qa2" in msg and str(tmp_path) in msg
  assert "tfds build huggingface:facebook/babi_qa --config=en-10k-qa2" in msg
  assert "--file_format=array_record" in msg


def test_prepared_babi_is_read(tmp_path, monkeypatch):
  """A TFDS stand-in with the features TFDS gives Hugging Face's facebook/babi_qa."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.features import feature  # pylint: disable=g-import-not-at-top
  # TFDS 4.9.10 writes a nested sequence (supporting_ids) through the deprecated
  # TensorInfo.dtype, which imports TensorFlow; its NumPy dtype is what the writer needs.
  monkeypatch.setattr(feature.TensorInfo, "dtype", property(lambda self: self.np_dtype))

  def story(lines):
    out = {"id": [], "type": [], "text": [], "supporting_ids": [], "answer": []}
    for i, (kind, text, answer, support) in enumerate(lines, 1):
      out["id"].append(str(i))
      out["type"].append(kind)
      out["text"].append(text)
      out["answer"].append(answer)
      out["supporting_ids"].append(support)
    return {"story": out}

  stories = {
      "train": [story([(0, "Mary moved to the bathroom.", "", []),
                       (0, "John went to the hallway.", "", []),
                       (1, "Where is Mary?", "bathroom", ["1"]),
                       (0, "Mary travelled to the office.", "", []),
                       (1, "Where is Mary?", "office", ["4"])])],
      "test": [story([(0, "John went to the office.", "", []),
                      (1, "Where is John?", "office", ["1"])])],
  }

  class FakeBabi(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = "facebook__babi_qa"
    VERSION = tfds.core.Version("1.2.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="en_qa1")]
    code_path = epath.Path(__file__)

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "story": tfds.features.Sequence({
              "id": tfds.features.Text(),
              "type": tfds.features.ClassLabel(names=["context", "question"]),
              "text": tfds.features.Text(),
              "supporting_ids": tfds.features.Sequence(tfds.features.Text()),
              "answer": tfds.features.Text()})}))

    def _split_generators(self, dl_manager):
      return {s: self._generate_examples(s) for s in stories}

    def _generate_examples(self, split):
      for i, s in enumerate(stories[split]):
        yield i, s

  FakeBabi(data_dir=str(tmp_path), config="en_qa1").download_and_prepare(
      file_format="array_record")
  task = data.get_task("babi", task_id=1, size="1k", length=4, data_dir=str(tmp_path))
  assert task.num_examples("train") == 2 and task.num_examples("test_2x") == 1
  words = lambda ids: [task.words[i] for i in ids if i]
  batch = task.dataset("train", batch_size=2, seed=0)[0]
  got = {}
  for i in range(2):
    memory = [" ".join(words(r)) for r in batch["story"][i] if r.any()]
    got[len(memory)] = (memory, words(batch["query"][i]), task.words[batch["targets"][i]],
                        batch["support"][i].tolist())
  assert got[2] == (["mary moved to the bathroom", "john went to the hallway"],
                    ["where", "is", "mary"], "bathroom", [0, -1])
  assert got[3][1:] == (["where", "is", "mary"], "office", [2, -1])
  assert " ".join(words(task.dataset("test", batch_size=1, seed=0)[0]["inputs"][0])) == (
      "john went to the office . where is john ?")


# -- training -------------------------------------------------------------------------------


@pytest.mark.slow
def test_memn2n_learns_one_fact_questions(tmp_path):
  """A short run with a plain Adam loop (the trainer's 'qa' hook is wired separately)."""
  import optax  # pylint: disable=g-import-not-at-top
  task = data.get_task("babi_like", problem="one_fact", length=6, num_train=1_000,
                       num_eval=200, data_dir=str(tmp_path))
  model = models.create("memn2n", vocab_size=task.vocab_size, hidden_features=20,
                        num_hops=2, memory_size=12, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, story, query, target):
    def loss_fn(model):
      logits = model(story, query)
      return optax.softmax_cross_entropy_with_integer_labels(logits, target).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss

  train = task.dataset("train", batch_size=32, seed=0)
  for i in range(400):
    b = train[i]
    step(model, opt, b["story"], b["query"], b["targets"])
  b = task.dataset("test", batch_size=200, seed=0)[0]
  acc = float((np.argmax(model(b["story"], b["query"]), -1) == b["targets"]).mean())
  assert acc > 0.9  # chance: 1/6 places
