r"""F-LSTM and G-LSTM against the LSTM at the same width: FLOPs per step, measured time and
the sequential depth (``seqscale.studies.flstm_timing``).

  python -m experiments.flstm_timing --workdir=/tmp/flstm_timing
  python -m experiments.flstm_timing --workdir=/tmp/flstm_timing --width=1024 \
      --batch_size=64 --lengths=64,256

Hardware: any; CPU, 2 cores: about 40 s at the defaults (width 512, batch 32, T = 64 and
128, float32). Writes results.json, results.md (also printed) and flstm_timing.png.
Expected result (2 shared CPU cores): F-LSTM (r = D/4) does 0.31 and G-LSTM (G = 4) 0.26 of
the LSTM's forward FLOPs per step; measured time per step about 0.5-0.6x (F-LSTM) and
0.8-1.0x (G-LSTM: G small batched matmuls run less efficiently than one big one). The
program still has a scan of T steps for all three and the sequential depth grows by 8
primitives per step for the LSTM and G-LSTM and 9 for the F-LSTM (its two factor matmuls
are in a row): cheaper steps, the same serial chain.
"""

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_WIDTH = flags.DEFINE_integer("width", 512, "Hidden width D of every model.")
_IN = flags.DEFINE_integer("in_features", 0, "Input width I; 0 = width.")
_RANK = flags.DEFINE_integer("rank", 0, "F-LSTM rank r; 0 = width // 4.")
_GROUPS = flags.DEFINE_integer("num_groups", 4, "G-LSTM groups G.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size B.")
_LENGTHS = flags.DEFINE_list("lengths", ["64", "128"], "Sequence lengths T.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed runs per model (median, round-robin).")


def main(argv):
  del argv
  from seqscale.studies import flstm_timing  # pylint: disable=g-import-not-at-top
  from seqscale import outputs  # pylint: disable=g-import-not-at-top

  try:
    lengths = [int(t) for t in _LENGTHS.value]
  except ValueError:
    raise app.UsageError(f"--lengths={','.join(_LENGTHS.value)}; must be integers") from None
  settings = dict(width=_WIDTH.value, in_features=_IN.value or None, rank=_RANK.value or None,
                  num_groups=_GROUPS.value, batch_size=_BATCH.value, lengths=lengths,
                  repeats=_REPEATS.value)
  try:
    rows = flstm_timing.compare(**settings)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  print(flstm_timing.write(rows, _WORKDIR.value,
                           outputs.run_context(settings=settings, dtype="float32")))


if __name__ == "__main__":
  app.run(main)
