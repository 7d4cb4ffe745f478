"""Transformer family: causality by gradients, stepping = full call, masks, dropout, args,
and parity with PyTorch's nn.TransformerEncoder/Decoder layers (copied weights)."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqscale import models
from tests.conftest import FAST_COMPILE

B, T, I, D, H = 2, 6, 3, 16, 4


def _x(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape)


def _dependence_TS(f, x_TI):
  """|d y_t / d x_s| summed over features: [T_out, T_in], for one batch row."""
  jac = jax.jit(jax.jacrev(f), compiler_options=FAST_COMPILE)(x_TI)  # [T_out, D, T_in, I]
  return np.abs(np.asarray(jac)).sum(axis=(1, 3))


def _seq_fn(model):
  graphdef, state = nnx.split(model)
  return lambda x_TI, **kw: nnx.merge(graphdef, state)(x_TI[None], **kw)[0]


def _assert_causal(dep_TS):
  assert np.all(np.triu(dep_TS, k=1) == 0), "output depends on a future input"
  assert np.all(np.diag(dep_TS) > 0)
  assert np.all(np.tril(dep_TS, k=-1)[1:, 0] > 0)  # and on the past


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_causal_transformer_is_causal_by_gradients(norm):
  model = models.create("transformer", in_features=I, hidden_features=D, causal=True,
                        norm=norm, rngs=nnx.Rngs(0))
  assert model.causal and model.out_features == D
  _assert_causal(_dependence_TS(_seq_fn(model), _x(1, (T, I))))


def test_encoder_depends_on_future_positions():
  model = models.create("transformer", in_features=I, hidden_features=D, rngs=nnx.Rngs(0))
  assert not model.causal
  dep = _dependence_TS(_seq_fn(model), _x(1, (T, I)))
  assert np.all(dep > 0)


def test_local_window_receptive_field_grows_with_depth():
  # Two layers of window r = 1: output t sees inputs t-2 .. t (causal) / t-2 .. t+2.
  for causal in (True, False):
    model = models.create("transformer", in_features=I, hidden_features=D, causal=causal,
                          local_window=1, rngs=nnx.Rngs(0))
    dep = _dependence_TS(_seq_fn(model), _x(1, (T, I)))
    t, s = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
    inside = (t - s <= 2) & (s - t <= (0 if causal else 2))
    assert np.all(dep[~inside] == 0) and np.all(dep[inside] > 0)


def test_seq2seq_is_causal_in_target_and_sees_whole_source():
  model = models.create("transformer_seq2seq", in_features=I, hidden_features=D,
                        tgt_in_features=5, rngs=nnx.Rngs(0))
  assert model.causal and model.interface == "seq2seq"
  graphdef, state = nnx.split(model)
  src, tgt = _x(1, (4, I)), _x(2, (T, 5))
  f_tgt = lambda tgt: nnx.merge(graphdef, state)(src[None], tgt[None])[0]
  _assert_causal(_dependence_TS(f_tgt, tgt))
  f_src = lambda src: nnx.merge(graphdef, state)(src[None], tgt[None])[0]
  assert np.all(_dependence_TS(f_src, src) > 0)


def _run_steps(model, xs_BT, state):
  ys = []
  for t in range(xs_BT.shape[1]):
    y, state = model.step(xs_BT[:, t], state)
    ys.append(y)
  return jnp.stack(ys, axis=1)


@pytest.mark.parametrize("norm,positions,local_window", [
    ("post", "sinusoidal", None), ("pre", "learned", None), ("post", "learned", 2),
    ("pre", "sinusoidal", 1), ("post", "none", None)])
def test_causal_transformer_step_equals_full_call(norm, positions, local_window):
  model = models.create("transformer", in_features=I, hidden_features=D, causal=True,
                        norm=norm, positions=positions, local_window=local_window,
                        max_length=32, rngs=nnx.Rngs(0))
  x = _x(1, (B, T, I))
  stepped = _run_steps(model, x, model.init_state(B, T + 2))
  np.testing.assert_allclose(stepped, model(x), atol=1e-5, rtol=0)


def test_lm_step_equals_full_call_under_jit_scan():
  model = models.create("transformer_lm", vocab_size=13, hidden_features=D, num_layers=2,
                        local_window=3, norm="pre", rngs=nnx.Rngs(0))
  assert model.interface == "lm" and model.out_features == 13
  tokens = jax.random.randint(jax.random.key(1), (B, 9), 0, 13)
  full = model(tokens)
  assert full.shape == (B, 9, 13)
  graphdef, params = nnx.split(model)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def decode(params, tokens):
    m = nnx.merge(graphdef, params)
    def body(state, tok_B):
      logits, state = m.step(tok_B, state)
      return state, logits
    _, logits_TBV = jax.lax.scan(body, m.init_state(B, 12), tokens.T)
    return logits_TBV.swapaxes(0, 1)

  np.testing.assert_allclose(decode(params, tokens), full, atol=1e-5, rtol=0)
  untied = models.create("transformer_lm", vocab_size=13, hidden_features=D,
                         tie_embeddings=False, positions="learned", rngs=nnx.Rngs(0))
  stepped = _run_steps(untied, tokens[:, :4], untied.init_state(B, 4))
  np.testing.assert_allclose(stepped, untied(tokens[:, :4]), atol=1e-5, rtol=0)


def test_seq2seq_step_equals_full_call():
  model = models.create("transformer_seq2seq", in_features=I, hidden_features=D,
                        norm="pre", local_window=2, rngs=nnx.Rngs(0))
  src, tgt = _x(1, (B, 5, I)), _x(2, (B, T, I))
  src_mask = jnp.arange(5)[None, :] < jnp.array([[3], [5]])
  state = model.init_state(B, T, src_BSI=src, src_mask=src_mask)
  np.testing.assert_allclose(_run_steps(model, tgt, state),
                             model(src, tgt, src_mask=src_mask), atol=1e-5, rtol=0)


def test_padding_does_not_change_valid_outputs():
  mask = jnp.arange(T)[None, :] < jnp.array([[4], [T]])
  x1 = _x(1, (B, T, I))
  x2 = jnp.where(mask[..., None], x1, 100.0 * _x(2, (B, T, I)))
  model = models.create("transformer", in_features=I, hidden_features=D, num_layers=2,
                        rngs=nnx.Rngs(0))
  y1, y2 = model(x1, mask=mask), model(x2, mask=mask)
  np.testing.assert_allclose(np.where(mask[..., None], y1 - y2, 0.0), 0.0, atol=1e-5)
  assert not np.allclose(model(x1), model(x2), atol=1e-3)  # the mask is what helps
  s2s = models.create("transformer_seq2seq", in_features=I, hidden_features=D,
                      rngs=nnx.Rngs(0))
  tgt = _x(3, (B, 4, I))
  np.testing.assert_allclose(s2s(x1, tgt, src_mask=mask), s2s(x2, tgt, src_mask=mask),
                             atol=1e-5)


def test_eval_makes_dropout_deterministic():
  model = models.create("transformer", in_features=I, hidden_features=D, dropout_rate=0.3,
                        causal=True, rngs=nnx.Rngs(0))
  x = _x(1, (B, T, I))
  model.train()
  a, b = model(x), model(x)
  assert not np.allclose(a, b)
  model.eval()
  c, d = model(x), model(x)
  np.testing.assert_array_equal(c, d)
  stepped = _run_steps(model, x, model.init_state(B, T))
  np.testing.assert_allclose(stepped, c, atol=1e-5)


def test_bfloat16_computation_dtype():
  model = models.create("transformer", in_features=I, hidden_features=D, causal=True,
                        dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  ref = models.create("transformer", in_features=I, hidden_features=D, causal=True,
                      rngs=nnx.Rngs(0))
  x = _x(1, (B, T, I))
  y = model(x)
  assert y.dtype == jnp.bfloat16
  assert jax.tree.leaves(nnx.state(model, nnx.Param))[0].dtype == jnp.float32
  np.testing.assert_allclose(y.astype(jnp.float32), ref(x), atol=0.15)


@pytest.mark.parametrize("kwargs,name", [
    ({"hidden_features": 10, "num_heads": 4}, "hidden_features"),
    ({"norm": "middle"}, "norm"),
    ({"positions": "rotary"}, "positions"),
    ({"local_window": -1}, "local_window"),
    ({"num_layers": 0}, "num_layers"),
    ({"dropout_rate": 1.0}, "dropout_rate"),
    ({"ff_features": 0}, "ff_features"),
    ({"max_length": 0}, "max_length"),
    ({"in_features": 0}, "in_features"),
])
def test_bad_arguments_raise(kwargs, name):
  kw = dict(in_features=I, hidden_features=D) | kwargs
  with pytest.raises(ValueError, match=name):
    models.create("transformer", rngs=nnx.Rngs(0), **kw)


def test_cannot_step_non_causal_or_past_learned_positions():
  enc = models.create("transformer", in_features=I, hidden_features=D, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="causal"):
    enc.init_state(B, T)
  with pytest.raises(ValueError, match="causal"):
    enc.step(jnp.zeros((B, I)), {})
  dec = models.create("transformer", in_features=I, hidden_features=D, causal=True,
                      positions="learned", max_length=4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="max_length"):
    dec.init_state(B, 5)
  with pytest.raises(ValueError, match="max_length"):
    dec(jnp.zeros((B, 5, I)))
  with pytest.raises(ValueError, match="vocab_size"):
    models.create("transformer_lm", vocab_size=0, hidden_features=D, rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------------------
# PyTorch parity: our layers with weights copied from nn.TransformerEncoder/DecoderLayer.


def _copy_torch_mha(ours, tmha):
  Dm, Hh = tmha.embed_dim, tmha.num_heads
  w, b = tmha.in_proj_weight.detach().numpy(), tmha.in_proj_bias.detach().numpy()
  for i, dense in enumerate([ours.query, ours.key, ours.value]):
    dense.kernel[...] = jnp.asarray(w[i * Dm:(i + 1) * Dm].T.reshape(Dm, Hh, Dm // Hh))
    dense.bias[...] = jnp.asarray(b[i * Dm:(i + 1) * Dm].reshape(Hh, Dm // Hh))
  ours.out.kernel[...] = jnp.asarray(
      tmha.out_proj.weight.detach().numpy().T.reshape(Hh, Dm // Hh, Dm))
  ours.out.bias[...] = jnp.asarray(tmha.out_proj.bias.detach().numpy())


def _copy_torch_linear(ours, tlin):
  ours.kernel[...] = jnp.asarray(tlin.weight.detach().numpy().T)
  ours.bias[...] = jnp.asarray(tlin.bias.detach().numpy())


def _copy_torch_norm(ours, tnorm):
  ours.scale[...] = jnp.asarray(tnorm.weight.detach().numpy())
  ours.bias[...] = jnp.asarray(tnorm.bias.detach().numpy())


def _copy_torch_layer(ours, tlayer, cross=False):
  _copy_torch_mha(ours.self_attn, tlayer.self_attn)
  _copy_torch_norm(ours.self_attn_norm, tlayer.norm1)
  if cross:
    _copy_torch_mha(ours.cross_attn, tlayer.multihead_attn)
    _copy_torch_norm(ours.cross_attn_norm, tlayer.norm2)
  _copy_torch_linear(ours.ff.linear1, tlayer.linear1)
  _copy_torch_linear(ours.ff.linear2, tlayer.linear2)
  _copy_torch_norm(ours.ff_norm, tlayer.norm3 if cross else tlayer.norm2)


def _identity_embed(linear):
  linear.kernel[...] = jnp.eye(D)
  linear.bias[...] = jnp.zeros(D)


def _randomize(torch, module):
  torch.manual_seed(0)
  with torch.no_grad():
    for p in module.parameters():
      p.normal_(0.0, 0.3)


@pytest.mark.parity
@pytest.mark.parametrize("norm,causal", list(itertools.product(["post", "pre"], [False, True])))
def test_encoder_matches_torch(norm, causal):
  torch = pytest.importorskip("torch")
  layer = torch.nn.TransformerEncoderLayer(
      D, H, dim_feedforward=32, dropout=0.0, activation="relu", batch_first=True,
      norm_first=(norm == "pre"), layer_norm_eps=1e-6)
  final = torch.nn.LayerNorm(D, eps=1e-6) if norm == "pre" else None
  tenc = torch.nn.TransformerEncoder(layer, num_layers=2, norm=final,
                                     enable_nested_tensor=False).eval()
  _randomize(torch, tenc)
  ours = models.create("transformer", in_features=D, hidden_features=D, num_layers=2,
                       num_heads=H, ff_features=32, causal=causal, positions="none",
                       norm=norm, rngs=nnx.Rngs(0))
  _identity_embed(ours.embed)
  for our_layer, tlayer in zip(ours.stack.layers, tenc.layers):
    _copy_torch_layer(our_layer, tlayer)
  if final is not None:
    _copy_torch_norm(ours.stack.final_norm, tenc.norm)
  x = np.array(_x(1, (B, T, D)))
  valid = np.arange(T)[None, :] < np.array([[4], [T]])
  # Bool masks (True = not allowed), the same type as the padding mask.
  future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
  causal_mask = future if causal else None
  with torch.no_grad():
    want = tenc(torch.from_numpy(x), mask=causal_mask, is_causal=causal,
                src_key_padding_mask=torch.from_numpy(~valid)).numpy()
  got = np.asarray(ours(jnp.asarray(x), mask=jnp.asarray(valid)))
  np.testing.assert_allclose(got[valid], want[valid], atol=1e-4, rtol=0)


@pytest.mark.parity
def test_seq2seq_matches_torch_post_ln():
  torch = pytest.importorskip("torch")
  kw = dict(dim_feedforward=32, dropout=0.0, activation="relu", batch_first=True,
            layer_norm_eps=1e-6)
  tenc = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(D, H, **kw), 2,
                                     enable_nested_tensor=False).eval()
  tdec = torch.nn.TransformerDecoder(torch.nn.TransformerDecoderLayer(D, H, **kw), 2).eval()
  _randomize(torch, tenc)
  _randomize(torch, tdec)
  ours = models.create("transformer_seq2seq", in_features=D, hidden_features=D,
                       num_layers=2, num_heads=H, ff_features=32, positions="none",
                       rngs=nnx.Rngs(0))
  _identity_embed(ours.src_embed)
  _identity_embed(ours.tgt_embed)
  for our_layer, tlayer in zip(ours.encoder.layers, tenc.layers):
    _copy_torch_layer(our_layer, tlayer)
  for our_layer, tlayer in zip(ours.decoder.layers, tdec.layers):
    _copy_torch_layer(our_layer, tlayer, cross=True)
  src, tgt = np.array(_x(1, (B, 5, D))), np.array(_x(2, (B, T, D)))
  src_valid = np.arange(5)[None, :] < np.array([[3], [5]])
  with torch.no_grad():
    memory = tenc(torch.from_numpy(src), src_key_padding_mask=torch.from_numpy(~src_valid))
    want = tdec(torch.from_numpy(tgt), memory,
                tgt_mask=torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1),
                tgt_is_causal=True,
                memory_key_padding_mask=torch.from_numpy(~src_valid)).numpy()
  got = ours(jnp.asarray(src), jnp.asarray(tgt), src_mask=jnp.asarray(src_valid))
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
