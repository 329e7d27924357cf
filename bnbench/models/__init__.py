"""The models bnbench trains, as flax.linen modules of (images, train) -> logits.

``norms.py`` holds the normalization layers, ``mlp.py`` the notebook's MLP (with any of them in
BatchNorm's places), ``convnet.py`` a small ConvNet. ``bnbench/variants.py`` names the variants.
"""

from bnbench.models.convnet import ConvNet
from bnbench.models.mlp import ACTIVATIONS, MLP, normalize
from bnbench.models.norms import NORMS, BatchNorm, BatchRenorm

__all__ = ["ACTIVATIONS", "BatchNorm", "BatchRenorm", "ConvNet", "MLP", "NORMS", "normalize"]
