r"""adding_problem (Hochreiter & Schmidhuber 1997, in the form of Le et al. 2015):
add the two marked values.

Inputs are [value, marker] pairs (features, linearly mapped to in_features); the
target is the sum of the two values whose marker is 1. Always predicting the mean
gives MSE 1/6 = 0.167, the baseline. A recurrent model knows the answer at the last
position, so pooling takes that one.

Command:
  python -m experiments.train --config=experiments/configs/adding_problem.py \
      --workdir=/tmp/adding_problem
  python -m experiments.train --config=experiments/configs/adding_problem.py:quick \
      --workdir=/tmp/adding_problem_quick
  # other models: adding_problem.py:<model> or :quick,<model> with <model> in MODELS
  # (e.g. :quick,lru); any field: --config.<field>=<value>
Hardware: CPU, 2 cores (a GPU or TPU is faster).
Model: lstm unless the config argument names another.
Expected run time (2 CPU cores): full about 10 min (estimated); quick about 30 s.
Expected result: full (estimated, not yet measured): test MSE < 0.01 at T = 200, far below
  the 0.167 baseline. quick (measured): test MSE about 0.0001 at T = 50, about 0.02
  at 2x and 0.1 at 4x (the baseline is 0.167 at every length).
"""

import ml_collections

# Constructor keywords per model; the config argument picks one (default "lstm").
MODELS = {
    "lstm": dict(in_features=64, hidden_features=128, num_layers=1),
    "gru": dict(in_features=64, hidden_features=128, num_layers=1),
    "lru": dict(in_features=64, hidden_features=128, num_layers=2),
    "transformer": dict(in_features=64, hidden_features=64, num_layers=2, num_heads=4,
                        causal=True),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The experiment. ``arg``: ``quick`` (the CPU-minute variant) and/or a name in ``MODELS``,
  comma-separated, e.g. ``quick,lru``."""
  options = [a for a in (arg or "").split(",") if a]
  unknown = [a for a in options if a != "quick" and a not in MODELS]
  if unknown:
    raise ValueError(f"config argument {arg!r}: unknown {unknown}; allowed: quick, "
                     + ", ".join(MODELS))
  model = next((a for a in options if a in MODELS), "lstm")

  c = ml_collections.ConfigDict()
  c.seed = 0  # parameter init, dropout and data order

  c.task = ml_collections.ConfigDict()
  c.task.name = "adding_problem"  # seqscale.data task
  c.task.length = 200  # sequence length T; evaluated at T, 2T and 4T
  c.task.num_train = 10_000  # generated training sequences
  c.task.num_eval = 1_000  # generated sequences per evaluation split
  c.task.data_dir = ""  # generated data; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets

  c.model = ml_collections.ConfigDict()
  c.model.name = model  # any seqscale.models name, or 'package.module:Class'
  c.model.hparams = ml_collections.ConfigDict(MODELS[model])  # constructor keywords
  c.model.pooling = "last"  # the answer is known at the last valid position

  c.batch_size = 64  # global batch, split over devices and hosts
  c.eval_batch_size = 100  # evaluation batch
  c.num_steps = 10_000  # training steps
  c.log_every = 100  # steps between metrics lines
  c.eval_every = 2_000  # steps between evaluations (0: only at the end)
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
    c.task.length = 50
    c.task.num_eval = 500
    c.model.hparams.hidden_features = 64
    c.batch_size = 32
    c.num_steps = 3_000
    c.eval_every = 0
  return c
