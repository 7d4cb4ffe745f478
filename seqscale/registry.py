"""One registry helper for models and tasks: a name, or ``package.module:Class``, to a
constructor.

Modules register their constructors with ``@REGISTRY.register("name")``. A research fork
adds an entry without editing core files, either by registering from its own module or by
passing the dotted path ``"my_fork.models:MyModel"`` wherever a name is accepted. Every
error says what was given and what is allowed.

  MODELS = Registry("model", implicit=("rngs",))
  MODELS.register("lstm")(LSTM)
  MODELS.build("lstm", in_features=8, hidden_features=16, rngs=rngs)
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
C = TypeVar("C")


def accepted_keywords(ctor: Callable[..., Any]) -> list[str] | None:
  """The keyword arguments ``ctor`` takes, or None if it takes any (``**kwargs``) or its
  signature cannot be read."""
  try:
    # nnx.Module's metaclass hides a class's own signature behind (*args, **kwargs).
    sig = inspect.signature(ctor.__init__ if inspect.isclass(ctor) else ctor)
  except (TypeError, ValueError):
    return None
  params = sig.parameters.values()
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
    return None
  return [p.name for p in params if p.name != "self"]


class Registry(Generic[T]):
  """Names to constructors of one kind of thing ("model", "task").

  Args:
    kind: the word the error messages use.
    implicit: keywords every constructor takes and the caller always passes (``rngs``);
      left out of the "it takes" list.
  """

  def __init__(self, kind: str, *, implicit: Sequence[str] = ()):
    self.kind, self.implicit = kind, tuple(implicit)
    self._entries: dict[str, Callable[..., T]] = {}

  def register(self, name: str) -> Callable[[C], C]:
    """Decorator: registers a class (or factory) under ``name``."""

    def wrap(ctor: C) -> C:
      if name in self._entries and self._entries[name] is not ctor:
        raise ValueError(f"{self.kind} name {name!r} is already registered to "
                         f"{self._entries[name]}")
      self._entries[name] = ctor  # type: ignore[assignment]
      return ctor

    return wrap

  def names(self) -> list[str]:
    """The registered names, sorted."""
    return sorted(self._entries)

  def lookup(self, name: str) -> Callable[..., T]:
    """The constructor for a registered name or a ``package.module:Class`` path."""
    if ":" in name:
      module_name, _, attr = name.partition(":")
      try:
        module = importlib.import_module(module_name)
      except ImportError as e:
        raise ValueError(
            f"{self.kind} {name!r}: cannot import module {module_name!r} ({e}); a dotted "
            "path must look like 'package.module:Class'") from e
      try:
        return getattr(module, attr)
      except AttributeError:
        raise ValueError(f"{self.kind} {name!r}: module {module_name!r} has no attribute "
                         f"{attr!r}") from None
    try:
      return self._entries[name]
    except KeyError:
      raise ValueError(
          f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())} "
          "(or a dotted path 'package.module:Class')") from None

  def build(self, name: str, /, **kwargs: Any) -> T:
    """``lookup(name)(**kwargs)``, after checking that it takes every keyword given.

    Raises:
      ValueError: for an unknown name, or a keyword the constructor does not take (the
        message lists the keywords it does take).
    """
    ctor = self.lookup(name)
    allowed = accepted_keywords(ctor)
    if allowed is not None:
      unknown = sorted(set(kwargs) - set(allowed))
      if unknown:
        listed = [a for a in allowed if a not in self.implicit]
        raise ValueError(f"{self.kind} {name!r} does not take "
                         f"{', '.join(map(repr, unknown))}; it takes: {', '.join(listed)}")
    return ctor(**kwargs)
