"""The data-parallel scaling section of ``bnbench report``: examples per second and time per update
against the number of devices, for each normalization and kind of batch statistics, per report.

Points of one report share its machine; where its devices are parts of one CPU they are simulated
devices sharing its cores, and the section says so: those curves measure the overhead of the
collectives, not a speed-up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bnbench.config import MOVING_STATISTICS
from bnbench.report.table import format_table


def _curves(report: dict) -> dict[str, list[dict]]:
    """The report's points by curve ("seed_bn, sync statistics"), each in order of devices."""
    curves: dict[str, list[dict]] = {}
    for p in report.get("data_parallel_scaling", []):
        curves.setdefault(_name(p), []).append(p)
    return {name: sorted(points, key=lambda p: p["devices"]) for name, points in curves.items()}


def _name(point: dict) -> str:
    """The variant, and its kind of batch statistics where it has any (LayerNorm's are per example)."""
    batch = point.get("norm") in MOVING_STATISTICS
    return f"{point['variant']}, {point['batch_stats']} statistics" if batch else point["variant"]


def simulated(report: dict) -> bool:
    return report["environment"].get("backend") == "cpu"


def sections(plt, loaded: list[dict], out: Path, save) -> tuple[list[str], list[Path]]:
    """Markdown and one plot per report that holds scaling points."""
    lines, written = [], []
    for r in loaded:
        curves = _curves(r)
        if not curves:
            continue
        path = out / f"data_parallel_scaling_{r['ref']}.png"
        _plot(plt, r, curves, path, save)
        written.append(path)
        count = r["environment"].get("device_count")
        where = (f"{count} simulated CPU devices sharing {r['environment'].get('usable_cores')} cores of "
                 f"{r['label']}: these points measure what the collectives cost in overhead and check "
                 f"correctness; they are not a speed-up. Every point ran in one process split into {count} "
                 "devices, which share the cores' threads, so even the 1-device point is slower than a "
                 "process of one device" if simulated(r) else r["label"])
        lines += [f"## Data-parallel scaling [{r['ref']}]", "",
                  f"One seed's epoch, each batch of {_batch(curves)} split over N devices; {where}. "
                  "Median over the timed epochs; examples per second are training examples over the epoch's "
                  "time (which includes the validation pass, not split over devices).", "",
                  format_table(HEADERS, _rows(curves), markdown=True), "",
                  f"![data-parallel scaling]({path.name})", ""]
    return lines, written


HEADERS = ["curve", "devices", "epoch s (median)", "per update ms", "examples/s", "vs 1 device"]


def tables(loaded: list[dict], markdown: bool = False) -> list[str]:
    """``bnbench compare``'s part: each report's scaling points as a table."""
    return [f"Data-parallel scaling [{r['ref']}]" + (" (simulated CPU devices)" if simulated(r) else "") + ":\n"
            + format_table(HEADERS, _rows(_curves(r)), markdown=markdown) for r in loaded if _curves(r)]


def _batch(curves) -> str:
    sizes = sorted({p.get("batch_size") for points in curves.values() for p in points} - {None})
    return ", ".join(map(str, sizes)) or "?"


def _rows(curves: dict[str, list[dict]]) -> list[list]:
    rows = []
    for name, points in curves.items():
        one = next((p for p in points if p["devices"] == 1), None)
        for p in points:
            speedup = f"{p['examples_per_s'] / one['examples_per_s']:.2f}x" if one else "-"
            rows.append([name, p["devices"], f"{p['epoch_s']['median']:.3f}", f"{p['update_s'] * 1e3:.3f}",
                         f"{p['examples_per_s']:.0f}", speedup])
    return rows


def _plot(plt, report: dict, curves: dict[str, list[dict]], path: Path, save) -> None:
    """Examples per second and time per update against the devices, each point with its spread over
    the timed epochs: a thick bar over the epochs' interquartile range (about the median), a thin
    one from the fastest to the slowest epoch."""
    from bnbench.report import plots

    looks = plots.styles(list(curves))
    fig, axes = plots.grid(plt, 2, panel=(5.0, 4.2))
    count = len(curves)
    for row, (name, points) in enumerate(curves.items()):
        look = looks[name]
        dodge = 1.04 ** (row - (count - 1) / 2)  # curves side by side, so that their bars stay apart
        counts = np.array([p["devices"] for p in points], dtype=float) * dodge
        for ax, per_epoch in zip(axes, (_examples, _update_ms)):
            centre, quartiles, extremes = zip(*[per_epoch(p) for p in points])
            ax.plot(counts, centre, ms=5, lw=1.3, label=name, **plots.line_style(look))
            for x, c, (q_low, q_high), (e_low, e_high) in zip(counts, centre, quartiles, extremes):
                ax.plot([x, x], [e_low, e_high], color=look["color"], lw=0.8)
                ax.plot([x, x], [q_low, q_high], color=look["color"], lw=3.5, solid_capstyle="butt", alpha=0.6)
    label = "simulated CPU devices (sharing the cores)" if simulated(report) else "devices"
    for ax, ylabel in zip(axes, ("training examples per second", "time per update (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({p["devices"] for ps in curves.values() for p in ps}))
        ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_locator(plt.matplotlib.ticker.NullLocator())
        ax.set_xlabel(label + "; curves dodged sideways", fontsize=9)
        ax.set_ylabel(ylabel + " (median)")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(bottom=0)
    axes[1].set_ylim(bottom=0)
    line = plt.matplotlib.lines.Line2D
    handles = [line([], [], ms=5, **plots.line_style(look)) for look in looks.values()]
    handles += [line([], [], color=plots.GREY, lw=3.5, alpha=0.6), line([], [], color=plots.GREY, lw=0.8)]
    plots.figure_legend(fig, handles, [*curves, "IQR over the timed epochs", "fastest to slowest epoch"])
    fig.suptitle(f"Data-parallel scaling [{report['ref']}]: {report['label']}", fontsize=10)
    save(plt, fig, path)


def _spread(p: dict) -> tuple[float, tuple[float, float], tuple[float, float]]:
    """The epoch's time: median, (median - IQR/2, median + IQR/2), (fastest, slowest); the quartiles
    are not recorded, so the IQR is drawn about the median."""
    e = p["epoch_s"]
    half = (e.get("iqr") or 0.0) / 2
    return e["median"], (e["median"] - half, e["median"] + half), (e.get("min", e["median"]), e.get("max", e["median"]))


def _examples(p: dict):
    """Examples per second, which fall as the epoch's time grows: the spread inverted."""
    work = p["examples_per_s"] * p["epoch_s"]["median"]
    median, (q_low, q_high), (fast, slow) = _spread(p)
    return p["examples_per_s"], (work / q_high, work / max(q_low, 1e-12)), (work / slow, work / max(fast, 1e-12))


def _update_ms(p: dict):
    """Time per update in ms, which scales with the epoch's time."""
    scale = p["update_s"] * 1e3 / p["epoch_s"]["median"]
    median, (q_low, q_high), (fast, slow) = _spread(p)
    return p["update_s"] * 1e3, (q_low * scale, q_high * scale), (fast * scale, slow * scale)
