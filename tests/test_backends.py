"""The paths that depend on the backend, with a GPU's answers faked where this machine has none.

Each CPU-specific choice in bnbench is named here, with what it does when the backend is a GPU:
- CPU devices for seeds (``devices.expose_cpu_devices``) change only JAX's CPU client; a GPU run's
  seeds go to the GPUs, vmapped on each (``seeds_one_after_another`` is False there).
- ``cpu_model``, ``cpu_flags`` and ``usable_cores`` describe the host in every report; the device
  a report ran on is the GPU's kind, not the host CPU.
- The matmul floor and the step-time synchronisation (``jax.block_until_ready``) are
  backend-agnostic; ``test_step_time_follows_the_work`` (benchmarks/) skips off a CPU.
"""

import subprocess
import sys
import textwrap
import types

import jax
import numpy as np
import pytest

from bnbench.measure import environment
from bnbench.parallel import devices


def fake_mesh(platform: str, count: int):
    return types.SimpleNamespace(devices=np.array([types.SimpleNamespace(platform=platform)] * count))


def test_seeds_train_one_after_another_only_on_cpu_devices():
    assert devices.seeds_one_after_another(fake_mesh("cpu", 2))
    assert not devices.seeds_one_after_another(fake_mesh("gpu", 2))  # vmapped on each GPU
    assert not devices.seeds_one_after_another(fake_mesh("tpu", 4))
    assert not devices.seeds_one_after_another(None)  # one device: vmap uses all its cores


def test_environment_on_a_gpu_names_the_gpu_and_still_the_host(monkeypatch):
    gpu = types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(jax, "devices", lambda *a: [gpu, gpu])
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    env = environment.environment()
    assert (env["backend"], env["device_kind"], env["device_count"]) == ("gpu", "NVIDIA H100 80GB HBM3", 2)
    assert env["cpu_model"] and isinstance(env["cpu_flags"], list) and env["usable_cores"] >= 1


def test_cpu_model_and_flags_come_from_cpuinfo(monkeypatch):
    cpuinfo = textwrap.dedent("""\
        processor	: 0
        vendor_id	: AuthenticAMD
        cpu family	: 25
        model		: 17
        model name	: AMD EPYC Processor
        stepping	: 1
        flags		: fpu sse4_2 avx avx2 fma avx512f avx512bw

        processor	: 1
        model name	: AMD EPYC Processor
        """)
    monkeypatch.setattr(environment, "_cpuinfo", lambda: environment._parse_cpuinfo(cpuinfo))
    assert environment.cpu_model() == "AMD EPYC Processor (family 25, model 17, stepping 1)"
    assert environment.cpu_flags() == ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw"]


def test_usable_cores_follow_the_affinity_not_the_machine():
    """Under `taskset -c 0` a report must say 1 core, whatever the machine has."""
    code = "from bnbench.measure import environment as e; print(e.usable_cores(), e.environment()['usable_cores'])"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]


def test_cpu_devices_are_asked_of_the_cpu_client_only():
    """What --cpu-devices changes: the CPU client's device count, nothing a GPU backend uses."""
    code = ("from bnbench.parallel import devices; devices.expose_cpu_devices(3); import jax; "
            "print(len(jax.devices('cpu')), jax.default_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    count, backend = out.stdout.split()
    assert count == "3" and backend == jax.default_backend()


@pytest.mark.parametrize("cores", [1, 2, 4, 8])
def test_the_harness_lays_out_seeds_as_run_does(cores):
    """`pytest benchmarks/ --seeds K` and `bnbench run --seeds K` put K seeds on the same devices, so
    that their epoch times compare; side benchmarks add at most one device per core."""
    for seeds in range(1, 13):
        assert devices.cpu_devices_with_side_runs(seeds, (), cores) == devices.cpu_devices_for([seeds], cores)
        assert devices.cpu_devices_with_side_runs(seeds, (1, 1), cores) == devices.cpu_devices_for([seeds], cores)
    assert devices.cpu_devices_with_side_runs(1, (8,), cores) == min(devices.cpu_devices_for([8], cores), cores)
