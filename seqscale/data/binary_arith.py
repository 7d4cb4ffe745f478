"""binary_arith: long binary addition and multiplication, as in the Neural GPU papers
(Kaiser & Sutskever 2016): trained on numbers of up to ``length`` bits, evaluated on longer.

An example with k-bit operands (k uniform in ``[1, length]`` for ``train``; exactly the
split's number of bits n for the eval splits: n = ``length``, 2x, 4x, and ``long_bits``,
100 by default) reads ``a OP b`` with both numbers k bits, **least significant bit first**
(leading zeros kept), padded to ``T = 2n + 1``. The answer, also least significant bit
first, is given per position: ``targets[t]`` is bit t of ``a + b`` (k + 1 bits) or
``a * b`` (2k bits), ``weights`` 1 on those positions. Bit t of the answer depends on the
operands' bits 0..t, which sit t and k + 1 + t positions away: a model needs ~k
sequential steps of local computation, or long-range mixing (the task is non-causal:
``requires_causal=False``; a causal model at position t has not seen b yet).

Vocabulary (ids): 0 pad, 1 BOS, 2 bit 0, 3 bit 1, 4 ``+``, 5 ``*`` (``vocab_size = 6``);
classes are the bits (``num_classes = 2``). Seq2seq fields as for ``algorithmic``:
``src = inputs``, ``tgt_in = BOS r_0 r_1 ...`` (bits as ids 2, 3), ``tgt_out`` the answer
bits, ``tgt_weights``, all of length ``2n + 1``.

Baseline: each bit is a fair coin for a blind predictor, cross-entropy ``ln 2``.
"""

from __future__ import annotations

import math
import os
from typing import Iterator

import numpy as np

from seqscale.data.synthetic import SyntheticTask
from seqscale.data.task import (Example, check_choice, check_int, register_task, scaled_splits,
                                split_rng)

PAD, BOS, BIT0, PLUS, TIMES = 0, 1, 2, 4, 5
PROBLEMS = ("addition", "multiplication")


def to_bits(value: int, num_bits: int) -> np.ndarray:
  """The ``num_bits`` lowest bits of ``value``, least significant first."""
  return np.asarray([(value >> i) & 1 for i in range(num_bits)], np.int32)


def from_bits(bits_le: np.ndarray) -> int:
  """The integer whose bits, least significant first, are ``bits_le``."""
  return sum(int(b) << i for i, b in enumerate(bits_le))


def answer_bits(problem: str, num_bits: int) -> int:
  """Number of answer bits for k-bit operands: k + 1 (addition) or 2k (multiplication)."""
  return num_bits + 1 if problem == "addition" else 2 * num_bits


@register_task("binary_arith")
class BinaryArith(SyntheticTask):
  """Binary ``a + b`` or ``a * b`` (LSB first), per-position answer bits."""

  name = "binary_arith"
  input_type = "tokens"
  output = "per_position"
  target_type = "classes"
  vocab_size = 6
  num_classes = 2

  def __init__(self, *, problem: str = "addition", length: int = 20, long_bits: int = 100,
               num_train: int = 10_000, num_eval: int = 1_000, seed: int = 0,
               data_dir: str | os.PathLike[str] | None = None):
    problem = check_choice("problem", problem, PROBLEMS)
    check_int("length", length, minimum=1)
    long_bits = check_int("long_bits", long_bits, minimum=0)
    super().__init__(length=length, num_train=num_train, num_eval=num_eval, seed=seed,
                     data_dir=data_dir, problem=problem, long_bits=long_bits)
    self.problem, self.long_bits = problem, long_bits
    eval_splits = scaled_splits(self.train_length)
    if long_bits > 4 * self.train_length:
      eval_splits["test_long"] = long_bits
    self._set_lengths(self.train_length, lambda n: 2 * n + 1, eval_splits)
    self.baseline = {"xent": math.log(2)}

  def feature_spec(self):
    return {"a": (np.int32, (None,)), "b": (np.int32, (None,))}

  def generate(self, rng: np.random.Generator, num: int, length: int, *,
               fixed: bool = True) -> Iterator[Example]:
    """``num`` operand pairs of ``length`` bits (``fixed``) or of 1 to ``length`` bits."""
    for _ in range(num):
      k = length if fixed else int(rng.integers(1, length + 1))
      yield {"a": rng.integers(0, 2, size=k, dtype=np.int32),
             "b": rng.integers(0, 2, size=k, dtype=np.int32)}

  def generate_split(self, split: str) -> Iterator[Example]:
    # Train on every size up to `length` bits; evaluate at exactly the split's size.
    num = self.num_train if split == "train" else self.num_eval
    yield from self.generate(split_rng(self.seed, split), num, self.split_length(split),
                             fixed=split != "train")

  def _format(self, example: Example, split: str) -> Example:
    n = self.split_length(split)
    t = 2 * n + 1
    a, b = np.asarray(example["a"]), np.asarray(example["b"])
    k = len(a)
    x, y = from_bits(a), from_bits(b)
    r = answer_bits(self.problem, k)
    result = to_bits(x + y if self.problem == "addition" else x * y, r)
    src = np.concatenate([a + BIT0, [PLUS if self.problem == "addition" else TIMES],
                          b + BIT0]).astype(np.int32)
    out = {"inputs": np.zeros(t, np.int32), "mask": np.zeros(t, bool),
           "targets": np.zeros(t, np.int32), "weights": np.zeros(t, np.float32),
           "tgt_in": np.zeros(t, np.int32)}
    out["inputs"][:len(src)], out["mask"][:len(src)] = src, True
    out["targets"][:r], out["weights"][:r] = result, 1.0
    out["tgt_in"][0] = BOS
    out["tgt_in"][1:r] = result[:-1] + BIT0
    out.update(src=out["inputs"].copy(), src_mask=out["mask"].copy(),
               tgt_out=out["targets"].copy(), tgt_weights=out["weights"].copy())
    return out
