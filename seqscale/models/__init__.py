"""Flax NNX models, one file per family, and the registry.

>>> from flax import nnx
>>> from seqscale import models
>>> lstm = models.create('lstm', in_features=8, hidden_features=16, rngs=nnx.Rngs(0))
"""

from seqscale.models.registry import AuxLoss, auxiliary_loss, create, lookup, names, register

# Importing a family module registers its models.
from seqscale.models import recurrent  # noqa: F401,E402
from seqscale.models import transformer  # noqa: F401,E402
from seqscale.models import wavenet  # noqa: F401,E402
from seqscale.models import bytenet  # noqa: F401,E402
from seqscale.models import convs2s  # noqa: F401,E402
from seqscale.models import linear_rnn  # noqa: F401,E402
from seqscale.models import memn2n  # noqa: F401,E402
from seqscale.models import neural_gpu  # noqa: F401,E402
from seqscale.models import lstm_attention  # noqa: F401,E402
from seqscale.models import factorized_lstm  # noqa: F401,E402
from seqscale.models import moe  # noqa: F401,E402

__all__ = ["AuxLoss", "auxiliary_loss", "create", "lookup", "names", "register"]
