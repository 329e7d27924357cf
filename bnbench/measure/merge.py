"""``bnbench merge``: reports of disjoint runs of one experiment joined into one report.

What separate jobs produce (the slices of a job array, ``bnbench sweep --slice I/N``; sweeps or runs
of other seeds; a failed slice rerun later) becomes the report one job would have written: the runs
of all, in the grid's order, and every summary recomputed from its runs with the code that wrote
them (``experiment.summarize``). Refused in one line: reports of other kinds, protocols, grids or
code versions, and a run present in two reports. Environments may differ (a job array's tasks land
on other hosts): the merged report keeps the first one's and records a notice naming what differed.
"""

from __future__ import annotations

import json
from typing import Sequence

from bnbench.errors import BnbenchError
from bnbench.measure import experiment, sweep
from bnbench.record import model
from bnbench.record.model import REPORT_KIND, SWEEP_KIND

CODE_KEYS = ("bnbench", "git_commit")  # a different value: other code, whose numbers may differ


def merge(reports: Sequence[tuple[str, dict]], command: str | None = None) -> dict:
    """``reports`` ((name, report) pairs, each already checked against its model) joined, as the
    JSON the merged report is written as."""
    if len(reports) < 2:
        raise BnbenchError("merge needs two reports or more: name every report to join")
    (first_name, first), rest = reports[0], reports[1:]
    for name, report in rest:
        _check_same_experiment(first_name, first, name, report)
    runs = _joined_runs(reports)
    seeds = sorted({s for _, r in reports for s in r["protocol"]["seeds"]})
    protocol = {**first["protocol"], "seeds": seeds}
    notices = _environment_notices(reports)
    merged_from = [{"name": name, "run_id": r.get("run_id"), "created": r.get("created"), "command": r.get("command"),
                    "runs": len(r["runs"])} for name, r in reports]
    envelope = {"schema_version": first["schema_version"], "kind": first["kind"], "run_id": experiment.new_run_id(),
                "created": experiment.now(), "command": command, "environment": first["environment"],
                "protocol": protocol}
    if first["kind"] == SWEEP_KIND:
        grid_record = {k: v for k, v in first["sweep"].items() if k != "slice"}
        grid_record["seeds"] = seeds
        grid = sweep.Grid.from_record(grid_record, protocol)
        position = _positions(grid, protocol)
        notices += _missing_slices(reports) or _missing_configurations(grid, position, runs)
        if position:  # else the inputs' order, each input's runs as its sweep wrote them
            runs.sort(key=lambda r: (position.get(sweep.label(r["variant"], r["config"], grid), len(position)),
                                     r["seed"]))
        summary = _summaries(reports, runs, lambda r: sweep.label(r["variant"], r["config"], grid),
                             lambda r: r["config"]["updates_per_epoch"], grid.target)
        built = model.SweepReport(**envelope, sweep=grid_record, runs=runs, summary=summary,
                                  merged_from=merged_from, **({"notices": notices} if notices else {}))
    else:
        order = {v: i for _, r in reports for i, v in enumerate(r["summary"])}
        runs.sort(key=lambda r: (order[r["variant"]], r["seed"]))
        updates = first["protocol"]["updates_per_epoch"]
        target = next((s["time_to_target"]["target_val_accuracy"] for _, r in reports for s in r["summary"].values()
                       if s.get("time_to_target")), None)
        summary = _summaries(reports, runs, lambda r: r["variant"], lambda r: updates, target)
        built = model.RunReport(**envelope, runs=runs, summary=summary, merged_from=merged_from,
                                **({"notices": notices} if notices else {}))
    return built.dump()


def _check_same_experiment(first_name: str, first: dict, name: str, report: dict) -> None:
    """One line for the first way ``report`` is not more runs of ``first``'s experiment."""
    def refuse(what: str, how: str) -> None:
        raise BnbenchError(f"merge: {name} and {first_name} {what}; {how}")

    if report["kind"] != first["kind"] or first["kind"] not in (REPORT_KIND, SWEEP_KIND):
        refuse(f"are not both run or both sweep reports ({report['kind']} vs {first['kind']})",
               "merge reports of one kind")
    if report.get("data_parallel_scaling") or first.get("data_parallel_scaling"):
        refuse("include a harness's scaling points", "merge reports of bnbench run or bnbench sweep")
    code = [k for k in CODE_KEYS if report["environment"].get(k) != first["environment"].get(k)]
    if code:
        theirs, mine = ([r["environment"].get(k) for k in code] for r in (report, first))
        refuse(f"were made by other code ({', '.join(code)}: {theirs} vs {mine})",
               "merge reports of one bnbench version, or rerun the older ones")
    differ = sorted(k for k in {*report["protocol"], *first["protocol"]} - {"seeds"}
                    if report["protocol"].get(k) != first["protocol"].get(k))
    if differ:
        refuse(f"have other protocols ({', '.join(differ)} differ)", "merge only runs of one protocol")
    if first["kind"] == SWEEP_KIND:
        grids = [{k: v for k, v in r["sweep"].items() if k not in ("slice", "seeds")} for r in (report, first)]
        differ = sorted(k for k in {*grids[0], *grids[1]} if grids[0].get(k) != grids[1].get(k))
        if differ:
            refuse(f"are sweeps of other grids ({', '.join(differ)} differ)",
                   "merge the slices (or seeds) of one grid, all started with the same arguments but --slice and "
                   "--seed/--seeds")


