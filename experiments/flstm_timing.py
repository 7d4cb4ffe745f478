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

from absl import flags

from experiments import cli
from seqscale.studies import flstm_timing

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
_WIDTH = flags.DEFINE_integer("width", 512, "Hidden width D of every model.", lower_bound=1)
_IN = flags.DEFINE_integer("in_features", None, "Input width I (default: --width).",
                           lower_bound=1)
_RANK = flags.DEFINE_integer("rank", None, "F-LSTM rank r (default: width // 4).",
                             lower_bound=1)
_GROUPS = flags.DEFINE_integer("num_groups", 4, "G-LSTM groups G.", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size B.", lower_bound=1)
_LENGTHS = cli.DEFINE_integer_list("lengths", [64, 128], "Sequence lengths T.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed runs per model (median, round-robin).",
                                lower_bound=1)


def settings() -> flstm_timing.Settings:
  """The study's settings from the flags."""
  return flstm_timing.Settings(
      width=_WIDTH.value, in_features=_IN.value, rank=_RANK.value, num_groups=_GROUPS.value,
      batch_size=_BATCH.value, lengths=tuple(_LENGTHS.value), repeats=_REPEATS.value)


def main(s: flstm_timing.Settings, workdir: str) -> None:
  print(flstm_timing.run(s, workdir, progress=None)["markdown"], flush=True)


if __name__ == "__main__":
  cli.run(main, settings)
