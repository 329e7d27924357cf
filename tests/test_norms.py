"""The layers Keras 3 lacks, held to independent computations: BatchNorm over a ConvNet's axes, and
the closed-form backward of LayerNorm and GroupNorm (flax's own layers, differentiated by autodiff),
Batch Renormalization (NumPy, the paper's equations), evaluation with batch statistics
(a NumPy forward pass), and the ConvNet's im2col convolution (lax.conv_general_dilated)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnbench.engine import train
from bnbench.errors import BnbenchError
from bnbench.models import BatchNorm, BatchRenorm, variants
from bnbench.models.convnet import Conv, max_pool_2x2
from bnbench.models.norms import GroupNorm, LayerNorm, renorm_limits

EPS, MOMENTUM = 1e-3, 0.99


def test_batchnorm_over_batch_and_space_matches_flax_values_gradients_and_statistics():
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 5, 5, 3)) * 3 + 20
    reference = nn.BatchNorm(use_running_average=False, momentum=MOMENTUM, epsilon=EPS, use_fast_variance=False)
    variables = reference.init(jax.random.PRNGKey(0), x)
    params = {"scale": jnp.array([0.5, 1.0, 2.0]), "bias": jnp.array([-1.0, 0.0, 1.0])}

    def loss(module, params, x):
        y, updates = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                  mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y) * jnp.arange(3)), (y, updates["batch_stats"])

    (_, (y_ref, stats_ref)), grads_ref = jax.value_and_grad(
        lambda p, x: loss(reference, p, x), argnums=(0, 1), has_aux=True)(params, x)
    (_, (y, stats)), grads = jax.value_and_grad(
        lambda p, x: loss(BatchNorm(use_running_average=False), p, x), argnums=(0, 1), has_aux=True)(params, x)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves((stats, grads)), jax.tree.leaves((stats_ref, grads_ref))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape, ours, flax_layer", [
    ((32, 300), LayerNorm(), nn.LayerNorm(epsilon=EPS, use_fast_variance=False)),
    ((32, 300), GroupNorm(num_groups=4), nn.GroupNorm(num_groups=4, epsilon=EPS, use_fast_variance=False)),
    ((4, 6, 6, 8), LayerNorm(reduction_axes=(-3, -2, -1)),
     nn.LayerNorm(epsilon=EPS, use_fast_variance=False, reduction_axes=(-3, -2, -1), feature_axes=-1)),
    ((4, 6, 6, 8), GroupNorm(num_groups=2), nn.GroupNorm(num_groups=2, epsilon=EPS, use_fast_variance=False)),
    ((4, 6, 6, 8), GroupNorm(num_groups=8), nn.GroupNorm(num_groups=8, epsilon=EPS, use_fast_variance=False)),
    ((32, 300), GroupNorm(num_groups=1), nn.GroupNorm(num_groups=1, epsilon=EPS, use_fast_variance=False)),
    ((32, 300), GroupNorm(num_groups=20), nn.GroupNorm(num_groups=20, epsilon=EPS, use_fast_variance=False)),
], ids=["mlp-layer", "mlp-group", "conv-layer", "conv-group", "conv-group-per-channel", "mlp-one-group",
        "mlp-20-groups-reshaped"])
def test_layer_and_group_norm_closed_form_backward_matches_flax_autodiff(shape, ours, flax_layer):
    x = jax.random.normal(jax.random.PRNGKey(1), shape) * 3 + 5
    variables = flax_layer.init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(0), x)) == jax.tree.map(jnp.shape, variables)
    variables = jax.tree.map(lambda v: v + 0.1 * jax.random.normal(jax.random.PRNGKey(2), v.shape), variables)
    weights = jax.random.normal(jax.random.PRNGKey(3), shape)

    def loss(module):
        return lambda variables, x: jnp.sum(jnp.sin(module.apply(variables, x)) * weights)

    np.testing.assert_allclose(ours.apply(variables, x), flax_layer.apply(variables, x), rtol=1e-5, atol=1e-5)
    grads = jax.grad(loss(ours), argnums=(0, 1))(variables, x)
    grads_ref = jax.grad(loss(flax_layer), argnums=(0, 1))(variables, x)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)


# --- Batch Renormalization: Ioffe (2017), Algorithm 1, in NumPy ----------------------------------

def renorm_numpy(x, gamma, beta, mu, sigma, r_max, d_max):
    """Training output, the paper's r and d, and the updated moving mean and sigma."""
    mu_b = x.mean(0)
    sigma_b = np.sqrt(((x - mu_b) ** 2).mean(0) + EPS)
    r = np.clip(sigma_b / sigma, 1 / r_max, r_max)
    d = np.clip((mu_b - mu) / sigma, -d_max, d_max)
    x_hat = (x - mu_b) / sigma_b * r + d
    alpha = 1 - MOMENTUM
    return gamma * x_hat + beta, x_hat, r, mu + alpha * (mu_b - mu), sigma + alpha * (sigma_b - sigma)


