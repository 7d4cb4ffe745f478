"""Greedy and beam search (seqscale.models.decoding) against brute force over every sequence.

The step function is a toy language model whose next-token distribution depends on the
whole prefix (a random logit table indexed by a code of the prefix), so a search that
drops or mixes up hypotheses gives a different answer.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqscale.models import decoding

V, L, BOS, EOS, PAD = 4, 4, 1, 3, 0
B = 8


def _table(seed: int) -> np.ndarray:
  """Logits [B, codes, V]; PAD is all but impossible, so lengths count real tokens, and EOS
  is rarer than the others, so the best hypotheses are of every length."""
  rng = np.random.default_rng(seed)
  table = 1.0 * rng.normal(size=(B, (V + 1) ** (L + 1), V))
  table[..., PAD] -= 30.0
  table[..., EOS] -= 1.0
  return table.astype(np.float32)


def _step(table_BCV):
  """The toy model: state = (row's batch index, code of the prefix so far)."""
  def step(tokens_N, state, shared):
    b_N, code_N = state
    code_N = code_N * (V + 1) + tokens_N + 1  # unique per prefix (BOS included)
    return shared[b_N, code_N], (b_N, code_N), shared
  return step, jnp.asarray(table_BCV)


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _brute_force(table_BCV, length_penalty=0.0):
  """Per example: the best complete hypothesis and its log-probability, by enumeration."""
  logp = _log_softmax(table_BCV)
  best = []
  for b in range(B):
    found = {}
    for seq in itertools.product(range(V), repeat=L):
      n = seq.index(EOS) + 1 if EOS in seq else L  # the hypothesis ends at its first EOS
      hyp = seq[:n] + (PAD,) * (L - n)
      code, total = 0, 0.0
      for prev, tok in zip((BOS,) + hyp[:n - 1], hyp[:n]):
        code = code * (V + 1) + prev + 1
        total += logp[b, code, tok]
      found[hyp] = (total, total / ((5.0 + n) / 6.0) ** length_penalty)
    hyp = max(found, key=lambda h: found[h][1])
    best.append((hyp, found[hyp][0]))
  return best


def _greedy_by_hand(table_BCV):
  logp = _log_softmax(table_BCV)
  out = []
  for b in range(B):
    code, prev, toks, total = 0, BOS, [], 0.0
    for _ in range(L):
      code = code * (V + 1) + prev + 1
      tok = int(np.argmax(logp[b, code]))
      toks.append(tok)
      total += logp[b, code, tok]
      prev = tok
      if tok == EOS:
        break
    out.append((tuple(toks) + (PAD,) * (L - len(toks)), total))
  return out


@pytest.mark.parametrize("seed,length_penalty", [(0, 0.0), (1, 0.0), (2, 1.0)])
def test_full_width_beam_equals_exhaustive_argmax(seed, length_penalty):
  table = _table(seed)
  step, shared = _step(table)
  K = V ** (L - 1)  # no pruning: every live prefix keeps its place until the last step
  state = (jnp.repeat(jnp.arange(B), K), jnp.zeros((B * K,), jnp.int32))
  tokens, score = jax.jit(lambda s, sh: decoding.beam_search(
      step, s, sh, batch_size=B, beam_size=K, max_length=L, bos_id=BOS, eos_id=EOS,
      pad_id=PAD, length_penalty=length_penalty))(state, shared)
  for b, (hyp, total) in enumerate(_brute_force(table, length_penalty)):
    assert tuple(np.asarray(tokens[b]).tolist()) == hyp
    assert float(score[b]) == pytest.approx(total, abs=1e-4)


def test_greedy_search_and_beam_of_one_follow_the_argmax_path():
  table = _table(3)
  step, shared = _step(table)
  state = (jnp.arange(B), jnp.zeros((B,), jnp.int32))
  kw = dict(batch_size=B, max_length=L, bos_id=BOS, eos_id=EOS, pad_id=PAD)
  g_tok, g_score = decoding.greedy_search(step, state, shared, **kw)
  b_tok, b_score = decoding.beam_search(step, state, shared, beam_size=1, **kw)
  for b, (hyp, total) in enumerate(_greedy_by_hand(table)):
    assert tuple(np.asarray(g_tok[b]).tolist()) == hyp
    assert float(g_score[b]) == pytest.approx(total, abs=1e-4)
  np.testing.assert_array_equal(np.asarray(g_tok), np.asarray(b_tok))
  np.testing.assert_allclose(np.asarray(g_score), np.asarray(b_score), rtol=1e-6)


def test_search_matters_on_this_table():
  """The exhaustive optimum differs from the greedy path for some example (else the beam
  test above could pass with a greedy search)."""
  tables = [_table(s) for s in (0, 1)]
  assert any(best[0] != greedy[0]
             for t in tables for best, greedy in zip(_brute_force(t), _greedy_by_hand(t)))


@pytest.mark.parametrize("kw,match", [
    (dict(beam_size=0), "beam_size=0"),
    (dict(max_length=0), "max_length=0"),
    (dict(eos_id=-1), "eos_id=-1"),
])
def test_bad_arguments_name_the_argument(kw, match):
  step, shared = _step(_table(0))
  args = dict(batch_size=B, beam_size=1, max_length=L, bos_id=BOS, eos_id=EOS)
  with pytest.raises(ValueError, match=match):
    decoding.beam_search(step, (jnp.arange(B), jnp.zeros((B,), jnp.int32)), shared,
                         **{**args, **kw})
