"""Pure JAX functions: recurrent cells and scans, attention, convolution.

No Flax here: everything is a function of arrays. The one piece not written in JAX is the
CPU's causal attention kernel (``native_attention``: C++ through XLA's FFI, compiled on
first use), which runs inside the blockwise kernel's differentiation rules. Shapes follow
the legend in docs/DESIGN.md (B batch, T length, S source length, D width, H heads, K head
dim, W window, C channels).
"""
