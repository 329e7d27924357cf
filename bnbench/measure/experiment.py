"""An experiment: variants x seeds under one protocol, measured, and turned into a report.

This is what ``bnbench run`` and the pytest benchmarks share, so that both produce the same figures.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Callable, Sequence

import numpy as np

from bnbench.data.sources import Dataset
from bnbench.engine import train
from bnbench.measure import floor
from bnbench.measure.environment import environment
from bnbench.models.variants import Variant
from bnbench.parallel.devices import SINGLE_DEVICE, DataParallel
from bnbench.record import model, stats
from bnbench.record.model import REPORT_KIND, SCHEMA_VERSION

# Unrolling the epoch's scan made no epoch faster on a CPU and multiplies compile time
# (docs/performance.md).
DEFAULT_UNROLL = 1
METRICS = ("train_loss", "train_accuracy", "train_eval_loss", "train_eval_accuracy", "val_loss", "val_accuracy")


def floor_epochs(epochs: int, every: int) -> list[int]:
    """The epochs (1-based) after which the floor is timed: every ``every``-th, and the last."""
    return [i for i in range(1, epochs + 1) if i % every == 0 or i == epochs]


def run_variant(variant: Variant, protocol: train.Protocol, data: train.DeviceData, seeds: Sequence[int],
                measure_floor: bool = False, unroll: int = DEFAULT_UNROLL, target: float | None = None,
                on_epoch: Callable[[int, dict, float], None] | None = None, floor_every: int = 1,
                configs: Sequence[dict] | None = None, eval_every: int | None = None,
                parallel: DataParallel = SINGLE_DEVICE) -> dict:
    """Trains one variant for all seeds together; returns its runs and its summary. With
    ``measure_floor``, the matmul floor is timed right after every ``floor_every``-th epoch (and the
    last), so that each timed epoch has a floor measured under the same machine load.

    ``configs`` (a sweep): configurations that differ only in numbers ({learning_rate, bn_momentum,
    momentum, weight_decay}; ``protocol`` holds the first's, and a weight decay if any has one),
    each trained for every seed, all of them together in one compiled program; the result then has
    ``summaries``, one per configuration in order, instead of ``summary``, and each run its ``config``.
    ``parallel``: each batch split over that many devices (see ``devices.DataParallel``)."""
    runs_of = list(configs) if configs else [None]
    run_seeds = [seed for _ in runs_of for seed in seeds]
    trainer = train.Trainer(variant.model, protocol, data, len(run_seeds), unroll=unroll, eval_every=eval_every,
                            parallel=parallel)
    hyperparams = None
    if configs:
        def each(key, default):
            return [c.get(key, default) for c in configs for _ in seeds]

        hyperparams = trainer.hyperparams(each("learning_rate", None), each("bn_momentum", None),
                                          each("momentum", protocol.momentum), each("weight_decay", 0.0))
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

    result = train.fit(trainer, run_seeds, epoch_done, hyperparams)
    floor_times = dict(zip(timed, clock.times)) if clock is not None else {}
    updates = protocol.updates_per_epoch(int(data.train_labels.shape[0]))
    runs = [run_record(variant.name, seed, i, result, floor_times, updates, eval_every, runs_of[i // len(seeds)])
            for i, seed in enumerate(run_seeds)]
    floor_summary = None
    if unavailable is not None:
        floor_summary = {"median_ratio": None, "unavailable": unavailable}
    if clock is not None:
        ratios = [result["epoch_times"][i - 1] / floor_times[i] for i in timed]
        floor_summary = {
            "matmul_flops_per_epoch": floor.total_flops(clock.products) * trainer.mesh_devices,
            "median_floor_time_s": float(np.median(clock.times)),
            # Each timed epoch against the floor run right after it, then the median of those ratios.
            "median_ratio": float(np.median(ratios)),
            "epochs_timed": timed,
            "compile_time_s": clock.compile_time_s,
            "unroll": unroll,
        }
    summaries = []
    for k in range(len(runs_of)):
        summary = summarize(runs[k * len(seeds):(k + 1) * len(seeds)], updates, target)
        summary["description"] = variant.description
        summary["model"] = variant.describe()["model"]  # the family and every field: what was trained
        summary["seed_devices"] = trainer.seed_devices
        if parallel.devices > 1:
            summary["data_devices"] = parallel.devices
        summary["runs_together"] = len(run_seeds)
        if floor_summary is not None:
            summary["floor"] = floor_summary
        summaries.append(summary)
    if configs:
        return {"runs": runs, "summaries": summaries}
    return {"runs": runs, "summary": summaries[0]}


def run_record(variant: str, seed: int, index: int, result: dict, floor_times: dict, updates_per_epoch: int,
               eval_every: int | None, config: dict | None) -> dict:
    """Run ``index`` of a ``train.fit`` result as the report records it. A run whose loss became NaN
    or infinite is ``diverged`` at that epoch and update; from that epoch on its records keep only
    their times, and it has no test metrics: absent, not NaN."""
    epochs, evals, diverged = [], [], None
    history = result["history"]
    test_finite = bool(np.isfinite(result["test"]["loss"][index]))
    for i, (metrics, seconds) in enumerate(zip(history, result["epoch_times"])):
        record = {"epoch": i + 1, "time_s": seconds}
        if i + 1 in floor_times:
            record["floor_time_s"] = floor_times[i + 1]
        first_nonfinite = int(metrics["first_nonfinite"][index])
        if diverged is None and first_nonfinite >= 0:
            diverged = {"epoch": i + 1, "update": first_nonfinite}
        # An epoch's last update can make the weights NaN after a finite batch loss: then only the
        # validation (or, at the end, the test) loss shows it, and that update is where it happened.
        last = i + 1 == len(history)
        if diverged is None and not (np.isfinite(metrics["val_loss"][index]) and (test_finite or not last)):
            diverged = {"epoch": i + 1, "update": (i + 1) * updates_per_epoch}
        if diverged is None:
            record.update({k: float(metrics[k][index]) for k in METRICS})
            if "evals" in metrics:
                evals += [{"update": i * updates_per_epoch + (j + 1) * eval_every,
                           "val_loss": float(loss), "val_accuracy": float(accuracy)}
                          for j, (loss, accuracy) in enumerate(zip(metrics["evals"]["loss"][index],
                                                                   metrics["evals"]["accuracy"][index]))]
        epochs.append(dict(sorted(record.items(), key=lambda kv: kv[0] in ("time_s", "floor_time_s"))))
    run = {"variant": variant, "seed": int(seed)}
    if config is not None:
        run["config"] = config
    run["epochs"] = epochs
    if eval_every:
        run["evals"] = evals
    if diverged is not None:
        run["diverged"] = diverged
    else:
        run["test_loss"] = float(result["test"]["loss"][index])
        run["test_accuracy"] = float(result["test"]["accuracy"][index])
    run["compile_time_s"] = result["compile_time_s"]
    return run


def _progress(run: dict, updates_per_epoch: int):
    """(updates, elapsed seconds, validation accuracy) at every evaluation of a run, in order: each
    epoch's in-program evaluations, then its end. Within an epoch, one compiled program, time is
    counted in proportion to the updates done."""
    by_epoch: dict[int, list] = {}
    for e in run.get("evals", []):
        by_epoch.setdefault((e["update"] - 1) // updates_per_epoch + 1, []).append(e)
    elapsed = 0.0
    for record in run["epochs"]:
        if "val_accuracy" not in record:
            return
        start = (record["epoch"] - 1) * updates_per_epoch
        for e in by_epoch.get(record["epoch"], []):
            yield e["update"], elapsed + record["time_s"] * (e["update"] - start) / updates_per_epoch, e["val_accuracy"]
        elapsed += record["time_s"]
        yield record["epoch"] * updates_per_epoch, elapsed, record["val_accuracy"]


def time_to_target(run: dict, target: float, updates_per_epoch: int) -> dict | None:
    """Wall time and updates until validation accuracy first reaches ``target``; None if never.
    At the grain of the run's evaluations: every epoch, or every ``--eval-every`` updates."""
    for updates, elapsed, accuracy in _progress(run, updates_per_epoch):
        if accuracy >= target:
            return {"epoch": -(-updates // updates_per_epoch), "time_s": elapsed, "updates": updates}
    return None


def summarize(runs: list[dict], updates_per_epoch: int, target: float | None = None) -> dict:
    """Mean and 95% CI over seeds of the final metrics, over the runs that did not diverge (None
    where all did); median epoch and update times."""
    finished = [r for r in runs if "diverged" not in r]
    final = {k: [r["epochs"][-1][k] for r in finished] for k in METRICS}
    final.update({k: [r[k] for r in finished] for k in ("test_loss", "test_accuracy")})
    epoch_times = [e["time_s"] for e in runs[0]["epochs"]]  # runs train together: times are shared
    summary = {
        "seeds": len(runs),
        **{k: stats.mean_ci(v) if v else None for k, v in final.items()},
        "diverged_seeds": len(runs) - len(finished),
        "epoch_time_s": stats.spread(epoch_times),
        "median_epoch_time_s": float(np.median(epoch_times)),
        "median_update_time_s": float(np.median(epoch_times)) / updates_per_epoch,
        "updates_per_epoch": updates_per_epoch,
        "compile_time_s": runs[0]["compile_time_s"],
    }
    if target is not None:
        reached = [time_to_target(r, target, updates_per_epoch) for r in runs]
        summary["time_to_target"] = {"target_val_accuracy": target, "per_seed": reached,
                                     "seeds_reached": sum(r is not None for r in reached)}
    return summary


def protocol_model(dataset: Dataset, seeds: Sequence[int], parallel: DataParallel = SINGLE_DEVICE,
                   protocol: train.Protocol | None = None, batch_order: str | None = None,
                   training: dict | None = None, precision: str = "float32") -> model.SharedProtocol:
    """What a run trained on and how: the fields ``bnbench compare`` checks before comparing. The
    one protocol builder of every report: without ``protocol`` (a sweep), what all its
    configurations share (``training``: the optimizer, and its momentum and weight decay where they
    share one; ``batch_order`` where all share one), each run's ``config`` holding the rest (batch
    size, learning rate, epochs, updates per epoch, a swept momentum or weight decay).
    ``precision``: the variants' (``--precision``)."""
    if training is None:
        p = protocol or train.Protocol()
        training = {"optimizer": p.optimizer, "momentum": p.momentum, "weight_decay": p.weight_decay}
    shared = {**dataset.describe(), **training, "precision": precision, "seeds": [int(s) for s in seeds],
              **parallel.protocol_fields()}
    if protocol is None:
        return model.SharedProtocol(**shared, **({"batch_order": batch_order} if batch_order is not None else {}))
    return model.Protocol(**shared, batch_order=protocol.batch_order, batch_size=protocol.batch_size,
                          learning_rate=protocol.learning_rate,
                          epochs=protocol.epochs,
                          updates_per_epoch=protocol.updates_per_epoch(len(dataset.train_labels)))


def protocol_record(dataset: Dataset, protocol: train.Protocol, seeds: Sequence[int],
                    parallel: DataParallel = SINGLE_DEVICE, precision: str = "float32") -> dict:
    """A run's protocol as its report holds it (the harness's accuracy benchmark keeps it too)."""
    return protocol_model(dataset, seeds, parallel, protocol, precision=precision).dump()


def new_run_id() -> str:
    """Names one run, so that two files written by it (the harness's bnbench report and its
    pytest-benchmark JSON) are known to be the same run when read together."""
    return uuid.uuid4().hex


def now() -> str:
    """When a report is created, as it records it."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def envelope(kind: str, protocol: model.SharedProtocol, command: str | None, run_id: str | None,
             created: str | None) -> dict:
    """The fields every report starts with (``model.Envelope``), shared by the run report, the
    harness's (a run report too) and the sweep report; a new run id unless given."""
    return {"schema_version": SCHEMA_VERSION, "kind": kind, "run_id": run_id or new_run_id(),
            "created": created, "command": command, "environment": model.Environment(**environment()),
            "protocol": protocol}


def make_report(dataset: Dataset, protocol: train.Protocol, seeds: Sequence[int],
                results: dict[str, dict], command: str | None = None, run_id: str | None = None,
                parallel: DataParallel = SINGLE_DEVICE, summary_extras: dict[str, dict] | None = None,
                data_parallel_scaling: list | None = None, precision: str = "float32",
                peers: list | None = None) -> dict:
    """The run report (``model.RunReport``), built and checked, as the JSON it is written as.
    ``summary_extras``: figures added to a variant's summary (the harness's lone-step time and seed
    scaling); ``data_parallel_scaling``: the harness's scaling points, if any; ``peers``: its
    comparisons with other frameworks (``measure.peers``), if any."""
    extras = summary_extras or {}
    report = model.RunReport(
        **envelope(REPORT_KIND, protocol_model(dataset, seeds, parallel, protocol, precision=precision), command,
                   run_id, now()),
        runs=[run for result in results.values() for run in result["runs"]],
        summary={name: {**result["summary"], **extras.get(name, {})} for name, result in results.items()},
        **({"data_parallel_scaling": data_parallel_scaling} if data_parallel_scaling else {}),
        **({"peers": peers} if peers else {}))
    return report.dump()
