"""What BatchNorm's statistics see (issue 23): ghost batches against local data-parallel BatchNorm
and the whole batch, non-i.i.d. batch orders read batch by batch, and the statistics evaluation uses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_data_parallel import float32_tolerance, worker

from bnbench import options
from bnbench.engine import train
from bnbench.errors import BnbenchError
from bnbench.models import norms, variants
from bnbench.report import compare

# --- ghost batches -------------------------------------------------------------------------------

def steps(name: str, batches) -> train.TrainState:
    """``name``'s state after one SGD step on each of ``batches`` (images, labels)."""
    model = variants.get(name).model
    state = train.initializer(model, (28, 28))(jax.random.PRNGKey(0))
    step = jax.jit(lambda s, x, y: train.train_step(model, train.Protocol().transform(), s, x, y))
    for images, labels in batches:
        state, _ = step(state, images, labels)
    return state


def batches(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [(jnp.asarray(rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)),
             jnp.asarray(rng.integers(0, 10, n).astype(np.int32))) for n in sizes]


@pytest.mark.slow
def test_a_ghost_batch_of_the_whole_batch_is_seed_bn_bit_for_bit():
    """ghost_batch=32 at batch 32 (and on the epoch's last batch of 8) computes what seed_bn does."""
    data = batches([32, 32, 8])
    for a, b in zip(jax.tree.leaves(steps("seed_bn", data)), jax.tree.leaves(steps("seed_bn:ghost_batch=32", data))):
        np.testing.assert_array_equal(a, b)


def test_ghost_groups_are_batch_norms_of_their_own_with_the_moving_statistics_averaged():
    """Each group of 4 (and the partial batch's last group of 2) normalized with its own mean and
    biased variance; the moving statistics the mean of each group's own update; y's gradient the
    closed form per group (checked against autodiff of the direct formula)."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(2.0, 3.0, (10, 5)).astype(np.float32))
    layer = norms.BatchNorm(use_running_average=False, ghost_batch=4)
    variables = jax.jit(layer.init)(jax.random.PRNGKey(0), x)
    y, updates = jax.jit(lambda v, x: layer.apply(v, x, mutable=["batch_stats"]))(variables, x)
    xs = np.asarray(x, np.float64)
    groups = [xs[0:4], xs[4:8], xs[8:10]]
    expected = np.concatenate([(g - g.mean(0)) / np.sqrt(g.var(0) + 1e-3) for g in groups])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], np.mean([0.01 * g.mean(0) for g in groups], 0),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(updates["batch_stats"]["var"], np.mean([0.99 + 0.01 * g.var(0) for g in groups], 0),
                               rtol=1e-5)

    def direct(x):
        parts = [x[i:j] for i, j in ((0, 4), (4, 8), (8, 10))]
        return jnp.concatenate([(p - p.mean(0)) / jnp.sqrt(p.var(0) + 1e-3) for p in parts])

    weights = jnp.asarray(rng.normal(size=(10, 5)).astype(np.float32))
    found = jax.jit(jax.grad(lambda x: jnp.sum(layer.apply(variables, x, mutable=["batch_stats"])[0] * weights)))(x)
    np.testing.assert_allclose(found, jax.jit(jax.grad(lambda x: jnp.sum(direct(x) * weights)))(x), rtol=1e-4,
                               atol=1e-5)


def test_batch_renorm_corrects_each_group_with_its_own_r_and_d():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(1.0, 2.0, (8, 3)).astype(np.float32))
    layer = norms.BatchRenorm(use_running_average=False, ghost_batch=4, warmup_steps=0, r_ramp_steps=1,
                              d_ramp_steps=1)
    variables = jax.jit(layer.init)(jax.random.PRNGKey(0), x)
    stats = {"mean": jnp.full(3, 0.5), "std": jnp.full(3, 1.5), "steps": jnp.asarray(10.0)}
    y, _ = jax.jit(lambda v, x: layer.apply(v, x, mutable=["batch_stats"]))({**variables, "batch_stats": stats}, x)
    expected = []
    for g in np.split(np.asarray(x, np.float64), 2):
        std = np.sqrt(g.var(0) + 1e-3)
        r, d = np.clip(std / 1.5, 1 / 3, 3), np.clip((g.mean(0) - 0.5) / 1.5, -5, 5)
        expected.append((g - g.mean(0)) / std * r + d)
    np.testing.assert_allclose(y, np.concatenate(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_ghost_batch_8_on_one_device_is_local_batch_norm_on_4_devices():
    """seed_bn:ghost_batch=8 on one device and seed_bn --data-parallel 4 --batch-stats local train
    the same epoch: losses, weights and moving statistics within what float32 itself allows
    (``float32_tolerance``: from the epoch in float64 and from one-ulp perturbed starts), while
    the whole batch's statistics give another model (so the bound can fail)."""
    found = worker("ghost", 4, "seed_bn", 8, 4)
    for key, figures in found.items():
        assert figures["ghost_vs_local"] <= float32_tolerance(figures), (key, figures)
    assert all(figures["ghost_vs_whole"] > 100 * float32_tolerance(figures) for figures in found.values()), found


