"""Sparsely-gated mixture of experts (Shazeer et al. 2017) as pure functions of arrays.

A token x (one of N = all positions of a batch, flattened) goes to k of E experts:

  H(x) = x W_g + eps * softplus(x W_noise),  eps ~ N(0, 1)       (noise only in training)
  G(x) = softmax(KeepTopK(H(x), k))                                (k non-zero gates)
  y    = sum_e G(x)_e E_e(x),   E_e(x) = relu(x W1_e + b1_e) W2_e + b2_e

Balance (Shazeer's eqs. 6-10): Importance_e = sum_x G(x)_e; Load_e = sum_x P(x, e), the
probability (over the noise) that e stays in x's top k, a smooth estimate of the number of
tokens e receives; loss = w_imp CV(Importance)^2 + w_load CV(Load)^2.

Capacity (GShard, Lepikhin et al. 2020): each expert takes at most C tokens. Tokens claim
slots first-choice-first: every token's 1st choice in token order, then every 2nd choice, and
so on; a choice that finds its expert full is dropped (its gate contributes nothing; a
residual connection around the layer passes the token through). Tokens are scattered into
an [E, C, I] buffer, so the experts run as one batched matmul over E, which is what shards
over an ``expert`` mesh axis. ``moe_dense`` computes every expert on every token
instead: the same output as unlimited capacity at E/k times the FLOPs (the reference path).

Precision: the gating runs in at least float32 whatever the tokens' dtype (the router
logits, their noise, top-k, the softmax and the normal CDF of the load; ``ndtr`` has no
bfloat16 kernel, and bfloat16 logits would tie and flip choices); the experts and the combine
run in the tokens' dtype, so a bfloat16 layer stays bfloat16.

Shapes: N tokens, I input features, O output features, F expert hidden width, E experts,
K = k chosen experts per token, C capacity (tokens per expert).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr

Array = jax.Array


class Gating(NamedTuple):
  """What ``noisy_top_k_gating`` decides for N tokens."""
  gates_NE: Array  # combine weights: k non-zero per valid token, rows sum to 1 (0 if padding)
  expert_NK: Array  # int, the chosen experts, best first
  gate_NK: Array  # their weights
  importance_E: Array  # sum over tokens of the gates
  load_E: Array  # smooth expected tokens per expert (counts where there is no noise)


class Experts(NamedTuple):
  """Parameters of E feed-forward experts, stacked on a leading E axis."""
  w1_EIF: Array
  b1_EF: Array
  w2_EFO: Array
  b2_EO: Array


def noisy_top_k_gating(x_NI: Array, w_gate_IE: Array, w_noise_IE: Array, k: int, *,
                       noise_key: Array | None = None, valid_N: Array | None = None,
                       noise_epsilon: float = 1e-2) -> Gating:
  """Noisy top-k gating (Shazeer et al. 2017, eqs. 3-5 and 8-10).

  Args:
    x_NI: tokens (any float dtype; the gating computes in at least float32).
    w_gate_IE, w_noise_IE: gate and noise-scale weights.
    k: experts per token, 1 <= k <= E.
    noise_key: PRNG key for the gate noise; None gives the clean (evaluation) gates.
    valid_N: bool, False for padding tokens (zero gates, not counted in importance/load).
    noise_epsilon: added to the noise scale softplus(x W_noise), as in Tensor2Tensor.

  Returns:
    A ``Gating``, its gates, importance and load in at least float32. Where there is no
    noise (or k = E) the load is the count of tokens routed to each expert, which is not
    differentiable; with noise it is Shazeer's smooth estimate.
  """
  E = w_gate_IE.shape[-1]
  dtype = jnp.promote_types(jnp.result_type(x_NI, w_gate_IE, w_noise_IE), jnp.float32)
  x_NI, w_gate_IE, w_noise_IE = (a.astype(dtype) for a in (x_NI, w_gate_IE, w_noise_IE))
  clean_NE = x_NI @ w_gate_IE
  noisy = noise_key is not None and k < E
  if noise_key is not None:
    std_NE = jax.nn.softplus(x_NI @ w_noise_IE) + noise_epsilon
    logits_NE = clean_NE + jax.random.normal(noise_key, clean_NE.shape, clean_NE.dtype) * std_NE
  else:
    logits_NE = clean_NE
  top_NX, expert_NX = jax.lax.top_k(logits_NE, min(k + 1, E))
  gate_NK = jax.nn.softmax(top_NX[:, :k], axis=-1)
  expert_NK = expert_NX[:, :k]
  valid_N1 = (jnp.ones(x_NI.shape[:1], bool) if valid_N is None else valid_N)[:, None]
  gate_NK = gate_NK * valid_N1
  onehot_NKE = jax.nn.one_hot(expert_NK, E, dtype=gate_NK.dtype)
  gates_NE = jnp.einsum("NK,NKE->NE", gate_NK, onehot_NKE)
  if noisy:
    # P(e in top k) over a fresh draw of e's own noise, the others fixed: e must beat the
    # k-th largest of the others, which is top[k] if e is in the top k, else top[k - 1].
    in_top_NE = logits_NE > top_NX[:, k:k + 1]
    threshold_NE = jnp.where(in_top_NE, top_NX[:, k:k + 1], top_NX[:, k - 1:k])
    prob_NE = ndtr((clean_NE - threshold_NE) / std_NE)
    load_E = jnp.sum(prob_NE * valid_N1, axis=0)
  else:
    load_E = jnp.sum(onehot_NKE.sum(1) * valid_N1, axis=0)
  return Gating(gates_NE, expert_NK, gate_NK, gates_NE.sum(0), load_E)


def cv_squared(v: Array, eps: float = 1e-10) -> Array:
  """Squared coefficient of variation var(v) / mean(v)^2 (population variance; 0 for one entry)."""
  if v.shape[0] == 1:
    return jnp.zeros((), v.dtype)
  return jnp.var(v) / (jnp.mean(v) ** 2 + eps)


def load_balancing_loss(gating: Gating, importance_weight: float, load_weight: float) -> Array:
  """Shazeer's auxiliary loss ``w_imp CV(Importance)^2 + w_load CV(Load)^2``."""
  return (importance_weight * cv_squared(gating.importance_E)
          + load_weight * cv_squared(gating.load_E))


