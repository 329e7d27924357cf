import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnbench import models
from bnbench.models import BatchNorm, variants


def init(name):
    return variants.get(name).model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28)), train=False)


def sizes(tree):
    return {layer: sum(np.size(x) for x in jax.tree.leaves(leaves)) for layer, leaves in tree.items()}


def test_seed_plain_parameters_per_layer_match_keras_summary():
    variables = init("seed_plain")
    assert set(variables) == {"params"}
    assert sizes(variables["params"]) == {"Dense_0": 235_500, "Dense_1": 30_100, "Dense_2": 1_010}
    assert sum(sizes(variables["params"]).values()) == 266_610


def test_seed_bn_parameters_per_layer_match_keras_summary():
    variables = init("seed_bn")
    params, stats = sizes(variables["params"]), sizes(variables["batch_stats"])
    # Keras' summary counts BN's 4 vectors together: 3,136 = 2 x 784 trainable + 2 x 784 moving.
    assert params == {"BatchNorm_0": 1_568, "Dense_0": 235_500, "BatchNorm_1": 600, "Dense_1": 30_100,
                      "BatchNorm_2": 200, "Dense_2": 1_010}
    assert stats == {"BatchNorm_0": 1_568, "BatchNorm_1": 600, "BatchNorm_2": 200}
    assert sum(params.values()) == 268_978 and sum(stats.values()) == 2_368


def test_leaky_relu_uses_keras_slope():
    x = jnp.array([-1.0, 2.0])
    np.testing.assert_allclose(models.ACTIVATIONS["leaky_relu"](x), [-0.3, 2.0])


def test_initializers_follow_the_notebook():
    plain, bn = init("seed_plain")["params"], init("seed_bn")["params"]
    # he_normal (truncated at 2 sigma): std sqrt(2/784) before truncation, nothing beyond 2 sigma.
    std = np.sqrt(2 / 784) / 0.87962566103423978
    kernel = np.asarray(plain["Dense_0"]["kernel"])
    assert abs(kernel.std() - np.sqrt(2 / 784)) < 0.05 * np.sqrt(2 / 784)
    assert np.abs(kernel).max() <= 2 * std + 1e-6
    # glorot_uniform: uniform in +-sqrt(6 / (fan_in + fan_out)).
    for params, layer, fan in ((bn, "Dense_0", 784 + 300), (plain, "Dense_2", 100 + 10)):
        limit = np.sqrt(6 / fan)
        k = np.asarray(params[layer]["kernel"])
        assert np.abs(k).max() <= limit and np.abs(k).max() > 0.95 * limit
    for params in (plain, bn):
        for layer in ("Dense_0", "Dense_1", "Dense_2"):
            assert not np.any(params[layer]["bias"])


@pytest.mark.parametrize("features", [3, 300])
def test_batchnorm_matches_flax_two_pass_layer_values_gradients_and_statistics(features):
    x = jax.random.normal(jax.random.PRNGKey(1), (32, features)) * 3 + 20  # large mean: one-pass would drift
    reference = nn.BatchNorm(use_running_average=False, momentum=0.99, epsilon=1e-3, use_fast_variance=False)
    ours = BatchNorm(use_running_average=False)
    variables = reference.init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(0), x)) == jax.tree.map(jnp.shape, variables)
    params = {"scale": jnp.linspace(0.5, 2, features), "bias": jnp.linspace(-1, 1, features)}

    def loss(module, params, x):
        y, updates = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                  mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y) * jnp.arange(features)), (y, updates["batch_stats"])

    results = [jax.value_and_grad(lambda p, x: loss(m, p, x), argnums=(0, 1), has_aux=True)(params, x)
               for m in (reference, ours)]
    (_, (y_ref, stats_ref)), grads_ref = results[0]
    (_, (y, stats)), grads = results[1]
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves((stats, grads)), jax.tree.leaves((stats_ref, grads_ref))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_batchnorm_in_evaluation_uses_moving_statistics():
    x = jnp.arange(12.0).reshape(4, 3)
    stats = {"mean": jnp.array([1.0, 2.0, 3.0]), "var": jnp.array([4.0, 1.0, 0.25])}
    params = {"scale": jnp.ones(3), "bias": jnp.zeros(3)}
    y = BatchNorm(use_running_average=True).apply({"params": params, "batch_stats": stats}, x)
    np.testing.assert_allclose(y, (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-3), rtol=1e-6)


@pytest.mark.slow
def test_every_variant_builds_and_outputs_ten_logits():
    for name, variant in variants.VARIANTS.items():
        variables = init(name)
        logits, _ = variant.model.apply(variables, jnp.ones((5, 28, 28)), train=True, mutable=["batch_stats"])
        assert logits.shape == (5, 10), name


def test_unknown_variant_error_lists_the_known_ones():
    with pytest.raises(Exception, match="unknown variant 'nope'.*seed_plain"):
        variants.get("nope")
