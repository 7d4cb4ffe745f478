"""Synthetic tasks as TFDS builders written to ``array_record`` (no TensorFlow needed).

Each synthetic task has a ``tfds.core.GeneratorBasedBuilder`` (named ``seqscale_<task>``)
whose BuilderConfig name spells out every generation parameter (length, sizes, seed, ...),
so different settings never share files::

  <data_dir>/seqscale_running_sum/base_10-length_64-num_eval_256-num_train_2048-seed_0/1.0.0/
      seqscale_running_sum-train.array_record-00000-of-00001  (and one file per eval split)

TFDS 4.9.10 serialises examples with its own protobuf code, so
``download_and_prepare(file_format="array_record")`` works without TensorFlow; sequences are
stored as raw bytes (``Encoding.BYTES``). TFDS writes into ``incomplete.*`` and renames the
folder when every split is written, so a killed preparation leaves no half dataset; a second
task with the same parameters finds the folder and reuses it. Reading goes through
``builder.as_data_source(split)`` (an ``ArrayRecordDataSource``) and grain.

Generation is deterministic: split ``s`` is drawn from ``SeedSequence([seed, crc32(s)])``
in chunks of about 2**20 values, so changing the chunking or a generator changes the data:
bump the task's ``VERSION`` when you do.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any, Iterator, Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils

from seqscale.data.task import Example, Task, check_int, split_rng

_CONFIG_VALUE = re.compile(r"^[\w+.\-]+$")


def default_data_dir(data_dir: str | os.PathLike[str] | None) -> str:
  """``data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
  if data_dir:
    return os.fspath(data_dir)
  return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def chunks(num: int, length: int) -> Iterator[int]:
  """Sizes of the chunks a split of ``num`` examples of ``length`` is generated in."""
  step = max(1, 2**20 // max(1, length))
  for start in range(0, num, step):
    yield min(step, num - start)


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
  """Silences TFDS's per-split tqdm bars, then restores the user's setting."""
  previous = tqdm_utils._active  # pylint: disable=protected-access
  tfds.display_progress_bar(False)
  try:
    yield
  finally:
    tfds.display_progress_bar(previous)


class _SyntheticBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes every split of ``builder_config.task``; one subclass per task name."""

  VERSION = tfds.core.Version("1.0.0")
  # TFDS 4.9.10 derives code_path for builders inside a package through the
  # `importlib_resources` backport, which it only installs on Python < 3.9; giving the path
  # here skips that lookup. (It is only used to look for a checksums file we do not have.)
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    task: SyntheticTask = self.builder_config.task
    features = {}
    for key, (dtype, shape) in task.feature_spec().items():
      encoding = tfds.features.Encoding.BYTES if shape else tfds.features.Encoding.NONE
      features[key] = tfds.features.Tensor(shape=shape, dtype=dtype, encoding=encoding)
    return tfds.core.DatasetInfo(builder=self, description=(task.__doc__ or "").split("\n")[0],
                                 features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in self.builder_config.task.splits}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, Example]]:
    yield from enumerate(self.builder_config.task.generate_split(split))


_BUILDERS: dict[str, type[_SyntheticBuilder]] = {}


def builder_class(task_name: str, version: str) -> type[_SyntheticBuilder]:
  """The (registered) TFDS builder class ``seqscale_<task_name>``, made once."""
  name = f"seqscale_{task_name}"
  if name not in _BUILDERS:
    cls_name = "Seqscale" + "".join(w.title() for w in task_name.split("_"))
    _BUILDERS[name] = type(cls_name, (_SyntheticBuilder,), {
        "name": name, "VERSION": tfds.core.Version(version), "__module__": __name__})
  return _BUILDERS[name]


class SyntheticTask(Task):
  """A task generated locally from a seed; subclasses give the features and a generator.

  Subclass hooks: ``feature_spec()`` (stored field -> (dtype, shape with None for
  lengths)), ``generate(rng, num, length)`` (yields stored examples), ``_format``.
  """

  VERSION = "1.0.0"

  def __init__(self, *, length: int, num_train: int, num_eval: int, seed: int,
               data_dir: str | os.PathLike[str] | None, **params: Any):
    super().__init__()
    self.train_length = check_int("length", length, minimum=1)
    self.num_train = check_int("num_train", num_train, minimum=1)
    self.num_eval = check_int("num_eval", num_eval, minimum=1)
    self.seed = check_int("seed", seed, minimum=0, maximum=2**32 - 1)
    self.data_dir = default_data_dir(data_dir)
    self.params = dict(length=self.train_length, num_train=self.num_train,
                       num_eval=self.num_eval, seed=self.seed, **params)
    self._builder: tfds.core.DatasetBuilder | None = None
    self._sources: dict[str, Sequence[Example]] = {}

  # -- hooks ------------------------------------------------------------------------------

  def feature_spec(self) -> dict[str, tuple[Any, tuple[int | None, ...]]]:
    raise NotImplementedError

  def generate(self, rng: np.random.Generator, num: int, length: int) -> Iterator[Example]:
    raise NotImplementedError

  # -- generation and storage -------------------------------------------------------------

  def split_length(self, split: str) -> int:
    return self.train_length if split == "train" else self.eval_splits[self.check_split(split)]

  def generate_split(self, split: str) -> Iterator[Example]:
    """All examples of ``split``, deterministically from (seed, split)."""
    num = self.num_train if split == "train" else self.num_eval
    yield from self.generate(split_rng(self.seed, split), num, self.split_length(split))

  @property
  def config_name(self) -> str:
    """The BuilderConfig name: every generation parameter, sorted, ``key_value-...``."""
    parts = []
    for key, value in sorted(self.params.items()):
      if not _CONFIG_VALUE.match(str(value)):
        raise ValueError(f"{key}={value!r} cannot be part of a dataset config name")
      parts.append(f"{key}_{value}")
    return "-".join(parts)

  def builder(self) -> tfds.core.DatasetBuilder:
    """The TFDS builder for these parameters, prepared on first use (then cached on disk)."""
    if self._builder is None:
      config = tfds.core.BuilderConfig(name=self.config_name,
                                       description=f"seqscale {self.name}: {self.params}")
      config.task = self  # Read by _SyntheticBuilder; not part of the stored metadata.
      make = lambda: builder_class(self.name, self.VERSION)(data_dir=self.data_dir,
                                                             config=config)
      builder = make()
      if not builder.is_prepared():
        try:
          with _no_progress_bars():
            builder.download_and_prepare(file_format="array_record")
        except Exception:
          # Another process (a second host) may have renamed the same folder into place first.
          builder = make()
          if not builder.is_prepared():
            raise
      self._builder = builder
    return self._builder

  @property
  def data_path(self) -> str:
    """The folder holding this task's array_record files."""
    return os.fspath(self.builder().data_path)

  def _source(self, split: str) -> Sequence[Example]:
    if split not in self._sources:
      self._sources[split] = self.builder().as_data_source(split)
    return self._sources[split]
