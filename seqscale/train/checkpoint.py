"""Orbax checkpoints of the whole training state and the config, and resume.

A checkpoint holds two items: ``state``, which is ``nnx.state((model, optimizer))``
(parameters, optimizer moments, the optimizer's step count and the models' RNG streams),
and ``meta`` (JSON): the config that trained it, the config changes accepted on earlier
resumes, and the metrics of the steps since the last log line. The data position needs no
saving: task datasets are random access by step, so batch ``i`` of a resumed run is batch
``i`` of an uninterrupted one.

Orbax writes each step to a temporary folder and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact; ``max_to_keep`` keeps the last N. A save
that fails (disk full) raises ``CheckpointError`` at the next step, with its temporary
folder removed; a checkpoint that cannot be read is skipped for the one before it.
"""

from __future__ import annotations

import contextlib
import glob
import logging as std_logging
import os
import shutil
import sys
import time
import traceback
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from seqscale.train import faults

ITEMS = ("state", "meta")
DAMAGED = "damaged_checkpoints"  # in the workdir: checkpoints skipped as unreadable


class CheckpointError(faults.RunError):
  """A checkpoint could not be written, or none could be read."""


def reason(error: BaseException) -> str:
  """An exception as one short line (Orbax's messages can run to thousands of characters)."""
  if isinstance(error, OSError) and error.strerror:
    text = f"{error.strerror}" + (f": {error.filename}" if error.filename else "")
  else:
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
  return text if len(text) <= 300 else text[:297] + "..."


