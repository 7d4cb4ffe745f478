"""The model registry: a name (or a dotted path ``package.module:Class``) to a constructor.

Family modules register their classes with ``@register("name")``. A research fork adds a
model without editing core files, either by calling ``register`` from its own module or by
passing ``"my_fork.models:MyModel"`` wherever a model name is accepted. The lookup, the
dotted paths and the errors are ``seqscale.registry``'s, shared with the task registry.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from seqscale.registry import Registry

MODELS: Registry[nnx.Module] = Registry("model", implicit=("rngs",))

register = MODELS.register
names = MODELS.names
lookup = MODELS.lookup


def create(name: str, *, rngs: nnx.Rngs, **hparams: Any) -> nnx.Module:
  """Builds a model by name: ``create('lstm', in_features=8, hidden_features=16, rngs=r)``.

  Raises:
    ValueError: for an unknown name, or a keyword the model does not take (the message
      lists the keywords it does take).
  """
  return MODELS.build(name, rngs=rngs, **hparams)


class AuxLoss(nnx.Variable):
  """An auxiliary loss a model records in its forward pass (e.g. MoE load balancing).

  Part of the model interface: the trainer adds :func:`auxiliary_loss` to the task loss.
  """


def auxiliary_loss(model: nnx.Module) -> jax.Array:
  """The sum of every ``AuxLoss`` in ``model`` as of its last call (0.0 if it has none)."""
  leaves = jax.tree.leaves(nnx.state(model, AuxLoss))
  return sum(leaves, jnp.zeros((), jnp.float32))
