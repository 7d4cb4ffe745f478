"""copy_memory (Arjovsky, Shah & Bengio 2016): remember 10 symbols across a delay of T.

Vocabulary (ids; 0 is padding, never used here): symbols 1..8, blank 9, delimiter 10, so
``vocab_size = 11``. Targets use the same ids and ``num_classes = 11``.

Layout for delay T (sequence length T + 20)::

  inputs : s_1 .. s_10 | blank x (T - 1) | delimiter | blank x 10
  targets: blank x (T + 10)                           | s_1 .. s_10

Every position counts (weights are 1 everywhere), as in the paper. The memoryless baseline
predicts blank for T + 10 steps and a uniform guess among the 8 symbols for the last 10,
so its cross-entropy per position is ``10 * ln(8) / (T + 20)``.

``length`` (and ``train_length``, ``eval_splits``) is the delay T; ``sequence_lengths``
gives the sequence lengths T + 20. ``split_baselines`` gives the baseline at each split's T.
"""

from __future__ import annotations

import math
import os
from typing import Iterator

import numpy as np

from seqscale.data.synthetic import SyntheticTask, chunks
from seqscale.data.task import Example, every_position, register_task

NUM_SYMBOLS = 8
NUM_TO_COPY = 10
BLANK = 9
DELIMITER = 10


def baseline_xent(delay: int) -> float:
  """Cross-entropy per position of the memoryless strategy at delay T."""
  return NUM_TO_COPY * math.log(NUM_SYMBOLS) / (delay + 2 * NUM_TO_COPY)


@register_task("copy_memory")
class CopyMemory(SyntheticTask):
  """Recall 10 symbols after a delay of T blanks (per-position classes, length T + 20)."""

  name = "copy_memory"
  input_type = "tokens"
  vocab_size = 11
  output = "per_position"
  target_type = "classes"
  num_classes = 11

  def __init__(self, *, length: int = 100, num_train: int = 10_000, num_eval: int = 1_000,
               seed: int = 0, data_dir: str | os.PathLike[str] | None = None):
    super().__init__(length=length, num_train=num_train, num_eval=num_eval, seed=seed,
                     data_dir=data_dir)
    self._set_lengths(self.train_length, lambda t: t + 2 * NUM_TO_COPY)
    delays = {"train": self.train_length, **self.eval_splits}
    self.split_baselines = {s: {"xent": baseline_xent(t)} for s, t in delays.items()}
    self.baseline = self.split_baselines["train"]

  def feature_spec(self):
    return {"inputs": (np.int32, (None,)), "targets": (np.int32, (None,))}

  def generate(self, rng: np.random.Generator, num: int, length: int) -> Iterator[Example]:
    total = length + 2 * NUM_TO_COPY
    for m in chunks(num, total):
      symbols_BS = rng.integers(1, NUM_SYMBOLS + 1, size=(m, NUM_TO_COPY), dtype=np.int32)
      inputs_BT = np.full((m, total), BLANK, np.int32)
      inputs_BT[:, :NUM_TO_COPY] = symbols_BS
      inputs_BT[:, length + NUM_TO_COPY - 1] = DELIMITER
      targets_BT = np.full((m, total), BLANK, np.int32)
      targets_BT[:, -NUM_TO_COPY:] = symbols_BS
      for i in range(m):
        yield {"inputs": inputs_BT[i], "targets": targets_BT[i]}

  def _format(self, example: Example, split: str) -> Example:
    return every_position(example["inputs"], example["targets"])
