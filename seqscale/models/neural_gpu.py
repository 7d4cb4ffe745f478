"""The Neural GPU (Kaiser & Sutskever 2016) and the Extended Neural GPU (Kaiser & Bengio
2016): convolutional GRUs over a fixed tape, applied as many times as the input is long.

The input ``x_BTI`` is projected to C channels and written into the first column of a
mental image ``s_0 [B, T, W, C]`` (the other W - 1 columns start at zero). The same L
CGRUs (:mod:`seqscale.ops.cgru`) are applied T times -- depth grows with length, every
step parallel over the tape -- and the output is read from the first column.

- ``neural_gpu`` (interface ``"sequence"``, non-causal): ``y_BTD = s_T[:, :, 0]``, one
  output per tape position (binary arithmetic answers position-wise).
- ``extended_neural_gpu`` (interface ``"seq2seq"``, causal over the target): the encoder
  above on the source, then the active-memory decoder: T' more steps of decoder CGRUs that
  also read an *output tape* holding the outputs decided so far (teacher forced: the
  embedded target; :meth:`ExtendedNeuralGPU.decode_greedy` writes its own), output k read
  at tape position k.

Not reproduced: the papers' parameter-sharing relaxation, gradient noise, length
curriculum and dropout on the state (training tricks, not the architecture).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from seqscale.checks import check_int
from seqscale.models.registry import register
from seqscale.ops import cgru as cgru_ops

Array = jax.Array


def _check_cutoff(cutoff) -> None:
  if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)) or cutoff < 1.0:
    raise ValueError(f"cutoff={cutoff!r} is not allowed: it must be a number >= 1 "
                     "(1 is the plain sigmoid; the papers use 1.2)")


class CGRU(nnx.Module):
  """Parameters of one convolutional GRU: gates (u, r) and candidate kernels
  ``[K, K, C + P, 2C]`` and ``[K, K, C + P, C]`` (P: an extra input's channels)."""

  def __init__(self, features: int, extra_features: int = 0, kernel_size: int = 3, *,
               rngs: nnx.Rngs):
    c_in = features + extra_features
    init = nnx.initializers.variance_scaling(1.0, "fan_avg", "uniform",
                                             in_axis=(0, 1, 2), out_axis=3)
    k = kernel_size
    self.gates_kernel = nnx.Param(init(rngs.params(), (k, k, c_in, 2 * features)))
    # Gates start at bias 1 (mostly keep the state), as in the papers' code.
    self.gates_bias = nnx.Param(jnp.ones((2 * features,)))
    self.cand_kernel = nnx.Param(init(rngs.params(), (k, k, c_in, features)))
    self.cand_bias = nnx.Param(jnp.zeros((features,)))

  def params(self, dtype) -> dict[str, Array]:
    return {name: getattr(self, name)[...].astype(dtype)
            for name in ("gates_kernel", "gates_bias", "cand_kernel", "cand_bias")}


class _Tape(nnx.Module):
  """Input projection into the first column of a ``[B, T, W, C]`` tape, and L CGRUs."""

  def __init__(self, in_features: int, features: int, num_layers: int, tape_width: int,
               kernel_size: int, extra_features: int, dtype, rngs: nnx.Rngs):
    self.inp = nnx.Linear(in_features, features, dtype=dtype, rngs=rngs)
    self.layers = nnx.List([CGRU(features, extra_features, kernel_size, rngs=rngs)
                            for _ in range(num_layers)])
    self.tape_width = tape_width

  def image(self, x_BTI: Array, mask_BT: Array | None) -> Array:
    h_BTC = self.inp(x_BTI)
    if mask_BT is not None:  # padding is blank tape, as the papers' zero embedding of 0
      h_BTC = h_BTC * mask_BT[..., None].astype(h_BTC.dtype)
    pad = [(0, 0), (0, 0), (0, self.tape_width - 1), (0, 0)]
    return jnp.pad(h_BTC[:, :, None, :], pad)

  def params(self, dtype) -> list[dict[str, Array]]:
    return [layer.params(dtype) for layer in self.layers]


def _check(in_features, hidden_features, num_layers, tape_width, kernel_size, cutoff):
  check_int("in_features", in_features)
  check_int("hidden_features", hidden_features)
  check_int("num_layers", num_layers)
  check_int("tape_width", tape_width)
  check_int("kernel_size", kernel_size)
  if kernel_size % 2 == 0:
    raise ValueError(f"kernel_size={kernel_size!r} is not allowed: it must be odd "
                     "(a centred 'same' convolution)")
  _check_cutoff(cutoff)


@register("neural_gpu")
class NeuralGPU(nnx.Module):
  """Neural GPU as a non-causal sequence layer: ``model(x_BTI) -> y_BTD``.

  Args:
    in_features: I.
    hidden_features: C, the tape's channels (= D, the output width).
    num_layers: L, CGRUs per step (the papers use 2).
    tape_width: W, columns of the mental image (the papers use 4).
    kernel_size: K, the CGRU convolutions are K x K over (T, W).
    cutoff: the gates' sigmoid cutoff (1.2 in the papers; 1 is the plain sigmoid).
    num_steps: steps to run; None (default) runs T steps for an input of length T.
    dtype: computation dtype (parameters stay float32).
  """

  interface = "sequence"

  def __init__(self, in_features: int, hidden_features: int, num_layers: int = 2,
               tape_width: int = 4, kernel_size: int = 3, cutoff: float = 1.2,
               num_steps: int | None = None, dtype=None, *, rngs: nnx.Rngs):
    _check(in_features, hidden_features, num_layers, tape_width, kernel_size, cutoff)
    if num_steps is not None:
      check_int("num_steps", num_steps)
    self.causal = False
    self.out_features = hidden_features
    self.cutoff, self.num_steps, self.dtype = float(cutoff), num_steps, dtype
    self.tape = _Tape(in_features, hidden_features, num_layers, tape_width, kernel_size, 0,
                      dtype, rngs)

  def __call__(self, x_BTI: Array, *, mask: Array | None = None) -> Array:
    """``[B, T, I] -> [B, T, D]``: T steps (or ``num_steps``), the first column read out.

    ``mask`` (True at real positions) blanks padding on the tape; every position, padding
    included, can influence every output after enough steps.
    """
    s0 = self.tape.image(x_BTI, mask)
    steps = s0.shape[1] if self.num_steps is None else self.num_steps
    s = cgru_ops.neural_gpu(s0, self.tape.params(s0.dtype), steps, cutoff=self.cutoff)
    return s[:, :, 0, :]

  def init_state(self, batch_size: int, max_length: int):
    raise ValueError("neural_gpu cannot run step by step: it is not causal (every step "
                     "updates the whole tape, and each output depends on the whole input)")

  def step(self, x_BI: Array, state):
    raise ValueError("neural_gpu cannot run step by step: it is not causal (every step "
                     "updates the whole tape, and each output depends on the whole input)")


@register("extended_neural_gpu")
class ExtendedNeuralGPU(nnx.Module):
  """Extended Neural GPU: ``model(src_BSI, tgt_BTI) -> y_BTD``, teacher forced.

  ``tgt_BTI`` is the embedded target shifted right (``tgt[0]`` is BOS; ``tgt[j + 1]``
  embeds output j): the output tape holds ``tgt[j + 1]`` at position j once output j is
  decided. The encoder runs S steps on a tape of length ``max(S, T)``, the decoder T.
  Arguments as for :class:`NeuralGPU`; the decoder has its own L CGRUs, reading the
  output tape (I channels) alongside the state.
  """

  interface = "seq2seq"

  def __init__(self, in_features: int, hidden_features: int, num_layers: int = 2,
               tape_width: int = 4, kernel_size: int = 3, cutoff: float = 1.2,
               dtype=None, *, rngs: nnx.Rngs):
    _check(in_features, hidden_features, num_layers, tape_width, kernel_size, cutoff)
    self.causal = True  # over the target: output k reads the target up to k only
    self.out_features = hidden_features
    self.in_features = in_features
    self.cutoff, self.dtype = float(cutoff), dtype
    self.encoder = _Tape(in_features, hidden_features, num_layers, tape_width, kernel_size,
                         0, dtype, rngs)
    self.decoder = nnx.List([CGRU(hidden_features, in_features, kernel_size, rngs=rngs)
                             for _ in range(num_layers)])

  def encode(self, src_BSI: Array, length: int, src_mask: Array | None = None) -> Array:
    """The encoder's final state on a tape of ``max(S, length)`` positions."""
    S = src_BSI.shape[1]
    if length > S:  # blank tape after the source, for the decoder's extra outputs
      src_mask = jnp.ones(src_BSI.shape[:2], bool) if src_mask is None else src_mask
      src_mask = jnp.pad(src_mask, [(0, 0), (0, length - S)])
      src_BSI = jnp.pad(src_BSI, [(0, 0), (0, length - S), (0, 0)])
    s0 = self.encoder.image(src_BSI, src_mask)
    return cgru_ops.neural_gpu(s0, self.encoder.params(s0.dtype), S, cutoff=self.cutoff)

  def __call__(self, src_BSI: Array, tgt_BTI: Array, *, src_mask: Array | None = None,
               tgt_mask: Array | None = None) -> Array:
    """``[B, S, I], [B, T, I] -> [B, T, D]``; y_k depends on ``tgt[:k + 1]`` only."""
    T = tgt_BTI.shape[1]
    d0 = self.encode(src_BSI, T, src_mask)
    tgt = tgt_BTI if tgt_mask is None else tgt_BTI * tgt_mask[..., None].astype(tgt_BTI.dtype)
    tape_BLI = jnp.zeros(d0.shape[:2] + (tgt.shape[-1],), d0.dtype)
    tape_BLI = tape_BLI.at[:, :T - 1].set(tgt[:, 1:].astype(d0.dtype))
    return cgru_ops.tape_decoder(d0, tape_BLI, self._decoder_params(d0.dtype), num_steps=T,
                                 cutoff=self.cutoff)

  def _decoder_params(self, dtype) -> list[dict[str, Array]]:
    return [layer.params(dtype) for layer in self.decoder]

  def decode_greedy(self, src_BSI: Array, length: int,
                    next_input: Callable[[Array], Array], *,
                    src_mask: Array | None = None) -> tuple[Array, Array]:
    """Decodes ``length`` outputs, writing its own: ``next_input(y_BD) -> x_BI`` (e.g. the
    embedding of the argmax symbol of the task's head) goes on the output tape.

    Returns:
      ``(y_BTD, written_BTI)``; the teacher-forced call with ``tgt = [BOS, written[:-1]]``
      gives the same ``y``.
    """
    check_int("length", length)
    d0 = self.encode(src_BSI, length, src_mask)
    y_BTD, tape_BLI = cgru_ops.tape_decoder_free(
        d0, self._decoder_params(d0.dtype), next_input, self.in_features, num_steps=length,
        cutoff=self.cutoff)
    return y_BTD, tape_BLI[:, :length]
