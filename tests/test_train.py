import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnbench.data.sources import load
from bnbench.engine import train
from bnbench.models import variants
from bnbench.parallel import devices

tx = train.Protocol().transform()


def tiny_data(n=36, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.integers(0, 256, (n, 28, 28)), jnp.uint8),
            jnp.asarray(rng.integers(0, 10, n), jnp.int32))


def fresh_state(name="seed_bn", seed=0):
    return train.create_train_state(variants.get(name).model, tx, jax.random.PRNGKey(seed), (28, 28))


def test_epoch_trains_every_example_including_the_partial_last_batch_without_padding():
    """36 examples at batch 32: one full batch, then a batch of 4, the same as two explicit steps."""
    model = variants.get("seed_bn").model
    images, labels = tiny_data(36)
    key = jax.random.PRNGKey(3)
    state, metrics = jax.jit(functools.partial(train.train_epoch, model, tx, 32))(fresh_state(), key, images, labels)
    assert int(state.step) == 2

    order = jax.random.permutation(key, 36)
    step = jax.jit(functools.partial(train.train_step, model, tx))
    manual, (loss_a, correct_a) = step(fresh_state(), images[order[:32]], labels[order[:32]])
    manual, (loss_b, correct_b) = step(manual, images[order[32:]], labels[order[32:]])
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(manual)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # Running means weighted by batch size, as Keras reports them.
    np.testing.assert_allclose(metrics["train_loss"], (loss_a + loss_b) / 36, rtol=1e-6)
    np.testing.assert_allclose(metrics["train_accuracy"], (correct_a + correct_b) / 36)


def test_updates_per_epoch_follow_keras():
    assert train.Protocol().updates_per_epoch(55_000) == 1_719
    assert train.Protocol(batch_size=1000).updates_per_epoch(55_000) == 55


def test_training_updates_the_moving_statistics_and_the_parameters():
    model = variants.get("seed_bn").model
    images, labels = tiny_data(64)
    before = fresh_state()
    after, _ = jax.jit(functools.partial(train.train_step, model, tx))(before, images[:32], labels[:32])
    x = images[:32].reshape(32, -1).astype(jnp.float32) / 255
    # The first BN sees the raw pixels: its moving mean moves 1% of the way to the batch mean.
    np.testing.assert_allclose(after.batch_stats["BatchNorm_0"]["mean"], 0.01 * x.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(after.batch_stats["BatchNorm_0"]["var"], 0.99 + 0.01 * x.var(0), rtol=1e-5)
    assert not np.allclose(after.params["Dense_0"]["kernel"], before.params["Dense_0"]["kernel"])


@pytest.mark.slow
def test_evaluation_uses_moving_statistics_so_batching_does_not_matter():
    model = variants.get("seed_bn").model
    images, labels = tiny_data(64)
    state, _ = jax.jit(functools.partial(train.train_epoch, model, tx, 8))(fresh_state(), jax.random.PRNGKey(0),
                                                                           images, labels)
    whole = train.evaluate(model, state, images, labels)
    halves = [train.evaluate(model, state, images[i:i + 32], labels[i:i + 32]) for i in (0, 32)]
    np.testing.assert_allclose(whole["loss"], np.mean([h["loss"] for h in halves]), rtol=1e-5)
    np.testing.assert_allclose(whole["accuracy"], np.mean([h["accuracy"] for h in halves]), rtol=1e-6)
    # In training mode the same examples would give batch-dependent outputs: evaluation is not that.
    logits_train, _ = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                                  images[:8].astype(jnp.float32) / 255, train=True, mutable=["batch_stats"])
    logits_eval = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                              images[:8].astype(jnp.float32) / 255, train=False)
    assert not np.allclose(logits_train, logits_eval, atol=1e-3)


@pytest.fixture(scope="module")
def device_data(idx_dir):
    return train.DeviceData.from_dataset(load(data_dir=idx_dir))


@pytest.mark.slow
def test_same_seed_is_bit_identical_and_seeds_differ(device_data):
    protocol = train.Protocol(epochs=2)
    model = variants.get("seed_bn").model
    first = train.train(model, protocol, device_data, [0, 1])
    second = train.train(model, protocol, device_data, [0, 1])
    for a, b in zip(jax.tree.leaves(first["state"]), jax.tree.leaves(second["state"])):
        np.testing.assert_array_equal(a, b)
    assert [m["val_loss"].tolist() for m in first["history"]] == [m["val_loss"].tolist() for m in second["history"]]
    kernel = first["state"].params["Dense_0"]["kernel"]
    assert not np.allclose(kernel[0], kernel[1])


