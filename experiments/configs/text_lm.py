r"""text_lm: character-level language modelling on the Python standard library's source.

Real text that every machine has (``seqscale.data.text``: ~12 MB of stdlib ``.py`` files,
split by file; nothing to download), byte tokens (vocabulary 256). Held-out bits per
character and per byte, tokens/s, FLOPs per token and the corpus identity (Python version,
file count, SHA-256) go to ``results.json``; ``results.md`` ends with a short sample.

Command:
  python -m experiments.train --config=experiments/configs/text_lm.py:quick \
      --workdir=/tmp/text_lm_quick
  python -m experiments.generate --workdir=/tmp/text_lm_quick --prompt='def ' --length=200
  # other models and sizes: text_lm.py:<model> or :quick,<model>, <model> in MODELS
  # (e.g. :transformer_lm, :lstm_5m); Shakespeare where prepared:
  #   --config.task.name=tiny_shakespeare ; characters: --config.task.tokenizer=chars
Hardware: CPU, 2 cores for quick (the full configs are sized for a GPU: see GPU below).
Model: lstm (1M parameters; quick: 1 layer of width 256, 0.41M) unless the config argument
  names another; ``MODELS`` holds lstm, gru, transformer_lm, wavenet, mingru and lru at
  about 1M parameters and at about 5M (``<model>_5m``), the sizes of the study
  (tests/test_text_lm.py checks the counts). The parallel-in-time LSTM is not in the
  registry yet.
Expected run time (2 CPU cores): quick measured 107 s from a fresh data folder (corpus
  read, hashed and written as array_record: ~5 s; compile 6 s; 600 steps at 8 steps/s,
  16,761 tokens/s), the cores shared with other jobs (load average 8.8-10.5).
Expected result: (measured, quick) held-out bits per character 2.806 (validation) and
  2.700 (test) with the default lstm (0.41M parameters, 2.4e6 training FLOPs per token);
  a uniform guess is 8 bits, and the target is <= 3.0.
GPU: the full configs (20,000 steps of batch 64 x 256 bytes, about 1M or 5M parameters) are
  the GPU-sized runs; not measured here.
"""

from typing import Any

import ml_collections

from experiments.configs import common
from seqscale.studies import text_lm

# About 1M and about 5M parameters (``<model>_5m``), the sizes of the study
# (``seqscale.studies.text_lm.SIZES``; tests/test_text_lm.py counts them).
MODELS = {**text_lm.SIZES["1m"],
          **{f"{name}_5m": hp for name, hp in text_lm.SIZES["5m"].items()}}
# The quick run's model: a 1-layer LSTM of width 256 (about 0.4M parameters).
QUICK_HPARAMS = dict(in_features=64, hidden_features=256, num_layers=1)


def family(model: str) -> str:
  """The registry name of a ``MODELS`` key (``lstm_5m`` -> ``lstm``)."""
  return model[:-3] if model.endswith("_5m") else model


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The experiment. ``arg``: ``quick`` (the CPU-minutes variant) and/or a name in
  ``MODELS``, comma-separated, e.g. ``quick,transformer_lm``."""
  model, quick = common.parse_arg(arg, MODELS, default="lstm")
  named = bool(arg) and model in [a.strip() for a in arg.split(",")]
  hparams = QUICK_HPARAMS if quick and not named else MODELS[model]
  return experiment(family(model), hparams, quick)


def experiment(model: str, hparams: dict[str, Any], quick: bool) -> ml_collections.ConfigDict:
  """Byte-level language modelling of the stdlib with any model that steps."""
  c = common.base_config("python_stdlib", model, hparams,
                         length=256,  # training window T (bytes)
                         tokenizer="bytes")  # bytes (vocab 256) | chars
  c.task.update(num_train=10**9,  # training windows: more than there are = all (~43k)
                num_eval=256)  # held-out windows of T per split, spread over it
  c.batch_size, c.num_steps, c.eval_every = 64, 20_000, 2_000
  c.checkpoint_every = 2_000
  c.optimizer.update(learning_rate=2e-3, warmup_steps=200, final_fraction=0.1)
  if quick:
    c.task.update(length=64, num_eval=128)
    c.update(batch_size=32, num_steps=600, eval_every=0, log_every=100,
             checkpoint_every=600)
    c.optimizer.update(learning_rate=3e-3, warmup_steps=50)
  return c
