"""babi_like: bAbI-style question answering generated locally, and the real bAbI (``babi``)
where it has been prepared.

Stories (after Weston et al. 2015, tasks 1 and 2): people move between places, pick up and
drop objects; one question at the end, answered by one word (a place):

- ``one_fact`` (bAbI task 1): "where is mary" -- her last move is the supporting fact;
- ``two_facts`` (bAbI task 2): "where is the football" -- who has it (or who dropped it)
  and where that person was: two supporting facts;
- ``mixed``: each example is one of the two, with equal probability.

The split's ``length`` is the story's maximum number of sentences M; each story has
``ceil(M / 2)`` to M sentences (``test_2x``/``test_4x``: 2M and 4M, longer stories). A
sentence has at most ``J = 5`` words, no punctuation. Every batch gives two forms:

- ``story`` int32 ``[B, M, J]`` (sentences left-aligned, 0 pads) and ``query`` int32
  ``[B, J]``: the input of a memory network (interface ``"qa"``);
- ``inputs`` int32 ``[B, T]``: the same story flattened, ``w w w . w w . ... q q ?`` with
  ``T = M (J + 1) + J + 1``, ``mask`` on real tokens: the input of any sequence model
  (pooled output; a causal model should pool the ``last`` position).

``targets`` int32 ``[B]``: the answer's word id (``num_classes = vocab_size``, so a model
can answer with its output embedding); ``weights`` ``[B]``; ``support`` int32 ``[B, 2]``:
the supporting sentences' slots (-1 where there is one).
"""

from __future__ import annotations

import glob
import math
import os
from typing import Any, Iterator, Sequence

import numpy as np

from seqscale.data.real import DatasetNotPreparedError
from seqscale.data.synthetic import SyntheticTask, default_data_dir
from seqscale.data.task import (Example, Task, check_choice, check_int, register_task,
                                scaled_splits)

PEOPLE = ("mary", "john", "sandra", "daniel")
PLACES = ("kitchen", "garden", "hallway", "bathroom", "bedroom", "office")
OBJECTS = ("football", "apple", "milk", "box")
MOVES = (("went", "to", "the"), ("moved", "to", "the"), ("journeyed", "to", "the"),
         ("travelled", "to", "the"))
GETS = (("picked", "up", "the"), ("got", "the"), ("grabbed", "the"))
DROPS = (("dropped", "the"), ("discarded", "the"), ("put", "down", "the"))
FUNCTION_WORDS = (".", "?", "where", "is", "the", "to", "went", "moved", "journeyed",
                  "travelled", "picked", "up", "got", "grabbed", "dropped", "discarded",
                  "put", "down")
WORDS = ("<pad>",) + FUNCTION_WORDS + PEOPLE + PLACES + OBJECTS
ID = {w: i for i, w in enumerate(WORDS)}
SENTENCE_WORDS = 5  # J
PROBLEMS = ("one_fact", "two_facts", "mixed")


def flatten(story_MJ: np.ndarray, query_J: np.ndarray, length: int) -> np.ndarray:
  """``w w . w w w . ... q q ?`` padded to ``length``: the story for a sequence model."""
  out = []
  for row in story_MJ:
    words = row[row > 0]
    if len(words):
      out += list(words) + [ID["."]]
  out += list(query_J[query_J > 0]) + [ID["?"]]
  flat = np.zeros(length, np.int32)
  flat[:len(out)] = out
  return flat


def qa_example(story_MJ: np.ndarray, query_J: np.ndarray, answer: int,
               support: Sequence[int], flat_length: int) -> Example:
  """A formatted batch element: both forms (``story``/``query`` and flat ``inputs``)."""
  inputs = flatten(story_MJ, query_J, flat_length)
  return {"story": story_MJ.astype(np.int32), "query": query_J.astype(np.int32),
          "inputs": inputs, "mask": inputs > 0, "targets": np.asarray(answer, np.int32),
          "weights": np.asarray(1.0, np.float32),
          "support": np.asarray((list(support) + [-1, -1])[:2], np.int32)}


