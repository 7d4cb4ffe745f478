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

NOT_SCALARS = ("length", "weight")  # eval fields that describe a split, not a result


class _Events:
  """A TensorBoard event file written in the calling thread, each ``write`` flushed.

  (tensorboardX's ``SummaryWriter`` hands events to a thread through a queue, so its
  ``flush()`` does not mean they are in the file: a kill lost them.) The file starts with a
  ``SessionLog.START`` at ``purge_step``, which tells TensorBoard to drop the events of
  earlier files at that step and after (the steps a resumed run repeats).
  """

  def __init__(self, folder: str, purge_step: int, suffix: str):
    from tensorboardX import event_file_writer  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
    os.makedirs(folder, exist_ok=True)
    self.pb = event_pb2
    self.file = event_file_writer.EventsWriter(os.path.join(folder, "events"), suffix)
    self.file.write_event(event_pb2.Event(
        wall_time=time.time(), step=purge_step,
        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
    self.file.flush()

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    from tensorboardX import summary  # pylint: disable=g-import-not-at-top
    now = time.time()
    for tag, value in scalars.items():
      self.file.write_event(self.pb.Event(wall_time=now, step=step,
                                          summary=summary.scalar(tag, value)))
    self.file.flush()

  def close(self) -> None:
    self.file.close()


class MetricWriter:
  """Appends one JSON object per logged step to ``workdir/metrics.jsonl`` (and
  ``eval.jsonl`` for evaluations) and writes the same scalars to TensorBoard
  (``workdir/tensorboard``), each line on disk before the next step."""

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int = 0):
    self.enabled = enabled
    if not enabled:
      return
    self.metrics_path = os.path.join(workdir, "metrics.jsonl")
    self.eval_path = os.path.join(workdir, "eval.jsonl")
    # A resumed run repeats the steps after its last checkpoint: drop their old lines (and
    # TensorBoard their old events). A file of its own per start (the suffix): two starts
    # within a second would otherwise share a name.
    for path in (self.metrics_path, self.eval_path):
      _truncate_after(path, resume_step)
    self.tb = _Events(os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1,
                      suffix=f".{resume_step:09d}.{os.getpid()}")

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    """One training log line: ``step``, ``loss``, ``steps_per_s``, ``tokens_per_s``, ..."""
    if not self.enabled:
      return
    record = {"step": step, **{k: outputs.json_safe(v) for k, v in scalars.items()}}
    _append(self.metrics_path, record)
    self.tb.write(step, {f"train/{k}": float(v) for k, v in scalars.items()})

  def write_eval(self, step: int, results: Mapping[str, Mapping[str, Any]]) -> None:
    """``{split: {metric: value}}`` at ``step``; a split's ``length`` and ``weight`` go to
    ``eval.jsonl`` only."""
    if not self.enabled:
      return
    _append(self.eval_path, {"step": step, "eval": {
        split: {k: outputs.json_safe(v) for k, v in m.items()} for split, m in results.items()}})
    self.tb.write(step, {f"eval_{split}/{k}": float(v) for split, m in results.items()
                         for k, v in m.items()
                         if isinstance(v, (int, float)) and k not in NOT_SCALARS})

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
        kept.append(line if line.endswith("\n") else line + "\n")
    except (ValueError, KeyError):
      pass  # a line cut short by a kill
  if kept != lines:
    outputs.write_text(path, "".join(kept))


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
