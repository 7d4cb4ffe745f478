"""Greedy, beam-search and sampled decoding, written once for every model that steps.

The search sees one small step interface, a pure function

  step(tokens_B, state, shared) -> (logits_BV, state, shared)

``state`` holds one row per hypothesis along its leading axis (beam search reorders those
rows when it keeps a hypothesis's children); ``shared`` is threaded through untouched in
layout (a model's weights). ``greedy_search`` and ``beam_search`` work on any such function;
``seq2seq_step`` builds one from a seq2seq model with ``init_state(B, max_length,
src_BSI=, src_mask=)`` and ``step(x_BI, state)`` (``lstm_attention``,
``transformer_seq2seq``), and ``decode_greedy`` / ``decode_beam`` put the two together.

``sample_search`` draws tokens with a temperature and top-k after feeding a prompt, and
``sample`` applies it to any model that steps (``transformer_lm`` through its KV cache,
recurrent and convolutional models between an embedding and a head, ``LMStepper``).

A sequence ends at its first ``eos_id`` (included); after it come ``pad_id`` tokens at no
cost. Scores are sums of log-probabilities in float32.

Shapes: B batch, K beam size, V vocabulary, L = ``max_length`` generated tokens, S source
length, I decoder input features, D decoder width.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from seqscale.checks import check_int

Array = jax.Array
Step = Callable[[Array, Any, Any], tuple[Array, Any, Any]]


def _check(max_length: int, bos_id: int, eos_id: int) -> None:
  check_int("max_length", max_length, 1)
  check_int("bos_id", bos_id, 0)
  check_int("eos_id", eos_id, 0)


def greedy_search(step: Step, state: Any, shared: Any, *, batch_size: int, max_length: int,
                  bos_id: int, eos_id: int, pad_id: int = 0) -> tuple[Array, Array]:
  """The most likely next token at every step.

  Args:
    step: ``step(tokens_B, state, shared) -> (logits_BV, state, shared)``.
    state: the decoder state for ``batch_size`` rows.
    shared: threaded through ``step`` (e.g. model weights).
    batch_size: B.
    max_length: number of tokens generated.
    bos_id, eos_id: first input token; the token that ends a sequence.
    pad_id: written after a sequence's EOS.

  Returns:
    (tokens [B, max_length] int32 with EOS included and pad after it, sum of the chosen
    tokens' log-probabilities [B]).
  """
  _check(max_length, bos_id, eos_id)
  B = batch_size

  def body(carry, _):
    (state, shared), last_B, score_B, done_B = carry
    logits_BV, state, shared = step(last_B, state, shared)
    logp_BV = jax.nn.log_softmax(logits_BV.astype(jnp.float32), axis=-1)
    tok_B = jnp.argmax(logp_BV, axis=-1).astype(jnp.int32)
    score_B = score_B + jnp.where(done_B, 0.0, jnp.take_along_axis(
        logp_BV, tok_B[:, None], axis=-1)[:, 0])
    tok_B = jnp.where(done_B, pad_id, tok_B)
    return ((state, shared), tok_B, score_B, done_B | (tok_B == eos_id)), tok_B

  init = ((state, shared), jnp.full((B,), bos_id, jnp.int32), jnp.zeros((B,), jnp.float32),
          jnp.zeros((B,), bool))
  (_, _, score_B, _), tokens_LB = jax.lax.scan(body, init, None, length=max_length)
  return tokens_LB.T, score_B


def beam_search(step: Step, state: Any, shared: Any, *, batch_size: int, beam_size: int,
                max_length: int, bos_id: int, eos_id: int, pad_id: int = 0,
                length_penalty: float = 0.0) -> tuple[Array, Array]:
  """Keeps the ``beam_size`` most likely prefixes at every step.

  A finished hypothesis (it produced EOS) stays in the beam with its score and extends
  only by ``pad_id`` at no cost. The returned hypothesis maximises
  ``score / ((5 + length) / 6) ** length_penalty`` (Wu et al. 2016; 0 = raw
  log-probability), length counting the tokens other than ``pad_id``.

  Args:
    step, shared, max_length, bos_id, eos_id, pad_id: as in ``greedy_search``.
    state: the decoder state for B * K rows, batch-major (row ``b * K + k``); leaves whose
      leading axis is B * K are reordered with the beams, others left as they are.
    batch_size: B.
    beam_size: K; 1 is greedy search.
    length_penalty: the exponent above.

  Returns:
    (tokens [B, max_length] int32, score [B]) of the best hypothesis, as ``greedy_search``.
  """
  _check(max_length, bos_id, eos_id)
  check_int("beam_size", beam_size, 1)
  B, K = batch_size, beam_size

  def body(carry, t):
    (state, shared), tokens_BKL, score_BK, done_BK = carry
    last_BK = jnp.where(t == 0, bos_id, tokens_BKL[:, :, jnp.maximum(t - 1, 0)])
    logits, state, shared = step(last_BK.reshape(B * K), state, shared)
    logp_BKV = jax.nn.log_softmax(logits.astype(jnp.float32), -1).reshape(B, K, -1)
    V = logp_BKV.shape[-1]
    only_pad_V = jnp.full((V,), -jnp.inf).at[pad_id].set(0.0)
    logp_BKV = jnp.where(done_BK[..., None], only_pad_V, logp_BKV)
    cand_BX = (score_BK[..., None] + logp_BKV).reshape(B, K * V)
    score_BK, idx_BK = jax.lax.top_k(cand_BX, K)
    parent_BK, tok_BK = idx_BK // V, (idx_BK % V).astype(jnp.int32)
    take = lambda a: jnp.take_along_axis(a, parent_BK.reshape(B, K, *([1] * (a.ndim - 2))),
                                         axis=1)
    tokens_BKL = take(tokens_BKL).at[:, :, t].set(tok_BK)
    done_BK = take(done_BK) | (tok_BK == eos_id)
    rows = (jnp.arange(B)[:, None] * K + parent_BK).reshape(B * K)
    state = jax.tree.map(lambda a: a[rows] if a.ndim and a.shape[0] == B * K else a, state)
    return ((state, shared), tokens_BKL, score_BK, done_BK), None

  # Only beam 0 is live at the start, so the first step does not pick K copies of one token.
  score_BK = jnp.full((B, K), -jnp.inf).at[:, 0].set(0.0)
  init = ((state, shared), jnp.full((B, K, max_length), pad_id, jnp.int32), score_BK,
          jnp.zeros((B, K), bool))
  (_, tokens_BKL, score_BK, _), _ = jax.lax.scan(body, init, jnp.arange(max_length))
  length_BK = jnp.sum(tokens_BKL != pad_id, axis=-1).astype(jnp.float32)
  ranked_BK = score_BK / ((5.0 + length_BK) / 6.0) ** length_penalty
  best_B = jnp.argmax(ranked_BK, axis=-1)
  return tokens_BKL[jnp.arange(B), best_B], score_BK[jnp.arange(B), best_B]


def seq2seq_step(model: nnx.Module, embed_fn: Callable[[Array], Array],
                 logits_fn: Callable[[Array], Array]) -> tuple[Step, nnx.State]:
  """A stepping model as the search's ``step``, and its weights as ``shared``.

  ``step(tokens_B, state, weights)`` embeds the tokens (``embed_fn``: ids [B] -> [B, I]),
  steps the model and projects to logits (``logits_fn``: [B, D] -> [B, V]). The weights go
  through ``lax.scan`` as state (split / merge), so a model that updates its variables
  when it steps (an RNG counter, a recorded loss) still works.
  """
  graphdef, weights = nnx.split(model)

  def step(tokens_B, state, weights):
    m = nnx.merge(graphdef, weights)
    y_BD, state = m.step(embed_fn(tokens_B), state)
    return logits_fn(y_BD), state, nnx.state(m)

  return step, weights


def decode_greedy(model: nnx.Module, src_BSI: Array, embed_fn: Callable[[Array], Array],
                  logits_fn: Callable[[Array], Array], *, max_length: int, bos_id: int,
                  eos_id: int, src_mask: Array | None = None, pad_id: int = 0
                  ) -> tuple[Array, Array]:
  """Greedy decoding of a seq2seq model that steps.

  Args:
    model: e.g. ``lstm_attention`` (call ``model.eval()`` first if it has dropout).
    src_BSI: the source, already embedded.
    embed_fn: target token ids [B] -> decoder inputs [B, I].
    logits_fn: decoder outputs [B, D] -> logits [B, V].
    max_length, bos_id, eos_id, pad_id: as in ``greedy_search``.
    src_mask: bool [B, S], True at valid source positions.

  Returns:
    (tokens [B, max_length], score [B]) as ``greedy_search``.
  """
  _check(max_length, bos_id, eos_id)
  B = src_BSI.shape[0]
  state = model.init_state(B, max_length, src_BSI=src_BSI, src_mask=src_mask)
  step, weights = seq2seq_step(model, embed_fn, logits_fn)
  return greedy_search(step, state, weights, batch_size=B, max_length=max_length,
                       bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)


def decode_beam(model: nnx.Module, src_BSI: Array, embed_fn: Callable[[Array], Array],
                logits_fn: Callable[[Array], Array], *, beam_size: int, max_length: int,
                bos_id: int, eos_id: int, src_mask: Array | None = None, pad_id: int = 0,
                length_penalty: float = 0.0) -> tuple[Array, Array]:
  """Beam-search decoding of a seq2seq model that steps; arguments as ``decode_greedy``
  plus ``beam_size`` and ``length_penalty`` (see ``beam_search``)."""
  _check(max_length, bos_id, eos_id)
  check_int("beam_size", beam_size, 1)
  B, K = src_BSI.shape[0], beam_size
  tile = lambda a: None if a is None else jnp.repeat(a, K, axis=0)  # [B*K, ...], b-major
  state = model.init_state(B * K, max_length, src_BSI=tile(src_BSI), src_mask=tile(src_mask))
  step, weights = seq2seq_step(model, embed_fn, logits_fn)
  return beam_search(step, state, weights, batch_size=B, beam_size=K, max_length=max_length,
                     bos_id=bos_id, eos_id=eos_id, pad_id=pad_id,
                     length_penalty=length_penalty)


# ------------------------------------------------------------------------------ sampling

def _sample_token(key: Array, logits_BV: Array, temperature: float, top_k: int) -> Array:
  """One token per row: argmax at temperature 0, else a draw from softmax(logits / temp)
  restricted to the ``top_k`` largest logits (0: all)."""
  logits_BV = logits_BV.astype(jnp.float32)
  if temperature == 0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  if top_k:
    kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
  return jax.random.categorical(key, logits_BV / temperature, axis=-1).astype(jnp.int32)


def sample_search(step: Step, state: Any, shared: Any, prompt_BP: Array, *, length: int,
                  key: Array, temperature: float = 1.0, top_k: int = 0) -> Array:
  """Feeds ``prompt_BP`` through ``step``, then samples ``length`` tokens one at a time.

  Token t is drawn with ``jax.random.fold_in(key, t)``, so a key gives the same tokens
  whatever else runs (and a batch row's tokens depend on the key and the row only).

  Args:
    step: ``step(tokens_B, state, shared) -> (logits_BV, state, shared)``.
    state: the model state for B rows, room for P + ``length`` steps.
    shared: threaded through ``step`` (e.g. model weights).
    prompt_BP: int32 [B, P], P >= 1: the context; its last token predicts the first sample.
    length: L, tokens to generate.
    key: a ``jax.random`` key.
    temperature: softmax temperature (> 0), or 0 for the most likely token.
    top_k: sample among the k most likely tokens only (0: all).

  Returns:
    int32 [B, L], the sampled continuation (the prompt not included).
  """
  check_int("length", length, 1)
  check_int("top_k", top_k, 0)
  if not temperature >= 0:
    raise ValueError(f"temperature={temperature!r}; must be a number >= 0 (0: greedy)")
  if prompt_BP.ndim != 2 or prompt_BP.shape[1] < 1:
    raise ValueError(f"prompt_BP has shape {prompt_BP.shape}; expected [B, P] with P >= 1")

  def feed(carry, tok_B):
    state, shared = carry
    _, state, shared = step(tok_B, state, shared)
    return (state, shared), None

  carry, _ = jax.lax.scan(feed, (state, shared), prompt_BP[:, :-1].T.astype(jnp.int32))

  def draw(carry, t):
    (state, shared), last_B = carry
    logits_BV, state, shared = step(last_B, state, shared)
    tok_B = _sample_token(jax.random.fold_in(key, t), logits_BV, temperature, top_k)
    return ((state, shared), tok_B), tok_B

  _, tokens_LB = jax.lax.scan(draw, (carry, prompt_BP[:, -1].astype(jnp.int32)),
                              jnp.arange(length))
  return tokens_LB.T


class LMStepper(nnx.Module):
  """A model that steps, between an optional token embedding and an optional output head:
  ``step(tokens_B, state) -> (logits_BV, state)``, as ``transformer_lm``'s own step."""

  def __init__(self, model: nnx.Module, embed: nnx.Module | None = None,
               head: nnx.Module | None = None):
    if not callable(getattr(model, "step", None)) or not callable(
        getattr(model, "init_state", None)):
      raise ValueError(f"model {type(model).__name__} cannot run step by step (it has no "
                       "init_state/step), so it cannot sample")
    self.model, self.embed, self.head = model, embed, head

  def init_state(self, batch_size: int, max_length: int) -> Any:
    return self.model.init_state(batch_size, max_length)

  def step(self, tokens_B: Array, state: Any) -> tuple[Array, Any]:
    x = tokens_B if self.embed is None else self.embed(tokens_B)
    y_BD, state = self.model.step(x, state)
    return (y_BD if self.head is None else self.head(y_BD)), state


def sample(model: nnx.Module, prompt_BP: Array, *, length: int, seed: int = 0,
           temperature: float = 1.0, top_k: int = 0, embed: nnx.Module | None = None,
           head: nnx.Module | None = None) -> Array:
  """Samples a continuation of ``prompt_BP`` from any model that steps, jitted.

  ``transformer_lm`` steps through its KV cache (``embed``/``head`` None: it reads tokens
  and returns logits); a sequence model (``lstm``, ``gru``, ``wavenet``, ``mingru``,
  ``lru``, ...) through its ``step`` between ``embed`` (ids [B] -> [B, I]) and ``head``
  ([B, D] -> [B, V]). The same ``seed`` gives the same tokens.

  Returns:
    int32 [B, length]. Raises ValueError for a model that cannot step (saying why) or bad
    arguments.
  """
  check_int("length", length, 1)
  check_int("seed", seed, 0)
  stepper = LMStepper(model, embed, head)
  prompt_BP = jnp.asarray(prompt_BP, jnp.int32)
  if prompt_BP.ndim != 2 or prompt_BP.shape[1] < 1:
    raise ValueError(f"prompt_BP has shape {prompt_BP.shape}; expected [B, P] with P >= 1")
  B, P = prompt_BP.shape
  state = stepper.init_state(B, P + length)  # a model that cannot step raises here
  step, weights = seq2seq_step(stepper, lambda x: x, lambda y: y)

  @jax.jit
  def run(state, weights, prompt_BP, key):
    return sample_search(step, state, weights, prompt_BP, length=length, key=key,
                         temperature=temperature, top_k=top_k)

  return run(state, weights, prompt_BP, jax.random.key(seed))
