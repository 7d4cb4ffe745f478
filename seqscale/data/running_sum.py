"""running_sum: the running sum of digits, modulo the base, at every position.

Input tokens are digits ``d`` in ``[0, base)`` as ids ``d + 1`` (0 is padding), so
``vocab_size = base + 1``. The target at position t is ``(d_0 + ... + d_t) mod base``, a
class in ``[0, base)``, computed exactly with an int64 cumulative sum. A recurrent model
needs only a base-state counter; the task is there to run at any length (4 to 100,000 and
beyond; generation is vectorised, about 2**20 digits per chunk).

Baseline: the targets are uniform over the base, so the best input-blind predictor has
cross-entropy ``ln(base)``.
"""

from __future__ import annotations

import math
import os
from typing import Iterator

import numpy as np

from seqscale.data.synthetic import SyntheticTask, chunks
from seqscale.data.task import Example, check_int, every_position, register_task


@register_task("running_sum")
class RunningSum(SyntheticTask):
  """Running sum of digits mod ``base`` at every position (per-position classes)."""

  name = "running_sum"
  input_type = "tokens"
  output = "per_position"
  target_type = "classes"

  def __init__(self, *, length: int = 64, base: int = 10, num_train: int = 10_000,
               num_eval: int = 1_000, seed: int = 0,
               data_dir: str | os.PathLike[str] | None = None):
    base = check_int("base", base, minimum=2, maximum=2**15)
    super().__init__(length=length, num_train=num_train, num_eval=num_eval, seed=seed,
                     data_dir=data_dir, base=base)
    self.base = base
    self.vocab_size = base + 1
    self.num_classes = base
    self._set_lengths(self.train_length)
    self.baseline = {"xent": math.log(base)}

  def feature_spec(self):
    return {"inputs": (np.int32, (None,)), "targets": (np.int32, (None,))}

  def generate(self, rng: np.random.Generator, num: int, length: int) -> Iterator[Example]:
    for m in chunks(num, length):
      digits_BT = rng.integers(0, self.base, size=(m, length), dtype=np.int64)
      sums_BT = np.cumsum(digits_BT, axis=1, dtype=np.int64) % self.base
      inputs_BT, targets_BT = (digits_BT + 1).astype(np.int32), sums_BT.astype(np.int32)
      for i in range(m):
        yield {"inputs": inputs_BT[i], "targets": targets_BT[i]}

  def _format(self, example: Example, split: str) -> Example:
    return every_position(example["inputs"], example["targets"])
