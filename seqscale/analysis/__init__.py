"""Measurements read off the program: FLOPs and memory (XLA), sequential depth, path length,
timing (compile time apart from run time).

Everything here analyses a function of arrays; a model is analysed through a pure
function the caller builds (e.g. ``lambda x: nnx.merge(graphdef, state)(x)``).
"""

from seqscale.analysis.cost import Memory
from seqscale.analysis.cost import compile_fn
from seqscale.analysis.cost import compiled_memory
from seqscale.analysis.cost import cost_summary
from seqscale.analysis.cost import flops
from seqscale.analysis.cost import fwd_bwd
from seqscale.analysis.cost import hlo_trip_counts
from seqscale.analysis.cost import jaxpr_flops
from seqscale.analysis.cost import memory
from seqscale.analysis.cost import trip_counts_in_hlo
from seqscale.analysis.cost import xla_cost
from seqscale.analysis.cost import xla_flops
from seqscale.analysis.depth import depth_transfer
from seqscale.analysis.depth import loop_trip_counts
from seqscale.analysis.depth import scan_lengths
from seqscale.analysis.depth import sequential_depth
from seqscale.analysis.paths import COMPUTE
from seqscale.analysis.paths import MIXING
from seqscale.analysis.paths import PathLengths
from seqscale.analysis.paths import max_path_length
from seqscale.analysis.paths import path_length_by_layers
from seqscale.analysis.paths import path_length_by_mixing
from seqscale.analysis.paths import reachability
from seqscale.analysis.timing import Candidate
from seqscale.analysis.timing import Timing
from seqscale.analysis.timing import measure_group
from seqscale.analysis.timing import peak_bytes
from seqscale.analysis.timing import time_fn
from seqscale.analysis.timing import time_fresh
