"""RNN encoder-decoder with attention: scores against NumPy loops, the model against a
PyTorch encoder + NumPy decoder, masking, stepping, greedy and beam search decoding."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqscale import models
from seqscale.models import decoding
from seqscale.models import lstm_attention as la
from seqscale.ops import additive_attention as attn

B, S, T, I, D = 2, 5, 4, 3, 6
VARIANTS = [dict(attention="additive"), dict(attention="multiplicative"),
            dict(attention="multiplicative", score="dot"), dict(attention="none")]


def _data(seed=0, batch=B, src_len=S, tgt_len=T):
  rng = np.random.default_rng(seed)
  src = jnp.asarray(rng.normal(size=(batch, src_len, I)), jnp.float32)
  tgt = jnp.asarray(rng.normal(size=(batch, tgt_len, I)), jnp.float32)
  return src, tgt


def _model(num_layers=1, **kw):
  return la.LSTMAttention(I, D, num_layers=num_layers, **kw, rngs=nnx.Rngs(0))


def _sigmoid(a):
  return 1.0 / (1.0 + np.exp(-a))


def _softmax(a):
  e = np.exp(a - a.max())
  return e / e.sum()


# ------------------------------------------------------------------------------- scores

def test_additive_and_dot_scores_match_numpy_loops(rng):
  q = rng.normal(size=(B, D))
  keys = rng.normal(size=(B, S, 4))
  w_q, v = rng.normal(size=(D, 4)), rng.normal(size=(4,))
  mem = rng.normal(size=(B, S, D))
  add = np.asarray(attn.additive_scores(*(jnp.asarray(a, jnp.float32) for a in (q, keys, w_q, v))))
  dot = np.asarray(attn.dot_scores(jnp.asarray(q, jnp.float32), jnp.asarray(mem, jnp.float32)))
  for b, s in itertools.product(range(B), range(S)):
    assert add[b, s] == pytest.approx(v @ np.tanh(q[b] @ w_q + keys[b, s]), abs=1e-5)
    assert dot[b, s] == pytest.approx(q[b] @ mem[b, s], abs=1e-5)
  # Every query at once ([B, T, D]) gives the per-step scores.
  q_BTD = jnp.asarray(np.stack([q, 2 * q], axis=1), jnp.float32)
  both = attn.additive_scores(q_BTD, *(jnp.asarray(a, jnp.float32) for a in (keys, w_q, v)))
  np.testing.assert_allclose(np.asarray(both[:, 0]), add, atol=1e-5)


@pytest.mark.parametrize("kw", VARIANTS[:3], ids=str)
def test_attention_weights_sum_to_one_and_skip_padding(kw):
  src, tgt = _data()
  mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  _, w_BTS = _model(**kw).run(src, tgt, src_mask=mask)
  w = np.asarray(w_BTS)
  assert w.shape == (B, T, S) and (w >= 0).all()
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
  assert (w[0, :, 3:] == 0.0).all()  # exactly zero on padding
  assert (w[0, :, :3] > 0).all() and (w[1] > 0).all()


@pytest.mark.parametrize("kw", VARIANTS, ids=str)
def test_padded_source_gives_the_same_output_as_the_trimmed_source(kw):
  src, tgt = _data()
  model = _model(num_layers=2, **kw)
  garbage = src.at[0, 3:].set(100.0)
  mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  padded = np.asarray(model(garbage, tgt, src_mask=mask))
  trimmed = np.asarray(model(src[:1, :3], tgt[:1]))
  np.testing.assert_allclose(padded[0], trimmed[0], atol=1e-5)


# ------------------------------------------------------------------ model vs references

def _torch_encoder(model, src):
  """The bidirectional encoder as torch.nn.LSTM with copied weights: (out, h_n, c_n)."""
  torch = pytest.importorskip("torch")
  enc = torch.nn.LSTM(I, D, batch_first=True, bidirectional=True)
  layer = model.encoder.layers[0]
  with torch.no_grad():
    for w, suffix in ((layer.fwd, ""), (layer.bwd, "_reverse")):
      getattr(enc, f"weight_ih_l0{suffix}").copy_(torch.tensor(np.asarray(w.w_ih[...]).T))
      getattr(enc, f"weight_hh_l0{suffix}").copy_(torch.tensor(np.asarray(w.w_hh[...]).T))
      getattr(enc, f"bias_ih_l0{suffix}").copy_(torch.tensor(np.asarray(w.b_ih[...])))
      getattr(enc, f"bias_hh_l0{suffix}").copy_(torch.tensor(np.asarray(w.b_hh[...])))
    out, (h_n, c_n) = enc(torch.tensor(np.asarray(src)))
  return out.numpy().astype(np.float64), h_n.numpy(), c_n.numpy()


def _reference(model, src, tgt):
  """Bahdanau / Luong decoders written from the papers' equations, one example at a time."""
  p = lambda v: np.asarray(v[...], np.float64)
  mem, h_n, c_n = _torch_encoder(model, src)
  dec = model.decoder[0]
  w_ih, w_hh, b = p(dec.w_ih), p(dec.w_hh), p(dec.b_ih) + p(dec.b_hh)
  out = np.zeros((B, T, D))
  for bi in range(B):
    hc = np.concatenate([h_n[0, bi], h_n[1, bi], c_n[0, bi], c_n[1, bi]]) @ p(model.bridge[0])
    h, c, feed = np.tanh(hc[:D]), hc[D:], np.zeros(D)
    for t in range(T):
      x = np.asarray(tgt[bi, t], np.float64)
      if model.attention == "additive":
        e = [p(model.v) @ np.tanh(h @ p(model.w_q) + m @ p(model.w_m) + p(model.b_m))
             for m in mem[bi]]
        ctx = _softmax(np.asarray(e)) @ mem[bi]
        x = np.concatenate([x, ctx])
      else:
        x = np.concatenate([x, feed])
      i, f, g, o = np.split(x @ w_ih + h @ w_hh + b, 4)
      c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
      h = _sigmoid(o) * np.tanh(c)
      if model.attention == "multiplicative":
        ctx = _softmax(np.asarray([h @ (m @ p(model.w_m)) for m in mem[bi]])) @ mem[bi]
      feed = np.tanh(np.concatenate([ctx, h]) @ p(model.w_c))
      out[bi, t] = feed
  return out


