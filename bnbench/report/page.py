"""``bnbench report``: a Markdown summary and PNG plots of one or more reports, ready to cite.

The page names each report's hardware once, at the top; reports are grouped by the protocol fields
``compare`` checks (one section each), and no plot puts unlike figures side by side: a lone
update's time and an epoch's time per update, or runs of different numbers of seeds, get panels of
their own.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np

from bnbench.record.io import ReportFolder, atomic_write
from bnbench.record.schema import PROTOCOL_KEYS
from bnbench.record.stats import EQUIVALENCE_MARGIN
from bnbench.report import peers, plots, reading, scaling
from bnbench.report.compare import KEY, batch_stats, check_baselines, compare_loaded, protocol_key, settings_text
from bnbench.report.reading import STEP_KINDS
from bnbench.report.table import format_table

ENV_ROWS = ("device_kind", "backend", "device_count", "cpu_model", "cpu_count", "usable_cores", "cpu_flags",
            "jax", "jaxlib", "flax", "optax", "python", "xla_flags", "git_commit")


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed); imported only to plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _panels(plt, count: int, legend_rows: int = 2):
    """Panels for ``count`` plots (at most ``plots.MAX_PANELS``: one row of three, or two by two),
    tall enough for the plot and a legend of ``legend_rows`` lines below each (``_legend``)."""
    return plots.grid(plt, count, panel=(4.8, 4.2 + 0.22 * legend_rows))


def _colors(plt, names) -> dict:
    """A colour per name from Okabe and Ito's colour-blind-safe eight; past eight they come round
    again, so that a plot of more names tells them apart by style as well (``plots.styles``)."""
    return {name: style["color"] for name, style in plots.styles(names).items()}


def _save(plt, fig, path: Path) -> None:
    """Writes the figure as a PNG (and an SVG beside it), atomically, with nothing cut off: the
    title wrapped to the figure's width, legends placed below their panel's tick labels once the
    layout is final, and the canvas grown to hold whatever lies outside the panels (a figure's
    legend on the right)."""
    title = fig._suptitle
    if title is not None:  # about 9 characters of a 12-point title per inch
        title.set_text(textwrap.fill(title.get_text(), max(40, int(fig.get_figwidth() * 9))))
    fig.tight_layout()
    fig.draw_without_rendering()
    for ax in getattr(fig, "_bnbench_legends", []):
        # The lowest point of the panel's labels (slanted names included), in the panel's coordinates.
        low = ax.transAxes.inverted().transform((0, ax.get_tightbbox().y0))[1]
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, low - 0.02))
    if title is not None and fig.axes:  # a clear gap between the title and the panels' own titles
        renderer = fig.canvas.get_renderer()
        top = max(ax.get_tightbbox(renderer).y1 for ax in fig.axes)
        gap = title.get_window_extent(renderer).y0 - top
        need = 10 * fig.dpi / 72
        if gap < need:
            title.set_y(title.get_position()[1] + (need - gap) / (fig.get_figheight() * fig.dpi))
    plots.write(plt, fig, path)
    plt.close(fig)


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _seeds(n) -> str:
    return f"{n} seed{'s' * (n != 1)}"


def curve_panels(loaded: list[dict]) -> dict[str, list[tuple[str, int, np.ndarray, int]]]:
    """Validation curves, one panel per protocol, titled as the page's sections are: accuracies mean
    the same thing only under one protocol, and its seeds are one of its fields, so a lone seed's
    curve is never drawn beside a mean over several. Per panel, (variant, report ref, the curves of
    the runs that did not diverge, how many did)."""
    panels: dict[str, list] = {}
    for r in loaded:
        if "sweep" in r:  # a sweep's curves have a plot of their own (study.plot_curves)
            continue
        for name, v in r["variants"].items():
            if v["curves"] or v["diverged_runs"]:
                curves = np.asarray(v["curves"], dtype=float) if v["curves"] else np.zeros((0, 0))
                panels.setdefault(protocol_title(r["protocol"]), []).append(
                    (name, r["ref"], curves, v["diverged_runs"]))
    return panels


def curve_pages(panels: dict[str, list]) -> list[list[tuple[str, list]]]:
    """The panels packed into figures of at most ``plots.MAX_PANELS`` panels and as many variants as
    the palette has colours, so that no colour stands for two variants in one figure: a protocol
    with more variants is drawn in several panels, its variants shared out evenly."""
    limit = len(plots.PALETTE)
    split = []
    for title, lines in panels.items():
        names = list(dict.fromkeys(line[0] for line in lines))
        parts = -(-len(names) // limit)
        size = -(-len(names) // parts)
        for k in range(parts):
            chunk = names[k * size:(k + 1) * size]
            part = f" (variants {k * size + 1}-{k * size + len(chunk)} of {len(names)})" if parts > 1 else ""
            split.append((title + part, [line for line in lines if line[0] in chunk]))
    figures, current, names = [], [], set()
    for title, lines in split:
        here = {line[0] for line in lines}
        if current and (len(current) == plots.MAX_PANELS or len(names | here) > limit):
            figures.append(current)
            current, names = [], set()
        current.append((title, lines))
        names |= here
    return figures + [current] if current else figures


def _legend(ax) -> None:
    """A legend below the panel and its labels, so that it hides no bar, line or label however
    long the device's name; placed by ``_save``, once the layout is final."""
    fig = ax.figure
    fig._bnbench_legends = [*getattr(fig, "_bnbench_legends", []), ax]


