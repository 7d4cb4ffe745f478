"""What stops a training run cleanly: one-line errors, the workdir lock, SIGTERM and SIGINT.

The launcher maps a ``RunError`` to its one-line message and ``exit_code``; nothing here
prints a traceback. The lock keeps two runs out of one workdir; ``catch_signals`` turns a
SIGTERM (preemption) or SIGINT (Ctrl-C) into a flag the training loop reads between steps,
so that it can save the step it finished before it exits.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import signal
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

from absl import logging

from seqscale import outputs

LOCK_FILE = "run.lock"


class RunError(RuntimeError):
  """A run that stops with one line (the message) and ``exit_code``, no traceback."""

  exit_code = 1


class Interrupted(RunError):
  """SIGTERM or SIGINT arrived; the finished steps were saved. Exit code 128 + signal."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum
    self.exit_code = 128 + signum


def check_writable(path: str, what: str, *, may_be_read_only: bool = False) -> str:
  """``path`` as an absolute path, created and checked to be writable (``outputs``' check).

  Raises ValueError (one line naming ``what`` and the path) when it cannot be written;
  with ``may_be_read_only`` an existing folder passes (data prepared elsewhere, read only).
  """
  try:
    return outputs.prepare_workdir(path, flag=what)
  except ValueError:
    if may_be_read_only and os.path.isdir(path):
      return os.path.abspath(path)
    raise


def _start_ticks(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (Linux), telling a live process
  from a later one that reuses its pid; None where /proc has no such file."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(owner: dict[str, Any]) -> bool:
  try:
    os.kill(int(owner["pid"]), 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # someone else's live process
  ticks = owner.get("start_ticks")
  return ticks is None or _start_ticks(int(owner["pid"])) in (None, ticks)


def _read(path: str) -> dict[str, Any] | None:
  owner = outputs.read_json(path)
  return owner if isinstance(owner, dict) and "pid" in owner else None


def _link(tmp: str, path: str, content: dict[str, Any]) -> None:
  try:
    os.link(tmp, path)
  except FileExistsError:
    raise
  except OSError:  # no hard links on this file system: create exclusively, then write
    with os.fdopen(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY), "w") as f:
      json.dump(content, f)


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[str]:
  """Holds ``workdir/run.lock`` (host, pid, start time) while the body runs.

  The file is made complete beside the lock and linked into place, so the lock is taken
  exclusively and is never seen half-written. A lock held by a live process raises a
  ``RunError`` naming its pid and host; a stale one (its process gone, on this host) is
  taken over with a warning.
  """
  path = os.path.join(workdir, LOCK_FILE)
  me = {"host": platform.node(), "pid": os.getpid(), "start_ticks": _start_ticks(os.getpid()),
        "start": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
  fd, tmp = tempfile.mkstemp(dir=workdir, prefix=".tmp_" + LOCK_FILE)
  with os.fdopen(fd, "w") as f:
    json.dump(me, f)
  try:
    for _ in range(3):  # another run may take or free the lock between the tries
      try:
        _link(tmp, path, me)
        break
      except FileExistsError:
        pass
      owner = _read(path)
      if owner is None:
        continue  # freed just now
      where = f"pid {owner['pid']} on host {owner.get('host')} (since {owner.get('start')})"
      if owner.get("host") != me["host"] or _alive(owner):
        raise RunError(f"workdir {workdir} is in use by {where}; wait for it to end, or "
                       f"delete {path} if that run is gone")
      stale = f"{path}.stale.{os.getpid()}"
      os.replace(path, stale)  # only one run moves this very file
      if _read(stale) != owner:  # moved a lock another run took meanwhile: give it back
        os.replace(stale, path)
        continue
      os.remove(stale)
      logging.warning("taking over the lock of %s, which is no longer running", where)
    else:
      raise RunError(f"workdir {workdir}: could not take {path}; another run is starting")
  finally:
    os.remove(tmp)
  try:
    yield path
  finally:
    if _read(path) == me:
      os.remove(path)


class Signals:
  """The SIGTERM or SIGINT that arrived during ``catch_signals``, if any."""

  def __init__(self):
    self.signum: int | None = None

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else ""


@contextlib.contextmanager
def catch_signals() -> Iterator[Signals]:
  """Records SIGTERM and SIGINT instead of dying on them (main thread only; elsewhere
  Python cannot set handlers and the default behaviour stays)."""
  caught = Signals()
  if threading.current_thread() is not threading.main_thread():
    yield caught
    return

  def handler(signum, frame):
    del frame
    if caught.signum is None:
      caught.signum = signum
      logging.warning("%s: finishing the current step, then saving it",
                      signal.Signals(signum).name)

  old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield caught
  finally:
    for s, h in old.items():
      signal.signal(s, h)
