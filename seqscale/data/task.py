"""The Task interface and the task registry (see docs/CONTRACT.md, "Task interface").

A task knows its shapes (``input_type``, ``vocab_size``/``in_features``, ``output``,
``target_type``, ``num_classes``, lengths per split) and serves each split as a
``grain.MapDataset`` of batches. Element ``i`` of that dataset *is* batch ``i``: the train
split is shuffled per epoch with the given seed and repeated forever, so a resumed run asks
for batch ``step`` and gets exactly the batch an uninterrupted run would have seen.

A subclass provides two hooks:

- ``_source(split)``: a random-access sequence of stored examples (``len`` and
  ``__getitem__``), e.g. a TFDS ``ArrayRecordDataSource``;
- ``_format(example, split)``: one stored example -> a dict of fixed-shape NumPy arrays
  (``inputs``, ``targets``, ``weights``, ``mask``, ...), padded to the split's length.
"""

from __future__ import annotations

import math
import numbers
import zlib
from typing import Any, Callable, Sequence

import grain
import numpy as np

from seqscale.registry import Registry

Example = dict[str, np.ndarray]

INPUT_TYPES = ("tokens", "features")
OUTPUTS = ("per_position", "pooled")
TARGET_TYPES = ("classes", "regression")


def check_int(name: str, value: Any, *, minimum: int | None = None,
              maximum: int | None = None) -> int:
  """Returns ``value`` as an int, or raises ValueError naming ``name`` and what is allowed."""
  ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
  if ok:
    value = int(value)
    ok = (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
  if not ok:
    lo = "-inf" if minimum is None else minimum
    hi = "inf" if maximum is None else maximum
    raise ValueError(f"{name}={value!r} is not allowed: it must be an integer in [{lo}, {hi}]")
  return value


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
  """Returns ``value`` if it is one of ``choices``; raises ValueError otherwise."""
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not allowed; choose one of: "
                     f"{', '.join(map(repr, choices))}")
  return value


def scaled_splits(length: int) -> dict[str, int]:
  """The standard eval splits: the training length, twice and four times it."""
  return {"test": length, "test_2x": 2 * length, "test_4x": 4 * length}


def every_position(inputs: np.ndarray, targets: np.ndarray) -> Example:
  """A per-position example in which every position is real and counts (weight 1)."""
  length = len(inputs)
  return {"inputs": np.asarray(inputs, np.int32), "targets": np.asarray(targets, np.int32),
          "weights": np.ones(length, np.float32), "mask": np.ones(length, bool)}


def split_rng(seed: int, split: str) -> np.random.Generator:
  """An independent, reproducible NumPy generator for (seed, split)."""
  return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(split.encode())]))


