"""Small model sizes: one table of constructor keywords per model family at a given width.

Experiment configs (``experiments/configs/*.py``) and studies (``seqscale.studies``) size
their small models here, so that "a 2-layer LRU" means the same model everywhere:

    hparams = presets.model_hparams("lru", width=128, in_features=64)
    model = models.create("lru", rngs=nnx.Rngs(0), **hparams)

A family's entry is a ``Preset``: its keywords besides the widths, plus those that follow
from the sequence length when one is given (``seq_len``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Preset:
  """One family's small size.

  Attributes:
    hparams: constructor keywords besides ``in_features`` and ``hidden_features``.
    for_length: keywords for sequences of ``seq_len`` positions, added when it is given.
    needs_length: whether the family cannot be sized without ``seq_len``.
  """

  hparams: dict[str, Any]
  for_length: Callable[[int], dict[str, Any]] | None = None
  needs_length: bool = False


def _wavenet_layers(seq_len: int) -> dict[str, Any]:
  # Kernel 2 with dilations 1, 2, 4, ...: L layers see 2^L positions, so L = ceil(log2 T).
  layers = max(1, math.ceil(math.log2(seq_len)))
  return dict(num_layers=layers, kernel_size=2, dilation_cycle=layers)


def _transformer_positions(seq_len: int) -> dict[str, Any]:
  return dict(max_length=max(2048, seq_len))


def _lru_long_range(seq_len: int) -> dict[str, Any]:
  del seq_len  # the LRU paper's long-range initialisation: |lambda| in [0.9, 0.999]
  return dict(mode="associative", r_min=0.9, r_max=0.999)


PRESETS: dict[str, Preset] = {
    "lstm": Preset(dict(num_layers=1)),
    "gru": Preset(dict(num_layers=1)),
    "flstm": Preset(dict(num_layers=1, rank=None)),  # rank None: hidden_features // 4
    "glstm": Preset(dict(num_layers=1, num_groups=4)),  # widths must divide by 4
    "mingru": Preset(dict(num_layers=2, mode="associative")),
    "lru": Preset(dict(num_layers=2), _lru_long_range),
    "transformer": Preset(dict(num_layers=2, num_heads=4, causal=True), _transformer_positions),
    "wavenet": Preset({}, _wavenet_layers, needs_length=True),
}


def model_hparams(model: str, width: int = 64, seq_len: int | None = None,
                  in_features: int | None = None) -> dict[str, Any]:
  """Constructor keywords of the small ``model`` of ``PRESETS`` at ``width``.

  Args:
    model: a family in ``PRESETS`` (its registry name).
    width: ``hidden_features`` D.
    seq_len: the sequence length T the model must cover. Given, WaveNet gets
      ceil(log2 T) layers of kernel 2 (its receptive field 2^L covers T), the Transformer
      positions for T (at least 2048) and the LRU its long-range initialisation (eigenvalues
      near the unit circle, |lambda| in [0.9, 0.999]).
    in_features: the width of the inputs the model reads; None: ``width``.

  Returns:
    A new dict of keywords for ``seqscale.models.create(model, ...)``.

  Raises:
    ValueError: for a family not in ``PRESETS`` (naming those that are), or WaveNet without
      ``seq_len``.
  """
  if model not in PRESETS:
    raise ValueError(f"no preset for model {model!r}; presets: {', '.join(PRESETS)}")
  preset = PRESETS[model]
  if seq_len is None and preset.needs_length:
    raise ValueError(f"model {model!r} needs seq_len: its depth follows the sequence length")
  hparams = dict(in_features=width if in_features is None else in_features,
                 hidden_features=width, **preset.hparams)
  if seq_len is not None and preset.for_length is not None:
    hparams.update(preset.for_length(seq_len))
  return hparams
