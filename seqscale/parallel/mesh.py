"""A two-axis mesh ``('data', 'seq')`` and the shardings of parameters and batches.

``data`` splits the batch B, ``seq`` splits the length T. Parameters are replicated.

Automatic vs explicit axes (``jax.sharding.AxisType``, jax 0.10): ``jax.make_mesh`` now
defaults to ``AxisType.Explicit`` for every axis (``jax.sharding.Mesh(...)`` still defaults
to ``Auto``). The difference matters for the compiler's sequence parallelism:

- ``Auto``: shardings are hints on inputs and outputs; inside ``jax.jit`` the XLA
  partitioner (GSPMD / Shardy) propagates them and inserts whatever collectives it needs.
  Sharding q, k, v along T and calling the single-device attention works: XLA all-gathers
  k and v. This module uses ``Auto`` unless asked.
- ``Explicit``: the sharding is part of each array's type (``jax.typeof(x).sharding``) and
  is propagated by JAX at trace time, op by op (under ``with jax.set_mesh(mesh):``). An op
  whose operands' shardings conflict is an error rather than a silent all-gather:
  ``einsum('BTHK,BSHK->BHTS')`` with q sharded on T and k sharded on S would need ``seq``
  twice in the result and raises jax's ``ShardingTypeError`` (checked in
  tests/test_sequence_parallel.py) until the caller reshards k (``jax.sharding.reshard``)
  or names ``out_sharding``. Communication is visible in the program, at the cost of
  writing it.
- ``Manual``: what ``jax.shard_map`` makes its axes inside its body: each device sees its
  own block and the program communicates with ``ppermute``/``all_gather``/``psum`` itself
  (ring attention, the sharded scans).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "seq")


def make_mesh(data: int = 1, seq: int = 0, *, explicit: bool = False,
              devices: Sequence[Any] | None = None) -> Mesh:
  """A ``('data', 'seq')`` mesh of ``data * seq`` devices.

  Args:
    data: devices along the batch axis (>= 1).
    seq: devices along the length axis; 0 means all devices left (``len(devices) // data``).
    explicit: ``AxisType.Explicit`` axes instead of ``Auto`` (see the module docstring).
    devices: devices to use (default ``jax.devices()``).
  """
  devices = list(jax.devices() if devices is None else devices)
  if isinstance(data, bool) or not isinstance(data, int) or data < 1:
    raise ValueError(f"data={data!r}; must be an int >= 1")
  if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
    raise ValueError(f"seq={seq!r}; must be an int >= 0 (0: all devices left)")
  if seq == 0:
    seq = max(1, len(devices) // data)
  if data * seq > len(devices):
    raise ValueError(f"data={data}, seq={seq} needs {data * seq} devices; "
                     f"{len(devices)} available")
  kind = AxisType.Explicit if explicit else AxisType.Auto
  return jax.make_mesh((data, seq), AXES, axis_types=(kind, kind),
                       devices=devices[:data * seq])


def mesh_from_config(config: Any) -> Mesh:
  """``make_mesh`` from a config with fields ``data``, ``seq`` (and optional ``explicit``)."""
  return make_mesh(int(config.data), int(config.seq),
                   explicit=bool(getattr(config, "explicit", False)))


def param_sharding(mesh: Mesh) -> NamedSharding:
  """Parameters: a full copy on every device."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 3, *, shard_seq: bool = True) -> NamedSharding:
  """A [B, T, ...] batch: B over ``data``, T over ``seq`` (or replicated over ``seq``)."""
  if ndim < 1:
    raise ValueError(f"ndim={ndim}; a batch has at least the axis B")
  spec = ("data", "seq" if shard_seq and ndim >= 2 else None) + (None,) * (ndim - 2)
  return NamedSharding(mesh, P(*spec[:ndim]))


def shard_batch(mesh: Mesh, tree: Any, *, shard_seq: bool = True) -> Any:
  """Places every [B, T, ...] leaf of ``tree`` with ``batch_sharding``."""
  return jax.tree.map(
      lambda x: jax.device_put(x, batch_sharding(mesh, x.ndim, shard_seq=shard_seq)), tree)


def replicate(mesh: Mesh, tree: Any) -> Any:
  """Places every leaf of ``tree`` on every device of ``mesh``."""
  return jax.device_put(tree, param_sharding(mesh))