class _NoOrbaxTracebacks(std_logging.Filter):
  """Drops the tracebacks Orbax logs for failed saves and restores (through absl, and
  through asyncio for its abandoned read tasks): ``Checkpointer`` reports each failure in
  one line instead."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if not record.exc_info or record.exc_info[2] is None:
      return True
    frames = [record.pathname] + [f.filename for f in traceback.extract_tb(record.exc_info[2])]
    return not any("/orbax/" in f for f in frames)


def _orbax_leftover(unraisable: Any) -> bool:
  # After a failed read or write, TensorStore completes the reads still in flight into
  # the event loop Orbax has already closed, and Orbax's abandoned coroutines raise as
  # they are collected; Python reports each as "unraisable", with a traceback.
  error, tb = unraisable.exc_value, unraisable.exc_traceback
  code = getattr(unraisable.object, "cr_code", None)
  return ((isinstance(error, RuntimeError) and str(error) == "Event loop is closed")
          or "/orbax/" in getattr(code, "co_filename", "")
          or (tb is not None and any("/orbax/" in f.filename for f in traceback.extract_tb(tb))))


def _quiet_orbax_tracebacks() -> None:
  """Once per process: the filters above, and ``_orbax_leftover`` errors left unprinted."""
  for name in ("absl", "asyncio"):
    logger = std_logging.getLogger(name)
    if not any(isinstance(f, _NoOrbaxTracebacks) for f in logger.filters):
      logger.addFilter(_NoOrbaxTracebacks())
  if not getattr(sys.unraisablehook, "seqscale", False):
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
      if not _orbax_leftover(unraisable):
        previous(unraisable)

    hook.seqscale = True
    sys.unraisablehook = hook


def _remove_until_gone(pattern: str, seconds: float = 5.0) -> None:
  """Removes the folders matching ``pattern``, again while writes that were in flight when
  a save failed (TensorStore's, which Orbax does not wait for) still create files there."""
  deadline, quiet = time.monotonic() + seconds, 0
  while quiet < 3 and time.monotonic() < deadline:
    found = glob.glob(pattern)
    for path in found:
      shutil.rmtree(path, ignore_errors=True)
    quiet = 0 if found else quiet + 1
    time.sleep(0.05)


class Checkpointer:
  """``workdir/checkpoints/<step>``: save, poll a save in flight, restore with fallback."""

  def __init__(self, workdir: str, keep: int):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    _quiet_orbax_tracebacks()
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=ITEMS,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             cleanup_tmp_directories=True))
    self.pending: int | None = None  # the step whose save is in flight
    self.last_good: int | None = self.manager.latest_step()
    self.failed = False

  @property
  def latest(self) -> int | None:
    """The last step saved or being saved (``close`` waits for it, raising if it fails)."""
    return self.pending if self.pending is not None else self.last_good

  def steps(self) -> list[int]:
    """The complete checkpoints, newest first."""
    return sorted(self.manager.all_steps(), reverse=True)

  def read_meta(self, step: int) -> dict[str, Any]:
    """The ``meta`` item of checkpoint ``step``: config, changes, interval metrics."""
    if os.path.isdir(os.path.join(self.directory, str(step), "default")):
      raise ValueError("written by an older seqscale, without its config")
    meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    meta = meta["meta"]
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
      raise ValueError("its meta item holds no config")
    return meta

  def restore(self, step: int, abstract_state: Any) -> Any:
    """Checkpoint ``step`` into the shapes, dtypes and shardings of ``abstract_state``."""
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"]

  def restore_latest(self, abstract_state: Any,
                     accept: Callable[[int, dict[str, Any]], bool]
                     ) -> tuple[int, Any, dict[str, Any]] | None:
    """The newest checkpoint that reads: ``(step, state, meta)``, or None if there is none.

    ``accept(step, meta)`` checks the stored config against this run's (it raises to
    refuse, and returns True when it accepts a change of shapes: a failed restore then
    is that change's fault, not damage). Each unreadable checkpoint is skipped with one
    warning line and, once an older one has been restored, moved to ``workdir/damaged_
    checkpoints`` (so that the run can save that step again).

    Raises:
      CheckpointError: there are checkpoints, and none can be read.
    """
    skipped: list[int] = []
    for step in self.steps():
      try:
        meta = self.read_meta(step)
      except Exception as e:  # pylint: disable=broad-except  # damage of any kind
        self._skip(step, e, skipped)
        continue
      changed_shapes = accept(step, meta)
      try:
        state = self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        if changed_shapes:
          raise CheckpointError(
              f"checkpoint {step} in {self.directory} does not fit the changed config "
              f"({reason(e)}); --config.resume=force cannot change the shapes of the model "
              "or the optimizer: use a new --workdir") from None
        self._skip(step, e, skipped)
        continue
      for bad in skipped:
        self._set_aside(bad)
      return step, state, meta
    if skipped:
      raise CheckpointError(
          f"no checkpoint in {self.directory} can be read (steps "
          f"{', '.join(map(str, skipped))}: see the warnings above); move that folder away "
          "to start the run afresh")
    return None

  def _skip(self, step: int, error: BaseException, skipped: list[int]) -> None:
    skipped.append(step)
    logging.warning("skipping checkpoint %d in %s: %s", step, self.directory, reason(error))

  def _set_aside(self, step: int) -> None:
    folder = os.path.join(self.workdir, DAMAGED)
    os.makedirs(folder, exist_ok=True)
    target, n = os.path.join(folder, str(step)), 1
    while os.path.exists(target):
      target, n = os.path.join(folder, f"{step}_{n}"), n + 1
    if jax.process_index() == 0:  # one host moves it; every host forgets it
      shutil.move(os.path.join(self.directory, str(step)), target)
    self.manager.reload()
    logging.warning("moved the unreadable checkpoint %d to %s", step, target)

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts an (asynchronous) save of ``state`` and ``meta`` as checkpoint ``step``,
    after waiting for (and checking) the save before it.

    Raises:
      CheckpointError: this save or the one before it failed.
    """
    self.wait()
    self.pending = step
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    except Exception as e:  # pylint: disable=broad-except
      self._failed(e)

  def poll(self) -> None:
    """Checks a save in flight without waiting for it (one process: other hosts would
    learn of a finished save at another step, so they check in ``save`` and ``wait``)."""
    if self.pending is not None and jax.process_count() == 1 and (
        not self.manager.is_saving_in_progress()):
      self.wait()

  def wait(self) -> None:
    """Waits for the save in flight; raises ``CheckpointError`` if it failed."""
    if self.pending is None:
      return
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._failed(e)
    if not os.path.isdir(os.path.join(self.directory, str(self.pending))):
      self._failed(None)
    self.last_good, self.pending = self.pending, None

  def _failed(self, error: BaseException | None) -> None:
    step, self.pending, self.failed = self.pending, None, True
    with contextlib.suppress(Exception):
      self.manager.close()
    _remove_until_gone(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*"))
    kept = (f"the last good checkpoint is step {self.last_good}" if self.last_good is not None
            else "no checkpoint was saved")
    why = reason(error) if error is not None else "Orbax did not finish it"
    raise CheckpointError(f"saving checkpoint {step} to {self.directory} failed ({why}); "
                          f"stopped ({kept})") from None

  def close(self) -> None:
    """Waits for the last save (raising if it failed) and lets go of Orbax's threads."""
    try:
      if not self.failed:
        self.wait()
    finally:
      try:
        self.manager.close()
      except Exception:  # pylint: disable=broad-except  # a failure already reported
        if not self.failed:
          raise


def load_arrays(workdir: str, step: int | None = None) -> tuple[int, dict[str, np.ndarray]]:
  """Reads a checkpoint's state as NumPy, flattened to ``{'path/to/leaf': array}`` (PRNG
  keys as their raw key data). For inspection and tests; ``step=None`` takes the latest.
  """
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  with ocp.CheckpointManager(directory, item_names=ITEMS, options=ocp.CheckpointManagerOptions(
      read_only=True)) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise ValueError(f"no checkpoint in {directory}")
    tree = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  flat = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree["state"]):
    if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    flat["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)] = np.asarray(leaf)
  return step, flat
