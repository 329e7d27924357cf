"""Real reports for the report tests, made once per test session by bnbench's own code.

``made_report`` trains on small synthetic data as ``bnbench run`` would (cached, so that
test_reports, test_schema and test_fuzz share one training); ``harness_report`` adds what the
pytest harness adds; ``as_pytest_benchmark`` writes a report as the harness's pytest-benchmark JSON.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
COMMITTED = sorted(RESULTS.glob("*.json"))
RUN_ID = "0123456789abcdef0123456789abcdef"


@functools.lru_cache(maxsize=None)
def _made_text() -> str:
    from bnbench.data.synthetic import synthetic_dataset
    from bnbench.engine import train
    from bnbench.measure import experiment
    from bnbench.models import variants

    dataset = synthetic_dataset(train=300, validation=100, test=100)
    data = train.DeviceData.from_dataset(dataset)
    protocol = train.Protocol(epochs=2, learning_rate=0.05)
    seeds = [0, 1, 2]
    results = {v: experiment.run_variant(variants.get(v), protocol, data, seeds, measure_floor=True, target=0.5)
               for v in ("seed_plain", "seed_bn")}
    return json.dumps(experiment.make_report(dataset, protocol, seeds, results))


def made_report() -> dict:
    """``bnbench run``'s report: seed_plain and seed_bn, 3 seeds, 2 epochs (a fresh copy each call)."""
    return json.loads(_made_text())


def set_epoch_time(report: dict, variant: str, median_s: float, iqr_s: float) -> None:
    """Sets a variant's epoch times (summary and runs alike), so that tests compare known figures."""
    summary = report["summary"][variant]
    summary["epoch_time_s"].update(median=median_s, iqr=iqr_s, min=median_s - iqr_s, max=median_s + iqr_s)
    summary["median_epoch_time_s"] = median_s
    for run in report["runs"]:
        if run["variant"] == variant:
            for epoch in run["epochs"]:
                epoch["time_s"] = median_s


def harness_report(lone_over_epoch: float = 1.46) -> dict:
    """The report ``pytest benchmarks/`` writes: also a lone update's time per variant, here
    ``lone_over_epoch`` times the epoch's time per update (a lone update pays a dispatch and a sync)."""
    report = made_report()
    report["run_id"] = RUN_ID
    for name, summary in report["summary"].items():
        set_epoch_time(report, name, 0.01, 0.0002)
        per_update = 0.01 / summary["updates_per_epoch"]
        median = per_update * lone_over_epoch
        summary["step_time_s"] = {"median": median, "iqr": median * 0.02, "min": median * 0.9,
                                  "max": median * 1.5, "n": 300}
        summary["seed_scaling"] = {"seeds": 8, "seed_devices": 2, "ratio": 4.5, "ratios": [4.4, 4.5, 4.6]}
    return report


def as_pytest_benchmark(report: dict) -> dict:
    """``report`` as the harness's pytest-benchmark JSON: machine_info.bnbench and tagged benchmarks."""
    benchmarks = []
    for name, summary in report["summary"].items():
        summary = copy.deepcopy(summary)
        step = summary.pop("step_time_s", None)
        scaling = summary.pop("seed_scaling", None)
        if step is not None:
            stats = {"median": step["median"], "iqr": step["iqr"], "min": step["min"], "max": step["max"],
                     "rounds": step["n"], "mean": step["median"], "data": [step["median"]] * 5}
            benchmarks.append({"name": f"test_step_time[{name}]", "stats": stats,
                               "extra_info": {"bnbench": "step", "variant": name, "batch_size": 32}})
        benchmarks.append({"name": f"test_accuracy[{name}]", "stats": {"median": 1.0},
                           "extra_info": {"bnbench": "accuracy", "variant": name, "summary": summary,
                                          "runs": [r for r in report["runs"] if r["variant"] == name],
                                          "protocol": report["protocol"]}})
        if scaling is not None:
            benchmarks.append({"name": f"test_seed_scaling[{name}]", "stats": {"median": 1.0},
                               "extra_info": {"bnbench": "seed_scaling", "variant": name, **scaling}})
    machine_info = {"node": "ci", "bnbench": report["environment"]}
    if "run_id" in report:
        machine_info["bnbench_run_id"] = report["run_id"]
    return {"machine_info": machine_info, "commit_info": {}, "benchmarks": benchmarks, "version": "5.0"}


def write(path: Path, report: dict) -> Path:
    path.write_text(json.dumps(report))
    return path
