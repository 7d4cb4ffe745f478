"""Real text for character-level language modelling: the Python standard library's source.

``python_stdlib`` reads every ``.py`` file of the running interpreter's stdlib folder
(``sysconfig.get_paths()["stdlib"]``, without ``site-packages`` and the test folders): about
12 MB of real, varied text that every machine with Python has, so nothing is downloaded.
Files go to a split by a hash of their relative path (``split_of``: 90% train, 5%
validation, 5% test), so the split of a file never depends on which other files exist. The
corpus is identified by the Python version, the file count and a SHA-256 over every
(relative path, content) pair in path order (``Corpus``); ``task.info`` carries them into a
run's ``results.json``.

It is a TFDS builder (``seqscale_python_stdlib``, one BuilderConfig per corpus hash and
tokenizer) written to ``array_record``: each split's token stream in chunks of
``CHUNK`` tokens, read back through ``as_data_source`` and grain like the synthetic tasks.
``tiny_shakespeare`` (TFDS, where prepared as array_record; see ``seqscale.data.real``) is
the same task on Karpathy's Shakespeare, with the same tokenizers and windows.

Tokenizers: ``bytes`` (default): the UTF-8 bytes, id = byte value, vocabulary 256, no
unknowns. ``chars``: id 0 is "unknown" (a character the training split does not contain),
ids 1.. the training split's characters in code-point order.

Windows: a training example is ``length + 1`` consecutive tokens (inputs the first
``length``, targets the last ``length``), at every multiple of ``length`` in the training
stream (``num_train`` of them spread evenly where that is fewer), shuffled per epoch by
grain. An evaluation split is ``num_eval`` windows (at most as many as fit) spread evenly
over that split's stream, every position counted;
``units_per_token[split]`` gives bytes and characters per token of exactly the evaluated
targets, so that bits per byte / character follow from the mean cross-entropy.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import sysconfig
from typing import Any, Iterator, Sequence

import numpy as np

from seqscale.data import real
from seqscale.data.synthetic import SyntheticTask, default_data_dir
from seqscale.data.task import Example, Task, check_choice, check_int, register_task

TOKENIZERS = ("bytes", "chars")
SPLITS = ("train", "validation", "test")
CHUNK = 1 << 16  # tokens per stored record
SKIPPED_DIRS = ("site-packages", "test", "tests", "idle_test")


# ------------------------------------------------------------------------------ tokenizer

class Tokenizer:
  """Text <-> int32 ids: ``bytes`` (vocab 256) or ``chars`` (0 unknown, then ``chars``).

  Args:
    kind: ``"bytes"`` or ``"chars"``.
    chars: the character vocabulary for ``chars`` (sorted, unique); ignored for bytes.
  """

  def __init__(self, kind: str, chars: str = ""):
    self.kind = check_choice("tokenizer", kind, TOKENIZERS)
    self.chars = "" if kind == "bytes" else "".join(sorted(set(chars)))
    self.vocab_size = 256 if kind == "bytes" else len(self.chars) + 1
    self._codes = np.array([ord(c) for c in self.chars], np.int64)

  @classmethod
  def fit(cls, kind: str, text: str) -> "Tokenizer":
    """The tokenizer of ``kind`` whose character vocabulary is that of ``text``."""
    return cls(kind, "" if kind == "bytes" else "".join(set(text)))

  def unknown(self, text: str) -> list[str]:
    """The characters of ``text`` outside the vocabulary (none for bytes), in order."""
    if self.kind == "bytes":
      return []
    known = set(self.chars)
    return list(dict.fromkeys(c for c in text if c not in known))

  def encode(self, text: str) -> np.ndarray:
    """``text`` -> ids [N] int32 (unknown characters: 0)."""
    if self.kind == "bytes":
      return np.frombuffer(text.encode("utf-8", "surrogateescape"), np.uint8).astype(np.int32)
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32).astype(np.int64)
    pos = np.clip(np.searchsorted(self._codes, codes), 0, max(len(self._codes) - 1, 0))
    hit = self._codes[pos] == codes if len(self._codes) else np.zeros(len(codes), bool)
    return np.where(hit, pos + 1, 0).astype(np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """ids -> text (invalid UTF-8 and unknown ids as U+FFFD)."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    if self.kind == "bytes":
      return bytes(np.clip(ids, 0, 255).astype(np.uint8)).decode("utf-8", "replace")
    return "".join(self.chars[i - 1] if 0 < i <= len(self.chars) else "\ufffd" for i in ids)

  def units(self, ids: np.ndarray) -> dict[str, int]:
    """Bytes and characters the ids stand for: ``{"byte": n, "char": n}``."""
    text = self.decode(ids)
    return {"byte": len(text.encode("utf-8", "surrogateescape")), "char": len(text)}


# -------------------------------------------------------------------------------- corpus

