"""The normalization layers, and ``make_norm``: a layer by name, as the models place them.

``BatchNorm`` is Keras' BatchNormalization, over any reduction axes (the batch for an MLP; the
batch and both spatial axes for a ConvNet), with a hand-written backward pass. Its values are those
of ``flax.linen.BatchNorm(momentum=0.99, epsilon=1e-3, use_fast_variance=False)``: biased two-pass
variance, moving statistics updated as ``m * moving + (1 - m) * batch``, and the same variable
names and shapes (params ``scale``/``bias``, batch_stats ``mean``/``var``).

Why not flax's BatchNorm: autodiff of the two-pass formula differentiates through the mean and the
variance separately, which XLA turns into about twice as many small kernels per step as the
closed-form gradient below; on a CPU, where a batch of 32 makes each kernel tiny, launching them
is a large part of the step. ``LayerNorm`` and ``GroupNorm`` get a closed-form backward for the
same reason (``standardize``); their values and variables are those of flax's layers of the same
names with Keras' epsilon (1e-3) and two-pass variance, and the Keras parity test holds them to
Keras' LayerNormalization and GroupNormalization. RMSNorm is flax's own, at epsilon 1e-3.

``BatchRenorm`` is Batch Renormalization (Ioffe, 2017, Algorithm 1).
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bnbench.config import PRECISIONS
from bnbench.errors import BnbenchError

# Keras' defaults, which differ from Flax's (see ../shared/reference/FIDELITY.md).
KERAS_BN_MOMENTUM = 0.99
KERAS_EPSILON = 1e-3  # Keras' BatchNormalization, LayerNormalization, GroupNormalization; Flax: 1e-5, 1e-6
# The collection into which BatchNorm and Batch Renorm sow each step's group statistics, where it is
# mutable (only while population statistics are collected: ``population_statistics``).
MOMENTS = "batch_moments"
# What evaluation normalizes BatchNorm's and Batch Renorm's inputs with (the model's ``eval_stats``).
EVAL_STATS = ("moving", "batch", "population")


def _sum(x: jax.Array, axis, keepdims: bool = False) -> jax.Array:
    """``jnp.sum``; but a bfloat16 input (``bfloat16-statistics``) is summed in bfloat16, where
    ``jnp.sum`` would accumulate it in float32 and round only the result."""
    if x.dtype != jnp.bfloat16:
        return jnp.sum(x, axis=axis, keepdims=keepdims)
    axes = tuple(a % x.ndim for a in (axis if isinstance(axis, (tuple, list)) else (axis,)))
    total = jax.lax.reduce(x, jnp.zeros((), x.dtype), jax.lax.add, axes)
    return jnp.expand_dims(total, axes) if keepdims else total


def _mean_of(x: jax.Array, axis, keepdims: bool = False) -> jax.Array:
    """``jnp.mean``, in bfloat16 for a bfloat16 input as ``_sum``."""
    if x.dtype != jnp.bfloat16:
        return jnp.mean(x, axis=axis, keepdims=keepdims)
    axes = tuple(a % x.ndim for a in (axis if isinstance(axis, (tuple, list)) else (axis,)))
    count = 1
    for a in axes:
        count *= x.shape[a]
    return _sum(x, axes, keepdims) / jnp.asarray(count, x.dtype)


def computed_in(precision: str, x: jax.Array) -> jax.Array:
    """The input a normalization computes on (``config.PRECISIONS``): under ``bfloat16`` the bfloat16
    activations upcast, so that its statistics and its normalization are float32 (the output is
    rounded back to bfloat16 by ``returned``); otherwise as they are (float32 throughout, or
    bfloat16 throughout under ``bfloat16-statistics``)."""
    return x.astype(jnp.float32) if precision == "bfloat16" else x


def returned(precision: str, y: jax.Array, dtype) -> jax.Array:
    """A normalization's output in the activations' type (``dtype``, its input's)."""
    return y if precision == "float32" else y.astype(dtype)


def in_type_of(x: jax.Array, *params: jax.Array) -> tuple[jax.Array, ...]:
    """Float32 parameters as a bfloat16 computation uses them (``bfloat16-statistics``: rounded to
    bfloat16, so that the arithmetic stays in bfloat16); unchanged otherwise."""
    return tuple(p.astype(x.dtype) if x.dtype == jnp.bfloat16 else p for p in params)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def batch_norm_train(x, scale, bias, epsilon, axes=(0,), axis_name=None):
    """Normalizes ``x`` over ``axes`` with its own statistics; returns y, mean and variance.

    With ``axis_name`` (a mesh axis over which the batch is split, inside ``shard_map``), the
    statistics are those of the whole batch, every shard's together ("synchronized" BatchNorm):
    the shards' means and then their mean squared deviations from the global mean, averaged over
    the axis (shards are of equal size), and the backward pass sums its two reductions over the
    axis too."""
    y, mean, var, _ = _forward(x, scale, bias, epsilon, axes, axis_name)
    return y, mean, var


def _mean(x, axes, axis_name):
    mean = _mean_of(x, axes)
    return mean if axis_name is None else jax.lax.pmean(mean, axis_name)


def _forward(x, scale, bias, epsilon, axes, axis_name):
    mean = _mean(x, axes, axis_name)
    centered = x - mean
    var = _mean(jnp.square(centered), axes, axis_name)  # two-pass, as Keras
    inv = jax.lax.rsqrt(var + epsilon)
    normalized = centered * inv
    return normalized * scale + bias, mean, var, (normalized, inv, scale)


def _fwd(x, scale, bias, epsilon, axes, axis_name):
    y, mean, var, residuals = _forward(x, scale, bias, epsilon, axes, axis_name)
    return (y, mean, var), residuals


def _bwd(epsilon, axes, axis_name, residuals, cotangents):
    # The batch statistics only feed the moving averages (and Batch Renorm's corrections), which
    # are not differentiated, so their cotangents are ignored.
    normalized, inv, scale = residuals
    dy = cotangents[0]
    n = 1
    for axis in axes:
        n *= dy.shape[axis]
    dbias = _sum(dy, axes)
    dscale = _sum(dy * normalized, axes)
    if axis_name is None:
        dx = (scale * inv) * (dy - (dbias + normalized * dscale) / n)
    else:
        # Every shard's output depends on every shard's input through the statistics. Each shard
        # differentiates its own loss; the training step then averages the parameters' gradients
        # over the axis, so scale and bias keep this shard's sums, and dx takes all shards'.
        total_bias, total_scale = jax.lax.psum((dbias, dscale), axis_name)
        n = n * jax.lax.psum(1, axis_name)
        dx = (scale * inv) * (dy - (total_bias + normalized * total_scale) / n)
    return dx, dscale, dbias


batch_norm_train.defvjp(_fwd, _bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def standardize(x, axes, epsilon):
    """``x`` minus its mean, over its standard deviation, both over ``axes`` (per example, for
    LayerNorm and GroupNorm), with the closed-form backward pass."""
    return _standardize(x, axes, epsilon)[0]


def _standardize(x, axes, epsilon):
    centered = x - _mean_of(x, axes, keepdims=True)
    inv = jax.lax.rsqrt(_mean_of(jnp.square(centered), axes, keepdims=True) + epsilon)  # two-pass
    normalized = centered * inv
    return normalized, (normalized, inv)


def _standardize_bwd(axes, epsilon, residuals, dnormalized):
    normalized, inv = residuals
    mean_grad = _mean_of(dnormalized, axes, keepdims=True)
    mean_projection = _mean_of(dnormalized * normalized, axes, keepdims=True)
    return (inv * (dnormalized - mean_grad - normalized * mean_projection),)


standardize.defvjp(lambda x, axes, epsilon: _standardize(x, axes, epsilon), _standardize_bwd)


def _scale_and_bias(module: nn.Module, normalized: jax.Array) -> jax.Array:
    features = normalized.shape[-1]
    scale, bias = in_type_of(normalized, module.param("scale", nn.initializers.ones, (features,), jnp.float32),
                             module.param("bias", nn.initializers.zeros, (features,), jnp.float32))
    return normalized * scale + bias


class LayerNorm(nn.Module):
    """Each example standardized over ``reduction_axes`` (the features; height, width and channels
    in a ConvNet), then a scale and bias per feature: flax.linen.LayerNorm's values and variables."""

    reduction_axes: tuple[int, ...] = (-1,)
    epsilon: float = KERAS_EPSILON
    precision: str = "float32"  # config.PRECISIONS: see computed_in

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        axes = tuple(a % x.ndim for a in self.reduction_axes)
        y = _scale_and_bias(self, standardize(computed_in(self.precision, x), axes, self.epsilon))
        return returned(self.precision, y, x.dtype)


# Up to this many groups, each is standardized as a slice of the features: XLA's CPU code for
# reductions over a (..., groups, width) reshape is slower (tests/test_fidelity.py has a step where
# it is also less exact), but a program grows by a slice, forward and backward, with every group.
SLICED_GROUPS = 8


def group_standardize(x: jax.Array, groups: int, epsilon: float) -> jax.Array:
    """``standardize`` over each group of consecutive features (and any spatial axes)."""
    if groups <= SLICED_GROUPS:
        return _sliced_group_standardize(x, groups, epsilon)
    grouped = x.reshape(x.shape[:-1] + (groups, x.shape[-1] // groups))
    axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)  # all but the batch and the group
    return standardize(grouped, axes, epsilon).reshape(x.shape)


def _group_slices(x, groups):
    width = x.shape[-1] // groups
    return [x[..., g * width:(g + 1) * width] for g in range(groups)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _sliced_group_standardize(x, groups, epsilon):
    return _sliced_forward(x, groups, epsilon)[0]


def _sliced_forward(x, groups, epsilon):
    axes = tuple(range(1, x.ndim))
    parts = [_standardize(part, axes, epsilon) for part in _group_slices(x, groups)]
    normalized = jnp.concatenate([n for n, _ in parts], axis=-1)
    return normalized, (normalized, [inv for _, (_, inv) in parts])


def _sliced_backward(groups, epsilon, residuals, dnormalized):
    normalized, invs = residuals
    axes = tuple(range(1, normalized.ndim))
    parts = [_standardize_bwd(axes, epsilon, (n, inv), g)[0]
             for n, inv, g in zip(_group_slices(normalized, groups), invs, _group_slices(dnormalized, groups))]
    return (jnp.concatenate(parts, axis=-1),)


_sliced_group_standardize.defvjp(_sliced_forward, _sliced_backward)


class GroupNorm(nn.Module):
    """Each example's features split into ``num_groups`` consecutive groups, each standardized over
    its features and any spatial axes, then a scale and bias per feature: flax.linen.GroupNorm's
    values and variables."""

    num_groups: int
    epsilon: float = KERAS_EPSILON
    precision: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        check_groups(self.num_groups, x.shape[-1], "its input")
        y = _scale_and_bias(self, group_standardize(computed_in(self.precision, x), self.num_groups, self.epsilon))
        return returned(self.precision, y, x.dtype)


def _all_but_last(x: jax.Array) -> tuple[int, ...]:
    return tuple(range(x.ndim - 1))


def ghost_batch_norm(x, scale, bias, epsilon, axes, axis_name=None, ghost_batch: int | None = None):
    """``batch_norm_train`` over consecutive groups of ``ghost_batch`` examples of the batch, each
    with its own statistics; returns y and each group's mean and variance (a leading group axis).

    The one mechanism behind every spelling of "the examples a BatchNorm's statistics span": the
    batch axis is split into groups and each group reduced on its own (here, on one device), then
    over ``axis_name`` or not (a data-parallel layout). A group is exactly one device's shard of
    ``--data-parallel B/G --batch-stats local``: the same function, vmapped over the groups instead
    of mapped over devices. A batch not a multiple of ``ghost_batch`` (the epoch's last, partial
    batch) ends in one smaller group of what is left; a batch of at most ``ghost_batch`` examples
    is one group, computed as ``batch_norm_train`` (so that None, or a group of the whole batch,
    is today's computation, op for op)."""
    n = x.shape[0]
    if ghost_batch is None or ghost_batch >= n:
        y, mean, var = batch_norm_train(x, scale, bias, epsilon, axes, axis_name)
        return y, mean[None], var[None]
    full = n // ghost_batch * ghost_batch

    def one_group(group):
        return batch_norm_train(group, scale, bias, epsilon, axes, axis_name)

    y, mean, var = jax.vmap(one_group)(x[:full].reshape(-1, ghost_batch, *x.shape[1:]))
    y = y.reshape(full, *x.shape[1:])
    if full < n:
        rest_y, rest_mean, rest_var = one_group(x[full:])
        y = jnp.concatenate([y, rest_y])
        mean, var = jnp.concatenate([mean, rest_mean[None]]), jnp.concatenate([var, rest_var[None]])
    return y, mean, var


def per_example(values: jax.Array, x: jax.Array, ghost_batch: int | None) -> jax.Array:
    """Each group's ``values`` (groups, features) broadcast to the rows of ``x`` its group holds."""
    if values.shape[0] == 1:
        return values[0]
    group = np.arange(x.shape[0]) // ghost_batch  # static: which group each example is in
    return values[group].reshape(x.shape[0], *([1] * (x.ndim - 2)), x.shape[-1])


def averaged_moving(momentum, moving: jax.Array, groups: jax.Array) -> jax.Array:
    """The moving statistic after a step whose groups had statistics ``groups``: each group's own
    update, averaged over the groups, as local data-parallel BatchNorm averages its devices'
    (``train.train_step``); one group is ``moving_average`` itself."""
    if groups.shape[0] == 1:
        return moving_average(momentum, moving, groups[0])
    return jnp.mean(moving_average(momentum, moving[None], groups), axis=0)


def population_statistics(batch_stats, moments, epsilon: float = KERAS_EPSILON):
    """``batch_stats`` with each BatchNorm's and Batch Renorm's moving statistics replaced by the
    population statistics of the batches whose group statistics ``moments`` holds (what the layers
    sowed into ``MOMENTS``: per layer, a mean and a variance of shape (batches, groups, features)).

    As precise BN (Wu & Johnson, 2021): the mean of the groups' means, and the variance of all their
    examples together, the mean of the groups' variances plus the variance of their means (exact
    for groups of equal size); Batch Renorm's standard deviation includes epsilon, as its own."""
    if "moments" in moments and not isinstance(moments["moments"], dict):
        (mean, var), = moments["moments"]
        mean, var = mean.reshape(-1, mean.shape[-1]), var.reshape(-1, var.shape[-1])
        population_mean = jnp.mean(mean, axis=0)
        population_var = jnp.mean(var, axis=0) + jnp.mean(jnp.square(mean - population_mean), axis=0)
        if "var" in batch_stats:
            return {**batch_stats, "mean": population_mean, "var": population_var}
        return {**batch_stats, "mean": population_mean, "std": jnp.sqrt(population_var + epsilon)}
    return {name: population_statistics(value, moments[name], epsilon) if name in moments else value
            for name, value in batch_stats.items()}


def check_ghost_batch(ghost_batch) -> None:
    require(ghost_batch is None or (isinstance(ghost_batch, int) and not isinstance(ghost_batch, bool)
                                    and ghost_batch >= 1),
            f"ghost_batch={ghost_batch!r}: must be 1 or more examples per group, or None for the whole batch")


def _updates_statistics(module: nn.Module) -> bool:
    """Moving statistics change only in training proper: not while initialising, and not when the
    model is applied with batch statistics but its batch_stats immutable (evaluation with batch
    statistics, ``bn_batch_stats_eval``)."""
    return not module.is_initializing() and module.is_mutable_collection("batch_stats")


def _sow_moments(module: nn.Module, mean: jax.Array, var: jax.Array) -> None:
    """The groups' statistics into ``MOMENTS``, only while population statistics are collected (the
    collection mutable outside initialisation): otherwise nothing is stored or computed."""
    if not module.is_initializing() and module.is_mutable_collection(MOMENTS):
        module.sow(MOMENTS, "moments", (mean, var))


def moving_average(momentum, moving: jax.Array, batch: jax.Array) -> jax.Array:
    """``momentum * moving + (1 - momentum) * batch``. ``momentum`` is a number or, where it is
    data (one per run of a sweep), the pair (momentum, 1 - momentum) with the complement taken in
    double precision on the host, as Python takes ``1 - 0.99``: so a run whose momentum is data
    computes what a run whose momentum is a constant does, to the bit."""
    keep, new = momentum if isinstance(momentum, tuple) else (momentum, 1 - momentum)
    return keep * moving + new * batch


def _batch_norm_variables(module: nn.Module, features: int):
    """The scale, bias and moving mean that BatchNorm and Batch Renorm share, named as flax's."""
    return (module.param("scale", nn.initializers.ones, (features,), jnp.float32),
            module.param("bias", nn.initializers.zeros, (features,), jnp.float32),
            module.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32))


class BatchNorm(nn.Module):
    """Batch Normalization over every axis but the last (features); Keras' defaults."""

    use_running_average: bool
    momentum: float = KERAS_BN_MOMENTUM
    epsilon: float = KERAS_EPSILON
    axis_name: str | None = None  # synchronized statistics over this mesh axis (see batch_norm_train)
    ghost_batch: int | None = None  # statistics over groups of this many examples (see ghost_batch_norm)
    precision: str = "float32"  # config.PRECISIONS: see computed_in; moving statistics are float32 always

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale, bias, moving_mean = _batch_norm_variables(self, x.shape[-1])
        moving_var = self.variable("batch_stats", "var", jnp.ones, (x.shape[-1],), jnp.float32)
        given = x
        x = computed_in(self.precision, x)
        if self.use_running_average:
            y = (x - moving_mean.value) * jax.lax.rsqrt(moving_var.value + self.epsilon) * scale + bias
            return returned(self.precision, y, given.dtype)
        y, mean, var = ghost_batch_norm(x, *in_type_of(x, scale, bias), self.epsilon, _all_but_last(x),
                                        self.axis_name, self.ghost_batch)
        _sow_moments(self, mean, var)
        if _updates_statistics(self):
            moving_mean.value = averaged_moving(self.momentum, moving_mean.value, mean)
            moving_var.value = averaged_moving(self.momentum, moving_var.value, var)
        return returned(self.precision, y, given.dtype)


def renorm_limits(step: jax.Array, r_max: float, d_max: float, warmup_steps: int, r_ramp_steps: int,
                  d_ramp_steps: int) -> tuple[jax.Array, jax.Array]:
    """The clipping limits after ``step`` updates: plain BatchNorm (r_max 1, d_max 0) for
    ``warmup_steps``, then each limit relaxed linearly to its final value over its ramp."""
    def ramp(length):
        return jnp.clip((step - warmup_steps) / length, 0.0, 1.0)

    return 1.0 + (r_max - 1.0) * ramp(r_ramp_steps), d_max * ramp(d_ramp_steps)


class BatchRenorm(nn.Module):
    """Batch Renormalization (Ioffe, 2017): BatchNorm whose training output is corrected towards
    the moving statistics by r = sigma_B / sigma and d = (mu_B - mu) / sigma, clipped to
    [1/r_max, r_max] and [-d_max, d_max], with gradients stopped through both. The moving mean and
    standard deviation (sigma, which includes epsilon, as the paper's) are what evaluation uses,
    so training and evaluation compute the same function once the limits no longer bind.

    The warm-up schedule keeps the paper's proportions (5k steps of BatchNorm, r_max to 3 over 40k
    steps, d_max to 5 over 25k) scaled by 1/5 to fit the notebook's 17,190 updates; ``steps``
    counts updates in batch_stats.
    """

    use_running_average: bool
    momentum: float = KERAS_BN_MOMENTUM
    epsilon: float = KERAS_EPSILON
    r_max: float = 3.0
    d_max: float = 5.0
    warmup_steps: int = 1000
    r_ramp_steps: int = 8000
    d_ramp_steps: int = 5000
    axis_name: str | None = None
    ghost_batch: int | None = None  # as BatchNorm's: r and d are then each group's own
    precision: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        given = x.dtype
        x = computed_in(self.precision, x)
        scale, bias, moving_mean = _batch_norm_variables(self, x.shape[-1])
        moving_std = self.variable("batch_stats", "std", jnp.ones, (x.shape[-1],), jnp.float32)
        steps = self.variable("batch_stats", "steps", jnp.zeros, (), jnp.float32)
        if self.use_running_average:
            return returned(self.precision, (x - moving_mean.value) / moving_std.value * scale + bias, given)
        # y = scale * (r * x_hat + d) + bias, x_hat the batch-normalized input: the closed-form
        # backward of BatchNorm gives x_hat's gradient, and r, d are constants to it.
        ones, zeros = in_type_of(x, jnp.ones_like(scale), jnp.zeros_like(bias))
        normalized, mean, var = ghost_batch_norm(x, ones, zeros, self.epsilon, _all_but_last(x), self.axis_name,
                                                 self.ghost_batch)
        _sow_moments(self, mean, var)
        std = jnp.sqrt(var + self.epsilon)
        r_max, d_max = renorm_limits(steps.value, self.r_max, self.d_max, self.warmup_steps,
                                     self.r_ramp_steps, self.d_ramp_steps)
        r = jax.lax.stop_gradient(jnp.clip(std / moving_std.value, 1.0 / r_max, r_max))
        d = jax.lax.stop_gradient(jnp.clip((mean - moving_mean.value) / moving_std.value, -d_max, d_max))
        if _updates_statistics(self):
            moving_mean.value = averaged_moving(self.momentum, moving_mean.value, mean)
            moving_std.value = averaged_moving(self.momentum, moving_std.value, std)
            steps.value = steps.value + 1
        return returned(self.precision, (normalized * per_example(r, x, self.ghost_batch)
                                         + per_example(d, x, self.ghost_batch)) * scale + bias, given)


def check_groups(groups: int, features: int, where: str) -> None:
    """A group count must divide the features it groups: one line saying which do, otherwise."""
    if groups < 1 or features % groups:
        fits = [g for g in range(1, features + 1) if features % g == 0]
        raise BnbenchError(f"group_norm: {groups} groups do not divide the {features} features of {where}: "
                           f"choose a group count that divides every normalized width of the model (divisors "
                           f"of {features}: {', '.join(map(str, fits[:10]))}{', ...' if len(fits) > 10 else ''}), "
                           "as in --variant group_norm:groups=4")


def require(condition: bool, message: str) -> None:
    """A model field that cannot be trained stops the run with one line (raised while tracing,
    so ``Variant.check`` meets it before any training)."""
    if not condition:
        raise BnbenchError(message)


def compute_dtype(precision: str):
    """The type of a model's products and activations: None (float32, flax's default, left as it
    was: float64 in the tests' float64 references) or bfloat16."""
    return None if precision == "float32" else jnp.bfloat16


def check_common(model) -> None:
    """The fields every model family has: the normalization, its groups and momentum, the classes,
    the evaluation batch, the precision."""
    require(model.precision in PRECISIONS,
            f"precision={model.precision!r}: choose one of {', '.join(PRECISIONS)}")
    require(model.norm is None or model.norm in NORMS,
            f"norm={model.norm!r}: choose one of {', '.join(NORMS)}, or None for no normalization")
    require(isinstance(model.groups, int) and model.groups >= 1, f"groups={model.groups!r}: must be 1 or more")
    require(isinstance(model.num_classes, int) and model.num_classes >= 2,
            f"num_classes={model.num_classes!r}: must be 2 or more")
    momentum = model.bn_momentum
    require(isinstance(momentum, tuple) or (isinstance(momentum, (int, float)) and 0 <= momentum < 1),
            f"bn_momentum={momentum!r}: must be a number from 0 to below 1")
    require(model.eval_batch_size is None or (isinstance(model.eval_batch_size, int) and model.eval_batch_size >= 1),
            f"eval_batch_size={model.eval_batch_size!r}: must be 1 or more, or None for the moving averages")
    check_ghost_batch(model.ghost_batch)
    require(model.eval_stats in EVAL_STATS,
            f"eval_stats={model.eval_stats!r}: choose one of {', '.join(EVAL_STATS)}")
    require(isinstance(model.population_batches, int) and model.population_batches >= 1,
            f"population_batches={model.population_batches!r}: must be 1 or more training batches")
    require(model.eval_stats != "population" or model.eval_batch_size is None,
            f"eval_batch_size={model.eval_batch_size!r} with eval_stats=population: population statistics are "
            "taken over training batches; drop eval_batch_size, or use eval_stats=batch")
    batch_statistics = model.norm in ("batch_norm", "batch_renorm")
    for field, default in (("ghost_batch", None), ("eval_stats", "moving")):
        require(batch_statistics or getattr(model, field) == default,
                f"{field}={getattr(model, field)!r}: norm={model.norm!r} has no batch statistics; {field} is a field "
                "of BatchNorm and Batch Renorm (norm='batch_norm' or 'batch_renorm')")


def positive_widths(name: str, widths) -> None:
    require(len(widths) >= 1 and all(isinstance(w, int) and w >= 1 for w in widths),
            f"{name}={tuple(widths)!r}: must be one or more whole numbers of at least 1")


NORMS = ("batch_norm", "batch_renorm", "layer_norm", "group_norm", "rms_norm")
CENTERING = {"batch_norm", "batch_renorm", "layer_norm", "group_norm"}  # a bias before them is redundant


def make_norm(kind: str, train: bool, x: jax.Array, groups: int, where: str,
              reduction_axes: Sequence[int] | None = None, momentum=KERAS_BN_MOMENTUM,
              axis_name: str | None = None, ghost_batch: int | None = None, precision: str = "float32"
              ) -> nn.Module:
    """The normalization ``kind`` for input ``x``, its statistics per example over ``reduction_axes``
    (LayerNorm; the last axis by default) or over the batch (BatchNorm, Batch Renorm).

    BatchNorm's placement and axes are the model's; everything else is Keras' defaults: epsilon
    1e-3 and two-pass variance for every layer that has a variance; ``momentum`` (Keras' 0.99) for the
    moving statistics of BatchNorm and Batch Renorm (see ``moving_average``). ``axis_name``: the
    mesh axis over which their statistics are synchronized (data-parallel training), if any;
    ``ghost_batch``: the examples each of their statistics spans (None: the whole batch).
    ``precision``: see ``computed_in`` (docs/settings.md).
    """
    if kind == "batch_norm":
        return BatchNorm(use_running_average=not train, momentum=momentum, axis_name=axis_name,
                         ghost_batch=ghost_batch, precision=precision)
    if kind == "batch_renorm":
        return BatchRenorm(use_running_average=not train, momentum=momentum, axis_name=axis_name,
                           ghost_batch=ghost_batch, precision=precision)
    if kind == "layer_norm":
        return LayerNorm(reduction_axes=tuple(reduction_axes or (-1,)), precision=precision)
    if kind == "group_norm":
        check_groups(groups, x.shape[-1], where)
        return GroupNorm(num_groups=groups, precision=precision)
    if kind == "rms_norm":
        if precision == "float32":
            return nn.RMSNorm(epsilon=KERAS_EPSILON)
        # flax's dtype: statistics in float32 (its default), or in bfloat16 without float32 reductions.
        return nn.RMSNorm(epsilon=KERAS_EPSILON, dtype=jnp.bfloat16,
                          force_float32_reductions=precision == "bfloat16")
    raise BnbenchError(f"unknown normalization {kind!r}: choose one of {', '.join(NORMS)}")
