"""bnbench profile: XLA's trace of a compiled epoch, each kernel attributed to a part of the step."""

import jax
import jax.numpy as jnp
import pytest
from data_helpers import make_idx_folder

from bnbench import cli
from bnbench.measure import profile


def test_kernels_are_attributed_by_their_operation_and_products_by_their_dot():
    def step(x, w):
        with jax.named_scope("BatchNorm_0"):
            centered = x - jnp.mean(x, axis=0)
        return jax.nn.relu(centered @ w)

    hlo = jax.jit(step).lower(jnp.ones((8, 4)), jnp.ones((4, 3))).compile().as_text()
    found = {profile.category(op_name, product) for _, op_name, product in profile._instructions(hlo).values()
             if op_name}
    assert profile.PRODUCTS in found and "normalization" in found
    assert profile.category("jvp(ConvNet)/max_pool/max", False) == "pooling"
    assert profile.category("transpose(jvp(ConvNet))/Conv_1/concatenate", False) == "patches (im2col)"
    assert profile.category("jvp(ConvNet)/Conv_1/dot_general", True) == profile.PRODUCTS
    assert profile.category("add", False) == profile.OTHER


@pytest.mark.slow
def test_bnbench_profile_prints_each_part_of_a_convnet_step(tmp_path, capsys):
    data = make_idx_folder(tmp_path / "data", train=5000 + 20 * 32)  # 5,000 go to validation
    assert cli.main(["profile", "--variant", "conv_bn", "--variant", "conv_plain", "--steps", "20",
                     "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert "| us per step | conv_bn | conv_plain |" in out  # the two side by side
    parts = {line.split(" | ")[0].strip("| ") for line in out.splitlines() if line.startswith("| ")}
    assert {"products", "normalization", "pooling", "patches (im2col)"} <= parts
    assert "conv_bn: " in out and "us per step" in out


def test_more_steps_than_the_data_holds_is_one_line(tmp_path, capsys):
    data = make_idx_folder(tmp_path / "data")
    assert cli.main(["profile", "--variant", "seed_plain", "--steps", "1000", "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err
    assert "--steps 1000" in err and "choose at most" in err and "Traceback" not in err


def test_a_batch_larger_than_the_data_or_a_ghost_batch_that_does_not_divide_it_is_one_line(tmp_path, capsys):
    data = make_idx_folder(tmp_path / "data")  # 300 training examples
    assert cli.main(["profile", "--variant", "seed_plain", "--batch-size", "400", "--data-dir", str(data)]) == 2
    assert "--batch-size 400: the training split holds 300 examples; choose at most 300" in capsys.readouterr().err
    assert cli.main(["profile", "--variant", "seed_bn:ghost_batch=5", "--steps", "2", "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith("ghost_batch=5 does not divide the batch size 32; choose a group "
                                                 "size that does (1, 2, 4, 8, 16, 32)")
