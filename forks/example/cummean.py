"""An example fork: the running mean of a projected input, the seed's running sum in one line.

y_t = W (1/(t+1)) sum_{s<=t} x_s. A cumulative sum is a parallel prefix scan, so this
"recurrence" has no serial chain at all.
"""

import jax.numpy as jnp
from flax import nnx

from seqscale import models


@models.register("cummean")
class CumulativeMean(nnx.Module):
  """Causal running mean followed by a linear map: ``[B, T, I] -> [B, T, D]``."""

  interface = "sequence"

  def __init__(self, in_features: int, hidden_features: int, *, rngs: nnx.Rngs):
    self.causal = True
    self.out_features = hidden_features
    self.proj = nnx.Linear(in_features, hidden_features, rngs=rngs)

  def __call__(self, x_BTI: jnp.ndarray, *, mask: jnp.ndarray | None = None) -> jnp.ndarray:
    if mask is not None:
      x_BTI = x_BTI * mask[..., None]
    count_T1 = jnp.arange(1, x_BTI.shape[1] + 1, dtype=x_BTI.dtype)[:, None]
    return self.proj(jnp.cumsum(x_BTI, axis=1) / count_T1)
