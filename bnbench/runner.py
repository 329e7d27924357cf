"""An experiment: variants x seeds under one protocol, measured, and turned into a report dict.

This is what ``bnbench run`` and the pytest benchmarks share, so that both produce the same figures.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Callable, Sequence

import numpy as np

from bnbench import floor, stats, train
from bnbench.data import Dataset
from bnbench.environment import environment
from bnbench.schema import REPORT_KIND, SCHEMA_VERSION
from bnbench.variants import Variant

# Unrolling the epoch's scan by 2 or 4 made neither epoch faster on a 2-core x86 CPU and raised
# the epoch/floor ratio (1.17 to 1.26x for seed_plain), and it multiplies compile time (see README).
DEFAULT_UNROLL = 1
METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


def floor_epochs(epochs: int, every: int) -> list[int]:
    """The epochs (1-based) after which the floor is timed: every ``every``-th, and the last."""
    return [i for i in range(1, epochs + 1) if i % every == 0 or i == epochs]


def run_variant(variant: Variant, protocol: train.Protocol, data: train.DeviceData, seeds: Sequence[int],
                measure_floor: bool = False, unroll: int = DEFAULT_UNROLL, target: float | None = None,
                on_epoch: Callable[[int, dict, float], None] | None = None, floor_every: int = 1) -> dict:
    """Trains one variant for all seeds together; returns its runs and its summary. With
    ``measure_floor``, the matmul floor is timed right after every ``floor_every``-th epoch (and the
    last), so that each timed epoch has a floor measured under the same machine load."""
    trainer = train.Trainer(variant.model, protocol, data, len(seeds), unroll=unroll)
    clock, timed, unavailable = None, [], None
    if measure_floor:
        try:
            products = floor.matmuls(trainer.epoch_program, *trainer.epoch_args())
        except floor.FloorUnavailable as e:
            unavailable = str(e)
        else:
            clock = floor.FloorClock(products, unroll=trainer.unroll, mesh=trainer.mesh)
            timed = floor_epochs(protocol.epochs, floor_every)

    def epoch_done(i, metrics, seconds):
        if i + 1 in timed:
            clock.tick()
        if on_epoch is not None:
            on_epoch(i, metrics, seconds)

    result = train.fit(trainer, seeds, epoch_done)
    floor_times = dict(zip(timed, clock.times)) if clock is not None else {}
    updates = protocol.updates_per_epoch(int(data.train_labels.shape[0]))
    runs = []
    for s, seed in enumerate(seeds):
        epochs = []
        for i, (metrics, seconds) in enumerate(zip(result["history"], result["epoch_times"])):
            record = {"epoch": i + 1, **{k: float(metrics[k][s]) for k in METRICS}, "time_s": seconds}
            if i + 1 in floor_times:
                record["floor_time_s"] = floor_times[i + 1]
            epochs.append(record)
        runs.append({"variant": variant.name, "seed": int(seed), "epochs": epochs,
                     "test_loss": float(result["test"]["loss"][s]),
                     "test_accuracy": float(result["test"]["accuracy"][s]),
                     "compile_time_s": result["compile_time_s"]})
    summary = summarize(runs, updates, target)
    summary["description"] = variant.description
    summary["model"] = variant.describe()["model"]  # the family and every field: what was trained
    summary["seed_devices"] = trainer.seed_devices
    if unavailable is not None:
        summary["floor"] = {"median_ratio": None, "unavailable": unavailable}
    if clock is not None:
        ratios = [result["epoch_times"][i - 1] / floor_times[i] for i in timed]
        summary["floor"] = {
            "matmul_flops_per_epoch": floor.total_flops(clock.products) * trainer.seed_devices,
            "median_floor_time_s": float(np.median(clock.times)),
            # Each timed epoch against the floor run right after it, then the median of those ratios.
            "median_ratio": float(np.median(ratios)),
            "epochs_timed": timed,
            "compile_time_s": clock.compile_time_s,
            "unroll": unroll,
        }
    return {"runs": runs, "summary": summary}


def time_to_target(epochs: list[dict], target: float, updates_per_epoch: int) -> dict | None:
    """Wall time and updates until validation accuracy first reaches ``target``; None if never."""
    elapsed = 0.0
    for record in epochs:
        elapsed += record["time_s"]
        if record["val_accuracy"] >= target:
            return {"epoch": record["epoch"], "time_s": elapsed, "updates": record["epoch"] * updates_per_epoch}
    return None


def summarize(runs: list[dict], updates_per_epoch: int, target: float | None = None) -> dict:
    """Mean and 95% CI over seeds of the final metrics; median epoch and update times."""
    final = {k: [r["epochs"][-1][k] for r in runs] for k in METRICS}
    final.update({k: [r[k] for r in runs] for k in ("test_loss", "test_accuracy")})
    epoch_times = [e["time_s"] for e in runs[0]["epochs"]]  # seeds train together: times are shared
    summary = {
        "seeds": len(runs),
        **{k: stats.mean_ci(v) for k, v in final.items()},
        "epoch_time_s": stats.spread(epoch_times),
        "median_epoch_time_s": float(np.median(epoch_times)),
        "median_update_time_s": float(np.median(epoch_times)) / updates_per_epoch,
        "updates_per_epoch": updates_per_epoch,
        "compile_time_s": runs[0]["compile_time_s"],
    }
    if target is not None:
        reached = [time_to_target(r["epochs"], target, updates_per_epoch) for r in runs]
        summary["time_to_target"] = {"target_val_accuracy": target, "per_seed": reached,
                                     "seeds_reached": sum(r is not None for r in reached)}
    return summary


def protocol_record(dataset: Dataset, protocol: train.Protocol, seeds: Sequence[int]) -> dict:
    """What a run trained on and how: the fields ``bnbench compare`` checks before comparing."""
    return {
        **dataset.describe(),
        "batch_size": protocol.batch_size,
        "optimizer": "sgd",
        "learning_rate": protocol.learning_rate,
        "momentum": 0.0,
        "epochs": protocol.epochs,
        "updates_per_epoch": protocol.updates_per_epoch(len(dataset.train_labels)),
        "seeds": [int(s) for s in seeds],
    }


def new_run_id() -> str:
    """Names one run, so that two files written by it (the harness's bnbench report and its
    pytest-benchmark JSON) are known to be the same run when read together."""
    return uuid.uuid4().hex


def make_report(dataset: Dataset, protocol: train.Protocol, seeds: Sequence[int],
                results: dict[str, dict], command: str | None = None, run_id: str | None = None) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": REPORT_KIND,
        "run_id": run_id or new_run_id(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "environment": environment(),
        "protocol": protocol_record(dataset, protocol, seeds),
        "runs": [run for result in results.values() for run in result["runs"]],
        "summary": {name: result["summary"] for name, result in results.items()},
    }
