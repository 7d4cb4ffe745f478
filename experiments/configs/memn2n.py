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

from experiments.configs import common

# Constructor keywords per model; the config argument picks one (default "memn2n").
MODELS = {
    "memn2n": dict(hidden_features=32,  # embedding width d
                   num_hops=3,  # memory reads K
                   memory_size=50,  # temporal-encoding rows (sentences counted back)
                   tying="adjacent",  # adjacent | layerwise
                   position_encoding=True,  # PE word weights (else bag of words)
                   temporal_encoding=True),  # learned vectors per sentence age
    **common.preset_models("lstm"),  # the flat story
}
# Per model: (pooling, peak learning rate, gradient clip). The paper clips at 40. Sequence
# models pool 'last': the state after the question.
TRAINING = {"memn2n": ("mean", 1e-2, 40.0), "lstm": ("last", 3e-3, 1.0)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The experiment. ``arg``: ``quick`` (the CPU-minute variant) and/or a name in ``MODELS``,
  comma-separated, e.g. ``quick,lstm``."""
  model, quick = common.parse_arg(arg, MODELS, default="memn2n")
  c = common.base_config("babi_like",  # babi: the real one, where prepared
                         model, MODELS[model],
                         problem="mixed",  # one_fact | two_facts | mixed
                         length=10)  # maximum story sentences M; evaluated at M, 2M and 4M
  c.model.pooling, c.optimizer.learning_rate, c.optimizer.clip_norm = TRAINING[model]
  c.num_steps, c.eval_every, c.checkpoint_every = 6_000, 2_000, 2_000
  c.optimizer.update(name="adam", warmup_steps=200)
  if quick:
    c.task.update(num_train=4_000, num_eval=500)
    c.update(num_steps=1_500, eval_every=0, checkpoint_every=1_500)
  return c
