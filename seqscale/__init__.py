"""seqscale: recurrence, convolution and attention, measured.

Layers (dependencies point down only; docs/ARCHITECTURE.md): ``experiments`` -> ``studies``
-> ``train`` -> ``analysis`` | ``parallel`` -> ``data`` -> ``models`` -> ``ops``;
``outputs`` and ``checks`` serve every layer.
"""

__version__ = "0.1.0"
