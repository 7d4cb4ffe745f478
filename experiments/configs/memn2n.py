r"""memn2n: an end-to-end memory network (Sukhbaatar et al. 2015) on bAbI-like stories.

Three hops, adjacent weight tying, position and temporal encoding, answering "where is
mary" (one supporting fact) and "where is the football" (two) over stories of up to 10
sentences; evaluated on stories of up to 10, 20 and 40 sentences. The memory network
reads `story [B, M, J]` and `query [B, J]` (interface "qa"); a sequence model reads the
same story flattened, `w w w . w w . ... where is mary ?` (:lstm, answering from its last
position, is the recurrent comparison). The real bAbI where prepared:
--config.task.name=babi --config.task.task_id=2 --config.task.length=50 (and no
--config.task.problem; see seqscale/data/babi_like.py).

Command:
  python -m experiments.train --config=experiments/configs/memn2n.py \
      --workdir=/tmp/memn2n
  python -m experiments.train --config=experiments/configs/memn2n.py:quick \
      --workdir=/tmp/memn2n_quick
  # the LSTM: memn2n.py:lstm or :quick,lstm; any field: --config.<field>=<value>
Hardware: CPU, 2 cores (a GPU or TPU is faster).
Model: memn2n unless the config argument names another.
Expected run time (2 CPU cores, shared with other jobs, load ~13): full 52 s; quick 29 s
  (with data generation and compilation); :lstm 5 min, :quick,lstm 2 min.
Expected result (answer accuracy on stories of up to M / 2M / 4M sentences; chance 1/6):
  full 0.988 / 0.853 / 0.697; quick 0.962 / 0.764 / 0.682. Longer stories fall off
  because temporal-encoding rows for sentences further back than M were never trained
  (the paper's random-noise trick, empty memories added in training, is not reproduced).
  :lstm 0.518 / 0.407 / 0.377; :quick,lstm 0.18 / 0.20 / 0.18 (chance: the LSTM has not
  found the task in 1500 steps).
"""

import ml_collections

# Constructor keywords per model; the config argument picks one (default "memn2n").
MODELS = {
    "memn2n": dict(hidden_features=32,  # embedding width d
                   num_hops=3,  # memory reads K
                   memory_size=50,  # temporal-encoding rows (sentences counted back)
                   tying="adjacent",  # adjacent | layerwise
                   position_encoding=True,  # PE word weights (else bag of words)
                   temporal_encoding=True),  # learned vectors per sentence age
    "lstm": dict(in_features=64, hidden_features=128, num_layers=1),  # flat story
}
# Per model: (pooling, peak learning rate, gradient clip). The paper clips at 40.
TRAINING = {"memn2n": ("mean", 1e-2, 40.0), "lstm": ("last", 3e-3, 1.0)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The experiment. ``arg``: ``quick`` (the CPU-minute variant) and/or a name in ``MODELS``,
  comma-separated, e.g. ``quick,lstm``."""
  options = [a for a in (arg or "").split(",") if a]
  unknown = [a for a in options if a != "quick" and a not in MODELS]
  if unknown:
    raise ValueError(f"config argument {arg!r}: unknown {unknown}; allowed: quick, "
                     + ", ".join(MODELS))
  model = next((a for a in options if a in MODELS), "memn2n")
  pooling, learning_rate, clip_norm = TRAINING[model]

  c = ml_collections.ConfigDict()
  c.seed = 0  # parameter init and data order

  c.task = ml_collections.ConfigDict()
  c.task.name = "babi_like"  # seqscale.data task (babi: the real one, where prepared)
  c.task.problem = "mixed"  # one_fact | two_facts | mixed
  c.task.length = 10  # maximum story sentences M; evaluated at M, 2M and 4M
  c.task.num_train = 10_000  # generated training stories
  c.task.num_eval = 1_000  # generated stories per evaluation split
  c.task.data_dir = ""  # generated data; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets

  c.model = ml_collections.ConfigDict()
  c.model.name = model  # any seqscale.models name, or 'package.module:Class'
  c.model.hparams = ml_collections.ConfigDict(MODELS[model])  # constructor keywords
  c.model.pooling = pooling  # sequence models: 'last' reads the state after the question

  c.batch_size = 32  # global batch, split over devices and hosts
  c.eval_batch_size = 100  # evaluation batch
  c.num_steps = 6_000  # training steps
  c.log_every = 100  # steps between metrics lines
  c.eval_every = 2_000  # steps between evaluations (0: only at the end)
  c.checkpoint_every = 2_000  # steps between checkpoints (and always the last step)
  c.keep_checkpoints = 3  # checkpoints kept

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"  # adamw | adam | sgd
  c.optimizer.learning_rate = learning_rate  # peak learning rate
  c.optimizer.schedule = "cosine"  # cosine | rsqrt | constant (all with linear warmup)
  c.optimizer.warmup_steps = 200  # linear warmup steps
  c.optimizer.weight_decay = 0.0  # AdamW decay on matrices
  c.optimizer.clip_norm = clip_norm  # global gradient-norm clip (0: off)

  c.parallel = ml_collections.ConfigDict()
  c.parallel.strategy = "jit"  # jit (mesh + NamedSharding) | pmap
  c.parallel.num_devices = 0  # devices used by jit in one process; 0: all
  c.parallel.coordinator_address = ""  # multi-host: 'host:port' of process 0 ('' = one host)
  c.parallel.num_processes = 0  # multi-host: number of processes
  c.parallel.process_id = -1  # multi-host: this process's index

  if "quick" in options:
    c.task.num_train = 4_000
    c.task.num_eval = 500
    c.num_steps = 1_500
    c.eval_every = 0
    c.checkpoint_every = 1_500
  return c
