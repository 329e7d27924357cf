"""The settings BatchNorm is used in: optax optimizers with momentum and weight decay, MLP depth and
width, and bfloat16 precision. Each default is the notebook's, to the bit."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnbench import cli, options
from bnbench.engine import train
from bnbench.errors import BnbenchError
from bnbench.measure import floor, sweep
from bnbench.models import variants
from bnbench.models.norms import BatchNorm, LayerNorm


def tiny_data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.integers(0, 256, (n, 28, 28)), jnp.uint8)
    labels = jnp.asarray(rng.integers(0, 10, n), jnp.int32)
    return train.DeviceData(images, labels, images[:16], labels[:16], images[:16], labels[:16])


def tree_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# Optimizers

def test_the_default_protocol_trains_with_the_notebooks_plain_sgd_to_the_bit():
    """A step with the default hyperparameters as data (as every program trains) against the step
    with optax.sgd written out, as the engine built it before optimizers were options."""
    model, data = variants.get("seed_bn").model, tiny_data()
    state = train.create_train_state(model, optax.sgd(1e-3), jax.random.PRNGKey(0), (28, 28))
    images, labels = data.train_images[:32], data.train_labels[:32]
    trainer = train.Trainer(model, train.Protocol(epochs=1), data, 1)
    hyper = jax.tree.map(lambda x: x[0], trainer.hyperparams())

    @jax.jit
    def ours(state, hyper):
        return train.train_step(*hyper.apply(model, train.Protocol().kind), state, images, labels)

    @jax.jit
    def before(state, hyper):
        pair = (hyper.bn_momentum, hyper.bn_momentum_complement)
        return train.train_step(model.clone(bn_momentum=pair), optax.sgd(hyper.learning_rate), state, images, labels)

    assert tree_equal(ours(state, hyper), before(state, hyper))
    assert train.Protocol().momentum == 0.0 and not train.Protocol().kind.decays


def _update(kind: train.Optimizer, grads, params, lr=0.1, momentum=0.9, wd=0.5):
    tx = kind.transform(lr, momentum, wd)
    return tx.update(grads, tx.init(params), params)[0]


def test_weight_decay_is_coupled_for_sgd_and_adam_and_decoupled_for_adamw():
    params, zero = jnp.array([2.0, -4.0]), jnp.zeros(2)
    # SGD: the L2 term is a gradient, scaled by the learning rate.
    np.testing.assert_allclose(_update(train.Optimizer("sgd", True), zero, params), -0.1 * 0.5 * params)
    # Adam, coupled: the L2 term goes through Adam's normalization, so the first step is about -lr * sign.
    np.testing.assert_allclose(_update(train.Optimizer("adam", True), zero, params), [-0.1, 0.1], rtol=1e-5)
    # AdamW, decoupled: Adam sees no gradient; the weights shrink by lr * wd.
    np.testing.assert_allclose(_update(train.Optimizer("adamw", True), zero, params), -0.1 * 0.5 * params,
                               rtol=1e-6)
    # No decay term unless the program decays: the weights are left alone.
    np.testing.assert_array_equal(_update(train.Optimizer("momentum", False), zero, params), zero)


@pytest.mark.slow  # five programs compiled: tens of seconds
def test_a_momentum_and_weight_decay_sweep_trains_each_run_as_it_trains_alone():
    """Four configurations in one program, against each trained alone with its numbers in the protocol."""
    model, data = variants.get("seed_bn").model, tiny_data()
    configs = [(m, wd) for m in (0.9, 0.5) for wd in (0.0, 5e-3)]
    together = train.Trainer(model, train.Protocol(epochs=1, learning_rate=0.05, optimizer="momentum",
                                                   weight_decay=5e-3), data, len(configs))
    hyper = together.hyperparams([0.05] * 4, momenta=[m for m, _ in configs], weight_decays=[w for _, w in configs])
    swept = train.fit(together, [0] * 4, hyperparams=hyper)["state"].params
    for i, (m, wd) in enumerate(configs):
        # A lone run with no decay has no decay term at all: the sweep's term with 0 computes the same.
        alone = train.fit(train.Trainer(model, train.Protocol(epochs=1, learning_rate=0.05, optimizer="momentum",
                                                              momentum=m, weight_decay=wd), data, 1), [0])
        for a, b in zip(jax.tree.leaves(alone["state"].params), jax.tree.leaves(swept)):
            np.testing.assert_allclose(a[0], b[i], rtol=2e-5, atol=1e-6)


def test_a_sweep_of_two_decays_two_momenta_three_rates_is_one_program_per_shape():
    grid = sweep.Grid(variants=("seed_bn",), learning_rates=(0.01, 0.03, 0.1), batch_sizes=(32,), bn_momenta=(),
                      epochs=1, seeds=(0,), optimizer="momentum", momenta=(0.9, 0.99), weight_decays=(0.0, 5e-4))
    grid.check()
    (program,) = sweep.programs(grid, [variants.get("seed_bn")], 1000)
    assert len(program.configs) == 12 and program.protocol.kind == train.Optimizer("momentum", True)
    labels = {sweep.label("seed_bn", c, grid) for c in program.configs}
    assert len(labels) == 12 and "seed_bn lr=0.1 momentum=0.99 wd=0.0005" in labels
    assert grid.record()["momentum"] == [0.9, 0.99] and "momentum" not in grid.training()


def test_a_sweep_without_the_new_options_records_its_grid_as_before():
    grid = sweep.Grid(variants=("seed_bn",), learning_rates=(0.01,), batch_sizes=(32,), bn_momenta=(), epochs=1,
                      seeds=(0,))
    assert "momentum" not in grid.record() and "weight_decay" not in grid.record()
    assert grid.training() == {"optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0}


@pytest.mark.parametrize("argv, says", [
    (["--optimizer", "foo"], "--optimizer: 'foo' is not one of sgd, momentum, nesterov, adam, adamw"),
    (["--momentum", "1.5"], "--momentum: '1.5' is not a momentum"),
    (["--weight-decay", "-1"], "--weight-decay: '-1' is not a weight decay"),
    (["--weight-decay", "-5e-4"], "--weight-decay: '-5e-4' is not a weight decay"),
    (["--precision", "float8"], "--precision: 'float8' is not one of float32, bfloat16, bfloat16-statistics"),
])
def test_bad_settings_are_one_line(argv, says, capsys):
    assert cli.main(["run", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and says in err, err


def test_momentum_with_plain_sgd_is_one_line_pointing_to_the_momentum_optimizer():
    with pytest.raises(BnbenchError, match="plain SGD .* has no momentum; use --optimizer momentum"):
        train.Protocol(momentum=0.9)
    assert train.Protocol(optimizer="adamw").momentum == 0.9  # Adam's b1 by default
    with pytest.raises(BnbenchError, match=r"--momentum '0.9,1': '1' is not a momentum"):
        options.values(options.MOMENTUM, "0.9,1")


# Depth and width

def test_depth_and_width_build_that_many_hidden_layers_and_the_floor_counts_their_products():
    data = tiny_data()
    deep = variants.get("seed_bn:depth=8,width=256")
    assert deep.fields()["hidden"] == [256] * 8
    state = jax.eval_shape(train.initializer(deep.model, (28, 28)), jax.random.PRNGKey(0))
    dense = sorted(k for k in state.params if k.startswith("Dense"))
    assert len(dense) == 9 and len(state.batch_stats) == 9  # BN on the inputs and after every hidden layer
    products = floor.matmuls(functools.partial(train.evaluate, deep.model), state, data.val_images, data.val_labels)
    assert sum(products.values()) == 9  # one product per Dense, forward
    assert floor.total_flops(products) == 2 * 16 * (784 * 256 + 7 * 256 * 256 + 256 * 10)


def test_the_notebooks_shapes_stay_the_default_and_come_back_only_where_the_widths_say():
    assert variants.get("seed_plain").model.layers() == (300, 100)
    assert variants.get("seed_plain:depth=2,width=300").model.layers() == (300, 300)
    assert variants.get("seed_plain:hidden=(300,100)").model.layers() == (300, 100)


@pytest.mark.parametrize("name, says", [
    ("seed_bn:depth=0", "depth=0: the hidden layers, 1 or more"),
    ("seed_bn:depth=4", "depth=4 needs width=N too"),
    ("seed_bn:width=0", "width=0: the units of each hidden layer, 1 or more"),
    ("seed_bn:precision=float8", "precision='float8': choose one of float32, bfloat16, bfloat16-statistics"),
])
def test_bad_model_fields_are_one_line(name, says):
    with pytest.raises(BnbenchError, match=says):
        variants.get(name).check((28, 28))


@pytest.mark.slow
def test_seed_bn_sixteen_layers_deep_trains():
    result = train.train(variants.get("seed_bn:depth=16,width=256").model, train.Protocol(epochs=2, learning_rate=0.05),
                         tiny_data(64), [0])
    losses = [float(h["train_loss"][0]) for h in result["history"]]
    assert all(np.isfinite(losses)) and losses[1] < losses[0]


# Precision

def test_bfloat16_computes_products_in_bfloat16_and_keeps_parameters_and_statistics_float32():
    data = tiny_data()
    model = variants.get("seed_bn", precision="bfloat16").model
    protocol = train.Protocol(optimizer="momentum")
    state = jax.eval_shape(train.initializer(model, (28, 28), protocol.kind), jax.random.PRNGKey(0))
    step = functools.partial(train.train_step, model, protocol.transform())
    products = floor.matmuls(step, state, data.train_images[:32], data.train_labels[:32])
    assert {np.dtype(p.dtype) for p in products} == {np.dtype(jnp.bfloat16)}  # the floor times them in bfloat16
    new, (loss, _) = jax.eval_shape(step, state, data.train_images[:32], data.train_labels[:32])
    for leaf in jax.tree.leaves((new.params, new.batch_stats, new.opt_state)):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
    assert loss.dtype == jnp.float32
    logits = jax.eval_shape(lambda v: model.apply(v, train.normalize(data.val_images), train=False),
                            {"params": new.params, "batch_stats": new.batch_stats})
    assert logits.dtype == jnp.float32


@pytest.mark.parametrize("layer", [BatchNorm, LayerNorm])
def test_statistics_are_float32_under_bfloat16_and_bfloat16_only_when_asked(layer):
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 300)).astype(jnp.bfloat16) * 3 + 1
    kwargs = {"use_running_average": False, "momentum": 0.0} if layer is BatchNorm else {}

    @functools.partial(jax.jit, static_argnums=0)
    def run(precision):
        module = layer(precision=precision, **kwargs)
        variables = module.init(jax.random.PRNGKey(1), x)
        y, updates = module.apply(variables, x, mutable=["batch_stats"])
        return y, updates.get("batch_stats", {})

    y32, stats32 = run("bfloat16")
    y16, stats16 = run("bfloat16-statistics")
    assert y32.dtype == y16.dtype == jnp.bfloat16
    if layer is BatchNorm:  # momentum 0: the moving mean is the batch's mean
        np.testing.assert_array_equal(stats32["mean"], jnp.mean(x.astype(jnp.float32), axis=0))
        as_bf16 = stats16["mean"].astype(jnp.bfloat16).astype(jnp.float32)
        np.testing.assert_array_equal(stats16["mean"], as_bf16)  # computed, then kept, in bfloat16
        assert not np.array_equal(stats16["mean"], stats32["mean"])
    exact, x32 = layer(precision="float32", **kwargs), x.astype(jnp.float32)
    reference = jax.jit(lambda: exact.apply(exact.init(jax.random.PRNGKey(1), x32), x32, mutable=["batch_stats"])[0])()
    np.testing.assert_array_equal(y32, reference.astype(jnp.bfloat16))  # float32 arithmetic, rounded once


def test_precision_applies_to_every_variant_unless_its_name_sets_one():
    assert variants.get("layer_norm", precision="bfloat16").model.precision == "bfloat16"
    assert variants.get("seed_bn:precision=float32", precision="bfloat16").model.precision == "float32"
    assert variants.get("conv_bn", precision="bfloat16-statistics").model.precision == "bfloat16-statistics"


def test_a_momentum_or_decay_out_of_range_reads_as_the_options_say_it_from_the_protocol():
    with pytest.raises(BnbenchError, match=f"--momentum 1.5 {options.NOT_A_MOMENTUM}"):
        train.Protocol(optimizer="momentum", momentum=1.5)
    with pytest.raises(BnbenchError, match=f"--weight-decay -1 {options.NOT_A_WEIGHT_DECAY}"):
        train.Protocol(weight_decay=-1.0)


@pytest.mark.slow
def test_a_sweep_of_momenta_and_decays_is_tabled_along_each_with_a_line_per_other_value(tmp_path):
    from data_helpers import make_idx_folder

    from bnbench.report import reading, sweeps

    data = make_idx_folder(tmp_path / "data", train=5600)
    out = tmp_path / "s.json"
    assert cli.main(["sweep", "--variant", "seed_bn", "--optimizer", "momentum", "--momentum", "0.5,0.9",
                     "--weight-decay", "0,5e-4", "--learning-rate", "0.01", "--epochs", "1", "--seeds", "2",
                     "--data-dir", str(data), "--out", str(out), "--quiet"]) == 0
    report = reading.load_all([str(out)])[0]
    assert sweeps.swept_axes(report["sweep"]) == ["momentum", "weight_decay"]
    rows = sweeps.table(report, "momentum").splitlines()
    assert [c.strip() for c in rows[0].split("|")[2:-1]] == ["0.5", "0.9"]
    assert [r.split("|")[1].strip() for r in rows[2:]] == ["seed_bn wd=0", "seed_bn wd=0.0005"]
