"""``bnbench compare``: reports side by side, refusing to compare what is not comparable."""

from __future__ import annotations

from bnbench import reports
from bnbench.stats import format_ci
from bnbench.table import format_table

# What must be equal for two reports' accuracies and times to mean the same thing.
PROTOCOL_KEYS = ("dataset", "order", "train_examples", "validation_examples", "batch_size", "optimizer",
                 "learning_rate", "epochs", "seeds")
HEADERS = ("variant", "report", "device", "step time (median ± IQR)", "vs first", "K seeds vs 1",
           "train acc", "val acc", "test acc", "to target")


def differences(base: dict, other: dict) -> list[str]:
    """Protocol fields that differ between two loaded reports (fields one of them lacks are skipped)."""
    a, b = base["protocol"], other["protocol"]
    return [f"{key} {a[key]} vs {b[key]}" for key in PROTOCOL_KEYS if key in a and key in b and a[key] != b[key]]


def _step_cell(step: dict | None) -> str:
    if not step:
        return "-"
    return f"{step['median'] * 1e3:.3f} ± {step['iqr'] * 1e3:.3f} ms"


def _seeds_cell(scaling: dict | None) -> str:
    if not scaling:
        return "-"
    return f"{scaling['seeds']}: {scaling['ratio']:.2f}x"


def _target_cell(target: dict | None) -> str:
    if not target:
        return "-"
    reached = [t for t in target["per_seed"] if t is not None]
    if not reached:
        return f"never ({target['target_val_accuracy']})"
    mean_s = sum(t["time_s"] for t in reached) / len(reached)
    mean_updates = sum(t["updates"] for t in reached) / len(reached)
    return f"{mean_s:.1f} s / {mean_updates:.0f} upd ({len(reached)}/{len(target['per_seed'])})"


def regressions(base: dict, other: dict, pct: float) -> list[str]:
    """Step times slower by more than ``pct``% beyond the two reports' noise (IQR relative to the
    median), and accuracies below the lower end of the baseline's 95% confidence interval."""
    found = []
    for name, b in base["variants"].items():
        o = other["variants"].get(name)
        if o is None:
            continue
        bs, os_ = b.get("step_time"), o.get("step_time")
        if bs and os_:
            noise = max(bs["iqr"] / bs["median"], os_["iqr"] / os_["median"])
            slower = os_["median"] / bs["median"] - 1
            if slower > pct / 100 + noise:
                found.append(f"{name}: step time {slower:+.1%} in {other['path']} "
                             f"(allowed {pct:g}% + noise {noise:.1%})")
        for key in reports.ACCURACIES:
            if b.get(key) and o.get(key) and b[key].get("ci95"):
                low = b[key]["ci95"][0]
                if o[key]["mean"] < low:
                    found.append(f"{name}: {key} {o[key]['mean']:.4f} in {other['path']} is below the "
                                 f"baseline's 95% CI (from {low:.4f})")
    return found


def compare(paths: list[str], markdown: bool = False, fail_on_regression: float | None = None) -> tuple[str, bool]:
    """The reports at ``paths`` side by side; returns the text and whether anything regressed."""
    return compare_loaded([reports.load(p) for p in paths], markdown, fail_on_regression)


def compare_loaded(loaded: list[dict], markdown: bool = False,
                   fail_on_regression: float | None = None) -> tuple[str, bool]:
    """``compare`` for reports already read with ``reports.load``."""
    base = loaded[0]
    for other in loaded[1:]:
        diff = differences(base, other)
        if diff:
            raise reports.ReportError(f"{other['path']} is not comparable with {base['path']}: " + "; ".join(diff))
    rows = []
    names = list(dict.fromkeys(name for r in loaded for name in r["variants"]))
    for name in names:
        base_step = base["variants"].get(name, {}).get("step_time")
        for i, r in enumerate(loaded):
            v = r["variants"].get(name)
            if v is None:
                continue
            step = v.get("step_time")
            ratio = f"{step['median'] / base_step['median']:.2f}x" if step and base_step else "-"
            rows.append([name, i + 1, r["label"], _step_cell(step), ratio, _seeds_cell(v.get("seed_scaling")),
                         *[format_ci(v[k]) if v.get(k) else "-" for k in reports.ACCURACIES],
                         _target_cell(v.get("time_to_target"))])
    legend = "\n".join(f"[{i + 1}] {r['path']}: {r['label']}, jax {r['environment'].get('jax')}, "
                       f"{r['environment'].get('cpu_model')}" for i, r in enumerate(loaded))
    text = format_table(HEADERS, rows, markdown=markdown) + "\n\n" + legend + (
        "\n\nAccuracy: mean ± 95% CI half-width over seeds. Step time: one compiled update "
        "(or, for `bnbench run` reports, an epoch's time per update). K seeds vs 1: an epoch of K "
        "seeds trained together against one seed's, timed in alternation.")
    regressed = False
    if fail_on_regression is not None:
        found = [line for other in loaded[1:] for line in regressions(base, other, fail_on_regression)]
        regressed = bool(found)
        text += "\n\n" + ("\n".join(["REGRESSIONS:"] + found) if found else
                          f"no regression beyond {fail_on_regression:g}% and the noise")
    return text, regressed