class _World:
  """Where every person is and who holds what, updated sentence by sentence."""

  def __init__(self):
    self.place: dict[str, tuple[str, int]] = {}  # person -> (place, sentence index)
    self.holder: dict[str, tuple[str, int]] = {}  # object -> (person, sentence index)
    self.dropped: dict[str, tuple[str, int, int]] = {}  # object -> (place, drop i, move i)

  def object_answer(self, obj: str) -> tuple[str, list[int]] | None:
    if obj in self.holder:
      person, got = self.holder[obj]
      if person in self.place:
        place, moved = self.place[person]
        return place, sorted([got, moved])
    elif obj in self.dropped:
      place, dropped, moved = self.dropped[obj]
      return place, sorted([dropped, moved])
    return None


def _story(rng: np.random.Generator, n: int, objects: bool) -> tuple[list[list[str]], _World]:
  world, sentences = _World(), []
  for i in range(n):
    person = PEOPLE[rng.integers(len(PEOPLE))]
    held = [o for o, (p, _) in world.holder.items() if p == person]
    free = [o for o in OBJECTS if o not in world.holder]
    action = "move"
    if objects and (held or free) and rng.random() < 0.5:
      action = "drop" if held and (not free or rng.random() < 0.5) else "get"
    if action == "move":
      here = world.place.get(person, (None, 0))[0]
      place = [p for p in PLACES if p != here][rng.integers(len(PLACES) - 1)]
      world.place[person] = (place, i)
      sentences.append([person, *MOVES[rng.integers(len(MOVES))], place])
    elif action == "get":
      obj = free[rng.integers(len(free))]
      world.holder[obj] = (person, i)
      world.dropped.pop(obj, None)
      sentences.append([person, *GETS[rng.integers(len(GETS))], obj])
    else:
      obj = held[rng.integers(len(held))]
      del world.holder[obj]
      if person in world.place:
        place, moved = world.place[person]
        world.dropped[obj] = (place, i, moved)
      else:
        world.dropped.pop(obj, None)  # dropped somewhere unknown: no question about it
      sentences.append([person, *DROPS[rng.integers(len(DROPS))], obj])
  return sentences, world


def make_example(rng: np.random.Generator, n: int, problem: str) -> dict[str, Any]:
  """One story of ``n`` sentences and its question (words), answer and supporting facts."""
  if problem == "mixed":
    problem = PROBLEMS[rng.integers(2)]
  for _ in range(1000):
    sentences, world = _story(rng, n, objects=problem == "two_facts")
    if problem == "one_fact":
      asked = sorted(world.place)
      if asked:
        person = asked[rng.integers(len(asked))]
        place, moved = world.place[person]
        return dict(sentences=sentences, query=["where", "is", person], answer=place,
                    support=[moved])
    else:
      asked = [o for o in OBJECTS if world.object_answer(o)]
      if asked:
        obj = asked[rng.integers(len(asked))]
        place, support = world.object_answer(obj)
        return dict(sentences=sentences, query=["where", "is", "the", obj], answer=place,
                    support=support)
  raise RuntimeError(f"no answerable question in 1000 stories of {n} sentences")


def _ids(words: Sequence[str]) -> np.ndarray:
  out = np.zeros(SENTENCE_WORDS, np.int32)
  out[:len(words)] = [ID[w] for w in words]
  return out