def capacity(num_tokens: int, num_experts: int, k: int, capacity_factor: float) -> int:
  """Slots per expert: ``ceil(capacity_factor * k * N / E)``, at most N (a token picks an
  expert once, so N slots never drop anything)."""
  return max(1, min(num_tokens, math.ceil(capacity_factor * k * num_tokens / num_experts)))


def capacity_positions(expert_NK: Array, num_experts: int, capacity_: int,
                       valid_N: Array | None = None) -> tuple[Array, Array]:
  """Each choice's slot in its expert, first choices first, then token order.

  Returns:
    (position_NK int, kept_NK bool): ``kept`` is False for padding and for choices that
    arrive after their expert's ``capacity_`` slots are taken.
  """
  N, K = expert_NK.shape
  valid_N = jnp.ones((N,), bool) if valid_N is None else valid_N
  onehot_KNE = jax.nn.one_hot(expert_NK.T, num_experts, dtype=jnp.int32) * valid_N[None, :, None]
  # Rank-major order: the cumulative count over (choice rank, token) is the arrival order.
  before_KNE = jnp.cumsum(onehot_KNE.reshape(K * N, num_experts), axis=0).reshape(
      K, N, num_experts) - onehot_KNE
  position_NK = jnp.sum(before_KNE * onehot_KNE, axis=-1).T
  kept_NK = (position_NK < capacity_) & valid_N[:, None]
  return position_NK, kept_NK


def expert_ffn(x_EXI: Array, experts: Experts) -> Array:
  """Every expert on its own tokens: [E, C, I] -> [E, C, O] (one batched matmul over E)."""
  h_EXF = jax.nn.relu(jnp.einsum("EXI,EIF->EXF", x_EXI, experts.w1_EIF)
                      + experts.b1_EF[:, None, :])
  return jnp.einsum("EXF,EFO->EXO", h_EXF, experts.w2_EFO) + experts.b2_EO[:, None, :]


def moe_dense(x_NI: Array, gates_NE: Array, experts: Experts) -> Array:
  """``sum_e gates_e E_e(x)`` with every expert computed on every token: [N, I] -> [N, O]."""
  E = gates_NE.shape[-1]
  y_ENO = expert_ffn(jnp.broadcast_to(x_NI, (E, *x_NI.shape)), experts)
  return jnp.einsum("NE,ENO->NO", gates_NE.astype(y_ENO.dtype), y_ENO)


def moe_dispatch(x_NI: Array, gating: Gating, experts: Experts, capacity_: int,
                 valid_N: Array | None = None) -> tuple[Array, Array]:
  """Capacity-limited sparse MoE: scatter tokens to [E, C] slots, run experts, gather back.

  The scatter and gather move N * k rows (a one-hot dispatch einsum would cost N * E * C * I,
  quadratic in N); a dropped choice points past the last slot, where ``mode="drop"`` /
  ``"fill"`` ignore it.

  Returns:
    (y_NO, kept_NK): the output (zero for the part of a token whose choices were dropped)
    and which choices found a slot.
  """
  N, I = x_NI.shape
  E, K = gating.gates_NE.shape[-1], gating.expert_NK.shape[-1]
  position_NK, kept_NK = capacity_positions(gating.expert_NK, E, capacity_, valid_N)
  slot_NK = jnp.where(kept_NK, position_NK, capacity_)  # out of range: dropped
  x_NKI = jnp.broadcast_to(x_NI[:, None, :], (N, K, I))
  x_ECI = jnp.zeros((E, capacity_, I), x_NI.dtype).at[gating.expert_NK, slot_NK].set(
      x_NKI, mode="drop", unique_indices=True)
  y_ECO = expert_ffn(x_ECI, experts)
  y_NKO = y_ECO.at[gating.expert_NK, slot_NK].get(mode="fill", fill_value=0)
  combine_NK = (gating.gate_NK * kept_NK).astype(y_NKO.dtype)
  return jnp.einsum("NK,NKO->NO", combine_NK, y_NKO), kept_NK
