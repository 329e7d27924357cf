"""The multilayer perceptrons of the Keras notebook, as flax.linen modules.

Every default that differs between Keras and Flax is spelled out here; see FIDELITY in the README.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnbench.layers import BatchNorm

# Keras' defaults, which differ from Flax's (see ../shared/reference/FIDELITY.md).
KERAS_LEAKY_RELU_SLOPE = 0.3  # Flax: 0.01
KERAS_BN_MOMENTUM = 0.99
KERAS_BN_EPSILON = 1e-3  # Flax: 1e-5
glorot_uniform = nn.initializers.glorot_uniform()  # Keras Dense default; Flax's is lecun_normal
he_normal = nn.initializers.he_normal()  # truncated at 2 sigma, as Keras' he_normal

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "leaky_relu": functools.partial(nn.leaky_relu, negative_slope=KERAS_LEAKY_RELU_SLOPE),
}
INITIALIZERS = {"glorot_uniform": glorot_uniform, "he_normal": he_normal}
BN_PLACEMENTS = (None, "after_activation", "before_activation")


class MLP(nn.Module):
    """Flatten, optional input BN, hidden Dense layers, Dense output logits.

    ``bn``: None (no normalization), "after_activation" (the notebook: Dense, activation, BN) or
    "before_activation" (the BN paper: Dense without bias, BN, activation).
    """

    hidden: Sequence[int] = (300, 100)
    num_classes: int = 10
    activation: str = "relu"
    hidden_init: str = "glorot_uniform"
    bn: str | None = None
    bn_inputs: bool = False  # the notebook's BN model also normalizes the raw 784 pixels

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = functools.partial(BatchNorm, use_running_average=not train, momentum=KERAS_BN_MOMENTUM,
                                 epsilon=KERAS_BN_EPSILON)
        activation = ACTIVATIONS[self.activation]
        x = x.reshape((x.shape[0], -1))
        if self.bn_inputs:
            x = norm()(x)
        for width in self.hidden:
            x = nn.Dense(width, kernel_init=INITIALIZERS[self.hidden_init],
                         use_bias=self.bn != "before_activation")(x)
            if self.bn == "before_activation":
                x = norm()(x)
            x = activation(x)
            if self.bn == "after_activation":
                x = norm()(x)
        return nn.Dense(self.num_classes, kernel_init=glorot_uniform)(x)


def normalize(images: jax.Array) -> jax.Array:
    """uint8 pixels to float32 in [0, 1], as the notebook's ``X / 255.0``; done inside the step."""
    return images.astype(jnp.float32) / 255.0
