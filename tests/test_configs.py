"""The experiment configs and what they share: the argument parser, the base config, the
docstrings, and the table of small model sizes (``seqscale.train.presets``)."""

import importlib
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.configs import common
from seqscale import models
from seqscale import train
from seqscale.train import presets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "experiments", "configs"))
                 if f.endswith(".py") and not f.startswith("_") and f != "common.py")


def _module(name):
  return importlib.import_module(f"experiments.configs.{name}")


def _args(module):
  return [None, "quick"] + [a for k in module.MODELS for a in (k, f"quick,{k}", f"{k},quick")]


def _leaves(d, prefix=""):
  out = set()
  for key, value in d.items():
    # Task and model keywords are free-form: only the trainer's own fields are fixed.
    if isinstance(value, dict) and f"{prefix}{key}" not in ("task", "model.hparams"):
      out |= _leaves(value, f"{prefix}{key}.")
    else:
      out.add(f"{prefix}{key}")
  return out


# -- the argument parser --------------------------------------------------------------------

@pytest.mark.parametrize("arg, expected", [
    (None, ("lstm", False)), ("", ("lstm", False)), ("quick", ("lstm", True)),
    ("gru", ("gru", False)), ("quick,gru", ("gru", True)), ("gru,quick", ("gru", True)),
    (" quick , gru ", ("gru", True)),
])
def test_parse_arg(arg, expected):
  assert common.parse_arg(arg, ["lstm", "gru"], default="lstm") == expected


@pytest.mark.parametrize("arg, wrong", [
    ("nosuch", "unknown 'nosuch'"), ("quick,lstm,nosuch", "unknown 'nosuch'"),
    ("lstm,gru", "names models more than once"), ("quick,quick", "names quick more than once"),
])
def test_parse_arg_errors_name_argument_value_and_allowed(arg, wrong):
  with pytest.raises(ValueError) as e:
    common.parse_arg(arg, ["lstm", "gru"], default="lstm")
  assert f"config argument {arg!r}" in str(e.value) and wrong in str(e.value)
  assert "allowed: quick and/or one of lstm, gru" in str(e.value)


# -- every config ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", CONFIGS)
def test_every_argument_resolves(name):
  module = _module(name)
  defaults = _leaves(train.default_config().to_dict())
  for arg in _args(module):
    c = module.get_config(arg)
    # Every trainer field is there, so that any --config.<field> override works.
    assert defaults <= _leaves(c.to_dict()), arg
    resolved = train.validate(c)
    assert resolved.model.name in module.MODELS or resolved.model.name == name, arg
    assert resolved.task.num_train > 0 and resolved.task.num_eval > 0


@pytest.mark.parametrize("name", CONFIGS)
def test_bad_argument_names_what_is_allowed(name):
  module = _module(name)
  with pytest.raises(ValueError, match="config argument 'quick,nosuch': unknown 'nosuch'") as e:
    module.get_config("quick,nosuch")
  assert all(k in str(e.value) for k in module.MODELS)


@pytest.mark.parametrize("name", CONFIGS)
def test_docstring_gives_command_hardware_time_and_result(name):
  doc = _module(name).__doc__
  for part in ("Command:", f"--config=experiments/configs/{name}.py", "Hardware:",
               "Expected run time", "Expected result"):
    assert part in doc, part


@pytest.mark.parametrize("name", CONFIGS)
def test_config_restates_no_trainer_block(name):
  with open(os.path.join(ROOT, "experiments", "configs", f"{name}.py")) as f:
    source = f.read()
  for restated in ("c.parallel", "c.seed", "c.keep_checkpoints", "ml_collections.ConfigDict()"):
    assert restated not in source, restated


# -- the presets ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_preset_builds_a_sequence_model(name):
  B, T, I, D = 2, 5, 4, 8  # glstm: widths divide by its 4 groups
  hparams = presets.model_hparams(name, D, seq_len=T, in_features=I)
  model = models.create(name, rngs=nnx.Rngs(0), **hparams)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(B, T, I)), jnp.float32)
  y = model(x)
  assert y.shape == (B, T, D)
  assert np.isfinite(np.asarray(y)).all()


@pytest.mark.parametrize("seq_len", [2, 40, 64, 1000, 1025])
def test_wavenet_preset_covers_the_sequence(seq_len):
  hparams = presets.model_hparams("wavenet", 4, seq_len=seq_len)
  model = models.create("wavenet", rngs=nnx.Rngs(0), **hparams)
  assert model.receptive_field >= seq_len
  assert hparams["num_layers"] == 1 or 2 ** (hparams["num_layers"] - 1) < seq_len


def test_preset_widths_and_length():
  assert presets.model_hparams("lstm", 128, in_features=64) == dict(
      in_features=64, hidden_features=128, num_layers=1)
  assert "max_length" not in presets.model_hparams("transformer")
  assert presets.model_hparams("transformer", seq_len=4096)["max_length"] == 4096
  assert presets.model_hparams("lru", seq_len=100)["r_min"] == 0.9


def test_preset_errors():
  with pytest.raises(ValueError, match="no preset for model 'rnn'; presets: lstm, gru"):
    presets.model_hparams("rnn")
  with pytest.raises(ValueError, match="'wavenet' needs seq_len"):
    presets.model_hparams("wavenet", 64)


def test_presets_are_fresh_dicts():
  presets.model_hparams("lstm")["num_layers"] = 9
  assert presets.model_hparams("lstm")["num_layers"] == 1
  common.preset_models("lstm")["lstm"]["num_layers"] = 9
  assert common.preset_models("lstm")["lstm"]["num_layers"] == 1
