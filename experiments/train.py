r"""Trains a model on a task: ``train_and_evaluate(config, workdir)`` behind absl flags.

  python -m experiments.train --config=experiments/configs/running_sum.py:quick \
      --workdir=/tmp/rs_quick [--config.model.name=transformer --config.num_steps=500]

``--config.<field>=<value>`` sets any field ``--help`` lists; under ``model.hparams`` and
``task`` any keyword of the model's or the task's constructor, named in the config or not
(``--config.model.hparams.dtype=bfloat16``), its value read as a Python literal or else a
string. Running the same command again resumes from the latest checkpoint in ``--workdir``.
Bad input (flags, settings, --workdir) ends with one ``error:`` line on stderr and exit code
2, before any work; a failure while running, exit code 1 (``experiments.cli``).
"""

import importlib.util
import logging as std_logging
import os
from typing import Any

from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import cli
from seqscale import train
from seqscale.train import config as train_config

# config_flags parses an override by the type of the field it replaces; a field that is None
# in the config (flstm's rank) gets a literal, and so does a field the config does not name
# (accept_new_attributes): any keyword of the model's or the task's constructor, checked
# against its signature once the flags are parsed (``settings``).
config_flags.register_flag_parser_for_type(type(None), cli.LiteralParser())
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. experiments/configs/running_sum.py:quick; its fields "
    "are listed below, and --config.<field>=<value> sets one.",
    lock_config=False, accept_new_attributes=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, results.")
# Groups whose keys are the constructor keywords of the model and of the task: any keyword
# the constructor takes may be set, whether or not the config names it.
_FREE = (("model", "hparams"), ("task",))


def _config_values(argv: list[str]) -> list[str]:
  return [a.split("=", 1)[1] if a.startswith("--config=") else b
          for a, b in zip(argv[1:], argv[2:] + [""]) if a.startswith("--config=")
          or a == "--config"]


def _load(value: str) -> Any:
  """The config ``--config=value`` names; ValueError (one line) if it cannot be loaded."""
  path, _, arg = value.partition(":")
  if not os.path.isfile(path):
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
    known = sorted(f for f in os.listdir(here)
                   if f.endswith(".py") and f[0] != "_" and f != "common.py")
    raise ValueError(f"config file {path!r} does not exist; configs in {here}: "
                     f"{', '.join(known)}")
  try:
    spec = importlib.util.spec_from_file_location("_seqscale_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*([arg] if arg else []))
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"config file {value!r}: {type(e).__name__}: {e}") from None


def _check_config_arg(argv: list[str]) -> None:
  """Loads ``--config`` once up front so that a missing file, a failing ``get_config`` or an
  unknown ``--config.<field>`` gets a one-line message (config_flags gives tracebacks).
  Keys under ``model.hparams`` and ``task`` are checked against the constructors later."""
  values = _config_values(argv)
  if not values:
    cli.fail("--config is required, e.g. --config=experiments/configs/running_sum.py:quick")
  try:
    config = _load(values[-1])
  except ValueError as e:
    cli.fail(e)
  for a in argv[1:]:
    if not a.startswith("--config."):
      continue
    keys = a[len("--"):].split("=", 1)[0].split(".")[1:]
    if any(tuple(keys[:len(free)]) == free and len(keys) > len(free) for free in _FREE):
      continue
    node, path = config, "config"
    for key in keys:
      if not hasattr(node, "keys") or key not in node:
        allowed = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(none)"
        cli.fail(f"unknown config field '{path}.{key}' in {a!r}; fields of {path}: {allowed}")
      node, path = node[key], f"{path}.{key}"


def _help(argv: list[str]) -> str:
  """The fields of ``--config`` if given (else the trainer's defaults) for ``--help``."""
  values = _config_values(argv)
  config, title = None, ("Config fields, at the trainer's defaults (seqscale/train/config.py), "
                         "the base of every config in experiments/configs/; --config=FILE "
                         "--help shows FILE's values")
  if values:
    try:
      config, title = _load(values[-1]), f"Config fields of {values[-1]}"
    except ValueError as e:
      title += f" ({e})"
  return "\n".join([title + ":", *("  " + line for line in train_config.describe(config))])


def settings() -> Any:
  """The parsed config, its values and keywords checked (a usage error, before any work)."""
  config = train_config.validate(_CONFIG.value)
  train_config.check_keywords(config)
  return config


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
  cli.run(main, settings, before_parse=_check_config_arg, help_text=_help)
