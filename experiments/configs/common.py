"""What every config in this folder shares: its argument's parser, its base and model sizes.

A config states only what differs from ``seqscale.train.config.default_config()``; building
on ``base_config`` keeps every trainer field in place, so any ``--config.<field>=<value>``
override works for every config. Not a config itself (it has no ``get_config``).
"""

from __future__ import annotations

from typing import Any, Iterable

import ml_collections

from seqscale.train import config as train_config
from seqscale.train import presets

# The generated data every experiment here uses (task keywords).
DATA = dict(num_train=10_000,  # generated training sequences
            num_eval=1_000,  # generated sequences per evaluation split
            data_dir="")  # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
# Trainer fields every experiment here sets apart from the trainer's defaults.
TRAINER = dict(eval_batch_size=100,  # evaluation batch
               log_every=100,  # steps between metrics lines
               checkpoint_every=1_000)  # steps between checkpoints (and always the last)
# Widths D of the presets' models here (default 128); all read 64-wide token embeddings.
PRESET_WIDTHS = {"transformer": 64}


def parse_arg(arg: str | None, models: Iterable[str], default: str) -> tuple[str, bool]:
  """Reads a ``get_config`` argument: ``quick`` and/or one of ``models``, comma-separated.

  Args:
    arg: e.g. ``"quick,lstm"``; None or ``""``: the full run of ``default``.
    models: the names the argument may pick (a config's ``MODELS``).
    default: the model when the argument names none.

  Returns:
    ``(model, quick)``.

  Raises:
    ValueError: naming the argument, what in it is wrong and what is allowed.
  """
  models = list(models)
  options = [a.strip() for a in (arg or "").split(",") if a.strip()]
  allowed = f"allowed: quick and/or one of {', '.join(models)}, comma-separated"
  unknown = [a for a in options if a != "quick" and a not in models]
  if unknown:
    raise ValueError(f"config argument {arg!r}: unknown {', '.join(map(repr, unknown))}; "
                     f"{allowed}")
  named = [a for a in options if a in models]
  if len(named) > 1 or options.count("quick") > 1:
    raise ValueError(f"config argument {arg!r}: names {'models' if len(named) > 1 else 'quick'} "
                     f"more than once; {allowed}")
  return (named[0] if named else default), "quick" in options


def base_config(task: str, model: str, hparams: dict[str, Any],
                **task_kwargs: Any) -> ml_collections.ConfigDict:
  """The trainer's defaults with the task, the model and what every experiment here shares.

  Args:
    task: a ``seqscale.data`` task name.
    model: a ``seqscale.models`` name.
    hparams: the model's constructor keywords (copied).
    **task_kwargs: the task's keywords besides ``DATA``.
  """
  c = train_config.default_config()
  c.task = ml_collections.ConfigDict(dict(name=task, **task_kwargs, **DATA))
  c.model.name = model
  c.model.hparams = ml_collections.ConfigDict(dict(hparams))
  c.update(TRAINER)
  return c


def preset_models(*names: str) -> dict[str, dict[str, Any]]:
  """``seqscale.train.presets`` sizes of ``names`` here: ``PRESET_WIDTHS``, 64-wide inputs."""
  return {n: presets.model_hparams(n, PRESET_WIDTHS.get(n, 128), in_features=64) for n in names}
