r"""moe: sparsely-gated mixture of experts (Shazeer et al. 2017) between stacked LSTMs, or
as the Transformer's feed-forward, on the running sum.

`lstm_moe`: LSTM -> h + MoE(h) -> LSTM, the MoE's E experts each a ReLU feed-forward of
width F, k of them per position chosen by noisy top-k gating, each expert taking at most
capacity_factor * k * N / E of a batch's N positions (the rest pass through the residual).
`transformer_moe`: a causal Transformer whose every second feed-forward is such a mixture.
Each MoE records Shazeer's load-balancing loss (`seqscale.models.moe.auxiliary_loss(model)`);
the trainer adds it to the objective only where it has the hook for it (see the README).
Experts can be sharded over a mesh axis: `seqscale.models.moe.shard_experts`.

Command:
  python -m experiments.train --config=experiments/configs/moe.py \
      --workdir=/tmp/moe
  python -m experiments.train --config=experiments/configs/moe.py:quick \
      --workdir=/tmp/moe_quick
  # the models: moe.py:<model> or :quick,<model>, <model> in MODELS (lstm_moe,
  # transformer_moe); any field: --config.<field>=<value>, e.g.
  # --config.model.hparams.num_experts=16
Hardware: CPU, 2 cores (a GPU or TPU is faster).
Model: lstm_moe unless the config argument names another.
Expected run time (2 shared CPU cores): full about 19 min; quick about 30 s (with data
  generation and compilation).
Expected result: full (lstm_moe): accuracy per position 1.000 at T = 64, 128 and 256.
  quick: lstm_moe 1.000 at T = 32, 64 and 128; transformer_moe (quick,transformer_moe) only
  about 0.50 at T = 32 (a 2-layer Transformer has to count and take the remainder).
  Chance is 0.1 (cross-entropy ln 10 = 2.30).
"""

import ml_collections

MOE = dict(num_experts=8, k=2, capacity_factor=2.0, importance_weight=0.1, load_weight=0.1)
# Constructor keywords per model; the config argument picks one (default "lstm_moe").
MODELS = {
    "lstm_moe": dict(num_layers=2, **MOE),  # LSTM -> MoE -> LSTM
    "transformer_moe": dict(num_layers=2, num_heads=4, causal=True, moe_every=2, **MOE),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The experiment. ``arg``: ``quick`` (the CPU-minute variant) and/or a name in ``MODELS``,
  comma-separated, e.g. ``quick,transformer_moe``."""
  options = [a for a in (arg or "").split(",") if a]
  unknown = [a for a in options if a != "quick" and a not in MODELS]
  if unknown:
    raise ValueError(f"config argument {arg!r}: unknown {unknown}; allowed: quick, "
                     + ", ".join(MODELS))
  model = next((a for a in options if a in MODELS), "lstm_moe")

  c = ml_collections.ConfigDict()
  c.seed = 0  # parameter init, gate noise, dropout and data order

  c.task = ml_collections.ConfigDict()
  c.task.name = "running_sum"  # seqscale.data task
  c.task.length = 64  # train length T; evaluated at T, 2T and 4T
  c.task.base = 10  # digits 0..9; target = running sum mod base
  c.task.num_train = 10_000  # generated training sequences
  c.task.num_eval = 1_000  # generated sequences per evaluation split
  c.task.data_dir = ""  # generated data; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets

  c.model = ml_collections.ConfigDict()
  c.model.name = model  # any seqscale.models name, or 'package.module:Class'
  c.model.hparams = ml_collections.ConfigDict(MODELS[model])  # constructor keywords
  c.model.hparams.in_features = 64  # token embedding width
  c.model.hparams.hidden_features = 128  # width D
  c.model.hparams.ff_features = 256  # each expert's hidden width F
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
    c.model.hparams.ff_features = 128
    c.batch_size = 32
    c.num_steps = 1_500
    c.eval_every = 0
  return c
