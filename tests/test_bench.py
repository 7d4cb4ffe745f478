"""The bench's JAX candidates run for models that draw randomness in their forward pass."""

import dataclasses

import jax
import numpy as np
import pytest

from seqscale.studies import bench
from seqscale.studies import bench_peers


@pytest.mark.parametrize("name", ["moe"])
def test_fwd_bwd_of_a_model_with_gate_noise_runs_and_is_finite(name):
  """The MoE's noisy gate draws a key inside the bench's gradient; this raised flax's
  TraceContextError ("Cannot mutate RngCount") before the bench copied the module's
  non-parameter state inside the gradient's trace."""
  s = dataclasses.replace(bench.QUICK, width=16, head_dim=8, tokens=16)
  cands, _ = bench_peers.layer_candidates(name, s, 8, 2, "float32", "fwd_bwd",
                                          np.random.default_rng(0))
  (c,) = [c for c in cands if c.impl == "seqscale"]
  value, grads = jax.jit(c.fn)(*c.args)
  assert np.isfinite(float(value))
  leaves = jax.tree.leaves(grads)
  assert leaves and all(np.isfinite(np.asarray(g)).all() for g in leaves)
  assert any(np.abs(np.asarray(g)).max() > 0 for g in leaves)