@register_task("babi_like")
class BabiLike(SyntheticTask):
  """bAbI-like QA (tasks 1 and 2), generated locally; pooled classes (the answer word)."""

  name = "babi_like"
  input_type = "tokens"
  output = "pooled"
  target_type = "classes"
  vocab_size = num_classes = len(WORDS)

  def __init__(self, *, problem: str = "mixed", length: int = 10, num_train: int = 10_000,
               num_eval: int = 1_000, seed: int = 0,
               data_dir: str | os.PathLike[str] | None = None):
    problem = check_choice("problem", problem, PROBLEMS)
    check_int("length", length, minimum=2)
    super().__init__(length=length, num_train=num_train, num_eval=num_eval, seed=seed,
                     data_dir=data_dir, problem=problem)
    self.problem = problem
    self.sentence_words = SENTENCE_WORDS
    self._set_lengths(self.train_length, lambda m: m * (SENTENCE_WORDS + 1) + SENTENCE_WORDS + 1)
    self.baseline = {"xent": math.log(len(PLACES))}  # the answer is one of the places

  def feature_spec(self):
    return {"story": (np.int32, (None,)), "query": (np.int32, (SENTENCE_WORDS,)),
            "answer": (np.int32, ()), "support": (np.int32, (2,))}

  def generate(self, rng: np.random.Generator, num: int, length: int) -> Iterator[Example]:
    for _ in range(num):
      n = int(rng.integers((length + 1) // 2, length + 1))
      ex = make_example(rng, n, self.problem)
      yield {"story": np.concatenate([_ids(s) for s in ex["sentences"]]),
             "query": _ids(ex["query"]), "answer": np.asarray(ID[ex["answer"]], np.int32),
             "support": np.asarray((ex["support"] + [-1])[:2], np.int32)}

  def _format(self, example: Example, split: str) -> Example:
    m = self.split_length(split)
    story = np.asarray(example["story"], np.int32).reshape(-1, SENTENCE_WORDS)
    story_MJ = np.zeros((m, SENTENCE_WORDS), np.int32)
    story_MJ[:len(story)] = story
    return qa_example(story_MJ, np.asarray(example["query"]), int(example["answer"]),
                      np.asarray(example["support"]).tolist(), self.sequence_lengths[split])


# -- the real bAbI ------------------------------------------------------------------------

BABI_TFDS_NAME = "facebook__babi_qa"  # TFDS's name for huggingface:facebook/babi_qa


def _babi_path(data_dir: str, config: str) -> str:
  """The prepared folder ``<data_dir>/facebook__babi_qa/<config>/<version>``, or raises."""
  hf_config = config.replace("_", "-")
  how = (f"seqscale does not download datasets. On a machine with internet (and the "
         f"`datasets` package) run\n  tfds build huggingface:facebook/babi_qa "
         f"--config={hf_config} --data_dir={data_dir} --file_format=array_record\n"
         f"and copy {os.path.join(data_dir, BABI_TFDS_NAME)} here (or pass data_dir=... / "
         "set $TFDS_DATA_DIR to where it is).")
  found = sorted(glob.glob(os.path.join(data_dir, BABI_TFDS_NAME, config, "*",
                                        "dataset_info.json")))
  if not found:
    raise DatasetNotPreparedError(
        f"TFDS dataset 'babi' ({BABI_TFDS_NAME}/{config}) is not prepared in "
        f"data_dir={data_dir!r} (no {os.path.join(data_dir, BABI_TFDS_NAME, config)}). {how}")
  path = os.path.dirname(found[-1])
  if not glob.glob(os.path.join(path, "*.array_record*")):
    raise DatasetNotPreparedError(
        f"TFDS dataset 'babi' in {path} is not stored as array_record, which reading "
        f"without TensorFlow needs. {how}")
  return path


def _text(value: Any) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _answer(value: Any) -> str:
  return _text(value).strip().lower()


def _words(text: str) -> list[str]:
  return text.lower().replace(".", " ").replace("?", " ").replace(",", " ").split()


@register_task("babi")
class Babi(Task):
  """The real bAbI (Weston et al. 2015) as prepared by TFDS from Hugging Face's
  ``facebook/babi_qa``: one example per question, the story so far as its memory.

  Each stored example is a whole story, ``story: {type: 0 context | 1 question, text,
  answer, ...}``; a question's memory is the context sentences before it (the last
  ``length`` of them; ``test_2x``/``test_4x`` keep up to 2 and 4 times as many). The
  vocabulary (id 0 pad, then ``. ?``, then the words of the train split, sorted) is built
  when the task is made, by reading the train split once.
  """

  name = "babi"
  input_type = "tokens"
  output = "pooled"
  target_type = "classes"

  def __init__(self, *, task_id: int = 1, size: str = "10k", length: int = 50,
               data_dir: str | os.PathLike[str] | None = None):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    task_id = check_int("task_id", task_id, minimum=1, maximum=20)
    size = check_choice("size", size, ("1k", "10k"))
    check_int("length", length, minimum=1)
    super().__init__()
    self.data_dir = default_data_dir(data_dir)
    self.config = f"en_qa{task_id}" if size == "1k" else f"en_10k_qa{task_id}"
    self._path = _babi_path(self.data_dir, self.config)
    self._builder = tfds.builder_from_directory(self._path)
    self._sources: dict[str, Any] = {}
    self.train_length = length
    self.eval_splits = scaled_splits(length)
    self._index: dict[str, list[tuple[int, int]]] = {}
    words: set[str] = set()
    for story in self._stories("train"):
      for text, answer in zip(story["text"], story["answer"]):
        words.update(_words(_text(text)))
        if _answer(answer):
          words.add(_answer(answer))  # one class, even for a list ("apple,milk")
    self.words = ("<pad>", ".", "?") + tuple(sorted(words - {".", "?"}))
    self.ids = {w: i for i, w in enumerate(self.words)}
    self.vocab_size = self.num_classes = len(self.words)
    self.sentence_words = max(
        [len(_words(_text(t))) for s in self._stories("train") for t in s["text"]] or [1])
    self._set_lengths(length, lambda m: m * (self.sentence_words + 1) + self.sentence_words + 1)

  def _tfds_split(self, split: str) -> str:
    return "train" if split == "train" else "test"

  def _stories(self, split: str) -> Iterator[dict[str, Any]]:
    source = self._raw(split)
    for i in range(len(source)):
      yield source[i]["story"]

  def _raw(self, split: str) -> Any:
    key = self._tfds_split(split)
    if key not in self._sources:
      if self._builder is None:  # unpickled in a worker process
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
        self._builder = tfds.builder_from_directory(self._path)
      self._sources[key] = self._builder.as_data_source(key)
    return self._sources[key]

  def _questions(self, split: str) -> list[tuple[int, int]]:
    key = self._tfds_split(split)
    if key not in self._index:
      self._index[key] = [(i, j) for i, story in enumerate(self._stories(split))
                          for j, kind in enumerate(story["type"]) if int(kind) == 1]
    return self._index[key]

  def _source(self, split: str) -> Sequence[Example]:
    return _Questions(self, split)

  def _sentence(self, text: Any) -> np.ndarray:
    out = np.zeros(self.sentence_words, np.int32)
    ids = [self.ids.get(w, 0) for w in _words(_text(text))][:self.sentence_words]
    out[:len(ids)] = ids
    return out

  def _format(self, example: Example, split: str) -> Example:
    story, j = example["story"], int(example["question"])
    m = self.split_length(split)
    ids = [str(_text(x)) for x in story["id"]]
    context = [i for i in range(j) if int(story["type"][i]) == 0][-m:]
    story_MJ = np.zeros((m, self.sentence_words), np.int32)
    for slot, i in enumerate(context):
      story_MJ[slot] = self._sentence(story["text"][i])
    support = [context.index(ids.index(_text(s))) for s in story["supporting_ids"][j]
               if _text(s) in ids and ids.index(_text(s)) in context]
    answer = self.ids.get(_answer(story["answer"][j]), 0)  # 0: an answer train never had
    return qa_example(story_MJ, self._sentence(story["text"][j]), answer, support,
                      self.sequence_lengths[split])

  def split_length(self, split: str) -> int:
    return self.train_length if split == "train" else self.eval_splits[self.check_split(split)]


class _Questions:
  """Random access to one split's questions: element i is (story, question index)."""

  def __init__(self, task: Babi, split: str):
    self.task, self.split = task, split
    self.index = task._questions(split)  # pylint: disable=protected-access

  def __len__(self) -> int:
    return len(self.index)

  def __getitem__(self, i: int) -> Example:
    story, j = self.index[i]
    raw = self.task._raw(self.split)[story]  # pylint: disable=protected-access
    return {"story": raw["story"], "question": np.asarray(j)}
