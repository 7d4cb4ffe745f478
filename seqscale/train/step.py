"""The training and evaluation steps: pure functions of (state, batch).

``state`` is ``nnx.state((model, optimizer))``; the step rebuilds both with ``nnx.merge``
from a ``graphdef`` split once outside, so it stays a plain JAX function that ``jit``,
``pmap`` and ``.lower().compile()`` take unchanged. With ``axis_name`` (pmap) the step
averages gradients and sums metrics over devices itself, and draws its random numbers
(dropout masks, MoE gating noise) from keys with the device's index folded in.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from seqscale import models
from seqscale.train import losses

Array = jax.Array
Batch = dict[str, Array]
Step = Callable[[nnx.State, Batch], Any]


def _targets(model: Any, batch: Batch) -> tuple[Array, Array]:
  if model.interface == "seq2seq":
    return batch["tgt_out"], batch["tgt_weights"]
  return batch["targets"], batch["weights"]


def _sums(model: Any, batch: Batch) -> dict[str, Array]:
  targets, weights = _targets(model, batch)
  return losses.metric_sums(model(batch), targets, weights, model.regression)


def fold_device_index(model: nnx.Module, axis_name: str) -> nnx.State:
  """Folds this device's index on ``axis_name`` into every RNG key of ``model``.

  Under ``pmap`` each device holds the same replicated keys, so without this every device
  would draw the same dropout mask (and MoE noise) for its own rows. Returns the original
  keys: put them back with ``nnx.update(model, keys)`` after the step, so that the state
  stays replicated (the RNG counts advance alike on every device) and a checkpoint holds
  the same keys whichever device it is read from.
  """
  keys = jax.tree.map(lambda key: key, nnx.state(model, nnx.RngKey))  # copies, not views
  index = jax.lax.axis_index(axis_name)
  nnx.update(model, jax.tree.map(lambda key: jax.random.fold_in(key, index), keys))
  return keys


def make_train_step(graphdef: nnx.GraphDef, axis_name: str | None = None) -> Step:
  """``(state, batch) -> (state, metrics)``: one optimizer step on the weighted mean loss.

  Under pmap the local loss is divided by the *mean* weight over devices, so that
  ``pmean`` of the local gradients is the gradient of the global weighted mean: the same
  update as one device on the whole batch. Each device draws its own random numbers
  (``fold_device_index``), so a step without dropout or noise equals one device's.
  """

  def train_step(state: nnx.State, batch: Batch) -> tuple[nnx.State, dict[str, Array]]:
    model, optimizer = nnx.merge(graphdef, state)
    keys = None if axis_name is None else fold_device_index(model, axis_name)

    def loss_fn(model):
      sums = _sums(model, batch)
      weight = sums["weight"]
      if axis_name is not None:
        weight = jax.lax.pmean(weight, axis_name)
      # Auxiliary losses the forward pass recorded (MoE load balancing); 0 for most models.
      aux = models.auxiliary_loss(model)
      return sums["loss"] / jnp.maximum(weight, 1e-12) + aux, (sums, aux)

    grads, (sums, aux) = nnx.grad(loss_fn, has_aux=True)(model)
    if axis_name is not None:
      grads = jax.lax.pmean(grads, axis_name)
      sums = jax.lax.psum(sums, axis_name)
    optimizer.update(model, grads)
    if keys is not None:
      nnx.update(model, keys)
    metrics = losses.finalize(sums)
    metrics["aux_loss"] = aux if axis_name is None else jax.lax.pmean(aux, axis_name)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["param_norm"] = optax.tree.norm(nnx.state(model, nnx.Param))
    return nnx.state((model, optimizer)), metrics

  return train_step


def make_eval_step(graphdef: nnx.GraphDef, axis_name: str | None = None) -> Step:
  """``(state, batch) -> sums`` (see ``losses.metric_sums``), dropout off via ``graphdef``."""

  def eval_step(state: nnx.State, batch: Batch) -> dict[str, Array]:
    model, _ = nnx.merge(graphdef, state)
    sums = _sums(model, batch)
    return sums if axis_name is None else jax.lax.psum(sums, axis_name)

  return eval_step
