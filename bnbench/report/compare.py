"""``bnbench compare``: reports side by side, refusing to compare what is not comparable.

Step times are compared only with the same kind of step time (reading.STEP_KINDS). The gate
(``--fail-on-regression PCT``) fails closed: whatever the baseline holds that a later report
lacks, or that cannot be tested (an accuracy without an interval), fails it, named.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field

from bnbench.config import variant_changes
from bnbench.record import stats
from bnbench.record.model import PROTOCOL_DEFAULTS, protocol_value
from bnbench.record.schema import PROTOCOL_KEYS
from bnbench.record.stats import format_ci
from bnbench.report import reading, scaling
from bnbench.report.reading import ACCURACIES, COMPARED, STEP_KINDS
from bnbench.report.table import format_table

KEY = "\n".join([
    "Accuracy: mean ± 95% CI half-width over seeds. Train acc: the running mean over the last epoch, in "
    "training mode (batch statistics, weights changing); train acc (eval): the first 10,000 training examples "
    "evaluated as validation is, after the epoch (compared where reports record it).",
    "One update: a lone compiled update on a fixed batch, synchronised (`pytest benchmarks/` only).",
    "Per update in epochs: an epoch's time over its updates; the seeds trained together share the epoch.",
    "vs [N]: this time over report [N]'s time of the same kind (and seeds): below 1x faster, above 1x slower. "
    "Times of different kinds are never compared.",
    "K seeds vs 1: an epoch of K seeds trained together against one seed's, timed in alternation.",
    "Differences: one side's mean accuracy minus the other's, with its 95% CI and two-sided p-value. Variants "
    "of one report share their seeds (the same shuffles and initial keys), so they are compared seed by seed "
    "(paired t-test, n = the seeds both trained without diverging); across reports, Welch's unpaired test "
    "(n = each side's seeds).",
    "Families: the comparisons against one baseline on one accuracy in one report (or of one later report "
    "against the first) form a family; p Holm is Holm's adjustment within it, and the verdict reads it.",
    "Verdict: better or worse (p Holm < 0.05); equivalent (two one-sided tests against ±margin, each at 2.5% "
    "after Holm's adjustment over the family: stricter than the 95% CI shown lying inside ±margin, which is "
    "the same test unadjusted); else inconclusive, with the smallest difference these seeds detect at 80% "
    "power and about how many seeds would detect a difference of the margin, both at the family's level "
    "(5% over its k tests). A variant whose seeds all diverged has no accuracy to compare: its row says so.",
])


def differences(base: dict, other: dict) -> list[str]:
    """Protocol fields that differ between two loaded reports (fields one of them lacks are skipped:
    pytest-benchmark's JSON without its accuracy benchmark records no protocol)."""
    a, b = base["protocol"], other["protocol"]
    if ("sweep" in base) != ("sweep" in other):
        return ["a sweep against a run's report (compare sweeps with sweeps)"]
    grids = [f"sweep {key} {base['sweep'].get(key)} vs {other['sweep'].get(key)}" for key in
             dict.fromkeys([*base.get("sweep", {}), *other.get("sweep", {})])
             if key not in ("variants", "target") and base["sweep"].get(key) != other["sweep"].get(key)]
    # A key older reports lack stands for its value then (protocol_value); one a harness file without
    # its accuracy benchmark lacks altogether (no dataset) is not compared.
    recorded = "dataset" in a and "dataset" in b
    fields = [f"{key} {protocol_value(a, key)} vs {protocol_value(b, key)}" for key in PROTOCOL_KEYS
              if (key in a and key in b or recorded and key in PROTOCOL_DEFAULTS)
              and protocol_value(a, key) != protocol_value(b, key)]
    return grids + fields + _batch_stats_differ(base, other) + _batch_order_differ(base, other)


def batch_order(protocol: dict) -> str:
    """How training batches were formed: ``classes:K``, or ``iid``, also where the protocol does not
    say (reports from before ``--batch-order``; a sweep that varies it, whose grid then differs)."""
    return protocol.get("batch_order", "iid")


def _batch_order_differ(base: dict, other: dict) -> list[str]:
    """Batches of K classes train a different model from i.i.d. batches, for every variant: never
    compared silently."""
    a, b = base["protocol"], other["protocol"]
    if "dataset" not in a or "dataset" not in b or batch_order(a) == batch_order(b):
        return []
    return [f"batch order {batch_order(a)} vs {batch_order(b)}"]


def settings_text(protocol: dict) -> str:
    """The optimizer's weight decay and the precision where they are not the notebook's (none,
    float32), as a title's tail: ``, weight decay 0.0005, bfloat16``."""
    parts = []
    if protocol_value(protocol, "weight_decay") != 0:
        parts.append(f"weight decay {protocol_value(protocol, 'weight_decay')}")
    if protocol_value(protocol, "precision") != "float32":
        parts.append(str(protocol_value(protocol, "precision")))
    return "".join(f", {part}" for part in parts)


def batch_stats(protocol: dict) -> str:
    """How BatchNorm's statistics were taken: over the whole batch (``sync``; one device's always
    are), or over each device's shard (``local``)."""
    return protocol.get("batch_stats", "sync") if protocol.get("data_parallel", 1) > 1 else "sync"


def _batch_stats_differ(base: dict, other: dict) -> list[str]:
    """Batch statistics of the whole batch against each device's shard compute different models
    (the number of devices alone does not: sync BN on N devices is one device's BatchNorm), where
    a variant of either report has batch statistics (LayerNorm's are per example)."""
    a, b = base["protocol"], other["protocol"]
    if "dataset" not in a or "dataset" not in b or batch_stats(a) == batch_stats(b):
        return []
    if not any(v.get("batch_statistics", True) for r in (base, other) for v in r["variants"].values()):
        return []
    return [f"batch statistics {batch_stats(a)} over {a.get('data_parallel', 1)} device(s) vs "
            f"{batch_stats(b)} over {b.get('data_parallel', 1)}"]


def protocol_key(report: dict) -> tuple:
    """The values of PROTOCOL_KEYS (and a sweep's grid): reports with equal keys are comparable."""
    grid = {k: v for k, v in report.get("sweep", {}).items() if k not in ("variants", "target")}
    return (*(json.dumps(protocol_value(report["protocol"], key) if "dataset" in report["protocol"]
                         else report["protocol"].get(key)) for key in PROTOCOL_KEYS), json.dumps(grid, sort_keys=True),
            batch_stats(report["protocol"]), batch_order(report["protocol"]))


def check_comparable(loaded: list[dict]) -> None:
    base = loaded[0]
    for other in loaded[1:]:
        diff = differences(base, other)
        if diff:
            raise reading.ReportError(f"{other['path']} is not comparable with {base['path']}: " + "; ".join(diff))


def _ms(figure: dict) -> str:
    return f"{figure['median'] * 1e3:.3f} ± {figure['iqr'] * 1e3:.3f} ms"


def _seeds(n: int) -> str:
    return f"{n} seed{'s' * (n != 1)}"


def _runs(n: int) -> str:
    """Runs sharing an epoch: a run's seeds, or a sweep's configurations x seeds."""
    return f"{n} run{'s' * (n != 1)} together" if n > 1 else "1 run"


def _time_cells(kind: str, figure: dict | None, base: dict | None) -> list[str]:
    """A time and its ratio to the baseline's time of the same kind (and, inside epochs, seeds)."""
    if figure is None:
        return ["-", "-"]
    text = _ms(figure) + (f", {_runs(figure['seeds'])}" if kind == "epoch_per_update" else "")
    if kind == "epoch_per_update" and figure.get("data_devices", 1) > 1:
        text += f", each batch over {figure['data_devices']} devices"
    same = base is not None and reading.same_layout(base, figure)
    if figure is base:
        return [text, "baseline"]
    return [text, ratio_text(figure["median"] / base["median"]) if same else "-"]


def direction(ratio: float) -> str:
    """What a ratio of times means, said with it: below 1 the later report took less time (at the
    two decimals shown: 0.999 is 1.00x, the same)."""
    shown = round(ratio, 2)
    return "faster" if shown < 1 else "slower" if shown > 1 else "the same"


def ratio_text(ratio: float) -> str:
    return f"{ratio:.2f}x ({direction(ratio)})"


MACHINE_FIELDS = ("backend", "device_kind", "cpu_model", "cpu_flags")


def machine(report: dict) -> tuple:
    """What makes two reports' times comparable as code, not hardware: the device and the CPU."""
    env = report["environment"]
    return tuple(json.dumps(env.get(key), sort_keys=True) for key in MACHINE_FIELDS)


def machine_notice(base: dict, others: list[dict]) -> str | None:
    """A line for each later report that ran on another machine than the baseline."""
    lines = [f"Notice: [{o['ref']}] ran on another machine than [{base['ref']}] ({o['label']} against "
             f"{base['label']}{'' if o['label'] != base['label'] else ', other CPU flags or device'}): its time "
             "ratios compare hardware, not code." for o in others if machine(o) != machine(base)]
    return "\n".join(lines) or None


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


def table(loaded: list[dict], markdown: bool = False) -> str:
    base = loaded[0]
    vs = f"vs [{base['ref']}]"
    headers = ["variant", "report", f"{STEP_KINDS['lone_step']} (median ± IQR)", vs,
               f"{STEP_KINDS['epoch_per_update']} (median ± IQR)", vs, "K seeds vs 1",
               "train acc", "train acc (eval)", "val acc", "test acc", "to target"]
    rows = []
    for name in dict.fromkeys(name for r in loaded for name in r["variants"]):
        base_variant = base["variants"].get(name, {})
        for r in loaded:
            v = r["variants"].get(name)
            if v is None:
                continue
            times = [cell for kind in STEP_KINDS for cell in _time_cells(kind, v[kind], base_variant.get(kind))]
            diverged = v.get("diverged_seeds", 0)
            rows.append([f"{name} ({diverged}/{v['seeds']} diverged)" if diverged else name, f"[{r['ref']}]", *times,
                         _seeds_cell(v["seed_scaling"]),
                         *[format_ci(v[k]) if v.get(k) else ("diverged" if diverged else "-")
                           for k in ("train_accuracy", "train_eval_accuracy", "val_accuracy", "test_accuracy")],
                         _target_cell(v.get("time_to_target"))])
    return format_table(headers, rows, markdown=markdown)


def comparison(v: dict, b: dict, metric: str, paired: bool) -> dict | None:
    """``v`` minus ``b`` on ``metric``: seed by seed where they share seeds (``paired``: variants
    of one report), else Welch's unpaired test on their summaries; None where neither records the
    metric, and a row without a test where a side's seeds all diverged."""
    if not (v.get(metric) and b.get(metric)):
        gone = [side for side, e in (("this variant", v), ("the baseline", b))
                if not e.get(metric) and e.get("diverged_seeds")]
        if gone and (v.get(metric) or b.get(metric)):  # the other side has it: say why this one has not
            return {"test": "paired" if paired else "welch", "n": 0 if paired else [0, 0], "difference": None,
                    "ci95": None, "p_value": None, "too_few": f"diverged: every seed of {' and '.join(gone)}"}
        return None
    if paired:
        seeds = sorted(s for s in set(v.get("finals", {})) & set(b.get("finals", {}))
                       if metric in v["finals"][s] and metric in b["finals"][s])
        if seeds:
            return stats.paired_difference([v["finals"][s][metric] for s in seeds],
                                           [b["finals"][s][metric] for s in seeds])
    return stats.welch_difference(v[metric], b[metric])


def _ci_text(d: dict) -> str:
    if d["difference"] is None:
        return "-"
    if d["ci95"] is None:
        return f"{d['difference']:+.4f}"
    low, high = d["ci95"]
    return f"{d['difference']:+.4f} [{low:+.4f}, {high:+.4f}]"


def _p_text(p: float | None) -> str:
    return "-" if p is None else f"{p:.2g}" if p >= 1e-4 else "<1e-4"


def _verdict_text(d: dict) -> str:
    if d["verdict"] == "untested":
        why = d.get("too_few", "")
        if why.startswith("no spread: "):
            return "untested: " + why.removeprefix("no spread: ").split(",")[0]
        if why.startswith("diverged: "):
            return why
        return "untested: too few seeds trained by both without diverging"
    if d["verdict"] == "equivalent":
        return f"equivalent within ±{d['margin']:g}"
    if d["verdict"] == "inconclusive":
        seeds = d.get("seeds_for_margin")
        settle = "" if seeds is None else f"; ~{seeds} seeds detect ±{d['margin']:g}" if seeds <= 1000 else \
            f"; >1000 seeds to detect ±{d['margin']:g}"
        return f"inconclusive (detects {d['detectable']:.4f}, family of {d['family']}{settle})"
    return d["verdict"]


def _test_text(d: dict) -> str:
    return f"paired, n={d['n']}" if d["test"] == "paired" else f"Welch, n={d['n'][0]}+{d['n'][1]}"


def _family_rows(labels: list[list[str]], comparisons: list[dict], margin: float) -> list[list[str]]:
    """One family's rows: each comparison with its Holm-adjusted p-value and verdict."""
    rows = []
    for label, d in zip(labels, stats.compare_family(comparisons, margin)):
        rows.append([*label, _test_text(d), _ci_text(d), _p_text(d["p_value"]), _p_text(d["p_holm"]),
                     _verdict_text(d)])
    return rows


DIFFERENCE_HEADERS = ["test", "difference [95% CI]", "p", "p Holm", "verdict"]


def _too_few(comparisons: list[dict]) -> list[str]:
    """What the page says plainly when a difference has no interval for want of seeds."""
    few = [d for d in comparisons if d.get("too_few") and not d["too_few"].startswith(("no spread", "diverged"))]
    # After a blank line, so that Markdown does not read the sentence as a row of the table above.
    return ["", "Too few seeds for an interval or a p-value where only one seed trained on both sides without "
                "diverging: train 2 or more (5 give useful intervals)."] if few else []


def _differences(title: str, headers: list[str], families: dict[tuple, list[tuple[list[str], dict]]],
                 margin: float, markdown: bool) -> str | None:
    """A titled table of the families' rows (``headers`` name each row, then the comparison), or None."""
    rows, comparisons = [], []
    for members in families.values():
        rows += _family_rows([label for label, _ in members], [d for _, d in members], margin)
        comparisons += [d for _, d in members]
    if not rows:
        return None
    return "\n".join([title, "", format_table([*headers, *DIFFERENCE_HEADERS], rows, markdown=markdown),
                      *_too_few(comparisons)])


def _metric(key: str) -> str:
    return {"train_eval_accuracy": "train (eval)"}.get(key, key.removesuffix("_accuracy").replace("_", " "))


def across_reports(loaded: list[dict], markdown: bool = False, margin: float = stats.EQUIVALENCE_MARGIN
                   ) -> str | None:
    """Each variant's accuracies in every later report minus the baseline report's: unpaired
    (other runs), one family per later report and accuracy."""
    base = loaded[0]
    families: dict[tuple, list] = {}
    for r in loaded[1:]:
        for name, v in r["variants"].items():
            b = base["variants"].get(name)
            for metric in COMPARED:
                d = comparison(v, b, metric, paired=False) if b is not None else None
                if d is not None:
                    families.setdefault((r["ref"], metric), []).append(
                        ([name, f"[{r['ref']}] - [{base['ref']}]", _metric(metric)], d))
    return _differences(f"Differences to [{base['ref']}] (unpaired: other runs):", ["variant", "reports", "accuracy"],
                        families, margin, markdown)


def field_baseline(baseline: str) -> tuple[str, str] | None:
    """``(FIELD, VALUE)`` for a baseline written ``FIELD=VALUE``: each entry is then set against
    the same variant with that value, a model field (``precision=float32``: the entry whose model
    differs from its own in that field alone) or a sweep's number (``weight_decay=0``: the same
    variant at the same configuration but that number). None for a variant's name (which may
    change fields after a colon, ``seed_bn:ghost_batch=8``)."""
    if "=" not in baseline or ":" in baseline:
        return None
    field_name, _, value = baseline.partition("=")
    return field_name, value


_ABSENT = object()
# A sweep's learning rate is recorded twice: as run and before any scaling with the batch size.
_TOGETHER = {"learning_rate": {"learning_rate", "base_learning_rate"},
             "base_learning_rate": {"learning_rate", "base_learning_rate"}}


def _text(value) -> str:
    """A field as the command line writes it (``None`` as none), so that ``FIELD=VALUE`` matches."""
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _matches(value, text: str) -> bool:
    """Whether a recorded value is the one written, read as a variant's field is (``0`` is 0.0,
    ``300,100`` the widths [300, 100]); text that reads as no number or list is compared as text."""
    if value is _ABSENT:
        return False
    try:
        written = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        written = text
    if isinstance(value, (list, tuple)) and isinstance(written, (list, tuple)):
        return list(value) == list(written)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(written, (int, float)):
        return float(written) == value
    return _text(value) == text


def _value(entry: dict, field_name: str):
    """The entry's value of a swept number (its configuration) or else of its model's field."""
    config = entry.get("config") or {}
    return config[field_name] if field_name in config else (entry.get("model") or {}).get(field_name, _ABSENT)


def is_baseline(report: dict, name: str, entry: dict, baseline: str) -> bool:
    """Whether the entry is of the baseline itself: one with the field's value, or the variant so
    named (with fields changed, where the report did not train it unchanged: ``plain_relu:depth=8``
    is ``--baseline plain_relu``'s in a depth study)."""
    by_field = field_baseline(baseline)
    if by_field:
        return _matches(_value(entry, by_field[0]), by_field[1])
    return entry.get("variant", name) == baseline or baseline_entry(report, name, entry, baseline) is entry


def check_baselines(loaded: list[dict], baselines) -> None:
    names = {name for r in loaded for name in r["variants"]} | {v["variant"] for r in loaded for v in
                                                                r["variants"].values() if "variant" in v}
    for baseline in baselines:
        by_field = field_baseline(baseline)
        if by_field is None:
            continue
        entries = [v for r in loaded for v in r["variants"].values()]
        fields = sorted({f for v in entries for f in {**(v.get("model") or {}), **(v.get("config") or {})}})
        if by_field[0] not in fields:
            raise reading.ReportError(f"--baseline {baseline}: {by_field[0]} is not a field of the reports' models "
                                      "or a number of their sweeps"
                                      + (f"; use one of {', '.join(fields)}" if fields else
                                         " (these reports do not record their models): name a variant instead"))
        values = [_value(v, by_field[0]) for v in entries]
        if not any(_matches(x, by_field[1]) for x in values):
            raise reading.ReportError(f"--baseline {baseline}: no variant of the reports has {by_field[0]} "
                                      f"{by_field[1]}; theirs are "
                                      f"{', '.join(sorted({_text(x) for x in values if x is not _ABSENT}))}")
    # A bare name also stands for its variant with fields changed (``plain_relu`` for ``plain_relu:depth=8``).
    bases = {name.partition(":")[0] for name in names}
    missing = [b for b in baselines if b not in names | bases and field_baseline(b) is None]
    if missing and not names:
        raise reading.ReportError(f"--baseline {missing[0]}: the reports hold no variant's accuracies (only "
                                  "scaling points), so there is nothing to set against it: drop --baseline")
    if missing:
        raise reading.ReportError(f"baseline variant {missing[0]!r} is in none of the reports: choose one of "
                                  f"{', '.join(sorted(names))}, or a field's value as FIELD=VALUE")


def _candidates(report: dict, name: str, entry: dict, baseline: str) -> list[dict]:
    """The entries of ``report`` that may stand as ``entry``'s baseline, before the configuration is matched.

    A variant name with no fields changed stands for itself with the entry's own changes where the
    report trained that (``seed_bn:depth=8,width=256`` against ``plain_relu:depth=8,width=256``),
    else for itself as named. ``FIELD=VALUE``: the same variant's entries with that swept number,
    or the entries whose model is the entry's with that field set to that value."""
    entries = report["variants"].items()
    by_field = field_baseline(baseline)
    if by_field and by_field[0] in (entry.get("config") or {}):
        variant = entry.get("variant", name)
        return [v for n, v in entries
                if v.get("variant", n) == variant and _matches(_value(v, by_field[0]), by_field[1])]
    if by_field:
        model = entry.get("model")
        if not model:
            return []
        others = {f: _text(value) for f, value in model.items() if f != by_field[0]}
        return [v for _, v in entries if v.get("model") and _matches(v["model"].get(by_field[0], _ABSENT), by_field[1])
                and {f: _text(x) for f, x in v["model"].items() if f != by_field[0]} == others]
    named = [v for n, v in entries if v.get("variant", n) == baseline]
    changes = variant_changes(entry.get("variant", name))[1]
    if changes and ":" not in baseline:
        alike = [v for n, v in entries if variant_changes(v.get("variant", n)) == (baseline, changes)]
        # The entry itself is the baseline only where the baseline was never trained unchanged.
        if alike and (not named or not any(v is entry for v in alike)):
            return alike
    return named


def baseline_entry(report: dict, name: str, entry: dict, baseline: str) -> dict | None:
    """The entry to set ``entry`` (named ``name``) against, ``entry`` itself where it is the
    baseline: the baseline's (``_candidates``), in a sweep at the same configuration (learning
    rate, batch size, ghost batch, batch order, optimizer numbers; and BN momentum, where the
    baseline has one swept) but the number a ``FIELD=VALUE`` baseline names. A variant without
    batch statistics, trained once in a ghost-batch sweep, is set against the baseline's whole batch."""
    candidates = _candidates(report, name, entry, baseline)
    if "config" not in entry:
        return next((v for v in candidates if v is entry), candidates[0] if candidates else None)
    config = entry["config"]
    by_field = field_baseline(baseline)
    free = {"bn_momentum"} | (_TOGETHER.get(by_field[0], {by_field[0]}) if by_field else set())

    def agrees(other: dict) -> bool:
        if "ghost_batch" not in config and other.get("ghost_batch", config["batch_size"]) != config["batch_size"]:
            return False
        return all(other[k] == config[k] for k in other.keys() & config.keys() if k not in free)

    same = [v for v in candidates if agrees(v["config"])]
    if any(v is entry for v in same):
        return entry
    return next((v for v in same if v["config"].get("bn_momentum") == config.get("bn_momentum")),
                same[0] if same else None)


def baseline_comparisons(report: dict, baseline: str, metric: str) -> list[tuple[str, dict]]:
    """Each other variant of ``report`` minus ``baseline`` on ``metric``, seed by seed (in a sweep,
    at the same configuration): one family, before its adjustment."""
    rows = []
    for name, v in report["variants"].items():
        b = baseline_entry(report, name, v, baseline)
        if b is None or b is v:
            continue
        d = comparison(v, b, metric, paired=True)
        if d is not None:
            rows.append((name, d))
    return rows


def baseline_family(report: dict, baseline: str, metric: str, margin: float = stats.EQUIVALENCE_MARGIN
                    ) -> list[tuple[str, dict]]:
    """``baseline_comparisons`` with the family's Holm-adjusted p-values and verdicts."""
    rows = baseline_comparisons(report, baseline, metric)
    return [(name, d) for (name, _), d in zip(rows, stats.compare_family([d for _, d in rows], margin))]


def against_baselines(loaded: list[dict], baselines, markdown: bool = False,
                      margin: float = stats.EQUIVALENCE_MARGIN) -> str | None:
    """Within each report, every other variant's accuracies minus each baseline variant's (in a
    sweep, at the same configuration), seed by seed: one family per baseline, report and accuracy."""
    families: dict[tuple, list] = {}
    for baseline in baselines:
        for r in loaded:
            for metric in COMPARED:
                for name, d in baseline_comparisons(r, baseline, metric):
                    families.setdefault((baseline, r["ref"], metric), []).append(
                        ([name, baseline, f"[{r['ref']}]", _metric(metric)], d))
    text = _differences("Differences to baseline variants (paired: the same seeds):",
                        ["variant", "minus", "report", "accuracy"], families, margin, markdown) \
        or _nothing_against(loaded, baselines)
    unmatched = [f"{name} [{r['ref']}]" for baseline in baselines for r in loaded
                 for name, v in r["variants"].items()
                 if not any(is_baseline(r, name, v, b) for b in baselines)
                 and any(is_baseline(r, n2, v2, baseline) for n2, v2 in r["variants"].items())
                 and baseline_entry(r, name, v, baseline) is None]
    if text and unmatched:
        what = ("of the same variant and configuration with that value" if any(map(field_baseline, baselines))
                else "at their configuration")
        text += (f"\n\nNot set against {', '.join(baselines)}: no run {what} was trained for "
                 f"{', '.join(unmatched)}.")
    return text


def _nothing_against(loaded: list[dict], baselines) -> str | None:
    """Said, not left out, when a baseline was named and nothing could be set against it (a sweep
    of that variant alone: each of its entries is the baseline at its own configuration)."""
    if not baselines:
        return None
    present = {v.get("variant", name) for r in loaded for name, v in r["variants"].items()}
    if not any(is_baseline(r, name, v, b) for b in baselines for r in loaded for name, v in r["variants"].items()):
        refs = ", ".join(f"[{r['ref']}]" for r in loaded)
        return (f"Differences to baseline variants: none. {', '.join(baselines)} is not in {refs}, whose "
                f"variants are {', '.join(sorted(present))}: name one of them with --baseline to compare these.")
    return (f"Differences to baseline variants: none. Every entry of {', '.join(baselines)} is the baseline at "
            "its own configuration, and no other variant was trained; compare configurations of one "
            "variant with its sweep's tables, or sweep another variant beside it.")


@dataclass
class Gate:
    """What the gate compared, what regressed, what it could not compare (which fails it too), and
    what it was not asked to gate or could not gate by default (which it says, and passes)."""
    pct: float
    what: str = "auto"
    compared: dict[str, list[str]] = field(default_factory=dict)  # per later report: "variant: figures"
    regressions: list[str] = field(default_factory=list)
    not_compared: list[str] = field(default_factory=list)
    not_gated: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.regressions or self.not_compared or not self.compared)

    @property
    def times(self) -> bool:
        return self.what in ("auto", "time", "all")

    @property
    def accuracies(self) -> bool:
        return self.what in ("auto", "accuracy", "all")

    def skip(self, line: str) -> None:
        """A figure the gate cannot test: named, and a failure where ``--gate`` asked for its kind
        explicitly (``time``, ``accuracy``, ``all``); by default (``auto``) named and passed over."""
        if self.what == "auto":
            self.not_gated.append(line)
        else:
            self.not_compared.append(f"{line}; or drop --gate {self.what}")

    def text(self) -> str:
        nothing = "no figure of the baseline could be gated: each is named below, with why"
        not_compared = self.not_compared or ([] if self.compared or self.regressions else [nothing])
        lines = [f"Gate (--fail-on-regression {self.pct:g}, --gate {self.what}): " + ("FAILED" if self.failed else
                 f"passed, no regression beyond {self.pct:g}% and the noise")]
        lines += [f"  regression: {line}" for line in self.regressions]
        lines += [f"  not compared, so the gate fails: {line}" for line in not_compared]
        lines += [f"  not gated: {line}" for line in self.not_gated]
        lines += [f"  compared {path}: {'; '.join(figures)}" for path, figures in self.compared.items()]
        return "\n".join(lines)


