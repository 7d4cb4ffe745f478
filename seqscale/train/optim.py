"""Optimizers and learning-rate schedules (optax).

- ``cosine``: linear warmup to ``learning_rate``, then a cosine decay to
  ``learning_rate * final_fraction`` at ``num_steps``.
- ``rsqrt``: the schedule of "Attention Is All You Need" (Vaswani et al., 2017, eq. 3),
  ``lr = learning_rate * d^-0.5 * min(n^-0.5, n * warmup^-1.5)`` with ``n = step + 1``:
  linear warmup, then decay with the inverse square root of the step.
- ``constant``: linear warmup, then constant.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax


def schedule(name: str, *, learning_rate: float, warmup_steps: int, num_steps: int,
             model_dim: int = 0, final_fraction: float = 0.0) -> optax.Schedule:
  """A learning-rate schedule ``step -> rate``; see the module docstring."""
  if name == "cosine":
    if warmup_steps == 0:
      return optax.cosine_decay_schedule(learning_rate, max(num_steps, 1), final_fraction)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
        decay_steps=max(num_steps, warmup_steps + 1), end_value=learning_rate * final_fraction)
  if name == "rsqrt":
    if model_dim < 1 or warmup_steps < 1:
      raise ValueError(f"rsqrt schedule needs model_dim >= 1 and warmup_steps >= 1, got "
                       f"model_dim={model_dim}, warmup_steps={warmup_steps}")

    def rsqrt(step):
      n = jnp.asarray(step, jnp.float32) + 1.0
      return learning_rate * model_dim ** -0.5 * jnp.minimum(n ** -0.5,
                                                             n * warmup_steps ** -1.5)
    return rsqrt
  if name == "constant":
    if warmup_steps == 0:
      return optax.constant_schedule(learning_rate)
    return optax.linear_schedule(0.0, learning_rate, warmup_steps)
  raise ValueError(f"learning-rate schedule {name!r}; allowed: cosine, rsqrt, constant")


def _decay_mask(params: Any) -> Any:
  # Weight decay on matrices only, not on biases, norm scales or scalars.
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make(opt: Mapping[str, Any], *, num_steps: int, model_dim: int
         ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """``config.optimizer`` -> (gradient clipping + optimizer, its schedule)."""
  lr = schedule(opt["schedule"], learning_rate=opt["learning_rate"],
                warmup_steps=opt["warmup_steps"], num_steps=num_steps,
                model_dim=opt.get("model_dim") or model_dim,
                final_fraction=opt.get("final_fraction", 0.0))
  if opt["name"] == "adamw":
    tx = optax.adamw(lr, b1=opt["b1"], b2=opt["b2"], eps=opt["eps"],
                     weight_decay=opt["weight_decay"], mask=_decay_mask)
  elif opt["name"] == "adam":
    tx = optax.adam(lr, b1=opt["b1"], b2=opt["b2"], eps=opt["eps"])
  elif opt["name"] == "sgd":
    tx = optax.sgd(lr, momentum=opt["b1"] or None)
  else:
    raise ValueError(f"optimizer {opt['name']!r}; allowed: adamw, adam, sgd")
  if opt["clip_norm"]:
    tx = optax.chain(optax.clip_by_global_norm(opt["clip_norm"]), tx)
  return tx, lr
