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

import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (results.json, PNGs).")
_SKIP = flags.DEFINE_bool("skip_training", False, "Draw only the connectivity (seconds).")
_TASK = flags.DEFINE_enum("task", "copy_memory", ["copy_memory", "algorithmic"],
                          "Task the Transformer is trained on for the attention maps.")
_STEPS = flags.DEFINE_integer("num_steps", None, "Training steps (default: the config's).")
_LENGTH = flags.DEFINE_integer("length", 32, "T of the connectivity pictures.")
_LAYERS = flags.DEFINE_integer("max_layers", 4, "Columns L = 1..max_layers.")
_WIDTH = flags.DEFINE_integer("width", 8, "D of the random stacks.")
_SEED = flags.DEFINE_integer("seed", 0, "Random weights and inputs of the stacks.")

_CONFIGS = {"copy_memory": ("copy_memory.py", "quick"),
            "algorithmic": ("algorithmic.py", "quick,transformer")}


def _fail(message: str, code: int) -> None:
  print("error: " + " ".join(str(message).split()), file=sys.stderr, flush=True)
  sys.exit(code)


def _config(task: str, num_steps: int | None):
  import importlib  # pylint: disable=g-import-not-at-top
  module, arg = _CONFIGS[task]
  config = importlib.import_module("experiments.configs." + module[:-3]).get_config(arg)
  if num_steps is not None:
    config.num_steps = num_steps
    config.checkpoint_every = min(config.checkpoint_every, num_steps)
  return config


def _labels(task: str, tokens) -> list[str]:
  if task == "copy_memory":  # symbols 1..8, blank 9, delimiter 10
    return [{9: "_", 10: ":"}.get(int(t), str(int(t))) for t in tokens]
  return [str(int(t)) for t in tokens]


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}", 2)
  for flag in (_LENGTH, _LAYERS, _WIDTH, _STEPS):
    if flag.value is not None and flag.value < 1:
      _fail(f"--{flag.name}={flag.value}: must be >= 1", 2)
  workdir = os.path.abspath(_WORKDIR.value)
  os.makedirs(workdir, exist_ok=True)
  try:
    results = _run(workdir)
  except ValueError as e:
    _fail(e, 1)
  from seqscale.studies import pictures  # pylint: disable=g-import-not-at-top
  md = pictures.markdown(results)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2, default=str)
  with open(os.path.join(workdir, "pictures.md"), "w") as f:
    f.write(md)
  print(md, flush=True)
  logging.info("wrote %s", workdir)


def _run(workdir: str):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from seqscale.studies import pictures  # pylint: disable=g-import-not-at-top
  from seqscale import outputs  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  table = pictures.plot_connectivity(
      os.path.join(workdir, "connectivity.png"), max_layers=_LAYERS.value, T=_LENGTH.value,
      width=_WIDTH.value, seed=_SEED.value)
  results = {"connectivity": {
      "T": _LENGTH.value, "width": _WIDTH.value, "seed": _SEED.value,
      "receptive_field_last_output": {k: v["receptive_field"] for k, v in table.items()},
      "layers_to_connect": {k: v["layers_to_connect"] for k, v in table.items()},
      "time_s": time.perf_counter() - start}}
  config = None
  if not _SKIP.value:
    from seqscale import train  # pylint: disable=g-import-not-at-top
    config = _config(_TASK.value, _STEPS.value)
    run_dir = os.path.join(workdir, _TASK.value)
    t0 = time.perf_counter()
    trained = train.train_and_evaluate(config, run_dir)
    model, step = train.restore_model(config, run_dir)
    batch = train.get_task(config.task.to_dict()).dataset("test", batch_size=1,
                                                          seed=config.seed)[0]
    weights = pictures.attention_weights(model.backbone, model.embed(batch["inputs"]),
                                         mask=batch["mask"])
    pictures.plot_attention_maps(
        os.path.join(workdir, "attention_maps.png"), weights,
        tokens=_labels(_TASK.value, batch["inputs"][0]),
        title=f"{_TASK.value}: causal Transformer after {step} steps, one test example")
    results["attention"] = {
        "task": _TASK.value, "checkpoint_step": step, "eval": trained["eval"],
        "train_time_s": trained["train_time_s"], "time_s": time.perf_counter() - t0,
        "inputs": batch["inputs"][0].tolist(),
        "entropy_per_layer_head_nats": [pictures.attention_entropy(w).round(3).tolist()
                                        for w in weights],
        # For each layer and head: the key each query attends to most.
        "argmax_key_per_query": [np.asarray(w[0]).argmax(-1).tolist() for w in weights]}
  results["context"] = outputs.run_context(
      seed=_SEED.value, dtype="float32",
      config=None if config is None else config.to_dict())
  results["wall_time_s"] = time.perf_counter() - start
  return results


if __name__ == "__main__":
  app.run(main)