def _key(run: dict) -> str:
    return json.dumps([run["variant"], run.get("config"), run["seed"]], sort_keys=True)


def _joined_runs(reports) -> list[dict]:
    seen: dict[str, str] = {}
    runs = []
    for name, report in reports:
        for run in report["runs"]:
            key = _key(run)
            if key in seen:
                where = f" at {_config_text(run['config'])}" if run.get("config") else ""
                raise BnbenchError(f"merge: {name} and {seen[key]} both hold the run of {run['variant']}{where}, seed "
                                   f"{run['seed']}: merge reports of disjoint runs (other --slice or --seed), "
                                   "and leave one of the two out")
            seen[key] = name
            runs.append(run)
    return runs


def _config_text(config: dict) -> str:
    return ", ".join(f"{k} {sweep.number(config[k])}" for k in ("base_learning_rate", "batch_size", "bn_momentum")
                     if k in config)


def _summaries(reports, runs: list[dict], name_of, updates_of, target) -> dict:
    """Every summary entry recomputed from its runs; what summarize does not compute (the variant's
    description, model, layout, floor) kept from the entry of the first report that has it."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(name_of(run), []).append(run)
    summary = {}
    for name, group in groups.items():
        base = next(r["summary"][name] for _, r in reports if name in r["summary"])
        entry = dict(base)
        entry.update(experiment.summarize(group, updates_of(group[0]), target))
        summary[name] = entry
    return summary


def _environment_notices(reports) -> list[str]:
    first_name, first = reports[0]
    notices = []
    for name, report in reports[1:]:
        differ = sorted(k for k in {*report["environment"], *first["environment"]}
                        if report["environment"].get(k) != first["environment"].get(k))
        if differ:
            notices.append(f"{name} ran in another environment than {first_name} ({', '.join(differ)} differ): its "
                           "times are not comparable with the others', its accuracies are; the environment recorded "
                           f"is {first_name}'s")
    return notices


def _positions(grid: sweep.Grid, protocol: dict) -> dict[str, int]:
    """The grid's entries in its order (``sweep.grid_positions``); none for a variant this bnbench
    does not know (the runs then keep the inputs' order, and no hole is counted)."""
    from bnbench.models import variants

    try:
        chosen = [variants.get(name, precision=grid.precision) for name in grid.variants]
        return sweep.grid_positions(grid, chosen, protocol["train_examples"])
    except BnbenchError:
        return {}


def _missing_configurations(grid: sweep.Grid, position: dict[str, int], runs: list[dict]) -> list[str]:
    """A notice naming the grid's configurations (``position``, in the grid's order) no input
    trained (slices of different counts, or reports of parts of a grid): a hole in the grid is
    said, never left silent."""
    trained = {sweep.label(r["variant"], r["config"], grid) for r in runs}
    missing = [name for name in position if name not in trained]
    if not missing:
        return []
    shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    many = len(missing) > 1
    count = f"{len(missing)} configuration{'s' * many} of the grid {'have' if many else 'has'}"
    return [f"{count} no runs ({shown}): merge "
            "their reports in when they exist, or train them into this report with bnbench sweep --resume"]


def _missing_slices(reports) -> list[str]:
    """A notice where the merged slices of a job array are not all of them."""
    slices = [r["sweep"].get("slice") for _, r in reports]
    if not all(slices):
        return []
    counts = {s["count"] for s in slices}
    if len(counts) == 1:
        count = counts.pop()
        missing = sorted(set(range(1, count + 1)) - {s["index"] for s in slices})
        if missing:
            return [f"slices {', '.join(f'{i}/{count}' for i in missing)} are missing: their configurations have "
                    "no runs; merge their reports in when they exist (or train them into this report with "
                    "bnbench sweep --resume)"]
    return []