class Task:
  """A sequence task; see docs/CONTRACT.md for every attribute's meaning.

  Attributes beyond the contract:
    sequence_lengths: split name -> T of the batch's ``inputs`` (``"train"`` included).
      It equals ``eval_splits`` except where a task's "length" is not T (copy_memory's
      delay T has sequences of T + 20; algorithmic's source length S has decoder-only
      sequences of 2S + 1).
  """

  name: str = ""
  input_type: str = "tokens"
  vocab_size: int | None = None
  in_features: int | None = None
  output: str = "per_position"
  target_type: str = "classes"
  num_classes: int = 1
  requires_causal: bool = False

  def __init__(self) -> None:
    self.train_length: int = 0
    self.eval_splits: dict[str, int] = {}
    self.sequence_lengths: dict[str, int] = {}
    self.baseline: dict[str, float] = {}

  # -- hooks ------------------------------------------------------------------------------

  def _source(self, split: str) -> Sequence[Example]:
    raise NotImplementedError

  def _format(self, example: Example, split: str) -> Example:
    raise NotImplementedError

  def __getstate__(self) -> dict[str, Any]:
    # Open readers and TFDS builders stay behind when grain sends the pipeline to worker
    # processes; the copy reopens the prepared files on first use.
    state = dict(self.__dict__)
    state.update(_builder=None, _sources={})
    return state

  def _set_lengths(self, length: int, to_sequence: Callable[[int], int] = lambda n: n,
                   eval_splits: dict[str, int] | None = None) -> None:
    """Sets ``train_length``, ``eval_splits`` (default ``scaled_splits(length)``) and
    ``sequence_lengths`` (each split's length through ``to_sequence``)."""
    self.train_length = length
    self.eval_splits = scaled_splits(length) if eval_splits is None else eval_splits
    self.sequence_lengths = {split: to_sequence(n)
                             for split, n in {"train": length, **self.eval_splits}.items()}

  # -- public -----------------------------------------------------------------------------

  @property
  def splits(self) -> tuple[str, ...]:
    """All split names: ``"train"`` then the eval splits."""
    return ("train",) + tuple(self.eval_splits)

  def check_split(self, split: str) -> str:
    return check_choice("split", split, self.splits)

  def num_examples(self, split: str) -> int:
    """Number of stored examples in ``split``."""
    return len(self._source(self.check_split(split)))

  def num_batches(self, split: str, batch_size: int) -> int:
    """Batches in one pass over an eval split (the last one padded with weight 0)."""
    return math.ceil(self.num_examples(split) / check_int("batch_size", batch_size, minimum=1))

  def dataset(self, split: str, *, batch_size: int, seed: int, shard_index: int = 0,
              num_shards: int = 1) -> grain.MapDataset:
    """Batches of ``split``; element ``i`` is (this host's part of) global batch ``i``.

    Args:
      split: ``"train"`` (shuffled per epoch with ``seed``, repeated forever) or an eval
        split (one pass in stored order; the last batch padded with weight-0 examples).
      batch_size: the global batch size B; this host gets ``B // num_shards`` examples.
      seed: shuffle seed for ``"train"`` (in [0, 2**32)).
      shard_index: this host's index in [0, num_shards).
      num_shards: number of hosts sharing the global batch; must divide ``batch_size``.

    Returns:
      A ``grain.MapDataset`` of dicts of NumPy arrays (shapes in docs/CONTRACT.md).
    """
    self.check_split(split)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    seed = check_int("seed", seed, minimum=0, maximum=2**32 - 1)
    num_shards = check_int("num_shards", num_shards, minimum=1)
    shard_index = check_int("shard_index", shard_index, minimum=0, maximum=num_shards - 1)
    if batch_size % num_shards:
      raise ValueError(f"batch_size={batch_size} is not allowed with num_shards={num_shards}: "
                       "batch_size must be a multiple of num_shards")
    source = _SplitSource(self, split)
    fmt = _Format(self, split)
    if split == "train":
      ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat().map(fmt)
    else:
      n = len(source)
      padded = math.ceil(n / batch_size) * batch_size
      ds = grain.MapDataset.range(padded).map(_FormatOrPad(source, fmt))
    # Consecutive per-host batches b, b+1, ..., b+N-1 together form global batch b // N.
    return ds.batch(batch_size // num_shards)[shard_index::num_shards]


class _SplitSource:
  """A picklable view of ``task._source(split)`` (the task reopens its files lazily)."""

  def __init__(self, task: Task, split: str):
    self.task, self.split = task, split
    self.length = len(task._source(split))  # pylint: disable=protected-access

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, index: int) -> Example:
    return self.task._source(self.split)[index]  # pylint: disable=protected-access


class _Format:
  """Picklable ``example -> task._format(example, split)`` (grain may send it to workers)."""

  def __init__(self, task: Task, split: str):
    self.task, self.split = task, split

  def __call__(self, example: Example) -> Example:
    return self.task._format(example, self.split)  # pylint: disable=protected-access


class _FormatOrPad:
  """Index -> formatted example, or an all-zero (weight 0, mask False) one past the end."""

  def __init__(self, source: Sequence[Example], fmt: _Format):
    self.source, self.fmt = source, fmt
    self.pad = {k: np.zeros_like(v) for k, v in fmt(source[0]).items()}

  def __call__(self, index: int) -> Example:
    return self.fmt(self.source[index]) if index < len(self.source) else self.pad


# -- registry -----------------------------------------------------------------------------

TASKS: Registry[Task] = Registry("task")
register_task = TASKS.register  # decorator: registers a Task subclass (or factory)
task_names = TASKS.names


def get_task(name: str, **kwargs: Any) -> Task:
  """Builds a task by name, e.g. ``get_task('running_sum', length=64, data_dir=...)``.

  Raises:
    ValueError: for an unknown name, a keyword the task does not take (the message lists
      the ones it takes), or a bad value.
  """
  return TASKS.build(name, **kwargs)
