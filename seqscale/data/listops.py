"""listops (Nangia & Bowman 2018; the generator of Long Range Arena's ``listops.py``).

A random expression tree over digits 0..9 with operators MAX, MIN, MED (median, rounded
down) and SM (sum mod 10), written in prefix form with a closing bracket::

  [MAX 2 9 [MIN 4 7 ] 0 ]   ->   9

As in LRA: a node below ``max_depth`` is an operator with probability 0.25 (else a digit);
an operator takes 2..``max_args`` arguments; trees are drawn until their token count lies in
``[ceil(min_fraction * L), L]`` (LRA: L = 2000, min_fraction = 0.25, max_depth = 10,
max_args = 10). Unlike LRA, the tokens are not wrapped in parentheses (the brackets already
give the tree), duplicates are not removed, and draws use Python's ``random`` seeded from the
split's NumPy generator. Eval splits use L = 2x and 4x the training length.

Vocabulary (ids): 0 pad, digits ``d`` as ``d + 1``, then ``[MIN``, ``[MAX``, ``[MED``, ``[SM``,
``]`` (see ``VOCAB``); ``vocab_size = 16``. Sequences are padded on the right to L; the
target is the value of the whole expression, a pooled class in [0, 10).
"""

from __future__ import annotations

import math
import os
import random
from typing import Callable, Iterator

import numpy as np

from seqscale.data.synthetic import SyntheticTask
from seqscale.data.task import Example, check_int, register_task

VOCAB = ("<pad>",) + tuple(str(d) for d in range(10)) + ("[MIN", "[MAX", "[MED", "[SM", "]")
TOKEN_ID = {tok: i for i, tok in enumerate(VOCAB)}
END = TOKEN_ID["]"]
VALUE_P = 0.25  # LRA's name: a node below max_depth is an operator when random() <= VALUE_P.

OPERATORS: dict[int, Callable[[list[int]], int]] = {
    TOKEN_ID["[MIN"]: min,
    TOKEN_ID["[MAX"]: max,
    TOKEN_ID["[MED"]: lambda v: int(np.median(v)),
    TOKEN_ID["[SM"]: lambda v: sum(v) % 10,
}
_OP_IDS = tuple(OPERATORS)


def decode(ids: np.ndarray) -> str:
  """Token ids -> the expression string (padding dropped)."""
  return " ".join(VOCAB[i] for i in ids if i != 0)


@register_task("listops")
class ListOps(SyntheticTask):
  """Value of a nested MAX/MIN/MED/SM expression (pooled 10-way classification)."""

  name = "listops"
  input_type = "tokens"
  vocab_size = len(VOCAB)
  output = "pooled"
  target_type = "classes"
  num_classes = 10

  def __init__(self, *, length: int = 512, max_depth: int = 10, max_args: int = 10,
               min_fraction: float = 0.25, num_train: int = 10_000, num_eval: int = 1_000,
               seed: int = 0, data_dir: str | os.PathLike[str] | None = None):
    check_int("length", length, minimum=4)
    max_depth = check_int("max_depth", max_depth, minimum=2)
    max_args = check_int("max_args", max_args, minimum=2)
    if not isinstance(min_fraction, (int, float)) or not 0 <= min_fraction <= 1:
      raise ValueError(f"min_fraction={min_fraction!r} is not allowed: it must be in [0, 1]")
    super().__init__(length=length, num_train=num_train, num_eval=num_eval, seed=seed,
                     data_dir=data_dir, max_depth=max_depth, max_args=max_args,
                     min_fraction=float(min_fraction))
    self.max_depth, self.max_args, self.min_fraction = max_depth, max_args, float(min_fraction)
    self._set_lengths(self.train_length)

  def feature_spec(self):
    return {"inputs": (np.int32, (None,)), "targets": (np.int32, ())}

  def _tree(self, rnd: random.Random, depth: int, tokens: list[int], max_len: int) -> int | None:
    """Appends one subtree's tokens; returns its value, or None once past ``max_len``."""
    if len(tokens) >= max_len:
      return None
    if depth < self.max_depth and rnd.random() <= VALUE_P:
      op = _OP_IDS[rnd.randrange(len(_OP_IDS))]
      tokens.append(op)
      values = []
      for _ in range(rnd.randint(2, self.max_args)):
        value = self._tree(rnd, depth + 1, tokens, max_len)
        if value is None:
          return None
        values.append(value)
      tokens.append(END)
      return OPERATORS[op](values) if len(tokens) <= max_len else None
    value = rnd.randrange(10)
    tokens.append(TOKEN_ID[str(value)])
    return value

  def generate(self, rng: np.random.Generator, num: int, length: int) -> Iterator[Example]:
    rnd = random.Random(int(rng.integers(2**63)))
    min_len = max(1, math.ceil(self.min_fraction * length))
    max_tries = 1000 * num + 100_000
    made = 0
    for _ in range(max_tries):
      tokens: list[int] = []
      value = self._tree(rnd, 1, tokens, length)
      if value is not None and min_len <= len(tokens):
        yield {"inputs": np.asarray(tokens, np.int32), "targets": np.asarray(value, np.int32)}
        made += 1
        if made == num:
          return
    raise ValueError(
        f"listops: after {max_tries} draws only {made} of {num} trees had between {min_len} "
        f"and {length} tokens; lower min_fraction={self.min_fraction} or raise "
        f"max_depth={self.max_depth} / max_args={self.max_args}")

  def _format(self, example: Example, split: str) -> Example:
    length = self.split_length(split)
    tokens = example["inputs"]
    inputs_T = np.zeros(length, np.int32)
    inputs_T[:len(tokens)] = tokens
    return {"inputs": inputs_T,
            "targets": np.asarray(example["targets"], np.int32),
            "weights": np.asarray(1.0, np.float32),
            "mask": inputs_T != 0}
