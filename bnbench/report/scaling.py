"""The data-parallel scaling section of ``bnbench report``: examples per second and time per update
against the number of devices, for each normalization and kind of batch statistics, per report.

Points of one report share its machine; where its devices are parts of one CPU they are simulated
devices sharing its cores, and the section says so: those curves measure the overhead of the
collectives, not a speed-up.
"""

from __future__ import annotations

from pathlib import Path

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
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for name, points in curves.items():
        counts = [p["devices"] for p in points]
        axes[0].plot(counts, [p["examples_per_s"] for p in points], marker="o", label=name)
        axes[1].plot(counts, [p["update_s"] * 1e3 for p in points], marker="o", label=name)
    label = "simulated CPU devices (sharing the cores)" if simulated(report) else "devices"
    for ax, ylabel in zip(axes, ("training examples per second", "time per update (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({p["devices"] for ps in curves.values() for p in ps}))
        ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Data-parallel scaling [{report['ref']}]: {report['label']}", fontsize=10)
    save(plt, fig, path)
