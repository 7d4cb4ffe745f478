r"""Nonlinear RNNs in parallel over time by Newton iterations (DEER, quasi-DEER, ELK-style).

  python -m experiments.parallel_rnn --workdir=/tmp/prnn_quick --quick
  python -m experiments.parallel_rnn --workdir=/tmp/prnn
  python -m experiments.parallel_rnn --workdir=/tmp/prnn_gpu --gpu_sweep   # on a GPU

Writes ``results.json`` (rows: exactness, depth, gain, time, training, trained),
``results.md`` (also printed) and ``depth.png``, ``gain.png``, ``time.png``; see
``seqscale.studies.parallel_rnn`` for what each row measures. ``elk`` is a simple damped
Newton here, not the Kalman-smoother ELK of Gonzalez et al. 2024.

Hardware: CPU, 2 cores shared with other jobs. Measured: --quick 1.7 min wall, 2.2 min CPU
(load ~2; 4.6 min wall at load ~14); full 28 min wall, 24 min CPU (load 5-16), 21 min of it
the exactness grid. --gpu_sweep (issue 14 part 6: D in {2, 8, 32, 64}, B in {1, 16}, T in
{1k, 16k, 64k}) is written for a GPU and has not been run (no GPU where it was written).
Expected result on CPU (full run): states within 1.8e-6 (float32) and 2.1e-15 (float64) of
lax.scan for deer and elk (quasi_deer 5.8e-6; its gradients use the diagonal and are off by
O(1)); depth x16.0 for lax.scan and x1.4-1.7 for the Newton methods as T grows 16x; k = 3-4
(deer) for contracting cells, DEER overflowing once the tanh RNN's Lyapunov exponent nears 0;
the Newton methods 30-170x slower than lax.scan on 2 cores. Bad input: one ``error:`` line and
exit code 2 (``experiments.cli``).
"""

import dataclasses

from absl import flags

from experiments import cli
from seqscale.studies import parallel_rnn

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (results.json, results.md, "
                               "plots, train/).")
_QUICK = flags.DEFINE_bool("quick", False, "Small sizes: a few minutes on 2 CPU cores.")
_GPU_SWEEP = flags.DEFINE_bool("gpu_sweep", False, "The GPU sweep: D in {2, 8, 32, 64}, "
                               "B in {1, 16}, T in {1k, 16k, 64k}; no training.")
_REPEATS = flags.DEFINE_integer("repeats", None, "Timed rounds per group (median).",
                                lower_bound=1)


def settings() -> parallel_rnn.Settings:
  """The study's settings from the flags."""
  if _QUICK.value and _GPU_SWEEP.value:
    raise ValueError("--quick and --gpu_sweep: choose one")
  base = (parallel_rnn.QUICK if _QUICK.value else
          parallel_rnn.GPU_SWEEP if _GPU_SWEEP.value else parallel_rnn.Settings())
  if _REPEATS.value is not None:
    base = dataclasses.replace(base, repeats=_REPEATS.value)
  return base


def main(s: parallel_rnn.Settings, workdir: str) -> None:
  out = parallel_rnn.run(s, workdir, progress=lambda line: print(line, flush=True))
  print("\n" + out["markdown"], flush=True)
  print(f"wrote {workdir}/results.json, results.md and plots "
        f"({out['seconds']['total']:.0f} s)", flush=True)


if __name__ == "__main__":
  cli.run(main, settings)
