"""The run's context for ``results.json``: versions, backend, devices, git commit."""

from __future__ import annotations

import os
import platform
from typing import Any

import jax


def git_commit(start: str | None = None) -> str | None:
  """The commit checked out in the repository holding ``start`` (read from ``.git``)."""
  path = os.path.abspath(start or os.path.dirname(__file__))
  while True:
    git = os.path.join(path, ".git")
    if os.path.isdir(git):
      break
    parent = os.path.dirname(path)
    if parent == path:
      return None
    path = parent
  try:
    with open(os.path.join(git, "HEAD")) as f:
      head = f.read().strip()
    if not head.startswith("ref: "):
      return head
    ref = head[5:]
    ref_path = os.path.join(git, ref)
    if os.path.exists(ref_path):
      with open(ref_path) as f:
        return f.read().strip()
    packed = os.path.join(git, "packed-refs")
    if os.path.exists(packed):
      with open(packed) as f:
        for line in f:
          parts = line.split()
          if len(parts) == 2 and parts[1] == ref:
            return parts[0]
  except OSError:
    pass
  return None


def run_context(**extra: Any) -> dict[str, Any]:
  """Versions, backend and devices, plus ``extra`` (seed, dtype, config, ...)."""
  import flax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  return {
      "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
      "orbax_checkpoint": ocp.__version__, "python": platform.python_version(),
      "backend": jax.default_backend(), "device_kind": devices[0].device_kind,
      "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
      "process_count": jax.process_count(), "git_commit": git_commit(),
      "hostname": platform.node(), **extra,
  }
