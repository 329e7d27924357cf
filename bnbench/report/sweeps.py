"""The study of a sweep report: what ``bnbench report`` adds for each sweep it is given.

Plots of final validation and test accuracy against the learning rate (one line per variant),
against the batch size and against BN's momentum, with 95% CI bands over seeds and diverged points
marked; updates to the target accuracy against the learning rate; validation curves with bands over
seeds. And a Markdown table per sweep: validation accuracy per variant and value of the grid.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bnbench.record.stats import format_ci
from bnbench.report.table import format_table

# What each swept axis is called, read from and drawn as.
AXES = {"learning_rate": ("learning rate", "base_learning_rate", "log"),
        "batch_size": ("batch size", "batch_size", "log2"),
        "bn_momentum": ("BN momentum", "bn_momentum", "linear")}


def swept_axes(grid: dict) -> list[str]:
    return [axis for axis in AXES if len(grid[axis]) > 1]


def _lines(report: dict, axis: str) -> dict[str, list[dict]]:
    """Entries grouped into lines along ``axis``: one line per variant and value of the other axes
    (a line per variant where only ``axis`` is swept), each sorted along the axis."""
    key = AXES[axis][1]
    others = [a for a in swept_axes(report["sweep"]) if a != axis]
    lines: dict[str, list[dict]] = {}
    for entry in report["variants"].values():
        if "config" not in entry:
            continue
        name = " ".join([entry["variant"], *(f"{AXES[a][0].split()[-1]}={entry['config'][AXES[a][1]]:g}"
                                             for a in others)])
        lines.setdefault(name, []).append(entry)
    return {name: sorted(entries, key=lambda e: e["config"][key]) for name, entries in lines.items()}


def _x_scale(ax, scale: str) -> None:
    if scale == "log":
        ax.set_xscale("log")
    elif scale == "log2":
        ax.set_xscale("log", base=2)


def plot_accuracy(plt, report: dict, axis: str, path: Path, save, colors) -> None:
    """Final validation and test accuracy along ``axis``: mean over the seeds that did not
    diverge, 95% CI band; an x where every seed diverged, a hollow ring where some did."""
    title, key, scale = AXES[axis]
    lines = _lines(report, axis)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), squeeze=False)
    for ax, metric in zip(axes[0], ("val_accuracy", "test_accuracy")):
        for name, entries in lines.items():
            xs = np.array([e["config"][key] for e in entries], dtype=float)
            mean = np.array([e[metric]["mean"] if e.get(metric) else np.nan for e in entries])
            low = np.array([e[metric]["ci95"][0] if e.get(metric) and e[metric]["ci95"] else np.nan for e in entries])
            high = np.array([e[metric]["ci95"][1] if e.get(metric) and e[metric]["ci95"] else np.nan for e in entries])
            color = colors[name]
            ax.plot(xs, mean, marker="o", ms=4, color=color, label=name)
            ax.fill_between(xs, low, high, color=color, alpha=0.2)
            for x, e, m in zip(xs, entries, mean):
                diverged = e.get("diverged_seeds", 0)
                if diverged and math.isnan(m):
                    ax.plot([x], [0.0], marker="x", ms=9, mew=2, color=color, clip_on=False)
                elif diverged:
                    ax.plot([x], [m], marker="o", ms=11, mfc="none", color=color)
        _x_scale(ax, scale)
        ax.set_xlabel(title + (" (at the reference batch size; scaled linearly)" if axis == "learning_rate"
                               and report["sweep"]["lr_scaling"] == "linear" else ""))
        ax.set_ylabel(f"final {metric.replace('_', ' ')} (mean, 95% CI band)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"[{report['ref']}] accuracy against {title}; x at 0: every seed diverged, ring: some did",
                 fontsize=10)
    save(plt, fig, path)


def plot_updates_to_target(plt, report: dict, path: Path, save, colors) -> None:
    """Updates until validation accuracy first reached the target, against the learning rate:
    median over the seeds that reached it (whiskers: min to max); a triangle at the top where none did."""
    lines = _lines(report, "learning_rate")
    fig, axes = plt.subplots(1, 1, figsize=(7, 4.8), squeeze=False)
    ax = axes[0][0]
    target = None
    ceiling = max(e["config"]["updates_per_epoch"] * e["config"]["epochs"] for es in lines.values() for e in es)
    for name, entries in lines.items():
        xs, med, lo, hi, never = [], [], [], [], []
        for e in entries:
            t = e.get("time_to_target")
            if not t:
                continue
            target = t["target_val_accuracy"]
            reached = [s["updates"] for s in t["per_seed"] if s is not None]
            if reached:
                xs.append(e["config"]["base_learning_rate"])
                med.append(np.median(reached))
                lo.append(np.median(reached) - min(reached))
                hi.append(max(reached) - np.median(reached))
            else:
                never.append(e["config"]["base_learning_rate"])
        color = colors[name]
        ax.errorbar(xs, med, yerr=[lo, hi], marker="o", ms=4, capsize=3, color=color, label=name)
        ax.plot(never, [ceiling] * len(never), marker="^", ls="none", ms=8, color=color)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("updates to target (median over seeds that reached it)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"[{report['ref']}] updates to validation accuracy {target}; triangle: never reached", fontsize=10)
    save(plt, fig, path)


def _curve(run: dict, updates_per_epoch: int) -> tuple[list[int], list[float]]:
    points = [(e["update"], e["val_accuracy"]) for e in run.get("evals", [])]
    points += [(r["epoch"] * updates_per_epoch, r["val_accuracy"]) for r in run["epochs"] if "val_accuracy" in r]
    points.sort()
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(plt, report: dict, path: Path, save) -> None:
    """Validation accuracy against updates, one panel per variant, one line per configuration:
    mean over the seeds that did not diverge, band min to max (configurations where every seed
    diverged have no line; the accuracy plots mark them)."""
    by_variant: dict[str, list[tuple[str, dict]]] = {}
    for name, entry in report["variants"].items():
        if "config" in entry:
            by_variant.setdefault(entry["variant"], []).append((name, entry))
    fig, axes = plt.subplots(1, len(by_variant), figsize=(4.4 * len(by_variant) + 1, 4.6), squeeze=False)
    for ax, (variant, entries) in zip(axes[0], by_variant.items()):
        cmap = plt.get_cmap("viridis")
        for i, (name, entry) in enumerate(entries):
            upe = entry["config"]["updates_per_epoch"]
            curves = [_curve(run, upe) for run in entry["runs"] if "diverged" not in run]
            length = min(len(c[0]) for c in curves) if curves else 0
            if not length:
                continue
            xs = curves[0][0][:length]
            ys = np.array([c[1][:length] for c in curves])
            color = cmap(i / max(1, len(entries) - 1))
            ax.plot(xs, ys.mean(0), color=color, label=name[len(variant) + 1:] or name, lw=1.2)
            if len(ys) > 1:
                ax.fill_between(xs, ys.min(0), ys.max(0), color=color, alpha=0.15)
        ax.set_title(variant, fontsize=10)
        ax.set_xlabel("updates")
        ax.set_ylabel("validation accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    fig.suptitle(f"[{report['ref']}] validation accuracy during training: mean over seeds, band min to max",
                 fontsize=10)
    save(plt, fig, path)


def table(report: dict, axis: str, metric: str = "val_accuracy") -> str:
    """Final accuracy per line (rows) and value of ``axis`` (columns): mean ± CI half-width over
    the seeds that did not diverge, and how many diverged."""
    title, key, _ = AXES[axis]
    lines = _lines(report, axis)
    values = sorted({e["config"][key] for entries in lines.values() for e in entries})
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
    return format_table([f"{metric.replace('_', ' ')} \\ {title}", *[f"{v:g}" for v in values]], rows, markdown=True)


def grid_text(report: dict) -> str:
    g = report["sweep"]
    budget = ("epochs fixed" if g["budget"] == "epochs" else
              f"updates fixed at those of {g['epochs']} epochs at batch {g['reference_batch_size']} (whole epochs)")
    scaling = (f"learning rate scaled linearly with the batch size from batch {g['reference_batch_size']}"
               if g["lr_scaling"] == "linear" else "the same learning rate at every batch size")
    every = f", validation also every {g['eval_every']} updates of each epoch" if g.get("eval_every") else ""
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
