"""Reading reports back: bnbench's own JSON and pytest-benchmark's, validated, into one shape.

Every file is checked once, here, into its typed model (``record.model``, by ``record.schema.check``);
anything wrong is a one-line ReportError naming the file and the field. The readers below build the
view from the model's attributes.

A loaded report is a dict with ``path``, ``kind``, ``report`` (the typed model), ``ref`` (its number
in the output, [1], [2], ...), ``label`` (the device it ran on), ``run_id``, ``environment``,
``protocol`` and ``variants``. Per variant, step times by their kind (STEP_KINDS; a kind a report
lacks is None), the final ``train_accuracy``/``val_accuracy``/``test_accuracy`` summaries (mean, ci95,
n), ``seeds``, ``time_to_target``, the per-seed ``curves`` of validation accuracy and ``seed_scaling``.
The figures are plain dicts (the models' ``dump``), as compare, page, sweeps and scaling read them.
"""

from __future__ import annotations

import json
from pathlib import Path

from bnbench.config import MOVING_STATISTICS
from bnbench.errors import BnbenchError
from bnbench.record import model, schema

ACCURACIES = ("train_accuracy", "val_accuracy", "test_accuracy")
# What comparisons set against each other: training accuracy as evaluated (reports before it was
# recorded have none), not the running training-mode mean, which batch statistics colour.
COMPARED = ("train_eval_accuracy", "val_accuracy", "test_accuracy")
# The kinds of step time. They measure different things and are never compared with each other:
# a lone update also pays one dispatch and one synchronisation, which an epoch spreads over all
# its updates, and an epoch's time is shared by the seeds trained together in it.
STEP_KINDS = {
    "lone_step": "one update",  # a lone compiled update on a fixed batch, synchronised (pytest benchmarks/)
    "epoch_per_update": "per update in epochs",  # an epoch's time / its updates, with `seeds` trained together
}


class ReportError(BnbenchError):
    pass


def load(path: str | Path) -> dict:
    path = Path(path)
    report, kind = read_report(path)
    try:
        loaded = READERS[kind](report)
    except schema.Invalid as e:
        raise ReportError(f"{path}: {e}") from None
    environment = report.machine_info.bnbench if kind == schema.PYTEST_BENCHMARK else report.environment
    return {"path": str(path), "kind": kind, "report": report, "label": _label(environment), **loaded}


def read_report(path: str | Path) -> tuple:
    """The report at ``path`` as its typed model, and its kind; one line naming the file if it is
    not one."""
    path = Path(path)
    raw = _read_json(path)
    try:
        kind, report = schema.check(raw)
    except schema.Invalid as e:
        raise ReportError(f"{path}: {e}") from None
    return report, kind


def read_valid(path: str | Path) -> dict:
    """A report as written, every field of it, once it is checked into its model (``bnbench sweep
    --resume`` reads it so)."""
    path = Path(path)
    raw = _read_json(path)
    try:
        schema.check(raw)
    except schema.Invalid as e:
        raise ReportError(f"{path}: {e}") from None
    return raw


def load_all(paths) -> list[dict]:
    """The reports at ``paths``, each run once (``merge_duplicates``), numbered for the output."""
    loaded = merge_duplicates([load(p) for p in paths])
    for i, r in enumerate(loaded):
        r["ref"] = i + 1
    return loaded


def merged_text(report: dict) -> str:
    """What the output says of the files merged into ``report``, or nothing."""
    return "".join(f" (and {m['path']}: the same run, by {m['how']}; merged, shown once)"
                   for m in report.get("merged", []))