def _layout(figure: dict) -> str:
    devices, data = figure.get("seed_devices"), figure.get("data_devices", 1)
    return (_seeds(figure["seeds"]) + (f" over {devices} device{'s' * (devices > 1)}" if devices else "")
            + (f", each batch over {data} devices" if data > 1 else ""))


def _gate_time(g: Gate, name: str, kind: str, b: dict | None, o: dict | None, other: dict) -> str | None:
    """Slower by more than PCT% plus the larger relative IQR of the two is a regression."""
    label = STEP_KINDS[kind]
    if b is None:
        return None  # the baseline has no such time: nothing to hold the later report to
    if o is None:
        g.not_compared.append(f"{name}: {label}: the baseline has it, {other['path']} has none")
        return None
    if not reading.same_layout(b, o):
        g.not_compared.append(f"{name}: {label}: {_layout(b)} in the baseline, {_layout(o)} in {other['path']}")
        return None
    if min(b.get("n", 2), o.get("n", 2)) < 2:  # one timing has no spread: noise cannot be told apart
        g.skip(f"{name}: {label}: timed once in {'the baseline' if b.get('n', 2) < 2 else other['path']}, so its "
               "noise is unknown: time 2 or more epochs (or rounds) to gate it")
        return None
    noise = max(b["iqr"] / b["median"], o["iqr"] / o["median"])
    slower = o["median"] / b["median"] - 1
    if slower > g.pct / 100 + noise:
        g.regressions.append(f"{name}: {label} {slower:+.1%} in {other['path']}, slower "
                             f"(allowed {g.pct:g}% + noise {noise:.1%})")
    ratio = o["median"] / b["median"]
    return f"{label} {ratio:.2f}x the baseline's time ({direction(ratio)})"


