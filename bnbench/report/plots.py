"""What every plot of ``bnbench report`` shares: a colour-blind-safe palette whose colour and style
never repeat in a figure, axes fitted to the data, figures of at most ``MAX_PANELS`` panels (more
go on pages of their own: ``name_2.png``...), legends outside the data, and files written twice,
PNG at ``DPI`` and SVG beside it, byte for byte the same on every run. And the comparison's main
figure: each variant's paired difference to a baseline, with its interval and the equivalence margin.

It imports no JAX: the report's plots need matplotlib alone.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from bnbench.record import stats
from bnbench.record.io import atomic_write

# Okabe & Ito's colours, told apart under every common colour blindness; yellow, faint on white, last.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
PALETTE = OKABE_ITO[:7]  # yellow is too faint for a line on white: more names take the next style instead
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D")
HATCHES = ("", "////", "....", "xxxx")
MAX_PANELS = 4
DPI = 150
GREY = "#777777"


def styles(names) -> dict:
    """A style per name (colour, line style, marker, hatch), no two alike in colour and style: the
    palette's seven colours first, then again with the next line style, marker and hatch."""
    out = {}
    for i, name in enumerate(dict.fromkeys(names)):
        turn = (i // len(PALETTE)) % len(LINESTYLES)
        out[name] = {"color": PALETTE[i % len(PALETTE)], "linestyle": LINESTYLES[turn],
                     "marker": MARKERS[turn], "hatch": HATCHES[turn]}
    return out


def line_style(style: dict) -> dict:
    """``style``'s keyword arguments for ``plot``."""
    return {"color": style["color"], "linestyle": style["linestyle"], "marker": style["marker"]}


def fitted_limits(values, intervals=(), floor: float = 0.0, ceiling: float = 1.0, min_span: float = 0.01
                  ) -> tuple[float, float, float]:
    """Limits of an accuracy axis fitted to ``values`` (means) and ``intervals`` (each value's
    (low, high), or None): (low, high, cut). A value far below the rest (under ``cut``: the lower
    quartile less three times the interquartile range, and at least 0.15 less: a run that collapsed,
    not an effect) would squash the others into a line; the caller draws it at the axis's foot,
    marked as off the scale, and the limits leave it and its interval out."""
    values = [math.nan if x is None else float(x) for x in values]
    intervals = list(intervals) or [None] * len(values)
    v = np.array([x for x in values if math.isfinite(x)], dtype=float)
    if not len(v):
        return floor, ceiling, -math.inf
    q1, q3 = np.percentile(v, [25, 75])
    cut = q1 - max(3 * (q3 - q1), 0.15)
    kept = [x for x in v if x >= cut]
    for x, interval in zip(values, intervals):
        if math.isfinite(x) and x >= cut and interval is not None:
            kept += [b for b in interval if b is not None and math.isfinite(b)]
    low, high = min(kept), max(kept)
    pad = max(high - low, min_span) * 0.06
    return max(floor, low - pad), min(ceiling + pad / 2, high + pad), cut


def pages(items: list, per: int = MAX_PANELS) -> list[list]:
    """``items`` split evenly into as few pages of at most ``per`` as hold them all (6: 3 and 3)."""
    if not items:
        return [[]]
    count = math.ceil(len(items) / per)
    size = math.ceil(len(items) / count)
    return [items[i:i + size] for i in range(0, len(items), size)]


def page_path(path: Path, index: int) -> Path:
    """The file of page ``index`` (from 0) of a figure: the first is ``path``, then ``name_2.png``..."""
    return path if index == 0 else path.with_name(f"{path.stem}_{index + 1}{path.suffix}")


def grid(plt, count: int, panel=(4.8, 3.8), columns: int | None = None):
    """A figure of ``count`` panels (at most ``MAX_PANELS``): one row of up to three, else two by
    two; exactly ``count`` axes, so that none stands blank."""
    count = max(1, count)
    if count > MAX_PANELS:
        raise ValueError(f"{count} panels: draw at most {MAX_PANELS} a figure (split them with pages)")
    columns = columns or (count if count <= 3 else 2)
    rows = math.ceil(count / columns)
    fig = plt.figure(figsize=(panel[0] * columns, panel[1] * rows))
    spec = fig.add_gridspec(rows, columns)
    return fig, [fig.add_subplot(spec[i // columns, i % columns]) for i in range(count)]


def figure_legend(fig, handles, labels, title: str | None = None, below: bool = False) -> None:
    """One legend for the whole figure, where it hides no data: right of its panels, or ``below``
    them in as many columns as the figure's width holds (for a wide row of panels)."""
    if not handles:
        return
    if below:
        width = max(len(label) for label in labels) * 0.075 + 0.6  # inches a column of 8-point text takes
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=8, title=title,
                   title_fontsize=8, frameon=False, ncols=max(1, int(fig.get_figwidth() // width)))
    else:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, title=title,
                   title_fontsize=8, frameon=False)


def write(plt, fig, path: Path) -> list[Path]:
    """Writes the figure as a PNG at ``DPI`` and an SVG beside it, each atomically and the same
    bytes on every run (no date, fixed ids); returns both paths."""
    svg = path.with_suffix(".svg")
    options = {"bbox_inches": "tight", "pad_inches": 0.15}
    with plt.rc_context({"svg.hashsalt": "bnbench", "svg.fonttype": "path"}):
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI, **options), mode="wb")
        atomic_write(svg, lambda f: fig.savefig(f, format="svg", metadata={"Date": None}, **options), mode="wb")
    return [path, svg]


IMAGE = re.compile(r"^!\[(?P<alt>.*)\]\((?P<name>[^)\s/]+)\.png\)$")


def link_pages(text: str, out: Path) -> str:
    """``text`` with each image line followed by its figure's further pages (``name_2.png``...)
    found in ``out``, and the SVG named beside each."""
    lines = []
    for line in text.split("\n"):
        match = IMAGE.match(line)
        if not match:
            lines.append(line)
            continue
        alt, name = match["alt"], match["name"]
        index = 0
        while (out / page_path(Path(f"{name}.png"), index)).is_file():
            page = page_path(Path(f"{name}.png"), index)
            if index:
                lines.append("")
            lines.append(f"![{alt}{f' (part {index + 1})' if index else ''}]({page.name})")
            if (out / page.with_suffix(".svg")).is_file():
                lines += ["", f"Vector: [{page.stem}.svg]({page.stem}.svg)"]
            index += 1
        if not index:  # not drawn (yet): as it was
            lines.append(line)
    return "\n".join(lines)


def written(out: Path, listed: list[Path]) -> list[Path]:
    """``listed`` first, then every other file drawn into ``out`` (SVGs, further pages), by name."""
    names = {p.name for p in listed}
    return [*listed, *sorted(p for p in out.iterdir() if p.is_file() and p.name not in names)]


# --- the comparison's main figure --------------------------------------------------------------

VERDICT_COLORS = {"better": OKABE_ITO[2], "worse": OKABE_ITO[3], "equivalent": OKABE_ITO[0],
                  "inconclusive": OKABE_ITO[6], "untested": GREY}


def difference_figures(loaded: list[dict], baselines, metric: str = "val_accuracy",
                       margin: float = stats.EQUIVALENCE_MARGIN) -> dict[tuple, list[tuple[str, dict]]]:
    """Per (report ref, baseline), each other variant's paired difference to the baseline on
    ``metric`` (as ``compare`` sets them: at the same configuration in a sweep), with its family's
    Holm-adjusted p-value and verdict; only families where some difference has an interval."""
    from bnbench.report.compare import baseline_family

    figures = {}
    for r in loaded:
        for baseline in baselines:
            rows = baseline_family(r, baseline, metric, margin)
            if any(d["ci95"] is not None for _, d in rows):
                # Every seed diverged: no difference to draw (the table names it).
                figures[(r["ref"], baseline)] = [(name, d) for name, d in rows if d["difference"] is not None]
    return figures


def difference_name(ref, baseline: str) -> str:
    return f"differences_{ref}_{re.sub(r'[^A-Za-z0-9_.-]', '_', baseline)}.png"  # FIELD=VALUE, name:fields


def difference_links(members: list[dict], baselines, margin: float = stats.EQUIVALENCE_MARGIN) -> list[str]:
    """The Markdown image lines of ``members``' difference figures, as ``plot_differences_all`` draws them."""
    lines = []
    for (ref, baseline) in difference_figures(members, baselines, margin=margin):
        lines += [f"![validation accuracy minus {baseline} in report {ref}: paired difference, 95% CI, "
                  f"equivalence margin shaded]({difference_name(ref, baseline)})", ""]
    return lines


def sorted_rows(rows: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """Rows from the smallest difference (drawn lowest) to the largest (drawn on top)."""
    return sorted(rows, key=lambda row: (row[1]["difference"], row[0]))


def plot_differences(plt, rows: list[tuple[str, dict]], ref, baseline: str, margin: float, path: Path, save,
                     metric: str = "validation accuracy") -> None:
    """One row per variant, sorted by the difference: the difference to ``baseline``, its paired 95%
    interval, the band ±``margin`` within which a difference counts as equivalent, and the verdict."""
    from bnbench.report.compare import field_baseline

    # A FIELD=VALUE baseline is each variant's own run with that value, not one variant.
    if field_baseline(baseline):
        minus_label, minus_title = f"its own at {baseline}", f"itself at {baseline}"
    else:
        minus_label, minus_title = f"{baseline}'s", baseline
    rows = sorted_rows(rows)
    fig, axes = grid(plt, 1, panel=(6.4, 1.3 + 0.27 * len(rows)))
    ax = axes[0]
    ax.axvspan(-margin, margin, color=OKABE_ITO[5], alpha=0.25, lw=0, label=f"equivalence margin ±{margin:g}")
    ax.axvline(0, color="black", lw=0.8)
    # A difference far from the rest (a collapsed configuration's: 0.1 or more beyond the quartiles)
    # would squash them into a line: it is marked at the panel's edge instead, its value written.
    differences = np.array([d["difference"] for _, d in rows])
    q1, q3 = np.percentile(differences, [25, 75])
    spread = max(3 * (q3 - q1), 0.1)
    fence = (q1 - spread, q3 + spread)
    ends = [-margin * 1.5, margin * 1.5]
    for _, d in rows:
        if fence[0] <= d["difference"] <= fence[1]:
            ends += [d["difference"], *[end for end in d["ci95"] or () if fence[0] <= end <= fence[1]]]
    span = max(ends) - min(ends)
    left, right = min(ends) - 0.06 * span, max(ends) + 0.06 * span
    for y, (name, d) in enumerate(rows):
        color = VERDICT_COLORS.get(d["verdict"], GREY)
        n = d["n"] if d["test"] == "paired" else "+".join(map(str, d["n"]))
        ax.annotate(f"{d['verdict']} (n={n})", (1.04, y), xycoords=("axes fraction", "data"), va="center",
                    fontsize=8, color=color)
        if not fence[0] <= d["difference"] <= fence[1]:
            edge = left if d["difference"] < fence[0] else right
            ax.plot([edge], [y], marker="<" if edge == left else ">", ms=8, color=color, clip_on=False, ls="none")
            ci = "" if d["ci95"] is None else f" [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
            ax.annotate(f"{d['difference']:+.3f}{ci}, off the scale", (edge, y), va="center", fontsize=7,
                        color=color, xytext=(8 if edge == left else -8, 0), textcoords="offset points",
                        ha="left" if edge == left else "right")
            continue
        if d["ci95"] is not None:
            low, high = d["ci95"]
            ax.plot([low, high], [y, y], color=color, lw=2, solid_capstyle="butt")
            ax.plot([low, high], [y, y], ls="none", marker="|", ms=8, color=color)
        ax.plot([d["difference"]], [y], marker="o", ms=6, color=color,
                mfc=color if d["ci95"] is not None else "white")
    ax.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlim(left, right)
    ax.set_xlabel(f"{metric} minus {minus_label} (paired over seeds; bar: 95% CI)")
    ax.grid(axis="x", alpha=0.3)
    handles = [plt.matplotlib.patches.Patch(color=OKABE_ITO[5], alpha=0.25),
               *[plt.matplotlib.lines.Line2D([], [], color=c, marker="o", lw=2) for c in VERDICT_COLORS.values()]]
    figure_legend(fig, handles, [f"equivalent if within ±{margin:g}", *VERDICT_COLORS], title="verdict (Holm)")
    fig.suptitle(f"[{ref}] {metric}: each variant minus {minus_title}, sorted", fontsize=10)
    save(plt, fig, path)


def plot_differences_all(plt, loaded: list[dict], baselines, margin: float, out: Path, save) -> list[Path]:
    """Every difference figure of ``loaded``; returns the PNGs."""
    paths = []
    for (ref, baseline), rows in difference_figures(loaded, baselines, margin=margin).items():
        path = out / difference_name(ref, baseline)
        plot_differences(plt, rows, ref, baseline, margin, path, save)
        paths.append(path)
    return paths
