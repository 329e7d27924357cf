"""The multilayer perceptrons of the Keras notebook, and the same MLP with other normalizations.

Every default that differs between Keras and Flax is spelled out here or in ``norms.py``; see
../shared/reference/FIDELITY.md.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnbench.models.norms import (
    CENTERING,
    KERAS_BN_MOMENTUM,
    check_common,
    compute_dtype,
    make_norm,
    positive_widths,
    require,
)

KERAS_LEAKY_RELU_SLOPE = 0.3  # Flax: 0.01
glorot_uniform = nn.initializers.glorot_uniform()  # Keras Dense default; Flax's is lecun_normal
he_normal = nn.initializers.he_normal()  # truncated at 2 sigma, as Keras' he_normal

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "leaky_relu": functools.partial(nn.leaky_relu, negative_slope=KERAS_LEAKY_RELU_SLOPE),
}
INITIALIZERS = {"glorot_uniform": glorot_uniform, "he_normal": he_normal}
PLACEMENTS = ("after_activation", "before_activation")


class MLP(nn.Module):
    """Flatten, optional input normalization, hidden Dense layers, Dense output logits.

    ``norm``: None, or a name of ``norms.NORMS``, placed ``after_activation`` (the notebook: Dense,
    activation, norm) or ``before_activation`` (the BN paper: Dense without bias, norm, activation).
    ``norm_inputs``: the notebook's BN model also normalizes the raw pixels. ``groups``: GroupNorm's
    group count, which must divide every normalized width. ``bn_momentum``: of BatchNorm's and Batch
    Renorm's moving statistics. ``eval_stats``: what evaluation normalizes with, ``moving`` (the
    moving averages, as Keras), ``batch`` (each evaluation batch's own statistics, in batches of
    ``eval_batch_size``, or of the training batch size where that is None) or ``population`` (the
    statistics of ``population_batches`` training batches, recomputed with the trained weights before
    each evaluation; ``engine.train.evaluate``). An ``eval_batch_size`` with ``eval_stats="moving"``
    means ``batch``, its spelling before ``eval_stats``. ``ghost_batch``: BatchNorm's and Batch
    Renorm's training statistics over consecutive groups of this many examples of each batch (None:
    the whole batch; ``norms.ghost_batch_norm``). ``bn_axis_name``: set by data-parallel training
    with synchronized batch statistics, the mesh axis their statistics are reduced over (a layout,
    not part of the variant).
    ``depth`` and ``width``: ``depth`` hidden layers of ``width`` units each instead of ``hidden``
    (``width`` alone: as many layers as ``hidden``, each that wide). ``precision``: float32, or
    bfloat16 products and activations (``config.PRECISIONS``; docs/settings.md).
    """

    hidden: Sequence[int] = (300, 100)
    num_classes: int = 10
    activation: str = "relu"
    hidden_init: str = "glorot_uniform"
    norm: str | None = None
    placement: str = "after_activation"
    norm_inputs: bool = False
    groups: int = 4
    bn_momentum: float = KERAS_BN_MOMENTUM
    eval_batch_size: int | None = None
    eval_stats: str = "moving"
    population_batches: int = 100
    ghost_batch: int | None = None
    bn_axis_name: str | None = None
    depth: int | None = None
    width: int | None = None
    precision: str = "float32"

    def layers(self) -> tuple[int, ...]:
        """The hidden layers' widths: ``hidden``, or ``depth`` layers of ``width``."""
        if self.depth is None and self.width is None:
            return tuple(self.hidden)
        return (self.width,) * (len(self.hidden) if self.depth is None else self.depth)

    def check_fields(self) -> None:
        check_common(self)
        positive_widths("hidden", self.hidden)
        require(self.depth is None or (isinstance(self.depth, int) and self.depth >= 1),
                f"depth={self.depth!r}: the hidden layers, 1 or more (as depth=8,width=256)")
        require(self.width is None or (isinstance(self.width, int) and self.width >= 1),
                f"width={self.width!r}: the units of each hidden layer, 1 or more (as depth=8,width=256)")
        require(self.depth is None or self.width is not None,
                f"depth={self.depth} needs width=N too: the units of each hidden layer (as depth={self.depth},"
                "width=256)")
        for field, allowed in (("activation", ACTIVATIONS), ("hidden_init", INITIALIZERS), ("placement", PLACEMENTS)):
            require(getattr(self, field) in allowed,
                    f"{field}={getattr(self, field)!r}: choose one of {', '.join(allowed)}")
        require(self.norm is not None or not self.norm_inputs,
                "norm_inputs=True needs a norm: set norm_inputs=False too")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        self.check_fields()

        def normalized(x, where):
            return make_norm(self.norm, train, x, self.groups, where, momentum=self.bn_momentum,
                             axis_name=self.bn_axis_name, ghost_batch=self.ghost_batch,
                             precision=self.precision)(x)

        activation = ACTIVATIONS[self.activation]
        before = self.norm is not None and self.placement == "before_activation"
        dtype = compute_dtype(self.precision)  # None: float32, flax's default, as before precision existed
        x = x.reshape((x.shape[0], -1))
        if dtype is not None:
            x = x.astype(dtype)
        if self.norm_inputs:
            x = normalized(x, "the input")
        for i, width in enumerate(self.layers()):
            x = nn.Dense(width, kernel_init=INITIALIZERS[self.hidden_init],
                         use_bias=not (before and self.norm in CENTERING), dtype=dtype)(x)
            if before:
                x = normalized(x, f"hidden layer {i + 1}")
            x = activation(x)
            if self.norm is not None and not before:
                x = normalized(x, f"hidden layer {i + 1}")
        logits = nn.Dense(self.num_classes, kernel_init=glorot_uniform, dtype=dtype)(x)
        return logits if dtype is None else logits.astype(jnp.float32)  # the loss in float32


def normalize(images: jax.Array) -> jax.Array:
    """uint8 pixels to float32 in [0, 1], as the notebook's ``X / 255.0``; done inside the step.
    Under ``jax.enable_x64`` float64: the tests' float64 references of the same steps."""
    return images.astype(jnp.result_type(float)) / 255.0
