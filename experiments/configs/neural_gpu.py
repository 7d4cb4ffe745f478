r"""neural_gpu: the Neural GPU (Kaiser & Sutskever 2016) on long binary addition (or
multiplication), trained on numbers of up to 20 bits and evaluated on 20, 40, 80 and 100.

Convolutional GRUs over a 4-wide tape, applied as many times as the input is long, so the
carry can travel the whole number; the answer is read position by position (bit t of the
result, least significant first). The Extended Neural GPU (Kaiser & Bengio 2016) adds an
output tape and a decoder reading the outputs decided so far (:extended_neural_gpu;
teacher forced, as every seq2seq model here, so its accuracy is each bit given the right
lower bits).
Multiplication: --config.task.problem=multiplication (much harder: the papers needed a
length curriculum and parameter-sharing relaxation, which are not reproduced here).

Command:
  python -m experiments.train --config=experiments/configs/neural_gpu.py \
      --workdir=/tmp/neural_gpu
  python -m experiments.train --config=experiments/configs/neural_gpu.py:quick \
      --workdir=/tmp/neural_gpu_quick
  # other models: neural_gpu.py:<model> or :quick,<model> with <model> in MODELS
  # (e.g. :quick,extended_neural_gpu); any field: --config.<field>=<value>
Hardware: CPU, 2 cores for :quick; a GPU for the full run.
Model: neural_gpu unless the config argument names another.
Expected run time (2 CPU cores, shared with other jobs, load ~13): quick 6 min
  (:quick,extended_neural_gpu 11 min). The full run (T = 41 tape steps of 2 CGRUs per
  training example, 201 at 100 bits, 20k steps) is meant for a GPU; not measured yet.
Expected result: quick (trained on 1 to 6 bits for 1000 steps; per-bit accuracy / whole
  answers at 6 bits, then per-bit at 12 and 24 bits; chance 0.5): neural_gpu
  0.856 / 0.345, 0.563, 0.512; extended_neural_gpu 0.931 / 0.560, 0.537, 0.509. Both
  learn the short sums; neither generalises in length after 1000 steps (the papers
  trained far longer, with a length curriculum). Full: not measured yet.
"""

import ml_collections

# Constructor keywords per model; the config argument picks one (default "neural_gpu").
TAPE = dict(in_features=24,  # token embedding width
            hidden_features=24,  # tape channels C (the papers' 24 to 128)
            num_layers=2,  # CGRUs per step
            tape_width=4,  # columns of the mental image
            kernel_size=3,  # 3 x 3 convolutions over (length, width)
            cutoff=1.2)  # gates' sigmoid cutoff
MODELS = {
    "neural_gpu": dict(TAPE),  # per position: inputs -> targets
    "extended_neural_gpu": dict(TAPE),  # seq2seq: src, tgt_in -> tgt_out, output tape
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The experiment. ``arg``: ``quick`` (the CPU-minutes variant) and/or a name in
  ``MODELS``, comma-separated, e.g. ``quick,extended_neural_gpu``."""
  options = [a for a in (arg or "").split(",") if a]
  unknown = [a for a in options if a != "quick" and a not in MODELS]
  if unknown:
    raise ValueError(f"config argument {arg!r}: unknown {unknown}; allowed: quick, "
                     + ", ".join(MODELS))
  model = next((a for a in options if a in MODELS), "neural_gpu")

  c = ml_collections.ConfigDict()
  c.seed = 0  # parameter init and data order

  c.task = ml_collections.ConfigDict()
  c.task.name = "binary_arith"  # seqscale.data task
  c.task.problem = "addition"  # addition | multiplication
  c.task.length = 20  # maximum train bits n; evaluated at exactly n, 2n, 4n bits
  c.task.long_bits = 100  # one more evaluation split at this many bits (0: none)
  c.task.num_train = 10_000  # generated training pairs (1 to n bits each)
  c.task.num_eval = 500  # generated pairs per evaluation split
  c.task.data_dir = ""  # generated data; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets

  c.model = ml_collections.ConfigDict()
  c.model.name = model  # any seqscale.models name, or 'package.module:Class'
  c.model.hparams = ml_collections.ConfigDict(MODELS[model])  # constructor keywords
  c.model.pooling = "mean"  # unused: binary_arith is per position

  c.batch_size = 32  # global batch, split over devices and hosts
  c.eval_batch_size = 100  # evaluation batch
  c.num_steps = 20_000  # training steps
  c.log_every = 100  # steps between metrics lines
  c.eval_every = 5_000  # steps between evaluations (0: only at the end)
  c.checkpoint_every = 1_000  # steps between checkpoints (and always the last step)
  c.keep_checkpoints = 3  # checkpoints kept

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"  # adamw | adam | sgd
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
    c.task.length = 6
    c.task.long_bits = 0  # 100 bits takes 201 steps per example: minutes on a CPU
    c.task.num_eval = 200
    c.model.hparams.in_features = 16
    c.model.hparams.hidden_features = 16
    c.num_steps = 1_000
    c.eval_every = 0
    c.checkpoint_every = 1_000
  return c
