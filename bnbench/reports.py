"""Reading reports back: bnbench's own JSON and pytest-benchmark's, into one shape.

A loaded report is a dict with ``path``, ``label`` (the device it ran on), ``environment``,
``protocol`` and ``variants``: per variant ``step_time`` (median, iqr, ... seconds), the final
``train_accuracy``/``val_accuracy``/``test_accuracy`` summaries (mean, ci95), ``time_to_target``,
the per-seed ``curves`` of validation accuracy and ``seed_scaling`` (K seeds against one).
Anything unreadable is a one-line ReportError.
"""

from __future__ import annotations

import json
from pathlib import Path

from bnbench.errors import BnbenchError
from bnbench.runner import REPORT_KIND, SCHEMA_VERSION
from bnbench.stats import spread

ACCURACIES = ("train_accuracy", "val_accuracy", "test_accuracy")


class ReportError(BnbenchError):
    pass


def load(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: cannot read it ({e})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON (truncated or damaged? {e.msg} at line {e.lineno})") from None
    if not isinstance(raw, dict):
        raise ReportError(f"{path}: not a bnbench or pytest-benchmark report (top level is not an object)")
    try:
        if raw.get("kind") == REPORT_KIND:
            return _from_bnbench(path, raw)
        if "benchmarks" in raw and "machine_info" in raw:
            return _from_pytest_benchmark(path, raw)
    except ReportError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ReportError(f"{path}: incomplete report ({type(e).__name__}: {e})") from None
    raise ReportError(f"{path}: not a bnbench or pytest-benchmark report (no 'kind' or 'benchmarks' field)")


def _check_version(path: Path, version) -> None:
    if not isinstance(version, int):
        raise ReportError(f"{path}: schema_version {version!r} is not a whole number")
    if version > SCHEMA_VERSION:
        raise ReportError(f"{path}: written with schema_version {version}, newer than this bnbench reads "
                          f"({SCHEMA_VERSION}): upgrade bnbench")


def _label(env: dict) -> str:
    """The device a report ran on: the GPU's name, or the CPU's model and cores."""
    if env.get("backend") == "cpu":
        return f"{env.get('cpu_model', '?')}, {env.get('cpu_count', '?')} cores (cpu)"
    return f"{env.get('device_count', 1)}x {env.get('device_kind', '?')} ({env.get('backend', '?')})"


def _variant_from_runs(summary: dict, runs: list[dict]) -> dict:
    step = summary.get("step_time_s")
    if step is None:  # bnbench run: the time per update inside whole compiled epochs
        updates = summary["updates_per_epoch"]
        step = spread([e["time_s"] / updates for e in runs[0]["epochs"]]) if runs else None
        step_source = "epoch"
    else:
        step_source = "step"
    return {
        "step_time": step, "step_time_source": step_source,
        **{k: summary[k] for k in ACCURACIES},
        "time_to_target": summary.get("time_to_target"),
        "curves": [[e["val_accuracy"] for e in r["epochs"]] for r in runs],
        "floor_ratio": summary.get("floor", {}).get("median_ratio"),
        "median_epoch_time_s": summary.get("median_epoch_time_s"),
        "seed_scaling": summary.get("seed_scaling"),
    }


def _from_bnbench(path: Path, raw: dict) -> dict:
    _check_version(path, raw.get("schema_version"))
    runs_by_variant: dict[str, list] = {}
    for run in raw["runs"]:
        runs_by_variant.setdefault(run["variant"], []).append(run)
    variants = {name: _variant_from_runs(summary, runs_by_variant.get(name, []))
                for name, summary in raw["summary"].items()}
    return {"path": str(path), "label": _label(raw["environment"]), "environment": raw["environment"],
            "protocol": raw["protocol"], "variants": variants}


def _from_pytest_benchmark(path: Path, raw: dict) -> dict:
    """Rebuilds a report from the extra_info bnbench's benchmarks store in pytest-benchmark's JSON."""
    env = raw["machine_info"].get("bnbench")
    if env is None:
        raise ReportError(f"{path}: a pytest-benchmark file, but not from bnbench's benchmarks "
                          "(no machine_info.bnbench)")
    variants: dict[str, dict] = {}
    protocol = None
    for bench in raw["benchmarks"]:
        info = bench.get("extra_info", {})
        kind, name = info.get("bnbench"), info.get("variant")
        if kind == "step" and info.get("batch_size", 32) == 32:
            s = bench["stats"]
            step = {"median": s["median"], "iqr": s["iqr"], "min": s["min"], "max": s["max"], "n": s["rounds"]}
            variants.setdefault(name, {})["step_time"] = step
            variants[name]["step_time_source"] = "step"
        elif kind == "seed_scaling":
            variants.setdefault(name, {})["seed_scaling"] = info
        elif kind == "accuracy":
            protocol = info["protocol"]
            entry = _variant_from_runs(info["summary"], info["runs"])
            entry.pop("step_time"), entry.pop("step_time_source")
            variants.setdefault(name, {}).update(entry)
    if not variants:
        raise ReportError(f"{path}: holds no bnbench benchmark results")
    return {"path": str(path), "label": _label(env), "environment": env, "protocol": protocol or {},
            "variants": variants}