def split_of(relpath: str) -> str:
  """``train`` (90%), ``validation`` (5%) or ``test`` (5%) from a SHA-256 of the path."""
  bucket = int(hashlib.sha256(relpath.encode("utf-8")).hexdigest()[:8], 16) % 100
  return "train" if bucket < 90 else ("validation" if bucket < 95 else "test")


class Corpus:
  """The stdlib's ``.py`` files: ``texts[split]`` (files joined in path order) and identity.

  Args:
    root: the folder to read; None: this interpreter's stdlib.
  """

  def __init__(self, root: str | None = None):
    self.root = root or sysconfig.get_paths()["stdlib"]
    if not os.path.isdir(self.root):
      raise ValueError(f"stdlib folder {self.root!r} does not exist")
    paths = []
    for folder, dirs, files in os.walk(self.root):
      dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("."))
      paths += [os.path.join(folder, f) for f in files if f.endswith(".py")]
    rels = sorted(os.path.relpath(p, self.root).replace(os.sep, "/") for p in paths)
    if not rels:
      raise ValueError(f"no .py files in {self.root!r}")
    digest = hashlib.sha256()
    parts: dict[str, list[str]] = {s: [] for s in SPLITS}
    self.files = {s: 0 for s in SPLITS}
    for rel in rels:
      with open(os.path.join(self.root, rel), "rb") as f:
        raw = f.read()
      digest.update(rel.encode("utf-8") + b"\0" + raw + b"\0")
      split = split_of(rel)
      parts[split].append(raw.decode("utf-8", "surrogateescape"))
      self.files[split] += 1
    self.texts = {s: "".join(p) for s, p in parts.items()}
    self.num_files = len(rels)
    self.sha256 = digest.hexdigest()
    self.python_version = sys.version.split()[0]

  def info(self) -> dict[str, Any]:
    return {"corpus": "python_stdlib", "python_version": self.python_version,
            "stdlib": self.root, "num_files": self.num_files, "files_per_split": self.files,
            "sha256": self.sha256,
            "bytes_per_split": {s: len(t.encode("utf-8", "surrogateescape"))
                                for s, t in self.texts.items()}}


# ----------------------------------------------------------------------------- the tasks

class _Windows:
  """A random-access view: window ``i`` of a token stream as ``{"tokens": [length + 1]}``."""

  def __init__(self, stream: np.ndarray, starts: np.ndarray, length: int):
    self.stream, self.starts, self.length = stream, starts, length

  def __len__(self) -> int:
    return len(self.starts)

  def __getitem__(self, index: int) -> Example:
    start = int(self.starts[index])
    return {"tokens": self.stream[start:start + self.length + 1]}


