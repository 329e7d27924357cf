"""The notebook's experiment as benchmarks: step time and full-training accuracy per variant."""

from __future__ import annotations

import pytest

from bnbench import bench, runner, variants


def variant_names(config):
    return [v.strip() for v in config.getoption("--variants").split(",") if v.strip()]


def pytest_generate_tests(metafunc):
    if "variant_name" in metafunc.fixturenames:
        metafunc.parametrize("variant_name", variant_names(metafunc.config))


def test_step_time(benchmark, bnbench_session, variant_name):
    """One compiled update on a fixed batch of 32, synchronised; compile time recorded apart."""
    program = bench.StepProgram(variants.get(variant_name), bnbench_session.data)
    benchmark.group = "step time"
    benchmark.extra_info.update({"bnbench": "step", "variant": variant_name, "batch_size": 32})
    benchmark.pedantic(program, rounds=bnbench_session.step_rounds, warmup_rounds=10, iterations=1)
    stats = benchmark.stats.stats
    figures = bench.step_extra_info(program, stats.median, program.floor_time_s())
    benchmark.extra_info.update(figures)
    step = {"median": stats.median, "iqr": stats.iqr, "min": stats.min, "max": stats.max, "n": stats.rounds}
    bnbench_session.step_times[variant_name] = {"step_time_s": step, "step": figures}


def test_accuracy(benchmark, bnbench_session, variant_name):
    """The whole protocol, all seeds together; the benchmark's time is the training time."""
    s = bnbench_session
    benchmark.group = "training"
    result = benchmark.pedantic(
        runner.run_variant, args=(variants.get(variant_name), s.protocol, s.data, s.seeds),
        kwargs={"measure_floor": True, "target": s.target}, rounds=1, iterations=1)
    s.results[variant_name] = result
    benchmark.extra_info.update({
        "bnbench": "accuracy", "variant": variant_name, "summary": result["summary"], "runs": result["runs"],
        "protocol": runner.protocol_record(s.dataset, s.protocol, s.seeds)})


SCALING = [("seed_plain", 32), ("seed_plain", 64), ("seed_plain_deep", 32)]


@pytest.mark.parametrize("variant_name_, batch_size", SCALING, ids=[f"{v}-b{b}" for v, b in SCALING])
def test_step_time_scaling(benchmark, bnbench_session, variant_name_, batch_size):
    """Step time must follow the work: a doubled batch and a deeper model each cost more."""
    program = bench.StepProgram(variants.get(variant_name_), bnbench_session.data, batch_size=batch_size)
    benchmark.group = "step time scaling"
    benchmark.extra_info.update({"bnbench": "scaling", "variant": variant_name_, "batch_size": batch_size,
                                 "flops_per_update": program.flops})
    benchmark.pedantic(program, rounds=bnbench_session.step_rounds, warmup_rounds=10, iterations=1)
    bnbench_session.scaling[f"{variant_name_}-b{batch_size}"] = benchmark.stats.stats.median


def test_step_time_follows_the_work(bnbench_session):
    scaling = bnbench_session.scaling
    if len(scaling) < len(SCALING):
        pytest.skip("the scaling benchmarks did not run")
    base = scaling["seed_plain-b32"]
    assert scaling["seed_plain-b64"] > base, scaling
    assert scaling["seed_plain_deep-b32"] > base, scaling