@pytest.mark.parity
@pytest.mark.parametrize("attention", ["additive", "multiplicative"])
def test_matches_torch_encoder_and_numpy_decoder(attention):
  src, tgt = _data(seed=1)
  model = _model(attention=attention)
  np.testing.assert_allclose(np.asarray(model(src, tgt)), _reference(model, src, tgt),
                             atol=2e-5)


@pytest.mark.parametrize("kw", VARIANTS, ids=str)
def test_step_by_step_equals_teacher_forced_call(kw):
  src, tgt = _data(seed=2)
  model = _model(num_layers=2, **kw)
  mask = jnp.asarray([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], bool)
  full = np.asarray(model(src, tgt, src_mask=mask))
  graphdef, weights = nnx.split(model)
  step = jax.jit(lambda w, x, s: nnx.merge(graphdef, w).step(x, s))
  state = model.init_state(B, T, src_BSI=src, src_mask=mask)
  outs = []
  for t in range(T):
    y, state = step(weights, tgt[:, t], state)
    outs.append(np.asarray(y))
  np.testing.assert_allclose(np.stack(outs, axis=1), full, atol=2e-5)


# ----------------------------------------------------------------------------- decoding

V, BOS, EOS = 5, 1, 3


class _Head(nnx.Module):
  """Token embedding and output projection around the model, as the trainer adds them."""

  def __init__(self, model, seed=3):
    rngs = nnx.Rngs(seed)
    self.model = model
    self.embed = nnx.Embed(V, I, rngs=rngs)
    # Large logits: a peaked distribution, so beams differ from greedy.
    self.out = nnx.Linear(D, V, kernel_init=nnx.initializers.normal(3.0), rngs=rngs)


def _log_probs(head, src, tokens_BL):
  """Teacher-forced log p(tokens) per position: [B, L], via the full call."""
  tgt_in = jnp.concatenate([jnp.full((tokens_BL.shape[0], 1), BOS), tokens_BL[:, :-1]], 1)
  logits = head.out(head.model(src, head.embed(tgt_in)))
  logp = jax.nn.log_softmax(logits, -1)
  return np.asarray(jnp.take_along_axis(logp, tokens_BL[..., None], -1)[..., 0], np.float64)


