r"""Trains a model on a task: ``train_and_evaluate(config, workdir)`` behind absl flags.

  python -m experiments.train --config=experiments/configs/running_sum.py:quick \
      --workdir=/tmp/rs_quick [--config.model.name=transformer --config.num_steps=500]

Running the same command again resumes from the latest checkpoint in ``--workdir``.
Bad input ends with one line on stderr and exit code 1 (2 for bad flags).
"""

import importlib.util
import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from seqscale import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. experiments/configs/running_sum.py:quick.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, results.")


def _fail(message: str, code: int) -> None:
  print("error: " + " ".join(str(message).split()), file=sys.stderr, flush=True)
  sys.exit(code)


def _check_config_arg(argv: list[str]) -> None:
  """Loads ``--config`` once up front so that a missing file, a failing ``get_config`` or an
  unknown ``--config.<field>`` gets a one-line message (config_flags gives tracebacks)."""
  values = [a.split("=", 1)[1] if a.startswith("--config=") else b
            for a, b in zip(argv[1:], argv[2:] + [""]) if a.startswith("--config=")
            or a == "--config"]
  if not values:
    _fail("--config is required, e.g. --config=experiments/configs/running_sum.py:quick", 2)
  path, _, arg = values[-1].partition(":")
  if not os.path.isfile(path):
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
    known = sorted(f for f in os.listdir(here)
                   if f.endswith(".py") and f[0] != "_" and f != "common.py")
    _fail(f"config file {path!r} does not exist; configs in {here}: {', '.join(known)}", 2)
  try:
    spec = importlib.util.spec_from_file_location("_seqscale_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(*([arg] if arg else []))
  except Exception as e:  # pylint: disable=broad-except
    _fail(f"config file {values[-1]!r}: {type(e).__name__}: {e}", 2)
  for a in argv[1:]:
    if not a.startswith("--config."):
      continue
    node, path = config, "config"
    for key in a[len("--"):].split("=", 1)[0].split(".")[1:]:
      if not hasattr(node, "keys") or key not in node:
        allowed = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(none)"
        _fail(f"unknown config field '{path}.{key}' in {a!r}; fields of {path}: {allowed}", 2)
      node, path = node[key], f"{path}.{key}"


def _parse_flags(argv: list[str]) -> list[str]:
  _check_config_arg(argv)
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except  # any flag error: one line
    _fail(e, 2)
  if flags.FLAGS.workdir is None:
    _fail("--workdir is required (a directory, existing or new)", 2)
  return rest


def _quiet_orbax(record) -> bool:
  # Orbax logs every save step by step at INFO; keep its warnings and errors only.
  return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; use --config=... --workdir=...", 2)
  logging.get_absl_handler().addFilter(_quiet_orbax)
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FloatingPointError) as e:
    _fail(e, 1)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
