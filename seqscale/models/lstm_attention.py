"""RNN encoder-decoder with attention (registered ``lstm_attention``).

The encoder is a bidirectional LSTM (``seqscale.models.recurrent.LSTM``); its final states,
through a learned bridge, start an LSTM decoder. ``attention`` picks how the decoder reads
the encoder states m_s (width M = 2D) at each target step t:

- ``"additive"`` (Bahdanau et al. 2014): the previous decoder state h_{t-1} scores every
  m_s with ``v . tanh(h W_q + m_s W_m)``; the context c_t = sum_s a_ts m_s is fed into the
  LSTM with the input: h_t = LSTM([x_t; c_t], h_{t-1}).
- ``"multiplicative"`` (Luong et al. 2015): h_t = LSTM([x_t; h~_{t-1}], h_{t-1}) ("input
  feeding"), then h_t scores m_s by ``h_t . (m_s W_m)`` (``score="general"``) or
  ``h_t . m_s`` (``score="dot"``, with the two encoder directions summed so widths match).
- ``"none"``: plain sequence to sequence (Sutskever et al. 2014): the decoder sees the source
  only through the bridge, the baseline attention is compared with.

With attention the output is h~_t = tanh(W_c [c_t; h_t]) (Luong's attentional state; for
Bahdanau it stands in for his maxout layer), without it h_t; the trainer adds the vocabulary
head. Padded source positions (``src_mask`` False) get exactly zero attention weight.

The decoder runs as one ``lax.scan`` of ``_decoder_step``: attention makes step t depend
on h_{t-1}, so unlike the encoder's input projection nothing here is parallel over time.
Dropout (``dropout_rate``) acts between encoder layers, on the decoder inputs and on the
decoder outputs, i.e. outside the scan.

Greedy and beam-search decoding through ``step``: ``seqscale.models.decoding``.

Shapes: B batch, S source length, T target length, I input features, D width, M = 2D
memory width, A attention width.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from seqscale.checks import check_int
from seqscale.models import recurrent
from seqscale.models.registry import register
from seqscale.ops import additive_attention as attn
from seqscale.ops import recurrent as rec_ops

Array = jax.Array

ATTENTIONS = ("additive", "multiplicative", "none")
SCORES = ("general", "dot")


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int) -> nnx.Param:
  bound = 1.0 / fan_in ** 0.5
  return nnx.Param(jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound))


def _softmax(scores_BS: Array, mask_BS: Array | None) -> Array:
  """The attention weights, computed in float32 and returned in the scores' dtype."""
  weights_BS = attn.softmax_over_source(scores_BS.astype(jnp.float32), mask_BS)
  return weights_BS.astype(scores_BS.dtype)


def _decoder_step(p: dict[str, Any], attention: str, num_layers: int,
                  memory: dict[str, Array], carry: tuple[Any, Array],
                  x_BI: Array) -> tuple[tuple[Any, Array], tuple[Array, Array]]:
  """One decoder step. carry = (per-layer LSTM carries, h~_{t-1} [B, D]).

  Returns (carry, (y_BD, weights_BS)); weights are zeros [B, 0] without attention.
  """
  layers, feed_BD = carry
  values_BSM, keys, mask_BS = memory["values"], memory["keys"], memory["mask"]
  weights_BS = jnp.zeros((x_BI.shape[0], 0), x_BI.dtype)
  if attention == "additive":
    scores_BS = attn.additive_scores(layers[-1][0], keys, p["w_q"], p["v"])
    weights_BS = _softmax(scores_BS, mask_BS)
    ctx_BM = attn.context(weights_BS, values_BSM)
    h_BX = jnp.concatenate([x_BI, ctx_BM], axis=-1)
  elif attention == "multiplicative":
    h_BX = jnp.concatenate([x_BI, feed_BD], axis=-1)
  else:
    h_BX = x_BI
  new_layers = []
  for l in range(num_layers):
    layer_carry, h_BX = rec_ops.step("lstm", p["layers"][l], layers[l], h_BX)
    new_layers.append(layer_carry)
  if attention == "multiplicative":
    weights_BS = _softmax(attn.dot_scores(h_BX, keys), mask_BS)
    ctx_BM = attn.context(weights_BS, values_BSM)
  if attention != "none":
    h_BX = jnp.tanh(jnp.concatenate([ctx_BM, h_BX], axis=-1) @ p["w_c"])
    feed_BD = h_BX
  return (tuple(new_layers), feed_BD), (h_BX, weights_BS)


