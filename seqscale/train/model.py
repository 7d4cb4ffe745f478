"""A registry model plus the task's input and output layers.

The backbone (any registry model) maps ``[B, T, I] -> [B, T, D]``; the task decides what
goes in (token embedding or a linear map of features, into the model's ``in_features``)
and what comes out (per-position or pooled logits / regression values). Sequence-to-
sequence backbones read the task's ``src`` / ``tgt_in`` fields instead of ``inputs``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from seqscale import models

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """What the trainer needs to know about a task (the Task interface in CONTRACT.md)."""

  name: str
  input_type: str  # "tokens" | "features"
  vocab_size: int | None
  in_features: int | None
  output: str  # "per_position" | "pooled"
  target_type: str  # "classes" | "regression"
  num_classes: int
  requires_causal: bool
  has_seq2seq: bool  # batches carry src / tgt_in / tgt_out / tgt_weights
  has_qa: bool = False  # batches carry story [B, M, J] / query [B, J]

  @classmethod
  def of(cls, task: Any, has_seq2seq: bool, has_qa: bool = False) -> "TaskSpec":
    spec = cls(name=task.name, input_type=task.input_type, vocab_size=task.vocab_size,
               in_features=task.in_features, output=task.output,
               target_type=task.target_type, num_classes=int(task.num_classes),
               requires_causal=bool(task.requires_causal), has_seq2seq=has_seq2seq,
               has_qa=has_qa)
    if spec.input_type not in ("tokens", "features"):
      raise ValueError(f"task {spec.name!r}: input_type={spec.input_type!r}; "
                       "allowed: tokens, features")
    if spec.output not in ("per_position", "pooled"):
      raise ValueError(f"task {spec.name!r}: output={spec.output!r}; "
                       "allowed: per_position, pooled")
    if spec.target_type not in ("classes", "regression"):
      raise ValueError(f"task {spec.name!r}: target_type={spec.target_type!r}; "
                       "allowed: classes, regression")
    return spec


def target_fields(spec: TaskSpec, interface: str) -> tuple[str, str]:
  """The batch keys of (targets, weights) for this model interface."""
  return ("tgt_out", "tgt_weights") if interface == "seq2seq" else ("targets", "weights")


class TaskModel(nnx.Module):
  """``backbone`` between an input layer and an output head chosen by the task."""

  def __init__(self, backbone: nnx.Module, spec: TaskSpec, in_features: int, *,
               pooling: str = "mean", rngs: nnx.Rngs):
    if pooling not in ("mean", "last"):
      raise ValueError(f"pooling={pooling!r}; allowed: mean, last")
    self.backbone = backbone
    self.interface = backbone.interface
    self.output = spec.output
    self.pooling = pooling
    self.regression = spec.target_type == "regression"
    if self.interface in ("lm", "qa"):
      self.embed = None  # the model embeds its own tokens
    elif spec.input_type == "tokens":
      self.embed = nnx.Embed(spec.vocab_size, in_features, rngs=rngs)
    else:
      self.embed = nnx.Linear(spec.in_features, in_features, rngs=rngs)
    width = backbone.out_features
    direct = width == spec.num_classes and (
        (self.interface == "lm" and spec.output == "per_position") or self.interface == "qa")
    self.head = None if direct else nnx.Linear(width, spec.num_classes, rngs=rngs)

  def __call__(self, batch: dict[str, Array]) -> Array:
    """A batch dict -> logits ``[B, T, C]`` / ``[B, C]``, or values ``[B, T]`` / ``[B]``."""
    if self.interface == "qa":  # one answer per story: already pooled
      y_BD = self.backbone(batch["story"], batch["query"]).astype(jnp.float32)
      out = y_BD if self.head is None else self.head(y_BD)
      return out[..., 0] if self.regression else out
    if self.interface == "seq2seq":
      y_BTD = self.backbone(self.embed(batch["src"]), self.embed(batch["tgt_in"]),
                            src_mask=batch.get("src_mask"), tgt_mask=batch.get("tgt_mask"))
      mask_BT = batch.get("tgt_mask")
    elif self.interface == "lm":
      y_BTD = self.backbone(batch["inputs"])
      mask_BT = batch["mask"]
    else:
      mask_BT = batch["mask"]
      y_BTD = self.backbone(self.embed(batch["inputs"]), mask=mask_BT)
    y = y_BTD.astype(jnp.float32)
    if self.output == "pooled":
      y = pool(y, mask_BT, self.pooling)
    out = y if self.head is None else self.head(y)
    return out[..., 0] if self.regression else out


def pool(y_BTD: Array, mask_BT: Array | None, how: str) -> Array:
  """``[B, T, D] -> [B, D]``: the mean over valid positions, or the last valid position
  (what a causal model has seen everything by; padding is on the right)."""
  m_BT = jnp.ones(y_BTD.shape[:2], bool) if mask_BT is None else mask_BT.astype(bool)
  if how == "last":
    last_B = jnp.maximum(m_BT.sum(1) - 1, 0)
    return jnp.take_along_axis(y_BTD, last_B[:, None, None], axis=1)[:, 0]
  m_BT1 = m_BT.astype(y_BTD.dtype)[..., None]
  return (y_BTD * m_BT1).sum(1) / jnp.maximum(m_BT1.sum(1), 1.0)


def build(model_name: str, hparams: dict[str, Any], spec: TaskSpec, *,
          rngs: nnx.Rngs, pooling: str = "mean") -> TaskModel:
  """``models.create(model_name, **hparams)`` wrapped with the task's layers.

  ``hparams.in_features`` (default: ``hidden_features``) is the width the task's embedding
  or feature projection produces; an ``lm`` model gets ``vocab_size`` from the task.
  ``pooling`` (pooled tasks): ``"mean"`` over valid positions or the ``"last"`` one.

  Raises:
    ValueError: for an unknown model, bad hyperparameters, or a model/task mismatch (a
      non-causal model on a task that requires causality, an ``lm`` model on features, a
      seq2seq model on a task without source/target fields).
  """
  hparams = dict(hparams)
  interface = getattr(models.lookup(model_name), "interface", None)
  if interface not in ("sequence", "seq2seq", "lm", "qa"):
    raise ValueError(f"model {model_name!r} has interface={interface!r}; allowed: sequence, "
                     "seq2seq, lm, qa (see docs/CONTRACT.md)")
  if interface == "qa" and not (spec.has_qa and spec.output == "pooled"):
    raise ValueError(f"model {model_name!r} answers questions about stories (story, query) "
                     f"but task {spec.name!r} gives no story/query fields with one answer")
  if interface in ("lm", "qa"):
    if spec.input_type != "tokens":
      raise ValueError(f"model {model_name!r} reads tokens but task {spec.name!r} has "
                       f"{spec.input_type} inputs")
    hparams.setdefault("vocab_size", spec.vocab_size)
    in_features = 0
  else:
    if "hidden_features" not in hparams:
      raise ValueError(f"config.model.hparams.hidden_features is missing for model "
                       f"{model_name!r}")
    hparams.setdefault("in_features", hparams["hidden_features"])
    in_features = hparams["in_features"]
  if interface == "seq2seq" and not spec.has_seq2seq:
    raise ValueError(f"model {model_name!r} is sequence-to-sequence but task {spec.name!r} "
                     "gives no src/tgt_in/tgt_out fields; use a 'sequence' or 'lm' model")
  if interface == "seq2seq" and spec.input_type != "tokens":
    raise ValueError(f"model {model_name!r}: seq2seq training needs token inputs; task "
                     f"{spec.name!r} has {spec.input_type}")
  backbone = models.create(model_name, rngs=rngs, **hparams)
  if spec.requires_causal and not backbone.causal:
    raise ValueError(
        f"model {model_name!r} is not causal (causal=False) but task {spec.name!r} requires "
        "a causal model: its inputs contain the answers later on, so a model that looks ahead "
        "would read them; use a causal model (e.g. set config.model.hparams.causal=True)")
  return TaskModel(backbone, spec, in_features, pooling=pooling, rngs=rngs)