@pytest.mark.parametrize("kw", VARIANTS[:2], ids=str)
def test_greedy_equals_beam_of_one_and_the_argmax_of_the_full_call(kw):
  src, _ = _data(seed=4)
  head = _Head(_model(**kw))
  kwargs = dict(max_length=6, bos_id=BOS, eos_id=EOS)
  g_tok, g_score = decoding.decode_greedy(head.model, src, head.embed, head.out, **kwargs)
  b_tok, b_score = decoding.decode_beam(head.model, src, head.embed, head.out, beam_size=1,
                                        **kwargs)
  np.testing.assert_array_equal(np.asarray(g_tok), np.asarray(b_tok))
  np.testing.assert_allclose(np.asarray(g_score), np.asarray(b_score), rtol=1e-6)
  # Teacher-forcing the greedy output, each token is the argmax given its prefix.
  tokens = np.asarray(g_tok)
  tgt_in = jnp.concatenate([jnp.full((B, 1), BOS), g_tok[:, :-1]], 1)
  argmax = np.asarray(head.out(head.model(src, head.embed(tgt_in))).argmax(-1))
  lp = _log_probs(head, src, g_tok)
  for b in range(B):
    n = list(tokens[b]).index(EOS) + 1 if EOS in tokens[b] else len(tokens[b])
    np.testing.assert_array_equal(tokens[b, :n], argmax[b, :n])
    assert (tokens[b, n:] == 0).all()
    assert float(g_score[b]) == pytest.approx(lp[b, :n].sum(), abs=1e-4)


@pytest.mark.slow
def test_wide_beam_finds_the_most_likely_sequence_by_exhaustive_search():
  L = 3
  src, _ = _data(seed=5)
  head = _Head(_model(attention="additive"), seed=6)
  tok, score = decoding.decode_beam(head.model, src, head.embed, head.out,
                                    beam_size=V ** (L - 1), max_length=L, bos_id=BOS,
                                    eos_id=EOS)
  # Every sequence of length L, scored by the teacher-forced call up to its first EOS.
  seqs = jnp.asarray(list(itertools.product(range(V), repeat=L)), jnp.int32)  # [V^L, L]
  best = []
  for b in range(B):
    lp = _log_probs(head, jnp.repeat(src[b:b + 1], len(seqs), 0), seqs)
    ends = [list(s).index(EOS) + 1 if EOS in s else L for s in np.asarray(seqs)]
    totals = np.asarray([lp[i, :n].sum() for i, n in enumerate(ends)])
    i = int(totals.argmax())
    best.append((np.asarray(seqs[i])[:ends[i]], totals[i]))
  greedy_tok, _ = decoding.decode_greedy(head.model, src, head.embed, head.out,
                                         max_length=L, bos_id=BOS, eos_id=EOS)
  for b, (seq, total) in enumerate(best):
    np.testing.assert_array_equal(np.asarray(tok[b, :len(seq)]), seq)
    assert float(score[b]) == pytest.approx(total, abs=1e-4)
  # The search matters here: greedy misses the best sequence for some example.
  assert any(not np.array_equal(np.asarray(greedy_tok[b, :len(s)]), s)
             for b, (s, _) in enumerate(best))


@pytest.mark.slow
def test_decoders_work_for_any_stepping_seq2seq_model():
  src, _ = _data(seed=7)
  model = models.create("transformer_seq2seq", in_features=I, hidden_features=D,
                        num_heads=2, rngs=nnx.Rngs(0))
  model.eval()
  rngs = nnx.Rngs(1)
  embed, out = nnx.Embed(V, I, rngs=rngs), nnx.Linear(D, V, rngs=rngs)
  kwargs = dict(max_length=5, bos_id=BOS, eos_id=EOS)
  g_tok, _ = decoding.decode_greedy(model, src, embed, out, **kwargs)
  b_tok, _ = decoding.decode_beam(model, src, embed, out, beam_size=1, **kwargs)
  np.testing.assert_array_equal(np.asarray(g_tok), np.asarray(b_tok))


# ---------------------------------------------------------------------------- arguments

@pytest.mark.parametrize("kw,match", [
    (dict(attention="luong"), "attention='luong'"),
    (dict(score="concat"), "score='concat'"),
    (dict(num_layers=0), "num_layers=0"),
    (dict(attention_features=0), "attention_features=0"),
])
def test_bad_arguments_raise_value_error(kw, match):
  with pytest.raises(ValueError, match=match):
    _model(**kw)


def test_bad_decode_arguments_raise_value_error():
  src, _ = _data()
  head = _Head(_model())
  with pytest.raises(ValueError, match="beam_size=0"):
    decoding.decode_beam(head.model, src, head.embed, head.out, beam_size=0, max_length=3,
                         bos_id=BOS, eos_id=EOS)
  with pytest.raises(ValueError, match="max_length=0"):
    decoding.decode_greedy(head.model, src, head.embed, head.out, max_length=0, bos_id=BOS,
                           eos_id=EOS)