REPORT_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def _plot_curves(loaded: list[dict], path: Path) -> None:
    """Validation accuracy per epoch, a panel per protocol, as ``curve_pages`` packs them into files
    (``val_accuracy.png``, then ``val_accuracy_2.png``...): in a file a variant keeps its colour in
    every panel and no two share one, a report has its marker, and one legend names each once. Runs
    that diverged are left out of the means, and each panel says which (never drawn as accuracy 0)."""
    plt = _pyplot()
    panels = curve_panels(loaded)
    for index, page in enumerate(curve_pages(panels) or [[]]):
        fig, axes = plots.grid(plt, max(1, len(page)), panel=(4.8, 4.0))
        looks = plots.styles(line[0] for _, lines in page for line in lines)
        refs = list(dict.fromkeys(line[1] for _, lines in page for line in lines))
        markers = {ref: REPORT_MARKERS[i % len(REPORT_MARKERS)] for i, ref in enumerate(refs)}
        drawn = set()
        for ax, (title, lines) in zip(axes, page):
            here = sorted({line[1] for line in lines})
            values, diverged = [], []
            for name, ref, curves, lost in lines:
                label = name if len(here) == 1 else f"{name} [{ref}]"
                if lost:
                    diverged.append(f"{label} {lost} of {lost + len(curves)}")
                if not len(curves) or not curves.shape[1]:
                    continue
                drawn.add(name)
                epochs = np.arange(1, curves.shape[1] + 1)
                look = looks[name]
                ax.plot(epochs, curves.mean(0), marker=markers[ref], ms=3.5, color=look["color"],
                        linestyle=look["linestyle"], lw=1.3, label=label)
                values += [*curves.mean(0)]
                if len(curves) > 1:
                    ax.fill_between(epochs, curves.min(0), curves.max(0), color=look["color"], alpha=0.15, lw=0)
                    values += [*curves.min(0), *curves.max(0)]
            if values:
                low, high = min(values), max(values)
                pad = max(high - low, 0.01) * 0.06
                ax.set_ylim(low - pad, high + pad)
                epochs = max(line[2].shape[1] for line in lines)
                ax.set_xlim(0.5, epochs + 0.5)
                ax.set_xticks(range(1, epochs + 1, max(1, epochs // 10)))  # whole epochs, also for one
            else:  # the axes stay, for the note under them
                ax.text(0.5, 0.5, "every run diverged", ha="center", va="center", transform=ax.transAxes)
                ax.set_yticks([])
            which = f"[{here[0]}] " if len(here) == 1 else ""
            ax.set_title(textwrap.fill(which + title, 56), fontsize=8)
            note = textwrap.fill("diverged, left out: " + "; ".join(diverged), 60) if diverged else ""
            ax.set_xlabel("epoch" + (f"\n{note}" if note else ""))
            ax.set_ylabel("validation accuracy")
            ax.grid(alpha=0.3)
        shown = [n for n in dict.fromkeys(line[0] for _, lines in page for line in lines) if n in drawn]
        line = plt.matplotlib.lines.Line2D
        handles = [line([], [], color=looks[n]["color"], linestyle=looks[n]["linestyle"], lw=1.5) for n in shown]
        handles += [line([], [], color=plots.GREY, marker=markers[ref], ls="none") for ref in refs]
        labels = [*shown, *(textwrap.shorten(f"[{ref}] {_label(loaded, ref)}", 44) for ref in refs)]
        plots.figure_legend(fig, handles, labels, title="variant (colour); report (marker)", below=True)
        if not panels:
            _empty(axes[0], "no per-epoch curves in these reports")
        fig.suptitle("Validation accuracy per epoch, one panel per protocol (mean over the seeds that did not "
                     "diverge; band: min to max)" + (f", part {index + 1}" if index else ""))
        _save(plt, fig, plots.page_path(path, index))


def _label(loaded: list[dict], ref) -> str:
    return next(r["label"] for r in loaded if r["ref"] == ref)


def step_panels(loaded: list[dict]) -> dict[tuple, dict[int, dict[str, dict]]]:
    """Step times by kind and, inside epochs, by seeds trained together: one panel each, so that no
    panel puts unlike times side by side. Per panel, per report ref, per variant, the figure."""
    panels: dict[tuple, dict] = {}
    for r in loaded:
        if "sweep" in r:  # dozens of configurations: their times are in the tables
            continue
        for name, v in r["variants"].items():
            for kind in STEP_KINDS:
                if v[kind] is not None:
                    key = (list(STEP_KINDS).index(kind), v[kind].get("seeds") or 0)
                    panels.setdefault(key, {}).setdefault(r["ref"], {})[name] = v[kind]
    return {(list(STEP_KINDS)[k], seeds): series for (k, seeds), series in sorted(panels.items())}


def _step_title(kind: str, seeds: int) -> str:
    if kind == "lone_step":
        return "one compiled update (a lone step)"
    return f"per update inside epochs of {_seeds(seeds)}" + (" trained together" if seeds > 1 else "")


def _plot_step_times(loaded: list[dict], path: Path) -> None:
    """Median time per update with its IQR, a panel per kind of time (two by two, at most
    ``plots.MAX_PANELS`` a file): variants down the side, a bar per report that has them (a report
    keeps its colour and hatch in every panel), one legend beside the panels."""
    plt = _pyplot()
    panels = step_panels(loaded)
    labels = {r["ref"]: textwrap.fill(f"[{r['ref']}] {r['label']}", 48) for r in loaded}
    looks = plots.styles([r["ref"] for r in loaded])  # a report keeps its look across the panels
    items = list(panels.items())
    for index, page in enumerate(plots.pages(items)):
        bars = max([sum(len(figures) for figures in series.values()) + len(series) for _, series in page] or [1])
        fig, axes = plots.grid(plt, len(page), panel=(5.2, 1.4 + 0.15 * bars), columns=2 if len(page) > 1 else 1)
        shown = []
        for ax, ((kind, seeds), series) in zip(axes, page):
            names = list(dict.fromkeys(n for figures in series.values() for n in figures))
            rows, y = {}, 0.0  # each variant's bars together, one per report that has it, none left blank
            for name in names:
                refs = [ref for ref, figures in series.items() if name in figures]
                rows[name] = {ref: y + i for i, ref in enumerate(refs)}
                y += len(refs) + 0.6
            for ref, figures in series.items():
                at = [rows[n][ref] for n in names if n in figures]
                medians = [figures[n]["median"] * 1e3 for n in names if n in figures]
                errors = [figures[n]["iqr"] * 1e3 / 2 for n in names if n in figures]
                if any(math.isinf(x) for x in medians + errors):
                    continue  # a time beyond a double's range once in ms cannot be drawn
                ax.barh(at, medians, 0.85, xerr=errors, capsize=2, label=labels[ref], color=looks[ref]["color"],
                        hatch=looks[ref]["hatch"], edgecolor="white", lw=0.5, error_kw={"lw": 0.8})
                shown.append(ref)
            ax.set_yticks([np.mean(list(at.values())) for at in rows.values()], names, fontsize=8)
            ax.set_ylim(y - 0.6 + 0.2, -0.8)  # the first variant on top
            ax.set_title(_step_title(kind, seeds), fontsize=9)
            ax.set_xlabel("ms per training update (median; whisker: IQR)", fontsize=8)
            ax.set_xlim(left=0)
            ax.grid(axis="x", alpha=0.3)
        shown = [r["ref"] for r in loaded if r["ref"] in shown]  # in the page's order of reports
        handles = [plt.matplotlib.patches.Patch(facecolor=looks[ref]["color"], hatch=looks[ref]["hatch"],
                                                edgecolor="white") for ref in shown]
        plots.figure_legend(fig, handles, [labels[ref] for ref in shown], title="report")
        if not panels:
            _empty(axes[0], "no step times in these reports")
        fig.suptitle("Time per training update, by kind of time (never compare across panels)"
                     + (f", part {index + 1}" if index else ""))
        _save(plt, fig, plots.page_path(path, index))


def _seeds_text(seeds: list[int]) -> str:
    """``5 seeds (0-4)``, ``2 seeds (3, 7)``: the count and which, so that sections tell them apart."""
    consecutive = seeds == list(range(seeds[0], seeds[0] + len(seeds)))
    which = f"{seeds[0]}-{seeds[-1]}" if consecutive and len(seeds) > 2 else ", ".join(map(str, seeds))
    return f"{_seeds(len(seeds))} ({which})"


def protocol_title(p: dict) -> str:
    """A section's title: every field sections are grouped by (schema.PROTOCOL_KEYS, and BatchNorm's
    statistics where they are local to each device)."""
    local = (f", BatchNorm statistics local to each of {p['data_parallel']} devices"
             if batch_stats(p) == "local" else "")
    order = f", batches of {p['batch_order'].partition(':')[2]} classes each" if p.get("batch_order", "iid") != "iid" \
        else ""
    return _title(p) + local + order


def _title(p: dict) -> str:
    if not any(key in p for key in PROTOCOL_KEYS):
        return "protocol not recorded (pytest-benchmark JSON without the accuracy benchmark)"
    g = lambda key: p.get(key, "?")  # noqa: E731
    if "learning_rate" not in p:  # a sweep: batch size, learning rate and epochs are its grid's
        return (f"{g('dataset')}, {g('order')} order, {g('train_examples')}/{g('validation_examples')}/"
                f"{g('test_examples')} train/validation/test, {g('optimizer')} momentum {g('momentum')}"
                f"{settings_text(p)}, a sweep (its grid below), {_seeds_text(p['seeds'])}")
    return (f"{g('dataset')}, {g('order')} order, {g('train_examples')}/{g('validation_examples')}/"
            f"{g('test_examples')} train/validation/test, batch {g('batch_size')}, {g('optimizer')} "
            f"lr {g('learning_rate')} momentum {g('momentum')}{settings_text(p)}, "
            f"{g('epochs')} epoch{'s' * (g('epochs') != 1)}, "
            f"{_seeds_text(p['seeds'])}")


def _where_they_ran(loaded: list[dict]) -> list[str]:
    """Each report once with its file, then its environment: the fields all share once, the rest
    as a table, so that the hardware is named once."""
    lines = [f"[{r['ref']}] `{r['path']}`{reading.merged_text(r)}  " for r in loaded]
    values = {key: [_env_value(r["environment"].get(key)) for r in loaded] for key in ENV_ROWS}
    common = [[key, vals[0]] for key, vals in values.items() if len(set(vals)) == 1 and vals[0]]
    differ = [[key, *vals] for key, vals in values.items() if len(set(vals)) > 1]
    out = ["## Where they ran", "", *lines, ""]
    if common:
        out += [format_table(["all reports", ""], common, markdown=True), ""]
    if differ:
        out += [format_table(["differs", *[f"[{r['ref']}]" for r in loaded]], differ, markdown=True), ""]
    return out


def _env_value(value) -> str:
    if value is None:
        return ""
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def study(loaded: list[dict], out: Path) -> tuple[list[str], list[Path]]:
    """The study sections and plots of the sweep reports among ``loaded``."""
    sweeps = [r for r in loaded if "sweep" in r]
    if not sweeps:
        return [], []
    from bnbench.report import sweeps as study_lib

    plt = _pyplot()
    lines, written = [], []
    for r in sweeps:
        text, paths = study_lib.sections(plt, r, out, _save, lambda names: _colors(plt, names))
        lines += text
        written += paths
    return lines, written


def markdown(loaded: list[dict], baselines=(), extra: list[str] = (), margin: float = EQUIVALENCE_MARGIN) -> str:
    sections = ["# bnbench results", "", *_where_they_ran(loaded)]
    groups: dict[tuple, list[dict]] = {}
    for r in loaded:
        if r["variants"]:  # not a file of scaling points alone: they have their own section
            groups.setdefault(protocol_key(r), []).append(r)
    for members in groups.values():
        sections += [f"## {protocol_title(members[0]['protocol'])}", "",
                     compare_loaded(members, markdown=True, standalone=False, baselines=baselines,
                                    margin=margin)[0], "", *plots.difference_links(members, baselines, margin)]
    sections += [*(f"- {line}" for line in KEY.splitlines()), ""]
    if any("sweep" not in r and r["variants"] for r in loaded):  # a sweep's plots are its study's
        sections += ["## Plots", "", "![validation accuracy per epoch](val_accuracy.png)", "",
                     "![time per training update, by kind](step_time.png)", ""]
    sections += extra
    return "\n".join(sections)


def write_citable(paths: list[str], out: str | Path, baselines=(), force: bool = False,
                   margin: float = EQUIVALENCE_MARGIN, formats=("markdown",)) -> list[Path]:
    loaded = reading.load_all(paths)
    check_baselines(loaded, baselines)
    folder = ReportFolder(out, force=force)
    try:
        drawn = _write_page(loaded, folder.staging, baselines, margin, formats)
        folder.finish()
    finally:
        folder.release()
    return [folder.path / p.name for p in drawn]  # README.md first, then the plots as drawn, then the tables


def _write_page(loaded: list[dict], out: Path, baselines, margin: float = EQUIVALENCE_MARGIN,
                formats=()) -> list[Path]:
    readme = out / "README.md"
    try:
        extra, studied = study(loaded, out)
        scaling_text, scaling_plots = scaling.sections(_pyplot(), loaded, out, _save)
        text = markdown(loaded, baselines, extra + scaling_text + peers.sections(loaded), margin)
        plotted = []
        if any("sweep" not in r and r["variants"] for r in loaded):
            plotted = [out / "val_accuracy.png", out / "step_time.png"]
            _plot_curves(loaded, plotted[0])
            _plot_step_times(loaded, plotted[1])
        plotted += plots.plot_differences_all(_pyplot(), loaded, baselines, margin, out, _save)
        text = plots.link_pages(text, out)  # a figure's further pages and its SVG, once drawn
        atomic_write(readme, lambda f: f.write(text))
        from bnbench.report import tables  # --format latex, csv: tables.tex, runs.csv, summary.csv

        written = tables.write(loaded, out, formats, baselines, margin)
    except OSError as e:  # a read-only folder, or a folder where a file should go
        raise reading.ReportError(f"cannot write the report into {out} ({e.strerror or e}: "
                                  f"{e.filename or out}): choose a writable --out folder") from None
    return plots.written(out, [readme, *plotted, *studied, *scaling_plots, *written])
