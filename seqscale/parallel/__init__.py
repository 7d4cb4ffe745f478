"""Meshes, shardings and multi-host set-up.

- ``data_parallel``: ``jax.jit`` over a ``('data',)`` mesh with ``NamedSharding`` (primary)
  and ``jax.pmap`` with ``pmean`` (kept because users know it), behind one interface.
- ``multihost``: ``jax.distributed.initialize`` from config or ``JAX_*`` environment.
"""

from seqscale.parallel.data_parallel import JitDataParallel, PmapDataParallel, make
from seqscale.parallel.multihost import Cluster, cluster_from, initialize

__all__ = ["Cluster", "JitDataParallel", "PmapDataParallel", "cluster_from", "initialize",
           "make"]
