"""Argument checks shared by every layer: one message format for a bad value."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def check_int(name: str, value: Any, minimum: int = 1) -> None:
  """Raises ValueError naming ``name`` and ``value`` unless it is an int >= ``minimum``
  (a bool is not an int here)."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
      or value < minimum:
    raise ValueError(f"{name}={value!r}; must be an int >= {minimum}")


def check_names(flag: str, values: Sequence[str], allowed: Sequence[str]) -> tuple[str, ...]:
  """``values`` stripped and without repeats, in order; ValueError naming ``flag``, the
  unknown ones and the allowed ones where any is unknown or none is given."""
  values = tuple(str(v).strip() for v in values)
  bad = [v for v in values if v not in allowed]
  if bad or not values:
    raise ValueError(f"{flag}={','.join(values)!r}: unknown {bad or 'empty'}; allowed: "
                     + ", ".join(allowed))
  return tuple(dict.fromkeys(values))
