"""The study of a sweep report: what ``bnbench report`` adds for each sweep it is given.

Plots of final validation and test accuracy against the learning rate (one line per variant),
against the batch size and against BN's momentum, with 95% CI bands over seeds and diverged points
marked; updates to the target accuracy against the learning rate; validation curves with bands over
seeds. And a Markdown table per sweep: validation accuracy per variant and value of the grid.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np

from bnbench.config import variant_changes
from bnbench.record.stats import format_ci
from bnbench.report.table import format_table

# What each swept axis is called, read from and drawn as.
AXES = {"learning_rate": ("learning rate", "base_learning_rate", "log"),
        "batch_size": ("batch size", "batch_size", "log2"),
        "bn_momentum": ("BN momentum", "bn_momentum", "linear"),
        "ghost_batch": ("ghost batch (examples per BN statistic)", "ghost_batch", "log2"),
        "batch_order": ("classes per training batch (iid: any)", "batch_order", "categories"),
        "momentum": ("optimizer momentum", "momentum", "categories"),
        "weight_decay": ("weight decay", "weight_decay", "categories")}


def swept_axes(grid: dict) -> list[str]:
    return [axis for axis in AXES if len(grid.get(axis) or []) > 1]


SHORT = {"learning_rate": "lr", "batch_size": "batch", "bn_momentum": "m", "ghost_batch": "gb", "batch_order": "order",
         "momentum": "momentum", "weight_decay": "wd"}


def _text(value) -> str:
    return value if isinstance(value, str) else f"{value:g}"


def _along(axis: str, value) -> float:
    """The order of ``value`` along ``axis``: batch orders by classes per batch, i.i.d. (all of them) last."""
    if axis == "batch_order":
        return math.inf if value == "iid" else float(value.partition(":")[2])
    return float(value)


def _at_every_value(report: dict, axis: str, entry: dict) -> list[dict]:
    """``entry`` as drawn along ``axis``: itself, or, for a control that the axis does not apply to
    (a variant without batch statistics in a ghost-batch sweep), a copy at every swept value (a
    flat line)."""
    key = AXES[axis][1]
    if key in entry["config"]:
        return [entry]
    return [{**entry, "config": {**entry["config"], key: value}} for value in report["sweep"][axis]]


def _lines(report: dict, axis: str) -> dict[str, list[dict]]:
    """Entries grouped into lines along ``axis``: one line per variant and value of the other axes
    (a line per variant where only ``axis`` is swept), each sorted along the axis."""
    key = AXES[axis][1]
    others = [a for a in swept_axes(report["sweep"]) if a != axis]
    lines: dict[str, list[dict]] = {}
    for entry in report["variants"].values():
        if "config" not in entry:
            continue
        # A config holds a batch order only where several were swept, so the orders are an axis: this
        # one, or one of the others, which name the line.
        name = " ".join([entry["variant"], *(f"{SHORT[a]}={_text(entry['config'][AXES[a][1]])}" for a in others
                                             if AXES[a][1] in entry["config"])])
        lines.setdefault(name, []).extend(_at_every_value(report, axis, entry))
    return {name: sorted(entries, key=lambda e: _along(axis, e["config"][key])) for name, entries in lines.items()}


def _x(axis: str, value, values=()) -> float:
    """Where ``value`` of ``axis`` is drawn: BN's momentum m at 1/(1-m), the number of updates its
    moving statistics remember (0, 0.9, 0.99 and 0.999 evenly apart on a log axis); a batch order
    (or any axis drawn as categories: an optimizer's momenta, weight decays with 0 among them) at
    its place among ``values``, the axis's values, evenly apart."""
    if AXES[axis][2] == "categories":
        return float(sorted(set(values), key=lambda v: _along(axis, v)).index(value))
    if axis == "bn_momentum":
        return 1 / (1 - value) if value < 1 else math.inf
    return float(value)


def _x_scale(ax, scale: str, axis: str | None = None, report: dict | None = None, values=()) -> None:
    """The x axis's scale, and for a swept axis ticks at its values, named as run: BN's momentum by
    m (on its 1/(1-m) axis); the batch size with the learning rate each batch size ran at, where
    it was scaled with it."""
    import matplotlib.ticker as ticker

    if scale == "log":
        ax.set_xscale("log")
    elif scale == "log2":
        ax.set_xscale("log", base=2)
    if axis is None:
        return
    values = sorted(set(values), key=lambda v: _along(axis, v))
    if AXES[axis][2] == "categories":
        ax.set_xticks([_x(axis, v, values) for v in values],
                      [v.replace("classes:", "") if axis == "batch_order" else _text(v) for v in values])
    elif axis == "bn_momentum":
        ax.set_xscale("log")
        ax.set_xticks([_x(axis, v) for v in values], [f"{v:g}" for v in values])
    elif axis == "batch_size":
        rates = {e["config"]["batch_size"]: e["config"]["learning_rate"] for e in report["variants"].values()
                 if "config" in e}
        own = len(report["sweep"]["learning_rate"]) == 1 and report["sweep"]["lr_scaling"] == "linear"
        ax.set_xticks(values, [f"{v:g}\nlr {rates[v]:g}" if own else f"{v:g}" for v in values])
    else:
        ax.set_xticks(values, [f"{v:g}" for v in values])
    ax.xaxis.set_minor_locator(ticker.NullLocator())  # the swept values alone


def _xlabel(report: dict, axis: str) -> str:
    if axis == "bn_momentum":
        return "BN momentum m (drawn at 1/(1-m), the updates its statistics remember)"
    if axis == "batch_size" and report["sweep"]["lr_scaling"] == "linear":
        return (f"batch size, and the learning rate it ran at (scaled linearly from batch "
                f"{report['sweep']['reference_batch_size']})")
    if axis == "learning_rate" and report["sweep"]["lr_scaling"] == "linear":
        return "learning rate (at the reference batch size; scaled linearly)"
    return AXES[axis][0]


def _interval(e: dict, metric: str) -> tuple[float, float, float]:
    figure = e.get(metric)
    if not figure:
        return math.nan, math.nan, math.nan
    low, high = figure["ci95"] if figure.get("ci95") else (math.nan, math.nan)
    return figure["mean"], low, high


def plot_accuracy(plt, report: dict, axis: str, path: Path, save, colors=None) -> None:
    """Final validation and test accuracy along ``axis``: mean over the seeds that did not
    diverge, 95% CI band, on axes fitted to the data. Diverged runs are never drawn as an accuracy:
    they have a row of their own under each panel (an x where every seed diverged, a ring where
    some did, with how many); a mean far below the rest is marked at the axis's foot, its value written."""
    from bnbench.report import plots

    title, key, scale = AXES[axis]
    lines = _lines(report, axis)
    looks = plots.styles(list(lines))
    # The rows under the panels: one per line that has diverged runs, in the lines' order.
    rows = [name for name, entries in lines.items() if any(e.get("diverged_seeds") for e in entries)]
    diverged = bool(rows)
    fig = plt.figure(figsize=(11, 4.6 + 0.25 * len(rows) if diverged else 4.4))
    spec = fig.add_gridspec(2 if diverged else 1, 2, height_ratios=[4, 0.35 + 0.25 * len(rows)] if diverged else [1])
    values = [e["config"][key] for entries in lines.values() for e in entries]
    below = False
    for column, metric in enumerate(("val_accuracy", "test_accuracy")):
        ax = fig.add_subplot(spec[0, column])
        strip = fig.add_subplot(spec[1, column], sharex=ax) if diverged else None
        figures = [_interval(e, metric) for entries in lines.values() for e in entries]
        low, high, cut = plots.fitted_limits([f[0] for f in figures], [f[1:] for f in figures])
        feet: dict[float, int] = {}
        for name, entries in lines.items():
            look = looks[name]
            xs = np.array([_x(axis, e["config"][key], values) for e in entries])
            mean, lo, hi = (np.array(v) for v in zip(*[_interval(e, metric) for e in entries]))
            shown = np.where(mean >= cut, mean, np.nan)
            ax.plot(xs, shown, ms=4, lw=1.4, label=name, **plots.line_style(look))
            ax.fill_between(xs, np.where(mean >= cut, lo, np.nan), np.where(mean >= cut, hi, np.nan),
                            color=look["color"], alpha=0.15, lw=0)
            for x, e, m in zip(xs, entries, mean):
                if m < cut:  # far below the rest: at the foot, side by side with others there, its value written
                    k = feet[x] = feet.get(x, -1) + 1
                    below = True
                    shift = plt.matplotlib.transforms.offset_copy(ax.transData, fig=fig, x=-9 * k, units="points")
                    ax.plot([x], [low], marker="v", ms=7, color=look["color"], clip_on=False, ls="none", zorder=5,
                            transform=shift)
                    ax.annotate(f"{m:.2f}", (x, low), xytext=(-9 * k - 6, 4 + 9 * k), textcoords="offset points",
                                fontsize=7, color=look["color"], ha="right")
                count = e.get("diverged_seeds", 0)
                if count and not math.isnan(m) and m >= cut:
                    ax.plot([x], [m], marker="o", ms=10, mfc="none", ls="none", color=look["color"])
                if count and strip is not None:
                    every = math.isnan(m)
                    row = rows.index(name)
                    strip.plot([x], [row], marker="X" if every else "o", ms=7, ls="none", color=look["color"],
                               mfc=look["color"] if every else "none")
                    strip.annotate(f"{count}/{e['seeds']}", (x, row), xytext=(-7, 0), textcoords="offset points",
                                   fontsize=7, color=look["color"], ha="right", va="center")
        ax.margins(x=0.06)
        ax.set_ylim(low, high)
        ax.set_ylabel(f"final {metric.split('_')[0]} accuracy (mean, 95% CI)")
        ax.grid(alpha=0.3)
        bottom = strip if strip is not None else ax
        _x_scale(bottom, scale, axis, report, values)
        bottom.set_xlabel(_xlabel(report, axis), fontsize=9)
        if strip is not None:
            ax.tick_params(labelbottom=False)
            strip.set_ylim(len(rows) - 0.4, -0.6)
            strip.set_yticks([])
            strip.set_ylabel("diverged\n(seeds)", fontsize=8, rotation=0, ha="right", va="center")
            strip.grid(axis="x", alpha=0.3)
    line = plt.matplotlib.lines.Line2D
    handles = [line([], [], ms=4, **plots.line_style(look)) for look in looks.values()]
    labels = list(lines)
    handles.append(plt.matplotlib.patches.Patch(color=plots.GREY, alpha=0.3))
    labels.append("95% CI over the seeds that did not diverge")
    if below:
        handles.append(line([], [], marker="v", ls="none", color=plots.GREY))
        labels.append("mean far below the rest (value written)")
    if diverged:
        handles += [line([], [], marker="X", ls="none", color=plots.GREY, ms=7),
                    line([], [], marker="o", mfc="none", ls="none", color=plots.GREY, ms=9)]
        labels += ["every seed diverged (no accuracy)", "some seeds diverged (mean of the rest)"]
    plots.figure_legend(fig, handles, labels)
    fig.suptitle(f"[{report['ref']}] final accuracy against {title}"
                 + ("; diverged runs in the rows below, never as an accuracy" if diverged else "; no run diverged"),
                 fontsize=10)
    save(plt, fig, path)


def _first_evaluation(report: dict, entry: dict) -> int:
    """The update of the first validation: the end of the first epoch, or earlier every ``eval_every``."""
    every = report["sweep"].get("eval_every")
    upe = entry["config"]["updates_per_epoch"]
    return min(every, upe) if every else upe


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def field_axes(report: dict) -> list[str]:
    """Model fields that the variants' names set to several numbers for one registered variant
    (``depth=2`` to ``depth=16``): the sweep is drawn along each too, as along a swept number."""
    values: dict[tuple[str, str], set[str]] = {}
    for entry in report["variants"].values():
        if "config" in entry:
            base, changes = variant_changes(entry["variant"])
            for field, value in changes.items():
                values.setdefault((base, field), set()).add(value)
    return sorted({field for (_, field), seen in values.items() if len(seen) > 1 and all(map(_is_number, seen))})


def plot_field(plt, report: dict, field: str, path: Path, save) -> list[Path]:
    """Final validation accuracy against a model field the variants' names change (``field_axes``):
    a panel per configuration of the swept axes (learning rate...), a line per variant with that
    field left out of its name; mean over the seeds that did not diverge, 95% CI band, an x at the
    panel's foot where every seed diverged, a ring where some did. Panels share the accuracy axis,
    at most four a file (``sweepN_depth.png``, then ``_2``)."""
    from bnbench.report import plots

    panels: dict[str, dict[str, list[tuple[float, dict]]]] = {}
    for entry in report["variants"].values():
        base, changes = variant_changes(entry.get("variant", ""))
        if "config" not in entry or not _is_number(changes.get(field, "")):
            continue
        line = base + "".join(f":{k}={v}" for k, v in changes.items() if k != field)
        panel = _config_label(report, entry["config"])
        panels.setdefault(panel, {}).setdefault(line, []).append((float(changes[field]), entry))
    looks = plots.styles([line for lines in panels.values() for line in lines])
    shown = [e for lines in panels.values() for points in lines.values() for _, e in points]
    low, high, cut = plots.fitted_limits([_interval(e, "val_accuracy")[0] for e in shown],
                                         [_interval(e, "val_accuracy")[1:] for e in shown])
    written = []
    for index, page in enumerate(plots.pages(list(panels))):
        fig, axes = plots.grid(plt, len(page), panel=(4.2, 3.6))
        for ax, panel in zip(axes, page):
            feet: dict[float, int] = {}  # marks at the panel's foot, per depth: dodged side by side
            for line, points in panels[panel].items():
                points.sort(key=lambda point: point[0])
                xs = np.array([x for x, _ in points])
                mean, lo, hi = (np.array(v) for v in zip(*[_interval(e, "val_accuracy") for _, e in points]))
                look = looks[line]
                ax.plot(xs, np.where(mean >= cut, mean, np.nan), ms=4, lw=1.4, **plots.line_style(look))
                ax.fill_between(xs, np.where(mean >= cut, lo, np.nan), np.where(mean >= cut, hi, np.nan),
                                color=look["color"], alpha=0.15, lw=0)
                for x, m, (_, e) in zip(xs, mean, points):
                    if math.isnan(m) or m < cut:  # diverged, or collapsed far below the rest: at the foot
                        k = feet[x] = feet.get(x, -1) + 1
                        shift = plt.matplotlib.transforms.offset_copy(ax.transData, fig=fig, x=-9 * k, units="points")
                        ax.plot([x], [low], marker="X" if math.isnan(m) else "v", ms=7, ls="none",
                                color=look["color"], clip_on=False, zorder=5, transform=shift)
                        if not math.isnan(m):
                            ax.annotate(f"{m:.2f}", (x, low), xytext=(-9 * k - 6, 4 + 9 * k),
                                        textcoords="offset points", fontsize=7, color=look["color"], ha="right")
                    elif e.get("diverged_seeds"):
                        ax.plot([x], [m], marker="o", ms=10, mfc="none", ls="none", color=look["color"])
            values = sorted({x for points in panels[panel].values() for x, _ in points})
            if all(v > 0 for v in values):
                ax.set_xscale("log", base=2)
            ax.set_xticks(values, [f"{v:g}" for v in values])
            ax.xaxis.set_minor_locator(plt.matplotlib.ticker.NullLocator())
            ax.set_ylim(low, high)
            ax.set_title(panel, fontsize=9)
            ax.set_xlabel(field, fontsize=9)
            ax.set_ylabel("final val accuracy (mean, 95% CI)", fontsize=8)
            ax.grid(alpha=0.3)
        line2d = plt.matplotlib.lines.Line2D
        handles = [line2d([], [], ms=4, **plots.line_style(look)) for look in looks.values()]
        labels = list(looks)
        handles += [line2d([], [], marker="X", ls="none", color=plots.GREY, ms=7),
                    line2d([], [], marker="v", ls="none", color=plots.GREY, ms=7),
                    line2d([], [], marker="o", mfc="none", ls="none", color=plots.GREY, ms=9)]
        labels += ["every seed diverged (no accuracy)", "mean far below the rest (value written)",
                   "some seeds diverged (mean of the rest)"]
        plots.figure_legend(fig, handles, labels)
        fig.suptitle(f"[{report['ref']}] final validation accuracy against {field}, a panel per configuration",
                     fontsize=10)
        written.append(plots.page_path(path, index))
        save(plt, fig, written[-1])
    return written


def plot_updates_to_target(plt, report: dict, path: Path, save, colors=None) -> None:
    """Updates until validation accuracy first reached the target, against the learning rate:
    median over the seeds that reached it (whiskers: min to max; hollow where only some did). The
    censored are marked as such: a downward triangle where it was reached by the first validation
    (at most that many updates), an upward one above the budget where no seed reached it, an x there
    where every seed diverged. Lines are dodged sideways so that equal values stay apart."""
    from bnbench.report import plots

    lines = _lines(report, "learning_rate")
    looks = plots.styles(list(lines))
    fig, axes = plots.grid(plt, 1, panel=(7.5, 4.8))
    ax = axes[0]
    target = None
    budget = max(e["config"]["updates_per_epoch"] * e["config"]["epochs"] for es in lines.values() for e in es)
    top = budget * 2
    lowest = budget
    for row, (name, entries) in enumerate(lines.items()):
        look = looks[name]
        dodge = 1.07 ** (row - (len(lines) - 1) / 2)
        xs, med = [], []
        for e in entries:
            t = e.get("time_to_target")
            if not t:
                continue
            target = t["target_val_accuracy"]
            x = e["config"]["base_learning_rate"] * dodge
            reached = [s["updates"] for s in t["per_seed"] if s is not None]
            if not reached:
                every = e.get("diverged_seeds", 0) == e["seeds"]
                ax.plot([x], [top], marker="X" if every else "^", ms=8, ls="none", color=look["color"])
                continue
            m = float(np.median(reached))
            lowest = min(lowest, min(reached))
            first = m <= _first_evaluation(report, e)
            ax.errorbar([x], [m], yerr=[[m - min(reached)], [max(reached) - m]], capsize=3, color=look["color"],
                        ls="none", lw=1)
            ax.plot([x], [m], marker="v" if first else look["marker"], ms=8 if first else 5, ls="none",
                    color=look["color"], mfc=look["color"] if len(reached) == e["seeds"] else "white")
            if len(reached) < e["seeds"]:
                ax.annotate(f"{len(reached)}/{e['seeds']}", (x, m), xytext=(5, 4 if row % 2 else -11),
                            textcoords="offset points", fontsize=7, color=look["color"])
            xs.append(x)
            med.append(m)
        ax.plot(xs, med, color=look["color"], linestyle=look["linestyle"], lw=1.2, label=name)
    ax.axhline(budget, color=plots.GREY, lw=0.8, ls="--")
    ax.annotate(f"training budget ({budget} updates)", (0.99, budget), xycoords=("axes fraction", "data"),
                xytext=(0, -10), textcoords="offset points", fontsize=7, color=plots.GREY, ha="right")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(lowest / 1.6, top * 1.6)
    rates = sorted({e["config"]["base_learning_rate"] for es in lines.values() for e in es})
    _x_scale(ax, "log", "learning_rate", report, rates)
    ax.set_xlabel("learning rate (lines dodged sideways to keep equal values apart)")
    ax.set_ylabel("updates to target (median over the seeds that reached it)")
    ax.grid(alpha=0.3)
    line = plt.matplotlib.lines.Line2D
    handles = [line([], [], color=look["color"], linestyle=look["linestyle"], marker=look["marker"])
               for look in looks.values()]
    labels = list(lines)
    marks = [("o", plots.GREY, "every seed reached it (whiskers: min to max)"),
             ("o", "white", "only some did (k/n: how many; median of those)"),
             ("v", plots.GREY, "by the first validation: at most this many"),
             ("^", plots.GREY, "never reached: more than the budget"),
             ("X", plots.GREY, "every seed diverged")]
    handles += [line([], [], marker=m, mfc=fill, mec=plots.GREY, color=plots.GREY, ls="none") for m, fill, _ in marks]
    labels += [text for _, _, text in marks]
    plots.figure_legend(fig, handles, labels)
    fig.suptitle(f"[{report['ref']}] updates until validation accuracy first reached {target}", fontsize=10)
    save(plt, fig, path)


def _curve(run: dict, updates_per_epoch: int) -> tuple[list[float], list[float]]:
    """A run's validation accuracies against epochs (evaluations inside an epoch at their fraction of it)."""
    points = [(e["update"], e["val_accuracy"]) for e in run.get("evals", [])]
    points += [(r["epoch"] * updates_per_epoch, r["val_accuracy"]) for r in run["epochs"] if "val_accuracy" in r]
    points.sort()
    return [p[0] / updates_per_epoch for p in points], [p[1] for p in points]


def _config_label(report: dict, config: dict) -> str:
    """A configuration by its own values: the learning rate it ran at (scaled with its batch size
    where the sweep scales it), its batch size and momentum where they are swept."""
    parts = [f"lr {config['learning_rate']:g}"]
    if len(report["sweep"]["batch_size"]) > 1:
        parts.append(f"batch {config['batch_size']}")
    if len(report["sweep"]["bn_momentum"]) > 1:
        parts.append(f"m {config['bn_momentum']:g}")
    if "ghost_batch" in config:
        parts.append(f"ghost {config['ghost_batch']}")
    if "batch_order" in config:
        parts.append(config["batch_order"])
    return ", ".join(parts)


def plot_curves(plt, report: dict, path: Path, save) -> None:
    """Validation accuracy against epochs (so that runs of different batch sizes line up), one
    panel per variant (at most four a file: ``sweepN_curves.png``, then ``_2``...), one line per
    configuration labelled with its own values: mean over the seeds that did not diverge, band min
    to max. Axes are fitted to the data; configurations where every seed diverged have no line
    and are named under the panel, as are lines far below the rest (drawn at the axis's foot)."""
    from bnbench.report import plots

    by_variant: dict[str, list[tuple[str, dict]]] = {}
    for name, entry in report["variants"].items():
        if "config" in entry:
            by_variant.setdefault(entry["variant"], []).append((name, entry))
    drawn: dict[str, list] = {}
    for variant, entries in by_variant.items():
        for _, entry in entries:
            upe = entry["config"]["updates_per_epoch"]
            curves = [_curve(run, upe) for run in entry["runs"] if "diverged" not in run]
            length = min(len(c[0]) for c in curves) if curves else 0
            label = _config_label(report, entry["config"])
            ys = np.array([c[1][:length] for c in curves]) if length else None
            drawn.setdefault(variant, []).append((label, curves[0][0][:length] if length else None, ys))
    labels = list(dict.fromkeys(label for lines in drawn.values() for label, _, _ in lines))
    looks = plots.styles(labels)
    finals = [ys.mean(0)[-1] for lines in drawn.values() for _, _, ys in lines if ys is not None]
    _, _, cut = plots.fitted_limits(finals)
    kept = [v for lines in drawn.values() for _, _, ys in lines if ys is not None and ys.mean(0)[-1] >= cut
            for v in (*ys.min(0), *ys.max(0))]
    low, high = min(kept or [0.0]), max(kept or [1.0])
    pad = max(high - low, 0.02) * 0.05
    for index, page in enumerate(plots.pages(list(drawn.items()))):
        fig, axes = plots.grid(plt, len(page), panel=(4.6, 3.9))
        for ax, (variant, lines) in zip(axes, page):
            gone, below = [], []
            for label, xs, ys in lines:
                look = looks[label]
                if ys is None:
                    gone.append(label)
                    continue
                mean = ys.mean(0)
                if mean[-1] < cut:
                    below.append(f"{label} ({mean[-1]:.2f})")
                ax.plot(xs, mean, color=look["color"], linestyle=look["linestyle"], lw=1.3, label=label)
                if len(ys) > 1:
                    ax.fill_between(xs, ys.min(0), ys.max(0), color=look["color"], alpha=0.12, lw=0)
            ax.set_ylim(low - pad, high + pad)
            ax.set_xlim(left=0)
            ax.set_title(variant, fontsize=10)
            notes = ([textwrap.fill("every seed diverged: " + "; ".join(gone), 60)] if gone else []) + \
                ([textwrap.fill("below the axis: " + "; ".join(below), 60)] if below else [])
            ax.set_xlabel("\n".join(["epoch", *notes]), fontsize=9)
            ax.set_ylabel("validation accuracy")
            ax.grid(alpha=0.3)
        line = plt.matplotlib.lines.Line2D
        plots.figure_legend(fig, [line([], [], color=looks[label]["color"], linestyle=looks[label]["linestyle"],
                                       lw=1.5) for label in labels], labels, title="each run's own values")
        fig.suptitle(f"[{report['ref']}] validation accuracy during training: mean over seeds, band min to max"
                     + (f", part {index + 1}" if index else ""), fontsize=10)
        save(plt, fig, plots.page_path(path, index))


def table(report: dict, axis: str, metric: str = "val_accuracy") -> str:
    """Final accuracy per line (rows) and value of ``axis`` (columns): mean ± CI half-width over
    the seeds that did not diverge, and how many diverged."""
    title, key, _ = AXES[axis]
    lines = _lines(report, axis)
    values = sorted({e["config"][key] for entries in lines.values() for e in entries}, key=lambda v: _along(axis, v))
    rows = []
    for name, entries in lines.items():
        cells = {e["config"][key]: e for e in entries}
        row = [name]
        for value in values:
            e = cells.get(value)
            if e is None:
                row.append("")
                continue
            diverged = e.get("diverged_seeds", 0)
            text = format_ci(e[metric]) if e.get(metric) else "diverged"
            row.append(text + (f" ({diverged}/{e['seeds']} div.)" if diverged and e.get(metric) else ""))
        rows.append(row)
    return format_table([f"{metric.replace('_', ' ')} \\ {title}", *map(_text, values)], rows, markdown=True)


def grid_text(report: dict) -> str:
    g = report["sweep"]
    budget = ("epochs fixed" if g["budget"] == "epochs" else
              f"updates fixed at those of {g['epochs']} epochs at batch {g['reference_batch_size']} (whole epochs)")
    scaling = (f"learning rate scaled linearly with the batch size from batch {g['reference_batch_size']}"
               if g["lr_scaling"] == "linear" else "the same learning rate at every batch size")
    every = f", validation also every {g['eval_every']} updates of each epoch" if g.get("eval_every") else ""
    every += f"; ghost batches {', '.join(map(str, g['ghost_batch']))}" if g.get("ghost_batch") else ""
    every += f"; batch orders {', '.join(g['batch_order'])}" if g.get("batch_order") else ""
    own = "each variant's own"
    return (f"{', '.join(g['variants'])}; learning rates {', '.join(f'{v:g}' for v in g['learning_rate'])}; "
            f"batch sizes {', '.join(map(str, g['batch_size']))}; BN momenta "
            f"{', '.join(f'{v:g}' for v in g['bn_momentum']) or own}; {g['epochs']} epochs, "
            f"{len(g['seeds'])} seeds "
            f"({', '.join(map(str, g['seeds']))}); budget: {budget}; {scaling}{every}")


def sections(plt, report: dict, out: Path, save, colors_for) -> tuple[list[str], list[Path]]:
    """The study's Markdown for one sweep report and the plots it draws into ``out``."""
    ref = report["ref"]
    lines = [f"## Sweep [{ref}]", "", grid_text(report), ""]
    written = []
    for axis in swept_axes(report["sweep"]) or ["learning_rate"]:
        path = out / f"sweep{ref}_{axis}.png"
        named = _lines(report, axis)
        plot_accuracy(plt, report, axis, path, save, colors_for(list(named)))
        written.append(path)
        lines += [f"### Against {AXES[axis][0]}", "", table(report, axis), "", table(report, axis, "test_accuracy"),
                  "", f"![accuracy against {AXES[axis][0]}]({path.name})", ""]
    for field in field_axes(report):
        drawn = plot_field(plt, report, field, out / f"sweep{ref}_{field}.png", save)
        written += drawn
        lines += [f"### Against {field}", "", *(f"![validation accuracy against {field}]({p.name})\n" for p in drawn)]
    if len(report["sweep"]["learning_rate"]) > 1:
        path = out / f"sweep{ref}_updates_to_target.png"
        plot_updates_to_target(plt, report, path, save, colors_for(list(_lines(report, "learning_rate"))))
        written.append(path)
        lines += [f"![updates to target against learning rate]({path.name})", ""]
    path = out / f"sweep{ref}_curves.png"
    plot_curves(plt, report, path, save)
    written.append(path)
    lines += [f"![validation curves]({path.name})", ""]
    return lines, written
