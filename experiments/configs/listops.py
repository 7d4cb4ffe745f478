r"""listops (Nangia & Bowman 2018, as in Long Range Arena): evaluate nested MAX / MIN /
MED / SM expressions over digits; 10-way classification.

A Transformer encoder (non-causal) reads the whole expression; its outputs are
averaged over valid positions and classified. LRA reports about 37% test accuracy
for Transformers at length 2,000; chance is 10%.

Command:
  python -m experiments.train --config=experiments/configs/listops.py \
      --workdir=/tmp/listops
  python -m experiments.train --config=experiments/configs/listops.py:quick \
      --workdir=/tmp/listops_quick
  # other models: listops.py:<model> or :quick,<model> with <model> in MODELS
  # (e.g. :quick,lstm); any field: --config.<field>=<value>
Hardware: CPU, 2 cores (a GPU or TPU is faster).
Model: transformer unless the config argument names another.
Expected run time (2 CPU cores): full about 20 min (estimated); quick about 40 s.
Expected result: full (estimated, not yet measured): test accuracy around 0.4 at T = 256.
  quick (measured): test accuracy about 0.35 at T = 64, clearly above the 0.10
  chance.
"""

import ml_collections

# Constructor keywords per model; the config argument picks one (default "transformer").
MODELS = {
    "transformer": dict(in_features=64, hidden_features=64, num_layers=2, num_heads=4,
                        causal=False),  # an encoder: sees the whole sequence
    "lstm": dict(in_features=64, hidden_features=128, num_layers=1),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The experiment. ``arg``: ``quick`` (the CPU-minute variant) and/or a name in ``MODELS``,
  comma-separated, e.g. ``quick,lstm``."""
  options = [a for a in (arg or "").split(",") if a]
  unknown = [a for a in options if a != "quick" and a not in MODELS]
  if unknown:
    raise ValueError(f"config argument {arg!r}: unknown {unknown}; allowed: quick, "
                     + ", ".join(MODELS))
  model = next((a for a in options if a in MODELS), "transformer")

  c = ml_collections.ConfigDict()
  c.seed = 0  # parameter init, dropout and data order

  c.task = ml_collections.ConfigDict()
  c.task.name = "listops"  # seqscale.data task
  c.task.length = 256  # maximum expression length T; evaluated at T, 2T and 4T
  c.task.max_depth = 10  # nesting depth limit
  c.task.max_args = 10  # arguments per operator
  c.task.num_train = 10_000  # generated training sequences
  c.task.num_eval = 1_000  # generated sequences per evaluation split
  c.task.data_dir = ""  # generated data; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets

  c.model = ml_collections.ConfigDict()
  c.model.name = model  # any seqscale.models name, or 'package.module:Class'
  c.model.hparams = ml_collections.ConfigDict(MODELS[model])  # constructor keywords
  c.model.pooling = "mean"  # pooled task: mean over valid positions

  c.batch_size = 32  # global batch, split over devices and hosts
  c.eval_batch_size = 100  # evaluation batch
  c.num_steps = 5_000  # training steps
  c.log_every = 100  # steps between metrics lines
  c.eval_every = 1_000  # steps between evaluations (0: only at the end)
  c.checkpoint_every = 1_000  # steps between checkpoints (and always the last step)
  c.keep_checkpoints = 3  # checkpoints kept

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"  # adamw | adam | sgd
  c.optimizer.learning_rate = 1e-3  # peak learning rate
  c.optimizer.schedule = "cosine"  # cosine | rsqrt | constant (all with linear warmup)
  c.optimizer.warmup_steps = 500  # linear warmup steps
  c.optimizer.weight_decay = 0.0  # AdamW decay on matrices
  c.optimizer.clip_norm = 1.0  # global gradient-norm clip (0: off)

  c.parallel = ml_collections.ConfigDict()
  c.parallel.strategy = "jit"  # jit (mesh + NamedSharding) | pmap
  c.parallel.num_devices = 0  # devices used by jit in one process; 0: all
  c.parallel.coordinator_address = ""  # multi-host: 'host:port' of process 0 ('' = one host)
  c.parallel.num_processes = 0  # multi-host: number of processes
  c.parallel.process_id = -1  # multi-host: this process's index

  if "quick" in options:
    c.task.length = 64
    c.task.num_eval = 500
    c.num_steps = 800
    c.eval_every = 0
  return c
