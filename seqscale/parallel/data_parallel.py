"""Data parallelism, two ways: ``jax.jit`` over a mesh (primary) and ``jax.pmap``.

Both hold a full copy of the parameters on every device and split the batch:

- ``JitDataParallel``: one program for the whole mesh. The state is placed with a
  replicated ``NamedSharding(mesh, P())``, the batch with ``NamedSharding(mesh, P('data'))``;
  the compiler inserts the gradient all-reduce. The step function is the single-device one.
- ``PmapDataParallel``: one program per device. The state carries a leading device axis
  ``[N, ...]``; the step function itself averages gradients with ``jax.lax.pmean`` over the
  named axis ``'batch'`` (see ``seqscale.train.step``).

Both present the same small interface to the trainer, so the loop does not branch on the
strategy. Across hosts, each process passes its own rows of the global batch.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

PyTree = Any


class JitDataParallel:
  """``jax.jit`` with a one-axis mesh ``('data',)``: batch sharded, state replicated."""

  name = "jit"
  axis_name = None  # the step needs no collective of its own

  def __init__(self, num_devices: int = 0):
    devices = jax.devices()
    if num_devices:
      if jax.process_count() > 1 and num_devices != len(devices):
        raise ValueError(f"config.parallel.num_devices={num_devices}; with several processes "
                         f"use all {len(devices)} devices (0)")
      if num_devices > len(devices):
        raise ValueError(f"config.parallel.num_devices={num_devices}; this machine has "
                         f"{len(devices)} {devices[0].platform} devices")
      devices = devices[:num_devices]
    # Auto axes: the compiler propagates shardings (Explicit sharding-in-types is not needed
    # for plain data parallelism).
    self.mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,),
                              devices=devices)
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P("data"))
    self.num_devices = len(devices)
    self.checkpoint_sharding = self.replicated

  def init(self, fn: Callable[[], PyTree]) -> PyTree:
    """Runs ``fn`` (a pure function making the state) straight into the replicated layout."""
    return jax.jit(fn, out_shardings=self.replicated)()

  def from_checkpoint(self, state: PyTree) -> PyTree:
    return state  # restored with ``checkpoint_sharding`` already

  def to_checkpoint(self, state: PyTree) -> PyTree:
    return state

  def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows ``[B / num_processes, ...]`` -> a global array ``[B, ...]``."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, v)
            for k, v in local_batch.items()}

  def compile(self, fn: Callable[..., Any], state: PyTree, batch: PyTree, *,
              donate_state: bool) -> tuple[Callable[..., Any], float]:
    """Ahead-of-time ``jit(fn).lower(state, batch).compile()``; returns it and its seconds."""
    jitted = jax.jit(fn, in_shardings=(self.replicated, self.batch_sharding),
                     out_shardings=self.replicated,
                     donate_argnums=(0,) if donate_state else ())
    start = time.perf_counter()
    compiled = jitted.lower(state, batch).compile()
    return compiled, time.perf_counter() - start

  def get(self, tree: PyTree) -> PyTree:
    """Replicated device values -> NumPy on the host."""
    return jax.tree.map(np.asarray, jax.device_get(tree))


class PmapDataParallel:
  """``jax.pmap`` over this process's devices; gradients averaged with ``pmean('batch')``.

  Randomness: every device holds the same (replicated) RNG state; the step folds the
  device's index (``jax.lax.axis_index``) into its keys for the forward pass, so each
  device draws its own dropout masks and MoE noise, and puts the replicated keys back
  (``seqscale.train.step.fold_device_index``). Without randomness the losses equal one
  device's; with it, they are another draw than ``jit``'s (which draws for the whole batch).
  """

  name = "pmap"
  axis_name = "batch"

  def __init__(self, num_devices: int = 0):
    if num_devices:
      raise ValueError(f"config.parallel.num_devices={num_devices}; pmap uses every local "
                       "device (set 0, or use strategy 'jit' for a subset)")
    self.devices = jax.local_devices()
    self.num_local = len(self.devices)
    self.num_devices = jax.device_count()
    self.checkpoint_sharding = jax.sharding.SingleDeviceSharding(self.devices[0])

  def _replicate(self, state: PyTree) -> PyTree:
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (self.num_local,) + x.shape), state)
    return jax.pmap(lambda x: x)(stacked)

  def init(self, fn: Callable[[], PyTree]) -> PyTree:
    return self._replicate(jax.jit(fn)())

  def from_checkpoint(self, state: PyTree) -> PyTree:
    return self._replicate(state)

  def to_checkpoint(self, state: PyTree) -> PyTree:
    return jax.tree.map(lambda x: x[0], state)

  def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``[B_local, ...]`` -> ``[N_local, B_local / N_local, ...]``, one row per device."""
    return {k: v.reshape((self.num_local, -1) + v.shape[1:]) for k, v in local_batch.items()}

  def compile(self, fn: Callable[..., Any], state: PyTree, batch: PyTree, *,
              donate_state: bool) -> tuple[Callable[..., Any], float]:
    mapped = jax.pmap(fn, axis_name=self.axis_name,
                      donate_argnums=(0,) if donate_state else ())
    start = time.perf_counter()
    compiled = mapped.lower(state, batch).compile()
    return compiled, time.perf_counter() - start

  def get(self, tree: PyTree) -> PyTree:
    """Per-device copies (identical after the collectives) -> the first one, in NumPy."""
    return jax.tree.map(lambda x: np.asarray(x[0]), jax.device_get(tree))


def make(strategy: str, num_devices: int = 0) -> JitDataParallel | PmapDataParallel:
  """The data-parallel strategy named by ``config.parallel.strategy``."""
  kinds = {"jit": JitDataParallel, "pmap": PmapDataParallel}
  if strategy not in kinds:
    raise ValueError(f"parallel strategy {strategy!r}; allowed: {', '.join(kinds)}")
  return kinds[strategy](num_devices)
