"""Transformer family (Vaswani et al. 2017): encoder, decoder-only, encoder-decoder, LM.

Registered models:
  transformer:          a sequence layer; `causal=False` is the encoder stack, `causal=True` a
                        decoder-only stack (causal self-attention, no cross-attention) that
                        steps with a key/value cache.
  transformer_seq2seq:  encoder-decoder; the decoder has causal self-attention and
                        cross-attention over the encoder output.
  transformer_lm:       decoder-only language model over tokens (embedding, optional tied
                        output projection), steps with a key/value cache.

Dropout follows the paper (on each sub-layer output before the residual sum, and on the sum
of embeddings and positions) and, as in PyTorch and tensor2tensor, on the attention weights;
all at `dropout_rate`. `norm='post'` is the paper's LayerNorm(x + Sublayer(x)); `norm='pre'`
is x + Sublayer(LayerNorm(x)) with a final LayerNorm after the stack.

`attention_impl` picks how attention is computed (the same function), as the `impl` of
`ops.attention.attention`: "auto" (default: chosen per backend, dtype, shapes, masks and
dropout by `ops.attention.choose_impl`; `ops.blockwise_attention` on a CPU, cuDNN or XLA's
fused attention on a GPU, the Pallas flash kernel on a TPU), "blockwise", "reference" (the
readable einsum version), "xla", "cudnn" (`jax.nn.dot_product_attention`) or "pallas". The
run's results.json names what ran (`context.attention`).

Shapes: B batch, T target/query length, S source length, I input features, D width,
H heads, K head dim, F feed-forward width, V vocabulary.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from seqscale.checks import check_int
from seqscale.models import attention
from seqscale.models.attention import MultiHeadAttention
from seqscale.models.registry import register
from seqscale.ops import attention as attn_ops

Array = jax.Array

_NORMS = ("post", "pre")
_POSITIONS = ("sinusoidal", "learned", "none")
_LN_EPSILON = 1e-6


# ---------------------------------------------------------------------------------------
# Argument checks


def _stack_kwargs(*, hidden_features, num_layers, num_heads, ff_features, positions,
                  max_length, norm, local_window, dropout_rate, dtype,
                  attention_impl) -> dict[str, Any]:
  """Validates the keywords shared by the family; returns `_Stack`'s (ff_features default
  4*D)."""
  check_int("hidden_features", hidden_features, 1)
  check_int("num_layers", num_layers, 1)
  check_int("num_heads", num_heads, 1)
  if hidden_features % num_heads:
    raise ValueError(
        f"hidden_features={hidden_features!r}: must be divisible by num_heads={num_heads!r}")
  ff_features = 4 * hidden_features if ff_features is None else ff_features
  check_int("ff_features", ff_features, 1)
  if positions not in _POSITIONS:
    raise ValueError(f"positions={positions!r}: must be one of {_POSITIONS}")
  check_int("max_length", max_length, 1)
  if norm not in _NORMS:
    raise ValueError(f"norm={norm!r}: must be one of {_NORMS}")
  if local_window is not None:
    check_int("local_window", local_window, 0)
  if not isinstance(dropout_rate, (int, float)) or not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"dropout_rate={dropout_rate!r}: must be a float in [0, 1)")
  attention.check_impl(attention_impl)
  return dict(num_layers=num_layers, num_heads=num_heads, ff_features=ff_features,
              positions=positions, max_length=max_length, norm=norm,
              local_window=local_window, dropout_rate=dropout_rate, dtype=dtype,
              attention_impl=attention_impl)


# ---------------------------------------------------------------------------------------
# Layers and stacks (attention itself: models/attention.py)


class _FeedForward(nnx.Module):
  """FFN(x) = max(0, x W1 + b1) W2 + b2, position-wise."""

  def __init__(self, D: int, F: int, *, dtype: Any, rngs: nnx.Rngs):
    self.linear1 = nnx.Linear(D, F, dtype=dtype, rngs=rngs)
    self.linear2 = nnx.Linear(F, D, dtype=dtype, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    return self.linear2(jax.nn.relu(self.linear1(x)))


class _Layer(nnx.Module):
  """Self-attention (optionally causal/windowed), optional cross-attention, feed-forward."""

  def __init__(self, D: int, H: int, F: int, *, causal: bool, cross_attention: bool,
               local_window: int | None, norm: str, dropout_rate: float, dtype: Any,
               attention_impl: str = "auto", rngs: nnx.Rngs):
    self.causal, self.local_window, self.norm_position = causal, local_window, norm
    ln = lambda: nnx.LayerNorm(D, epsilon=_LN_EPSILON, dtype=dtype, rngs=rngs)
    self.self_attn = MultiHeadAttention(D, H, dropout_rate=dropout_rate, dtype=dtype,
                                        impl=attention_impl, rngs=rngs)
    self.self_attn_norm = ln()
    if cross_attention:
      self.cross_attn = MultiHeadAttention(
          D, H, dropout_rate=dropout_rate, dtype=dtype, impl=attention_impl, rngs=rngs)
      self.cross_attn_norm = ln()
    else:
      self.cross_attn = self.cross_attn_norm = None
    self.ff = _FeedForward(D, F, dtype=dtype, rngs=rngs)
    self.ff_norm = ln()
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

  def _pre(self, x: Array, norm: nnx.LayerNorm) -> Array:
    return norm(x) if self.norm_position == "pre" else x

  def _post(self, x: Array, y: Array, norm: nnx.LayerNorm) -> Array:
    x = x + self.dropout(y)
    return norm(x) if self.norm_position == "post" else x

  def _cross_and_ff(self, x_BTD: Array, memory_kv, memory_mask_BS) -> Array:
    if self.cross_attn is not None:
      q_BTHK = self.cross_attn.project_q(self._pre(x_BTD, self.cross_attn_norm))
      y = self.cross_attn.attend(q_BTHK, *memory_kv, key_padding_mask_BS=memory_mask_BS)
      x_BTD = self._post(x_BTD, y, self.cross_attn_norm)
    return self._post(x_BTD, self.ff(self._pre(x_BTD, self.ff_norm)), self.ff_norm)

  def __call__(self, x_BTD: Array, *, mask_BT: Array | None = None,
               memory_BSD: Array | None = None, memory_mask_BS: Array | None = None) -> Array:
    y = self.self_attn(self._pre(x_BTD, self.self_attn_norm), causal=self.causal,
                       key_padding_mask_BS=mask_BT, local_window=self.local_window)
    x_BTD = self._post(x_BTD, y, self.self_attn_norm)
    memory_kv = None if self.cross_attn is None else self.cross_attn.project_kv(memory_BSD)
    return self._cross_and_ff(x_BTD, memory_kv, memory_mask_BS)

  def self_attention_weights(self, x_BTD: Array, *, mask_BT: Array | None = None) -> Array:
    """The weights_BHTS of this layer's self-attention for its input x_BTD."""
    return self.self_attn.weights(self._pre(x_BTD, self.self_attn_norm), causal=self.causal,
                                  key_padding_mask_BS=mask_BT, local_window=self.local_window)

  def step(self, x_BD: Array, cache: dict[str, Array], index: Array,
           memory_mask_BS: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """One causal step: writes this position's k/v into the cache at `index`, attends."""
    h_BTD = self._pre(x_BD, self.self_attn_norm)[:, None]  # T = 1
    q_BTHK = self.self_attn.project_q(h_BTD)
    k_BTHK, v_BTHK = self.self_attn.project_kv(h_BTD)
    write = lambda c, new: jax.lax.dynamic_update_slice_in_dim(
        c, new.astype(c.dtype), index, axis=1)
    cache = dict(cache, k=write(cache["k"], k_BTHK), v=write(cache["v"], v_BTHK))
    y = self.self_attn.attend(q_BTHK, cache["k"], cache["v"], causal=True,
                              local_window=self.local_window, query_offset=index)
    x_BTD = self._post(x_BD[:, None], y, self.self_attn_norm)
    memory_kv = None if self.cross_attn is None else (cache["cross_k"], cache["cross_v"])
    return self._cross_and_ff(x_BTD, memory_kv, memory_mask_BS)[:, 0], cache


class _Stack(nnx.Module):
  """Positions, dropout, `num_layers` layers and (pre-LN only) a final LayerNorm."""

  def __init__(self, D: int, *, num_layers: int, num_heads: int, ff_features: int,
               causal: bool, cross_attention: bool, positions: str, max_length: int,
               norm: str, local_window: int | None, dropout_rate: float, dtype: Any,
               attention_impl: str = "auto", rngs: nnx.Rngs):
    self.D, self.causal, self.positions, self.max_length = D, causal, positions, max_length
    self.dtype = dtype
    self.position_embed = (
        nnx.Embed(max_length, D, embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
        if positions == "learned" else None)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self.layers = nnx.List([
        _Layer(D, num_heads, ff_features, causal=causal, cross_attention=cross_attention,
               local_window=local_window, norm=norm, dropout_rate=dropout_rate, dtype=dtype,
               attention_impl=attention_impl, rngs=rngs) for _ in range(num_layers)])
    self.final_norm = (nnx.LayerNorm(D, epsilon=_LN_EPSILON, dtype=dtype, rngs=rngs)
                       if norm == "pre" else None)

  def _add_positions(self, h_BTD: Array, offset: int | Array) -> Array:
    T = h_BTD.shape[1]
    if self.positions == "sinusoidal":
      h_BTD = h_BTD + attn_ops.sinusoidal_positions(T, self.D, offset=offset).astype(h_BTD.dtype)
    elif self.positions == "learned":
      table = self.position_embed.embedding[...]
      h_BTD = h_BTD + jax.lax.dynamic_slice_in_dim(table, offset, T).astype(h_BTD.dtype)
    return self.dropout(h_BTD)

  def _finish(self, h: Array) -> Array:
    return h if self.final_norm is None else self.final_norm(h)

  def __call__(self, h_BTD: Array, *, mask_BT: Array | None = None,
               memory_BSD: Array | None = None, memory_mask_BS: Array | None = None) -> Array:
    if self.positions == "learned" and h_BTD.shape[1] > self.max_length:
      raise ValueError(f"length {h_BTD.shape[1]} exceeds max_length={self.max_length} of the "
                       "learned positions; construct the model with a larger max_length")
    h_BTD = self._add_positions(h_BTD, 0)
    for layer in self.layers:
      h_BTD = layer(h_BTD, mask_BT=mask_BT, memory_BSD=memory_BSD,
                    memory_mask_BS=memory_mask_BS)
    return self._finish(h_BTD)

  def attention_weights(self, h_BTD: Array, *, mask_BT: Array | None = None) -> list[Array]:
    """Each layer's self-attention weights_BHTS, running the stack on embedded h_BTD."""
    h_BTD = self._add_positions(h_BTD, 0)
    weights = []
    for layer in self.layers:
      weights.append(layer.self_attention_weights(h_BTD, mask_BT=mask_BT))
      h_BTD = layer(h_BTD, mask_BT=mask_BT)
    return weights

  def require_causal(self) -> None:
    if not self.causal:
      raise ValueError("a non-causal (causal=False) transformer cannot step: every output "
                       "depends on future inputs; construct it with causal=True")

  def init_state(self, batch_size: int, max_length: int | None,
                 memory_BSD: Array | None = None,
                 memory_mask_BS: Array | None = None) -> dict[str, Any]:
    self.require_causal()
    max_length = self.max_length if max_length is None else max_length
    check_int("batch_size", batch_size, 1)
    check_int("max_length", max_length, 1)
    if self.positions == "learned" and max_length > self.max_length:
      raise ValueError(f"max_length={max_length!r}: must be <= the model's max_length="
                       f"{self.max_length} (learned positions)")
    layer0 = self.layers[0].self_attn
    shape = (batch_size, max_length, layer0.num_heads, layer0.head_dim)
    dtype = jnp.float32 if self.dtype is None else self.dtype
    caches = []
    for layer in self.layers:
      cache = {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
      if layer.cross_attn is not None:
        # Cross-attention keys/values depend only on the source: computed once.
        cache["cross_k"], cache["cross_v"] = layer.cross_attn.project_kv(memory_BSD)
      caches.append(cache)
    state = {"index": jnp.zeros((), jnp.int32), "layers": caches}
    if memory_mask_BS is not None:
      state["memory_mask_BS"] = jnp.asarray(memory_mask_BS, bool)
    return state

  def step(self, h_BD: Array, state: dict[str, Any]) -> tuple[Array, dict[str, Any]]:
    # Steps past the cache length are not checked (they cannot be under jit): the write
    # would be clamped to the last slot. Size the cache with init_state(max_length=...).
    self.require_causal()
    index = state["index"]
    h_BD = self._add_positions(h_BD[:, None], index)[:, 0]
    caches = []
    for layer, cache in zip(self.layers, state["layers"]):
      h_BD, cache = layer.step(h_BD, cache, index, state.get("memory_mask_BS"))
      caches.append(cache)
    return self._finish(h_BD), dict(state, index=index + 1, layers=caches)


# ---------------------------------------------------------------------------------------
# Registered models


@register("transformer")
class Transformer(nnx.Module):
  """Transformer stack as a sequence layer: x_BTI -> y_BTD.

  `causal=False` is the encoder (every output sees every unmasked input); `causal=True` is a
  decoder-only stack that steps with a key/value cache. `local_window=r` restricts
  self-attention to |t - s| <= r (t - r <= s <= t when causal).
  """

  interface = "sequence"

  def __init__(self, in_features: int, hidden_features: int, num_layers: int = 2,
               num_heads: int = 4, ff_features: int | None = None, causal: bool = False,
               positions: str = "sinusoidal", max_length: int = 2048, norm: str = "post",
               local_window: int | None = None, dropout_rate: float = 0.0, dtype: Any = None,
               attention_impl: str = "auto", *, rngs: nnx.Rngs):
    check_int("in_features", in_features, 1)
    kw = _stack_kwargs(
        hidden_features=hidden_features, num_layers=num_layers, num_heads=num_heads,
        ff_features=ff_features, positions=positions, max_length=max_length, norm=norm,
        local_window=local_window, dropout_rate=dropout_rate, dtype=dtype,
        attention_impl=attention_impl)
    self.causal, self.out_features = bool(causal), hidden_features
    self.embed = nnx.Linear(in_features, hidden_features, dtype=dtype, rngs=rngs)
    self.stack = _Stack(hidden_features, causal=self.causal, cross_attention=False, rngs=rngs,
                        **kw)

  def __call__(self, x_BTI: Array, *, mask: Array | None = None) -> Array:
    """x_BTI, mask bool [B, T] (True = valid) -> y_BTD."""
    return self.stack(self.embed(x_BTI), mask_BT=mask)

  def attention_weights(self, x_BTI: Array, *, mask: Array | None = None) -> list[Array]:
    """Self-attention weights_BHTS (float32) of every layer, without dropout on them.

    Rows sum to 1 over allowed keys and are 0 at masked ones (causal, window, padding).
    """
    return self.stack.attention_weights(self.embed(x_BTI), mask_BT=mask)

  def init_state(self, batch_size: int, max_length: int | None = None) -> dict[str, Any]:
    """KV caches [B, max_length, H, K] per layer and a position index (causal only)."""
    return self.stack.init_state(batch_size, max_length)

  def step(self, x_BI: Array, state: dict[str, Any]) -> tuple[Array, dict[str, Any]]:
    """One time step: x_BI -> y_BD (causal only)."""
    self.stack.require_causal()
    return self.stack.step(self.embed(x_BI), state)


@register("transformer_seq2seq")
class TransformerSeq2Seq(nnx.Module):
  """Encoder-decoder Transformer: (src_BSI, tgt_BTI) -> y_BTD (decoder states, no vocab).

  The decoder is causal over the target (already shifted by the caller). Stepping:
  `init_state(B, max_length, src_BSI=..., src_mask=...)` encodes the source once.
  """

  interface = "seq2seq"

  def __init__(self, in_features: int, hidden_features: int, num_layers: int = 2,
               num_heads: int = 4, ff_features: int | None = None,
               positions: str = "sinusoidal", max_length: int = 2048, norm: str = "post",
               local_window: int | None = None, dropout_rate: float = 0.0, dtype: Any = None,
               tgt_in_features: int | None = None, attention_impl: str = "auto", *,
               rngs: nnx.Rngs):
    tgt_in_features = in_features if tgt_in_features is None else tgt_in_features
    check_int("in_features", in_features, 1)
    check_int("tgt_in_features", tgt_in_features, 1)
    kw = _stack_kwargs(
        hidden_features=hidden_features, num_layers=num_layers, num_heads=num_heads,
        ff_features=ff_features, positions=positions, max_length=max_length, norm=norm,
        local_window=local_window, dropout_rate=dropout_rate, dtype=dtype,
        attention_impl=attention_impl)
    self.causal, self.out_features = True, hidden_features
    self.src_embed = nnx.Linear(in_features, hidden_features, dtype=dtype, rngs=rngs)
    self.encoder = _Stack(hidden_features, causal=False, cross_attention=False, rngs=rngs, **kw)
    self.tgt_embed = nnx.Linear(tgt_in_features, hidden_features, dtype=dtype, rngs=rngs)
    self.decoder = _Stack(hidden_features, causal=True, cross_attention=True, rngs=rngs, **kw)

  def encode(self, src_BSI: Array, *, src_mask: Array | None = None) -> Array:
    """Encoder output memory_BSD."""
    return self.encoder(self.src_embed(src_BSI), mask_BT=src_mask)

  def __call__(self, src_BSI: Array, tgt_BTI: Array, *, src_mask: Array | None = None,
               tgt_mask: Array | None = None) -> Array:
    """Masks are bool [B, S] / [B, T], True at valid positions -> y_BTD."""
    memory_BSD = self.encode(src_BSI, src_mask=src_mask)
    return self.decoder(self.tgt_embed(tgt_BTI), mask_BT=tgt_mask, memory_BSD=memory_BSD,
                        memory_mask_BS=src_mask)

  def init_state(self, batch_size: int, max_length: int | None = None, *, src_BSI: Array,
                 src_mask: Array | None = None) -> dict[str, Any]:
    """Encodes the source; returns decoder KV caches, cross-attention K/V and an index."""
    memory_BSD = self.encode(src_BSI, src_mask=src_mask)
    return self.decoder.init_state(batch_size, max_length, memory_BSD, src_mask)

  def step(self, tgt_BI: Array, state: dict[str, Any]) -> tuple[Array, dict[str, Any]]:
    """One target step: tgt_BI -> y_BD."""
    return self.decoder.step(self.tgt_embed(tgt_BI), state)


@register("transformer_lm")
class TransformerLM(nnx.Module):
  """Decoder-only Transformer language model: tokens_BT -> logits_BTV.

  Embeddings are scaled by sqrt(D) as in the paper; `tie_embeddings` reuses the embedding
  matrix as the output projection.
  """

  interface = "lm"

  def __init__(self, vocab_size: int, hidden_features: int, num_layers: int = 2,
               num_heads: int = 4, ff_features: int | None = None,
               positions: str = "sinusoidal", max_length: int = 2048, norm: str = "post",
               local_window: int | None = None, dropout_rate: float = 0.0,
               tie_embeddings: bool = True, dtype: Any = None, attention_impl: str = "auto",
               *, rngs: nnx.Rngs):
    check_int("vocab_size", vocab_size, 1)
    kw = _stack_kwargs(
        hidden_features=hidden_features, num_layers=num_layers, num_heads=num_heads,
        ff_features=ff_features, positions=positions, max_length=max_length, norm=norm,
        local_window=local_window, dropout_rate=dropout_rate, dtype=dtype,
        attention_impl=attention_impl)
    self.causal, self.out_features = True, vocab_size
    self.embed = nnx.Embed(vocab_size, hidden_features, dtype=dtype, rngs=rngs)
    self.stack = _Stack(hidden_features, causal=True, cross_attention=False, rngs=rngs, **kw)
    self.head = (None if tie_embeddings else
                 nnx.Linear(hidden_features, vocab_size, dtype=dtype, rngs=rngs))

  def _embed(self, tokens: Array) -> Array:
    return self.embed(tokens) * math.sqrt(self.embed.features)

  def _logits(self, h: Array) -> Array:
    return self.embed.attend(h) if self.head is None else self.head(h)

  def __call__(self, tokens_BT: Array) -> Array:
    """tokens_BT (int) -> logits_BTV."""
    return self._logits(self.stack(self._embed(tokens_BT)))

  def attention_weights(self, tokens_BT: Array) -> list[Array]:
    """Causal self-attention weights_BHTS (float32) of every layer for tokens_BT."""
    return self.stack.attention_weights(self._embed(tokens_BT))

  def init_state(self, batch_size: int, max_length: int | None = None) -> dict[str, Any]:
    """KV caches [B, max_length, H, K] per layer and a position index."""
    return self.stack.init_state(batch_size, max_length)

  def step(self, tokens_B: Array, state: dict[str, Any]) -> tuple[Array, dict[str, Any]]:
    """One token per sequence: tokens_B -> logits_BV."""
    h_BD, state = self.stack.step(self._embed(tokens_B), state)
    return self._logits(h_BD), state