def _gate_accuracies(g: Gate, name: str, b: dict, o: dict, other: dict) -> str | None:
    """An accuracy regresses when its mean is below the lower end of the baseline's 95% CI."""
    keys = [key for key in ACCURACIES if b.get(key)]
    if not keys:
        why = ("every seed diverged there" if b.get("diverged_seeds") else
               "none recorded (pytest-benchmark JSON without the accuracy benchmark)")
        g.skip(f"{name}: accuracies: the baseline has none ({why})")
    diverged = o.get("diverged_seeds", 0)
    if diverged > b.get("diverged_seeds", 0):  # a run that diverges where the baseline's did not
        g.regressions.append(f"{name}: {diverged} of {o['seeds']} seeds diverged in {other['path']} "
                             f"(the baseline: {b.get('diverged_seeds', 0)})")
        keys = [key for key in keys if o.get(key)]  # what all seeds diverging left absent is counted above
    missing = [key for key in keys if not o.get(key)]
    if missing:
        g.not_compared.append(f"{name}: {', '.join(missing)}: the baseline has them, {other['path']} has none")
    # One seed has no interval: its accuracy cannot be told from noise. Asked for (--gate accuracy
    # or all), that fails the gate; by default (auto) the gate says so and gates the times alone.
    no_interval = [key for key in keys if b[key]["ci95"] is None]
    if no_interval:
        seeds = _seeds(b[no_interval[0]]["n"])
        g.skip(f"{name}: {', '.join(no_interval)}: the baseline has no 95% interval ({seeds}; an interval needs "
               "2 or more: train 2 or more seeds to gate accuracy)")
    checked = [key for key in keys if key not in missing and key not in no_interval]
    for key in checked:
        low = b[key]["ci95"][0]
        if o[key]["mean"] < low:
            g.regressions.append(f"{name}: {key} {o[key]['mean']:.4f} in {other['path']} is below the "
                                 f"baseline's 95% CI (from {low:.4f})")
    return ", ".join(checked) if checked else None