def _read_json(path: Path):
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: cannot read it ({e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        what = e.msg.removesuffix(" at")
        raise ReportError(f"{path}: not valid JSON (truncated or damaged? {what} at line {e.lineno})") from None
    except (ValueError, RecursionError) as e:  # a number of too many digits; nesting too deep
        raise ReportError(f"{path}: not valid JSON ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def _label(env: model.Environment) -> str:
    """The device a report ran on: the GPU's name, or the CPU's model and cores."""
    if env.backend == "cpu":
        # The cores the run could use (under taskset, fewer than the machine has); older reports
        # recorded only the machine's.
        cores = env.usable_cores or env.cpu_count or "?"
        return f"{env.cpu_model or '?'}, {cores} cores (cpu)"
    return f"{env.device_count or '?'}x {env.device_kind or '?'} ({env.backend})"


def _dump(record: model.Record | None) -> dict | None:
    return None if record is None else record.dump()


def _lone_step(spread: model.Spread | None) -> dict | None:
    if spread is None:
        return None
    return {"median": spread.median, "iqr": spread.iqr, "n": spread.n}


def _epoch_per_update(summary: model.VariantSummary) -> dict:
    """An epoch's time over its updates: an update's cost inside compiled epochs, with ``seeds``
    trained together (they share the epoch's time)."""
    updates, epoch = summary.updates_per_epoch, summary.epoch_time_s
    return {"median": epoch.median / updates, "iqr": epoch.iqr / updates, "n": epoch.n,
            # Runs trained together share the epoch: a sweep's configurations too, not only its seeds.
            "seeds": summary.runs_together or summary.seeds, "seed_devices": summary.seed_devices,
            "data_devices": summary.data_devices or 1}


def same_layout(a: dict, b: dict) -> bool:
    """Whether two epoch-per-update figures come from the same number of seeds laid out over the
    same number of devices (5 seeds vmapped on one device cost about twice 5 over 5 devices), each
    batch split over as many (data-parallel)."""
    return all(a.get(k) == b.get(k) for k in ("seeds", "seed_devices", "data_devices"))


def _variant(summary: model.VariantSummary | None, runs: list[model.Run], lone_step: dict | None = None,
             seed_scaling: dict | None = None) -> dict:
    """One variant's figures; ``summary`` is None for a pytest-benchmark file without its accuracy benchmark."""
    entry = {"lone_step": lone_step, "epoch_per_update": None, "seed_scaling": seed_scaling,
             # Runs that diverged stop early and hold no accuracy after: the curves are the others',
             # and the count of those left out is kept, so that a plot can say what it omits.
             "curves": [[e.val_accuracy for e in r.epochs] for r in runs if r.diverged is None],
             "diverged_runs": sum(r.diverged is not None for r in runs), "finals": _finals(runs)}
    if summary is not None:
        entry.update({key: _dump(getattr(summary, key)) for key in (*ACCURACIES, "train_eval_accuracy")})
        # The model is absent in the oldest reports: then assume batch statistics.
        entry["batch_statistics"] = summary.model.norm in MOVING_STATISTICS if summary.model else True
        entry["model"] = _dump(summary.model)  # every field trained, for baselines named FIELD=VALUE
        entry.update(epoch_per_update=_epoch_per_update(summary), seeds=summary.seeds,
                     time_to_target=_dump(summary.time_to_target),
                     diverged_seeds=summary.diverged_seeds if summary.diverged_seeds is not None else 0)
        entry["lone_step"] = entry["lone_step"] or _lone_step(summary.step_time_s)
        entry["seed_scaling"] = entry["seed_scaling"] or _dump(summary.seed_scaling)
    return entry


def _finals(runs: list[model.Run]) -> dict[int, dict[str, float]]:
    """Each seed's final accuracies, over the runs that did not diverge: what paired comparisons
    set against each other seed by seed."""
    finals = {}
    for r in runs:
        last = r.epochs[-1]
        if r.diverged is None and last.train_accuracy is not None and last.val_accuracy is not None:
            finals[r.seed] = {"train_accuracy": last.train_accuracy, "val_accuracy": last.val_accuracy,
                              **({"train_eval_accuracy": last.train_eval_accuracy}
                                 if last.train_eval_accuracy is not None else {}),
                              **({"test_accuracy": r.test_accuracy} if r.test_accuracy is not None else {})}
    return finals


def _fingerprint(runs: list[model.Run]):
    """Every epoch's time of every run: two files holding the same ones hold the same session (the
    times are measured to the nanosecond), which identifies reports written before run_id."""
    if not runs:
        return None
    return tuple(sorted((r.variant, r.seed, tuple(e.time_s for e in r.epochs)) for r in runs))


def _from_run(report: model.RunReport) -> dict:
    runs: dict[str, list] = {}
    for run in report.runs:
        runs.setdefault(run.variant, []).append(run)
    return {"run_id": report.run_id, "fingerprint": _fingerprint(report.runs),
            "environment": report.environment.dump(), "protocol": report.protocol.dump(),
            "variants": {name: _variant(summary, runs.get(name, [])) for name, summary in report.summary.items()},
            "data_parallel_scaling": [point.dump() for point in report.data_parallel_scaling or []],
            "peers": [peer.dump() for peer in report.peers or []]}


def _figures(info: model.Record, *leave_out: str) -> dict:
    """A tagged benchmark's extra_info as the report keeps it: without the tag, and ``leave_out``."""
    return {key: value for key, value in info.dump().items() if key not in ("bnbench", *leave_out)}


def _from_pytest_benchmark(report: model.PytestBenchmark) -> dict:
    """Rebuilds a report from the extra_info bnbench's benchmarks store in pytest-benchmark's JSON."""
    found: dict[str, dict] = {}
    protocol, all_runs, scaling, peers = {}, [], [], []
    for bench in report.benchmarks:
        tag, info = bench.tag, bench.info
        if tag == "step" and info.batch_size in (None, 32):  # the notebook's batch, not a scaling one
            s = bench.step_stats
            found.setdefault(info.variant, {})["lone_step"] = {"median": s.median, "iqr": s.iqr, "n": s.rounds}
        elif tag in ("seed_scaling", "sweep_cost"):  # sweep_cost: --sweep-configs' epochs against --seeds'
            found.setdefault(info.variant, {})[tag] = _figures(info, "variant")
        elif tag == "data_parallel_scaling":
            scaling.append(_figures(info))
        elif tag == "peer":
            peers.append(_figures(info))
        elif tag == "accuracy":
            protocol = info.protocol.dump()
            all_runs += info.runs
            found.setdefault(info.variant, {}).update(summary=info.summary, runs=info.runs)
    if not found and not scaling and not peers:
        raise schema.Invalid("holds no bnbench benchmark results (no step, accuracy, seed_scaling, sweep_cost, "
                             "data_parallel_scaling or peer benchmark)")
    variants = {name: {**_variant(f.get("summary"), f.get("runs", []), f.get("lone_step"), f.get("seed_scaling")),
                       "sweep_cost": f.get("sweep_cost")}
                for name, f in found.items()}
    return {"run_id": report.machine_info.bnbench_run_id, "fingerprint": _fingerprint(all_runs),
            "environment": report.machine_info.bnbench.dump(), "protocol": protocol, "variants": variants,
            "data_parallel_scaling": scaling, "peers": peers}


def _from_sweep(report: model.SweepReport) -> dict:
    """A sweep as a report of one entry per variant and configuration, each also keeping its
    variant, config and runs for the study's plots; ``sweep`` is the grid."""
    configs = [(run, run.config.dump()) for run in report.runs]
    variants = {}
    for name, summary in report.summary.items():
        config = summary.config.dump()
        runs = [run for run, c in configs if run.variant == summary.variant and c == config]
        variants[name] = {**_variant(summary, runs), "variant": summary.variant, "config": config,
                          "runs": [run.dump() for run in runs]}
    return {"run_id": report.run_id, "fingerprint": _fingerprint(report.runs),
            "environment": report.environment.dump(), "protocol": report.protocol.dump(),
            "sweep": report.sweep.dump(), "variants": variants}


READERS = {schema.REPORT_KIND: _from_run, schema.SWEEP_KIND: _from_sweep,
           schema.PYTEST_BENCHMARK: _from_pytest_benchmark}


def same_run(a: dict, b: dict) -> bool:
    if a["run_id"] and b["run_id"]:
        return a["run_id"] == b["run_id"]
    return a["fingerprint"] is not None and a["fingerprint"] == b["fingerprint"]


def _fill_from(keep: dict, drop: dict) -> None:
    """Figures ``drop`` holds and ``keep`` lacks, copied into ``keep``: merging never loses one."""
    for name, figures in drop["variants"].items():
        mine = keep["variants"].setdefault(name, {})
        for key, value in figures.items():
            if mine.get(key) is None and value is not None:
                mine[key] = value


def merge_duplicates(loaded: list[dict]) -> list[dict]:
    """One entry per run. A harness session writes a bnbench report and pytest-benchmark's JSON of
    the same run; the bnbench report stays, in the place the first of the two had (the baseline
    stays the baseline), takes any figure only the other holds (a variant whose accuracy benchmark
    did not run has its step time in pytest-benchmark's file alone), and records the other under
    ``merged``.
    Two files of the same kind are both kept: that is a deliberate comparison with a copy."""
    kept = []
    for r in loaded:
        twin = next((k for k in kept if {k["kind"], r["kind"]} == {schema.REPORT_KIND, schema.PYTEST_BENCHMARK}
                     and same_run(k, r)), None)
        if twin is None:
            kept.append(r)
            continue
        keep, drop = (r, twin) if r["kind"] == schema.REPORT_KIND else (twin, r)
        _fill_from(keep, drop)
        for key in ("data_parallel_scaling", "peers"):
            keep[key] = keep.get(key) or drop.get(key, [])
        kept[kept.index(twin)] = keep
        how = "its run_id" if keep["run_id"] and drop["run_id"] else "identical epoch timings"
        keep.setdefault("merged", []).append({"path": drop["path"], "how": how})
    return kept
