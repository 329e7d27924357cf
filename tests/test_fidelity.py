"""bnbench's models against the notebook's own Keras models (Keras 3 on its JAX backend).

Both start from the same weights, take the same 60 SGD steps on the same batches (the last one
partial, 24 examples, as in the notebook's epochs), and must agree on every step's loss, on the
outputs in training and evaluation mode, and on the final weights and BN moving statistics.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnbench import train, variants

keras = pytest.importorskip("keras")
if keras.backend.backend() != "jax":
    pytest.skip("Keras was imported with another backend before this module", allow_module_level=True)

STEPS, BATCH = 60, 32


def notebook_model(name):
    """The two models exactly as the notebook builds them."""
    L = keras.layers
    if name == "seed_plain":
        layers = [L.Flatten(input_shape=[28, 28]), L.Dense(300, kernel_initializer="he_normal"), L.LeakyReLU(),
                  L.Dense(100, kernel_initializer="he_normal"), L.LeakyReLU(), L.Dense(10, activation="softmax")]
    else:
        layers = [L.Flatten(input_shape=[28, 28]), L.BatchNormalization(), L.Dense(300, activation="relu"),
                  L.BatchNormalization(), L.Dense(100, activation="relu"), L.BatchNormalization(),
                  L.Dense(10, activation="softmax")]
    model = keras.models.Sequential(layers)
    model.compile(loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.SGD(learning_rate=1e-3),
                  metrics=["accuracy"])
    return model


def keras_to_flax(model):
    """Copies Keras weights into bnbench's collections, layer by layer, in order."""
    params, stats, dense, bn = {}, {}, 0, 0
    for layer in model.layers:
        w = [np.asarray(v) for v in layer.weights]
        if isinstance(layer, keras.layers.Dense):
            params[f"Dense_{dense}"] = {"kernel": w[0], "bias": w[1]}
            dense += 1
        elif isinstance(layer, keras.layers.BatchNormalization):
            params[f"BatchNorm_{bn}"] = {"scale": w[0], "bias": w[1]}
            stats[f"BatchNorm_{bn}"] = {"mean": w[2], "var": w[3]}
            bn += 1
    return jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, stats)


def batches(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (STEPS * BATCH, 28, 28)).astype(np.uint8)
    # Learnable labels, so the model moves toward a real solution rather than noise.
    labels = (images[:, 10:18, 10:18].mean(axis=(1, 2)) // 26).astype(np.int32).clip(0, 9)
    sizes = [BATCH] * (STEPS - 1) + [24]
    starts = np.cumsum([0] + sizes[:-1])
    return [(images[s:s + n], labels[s:s + n]) for s, n in zip(starts, sizes)]


@pytest.mark.parametrize("name", ["seed_plain", "seed_bn"])
def test_bnbench_trains_like_the_notebooks_keras_model(name):
    keras.utils.set_random_seed(0)
    reference = notebook_model(name)
    model = variants.get(name).model
    tx = train.Protocol().optimizer()
    params, stats = keras_to_flax(reference)
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=stats,
                             opt_state=tx.init(params))
    step = jax.jit(functools.partial(train.train_step, model, tx))
    data = batches()

    for images, labels in data:
        x = images.astype(np.float32) / 255.0
        keras_loss = reference.train_on_batch(x, labels, return_dict=True)["loss"]
        state, (loss_sum, _) = step(state, jnp.asarray(images), jnp.asarray(labels))
        np.testing.assert_allclose(loss_sum / len(labels), keras_loss, rtol=2e-4, atol=1e-5)

    new_params, new_stats = keras_to_flax(reference)
    for ours, theirs in zip(jax.tree.leaves((state.params, state.batch_stats)),
                            jax.tree.leaves((new_params, new_stats))):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=2e-6)
    assert not np.allclose(new_params["Dense_0"]["kernel"], params["Dense_0"]["kernel"])

    x = data[0][0].astype(np.float32) / 255.0
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    eval_probs = jax.nn.softmax(model.apply(variables, jnp.asarray(x), train=False))
    np.testing.assert_allclose(eval_probs, reference(x, training=False), rtol=1e-4, atol=1e-6)
    train_logits, _ = model.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(jax.nn.softmax(train_logits), reference(x, training=True), rtol=1e-4, atol=1e-6)
