"""Sampling (``models.decoding.sample_search`` / ``sample``) and ``experiments.generate``'s
library side: tokens checked against NumPy loops and against the models' full calls."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqscale import models
from seqscale.models import decoding
from seqscale.studies import text_lm

V = 7
TABLE_VV = np.random.default_rng(0).normal(size=(V, V)).astype(np.float32) * 3


def _bigram_step(tokens_B, state, shared):
  # A bigram model: logits from the last token; the state counts the calls.
  return shared[tokens_B], state + 1, shared


_jitted_search = jax.jit(decoding.sample_search,
                         static_argnames=("step", "length", "temperature", "top_k"))


def _search(prompt, **kw):
  prompt = jnp.asarray(prompt, jnp.int32)
  return np.asarray(_jitted_search(_bigram_step, jnp.zeros((prompt.shape[0],), jnp.int32),
                                   jnp.asarray(TABLE_VV), prompt, **kw))


def test_temperature_0_is_the_argmax_chain_of_a_numpy_loop():
  got = _search([[1, 4], [2, 0]], length=6, key=jax.random.key(0), temperature=0.0)
  for row, last in zip(got, (4, 0)):
    want = []
    for _ in range(6):
      last = int(np.argmax(TABLE_VV[last]))
      want.append(last)
    assert row.tolist() == want


def test_top_k_1_equals_greedy_at_any_temperature():
  greedy = _search([[3]], length=8, key=jax.random.key(0), temperature=0.0)
  top1 = _search([[3]], length=8, key=jax.random.key(5), temperature=2.0, top_k=1)
  np.testing.assert_array_equal(top1, greedy)


def test_a_seed_gives_the_same_tokens_and_top_k_restricts_them():
  prompt = np.full((64, 1), 2)
  a = _search(prompt, length=10, key=jax.random.key(1), top_k=3)
  b = _search(prompt, length=10, key=jax.random.key(1), top_k=3)
  c = _search(prompt, length=10, key=jax.random.key(2), top_k=3)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  prev = np.concatenate([prompt, a[:, :-1]], axis=1)  # the token each draw followed
  top3 = np.argsort(-TABLE_VV, axis=1)[:, :3]
  assert all(a[i, t] in top3[prev[i, t]] for i in range(64) for t in range(10))
  assert len(np.unique(a)) > 3  # it does sample, not only the argmax


def test_sampling_frequencies_follow_the_softmax():
  # Every row starts at token 0, so the first draw is from softmax(TABLE[0] / 0.7).
  prompt = np.zeros((4000, 1), np.int32)
  first = _search(prompt, length=1, key=jax.random.key(3), temperature=0.7)[:, 0]
  p = np.exp(TABLE_VV[0] / 0.7 - np.max(TABLE_VV[0] / 0.7))
  p /= p.sum()
  freq = np.bincount(first, minlength=V) / len(first)
  np.testing.assert_allclose(freq, p, atol=0.03)


def _tiny(name):
  rngs = nnx.Rngs(0)
  if name == "transformer_lm":
    return models.create(name, vocab_size=V, hidden_features=16, num_layers=1, num_heads=2,
                         rngs=rngs), None, None
  extra = dict(num_layers=3, kernel_size=2) if name == "wavenet" else {}
  return (models.create(name, in_features=8, hidden_features=12, rngs=rngs, **extra),
          nnx.Embed(V, 8, rngs=rngs), nnx.Linear(12, V, rngs=rngs))


@pytest.mark.parametrize("name", ["transformer_lm", "lstm", "wavenet"])
def test_greedy_sample_by_step_equals_the_full_call_on_the_growing_text(name):
  model, embed, head = _tiny(name)
  prompt = np.array([[1, 5, 2]], np.int32)
  got = np.asarray(decoding.sample(model, prompt, length=4, temperature=0.0, embed=embed,
                                   head=head))[0]
  graphdef, weights = nnx.split((model, embed, head))

  @jax.jit
  def full_call(weights, x_1T):  # causal: the padding after position t changes nothing
    m, e, h = nnx.merge(graphdef, weights)
    return m(x_1T) if e is None else h(m(e(x_1T)))

  tokens = np.zeros((1, 7), np.int32)
  tokens[0, :3] = prompt[0]
  for t in range(3, 7):  # the reference: the whole sequence through the full call each time
    tokens[0, t] = int(jnp.argmax(full_call(weights, jnp.asarray(tokens))[0, t - 1]))
  assert got.tolist() == tokens[0, 3:].tolist()


def test_a_model_that_cannot_step_is_refused_saying_why():
  rngs = nnx.Rngs(0)
  bi = models.create("lstm", in_features=8, hidden_features=8, bidirectional=True, rngs=rngs)
  with pytest.raises(ValueError, match="bidirectional"):
    decoding.sample(bi, np.ones((1, 2), np.int32), length=2, embed=nnx.Embed(V, 8, rngs=rngs))

  class NoStep(nnx.Module):
    pass

  with pytest.raises(ValueError, match="cannot run step by step"):
    decoding.sample(NoStep(), np.ones((1, 2), np.int32), length=2)


@pytest.mark.parametrize("kw, match", [(dict(length=0), "length=0"),
                                        (dict(temperature=-1.0), "temperature"),
                                        (dict(top_k=-1), "top_k")])
def test_bad_sampling_arguments(kw, match):
  args = dict(length=3, key=jax.random.key(0)) | kw
  with pytest.raises(ValueError, match=match):
    _search([[1]], **args)


def test_generate_settings_refuse_a_workdir_without_run_or_checkpoint(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    text_lm.generate_settings(str(tmp_path / "nope"), prompt="a", length=3)
  with pytest.raises(ValueError, match="no config.json"):
    text_lm.generate_settings(str(tmp_path), prompt="a", length=3)
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(ValueError, match="no checkpoint"):
    text_lm.generate_settings(str(tmp_path), prompt="a", length=3)
  os.makedirs(tmp_path / "checkpoints" / "5")
  with pytest.raises(ValueError, match="length=0"):
    text_lm.generate_settings(str(tmp_path), prompt="a", length=0)
