"""bnbench's models against the same models built in Keras 3 (on its JAX backend).

The notebook's own two models, and every variant whose layers Keras has (BatchNormalization,
LayerNormalization, GroupNormalization, RMSNormalization, Conv2D), set to the same epsilon: both
start from the same weights, take the same 60 SGD steps on the same batches (the last one partial,
24 examples, as in the notebook's epochs), and must agree on every step's loss, on the outputs in
training and evaluation mode, and on the final weights and BN moving statistics. Batch Renorm and
evaluation with batch statistics, which Keras 3 lacks, are held to NumPy in test_norms.py.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnbench.engine import train
from bnbench.models import variants

pytestmark = pytest.mark.slow  # Keras

keras = pytest.importorskip("keras")
if keras.backend.backend() != "jax":
    pytest.skip("Keras was imported with another backend before this module", allow_module_level=True)

STEPS, BATCH = 60, 32
EPS = 1e-3  # bnbench's epsilon for every normalization (Keras' own default for all but RMSNormalization)


def notebook_model(name):
    """The two models exactly as the notebook builds them."""
    L = keras.layers
    if name == "seed_plain":
        return [L.Flatten(input_shape=[28, 28]), L.Dense(300, kernel_initializer="he_normal"), L.LeakyReLU(),
                L.Dense(100, kernel_initializer="he_normal"), L.LeakyReLU(), L.Dense(10, activation="softmax")]
    return [L.Flatten(input_shape=[28, 28]), L.BatchNormalization(), L.Dense(300, activation="relu"),
            L.BatchNormalization(), L.Dense(100, activation="relu"), L.BatchNormalization(),
            L.Dense(10, activation="softmax")]


def mlp_with(norm, inputs=True):
    """The notebook's BN model with ``norm()`` in BatchNormalization's places."""
    L = keras.layers
    layers = [L.Flatten(input_shape=[28, 28])] + ([norm()] if inputs else [])
    for width in (300, 100):
        layers += [L.Dense(width, activation="relu"), norm()]
    return layers + [L.Dense(10, activation="softmax")]


def bn_before_activation():
    L = keras.layers
    layers = [L.Flatten(input_shape=[28, 28]), L.BatchNormalization()]
    for width in (300, 100):
        layers += [L.Dense(width, use_bias=False), L.BatchNormalization(), L.ReLU()]
    return layers + [L.Dense(10, activation="softmax")]


def convnet(norm=None):
    """bnbench's ConvNet: (conv3x3 'same', norm, ReLU, 2x2 max pool) x2 with 8 and 16 channels."""
    L = keras.layers
    layers = [L.Reshape((28, 28, 1), input_shape=[28, 28])]
    for width in (8, 16):
        layers += [L.Conv2D(width, 3, padding="same", use_bias=norm is None)]
        layers += [norm()] if norm is not None else []
        layers += [L.ReLU(), L.MaxPooling2D(2)]
    return layers + [L.Flatten(), L.Dense(10, activation="softmax")]


def _layers():
    L = keras.layers
    return {
        "seed_plain": lambda: notebook_model("seed_plain"),
        "seed_bn": lambda: notebook_model("seed_bn"),
        "bn_before_activation": bn_before_activation,
        "bn_hidden_only": lambda: mlp_with(L.BatchNormalization, inputs=False),
        "layer_norm": lambda: mlp_with(lambda: L.LayerNormalization(epsilon=EPS)),
        "group_norm": lambda: mlp_with(lambda: L.GroupNormalization(groups=4, epsilon=EPS)),
        "rms_norm": lambda: mlp_with(lambda: L.RMSNormalization(epsilon=EPS)),
        "conv_plain": convnet,
        "conv_bn": lambda: convnet(L.BatchNormalization),
        "conv_group_norm": lambda: convnet(lambda: L.GroupNormalization(groups=4, epsilon=EPS)),
        # bnbench's ConvNet LayerNorm: over height, width and channels, a scale and bias per channel.
        "conv_layer_norm": lambda: convnet(lambda: L.GroupNormalization(groups=1, epsilon=EPS)),
    }


