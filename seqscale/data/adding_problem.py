"""adding_problem (Le, Jaitly & Hinton 2015, after Hochreiter & Schmidhuber 1997).

Each of T steps has two features: a value drawn from U(0, 1) and a marker, 1 at exactly two
steps, one drawn uniformly from the first half (``[0, T // 2)``) and one from the second
(``[T // 2, T)``), 0 elsewhere. The pooled regression target is the sum of the two marked
values. The task needs ``T >= 2``.

Baseline: always predicting the mean target (1) gives MSE = Var(U1 + U2) = 2 * (1/12) = 1/6
(~0.1667); a model must beat that to have learned anything.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from seqscale.data.synthetic import SyntheticTask, chunks
from seqscale.data.task import Example, check_int, register_task

BASELINE_MSE = 1.0 / 6.0  # Var(U1 + U2) for independent U(0, 1).


@register_task("adding_problem")
class AddingProblem(SyntheticTask):
  """Sum of the two marked values of a [T, 2] sequence (pooled regression)."""

  name = "adding_problem"
  input_type = "features"
  in_features = 2
  output = "pooled"
  target_type = "regression"
  num_classes = 1

  def __init__(self, *, length: int = 100, num_train: int = 10_000, num_eval: int = 1_000,
               seed: int = 0, data_dir: str | os.PathLike[str] | None = None):
    check_int("length", length, minimum=2)
    super().__init__(length=length, num_train=num_train, num_eval=num_eval, seed=seed,
                     data_dir=data_dir)
    self._set_lengths(self.train_length)
    self.baseline = {"mse": BASELINE_MSE}

  def feature_spec(self):
    return {"inputs": (np.float32, (None, 2)), "targets": (np.float32, ())}

  def generate(self, rng: np.random.Generator, num: int, length: int) -> Iterator[Example]:
    half = length // 2
    for m in chunks(num, 2 * length):
      values_BT = rng.random((m, length), dtype=np.float32)
      first_B = rng.integers(0, half, size=m)
      second_B = rng.integers(half, length, size=m)
      rows = np.arange(m)
      markers_BT = np.zeros((m, length), np.float32)
      markers_BT[rows, first_B] = 1.0
      markers_BT[rows, second_B] = 1.0
      targets_B = (values_BT[rows, first_B].astype(np.float64) +
                   values_BT[rows, second_B]).astype(np.float32)
      inputs_BTF = np.stack([values_BT, markers_BT], axis=-1)
      for i in range(m):
        yield {"inputs": inputs_BTF[i], "targets": targets_B[i]}

  def _format(self, example: Example, split: str) -> Example:
    length = len(example["inputs"])
    return {"inputs": example["inputs"].astype(np.float32),
            "targets": np.asarray(example["targets"], np.float32),
            "weights": np.asarray(1.0, np.float32),
            "mask": np.ones(length, bool)}
