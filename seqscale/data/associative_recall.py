"""associative_recall: read key-value pairs, then answer the value of a queried key.

Each example draws its own random dictionary from ``num_keys`` keys to ``num_values``
values. Vocabulary (ids; 0 is padding): keys ``1..K``, values ``K+1..K+V``, the query
marker ``K+V+1``; ``vocab_size = K + V + 2``. For length T there are ``n = (T - 2) // 2``
pairs::

  inputs : k_1 v_1 k_2 v_2 ... k_n v_n  QUERY  k_q  [pad if T is odd]
  target : the value index of k_q, a class in [0, V)   (pooled)

Keys may repeat within a sequence (long sequences need it); the dictionary makes every
occurrence agree, so the answer is unique. ``k_q`` is one of the keys shown. The last real
position (``T - 1``, or ``T - 2`` when T is odd: see ``mask``) holds the query, so a causal
model can answer there. Baseline: values are uniform, so chance cross-entropy is ``ln(V)``.
"""

from __future__ import annotations

import math
import os
from typing import Iterator

import numpy as np

from seqscale.data.synthetic import SyntheticTask, chunks
from seqscale.data.task import Example, check_int, register_task


@register_task("associative_recall")
class AssociativeRecall(SyntheticTask):
  """Key-value pairs then a query key; answer its value (pooled classes)."""

  name = "associative_recall"
  input_type = "tokens"
  output = "pooled"
  target_type = "classes"

  def __init__(self, *, length: int = 64, num_keys: int = 16, num_values: int = 16,
               num_train: int = 10_000, num_eval: int = 1_000, seed: int = 0,
               data_dir: str | os.PathLike[str] | None = None):
    check_int("length", length, minimum=4)
    num_keys = check_int("num_keys", num_keys, minimum=1)
    num_values = check_int("num_values", num_values, minimum=2)
    super().__init__(length=length, num_train=num_train, num_eval=num_eval, seed=seed,
                     data_dir=data_dir, num_keys=num_keys, num_values=num_values)
    self.num_keys, self.num_values = num_keys, num_values
    self.query_id = num_keys + num_values + 1
    self.vocab_size = num_keys + num_values + 2
    self.num_classes = num_values
    self._set_lengths(self.train_length)
    self.baseline = {"xent": math.log(num_values)}

  def feature_spec(self):
    return {"inputs": (np.int32, (None,)), "targets": (np.int32, ())}

  def generate(self, rng: np.random.Generator, num: int, length: int) -> Iterator[Example]:
    n = (length - 2) // 2
    for m in chunks(num, length):
      rows = np.arange(m)
      table_BK = rng.integers(0, self.num_values, size=(m, self.num_keys))
      keys_BN = rng.integers(0, self.num_keys, size=(m, n))
      values_BN = table_BK[rows[:, None], keys_BN]
      query_B = keys_BN[rows, rng.integers(0, n, size=m)]
      inputs_BT = np.zeros((m, length), np.int32)
      inputs_BT[:, 0:2 * n:2] = keys_BN + 1
      inputs_BT[:, 1:2 * n:2] = values_BN + self.num_keys + 1
      inputs_BT[:, 2 * n] = self.query_id
      inputs_BT[:, 2 * n + 1] = query_B + 1
      targets_B = table_BK[rows, query_B].astype(np.int32)
      for i in range(m):
        yield {"inputs": inputs_BT[i], "targets": targets_B[i]}

  def _format(self, example: Example, split: str) -> Example:
    inputs_T = example["inputs"].astype(np.int32)
    return {"inputs": inputs_T,
            "targets": np.asarray(example["targets"], np.int32),
            "weights": np.asarray(1.0, np.float32),
            "mask": inputs_T != 0}