def renorm_input_gradient(x, gamma, r, dy):
    """dL/dx with r and d held constant (the paper's gradients stop through them)."""
    n = x.shape[0]
    mu_b = x.mean(0)
    sigma_b = np.sqrt(((x - mu_b) ** 2).mean(0) + EPS)
    normalized = (x - mu_b) / sigma_b
    g = dy * gamma * r  # the gradient reaching x_hat / sigma_B's normalized input
    return (g - g.sum(0) / n - normalized * (g * normalized).sum(0) / n) / sigma_b


@pytest.mark.parametrize("steps", [0, 6000, 20000])  # warm-up (plain BN), part-way, limits at r_max 3, d_max 5
def test_batch_renorm_follows_the_papers_equations(steps):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((32, 4)) * [0.5, 1, 3, 8] + [0, 2, -1, 9]).astype(np.float32)
    gamma, beta = np.array([1.0, 0.5, 2.0, 1.5], np.float32), np.array([0.0, 1.0, -1.0, 0.5], np.float32)
    mu, sigma = np.array([0.1, 1.0, 3.0, 0.0], np.float32), np.array([0.8, 1.0, 0.5, 2.0], np.float32)
    r_max, d_max = (float(v) for v in renorm_limits(jnp.float32(steps), 3.0, 5.0, 1000, 8000, 5000))
    layer = BatchRenorm(use_running_average=False)
    params = {"scale": jnp.asarray(gamma), "bias": jnp.asarray(beta)}
    stats = {"mean": jnp.asarray(mu), "std": jnp.asarray(sigma), "steps": jnp.float32(steps)}
    dy = rng.standard_normal(x.shape).astype(np.float32)

    def loss(params, x):
        y, updates = layer.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
        return jnp.sum(y * dy), (y, updates["batch_stats"])

    (_, (y, new)), (dparams, dx) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, jnp.asarray(x))
    y_np, x_hat, r, mu_new, sigma_new = renorm_numpy(x, gamma, beta, mu, sigma, r_max, d_max)
    if steps == 0:
        assert (r_max, d_max) == (1.0, 0.0) and np.all(r == 1)  # warm-up: plain BatchNorm
    else:
        assert np.any((r == r_max) | (r == 1 / r_max)) and np.any(r != 1)  # the clipping is exercised
    np.testing.assert_allclose(y, y_np, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new["mean"], mu_new, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(new["std"], sigma_new, rtol=1e-6, atol=1e-6)
    assert float(new["steps"]) == steps + 1
    np.testing.assert_allclose(dparams["scale"], (dy * x_hat).sum(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dparams["bias"], dy.sum(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, renorm_input_gradient(x, gamma, r, dy), rtol=1e-4, atol=1e-5)
    # Evaluation: the moving mean and sigma.
    y_eval = BatchRenorm(use_running_average=True).apply({"params": params, "batch_stats": stats}, jnp.asarray(x))
    np.testing.assert_allclose(y_eval, gamma * (x - mu) / sigma + beta, rtol=1e-5, atol=1e-5)


def test_renorm_limits_relax_linearly_after_the_warm_up():
    limits = [tuple(float(v) for v in renorm_limits(jnp.float32(t), 3.0, 5.0, 1000, 8000, 5000))
              for t in (0, 1000, 5000, 6000, 9000, 17190)]
    assert limits == [(1.0, 0.0), (1.0, 0.0), (2.0, 4.0), (2.25, 5.0), (3.0, 5.0), (3.0, 5.0)]


# --- Evaluation with each batch's own statistics ---------------------------------------------------

def mlp_numpy_batch_stats(params, images):
    """seed_bn's forward pass in NumPy with each BN using its batch's statistics."""
    def bn(x, p):
        mean = x.mean(0)
        return (x - mean) / np.sqrt(((x - mean) ** 2).mean(0) + EPS) * p["scale"] + p["bias"]

    p = jax.tree.map(np.asarray, params)
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    x = bn(x, p["BatchNorm_0"])
    for i in (0, 1):
        x = bn(np.maximum(x @ p[f"Dense_{i}"]["kernel"] + p[f"Dense_{i}"]["bias"], 0), p[f"BatchNorm_{i + 1}"])
    return x @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]


@pytest.mark.slow
def test_batch_statistics_evaluation_uses_each_batch_of_32_and_leaves_the_moving_averages_alone():
    model = variants.get("bn_batch_stats_eval").model
    assert model.eval_batch_size == 32
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (100, 28, 28)).astype(np.uint8)  # 3 batches of 32, then one of 4
    labels = rng.integers(0, 10, 100).astype(np.int32)
    state = train.initializer(model, (28, 28))(jax.random.PRNGKey(0))
    # Moving averages far from the batch statistics: an evaluation that used them would differ.
    state = state.replace(batch_stats=jax.tree.map(lambda v: v + 3.0, state.batch_stats))
    result = train.evaluate(model, state, jnp.asarray(images), jnp.asarray(labels))
    losses, correct = [], 0
    for start in range(0, 100, 32):
        logits = mlp_numpy_batch_stats(state.params, images[start:start + 32])
        log_probs = logits - logits.max(1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
        losses += list(-log_probs[np.arange(len(logits)), labels[start:start + 32]])
        correct += int(np.sum(logits.argmax(1) == labels[start:start + 32]))
    np.testing.assert_allclose(float(result["loss"]), np.mean(losses), rtol=1e-4)
    assert float(result["accuracy"]) == pytest.approx(correct / 100)
    with_moving = train.evaluate(variants.get("seed_bn").model, state, jnp.asarray(images), jnp.asarray(labels))
    assert abs(float(with_moving["loss"]) - float(result["loss"])) > 0.01


@pytest.mark.slow
def test_batch_statistics_evaluation_trains_exactly_as_seed_bn():
    from bnbench.data.synthetic import synthetic_dataset

    data = train.DeviceData.from_dataset(synthetic_dataset(train=320, validation=64, test=64))
    results = [train.train(variants.get(name).model, train.Protocol(epochs=1), data, [0])
               for name in ("seed_bn", "bn_batch_stats_eval")]
    for a, b in zip(jax.tree.leaves(results[0]["state"].params), jax.tree.leaves(results[1]["state"].params)):
        np.testing.assert_array_equal(a, b)
    assert results[0]["history"][0]["train_loss"] == results[1]["history"][0]["train_loss"]
    assert results[0]["history"][0]["val_loss"] != results[1]["history"][0]["val_loss"]


# --- GroupNorm's groups, and the ConvNet's convolution ----------------------------------------------

@pytest.mark.parametrize("name, message", [
    ("group_norm:groups=3", "group_norm: 3 groups do not divide the 784 features of the input"),
    ("group_norm:groups=8", "group_norm: 8 groups do not divide the 300 features of hidden layer 1"),
    ("conv_group_norm:groups=3", "group_norm: 3 groups do not divide the 8 features of convolution 1"),
])
def test_a_group_count_that_does_not_divide_the_features_is_one_line(name, message):
    with pytest.raises(BnbenchError, match=message):
        variants.get(name).check((28, 28))


@pytest.mark.slow
def test_group_norm_over_a_leading_seed_axis_is_each_seed_alone():
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 6, 6, 8)) * 3 + 5  # 3 seeds of a ConvNet batch
    module = GroupNorm(num_groups=4)
    variables = jax.vmap(lambda x: module.init(jax.random.PRNGKey(0), x))(x)
    variables = jax.tree.map(lambda v: v + 0.1 * jax.random.normal(jax.random.PRNGKey(2), v.shape), variables)

    def loss(variables, x):
        return jnp.sum(jnp.sin(module.apply(variables, x)))
    batched = jax.vmap(jax.grad(loss, argnums=(0, 1)))(variables, x)
    for seed in range(3):
        alone = jax.grad(loss, argnums=(0, 1))(jax.tree.map(lambda v: v[seed], variables), x[seed])
        for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(batched)):
            np.testing.assert_allclose(a, b[seed], rtol=1e-5, atol=1e-6)


