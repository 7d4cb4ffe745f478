"""What every run writes: the workdir, JSON files, the run context, plots.

The trainer and every study write through these functions, so that a workdir is checked
the same way everywhere, no JSON file is ever half-written, NaN and Inf are spelled the same
way in every ``results.json``, and every result names the machine that made it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np


def prepare_workdir(workdir: str | None, flag: str = "--workdir") -> str:
  """Returns ``workdir`` as an absolute path, created and checked to be writable.

  Raises ValueError (one line naming ``flag`` and the value) when it is empty, a file, or
  cannot be created or written: callers check it before any measuring starts.
  """
  if not workdir:
    raise ValueError(f"{flag} is required (a directory, existing or new)")
  path = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"{flag}={workdir}: is a file; pass a directory (existing or new)")
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path, prefix=".write_check_"):
      pass
  except OSError as e:
    raise ValueError(f"{flag}={workdir}: cannot be created or written "
                     f"({e.strerror or type(e).__name__})") from None
  return path


def json_safe(value: Any, *, nonfinite_as_none: bool = False) -> Any:
  """``value`` as plain JSON: NumPy/JAX scalars and arrays as numbers and lists, tuples as
  lists, dict keys as strings, and NaN/Inf as the strings "nan", "inf" and "-inf" (JSON has
  no such numbers; a string keeps what happened visible), or as None with
  ``nonfinite_as_none`` (for rows whose numbers are aggregated later)."""
  again = lambda v: json_safe(v, nonfinite_as_none=nonfinite_as_none)
  if isinstance(value, Mapping):
    return {str(k): again(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [again(v) for v in value]
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    value = float(value)
    if math.isfinite(value):
      return value
    return None if nonfinite_as_none else str(value)
  if isinstance(value, np.ndarray) or type(value).__module__.startswith("jax"):
    try:
      return again(np.asarray(value).tolist())
    except (TypeError, ValueError):
      return str(value)
  if value is None or isinstance(value, str):
    return value
  return str(value)


def write_text(path: str, text: str) -> str:
  """Writes ``text`` to ``path`` atomically: a temporary file beside it, then a rename, so
  a reader (or a kill) never sees half a file. Returns ``path``."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_" + os.path.basename(path))
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
  return path


def write_json(path: str, payload: Any) -> str:
  """Writes ``json_safe(payload)`` to ``path`` atomically, indented. Returns ``path``."""
  return write_text(path, json.dumps(json_safe(payload), indent=1) + "\n")


def read_json(path: str) -> Any:
  """The JSON in ``path``, or None where it is missing or unreadable."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def read_cell(path: str, key: Mapping[str, Any]) -> dict[str, Any] | None:
  """A study's finished cell (a JSON row whose ``settings`` holds the training ``key`` it was
  trained with), or None where ``path`` is absent. ValueError, naming what differs, where
  the cell was trained with another key: a resumed study never mixes settings."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    row = json.load(f)
  if row.get("settings") != key:
    theirs = row.get("settings") or {}
    diff = {k: (theirs.get(k), v) for k, v in key.items() if theirs.get(k) != v}
    raise ValueError(f"{path} was trained with other settings ({diff}, as (cell, now)); use "
                     "another --workdir or delete that cell to retrain it")
  return row


def load_average() -> list[float] | None:
  """The 1, 5 and 15 minute load averages, or None where the OS has none. Timings on a
  shared machine move with its load, so they are recorded together."""
  try:
    return [round(v, 2) for v in os.getloadavg()]
  except OSError:
    return None


def git_commit(start: str | None = None) -> str | None:
  """The commit checked out in the repository holding ``start`` (read from ``.git``)."""
  path = os.path.abspath(start or os.path.dirname(__file__))
  while not os.path.isdir(os.path.join(path, ".git")):
    parent = os.path.dirname(path)
    if parent == path:
      return None
    path = parent
  git = os.path.join(path, ".git")
  try:
    with open(os.path.join(git, "HEAD")) as f:
      head = f.read().strip()
    if not head.startswith("ref: "):
      return head
    ref = head[5:]
    if os.path.exists(os.path.join(git, ref)):
      with open(os.path.join(git, ref)) as f:
        return f.read().strip()
    with open(os.path.join(git, "packed-refs")) as f:
      for line in f:
        parts = line.split()
        if len(parts) == 2 and parts[1] == ref:
          return parts[0]
  except OSError:
    pass
  return None


def cpu_info() -> dict[str, Any]:
  """The CPU model, its vector extensions of note, and the core count, so results from two
  machines are never mixed (a speed ratio from one CPU does not hold on another)."""
  out: dict[str, Any] = {"cpu": platform.processor() or platform.machine(),
                         "cpu_count": os.cpu_count()}
  try:
    with open("/proc/cpuinfo") as f:
      text = f.read()
  except OSError:
    return out
  for line in text.splitlines():
    key, _, value = line.partition(":")
    if key.strip() in ("model name", "Model", "cpu model") and value.strip():
      out["cpu"] = value.strip()
      break
  flags = next((l.split(":", 1)[1].split() for l in text.splitlines()
                if l.split(":", 1)[0].strip() in ("flags", "Features")), [])
  notable = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "fma", "neon", "asimd",
             "sve")
  out["cpu_flags"] = [f for f in notable if f in flags]
  return out


def run_context(**extra: Any) -> dict[str, Any]:
  """Versions, backend, devices, CPU, host and git commit, plus ``extra`` (seed, config...)."""
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  return {
      "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
      "orbax_checkpoint": ocp.__version__, "python": platform.python_version(),
      "backend": jax.default_backend(), "device_kind": devices[0].device_kind,
      "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
      "process_count": jax.process_count(), **cpu_info(), "git_commit": git_commit(),
      "hostname": platform.node(), "load_average": load_average(), **extra,
  }


def pyplot() -> Any:
  """``matplotlib.pyplot`` on the Agg backend (files only; no screen is needed)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


@contextlib.contextmanager
def figure(path: str, *args: Any, dpi: int = 100, **kwargs: Any) -> Iterator[tuple[Any, Any]]:
  """``with figure(path, nrows, ncols, figsize=...) as (fig, axes):`` draws, then saves
  ``path`` (tight layout) and closes the figure, also when drawing fails."""
  plt = pyplot()
  fig, axes = plt.subplots(*args, **kwargs)
  try:
    yield fig, axes
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
  finally:
    plt.close(fig)
