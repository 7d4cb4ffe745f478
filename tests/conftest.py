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
# ``jax.jit(..., compiler_options=FAST_COMPILE)``: XLA's CPU backend at optimization level 0
# (no LLVM optimization of the emitted machine code). For a program a test compiles once,
# runs once on tiny inputs and compares with another path of the same program, compiling is
# most of the time, and about a third less at level 0 (test_forward_mode: 17.2 -> 10.6 s of
# CPU on three models). The level changes the machine code only, not the traced program (its
# autodiff rules, dtypes, the path taken), so the checks are the same; not for tests that
# measure the compiled program (memory, speed), nor those that compile once and run long.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def run_with_devices(code: str, num_devices: int, timeout: float = 600,
                     fast_compile: bool = False) -> str:
  """Runs Python ``code`` in a subprocess with ``num_devices`` CPU devices; returns stdout.

  ``fast_compile``: every program there at XLA's backend optimization level 0 (as
  ``FAST_COMPILE`` does for one program), for code that compiles many small programs and
  runs each once or twice.
  """
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={num_devices}" +
                      (" --xla_backend_optimization_level=0" if fast_compile else "")).strip()
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env=env, cwd=ROOT, timeout=timeout)
  if proc.returncode != 0:
    raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc.stdout


def fast_compile_env(**extra: str) -> dict[str, str]:
  """``os.environ`` (with ``extra``) plus XLA's backend optimization level 0 in ``XLA_FLAGS``,
  for an experiment's subprocess (and its own subprocesses) that compiles many programs and
  runs each briefly: a smoke run of a few training steps and analyses, whose checks read
  the programs (depths, FLOPs, receptive fields) or their outputs, not their speed."""
  env = dict(os.environ, **extra)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
  return env


@pytest.fixture
def rng() -> np.random.Generator:
  return np.random.default_rng(0)
