r"""copy_memory (Arjovsky, Shah & Bengio 2016): recall 10 symbols after a delay of T blanks.

Sequences of T + 20 tokens; every position counts. The memoryless baseline (blanks,
then a uniform guess over the 8 symbols) has cross-entropy 10 ln(8) / (T + 20).
A causal Transformer looks straight back T + 10 positions; an LSTM (:lstm) stays
near the baseline for a long while, as in the paper.

Command:
  python -m experiments.train --config=experiments/configs/copy_memory.py \
      --workdir=/tmp/copy_memory
  python -m experiments.train --config=experiments/configs/copy_memory.py:quick \
      --workdir=/tmp/copy_memory_quick
  # other models: copy_memory.py:<model> or :quick,<model> with <model> in MODELS
  # (e.g. :quick,lstm); any field: --config.<field>=<value>
Hardware: CPU, 2 cores (a GPU or TPU is faster).
Model: transformer unless the config argument names another.
Expected run time (2 CPU cores): full about 10 min (estimated); quick about 40 s.
Expected result: full (estimated, not yet measured): cross-entropy far below the baseline
  0.058 at T = 100. quick (measured): test accuracy 1.00 at T = 10 (baseline
  cross-entropy 0.69); the 2x split is not solved (about 0.54: the attention
  offset is learned for one T).
"""

import ml_collections

# Constructor keywords per model; the config argument picks one (default "transformer").
MODELS = {
    "transformer": dict(in_features=64, hidden_features=64, num_layers=2, num_heads=4,
                        causal=True),
    "lstm": dict(in_features=64, hidden_features=128, num_layers=1),
    "lru": dict(in_features=64, hidden_features=128, num_layers=2),
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
  c.task.name = "copy_memory"  # seqscale.data task
  c.task.length = 100  # the delay T (sequences of T + 20); evaluated at T, 2T and 4T
  c.task.num_train = 10_000  # generated training sequences
  c.task.num_eval = 1_000  # generated sequences per evaluation split
  c.task.data_dir = ""  # generated data; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets

  c.model = ml_collections.ConfigDict()
  c.model.name = model  # any seqscale.models name, or 'package.module:Class'
  c.model.hparams = ml_collections.ConfigDict(MODELS[model])  # constructor keywords
  c.model.pooling = "mean"  # unused: copy_memory is per position

  c.batch_size = 64  # global batch, split over devices and hosts
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
    c.task.length = 10
    c.task.num_eval = 500
    c.batch_size = 32
    c.num_steps = 2_000
    c.eval_every = 0
  return c
