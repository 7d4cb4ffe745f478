"""Where metrics go: ``metrics.jsonl``, TensorBoard event files and a progress line.

Only process 0 writes; other processes get a writer that does nothing.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

from absl import logging

from seqscale import outputs


class MetricWriter:
  """Appends one JSON object per logged step to ``workdir/metrics.jsonl`` (and
  ``eval.jsonl`` for evaluations) and writes the same scalars to TensorBoard
  (``workdir/tensorboard``)."""

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int = 0):
    self.enabled = enabled
    if not enabled:
      return
    self.metrics_path = os.path.join(workdir, "metrics.jsonl")
    self.eval_path = os.path.join(workdir, "eval.jsonl")
    # A resumed run repeats the steps after its last checkpoint: drop their old lines.
    for path in (self.metrics_path, self.eval_path):
      _truncate_after(path, resume_step)
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    """One training log line: ``step``, ``loss``, ``steps_per_s``, ``tokens_per_s``, ..."""
    if not self.enabled:
      return
    record = {"step": step, **{k: outputs.json_safe(v) for k, v in scalars.items()}}
    _append(self.metrics_path, record)
    for key, value in scalars.items():
      self.tb.add_scalar(f"train/{key}", float(value), step)

  def write_eval(self, step: int, results: Mapping[str, Mapping[str, Any]]) -> None:
    """``{split: {metric: value}}`` at ``step``."""
    if not self.enabled:
      return
    _append(self.eval_path, {"step": step, "eval": {
        split: {k: outputs.json_safe(v) for k, v in m.items()} for split, m in results.items()}})
    for split, metrics in results.items():
      for key, value in metrics.items():
        if isinstance(value, (int, float)):
          self.tb.add_scalar(f"eval_{split}/{key}", float(value), step)
    self.tb.flush()

  def flush(self) -> None:
    if self.enabled:
      self.tb.flush()

  def close(self) -> None:
    if self.enabled:
      self.tb.close()


def _append(path: str, record: dict[str, Any]) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def _truncate_after(path: str, step: int) -> None:
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [l for l in f if l.strip()]
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line)
    except (ValueError, KeyError):
      pass  # a line cut short by a kill
  with open(path, "w") as f:
    f.writelines(kept)


class Progress:
  """The live line: step, loss, steps/s, tokens/s (input tokens) and time left."""

  def __init__(self, num_steps: int, enabled: bool = True):
    self.num_steps, self.enabled = num_steps, enabled
    self.start = time.perf_counter()

  def report(self, step: int, loss: float, steps_per_s: float, tokens_per_s: float) -> None:
    if not self.enabled:
      return
    left = (self.num_steps - step) / steps_per_s if steps_per_s > 0 else float("nan")
    logging.info("step %d/%d  loss %.4f  %.1f steps/s  %s tokens/s  %s left", step,
                 self.num_steps, loss, steps_per_s, f"{tokens_per_s:,.0f}", _duration(left))


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