@pytest.mark.slow
def test_one_seed_alone_and_in_a_group_train_the_same_model(device_data):
    """vmap batches the matmuls, so results agree to rounding, not bit for bit."""
    protocol = train.Protocol(epochs=2)
    model = variants.get("seed_plain").model
    alone = train.train(model, protocol, device_data, [5])
    grouped = train.train(model, protocol, device_data, [4, 5, 6])
    np.testing.assert_allclose(alone["history"][-1]["val_loss"][0], grouped["history"][-1]["val_loss"][1], rtol=1e-3)
    np.testing.assert_allclose(alone["test"]["accuracy"][0], grouped["test"]["accuracy"][1], atol=0.01)


def test_training_learns_the_synthetic_task(device_data):
    result = train.train(variants.get("seed_bn").model, train.Protocol(epochs=3, learning_rate=0.05), device_data, [0])
    assert result["history"][-1]["val_accuracy"][0] > 0.9
    assert result["history"][-1]["train_loss"][0] < result["history"][0]["train_loss"][0]


def test_seeds_go_to_as_many_devices_as_split_them_evenly():
    assert devices.seed_shares(1, 8) == 1
    assert devices.seed_shares(3, 2) == 1  # 3 seeds do not split over 2 devices
    assert devices.seed_shares(4, 2) == 2
    assert devices.seed_shares(6, 4) == 3
    assert devices.seed_shares(8, 4) == 4
    assert devices.seed_shares(2, 8) == 2  # at most one device per seed
    assert devices.seed_mesh(5, jax.devices()[:1]) is None


@pytest.mark.slow
@pytest.mark.skipif(jax.device_count() < 2, reason="needs two devices")
def test_seeds_spread_over_devices_train_exactly_as_each_seed_alone(device_data):
    """Two seeds per device: on a CPU each device trains its seeds one after another, each with
    the program a single seed compiles to, so the results match training each alone bit for bit."""
    protocol = train.Protocol(epochs=2)
    model = variants.get("seed_bn").model
    seeds = [3, 4, 5, 6]
    trainer = train.Trainer(model, protocol, device_data, len(seeds))
    assert trainer.mesh is not None and trainer.mesh.size == 2
    assert trainer.sequential == (jax.devices()[0].platform == "cpu")
    together = train.fit(trainer, seeds)
    assert len(together["state"].params["Dense_0"]["kernel"].sharding.device_set) == 2
    for i, seed in enumerate(seeds):
        alone = train.train(model, protocol, device_data, [seed])
        for a, b in zip(jax.tree.leaves(together["state"]), jax.tree.leaves(alone["state"])):
            if trainer.sequential:
                np.testing.assert_array_equal(np.asarray(a)[i], np.asarray(b)[0])
            else:  # vmapped: the same up to rounding
                np.testing.assert_allclose(np.asarray(a)[i], np.asarray(b)[0], rtol=1e-4, atol=1e-5)
        assert together["test"]["accuracy"][i] == alone["test"]["accuracy"][0]


@pytest.mark.slow  # seconds: kept out of the 2-minute default tier
def test_a_trainer_is_reused_by_a_second_fit_without_compiling_again(device_data):
    """Sweeps reuse one compiled program for many runs: a second fit on the same trainer must work,
    train the same seeds to the same result, and not compile again."""
    trainer = train.Trainer(variants.get("seed_bn").model, train.Protocol(epochs=1), device_data, 2)
    first = train.fit(trainer, [0, 1])
    compiled = trainer._epoch
    second = train.fit(trainer, [0, 1])
    assert trainer._epoch is compiled
    assert first["compile_time_s"] > 0 and second["compile_time_s"] == 0.0  # the second compiled nothing
    for a, b in zip(jax.tree.leaves(first["state"]), jax.tree.leaves(second["state"])):
        np.testing.assert_array_equal(a, b)
    other = train.fit(trainer, [2, 3])  # other seeds through the same program
    assert not np.allclose(other["state"].params["Dense_0"]["kernel"], first["state"].params["Dense_0"]["kernel"])
