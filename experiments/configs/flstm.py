r"""flstm / glstm: factorized and group LSTMs (Kuchaiev & Ginsburg 2017) on the running sum,
against the LSTM at the same width.

F-LSTM writes the gate matrix [(I + D), 4D] as a product of rank r (default D/4); G-LSTM
splits the layer into G independent LSTMs of width D/G. Both cut the parameters and FLOPs
of every step; neither shortens the recurrence (step t still waits for step t-1): see
`python -m experiments.flstm_timing` for FLOPs, time and sequential depth. The running
sum (mod 10) needs one counter in the state, which fits easily in either.

Command:
  python -m experiments.train --config=experiments/configs/flstm.py \
      --workdir=/tmp/flstm
  python -m experiments.train --config=experiments/configs/flstm.py:quick \
      --workdir=/tmp/flstm_quick
  # the models: flstm.py:<model> or :quick,<model>, <model> in MODELS (flstm, glstm,
  # lstm); any field: --config.<field>=<value>, e.g. --config.model.hparams.rank=4
Hardware: CPU, 2 cores (a GPU or TPU is faster).
Model: flstm unless the config argument names another.
Expected run time (2 shared CPU cores): full about 6 min; quick about 1 min (with data
  generation and compilation).
Expected result: full (flstm, r = 32): accuracy per position 1.000 at T = 64 and 256.
  quick: flstm (r = 16) 0.998 at T = 32, 0.999 at 64, 0.996 at 128; glstm (G = 4) 0.998,
  0.983, 0.918; lstm 1.000, 0.999, 0.997. Chance is 0.1 (cross-entropy ln 10 = 2.30).
"""

import ml_collections

# (registry name, constructor keywords besides the widths) per model; the config argument
# picks one (default "flstm").
MODELS = {
    "flstm": ("flstm", dict(rank=None)),  # rank r; None = hidden_features // 4
    "glstm": ("glstm", dict(num_groups=4)),  # G groups; widths must divide by G
    "lstm": ("lstm", dict()),  # the baseline at the same width
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The experiment. ``arg``: ``quick`` (the CPU-minute variant) and/or a name in ``MODELS``,
  comma-separated, e.g. ``quick,glstm``."""
  options = [a for a in (arg or "").split(",") if a]
  unknown = [a for a in options if a != "quick" and a not in MODELS]
  if unknown:
    raise ValueError(f"config argument {arg!r}: unknown {unknown}; allowed: quick, "
                     + ", ".join(MODELS))
  name, extra = MODELS[next((a for a in options if a in MODELS), "flstm")]

  c = ml_collections.ConfigDict()
  c.seed = 0  # parameter init, dropout and data order

  c.task = ml_collections.ConfigDict()
  c.task.name = "running_sum"  # seqscale.data task
  c.task.length = 64  # train length T; evaluated at T, 2T and 4T
  c.task.base = 10  # digits 0..9; target = running sum mod base
  c.task.num_train = 10_000  # generated training sequences
  c.task.num_eval = 1_000  # generated sequences per evaluation split
  c.task.data_dir = ""  # generated data; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets

  c.model = ml_collections.ConfigDict()
  c.model.name = name  # any seqscale.models name, or 'package.module:Class'
  c.model.hparams = ml_collections.ConfigDict()  # the model's constructor keywords
  c.model.hparams.in_features = 64  # token embedding width
  c.model.hparams.hidden_features = 128  # LSTM width D
  c.model.hparams.num_layers = 1
  for key, value in extra.items():
    c.model.hparams[key] = value
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
