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

from experiments.configs import common

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
  model, quick = common.parse_arg(arg, MODELS, default="neural_gpu")
  c = common.base_config("binary_arith", model, MODELS[model],
                         problem="addition",  # addition | multiplication
                         length=20,  # maximum train bits n; evaluated at exactly n, 2n, 4n bits
                         long_bits=100)  # one more evaluation split at this many bits (0: none)
  c.task.num_eval = 500  # generated pairs per evaluation split
  c.num_steps, c.eval_every = 20_000, 5_000
  c.optimizer.update(name="adam", learning_rate=3e-3, warmup_steps=200)
  if quick:
    c.task.update(length=6,
                  long_bits=0,  # 100 bits takes 201 steps per example: minutes on a CPU
                  num_eval=200)
    c.model.hparams.update(in_features=16, hidden_features=16)
    c.update(num_steps=1_000, eval_every=0)
  return c