def test_group_norm_used_directly_refuses_a_group_count_that_does_not_divide_its_features():
    with pytest.raises(BnbenchError, match="3 groups do not divide the 10 features of its input"):
        GroupNorm(num_groups=3).init(jax.random.PRNGKey(0), jnp.ones((2, 10)))
    with pytest.raises(BnbenchError, match="0 groups do not divide"):
        GroupNorm(num_groups=0).init(jax.random.PRNGKey(0), jnp.ones((2, 10)))


def test_a_group_count_that_divides_every_width_builds():
    variants.get("group_norm:groups=2").check((28, 28))
    variants.get("conv_group_norm:groups=8").check((32, 32, 3))


def test_im2col_convolution_equals_xla_convolution_and_flax_conv_parameters():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 7, 6, 3))
    ours = Conv(5)
    variables = ours.init(jax.random.PRNGKey(1), x)
    reference = nn.Conv(5, (3, 3), padding="SAME", kernel_init=nn.initializers.glorot_uniform())
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, reference.init(jax.random.PRNGKey(1), x))
    np.testing.assert_allclose(ours.apply(variables, x), reference.apply(variables, x), rtol=1e-5, atol=1e-5)


def test_max_pool_equals_flax_max_pool_in_values_and_gradients_with_ties():
    # Rounded values and ReLU's zeros make ties common, as in training; an odd height leaves a row
    # outside every window.
    for shape in ((3, 7, 8, 4),):
        x = jnp.round(jax.random.normal(jax.random.PRNGKey(0), shape) * 2) / 2
        x = jnp.concatenate([jax.nn.relu(x), x], axis=0)
        cotangent = jax.random.normal(jax.random.PRNGKey(1), (x.shape[0], shape[1] // 2, shape[2] // 2, shape[3]))

        def flax_pool(x):
            return nn.max_pool(x, (2, 2), strides=(2, 2))

        ours, ours_vjp = jax.vjp(max_pool_2x2, x)
        theirs, theirs_vjp = jax.vjp(flax_pool, x)
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_array_equal(ours_vjp(cotangent)[0], theirs_vjp(cotangent)[0])
        # Ties are real here (the test could fail): a split gradient would differ.
        window = x[:, 0:2, 0:2]
        assert int(jnp.sum(window == jnp.max(window, axis=(1, 2), keepdims=True))) > x.shape[0] * shape[3]


@pytest.mark.slow
def test_convnet_takes_the_channels_from_the_data():
    for name in ("conv_plain", "conv_bn", "conv_group_norm", "conv_layer_norm"):
        model = variants.get(name).model
        for shape in ((28, 28), (32, 32, 3)):
            variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, *shape)), train=False)
            assert variables["params"]["Conv_0"]["kernel"].shape == (3, 3, shape[2] if len(shape) == 3 else 1, 8)
            assert variables["params"]["Dense_0"]["kernel"].shape == ((shape[0] // 4) * (shape[1] // 4) * 16, 10)
