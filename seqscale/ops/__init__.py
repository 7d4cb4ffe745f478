"""Pure JAX functions: recurrent cells and scans, attention, convolution.

No Flax here: everything is a function of arrays. Shapes follow the legend in
docs/DESIGN.md (B batch, T length, S source length, D width, H heads, K head dim,
W window, C channels).
"""
