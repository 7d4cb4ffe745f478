"""Evaluation on every split: one pass each, weighted sums added up, then means."""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from flax import nnx

from seqscale.train import losses
from seqscale.train import step as step_lib

SEQ2SEQ_KEYS = ("src", "src_mask", "tgt_in", "tgt_mask", "tgt_out", "tgt_weights")
SEQUENCE_KEYS = ("inputs", "mask", "targets", "weights")
QA_KEYS = ("story", "query", "targets", "weights")


def select(batch: dict[str, Any], interface: str) -> dict[str, np.ndarray]:
  """The fields of a task batch that a model of ``interface`` reads (see CONTRACT.md)."""
  keys = {"seq2seq": SEQ2SEQ_KEYS, "qa": QA_KEYS}.get(interface, SEQUENCE_KEYS)
  return {k: np.asarray(batch[k]) for k in keys if k in batch}


def bits_per(task: Any, split: str, metrics: dict[str, float]) -> dict[str, float]:
  """Text tasks (``task.units_per_token[split]``, e.g. ``{"byte": 1.0, "char": 0.98}``):
  ``bits_per_token`` = loss / ln 2 and ``bits_per_<unit>`` = bits per token / units per
  token (the bits of the held-out text divided by its bytes or characters); {} otherwise."""
  units = (getattr(task, "units_per_token", None) or {}).get(split)
  if not units or "loss" not in metrics:
    return {}
  per_token = float(metrics["loss"]) / math.log(2.0)
  return {"bits_per_token": per_token,
          **{f"bits_per_{unit}": per_token / float(n) for unit, n in units.items()}}


class Evaluator:
  """``evaluator(state) -> {split: {length, loss, accuracy, seq_accuracy, weight}}``.

  ``weight`` is the number of counted positions (per-position tasks) or examples (pooled);
  ``compile_time`` adds up the ahead-of-time compilations (one per batch shape).
  """

  def __init__(self, task: Any, strategy: Any, graphdef: nnx.GraphDef, interface: str,
               batch_size: int, seed: int, shard: dict[str, int]):
    self.task, self.strategy, self.interface = task, strategy, interface
    self.batch_size, self.seed, self.shard = batch_size, seed, shard
    self.step = step_lib.make_eval_step(graphdef, strategy.axis_name)
    self.compiled: dict[tuple[Any, ...], Callable[..., Any]] = {}
    self.compile_time = 0.0

  def _compiled(self, state: Any, batch: dict[str, np.ndarray]) -> Callable[..., Any]:
    key = tuple((k, v.shape, str(v.dtype)) for k, v in sorted(batch.items()))
    if key not in self.compiled:
      self.compiled[key], seconds = self.strategy.compile(
          self.step, state, self.strategy.put_batch(batch), donate_state=False)
      self.compile_time += seconds
    return self.compiled[key]

  def split(self, state: Any, split: str) -> dict[str, float]:
    ds = self.task.dataset(split, batch_size=self.batch_size, seed=self.seed, **self.shard)
    pending = []  # dispatched asynchronously, read once at the end
    for i in range(len(ds)):
      batch = select(ds[i], self.interface)
      pending.append(self._compiled(state, batch)(state, self.strategy.put_batch(batch)))
    totals: dict[str, float] = {}
    for sums in self.strategy.get(pending):
      for k, v in sums.items():
        totals[k] = totals.get(k, 0.0) + float(v)
    if not totals:
      return {}
    return {**{k: float(v) for k, v in losses.finalize(totals).items()},
            "weight": totals["weight"]}

  def __call__(self, state: Any) -> dict[str, dict[str, Any]]:
    results = {}
    baselines = getattr(self.task, "split_baselines", None) or {}
    for split, length in self.task.eval_splits.items():
      metrics = self.split(state, split)
      results[split] = {"length": int(length), **metrics, **bits_per(self.task, split, metrics)}
      if baselines.get(split):
        results[split]["baseline"] = dict(baselines[split])
      if jax.process_index() == 0:
        logging.info("eval %s (length %d): %s", split, length,
                     "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "weight"))
    return results


def sample_text(model: Any, task: Any, prompt: str, *, length: int, seed: int = 0,
                temperature: float = 1.0, top_k: int = 0) -> str:
  """``length`` tokens a trained task model (``train.model.TaskModel``) writes after
  ``prompt``, decoded by ``task.tokenizer`` (text tasks); the same ``seed``, the same text.

  Raises:
    ValueError: an empty prompt, one with characters outside the vocabulary, a model that
      cannot step, or bad sampling arguments.
  """
  from seqscale.models import decoding  # pylint: disable=g-import-not-at-top
  tokenizer = getattr(task, "tokenizer", None)
  if tokenizer is None:
    raise ValueError(f"task {task.name!r} has no tokenizer: it is not a text task")
  if not prompt:
    raise ValueError("--prompt is empty; give at least one character")
  unknown = tokenizer.unknown(prompt)
  if unknown:
    raise ValueError(f"--prompt has characters outside the {tokenizer.kind} vocabulary of "
                     f"task {task.name!r}: {''.join(unknown)!r}")
  ids_1P = np.asarray(tokenizer.encode(prompt), np.int32)[None]
  tokens = decoding.sample(model.backbone, ids_1P, length=length, seed=seed,
                           temperature=temperature, top_k=top_k, embed=model.embed,
                           head=model.head)
  return tokenizer.decode(np.asarray(tokens)[0])
