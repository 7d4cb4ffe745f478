"""Argument checks shared by every layer: one message format for a bad value."""

from __future__ import annotations

from typing import Any

import numpy as np


def check_int(name: str, value: Any, minimum: int = 1) -> None:
  """Raises ValueError naming ``name`` and ``value`` unless it is an int >= ``minimum``
  (a bool is not an int here)."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
      or value < minimum:
    raise ValueError(f"{name}={value!r}; must be an int >= {minimum}")
