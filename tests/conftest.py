"""Shared test set-up.

Several CPU devices come from ``XLA_FLAGS``, which must be set before JAX is imported; tests
that need them run in a subprocess (see ``run_with_devices``) so the main test process keeps
one device and its default behaviour.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_with_devices(code: str, num_devices: int, timeout: float = 600) -> str:
  """Runs Python ``code`` in a subprocess with ``num_devices`` CPU devices; returns stdout."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={num_devices}").strip()
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env=env, cwd=ROOT, timeout=timeout)
  if proc.returncode != 0:
    raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc.stdout


@pytest.fixture
def rng() -> np.random.Generator:
  return np.random.default_rng(0)
