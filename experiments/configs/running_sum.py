r"""running_sum: the running sum of digits (mod 10) at every position.

The seed's sequential addition. An LSTM needs one base-10 counter in its state;
attention has to count and take a remainder within a few parallel layers.

Command:
  python -m experiments.train --config=experiments/configs/running_sum.py \
      --workdir=/tmp/running_sum
  python -m experiments.train --config=experiments/configs/running_sum.py:quick \
      --workdir=/tmp/running_sum_quick
  # other models: running_sum.py:<model> or :quick,<model> with <model> in MODELS
  # (e.g. :quick,transformer); any field: --config.<field>=<value>
Hardware: CPU, 2 cores (a GPU or TPU is faster).
Model: lstm unless the config argument names another.
Expected run time (2 CPU cores): full 16 min measured on busy shared cores (less
  when idle); quick about 30 s (data generation and compilation included; 65 s
  on the busy cores).
Expected result: (measured) full: per-position accuracy 1.000 at length 64, 128 and 256.
  quick: 1.000 at the train length 32, 0.999 at 2x (64), 0.996 at 4x; chance is
  0.1 (cross-entropy baseline ln 10 = 2.30).
"""

import ml_collections

# Constructor keywords per model; the config argument picks one (default "lstm").
MODELS = {
    "lstm": dict(in_features=64, hidden_features=128, num_layers=1),
    "transformer": dict(in_features=64, hidden_features=64, num_layers=2, num_heads=4,
                        causal=True),
    "lru": dict(in_features=64, hidden_features=128, num_layers=2),
    # 8 dilated layers (kernel 2): a receptive field of 256 positions covers 4x the length.
    "wavenet": dict(in_features=64, hidden_features=128, num_layers=8),
    "mingru": dict(in_features=64, hidden_features=128, num_layers=2, mode="associative"),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The experiment. ``arg``: ``quick`` (the CPU-minute variant) and/or a name in ``MODELS``,
  comma-separated, e.g. ``quick,transformer``."""
  options = [a for a in (arg or "").split(",") if a]
  unknown = [a for a in options if a != "quick" and a not in MODELS]
  if unknown:
    raise ValueError(f"config argument {arg!r}: unknown {unknown}; allowed: quick, "
                     + ", ".join(MODELS))
  model = next((a for a in options if a in MODELS), "lstm")

  c = ml_collections.ConfigDict()
  c.seed = 0  # parameter init, dropout and data order

  c.task = ml_collections.ConfigDict()
  c.task.name = "running_sum"  # seqscale.data task
  c.task.length = 64  # train length T; evaluated at T, 2T and 4T
  c.task.base = 10  # digits 0..base-1; target = running sum mod base
  c.task.num_train = 10_000  # generated training sequences
  c.task.num_eval = 1_000  # generated sequences per evaluation split
  c.task.data_dir = ""  # generated data; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets

  c.model = ml_collections.ConfigDict()
  c.model.name = model  # any seqscale.models name, or 'package.module:Class'
  c.model.hparams = ml_collections.ConfigDict(MODELS[model])  # constructor keywords
  c.model.pooling = "mean"  # unused: running_sum is per position

  c.batch_size = 64  # global batch, split over devices and hosts
  c.eval_batch_size = 100  # evaluation batch
  c.num_steps = 5_000  # training steps
  c.log_every = 100  # steps between metrics lines
  c.eval_every = 1_000  # steps between evaluations (0: only at the end)
  c.checkpoint_every = 1_000  # steps between checkpoints (and always the last step)
  c.keep_checkpoints = 3  # checkpoints kept

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"  # adamw | adam | sgd
  c.optimizer.learning_rate = 3e-3  # peak learning rate
  c.optimizer.schedule = "cosine"  # cosine | rsqrt | constant (all with linear warmup)
  c.optimizer.warmup_steps = 200  # linear warmup steps
  c.optimizer.weight_decay = 0.0  # AdamW decay on matrices
  c.optimizer.clip_norm = 1.0  # global gradient-norm clip (0: off)

  c.parallel = ml_collections.ConfigDict()
  c.parallel.strategy = "jit"  # jit (mesh + NamedSharding) | pmap
  c.parallel.num_devices = 0  # devices used by jit in one process; 0: all
  c.parallel.coordinator_address = ""  # multi-host: 'host:port' of process 0 ('' = one host)
  c.parallel.num_processes = 0  # multi-host: number of processes
  c.parallel.process_id = -1  # multi-host: this process's index

  if "quick" in options:
    c.task.length = 32
    c.task.num_eval = 500
    c.model.hparams.in_features = 32
    c.model.hparams.hidden_features = 64
    c.batch_size = 32
    c.num_steps = 3_000
    c.eval_every = 0
  return c