def gate(base: dict, others: list[dict], pct: float, what: str = "auto", across_machines: bool = False) -> Gate:
    """Holds every later report to each figure the baseline has that ``what`` asks to gate."""
    g = Gate(pct, what)
    if not others:
        g.not_compared.append(f"nothing to hold {base['path']} against: give the baseline and a later report")
    if not g.times:
        g.not_gated.append(f"times: --gate {what}")
    if not g.accuracies:
        g.not_gated.append(f"accuracies: --gate {what}")
    for other in others:
        if g.times and machine(other) != machine(base) and not across_machines:
            g.not_compared.append(f"{other['path']} ran on another machine ({other['label']}) than {base['path']} "
                                  f"({base['label']}): a ratio would compare hardware, not code; gate against a "
                                  "baseline made on this machine, pass --across-machines, or gate the accuracies "
                                  "alone with --gate accuracy")
            continue
        for name, b in base["variants"].items():
            o = other["variants"].get(name)
            if o is None:
                g.not_compared.append(f"{name}: in the baseline {base['path']}, missing from {other['path']}")
                continue
            figures = [_gate_time(g, name, kind, b[kind], o[kind], other) for kind in STEP_KINDS] if g.times else []
            if g.accuracies:
                figures.append(_gate_accuracies(g, name, b, o, other))
            figures = [f for f in figures if f]
            if figures:
                g.compared.setdefault(f"{other['path']} against {base['path']}", []).append(
                    f"{name} ({', '.join(figures)})")
    return g