def window_starts(stream_len: int, length: int, num: int) -> np.ndarray:
  """Starts of ``num`` windows of ``length + 1`` tokens: every multiple of ``length`` if
  that is at most ``num`` windows, else ``num`` spread evenly from the first token to the
  last window that fits."""
  last = stream_len - length - 1  # the last start whose window fits
  if last < 0:
    raise ValueError(f"a split has {stream_len} tokens, fewer than length + 1 = "
                     f"{length + 1}; use a smaller length")
  if num >= last // length + 1:
    return np.arange(0, last + 1, length, dtype=np.int64)
  return np.arange(num, dtype=np.int64) * (last // max(num - 1, 1))


class TextTask:
  """Next-token prediction on windows of a text's token stream (see the module docstring).

  A mixin before ``Task`` (or ``SyntheticTask``): ``_setup_text`` sets the lengths, the
  tokenizer and the units; a subclass gives ``_make_tokenizer()`` and ``_stream(split)``.
  """

  input_type = "tokens"
  output = "per_position"
  target_type = "classes"
  requires_causal = True
  sample_prompt = "\n"  # results.md of a run ends with a sample after this prompt
  count_flops = True  # the trainer records FLOPs per step and per token

  def _setup_text(self, *, length: int, tokenizer: str, num_train: int, num_eval: int) -> None:
    self.tokenizer_kind = check_choice("tokenizer", tokenizer, TOKENIZERS)
    self.num_train = check_int("num_train", num_train, minimum=1)
    self.num_eval = check_int("num_eval", num_eval, minimum=1)
    self._set_lengths(check_int("length", length, minimum=1),
                      eval_splits={"validation": length, "test": length})
    self._streams: dict[str, np.ndarray] = {}
    self._sources: dict[str, _Windows] = {}
    self.tokenizer = self._make_tokenizer()
    self.vocab_size = self.num_classes = self.tokenizer.vocab_size
    self.units_per_token = {s: self._units_per_token(s) for s in self.eval_splits}
    self.baseline = {"bits_per_token_uniform": math.log2(self.vocab_size)}

  def _make_tokenizer(self) -> Tokenizer:
    raise NotImplementedError

  def _stream(self, split: str) -> np.ndarray:
    raise NotImplementedError

  def split_length(self, split: str) -> int:
    return self.sequence_lengths[self.check_split(split)]

  def _source(self, split: str) -> _Windows:
    if split not in self._sources:
      stream = self._stream(split)
      num = self.num_train if split == "train" else self.num_eval
      self._sources[split] = _Windows(stream, window_starts(len(stream), self.train_length, num),
                                      self.train_length)
    return self._sources[split]

  def _format(self, example: Example, split: str) -> Example:
    tokens = np.asarray(example["tokens"], np.int32)
    length = self.train_length
    return {"inputs": tokens[:length], "targets": tokens[1:length + 1],
            "weights": np.ones(length, np.float32), "mask": np.ones(length, bool)}

  def _units_per_token(self, split: str) -> dict[str, float]:
    """Bytes and characters per counted target token of ``split``'s evaluated windows."""
    src = self._source(split)
    targets = np.concatenate([src[i]["tokens"][1:] for i in range(len(src))])
    return {k: v / len(targets) for k, v in self.tokenizer.units(targets).items()}

  def __getstate__(self) -> dict[str, Any]:
    state = super().__getstate__()  # pytype: disable=attribute-error
    state.update(_streams={}, _sources={})
    return state


@register_task("python_stdlib")
class PythonStdlib(TextTask, SyntheticTask):
  """The running interpreter's stdlib source as text (per-position next-token classes)."""

  name = "python_stdlib"
  VERSION = "1.0.0"

  def __init__(self, *, length: int = 128, tokenizer: str = "bytes", num_train: int = 2**31,
               num_eval: int = 256, data_dir: str | os.PathLike[str] | None = None,
               stdlib: str = ""):
    self.corpus = Corpus(stdlib or None)
    # SyntheticTask's builder machinery; the config name spells the corpus and tokenizer.
    super().__init__(length=length, num_train=1, num_eval=1, seed=0, data_dir=data_dir)
    self.params = dict(python=self.corpus.python_version, sha256=self.corpus.sha256[:16],
                       files=self.corpus.num_files,
                       tokenizer=check_choice("tokenizer", tokenizer, TOKENIZERS))
    self._setup_text(length=length, tokenizer=tokenizer, num_train=num_train,
                     num_eval=num_eval)
    self.info = {**self.corpus.info(), "tokenizer": self.tokenizer_kind,
                 "vocab_size": self.vocab_size, "units_per_token": self.units_per_token}

  def _make_tokenizer(self) -> Tokenizer:
    return Tokenizer.fit(self.tokenizer_kind, self.corpus.texts["train"])

  def feature_spec(self):
    return {"tokens": (np.int32, (None,))}

  def generate_split(self, split: str) -> Iterator[Example]:
    ids = self.tokenizer.encode(self.corpus.texts[split])
    for start in range(0, len(ids), CHUNK):
      yield {"tokens": ids[start:start + CHUNK]}

  def _stream(self, split: str) -> np.ndarray:
    if split not in self._streams:
      records = self.builder().as_data_source(split)
      self._streams[split] = np.concatenate(
          [np.asarray(records[i]["tokens"], np.int32) for i in range(len(records))])
    return self._streams[split]


@register_task("tiny_shakespeare")
class TinyShakespeare(TextTask, Task):
  """TFDS ``tiny_shakespeare`` (prepared as array_record), same tokenizers and windows."""

  name = tfds_name = "tiny_shakespeare"
  sample_prompt = "ROMEO:"

  def __init__(self, *, length: int = 128, tokenizer: str = "bytes", num_train: int = 2**31,
               num_eval: int = 256, data_dir: str | os.PathLike[str] | None = None):
    self.data_dir = default_data_dir(data_dir)
    builder = real.prepared_builder(self.tfds_name, self.data_dir)
    self._texts = {}
    for split in SPLITS:
      records = builder.as_data_source(split)
      self._texts[split] = "".join(
          records[i]["text"].decode("utf-8", "surrogateescape")
          if isinstance(records[i]["text"], bytes) else str(records[i]["text"])
          for i in range(len(records)))
    super().__init__()
    self._setup_text(length=length, tokenizer=tokenizer, num_train=num_train,
                     num_eval=num_eval)
    self.info = {"corpus": "tiny_shakespeare", "data_dir": self.data_dir,
                 "sha256": hashlib.sha256("\0".join(
                     self._texts[s] for s in SPLITS).encode("utf-8")).hexdigest(),
                 "tokenizer": self.tokenizer_kind, "vocab_size": self.vocab_size,
                 "units_per_token": self.units_per_token}

  def _make_tokenizer(self) -> Tokenizer:
    return Tokenizer.fit(self.tokenizer_kind, self._texts["train"])

  def _stream(self, split: str) -> np.ndarray:
    if split not in self._streams:
      self._streams[split] = self.tokenizer.encode(self._texts[split])
    return self._streams[split]

