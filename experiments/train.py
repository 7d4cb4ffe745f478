r"""Trains a model on a task: ``train_and_evaluate(config, workdir)`` behind absl flags.

  python -m experiments.train --config=experiments/configs/running_sum.py:quick \
      --workdir=/tmp/rs_quick [--config.model.name=transformer --config.num_steps=500]

Running the same command again resumes from the latest checkpoint in ``--workdir``.
Bad input (flags, settings, --workdir) ends with one ``error:`` line on stderr and exit code
2, before any work; a failure while running, exit code 1 (``experiments.cli``).
"""

import importlib.util
import logging as std_logging
import os

from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import cli
from seqscale import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. experiments/configs/running_sum.py:quick.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, results.")


def _check_config_arg(argv: list[str]) -> None:
  """Loads ``--config`` once up front so that a missing file, a failing ``get_config`` or an
  unknown ``--config.<field>`` gets a one-line message (config_flags gives tracebacks)."""
  values = [a.split("=", 1)[1] if a.startswith("--config=") else b
            for a, b in zip(argv[1:], argv[2:] + [""]) if a.startswith("--config=")
            or a == "--config"]
  if not values:
    cli.fail("--config is required, e.g. --config=experiments/configs/running_sum.py:quick")
  path, _, arg = values[-1].partition(":")
  if not os.path.isfile(path):
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
    known = sorted(f for f in os.listdir(here)
                   if f.endswith(".py") and f[0] != "_" and f != "common.py")
    cli.fail(f"config file {path!r} does not exist; configs in {here}: {', '.join(known)}")
  try:
    spec = importlib.util.spec_from_file_location("_seqscale_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(*([arg] if arg else []))
  except Exception as e:  # pylint: disable=broad-except
    cli.fail(f"config file {values[-1]!r}: {type(e).__name__}: {e}")
  for a in argv[1:]:
    if not a.startswith("--config."):
      continue
    node, path = config, "config"
    for key in a[len("--"):].split("=", 1)[0].split(".")[1:]:
      if not hasattr(node, "keys") or key not in node:
        allowed = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(none)"
        cli.fail(f"unknown config field '{path}.{key}' in {a!r}; fields of {path}: {allowed}")
      node, path = node[key], f"{path}.{key}"


def _quiet_orbax(record) -> bool:
  # Orbax logs every save step by step at INFO; keep its warnings and errors only.
  return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(config, workdir: str) -> None:
  logging.get_absl_handler().addFilter(_quiet_orbax)
  try:
    train.train_and_evaluate(config, workdir)
  except train.RunError as e:  # its own exit code: 143/130 after SIGTERM/SIGINT
    cli.fail(e, e.exit_code)
  except KeyboardInterrupt:  # Ctrl-C before training started: nothing to save
    cli.fail("interrupted (SIGINT) before training started; nothing was saved", 130)


if __name__ == "__main__":
  cli.run(main, lambda: _CONFIG.value, before_parse=_check_config_arg)
