"""The PyTorch references of every op, under the public names and signatures (no validation; without
the public ops' output-layout option ``heads_last``: the references return contiguous tensors).

They are the CPU path of the public ops and what ``kernels="reference"`` runs in the model.
"""
from .attention.reference import mosaic_attention
from .leaky_average.reference import leaky_average
from .peek_ahead.reference import peek_ahead_value
from .persistent_memory.reference import persistent_memory

__all__ = ["mosaic_attention", "leaky_average", "peek_ahead_value", "persistent_memory"]