@register("lstm_attention")
class LSTMAttention(nnx.Module):
  """Bidirectional LSTM encoder, LSTM decoder, additive / multiplicative / no attention.

  ``model(src_BSI, tgt_BTI, src_mask=...) -> y_BTD`` (teacher forcing: ``tgt`` is the
  shifted target); ``init_state(B, src_BSI=..., src_mask=...)`` then ``step(tgt_BI, state)``
  decodes one step at a time (see ``seqscale.models.decoding``).
  """

  interface = "seq2seq"

  def __init__(self, in_features: int, hidden_features: int, num_layers: int = 1,
               attention: str = "additive", score: str = "general",
               attention_features: int | None = None, tgt_in_features: int | None = None,
               dropout_rate: float = 0.0, unroll: int = 1, dtype: Any = None, *,
               rngs: nnx.Rngs):
    tgt_in_features = in_features if tgt_in_features is None else tgt_in_features
    check_int("in_features", in_features, 1)
    check_int("tgt_in_features", tgt_in_features, 1)
    check_int("hidden_features", hidden_features, 1)
    check_int("num_layers", num_layers, 1)
    if attention not in ATTENTIONS:
      raise ValueError(f"attention={attention!r}; allowed: {', '.join(ATTENTIONS)}")
    if score not in SCORES:
      raise ValueError(f"score={score!r}; allowed: {', '.join(SCORES)}")
    D = hidden_features
    A = D if attention_features is None else attention_features
    check_int("attention_features", A, 1)
    M = 2 * D
    self.in_features, self.tgt_in_features, self.hidden_features = (
        in_features, tgt_in_features, D)
    self.num_layers, self.attention, self.score, self.dtype = num_layers, attention, score, dtype
    self.unroll = unroll
    self.causal, self.out_features = True, D
    self.encoder = recurrent.LSTM(in_features, D, num_layers, bidirectional=True,
                                  dropout_rate=dropout_rate, unroll=unroll, dtype=dtype,
                                  rngs=rngs)
    # Bridge: the encoder's final (h, c) of both directions -> the decoder's initial (h, c).
    self.bridge = nnx.List([_param(rngs, (2 * M, M), 2 * M) for _ in range(num_layers)])
    feed = {"additive": M, "multiplicative": D, "none": 0}[attention]
    self.decoder = nnx.List([
        recurrent.Weights(tgt_in_features + feed if l == 0 else D, D, 4, rngs=rngs)
        for l in range(num_layers)])
    additive = attention == "additive"
    general = attention == "multiplicative" and score == "general"
    # Keys m W_m (+ b_m); queries h W_q and the scoring vector v (additive only).
    self.w_m = (_param(rngs, (M, A), M) if additive else
                _param(rngs, (M, D), M) if general else None)
    self.b_m = nnx.Param(jnp.zeros((A,), jnp.float32)) if additive else None
    self.w_q = _param(rngs, (D, A), D) if additive else None
    self.v = _param(rngs, (A,), A) if additive else None
    # The attentional output tanh(W_c [c; h]).
    self.w_c = _param(rngs, (M + D, D), M + D) if attention != "none" else None
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

  def _dtype(self, x: Array) -> Any:
    return self.dtype if self.dtype is not None else jnp.promote_types(x.dtype, jnp.float32)

  def _params(self, dtype: Any) -> dict[str, Any]:
    cast = lambda v: None if v is None else v[...].astype(dtype)
    return {"layers": [w.params(dtype) for w in self.decoder], "w_q": cast(self.w_q),
            "v": cast(self.v), "w_c": cast(self.w_c)}

  def encode(self, src_BSI: Array, *, src_mask: Array | None = None
             ) -> tuple[dict[str, Array], tuple]:
    """The memory (values [B, S, M], keys, mask [B, S]) and the decoder's initial carries."""
    if src_BSI.ndim != 3 or src_BSI.shape[-1] != self.in_features:
      raise ValueError(f"src_BSI has shape {src_BSI.shape}; expected [B, S, {self.in_features}]")
    dtype = self._dtype(src_BSI)
    B, S = src_BSI.shape[:2]
    mask_BS = (jnp.ones((B, S), bool) if src_mask is None
               else jnp.asarray(src_mask, bool).reshape(B, S))
    values_BSM, final = self.encoder.run(src_BSI.astype(dtype), mask=src_mask)
    if self.attention == "additive":
      keys = values_BSM @ self.w_m[...].astype(dtype) + self.b_m[...].astype(dtype)
    elif self.attention == "multiplicative" and self.score == "general":
      keys = values_BSM @ self.w_m[...].astype(dtype)
    elif self.attention == "multiplicative":  # dot: sum the two directions to width D
      keys = values_BSM[..., :self.hidden_features] + values_BSM[..., self.hidden_features:]
    else:
      keys = jnp.zeros((B, S, 0), dtype)
    carries = []
    for l, ((hf, cf), (hb, cb)) in enumerate(final):
      hc = jnp.concatenate([hf, hb, cf, cb], axis=-1) @ self.bridge[l][...].astype(dtype)
      h_BD, c_BD = jnp.split(hc, 2, axis=-1)
      carries.append((jnp.tanh(h_BD), c_BD))
    memory = {"values": values_BSM, "keys": keys, "mask": mask_BS}
    return memory, tuple(carries)

  def run(self, src_BSI: Array, tgt_BTI: Array, *, src_mask: Array | None = None,
          tgt_mask: Array | None = None) -> tuple[Array, Array]:
    """Teacher-forced decoding: (y_BTD, attention weights [B, T, S] (or [B, T, 0]))."""
    del tgt_mask  # the decoder is causal: padding at the end changes no earlier output
    if tgt_BTI.ndim != 3 or tgt_BTI.shape[-1] != self.tgt_in_features:
      raise ValueError(
          f"tgt_BTI has shape {tgt_BTI.shape}; expected [B, T, {self.tgt_in_features}]")
    memory, carries = self.encode(src_BSI, src_mask=src_mask)
    dtype = self._dtype(src_BSI)
    x_TBI = jnp.swapaxes(self.dropout(tgt_BTI.astype(dtype)), 0, 1)
    feed_BD = jnp.zeros((tgt_BTI.shape[0], self.hidden_features), dtype)
    step_fn = functools.partial(_decoder_step, self._params(dtype), self.attention,
                                self.num_layers, memory)
    _, (y_TBD, w_TBS) = jax.lax.scan(step_fn, (carries, feed_BD), x_TBI, unroll=self.unroll)
    return self.dropout(jnp.swapaxes(y_TBD, 0, 1)), jnp.swapaxes(w_TBS, 0, 1)

  def __call__(self, src_BSI: Array, tgt_BTI: Array, *, src_mask: Array | None = None,
               tgt_mask: Array | None = None) -> Array:
    """(src_BSI, tgt_BTI), ``src_mask`` bool [B, S] True at valid positions -> y_BTD."""
    return self.run(src_BSI, tgt_BTI, src_mask=src_mask, tgt_mask=tgt_mask)[0]

  def init_state(self, batch_size: int, max_length: int | None = None, *, src_BSI: Array,
                 src_mask: Array | None = None) -> dict[str, Any]:
    """Encodes the source once: the memory, the decoder carries and h~ (``max_length`` unused)."""
    del max_length
    if src_BSI.shape[0] != batch_size:
      raise ValueError(f"batch_size={batch_size!r} but src_BSI has batch {src_BSI.shape[0]}")
    memory, carries = self.encode(src_BSI, src_mask=src_mask)
    feed_BD = jnp.zeros((batch_size, self.hidden_features), memory["values"].dtype)
    return {"memory": memory, "carry": (carries, feed_BD)}

  def step(self, tgt_BI: Array, state: dict[str, Any]) -> tuple[Array, dict[str, Any]]:
    """One target step: tgt_BI [B, I] -> (y_BD, next state)."""
    dtype = state["memory"]["values"].dtype
    carry, (y_BD, _) = _decoder_step(self._params(dtype), self.attention, self.num_layers,
                                     state["memory"], state["carry"],
                                     self.dropout(tgt_BI.astype(dtype)))
    return self.dropout(y_BD), dict(state, carry=carry)