@pytest.mark.parametrize("name, message", [
    ("seed_bn:ghost_batch=0", "ghost_batch=0: must be 1 or more"),
    ("layer_norm:ghost_batch=4", "ghost_batch=4: norm='layer_norm' has no batch statistics"),
    ("seed_plain:ghost_batch=4", "ghost_batch=4: norm=None has no batch statistics"),
    ("seed_bn:eval_stats=precise", "eval_stats='precise': choose one of moving, batch, population"),
    ("group_norm:eval_stats=batch", "eval_stats='batch': norm='group_norm' has no batch statistics"),
    ("seed_bn:eval_stats=population,eval_batch_size=32", "with eval_stats=population"),
])
def test_bad_statistics_fields_are_one_line_when_the_variant_is_checked(name, message):
    with pytest.raises(BnbenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        variants.get(name).check((28, 28), 10)


def test_a_ghost_batch_that_does_not_divide_the_batch_is_refused_before_training():
    variants.get("seed_bn:ghost_batch=8").check_batches(32, 55000)
    with pytest.raises(BnbenchError, match=r"ghost_batch=5 does not divide the batch size 32.*\(1, 2, 4, 8, 16, 32\)"):
        variants.get("seed_bn:ghost_batch=5").check_batches(32, 55000)
    with pytest.raises(BnbenchError, match="ghost_batch with --data-parallel 2"):
        variants.get("seed_bn:ghost_batch=8").check_batches(32, 55000, data_devices=2)
    with pytest.raises(BnbenchError, match="population_batches=100 at batch 32 needs 3200 training examples"):
        variants.get("seed_bn:eval_stats=population").check_batches(32, 1000)


# --- batch orders --------------------------------------------------------------------------------

def unequal_labels(n=5500, seed=0) -> np.ndarray:
    """Ten classes of different sizes (from 350 to 750 examples), shuffled."""
    rng = np.random.default_rng(seed)
    sizes = np.linspace(350, 750, 10).astype(int)
    sizes[-1] += n - sizes.sum()
    return rng.permutation(np.repeat(np.arange(10), sizes)).astype(np.int32)


order_of = jax.jit(train.epoch_order, static_argnums=(2, 3, 4))


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2, 4])
def test_class_batches_hold_k_classes_each_and_every_example_once(k):
    """An epoch's batches read as the engine reads them: a permutation of the examples; the batches
    dealt K classes hold exactly K, B/K examples of each; only the few that take the classes'
    remainders mix more (at most what the remainders fill, plus the last, partial batch)."""
    labels, batch = unequal_labels(), 32
    order = np.asarray(order_of(jax.random.PRNGKey(7), jnp.asarray(labels), batch, f"classes:{k}", 10))
    assert np.array_equal(np.sort(order), np.arange(len(labels)))
    full = order[:len(labels) // batch * batch].reshape(-1, batch)
    counts = [np.unique(labels[b], return_counts=True)[1] for b in full]
    dealt = [c for c in counts if len(c) == k and np.all(c == batch // k)]
    chunk = batch // k
    remainders = sum(np.bincount(labels) % chunk) + (k - 1) * chunk  # examples that cannot be dealt
    assert len(full) - len(dealt) <= -(-remainders // batch), (len(full), len(dealt))


@pytest.mark.slow
def test_class_batches_are_a_pure_function_of_the_key_and_come_in_random_order():
    labels = jnp.asarray(unequal_labels())
    first = np.asarray(order_of(jax.random.PRNGKey(1), labels, 32, "classes:2", 10))
    np.testing.assert_array_equal(first, np.asarray(order_of(jax.random.PRNGKey(1), labels, 32, "classes:2", 10)))
    other = np.asarray(order_of(jax.random.PRNGKey(2), labels, 32, "classes:2", 10))
    assert not np.array_equal(first, other)
    pairs = [tuple(np.unique(np.asarray(labels)[b])) for b in first[:171 * 32].reshape(-1, 32)]
    assert len(set(pairs[:20])) > 2  # consecutive batches do not walk through the classes in order


def test_the_iid_order_is_todays_permutation():
    key, labels = jax.random.PRNGKey(3), jnp.asarray(unequal_labels())
    np.testing.assert_array_equal(train.epoch_order(key, labels, 32), jax.random.permutation(key, len(labels)))


@pytest.mark.parametrize("text, message", [
    ("classes:0", "'classes:0': a batch holds at least one class"),
    ("classes:x", "'classes:x' is not a batch order"),
    ("shuffled", "'shuffled' is not a batch order"),
    ("iid,iid", "an order is repeated"),
])
def test_bad_batch_orders_are_one_line(text, message):
    with pytest.raises(options.BadValue, match=message):
        options.batch_orders(text)


def test_batch_orders_that_cannot_form_the_batches_are_refused():
    options.check_batch_order("classes:10", 20, 10)
    with pytest.raises(BnbenchError, match="classes:11: the data has 10 classes; choose classes:K with K from 1 to 10"):
        options.check_batch_order("classes:11", 32, 10)
    with pytest.raises(BnbenchError, match=r"3 classes do not share a batch of 32 evenly.*\(1, 2, 4, 8\)"):
        options.check_batch_order("classes:3", 32, 10)


def test_compare_refuses_reports_of_different_batch_orders():
    def report(order):
        protocol = {"dataset": "fashion_mnist", "batch_size": 32, "seeds": [0]}
        return {"protocol": {**protocol, **({"batch_order": order} if order else {})}, "variants": {}}

    assert compare.differences(report(None), report("iid")) == []  # older reports: i.i.d.
    assert compare.differences(report("iid"), report("classes:2")) == ["batch order iid vs classes:2"]
    assert compare.protocol_key(report(None)) != compare.protocol_key(report("classes:1"))


# --- the statistics evaluation uses ----------------------------------------------------------------

@pytest.mark.slow
def test_population_statistics_are_those_of_the_training_batches_and_leave_the_state_alone():
    """seed_bn's input BatchNorm sees the pixels themselves: its population statistics are the mean
    and variance of the first 3 x 32 training images' pixels, whatever the moving averages were."""
    model = variants.get("seed_bn:eval_stats=population,population_batches=3").model
    images, _ = batches([100], seed=4)[0]
    state = train.initializer(model, (28, 28))(jax.random.PRNGKey(0))
    state = state.replace(batch_stats=jax.tree.map(lambda v: v + 3.0, state.batch_stats))
    population = jax.jit(train.with_population_statistics, static_argnums=(0, 3))(model, state, images, 32)
    pixels = np.asarray(images[:96], np.float64).reshape(96, -1) / 255.0
    np.testing.assert_allclose(population.batch_stats["BatchNorm_0"]["mean"], pixels.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(population.batch_stats["BatchNorm_0"]["var"], pixels.var(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(state.batch_stats["BatchNorm_0"]["mean"], 3.0)  # the training state kept


@pytest.mark.slow
def test_population_statistics_of_ghost_groups_are_those_of_all_their_examples():
    model = variants.get("batch_renorm:eval_stats=population,population_batches=2,ghost_batch=8").model
    images, _ = batches([64], seed=5)[0]
    state = train.initializer(model, (28, 28))(jax.random.PRNGKey(0))
    population = jax.jit(train.with_population_statistics, static_argnums=(0, 3))(model, state, images, 32)
    pixels = np.asarray(images, np.float64).reshape(64, -1) / 255.0
    np.testing.assert_allclose(population.batch_stats["BatchRenorm_0"]["mean"], pixels.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(population.batch_stats["BatchRenorm_0"]["std"], np.sqrt(pixels.var(0) + 1e-3),
                               rtol=1e-5)


@pytest.mark.slow
def test_evaluation_statistics_batch_is_bn_batch_stats_eval_and_population_uses_the_training_images():
    images, labels = batches([80], seed=6)[0]
    model = variants.get("seed_bn").model
    state = train.initializer(model, (28, 28))(jax.random.PRNGKey(0))
    evaluate = jax.jit(train.evaluate, static_argnums=(0, 5))
    old = evaluate(variants.get("bn_batch_stats_eval").model, state, images, labels, None, None)
    new = evaluate(variants.get("seed_bn:eval_stats=batch").model, state, images, labels, None, 32)
    legacy = evaluate(variants.get("seed_bn:eval_batch_size=32").model, state, images, labels, None, None)
    assert old == new == legacy
    population_model = variants.get("seed_bn:eval_stats=population,population_batches=2").model
    population = evaluate(population_model, state, images, labels, images, 32)
    moving = evaluate(model, state, images, labels, None, None)
    assert abs(float(population["loss"]) - float(moving["loss"])) > 1e-3
    assert train.eval_statistics(model) == "moving" and train.eval_statistics(population_model) == "population"


def test_a_ghost_batch_sweep_is_a_study_axis_with_the_controls_as_flat_lines():
    from bnbench.report import sweeps

    def entry(variant, ghost=None):
        config = {"base_learning_rate": 0.01, "batch_size": 32, **({"ghost_batch": ghost} if ghost else {})}
        return {"variant": variant, "config": config}

    report = {"sweep": {"learning_rate": [0.01], "batch_size": [32], "bn_momentum": [], "ghost_batch": [4, 32]},
              "variants": {"a": entry("seed_bn", 32), "b": entry("seed_bn", 4), "c": entry("layer_norm")}}
    assert sweeps.swept_axes(report["sweep"]) == ["ghost_batch"]
    lines = sweeps._lines(report, "ghost_batch")
    assert [e["config"]["ghost_batch"] for e in lines["seed_bn"]] == [4, 32]
    assert [e["config"]["ghost_batch"] for e in lines["layer_norm"]] == [4, 32]