def keras_model(name):
    model = keras.models.Sequential(_layers()[name]())
    model.compile(loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.SGD(learning_rate=1e-3),
                  metrics=["accuracy"])
    return model


def keras_to_flax(model, name):
    """Copies Keras weights into bnbench's collections, layer by layer, in order."""
    conv_ln = name == "conv_layer_norm"
    flax_names = {"Dense": "Dense", "Conv2D": "Conv", "BatchNormalization": "BatchNorm",
                  "LayerNormalization": "LayerNorm", "GroupNormalization": "LayerNorm" if conv_ln else "GroupNorm",
                  "RMSNormalization": "RMSNorm"}
    params, stats, counts = {}, {}, {}
    for layer in model.layers:
        kind = flax_names.get(type(layer).__name__)
        if kind is None:
            continue
        w = [np.asarray(v) for v in layer.weights]
        index = counts[kind] = counts.get(kind, -1) + 1
        key = f"{kind}_{index}"
        if kind in ("Dense", "Conv"):
            params[key] = dict(zip(("kernel", "bias"), w))
        elif kind == "RMSNorm":
            params[key] = {"scale": w[0]}
        else:
            params[key] = {"scale": w[0], "bias": w[1]}
            if kind == "BatchNorm":
                stats[key] = {"mean": w[2], "var": w[3]}
    return jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, stats)


def batches(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (STEPS * BATCH, 28, 28)).astype(np.uint8)
    # Learnable labels, so the model moves toward a real solution rather than noise.
    labels = (images[:, 10:18, 10:18].mean(axis=(1, 2)) // 26).astype(np.int32).clip(0, 9)
    sizes = [BATCH] * (STEPS - 1) + [24]
    starts = np.cumsum([0] + sizes[:-1])
    return [(images[s:s + n], labels[s:s + n]) for s, n in zip(starts, sizes)]


KERAS_VARIANTS = ["seed_plain", "seed_bn", "bn_before_activation", "bn_hidden_only", "layer_norm", "group_norm",
                  "rms_norm", "conv_plain", "conv_bn", "conv_group_norm", "conv_layer_norm"]


def test_every_variant_with_keras_layers_is_held_to_keras():
    assert sorted(KERAS_VARIANTS) == sorted(_layers())
    others = set(variants.VARIANTS) - set(KERAS_VARIANTS)
    # Identical to a tested model (plain_relu: seed_plain's layers), or held to NumPy (test_norms.py).
    assert others == {"plain_relu", "seed_plain_deep", "bn_batch_stats_eval", "batch_renorm"}


def start_from_keras(name):
    """The Keras model for ``name`` (seed 0), bnbench's model, and a jitted bnbench step with its
    starting state: Keras' initial weights."""
    keras.utils.set_random_seed(0)
    reference = keras_model(name)
    model, tx = variants.get(name).model, train.Protocol().transform()
    params, stats = keras_to_flax(reference, name)
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=stats,
                             opt_state=tx.init(params))
    return reference, model, jax.jit(functools.partial(train.train_step, model, tx)), state


