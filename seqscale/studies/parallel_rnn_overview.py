"""The parallel-RNN study's row and plot for the overview (issue 14, part 5).

``section(workdir)`` has the shape of the overview's sections (``{"rows", "summary",
"plots"}``): the sequential depth of an LSTM against T under ``lax.scan`` and under DEER,
run with the iterations k that DEER needed at each T fixed (``fixed_iters``), beside k.
Shapes: T length, D width.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from seqscale.analysis import depth
from seqscale.ops import newton
from seqscale.ops import recurrent as ref
from seqscale.studies import parallel_rnn as pr
from seqscale.studies import parallel_rnn_report as report

Row = dict[str, Any]
PLOT = "parallel_rnn_depth.png"


def depth_rows(lengths: Sequence[int] = (64, 256, 1024, 4096), D: int = 8,
               progress: Callable[[str], None] = print) -> list[Row]:
  """``depth`` rows (``pr.ROW_KEYS``) of an LSTM (gain 0.5 weights, float32, B = 1) at each
  T: lax.scan's, and DEER's with k fixed at what one DEER solve needed at that T."""
  rows = []
  p = pr.cell_params("lstm", pr.INPUT_WIDTH, D, pr.EXACT_GAIN)
  for T in lengths:
    x = jax.ShapeDtypeStruct((1, T, pr.INPUT_WIDTH), jnp.float32)
    k = pr.iterations("lstm", D, T, "deer")
    deer = lambda x: newton.run("lstm", x, p, fixed_iters=k, on_fail="raise")[0]
    meta = dict(cell="lstm", T=T, D=D, B=1, dtype="float32")
    rows.append(pr.row("depth", method="sequential", iterations=0, sequential_depth=(
        depth.sequential_depth(lambda x: ref.run("lstm", x, p)[0], x)), **meta))
    rows.append(pr.row("depth", method="deer", iterations=k,
                       sequential_depth=depth.sequential_depth(deer, x), **meta))
    progress(f"LSTM T={T:,}: lax.scan depth {rows[-2]['sequential_depth']:,}, DEER depth "
             f"{rows[-1]['sequential_depth']:,} with k={k}")
  return rows


def section(workdir: str, lengths: Sequence[int] = (64, 256, 1024, 4096), D: int = 8,
            progress: Callable[[str], None] = print) -> Row:
  """``depth_rows``, their one-line summary and ``PLOT`` written to ``workdir``."""
  rows = depth_rows(lengths, D, progress)
  report.plot_overview(rows, os.path.join(workdir, PLOT))
  return {"rows": rows, "summary": report.overview_text(rows), "plots": [PLOT]}
