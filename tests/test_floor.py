import functools

import jax
import numpy as np
import pytest

from bnbench.data.sources import load
from bnbench.engine import train
from bnbench.measure import floor
from bnbench.models import variants


def epoch_products(name, idx_dir, seeds=1):
    data = train.DeviceData.from_dataset(load(data_dir=idx_dir))
    trainer = train.Trainer(variants.get(name).model, train.Protocol(), data, seeds)
    return floor.matmuls(trainer.epoch_program, *trainer.epoch_args())



def test_floor_counts_the_dense_layers_products_and_their_repeats(idx_dir):
    plain, bn = epoch_products("seed_plain", idx_dir), epoch_products("seed_bn", idx_dir)
    # 300 training examples: 9 full batches in the scan, then one batch of 12.
    assert sorted(set(plain.values())) == [1, 9]
    assert sum(c == 9 for c in plain.values()) == 8  # 3 forward, 3 weight gradients, 2 input gradients
    assert sum(c == 9 for c in bn.values()) == 9  # BN on the inputs needs Dense_0's input gradient too
    # BN itself adds no matmuls: the difference is exactly that 32x300x784 product.
    extra = set(bn) - set(plain)
    assert {(m.lhs_shape, m.rhs_shape) for m in extra if bn[m] == 9} == {((32, 300), (784, 300))}
    flops_plain = sum(m.flops for m, c in plain.items() if c == 9)
    flops_bn = sum(m.flops for m, c in bn.items() if c == 9)
    assert flops_plain == 2 * 32 * (784 * 300 + 300 * 100 + 100 * 10) * 3 - 2 * 32 * 784 * 300
    assert flops_bn - flops_plain == 2 * 32 * 300 * 784


def test_seeds_batch_the_products(idx_dir):
    products = epoch_products("seed_plain", idx_dir, seeds=3)
    assert all(m.lhs_shape[0] == 3 or m.rhs_shape[0] == 3 for m in products)


def test_floor_program_runs_and_its_time_grows_with_work():
    m = floor.Product((64, 256), (256, 256), np.dtype("float32"), (((1,), (0,)), ((), ())), (64, 256))
    short, long_ = floor.time_floor({m: 50}, repeats=3), floor.time_floor({m: 2000}, repeats=3)
    assert long_["flops"] == 40 * short["flops"]
    assert long_["median_s"] > short["median_s"]


@pytest.mark.slow
def test_floor_computes_every_product_whole():
    # XLA may shrink a product whose result is barely used, or drop one whose result is unused;
    # either would make the floor too low. Its compiled FLOPs must cover every product.
    model = variants.get("seed_bn").model
    tx = train.Protocol().transform()
    state = train.create_train_state(model, tx, jax.random.PRNGKey(0), (28, 28))
    images, labels = jax.numpy.zeros((32, 28, 28), jax.numpy.uint8), jax.numpy.zeros((32,), jax.numpy.int32)
    products = floor.matmuls(functools.partial(train.train_step, model, tx), state, images, labels)
    program, operands = floor.floor_program(products)
    assert len(products) == 9
    assert floor.compiled_flops(program.lower(operands).compile()) >= floor.total_flops(products)


def test_floor_on_a_sample_of_epochs_pairs_each_with_its_own_epoch():
    from bnbench.data.synthetic import synthetic_dataset
    from bnbench.engine import train
    from bnbench.measure import experiment
    from bnbench.models import variants

    assert experiment.floor_epochs(10, 2) == [2, 4, 6, 8, 10]
    assert experiment.floor_epochs(10, 3) == [3, 6, 9, 10]  # the last epoch always
    assert experiment.floor_epochs(1, 2) == [1]
    data = train.DeviceData.from_dataset(synthetic_dataset(train=320, validation=64, test=64))
    result = experiment.run_variant(variants.get("seed_plain"), train.Protocol(epochs=3), data, [0],
                                measure_floor=True, floor_every=2)
    epochs = result["runs"][0]["epochs"]
    assert ["floor_time_s" in e for e in epochs] == [False, True, True]
    floor = result["summary"]["floor"]
    assert floor["epochs_timed"] == [2, 3]
    ratios = [e["time_s"] / e["floor_time_s"] for e in epochs[1:]]
    assert floor["median_ratio"] == pytest.approx(sum(ratios) / 2)


@pytest.mark.slow
def test_floor_counts_a_convolutions_products_whole_and_times_them():
    """XLA's convolutions (im2col=False) are products of the floor, with their FLOPs; the default
    im2col ConvNet's are products already (dot_general)."""
    x = jax.numpy.zeros((32, 28, 28), jax.numpy.uint8)
    labels = jax.numpy.zeros((32,), jax.numpy.int32)
    tx = train.Protocol().transform()
    for name, kind in (("conv_bn:im2col=False", "conv_general_dilated"), ("conv_bn", "dot_general")):
        model = variants.get(name).model
        state = train.create_train_state(model, tx, jax.random.PRNGKey(0), (28, 28))
        products = floor.matmuls(functools.partial(train.train_step, model, tx), state, x, labels)
        convs = [m for m in products if m.primitive == "conv_general_dilated"]
        if kind == "dot_general":
            assert not convs
        else:
            # Forward, kernel gradient and (for the second only) input gradient of two convolutions.
            assert len(convs) == 5
            forward = 2 * 32 * (28 * 28 * 8 * 9 * 1 + 14 * 14 * 16 * 9 * 8)
            assert sum(m.flops for m in convs) == 2 * forward + 2 * 32 * 14 * 14 * 16 * 9 * 8
        # Either way the same products: each layer's forward and kernel gradient, and the input
        # gradient of every layer but the first (whose input, the images, needs none).
        conv1, conv2, dense = 2 * 32 * 28 * 28 * 8 * 9, 2 * 32 * 14 * 14 * 16 * 72, 2 * 32 * 784 * 10
        assert floor.total_flops(products) == 2 * conv1 + 3 * conv2 + 3 * dense
        program, operands = floor.floor_program(products)
        # XLA's cost analysis leaves out a 'same' convolution's padded borders (about 8% here).
        share = 1.0 if kind == "dot_general" else 0.9
        assert floor.compiled_flops(program.lower(operands).compile()) >= share * floor.total_flops(products)


def test_a_program_the_floor_cannot_time_has_no_floor_and_says_why():
    def spectral(x):
        return jax.numpy.fft.fft(x) @ x

    with pytest.raises(floor.FloorUnavailable, match="fft"):
        floor.matmuls(spectral, jax.numpy.ones((8, 8), jax.numpy.complex64))
