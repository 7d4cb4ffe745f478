"""Convolutional GRUs over a tape: the Neural GPU (Kaiser & Sutskever 2016) and the
Extended Neural GPU's active-memory decoder (Kaiser & Bengio 2016).

The state is a "mental image" ``s_BTWC``: T tape positions (the input length), a small
width W (e.g. 4) and C channels. A CGRU updates every cell at once from its 3x3
neighbourhood::

  u = sigma'(U' * s + B'),  r = sigma'(U'' * s + B'')
  CGRU(s) = u . s + (1 - u) . tanh(U * (r . s) + B)

(``*`` a 2-D "same" convolution over (T, W), ``sigma'`` the sigmoid with cutoff
``max(0, min(1, 1.2 sigma(x) - 0.1))``). The Neural GPU applies the same L CGRUs T times,
so information crosses the tape in T sequential steps: depth grows with length, each step
parallel over the whole tape. The decoder's CGRU also reads an output tape ``p``
(concatenated with ``s`` in every convolution).

Kernels are ``[K_T, K_W, C_in, C_out]`` (HWIO); parameters of one CGRU are a dict with
``gates_kernel`` (C_in -> 2C: u, r), ``gates_bias``, ``cand_kernel`` (C_in -> C),
``cand_bias``, where C_in = C (+ the output tape's channels).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
Params = Mapping[str, Array]


def conv2d_same(x_BTWC: Array, kernel: Array, bias: Array | None = None) -> Array:
  """2-D convolution over (T, W), zero "same" padding; ``kernel [K_T, K_W, C_in, C_out]``
  (odd sizes).

  Written as one matmul over the K_T * K_W shifted copies of the input (im2col): the same
  sums as ``lax.conv_general_dilated``, but XLA:CPU runs a convolution inside a loop
  (``lax.scan``) about 10x slower than this, forward and backward.
  """
  KT, KW, c_in, c_out = kernel.shape
  T, W = x_BTWC.shape[1], x_BTWC.shape[2]
  xp = jnp.pad(x_BTWC, [(0, 0), (KT // 2, KT // 2), (KW // 2, KW // 2), (0, 0)])
  patches = jnp.concatenate([xp[:, dt:dt + T, dw:dw + W]
                             for dt in range(KT) for dw in range(KW)], axis=-1)
  y = patches @ kernel.reshape(KT * KW * c_in, c_out).astype(x_BTWC.dtype)
  return y if bias is None else y + bias.astype(y.dtype)


def sigmoid_cutoff(x: Array, cutoff: float = 1.2) -> Array:
  """``clip(cutoff * sigmoid(x) - (cutoff - 1) / 2, 0, 1)``: a sigmoid that saturates at a
  finite x (the papers' 1.2 keeps gates able to open and close fully); 1.0 is the plain
  sigmoid."""
  y = jax.nn.sigmoid(x)
  if cutoff <= 1.0:
    return y
  return jnp.clip(cutoff * y - (cutoff - 1.0) / 2.0, 0.0, 1.0)


def cgru(s_BTWC: Array, params: Params, p_BTWC: Array | None = None, *,
         cutoff: float = 1.2) -> Array:
  """One convolutional GRU update of the whole tape.

  Args:
    s_BTWC: the state ``[B, T, W, C]``.
    params: ``gates_kernel [K_T, K_W, C_in, 2C]``, ``gates_bias [2C]``,
      ``cand_kernel [K_T, K_W, C_in, C]``, ``cand_bias [C]``; C_in = C + P.
    p_BTWC: optional extra input (the decoder's output tape) ``[B, T, W, P]``, read by
      the gates and the candidate alongside the state.
    cutoff: the gates' sigmoid cutoff (:func:`sigmoid_cutoff`).

  Returns:
    The new state ``[B, T, W, C]``.
  """
  extra = [] if p_BTWC is None else [p_BTWC.astype(s_BTWC.dtype)]
  gates = conv2d_same(jnp.concatenate(extra + [s_BTWC], -1), params["gates_kernel"],
                      params["gates_bias"])
  u, r = jnp.split(sigmoid_cutoff(gates, cutoff), 2, axis=-1)
  cand = jnp.tanh(conv2d_same(jnp.concatenate(extra + [r * s_BTWC], -1),
                              params["cand_kernel"], params["cand_bias"]))
  return u * s_BTWC + (1.0 - u) * cand


def cgru_stack(s_BTWC: Array, layers: Sequence[Params], p_BTWC: Array | None = None, *,
               cutoff: float = 1.2) -> Array:
  """One Neural GPU step: the L CGRUs ``layers`` in sequence (each with its own weights)."""
  for params in layers:
    s_BTWC = cgru(s_BTWC, params, p_BTWC, cutoff=cutoff)
  return s_BTWC


def neural_gpu(s0_BTWC: Array, layers: Sequence[Params], num_steps: int, *,
               cutoff: float = 1.2) -> Array:
  """The Neural GPU: ``s_{t+1} = CGRU_L(... CGRU_1(s_t))``, ``num_steps`` times (one
  ``lax.scan``; the papers use ``num_steps = T``, the tape length).

  Returns:
    The final state ``s_n`` ``[B, T, W, C]``.
  """
  def body(s, _):
    return cgru_stack(s, layers, cutoff=cutoff), None

  s_BTWC, _ = jax.lax.scan(body, s0_BTWC, None, length=num_steps)
  return s_BTWC


def tape_decoder(d0_BTWC: Array, tape_BTP: Array, layers: Sequence[Params], *,
                 num_steps: int | None = None, cutoff: float = 1.2) -> Array:
  """The Extended Neural GPU's active-memory decoder, teacher forced.

  Step k (k = 0..T-1) updates the whole state with the decoder CGRUs, reading the output
  tape as it stands before step k -- the outputs ``tape[:k]`` written, zeros after -- and
  reads output k from tape position k of the first column::

    d_{k+1} = CGRU^d_L(... CGRU^d_1(d_k, p_k)),  y_k = d_{k+1}[k, 0],
    p_k[j] = tape[j] for j < k, else 0   (each written symbol copied across the width)

  Args:
    d0_BTWC: the encoder's final state, ``[B, T, W, C]``.
    tape_BTP: the embedded outputs, position j holding output j, ``[B, T, P]``.
    layers: the decoder's L CGRU parameter dicts (C_in = C + P).
    num_steps: outputs to produce (default T, the whole tape).
    cutoff: the gates' sigmoid cutoff.

  Returns:
    ``y_BNC`` for N = ``num_steps``: y_k depends on ``tape[:k]`` only (causal over the
    outputs).
  """
  T, W = d0_BTWC.shape[1], d0_BTWC.shape[2]
  num_steps = T if num_steps is None else num_steps
  tape_BTWP = jnp.broadcast_to(tape_BTP[:, :, None, :],
                               tape_BTP.shape[:2] + (W,) + tape_BTP.shape[2:])
  positions = jnp.arange(T)

  def body(d, k):
    p = jnp.where((positions < k)[None, :, None, None], tape_BTWP, 0).astype(d.dtype)
    d = cgru_stack(d, layers, p, cutoff=cutoff)
    y_BC = jax.lax.dynamic_index_in_dim(d[:, :, 0, :], k, axis=1, keepdims=False)
    return d, y_BC

  _, y_NBC = jax.lax.scan(body, d0_BTWC, jnp.arange(num_steps))
  return jnp.swapaxes(y_NBC, 0, 1)


def tape_decoder_free(d0_BTWC: Array, layers: Sequence[Params],
                      write: Callable[[Array], Array], tape_features: int, *,
                      num_steps: int | None = None,
                      cutoff: float = 1.2) -> tuple[Array, Array]:
  """The decoder of :func:`tape_decoder` writing its own outputs (greedy decoding).

  After step k, ``write(y_k) -> [B, P]`` (e.g. the embedding of the argmax symbol) goes to
  tape position k. Teacher forcing :func:`tape_decoder` with the returned tape gives the
  same ``y``.

  Returns:
    ``(y_BNC, tape_BTP)`` for N = ``num_steps`` (default T).
  """
  B, T = d0_BTWC.shape[:2]
  W = d0_BTWC.shape[2]
  num_steps = T if num_steps is None else num_steps
  tape0 = jnp.zeros((B, T, tape_features), d0_BTWC.dtype)

  def body(carry, k):
    d, tape_BTP = carry
    p = jnp.broadcast_to(tape_BTP[:, :, None, :], (B, T, W, tape_features))
    d = cgru_stack(d, layers, p, cutoff=cutoff)
    y_BC = jax.lax.dynamic_index_in_dim(d[:, :, 0, :], k, axis=1, keepdims=False)
    entry = write(y_BC).astype(tape_BTP.dtype)[:, None, :]
    tape_BTP = jax.lax.dynamic_update_slice_in_dim(tape_BTP, entry, k, axis=1)
    return (d, tape_BTP), y_BC

  (_, tape_BTP), y_NBC = jax.lax.scan(body, (d0_BTWC, tape0), jnp.arange(num_steps))
  return jnp.swapaxes(y_NBC, 0, 1), tape_BTP
