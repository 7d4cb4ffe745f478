r"""Pictures: which inputs each output depends on, and where a trained Transformer looks.

  python -m experiments.pictures --workdir=/tmp/pictures                  # train + draw
  python -m experiments.pictures --workdir=/tmp/pictures --skip_training  # connectivity only

1. ``connectivity.png``: |d y_t / d x_s| (summed over features, ``jax.jacfwd``) for residual
   stacks of L = 1..4 layers with random weights, T = 32, D = 8: causal self-attention,
   causal conv (kernel 3), dilated causal conv (kernel 2, dilations 1, 2, 4, ...) and an
   Elman RNN. Titles give the receptive field of the last output; row labels the layers
   needed before every output sees every earlier input.
2. ``attention_maps.png``: trains a causal 2-layer, 4-head Transformer on copy_memory
   (``experiments/configs/copy_memory.py:quick``, delay T = 10, sequences of 30) into
   ``WORKDIR/copy_memory`` (a second run resumes, i.e. only evaluates), restores its
   parameters and draws every layer's and head's attention weights on one test example.
   ``--task=algorithmic`` uses ``algorithmic.py:quick,transformer`` (reversal, decoder form).

Writes ``results.json`` (receptive fields per kind and L, layers to connect, the trained
model's accuracy, the run context), ``pictures.md`` (also printed) and the PNGs.

Hardware: CPU, 2 cores shared with other jobs (load average about 5 when measured).
Measured run time: --skip_training 35 s (user 23 s); the default run 3 min 20 s wall (the
  connectivity 30 s, training 2,000 steps 100 s plus 13 s compile, the restore and maps a
  few s); not measured on an idle machine.
Result (measured, seed 0): receptive field of the last output (of T = 32) after L = 1..4
  layers: attention 32 32 32 32, conv k=3 3 5 7 9 (2L + 1), dilated k=2 2 4 8 16 (2^L),
  RNN 32 32 32 32; every pair s <= t is connected at L = 1 (attention, RNN), 5 (dilated),
  16 (conv). Attention maps (copy_memory, test accuracy 1.00 at T = 10, 0.54 at 2x): layer 1
  spreads its weight (entropy 2.3-2.4 nats in all heads); in layer 2, heads 1 and 4
  (entropy 0.62 and 0.87 nats) the output positions 20..29 put their largest weight on the
  symbol positions 0..9, one sharp diagonal (query t reads key t - 20), while heads 2 and 3
  attend mostly to recent blanks.
"""

import importlib

from absl import flags

from experiments import cli
from seqscale.studies import pictures

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (results.json, PNGs).")
_SKIP = flags.DEFINE_bool("skip_training", False, "Draw only the connectivity (seconds).")
_TASK = flags.DEFINE_enum("task", "copy_memory", list(pictures.TASKS),
                          "Task the Transformer is trained on for the attention maps.")
_STEPS = flags.DEFINE_integer("num_steps", None, "Training steps (default: the config's).",
                              lower_bound=1)
_LENGTH = flags.DEFINE_integer("length", 32, "T of the connectivity pictures.", lower_bound=1)
_LAYERS = flags.DEFINE_integer("max_layers", 4, "Columns L = 1..max_layers.", lower_bound=1)
_WIDTH = flags.DEFINE_integer("width", 8, "D of the random stacks.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Random weights and inputs of the stacks.",
                             lower_bound=0)

# The trainer config of each task: (file in experiments/configs, its argument).
CONFIGS = {"copy_memory": ("copy_memory", "quick"),
           "algorithmic": ("algorithmic", "quick,transformer")}


def settings() -> pictures.Settings:
  """The study's settings from the flags; the trainer config from experiments/configs."""
  config = None
  if not _SKIP.value:
    module, arg = CONFIGS[_TASK.value]
    config = importlib.import_module(f"experiments.configs.{module}").get_config(arg)
  return pictures.Settings(length=_LENGTH.value, max_layers=_LAYERS.value, width=_WIDTH.value,
                           seed=_SEED.value, task=_TASK.value, train_config=config,
                           num_steps=_STEPS.value)


def main(s: pictures.Settings, workdir: str) -> None:
  print(pictures.run(s, workdir, progress=None)["markdown"], flush=True)


if __name__ == "__main__":
  cli.run(main, settings)