@pytest.mark.parametrize("name", KERAS_VARIANTS)
def test_bnbench_trains_like_the_same_keras_model(name):
    reference, model, step, state = start_from_keras(name)
    params, stats = state.params, state.batch_stats
    ours = train.initializer(model, (28, 28))(jax.random.PRNGKey(0))
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, ours.params)  # the same layers, in order
    assert jax.tree.map(jnp.shape, stats) == jax.tree.map(jnp.shape, ours.batch_stats)
    data = batches()

    for images, labels in data:
        x = images.astype(np.float32) / 255.0
        keras_loss = reference.train_on_batch(x, labels, return_dict=True)["loss"]
        state, (loss_sum, _) = step(state, jnp.asarray(images), jnp.asarray(labels))
        np.testing.assert_allclose(loss_sum / len(labels), keras_loss, rtol=2e-4, atol=1e-5)

    new_params, new_stats = keras_to_flax(reference, name)
    for ours, theirs, start in zip(jax.tree.leaves((state.params, state.batch_stats)),
                                   jax.tree.leaves((new_params, new_stats)), jax.tree.leaves((params, stats))):
        if name in variants.NOTEBOOK_VARIANTS:
            np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=2e-6)
            continue
        # A normalization right before a ReLU puts values at its kink, where one within rounding of 0
        # can take the other side in Keras; that unit then drifts apart (seen: 1 unit of 100 in
        # bn_before_activation, 3e-4 relative after 60 steps). Parameters that start at 0 move by
        # about 1e-4, so rounding is a large part of them (seen: 2.1e-6 on one BN bias); max pooling
        # has kinks too (seen: 1e-5 on a conv_bn kernel entry of 3e-3, whose largest is 0.27). So:
        # all within 1e-3 or 1e-4 of the tensor's largest value, and all but 1 in 100 within 1e-4.
        atol = max(5e-6, 1e-4 * float(np.max(np.abs(theirs))))
        if name == "conv_group_norm":  # Keras' GroupNormalization parts from float64 where bnbench doesn't: below
            atol = max(atol, 1e-2 * float(np.max(np.abs(theirs - start))))
        np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=atol)
        assert np.mean(np.isclose(ours, theirs, rtol=1e-4, atol=atol)) >= 0.99
    first = "Dense_0" if "Dense_1" in params else "Conv_0"
    assert not np.allclose(new_params[first]["kernel"], params[first]["kernel"])

    x = data[0][0].astype(np.float32) / 255.0
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    rtol = 1e-4 if name in variants.NOTEBOOK_VARIANTS else 1e-3  # the kinks above (seen: 3.1e-4 in conv_bn)
    eval_probs = jax.nn.softmax(model.apply(variables, jnp.asarray(x), train=False))
    np.testing.assert_allclose(eval_probs, reference(x, training=False), rtol=rtol, atol=1e-6)
    train_logits, _ = model.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(jax.nn.softmax(train_logits), reference(x, training=True), rtol=rtol, atol=1e-6)


def test_conv_group_norm_matches_float64_on_the_step_where_keras_reshape_does_not():
    """From the parity test's Keras weights, one step, then the second step in float32 and float64.

    On this step, reductions over a (..., groups, width) reshape, which Keras' GroupNormalization
    computes (and bnbench did), miss the float64 update of one group's bias and kernels by more
    than 1e-3 of the update; that is where the parity test's two trajectories part. bnbench's
    per-group slices must not. The step is pinned because elsewhere on the trajectory both miss
    float64 alike, at a ReLU or max-pool kink: a compiler change that moves such a kink here would
    fail this test with both versions."""
    _, _, step, state = start_from_keras("conv_group_norm")
    (images0, labels0), (images, labels) = batches()[:2]
    start, _ = step(state, images0, labels0)
    ours, _ = step(start, images, labels)
    with jax.enable_x64(True):
        as_f64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if a.dtype == jnp.float32 else a, start)
        exact = jax.tree.map(np.asarray, step(as_f64, images, labels)[0].params)  # traced anew for float64
    for (path, new), old, reference in zip(jax.tree_util.tree_leaves_with_path(ours.params),
                                           jax.tree.leaves(start.params), jax.tree.leaves(exact)):
        if path[-1].key == "scale":  # near 1, where float32's spacing is a large part of an update
            continue
        update = np.abs(reference - np.asarray(old, np.float64)).max()
        assert np.abs(np.asarray(new, np.float64) - reference).max() <= 1e-3 * update, jax.tree_util.keystr(path)
