"""The trainer's configuration: defaults, allowed fields and value checks.

Experiment configs (``experiments/configs/*.py``) name every field they care about; fields
they leave out take the defaults below. ``config.task`` (apart from ``name``) holds the
task's own keyword arguments and ``config.model.hparams`` the model's constructor keywords:
their values are checked by the task and the model themselves, their names against the
constructors' signatures by ``check_keywords`` (the command line does, before any work).
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import ml_collections

STRATEGIES = ("jit", "pmap")
SCHEDULES = ("cosine", "rsqrt", "constant")
OPTIMIZERS = ("adamw", "adam", "sgd")
POOLINGS = ("mean", "last")
RESUMES = ("", "force")
# Fields (and groups, by prefix) whose change makes a resumed run another run: a resume
# refuses them unless config.resume='force'. Other fields are bookkeeping (recorded).
RUN_FIELDS = ("seed", "task", "model", "optimizer", "batch_size")
BOOKKEEPING_TASK_FIELDS = ("task.data_dir",)  # where the data lives, not what it is
UNSET = "<unset>"
# Dtypes a model's ``dtype`` (or ``*_dtype``) keyword may name, e.g. bfloat16 compute.
DTYPES = ("float32", "bfloat16", "float16", "float64")


def default_config() -> ml_collections.ConfigDict:
  """Every trainer field with its default."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # parameter init, dropout and data order
  c.task = ml_collections.ConfigDict({"name": "running_sum"})  # name + task kwargs
  c.model = ml_collections.ConfigDict()
  c.model.name = "lstm"  # registry name or 'package.module:Class'
  c.model.hparams = ml_collections.ConfigDict()  # constructor keywords
  c.model.pooling = "mean"  # pooled tasks: mean over valid positions | last valid position
  c.batch_size = 32  # global batch (all devices and hosts)
  c.eval_batch_size = 0  # 0: same as batch_size
  c.num_steps = 1000  # training steps
  c.log_every = 50  # steps between metrics lines
  c.eval_every = 0  # steps between evaluations; 0: only at the end
  c.checkpoint_every = 500  # steps between checkpoints; the last step is always saved
  c.keep_checkpoints = 3  # keep the last N checkpoints
  c.prefetch = 2  # batches made ahead of the step by a background thread; 0: in the loop
  c.resume = ""  # 'force': resume even where RUN_FIELDS changed (results.json records it)
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"  # adamw | adam | sgd
  c.optimizer.learning_rate = 1e-3  # peak rate (a multiplier for 'rsqrt')
  c.optimizer.schedule = "cosine"  # cosine | rsqrt | constant, all with linear warmup
  c.optimizer.warmup_steps = 100
  c.optimizer.final_fraction = 0.0  # cosine ends at learning_rate * final_fraction
  c.optimizer.model_dim = 0  # d in rsqrt's d^-0.5; 0: hparams.hidden_features
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.0  # adamw, on matrices only
  c.optimizer.clip_norm = 1.0  # global gradient-norm clip; 0: off
  c.parallel = ml_collections.ConfigDict()
  c.parallel.strategy = "jit"  # jit (mesh + NamedSharding) | pmap
  c.parallel.num_devices = 0  # devices to use (jit, one process); 0: all
  c.parallel.coordinator_address = ""  # multi-host 'host:port'; '' reads JAX_COORDINATOR_ADDRESS
  c.parallel.num_processes = 0  # 0 reads JAX_NUM_PROCESSES
  c.parallel.process_id = -1  # -1 reads JAX_PROCESS_ID
  return c


def _merge(defaults: dict[str, Any], given: dict[str, Any], prefix: str,
           free: tuple[str, ...]) -> dict[str, Any]:
  out = dict(defaults)
  for key, value in given.items():
    path = f"{prefix}{key}"
    if key not in defaults:
      raise ValueError(f"unknown config field {path!r}; allowed fields under "
                       f"{prefix.rstrip('.') or 'config'}: {', '.join(sorted(defaults))}")
    if isinstance(defaults[key], dict) and path not in free:
      if not isinstance(value, dict):
        raise ValueError(f"config field {path!r} must be a group of fields, got {value!r}")
      out[key] = _merge(defaults[key], value, path + ".", free)
    else:
      out[key] = value
  return out


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"config.{name}={value!r}; must be an integer >= {minimum}")


def _dtype_name(value: Any) -> str | None:
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  try:
    return jnp.dtype(value).name
  except TypeError:
    return None


