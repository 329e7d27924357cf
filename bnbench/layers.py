"""Batch Normalization as Keras computes it, with a hand-written backward pass.

The values are those of ``flax.linen.BatchNorm(momentum=0.99, epsilon=1e-3,
use_fast_variance=False)`` and of Keras' BatchNormalization: biased two-pass variance, moving
statistics updated as ``m * moving + (1 - m) * batch``. The variables have the same names and
shapes as flax's (params ``scale``/``bias``, batch_stats ``mean``/``var``), so checkpoints and
tests can use either.

Why not flax's layer: autodiff of the two-pass formula differentiates through the mean and the
variance separately, which XLA turns into about twice as many small kernels per step as the
closed-form gradient below. On a CPU, where a batch of 32 makes each kernel tiny, launching them
is a large part of the step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import flax.linen as nn


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon):
    """Normalizes ``x`` (batch, features) with its own statistics; returns y, mean and variance."""
    y, mean, var, _ = _forward(x, scale, bias, epsilon)
    return y, mean, var


def _forward(x, scale, bias, epsilon):
    mean = jnp.mean(x, axis=0)
    centered = x - mean
    var = jnp.mean(jnp.square(centered), axis=0)  # two-pass, as Keras
    inv = jax.lax.rsqrt(var + epsilon)
    normalized = centered * inv
    return normalized * scale + bias, mean, var, (normalized, inv, scale)


def _fwd(x, scale, bias, epsilon):
    y, mean, var, residuals = _forward(x, scale, bias, epsilon)
    return (y, mean, var), residuals


def _bwd(epsilon, residuals, cotangents):
    # The batch statistics only feed the moving averages, which are not differentiated,
    # so their cotangents are ignored.
    normalized, inv, scale = residuals
    dy = cotangents[0]
    n = dy.shape[0]
    dbias = jnp.sum(dy, axis=0)
    dscale = jnp.sum(dy * normalized, axis=0)
    dx = (scale * inv) * (dy - (dbias + normalized * dscale) / n)
    return dx, dscale, dbias


batch_norm_train.defvjp(_fwd, _bwd)


class BatchNorm(nn.Module):
    """Batch Normalization over the last axis of (batch, features) inputs; Keras' defaults."""

    use_running_average: bool
    momentum: float = 0.99
    epsilon: float = 1e-3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        moving_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        moving_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        if self.use_running_average:
            return (x - moving_mean.value) * jax.lax.rsqrt(moving_var.value + self.epsilon) * scale + bias
        y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
        if not self.is_initializing():
            moving_mean.value = self.momentum * moving_mean.value + (1 - self.momentum) * mean
            moving_var.value = self.momentum * moving_var.value + (1 - self.momentum) * var
        return y
