"""A small ConvNet for images (28x28x1, 32x32x3, ...): (conv3x3, norm, ReLU, 2x2 max pool) per
stage, then Dense logits. Channels come from the data; Keras' Conv2D defaults (glorot_uniform
kernels, zero biases, 'same' padding), so that the parity test can build the same model in Keras.

Convolutions are computed as im2col products by default (``Conv``): the 9 shifted views of the
padded input side by side, times the kernel as a (9 x in, out) matrix. Why: XLA's CPU backend runs
the backward convolutions (the kernel's and the input's gradients) many times slower inside a loop,
such as the epoch's scan, than in a program of their own (docs/performance.md), while products
run at full speed anywhere. The values are those of ``lax.conv_general_dilated`` (tested), the
products the same in number and size; ``im2col=False`` uses XLA's convolutions instead.

Normalization sits where ConvNets put it, between the convolution (then without a bias, which
a centering norm would cancel) and the activation. BatchNorm reduces over the batch and both
spatial axes (one mean per channel, as Keras' BatchNormalization on NHWC); LayerNorm over each
example's height, width and channels with a scale and bias per channel (GroupNorm with one group,
as in Wu & He, 2018); GroupNorm over groups of channels and the spatial axes.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnbench.models.mlp import glorot_uniform
from bnbench.models.norms import (
    CENTERING,
    KERAS_BN_MOMENTUM,
    check_common,
    compute_dtype,
    make_norm,
    positive_widths,
    require,
)


class Conv(nn.Module):
    """A 3x3 'same' convolution as one im2col product; flax.linen.Conv's variables (``kernel`` of
    shape (3, 3, in, out), ``bias``) and initialisation, so either can stand for the other."""

    features: int
    use_bias: bool = True
    dtype: jnp.dtype | None = None  # of the product (bfloat16: kernel and bias rounded to it); None as given

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, height, width, channels = x.shape
        kernel = self.param("kernel", glorot_uniform, (3, 3, channels, self.features), jnp.float32)
        if self.dtype is not None:
            x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        patches = jnp.concatenate([padded[:, i:i + height, j:j + width, :] for i in range(3) for j in range(3)],
                                  axis=-1)  # (n, h, w, 9 x channels), ordered as the kernel's (3, 3, in)
        y = (patches.reshape(-1, 9 * channels) @ kernel.reshape(9 * channels, self.features))
        y = y.reshape(n, height, width, self.features)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + (bias if self.dtype is None else bias.astype(self.dtype))
        return y


def _window_elements(x: jax.Array) -> tuple[jax.Array, ...]:
    """The four elements of each 2x2 window of (n, h, w, c), in row-major order, as four strided
    views (n, h/2, w/2, c). An odd last row or column belongs to no window, as in 'VALID' pooling."""
    x = x[:, :x.shape[1] // 2 * 2, :x.shape[2] // 2 * 2]
    return x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2: ``flax.linen.max_pool(x, (2, 2), strides=(2, 2))``, values
    and gradients (tested). Why not flax's: its backward is XLA's ``select_and_scatter_add``, which
    XLA's CPU backend runs as a slow window-by-window loop (docs/performance.md); here forward and
    backward are elementwise over strided views, which XLA fuses with their neighbours. As
    ``select_and_scatter_add`` does, the gradient goes to the first maximum of a window in row-major
    order, never split between ties. Two differences, both outside training's needs: a window
    holding NaN sends its gradient to its first NaN (flax's to another place), and, as a
    ``custom_vjp``, it has no forward-mode derivative (``jax.jvp``, ``jacfwd``)."""
    with jax.named_scope("max_pool"):  # so that a profile (bnbench profile) can name its kernels
        top_left, top_right, bottom_left, bottom_right = _window_elements(x)
        return jnp.maximum(jnp.maximum(top_left, top_right), jnp.maximum(bottom_left, bottom_right))


def _max_pool_forward(x):
    # Which element of each window is its first maximum (row-major: 0 1 / 2 3; NaN counts as the
    # maximum). An argmax, a reduction, is kept in memory for the backward pass; elementwise
    # comparisons would be fused into its loop over every pixel and recomputed there, with the
    # normalization and ReLU before them, four times over.
    with jax.named_scope("max_pool"):
        first = jnp.argmax(jnp.stack(_window_elements(x), axis=3), axis=3).astype(jnp.int8)
    return max_pool_2x2(x), (first, x.shape)


def _max_pool_backward(residuals, g):
    # Each window's gradient and first maximum broadcast to its four pixels (a reshape, no
    # interleaving copy), kept where the pixel's place in the window is the first maximum's.
    first, shape = residuals
    n, half_height, half_width, channels = g.shape
    with jax.named_scope("max_pool"):
        place = jnp.arange(4, dtype=jnp.int8).reshape(1, 1, 2, 1, 2, 1)
        gx = jnp.where(first[:, :, None, :, None, :] == place, g[:, :, None, :, None, :], jnp.zeros((), g.dtype))
        gx = gx.reshape(n, 2 * half_height, 2 * half_width, channels)
        return (jnp.pad(gx, ((0, 0), (0, shape[1] - gx.shape[1]), (0, shape[2] - gx.shape[2]), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_forward, _max_pool_backward)


class ConvNet(nn.Module):
    channels: Sequence[int] = (8, 16)
    num_classes: int = 10
    norm: str | None = None
    groups: int = 4
    bn_momentum: float = KERAS_BN_MOMENTUM
    eval_batch_size: int | None = None
    eval_stats: str = "moving"
    population_batches: int = 100
    ghost_batch: int | None = None
    im2col: bool = True
    bn_axis_name: str | None = None  # as MLP's
    precision: str = "float32"  # as MLP's

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        check_common(self)
        positive_widths("channels", self.channels)
        if x.ndim == 3:  # grayscale images come without a channel axis
            x = x[..., None]
        smallest = min(x.shape[1:3]) // 2 ** len(self.channels)
        require(smallest >= 1, f"channels={tuple(self.channels)!r}: {len(self.channels)} stages of 2x2 pooling leave "
                               f"nothing of {x.shape[1]}x{x.shape[2]} images; use at most "
                               f"{max(1, min(x.shape[1:3]).bit_length() - 1)} stages")
        dtype = compute_dtype(self.precision)
        if dtype is not None:
            x = x.astype(dtype)
        for i, width in enumerate(self.channels):
            use_bias = self.norm not in CENTERING
            if self.im2col:
                x = Conv(width, use_bias=use_bias, dtype=dtype)(x)
            else:
                x = nn.Conv(width, (3, 3), padding="SAME", kernel_init=glorot_uniform, use_bias=use_bias,
                            dtype=dtype)(x)
            if self.norm is not None:
                x = make_norm(self.norm, train, x, self.groups, f"convolution {i + 1}",
                              reduction_axes=(-3, -2, -1), momentum=self.bn_momentum,
                              axis_name=self.bn_axis_name, ghost_batch=self.ghost_batch,
                              precision=self.precision)(x)
            x = nn.relu(x)
            x = max_pool_2x2(x)
        x = x.reshape((x.shape[0], -1))
        logits = nn.Dense(self.num_classes, kernel_init=glorot_uniform, dtype=dtype)(x)
        return logits if dtype is None else logits.astype(jnp.float32)