def validate(config: ml_collections.ConfigDict | dict[str, Any]) -> ml_collections.ConfigDict:
  """Returns ``config`` filled with defaults; raises ValueError naming a bad field or value."""
  given = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  c = _merge(default_config().to_dict(), given, "", free=("task", "model.hparams"))
  if not isinstance(c["task"].get("name"), str) or not c["task"]["name"]:
    raise ValueError(f"config.task.name={c['task'].get('name')!r}; must be a task name")
  if not isinstance(c["model"]["name"], str) or not c["model"]["name"]:
    raise ValueError(f"config.model.name={c['model']['name']!r}; must be a model name")
  for key, value in c["task"].items():
    if key == "length" or key.endswith("_length"):
      _positive_int(f"task.{key}", value)
  _positive_int("batch_size", c["batch_size"])
  _positive_int("eval_batch_size", c["eval_batch_size"], 0)
  _positive_int("num_steps", c["num_steps"], 0)
  _positive_int("log_every", c["log_every"])
  _positive_int("eval_every", c["eval_every"], 0)
  _positive_int("checkpoint_every", c["checkpoint_every"], 0)
  _positive_int("keep_checkpoints", c["keep_checkpoints"])
  _positive_int("prefetch", c["prefetch"], 0)
  for key, value in c["model"]["hparams"].items():
    if (key == "dtype" or key.endswith("_dtype")) and value is not None \
        and _dtype_name(value) not in DTYPES:
      raise ValueError(f"config.model.hparams.{key}={value!r}; allowed: {', '.join(DTYPES)}")
  if c["resume"] not in RESUMES:
    raise ValueError(f"config.resume={c['resume']!r}; allowed: '' (refuse a changed run) "
                     "or 'force'")
  if c["model"]["pooling"] not in POOLINGS:
    raise ValueError(f"config.model.pooling={c['model']['pooling']!r}; allowed: "
                     f"{', '.join(POOLINGS)}")
  opt, par = c["optimizer"], c["parallel"]
  if opt["name"] not in OPTIMIZERS:
    raise ValueError(f"config.optimizer.name={opt['name']!r}; allowed: {', '.join(OPTIMIZERS)}")
  if opt["schedule"] not in SCHEDULES:
    raise ValueError(
        f"config.optimizer.schedule={opt['schedule']!r}; allowed: {', '.join(SCHEDULES)}")
  _positive_int("optimizer.warmup_steps", opt["warmup_steps"], 0)
  if opt["schedule"] == "rsqrt" and opt["warmup_steps"] < 1:
    raise ValueError("config.optimizer.warmup_steps=0; the rsqrt schedule needs warmup_steps >= 1")
  for key in ("learning_rate", "clip_norm", "weight_decay"):
    if not isinstance(opt[key], (int, float)) or opt[key] < 0:
      raise ValueError(f"config.optimizer.{key}={opt[key]!r}; must be a number >= 0")
  if par["strategy"] not in STRATEGIES:
    raise ValueError(
        f"config.parallel.strategy={par['strategy']!r}; allowed: {', '.join(STRATEGIES)}")
  _positive_int("parallel.num_devices", par["num_devices"], 0)
  return ml_collections.ConfigDict(c)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """``{'a': {'b': 1}}`` as ``{'a.b': 1}``."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
  """The fields that differ between two configs (plain JSON dicts), sorted by name:
  ``[{'field', 'old', 'new', 'changes_run'}]``, ``changes_run`` for ``RUN_FIELDS``;
  ``resume`` itself is not compared. A field missing on one side reads ``UNSET``."""
  old, new = flatten(old), flatten(new)
  out = []
  for field in sorted(set(old) | set(new)):
    a, b = old.get(field, UNSET), new.get(field, UNSET)
    if field == "resume" or a == b:
      continue
    run = (field.split(".")[0] in RUN_FIELDS and field not in BOOKKEEPING_TASK_FIELDS)
    out.append({"field": field, "old": a, "new": b, "changes_run": run})
  return out


def keywords(kind: str, name: str) -> list[str] | None:
  """The keywords the constructor of model or task ``name`` takes (``rngs`` left out).

  Args:
    kind: ``"model"`` (``config.model.hparams``) or ``"task"`` (``config.task``).
    name: a registered name or a dotted path ``package.module:Class``.

  Returns:
    The keyword names in signature order, or None when it takes any (``**kwargs``).

  Raises:
    ValueError: an unknown name (the registry's message lists the known ones).
  """
  # pylint: disable=g-import-not-at-top
  from seqscale import models
  from seqscale.data import task as task_lib
  from seqscale.registry import accepted_keywords
  lookup = {"model": models.lookup, "task": task_lib.TASKS.lookup}[kind]
  allowed = accepted_keywords(lookup(name))
  return None if allowed is None else [k for k in allowed if k != "rngs"]


def check_keywords(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming a key of ``config.model.hparams`` (or ``config.task``) that the
  model's (task's) constructor does not take, and listing the keywords it takes."""
  groups = (("model", "model.hparams", config.model.name, config.model.hparams),
            ("task", "task", config.task.name, config.task))
  for kind, group, name, fields in groups:
    allowed = keywords(kind, name)
    unknown = [] if allowed is None else sorted(set(fields) - set(allowed) - {"name"})
    if unknown:
      raise ValueError(
          f"config.{group}.{unknown[0]}: {kind} {name!r} takes no keyword "
          f"{', '.join(map(repr, unknown))}; it takes: {', '.join(allowed)}")


def field_comments() -> dict[str, str]:
  """The comment on each field's line in ``default_config``, e.g. ``{'seed': 'parameter
  init, dropout and data order', ...}`` (the one place the fields are documented)."""
  source = inspect.getsource(default_config)
  return dict(re.findall(r"^\s*c\.([\w.]+) = .*?  # (.*)$", source, re.M))


def describe(config: ml_collections.ConfigDict | None = None) -> list[str]:
  """One line per field of ``config`` (default: ``default_config()``), ``--config.<field>=
  <value>`` with the field's comment, then the keywords ``model.hparams`` and ``task`` take."""
  config = default_config() if config is None else config
  comments = field_comments()
  lines = []
  for path, value in flatten(config.to_dict()).items():
    if isinstance(value, dict):  # an empty group (hparams): its keywords are listed below
      continue
    comment = comments.get(path) or comments.get(path.split(".")[0], "")
    shown = (value or "''") if isinstance(value, str) else value
    lines.append(f"--config.{path}={shown}" + (f"  # {comment}" if comment else ""))
  for kind, group, name in (("model", "model.hparams", config.model.name),
                            ("task", "task", config.task.name)):
    try:
      allowed = keywords(kind, name)
    except ValueError as e:
      allowed = [f"({e})"]
    lines.append(f"--config.{group}.<keyword>=<value>: any keyword of {kind} {name!r}: " +
                 ("any (it takes **kwargs)" if allowed is None else ", ".join(allowed)))
  return lines
