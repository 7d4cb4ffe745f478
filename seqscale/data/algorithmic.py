"""algorithmic: copy, reverse, sort and multi-digit addition (after Tensor2Tensor's
algorithmic problems): trained on short sources, evaluated on longer ones.

Vocabulary (ids): 0 pad, 1 BOS, 2 SEP, 3 EOS, 4 ``+``, and digit ``d`` in ``[0, base)``
as ``5 + d``; ``vocab_size = num_classes = base + 5``.

For a split of maximum source length S (``length`` for train and test, 2S and 4S for
``test_2x``/``test_4x``), each example's source length is uniform in ``[1, S]`` (``[3, S]``
for addition), as in Tensor2Tensor:

- ``copy``: the digits; ``reverse``: reversed; ``sort``: sorted ascending;
- ``addition``: ``a + b`` with a, b in base ``base``, most significant digit first, no
  leading zeros; the target is the sum, same convention.

Each batch gives both forms:

- decoder-only (``requires_causal=True``): ``inputs = src SEP tgt`` ([B, 2S + 1]),
  ``targets`` the next token (the answer then EOS), ``weights`` 1 on the positions that
  predict the answer and EOS;
- seq2seq: ``src`` [B, S], ``src_mask``, ``tgt_in = BOS tgt`` and ``tgt_out = tgt EOS``
  ([B, S + 1]), ``tgt_weights``.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from seqscale.data.synthetic import SyntheticTask
from seqscale.data.task import Example, check_choice, check_int, register_task

PAD, BOS, SEP, EOS, PLUS = 0, 1, 2, 3, 4
DIGIT0 = 5
PROBLEMS = ("copy", "reverse", "sort", "addition")


def add_digits(a: np.ndarray, b: np.ndarray, base: int) -> np.ndarray:
  """Digits (most significant first) of a + b, by schoolbook addition with carries."""
  n = max(len(a), len(b))
  a_le = np.zeros(n, np.int64)
  b_le = np.zeros(n, np.int64)
  a_le[:len(a)], b_le[:len(b)] = a[::-1], b[::-1]
  out, carry = [], 0
  for i in range(n):
    carry, digit = divmod(int(a_le[i] + b_le[i]) + carry, base)
    out.append(digit)
  if carry:
    out.append(carry)
  return np.asarray(out[::-1], np.int64)


@register_task("algorithmic")
class Algorithmic(SyntheticTask):
  """Sequence-to-sequence copy / reverse / sort / addition, per-position classes."""

  name = "algorithmic"
  input_type = "tokens"
  output = "per_position"
  target_type = "classes"
  requires_causal = True

  def __init__(self, *, problem: str = "reverse", length: int = 40, base: int = 10,
               num_train: int = 10_000, num_eval: int = 1_000, seed: int = 0,
               data_dir: str | os.PathLike[str] | None = None):
    problem = check_choice("problem", problem, PROBLEMS)
    check_int("length", length, minimum=3 if problem == "addition" else 1)
    base = check_int("base", base, minimum=2, maximum=36)
    super().__init__(length=length, num_train=num_train, num_eval=num_eval, seed=seed,
                     data_dir=data_dir, problem=problem, base=base)
    self.problem, self.base = problem, base
    self.vocab_size = self.num_classes = base + DIGIT0
    self._set_lengths(self.train_length, lambda n: 2 * n + 1)

  def feature_spec(self):
    return {"src": (np.int32, (None,)), "tgt": (np.int32, (None,))}

  def _number(self, rng: np.random.Generator, n: int) -> np.ndarray:
    digits = rng.integers(0, self.base, size=n)
    if n > 1:
      digits[0] = rng.integers(1, self.base)
    return digits

  def generate(self, rng: np.random.Generator, num: int, length: int) -> Iterator[Example]:
    for _ in range(num):
      if self.problem == "addition":
        k = int(rng.integers(3, length + 1))
        n_a = int(rng.integers(1, k - 1))
        a, b = self._number(rng, n_a), self._number(rng, k - 1 - n_a)
        src = np.concatenate([a + DIGIT0, [PLUS], b + DIGIT0])
        tgt = add_digits(a, b, self.base) + DIGIT0
      else:
        digits = rng.integers(0, self.base, size=int(rng.integers(1, length + 1)))
        src = digits + DIGIT0
        tgt = {"copy": src, "reverse": src[::-1], "sort": np.sort(src)}[self.problem]
      yield {"src": src.astype(np.int32), "tgt": tgt.astype(np.int32)}

  def _format(self, example: Example, split: str) -> Example:
    s = self.split_length(split)
    src, tgt = example["src"], example["tgt"]
    n_s, n_t = len(src), len(tgt)
    seq = np.concatenate([src, [SEP], tgt, [EOS]])
    out = {
        "inputs": np.zeros(2 * s + 1, np.int32), "targets": np.zeros(2 * s + 1, np.int32),
        "weights": np.zeros(2 * s + 1, np.float32), "mask": np.zeros(2 * s + 1, bool),
        "src": np.zeros(s, np.int32), "src_mask": np.zeros(s, bool),
        "tgt_in": np.zeros(s + 1, np.int32), "tgt_out": np.zeros(s + 1, np.int32),
        "tgt_weights": np.zeros(s + 1, np.float32),
    }
    out["inputs"][:len(seq) - 1] = seq[:-1]
    out["targets"][:len(seq) - 1] = seq[1:]
    out["weights"][n_s:n_s + n_t + 1] = 1.0  # SEP predicts tgt[0], ..., tgt[-1] predicts EOS.
    out["mask"][:len(seq) - 1] = True
    out["src"][:n_s], out["src_mask"][:n_s] = src, True
    out["tgt_in"][:n_t + 1] = np.concatenate([[BOS], tgt])
    out["tgt_out"][:n_t + 1] = np.concatenate([tgt, [EOS]])
    out["tgt_weights"][:n_t + 1] = 1.0
    return out