def compare(paths: list[str], markdown: bool = False, fail_on_regression: float | None = None,
            baselines=(), gate_what: str = "auto", across_machines: bool = False,
            margin: float = stats.EQUIVALENCE_MARGIN) -> tuple[str, bool]:
    """The reports at ``paths`` side by side; returns the text and whether the gate failed."""
    return compare_loaded(reading.load_all(paths), markdown, fail_on_regression, baselines=baselines,
                          gate_what=gate_what, across_machines=across_machines, margin=margin)


def legend(loaded: list[dict]) -> str:
    """Each report's file and hardware, once."""
    return "\n".join(f"[{r['ref']}] {r['path']}: {r['label']}, jax {r['environment'].get('jax') or '?'}"
                     f"{reading.merged_text(r)}" for r in loaded)


def compare_loaded(loaded: list[dict], markdown: bool = False, fail_on_regression: float | None = None,
                   standalone: bool = True, baselines=(), gate_what: str = "auto",
                   across_machines: bool = False, margin: float = stats.EQUIVALENCE_MARGIN) -> tuple[str, bool]:
    """``compare`` for reports already read with ``reading.load_all``. Standalone output names each
    report's hardware and explains the columns; a page of several tables (``bnbench report``) does
    that once, above them. With ``baselines`` (variant names), each report's variants are also
    set against those variants of the same report."""
    check_comparable(loaded)
    if standalone:
        check_baselines(loaded, baselines)
    parts = [table(loaded, markdown)] if any(r["variants"] for r in loaded) else []
    parts += [text for text in (across_reports(loaded, markdown, margin),
                                against_baselines(loaded, baselines, markdown, margin)) if text]
    if standalone:
        parts += scaling.tables(loaded, markdown)
        notice = machine_notice(loaded[0], loaded[1:])
        parts += [legend(loaded)] + ([notice] if notice else []) + [KEY]
    failed = False
    if fail_on_regression is not None:
        result = gate(loaded[0], loaded[1:], fail_on_regression, gate_what, across_machines)
        parts.append(result.text())
        failed = result.failed
    return "\n\n".join(parts), failed
