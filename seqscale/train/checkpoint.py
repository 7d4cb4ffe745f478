"""Orbax checkpoints of the whole training state, and resume.

A checkpoint is ``nnx.state((model, optimizer))``: parameters, optimizer moments, the
optimizer's step count and the models' RNG streams (dropout keys and counters). The data
position needs no saving: task datasets are random access by step, so batch ``i`` of a
resumed run is batch ``i`` of an uninterrupted one. Orbax writes each step to a temporary
directory and renames it when complete, so a run killed mid-save leaves the previous
checkpoint intact; ``max_to_keep`` keeps the last N.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
  """``workdir/checkpoints/<step>``: save, find the latest, restore."""

  def __init__(self, workdir: str, keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             cleanup_tmp_directories=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    """Starts an (asynchronous) save of ``state`` as checkpoint ``step``."""
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def restore(self, step: int, abstract_state: Any) -> Any:
    """Checkpoint ``step`` into the shapes, dtypes and shardings of ``abstract_state``."""
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def load_arrays(workdir: str, step: int | None = None) -> tuple[int, dict[str, np.ndarray]]:
  """Reads a checkpoint as NumPy, flattened to ``{'path/to/leaf': array}`` (PRNG keys as
  their raw key data). For inspection and tests; ``step=None`` takes the latest.
  """
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True)) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise ValueError(f"no checkpoint in {directory}")
    tree = manager.restore(step, args=ocp.args.StandardRestore())
  flat = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    flat["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)] = np.asarray(leaf)
  return step, flat
