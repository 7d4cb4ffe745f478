"""seqscale: recurrence, convolution and attention, measured.

Layers (dependencies point down only): ``experiments`` -> ``train`` -> ``analysis``
-> ``parallel`` -> ``data`` -> ``models`` -> ``ops``.
"""

__version__ = "0.1.0"
