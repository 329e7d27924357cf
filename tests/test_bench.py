import json

import jax
import pytest

from bnbench import cli
from bnbench.data.synthetic import synthetic_dataset
from bnbench.engine import train
from bnbench.measure import steptime
from bnbench.models import variants
from bnbench.parallel import devices


@pytest.fixture(scope="module")
def small_data():
    return train.DeviceData.from_dataset(synthetic_dataset(train=320, validation=64, test=64))


@pytest.mark.slow
def test_seed_scaling_compares_epochs_timed_in_alternation(small_data):
    protocol = train.Protocol(epochs=1)
    one_seed = steptime.EpochProgram(variants.get("seed_plain"), protocol, small_data, 1)
    seeds = steptime.EpochProgram(variants.get("seed_plain"), protocol, small_data, 2)
    for _ in range(3):
        one_seed()
        seeds()
    assert seeds.epochs == 3 and seeds.state.step.shape == (2,)
    assert int(seeds.state.step[0]) == 3 * protocol.updates_per_epoch(320)  # each call trains an epoch
    info = steptime.seed_scaling_info(one_seed, seeds)
    assert info["seeds"] == 2 and info["seed_devices"] == min(2, jax.device_count())
    assert info["ratios"] == [k / one for k, one in zip(seeds.times, one_seed.times)]
    assert info["ratio"] == sorted(info["ratios"])[1]
    assert info["one_seed_epoch_s"]["n"] == info["seeds_epoch_s"]["n"] == 3
    seeds()
    with pytest.raises(ValueError, match="alternation"):
        steptime.seed_scaling_info(one_seed, seeds)


def test_compare_shows_seed_scaling_from_a_pytest_benchmark_file(tmp_path, capsys):
    env = {"backend": "cpu", "cpu_model": "Test CPU", "cpu_count": 2}
    scaling = {"bnbench": "seed_scaling", "variant": "seed_bn", "seeds": 8, "seed_devices": 2, "ratio": 4.4}
    path = tmp_path / "pb.json"
    path.write_text(json.dumps({"machine_info": {"bnbench": env},
                                "benchmarks": [{"extra_info": scaling, "stats": {}}]}))
    assert cli.main(["compare", str(path)]) == 0
    assert "8: 4.40x" in capsys.readouterr().out


def test_cpu_devices_default_gives_every_core_a_device_and_splits_the_seeds_evenly():
    assert devices.cpu_devices_for([1], cores=2) == 1  # one seed: one device, as JAX starts
    assert devices.cpu_devices_for([1, 8], cores=2) == 2  # 4 seeds on each core
    assert devices.cpu_devices_for([5], cores=2) == 5  # 5 seeds do not split over 2 devices
    assert devices.cpu_devices_for([3], cores=8) == 3  # no more devices than seeds
    assert devices.cpu_devices_for([5, 8], cores=16) == 8
    assert devices.cpu_devices_for([12], cores=4) == 4
    assert devices.cpu_devices_for([9], cores=2) == 3
    assert devices.cpu_devices_for([97], cores=2) == 1  # a prime: 97 devices would be too many
