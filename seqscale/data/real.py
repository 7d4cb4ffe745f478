"""Real TFDS datasets, read where they have been prepared as ``array_record``.

seqscale never downloads: a dataset must already be in ``data_dir`` (default
``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``), prepared on a machine with internet by::

  tfds build NAME --data_dir=DATA_DIR --file_format=array_record

(or ``tfds.builder(NAME, data_dir=DATA_DIR).download_and_prepare(file_format="array_record")``)
and copied over. Where it is missing, ``get_task`` raises ``DatasetNotPreparedError`` saying
which dataset, which ``data_dir`` and that command. Reading is ``builder.as_data_source``
(what ``tfds.data_source(NAME, download=False)`` returns) and grain, as for synthetic tasks.

- ``imdb_reviews``: LRA Text, byte level: byte ``b`` is id ``b + 1`` (0 pad, vocab 257),
  truncated/padded to ``length``; pooled 2-way classification.
- ``lm1b``: byte-level language modelling: ``inputs = BOS bytes``, ``targets = bytes EOS``
  (id 1 is BOS/EOS, byte ``b`` is ``b + 2``, vocab 258), per-position classes.
- ``mnist``: sequential MNIST (Le et al. 2015): 784 steps of one pixel in [0, 1], pooled
  10-way classification. ``test_2x``/``test_4x`` show each pixel for 2 or 4 steps.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds

from seqscale.data.synthetic import default_data_dir
from seqscale.data.task import Example, Task, check_int, register_task


class DatasetNotPreparedError(FileNotFoundError):
  """A real TFDS dataset is not prepared (as array_record) in the given data_dir."""


def prepared_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """The TFDS builder for ``name`` if prepared as array_record in ``data_dir``, else raises."""
  builder = tfds.builder(name, data_dir=data_dir)
  how = (f"On a machine with internet run\n"
         f"  tfds build {name} --data_dir={data_dir} --file_format=array_record\n"
         f"and copy {os.path.join(data_dir, name)} here (or pass data_dir=... / set "
         "$TFDS_DATA_DIR to where it is).")
  if not builder.is_prepared():
    raise DatasetNotPreparedError(
        f"TFDS dataset {name!r} is not prepared in data_dir={data_dir!r} (no "
        f"{builder.data_path}); seqscale does not download datasets. {how}")
  if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise DatasetNotPreparedError(
        f"TFDS dataset {name!r} in data_dir={data_dir!r} is stored as "
        f"{builder.info.file_format.value}, but reading without TensorFlow needs "
        f"array_record. {how}")
  return builder


class TfdsTask(Task):
  """A prepared TFDS dataset; ``tfds_splits`` maps our split names to TFDS splits."""

  tfds_name = ""
  # The longer eval splits reread TFDS's test split at 2x and 4x the sequence length.
  tfds_splits = {"train": "train", "test": "test", "test_2x": "test", "test_4x": "test"}

  def __init__(self, data_dir: str | os.PathLike[str] | None, length: int):
    super().__init__()
    self.data_dir = default_data_dir(data_dir)
    self._builder: tfds.core.DatasetBuilder | None = prepared_builder(self.tfds_name,
                                                                      self.data_dir)
    self._sources: dict[str, Sequence[Any]] = {}
    self._set_lengths(length)

  def _source(self, split: str) -> Sequence[Any]:
    if self._builder is None:  # Unpickled in a worker process.
      self._builder = prepared_builder(self.tfds_name, self.data_dir)
    if split not in self._sources:
      self._sources[split] = self._builder.as_data_source(self.tfds_splits[split])
    return self._sources[split]

  def split_length(self, split: str) -> int:
    return self.sequence_lengths[self.check_split(split)]


def _pad(ids: np.ndarray, length: int) -> np.ndarray:
  out = np.zeros(length, np.int32)
  out[:min(len(ids), length)] = ids[:length]
  return out


@register_task("imdb_reviews")
class ImdbReviews(TfdsTask):
  """IMDb sentiment at byte level (LRA Text): pooled 2-way classes, inputs [B, T] bytes."""

  name = tfds_name = "imdb_reviews"
  input_type = "tokens"
  vocab_size = 257
  output = "pooled"
  target_type = "classes"
  num_classes = 2

  def __init__(self, *, length: int = 1000, data_dir: str | os.PathLike[str] | None = None):
    super().__init__(data_dir, check_int("length", length, minimum=1))

  def _format(self, example: Example, split: str) -> Example:
    ids = np.frombuffer(example["text"], np.uint8).astype(np.int32) + 1
    inputs_T = _pad(ids, self.split_length(split))
    return {"inputs": inputs_T, "targets": np.asarray(example["label"], np.int32),
            "weights": np.asarray(1.0, np.float32), "mask": inputs_T != 0}


@register_task("lm1b")
class Lm1b(TfdsTask):
  """One Billion Word language modelling at byte level: per-position next-byte classes."""

  name = tfds_name = "lm1b"
  input_type = "tokens"
  vocab_size = 258
  output = "per_position"
  target_type = "classes"
  num_classes = 258
  requires_causal = True

  def __init__(self, *, length: int = 256, data_dir: str | os.PathLike[str] | None = None):
    super().__init__(data_dir, check_int("length", length, minimum=1))

  def _format(self, example: Example, split: str) -> Example:
    length = self.split_length(split)
    seq = np.concatenate([[1], np.frombuffer(example["text"], np.uint8).astype(np.int32) + 2,
                          [1]])
    inputs_T, targets_T = _pad(seq[:-1], length), _pad(seq[1:], length)
    mask_T = np.arange(length) < len(seq) - 1
    return {"inputs": inputs_T, "targets": targets_T,
            "weights": mask_T.astype(np.float32), "mask": mask_T}


@register_task("mnist")
class SequentialMnist(TfdsTask):
  """Sequential MNIST: inputs [B, 784, 1] pixels in [0, 1], pooled 10-way classes."""

  name = tfds_name = "mnist"
  input_type = "features"
  in_features = 1
  output = "pooled"
  target_type = "classes"
  num_classes = 10

  def __init__(self, *, length: int = 784, data_dir: str | os.PathLike[str] | None = None):
    if length != 784:
      raise ValueError(f"length={length!r} is not allowed for mnist: it must be 784 "
                       "(28 x 28 pixels, one per step)")
    super().__init__(data_dir, 784)

  def _format(self, example: Example, split: str) -> Example:
    pixels = np.asarray(example["image"], np.float32).reshape(-1) / 255.0
    inputs_TF = np.repeat(pixels, self.split_length(split) // 784)[:, None]
    return {"inputs": inputs_TF, "targets": np.asarray(example["label"], np.int32),
            "weights": np.asarray(1.0, np.float32), "mask": np.ones(len(inputs_TF), bool)}
