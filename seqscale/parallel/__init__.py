"""Meshes, shardings and multi-host set-up.

- ``data_parallel``: ``jax.jit`` over a ``('data',)`` mesh with ``NamedSharding`` (primary)
  and ``jax.pmap`` with ``pmean`` (kept because users know it), behind one interface.
- ``multihost``: ``jax.distributed.initialize`` from config or ``JAX_*`` environment, or
  without arguments where SLURM, Open MPI or a TPU pod's variables say several processes.
- ``mesh``: the ``('data', 'seq')`` mesh, parameter and batch shardings; Auto vs Explicit.
- ``sequence``: sequence-parallel attention: the compiler's, and ring attention.
- ``sequence_scan``: carry passing (nonlinear), layer wavefront, sharded linear scan.
"""

from seqscale.parallel.data_parallel import JitDataParallel, PmapDataParallel, make
from seqscale.parallel.multihost import Cluster, cluster_from, initialize
from seqscale.parallel import mesh, sequence, sequence_scan
from seqscale.parallel.mesh import make_mesh
from seqscale.parallel.sequence import compiler_attention, ring_attention
from seqscale.parallel.sequence_scan import carry_passing, linear_scan, wavefront

__all__ = ["Cluster", "JitDataParallel", "PmapDataParallel", "cluster_from", "initialize",
           "make", "make_mesh", "compiler_attention", "ring_attention", "carry_passing",
           "linear_scan", "wavefront", "mesh", "sequence", "sequence_scan"]
