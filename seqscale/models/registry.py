"""The model registry: a name (or a dotted path ``package.module:Class``) to a constructor.

Family modules register their classes with ``@register("name")``. A research fork adds a
model without editing core files, either by calling ``register`` from its own module or by
passing ``"my_fork.models:MyModel"`` wherever a model name is accepted.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

_REGISTRY: dict[str, Callable[..., nnx.Module]] = {}

T = TypeVar("T")


def register(name: str) -> Callable[[T], T]:
  """Class decorator: registers a model constructor under ``name``."""

  def wrap(cls: T) -> T:
    if name in _REGISTRY and _REGISTRY[name] is not cls:
      raise ValueError(f"model name {name!r} is already registered to {_REGISTRY[name]}")
    _REGISTRY[name] = cls  # type: ignore[assignment]
    return cls

  return wrap


def names() -> list[str]:
  """The registered model names, sorted."""
  return sorted(_REGISTRY)


def lookup(name: str) -> Callable[..., nnx.Module]:
  """Returns the constructor for a registered name or a ``package.module:Class`` path."""
  if ":" in name:
    module_name, _, attr = name.partition(":")
    try:
      module = importlib.import_module(module_name)
    except ImportError as e:
      raise ValueError(
          f"model {name!r}: cannot import module {module_name!r} ({e}); a dotted path "
          "must look like 'package.module:Class'") from e
    try:
      return getattr(module, attr)
    except AttributeError:
      raise ValueError(f"model {name!r}: module {module_name!r} has no attribute {attr!r}") from None
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(
        f"unknown model {name!r}; known models: {', '.join(names())} "
        "(or a dotted path 'package.module:Class')") from None


def create(name: str, *, rngs: nnx.Rngs, **hparams: Any) -> nnx.Module:
  """Builds a model by name, e.g. ``create('lstm', in_features=8, hidden_features=16, rngs=...)``.

  Raises:
    ValueError: for an unknown name, or a keyword the model does not take (the message
      lists the keywords it does take).
  """
  ctor = lookup(name)
  try:
    # nnx.Module's metaclass hides a class's own signature behind (*args, **kwargs).
    sig = inspect.signature(ctor.__init__ if inspect.isclass(ctor) else ctor)
  except (TypeError, ValueError):
    sig = None
  if sig is not None and not any(
      p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
    allowed = [p for p in sig.parameters if p not in ("self", "rngs")]
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
      raise ValueError(
          f"model {name!r} does not take {', '.join(map(repr, unknown))}; "
          f"it takes: {', '.join(allowed)}")
  return ctor(**hparams, rngs=rngs)


class AuxLoss(nnx.Variable):
  """An auxiliary loss a model records in its forward pass (e.g. MoE load balancing).

  Part of the model interface: the trainer adds :func:`auxiliary_loss` to the task loss.
  """


def auxiliary_loss(model: nnx.Module) -> jax.Array:
  """The sum of every ``AuxLoss`` in ``model`` as of its last call (0.0 if it has none)."""
  leaves = jax.tree.leaves(nnx.state(model, AuxLoss))
  return sum(leaves, jnp.zeros((), jnp.float32))
