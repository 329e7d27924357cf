"""``bnbench report``: a Markdown summary and PNG plots of one or more reports, ready to cite."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bnbench import reports
from bnbench.compare import compare_loaded
from bnbench.io import atomic_write
from bnbench.table import format_table

ENV_ROWS = ("device_kind", "backend", "device_count", "cpu_model", "cpu_count", "jax", "jaxlib", "flax", "optax",
            "python", "xla_flags", "git_commit")


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed); imported only to plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, ax, path: Path) -> None:
    """Adds the legend and writes the figure as a PNG, atomically."""
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120), mode="wb")
    plt.close(fig)


def _plot_curves(loaded: list[dict], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, r in enumerate(loaded):
        for name, v in r["variants"].items():
            curves = np.asarray(v.get("curves") or [], dtype=float)
            if curves.size == 0:
                continue
            epochs = np.arange(1, curves.shape[1] + 1)
            label = name if len(loaded) == 1 else f"{name} [{i + 1}] {r['label']}"
            line, = ax.plot(epochs, curves.mean(0), marker="o", ms=3, label=label)
            if len(curves) > 1:
                ax.fill_between(epochs, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Validation accuracy (mean over seeds; band: min to max)")
    ax.grid(alpha=0.3)
    _save(plt, fig, ax, path)


def _plot_step_times(loaded: list[dict], path: Path) -> None:
    plt = _pyplot()
    names = list(dict.fromkeys(n for r in loaded for n in r["variants"]))
    width = 0.8 / len(loaded)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, r in enumerate(loaded):
        medians, errors = [], []
        for n in names:
            step = r["variants"].get(n, {}).get("step_time")
            medians.append(step["median"] * 1e3 if step else np.nan)
            errors.append(step["iqr"] * 1e3 / 2 if step else 0)
        sources = {v.get("step_time_source") for v in r["variants"].values()}
        how = "one update" if sources == {"step"} else \
            f"per update in epochs, {len(r['protocol'].get('seeds', [])) or '?'} seed(s) together"
        ax.bar(np.arange(len(names)) + i * width, medians, width, yerr=errors, capsize=3,
               label=f"[{i + 1}] {r['label']}: {how}")
    ax.set_xticks(np.arange(len(names)) + width * (len(loaded) - 1) / 2, names)
    ax.set_ylabel("ms per training update (median, IQR bar)")
    ax.set_title("Step time per variant and device")
    ax.grid(axis="y", alpha=0.3)
    _save(plt, fig, ax, path)


def markdown(loaded: list[dict]) -> str:
    env_table = format_table(["", *[f"[{i + 1}]" for i in range(len(loaded))]],
                             [[key, *[str(r["environment"].get(key, "")) for r in loaded]] for key in ENV_ROWS],
                             markdown=True)
    sections = ["# bnbench results", "", "## Where they ran", "",
                "\n".join(f"[{i + 1}] `{r['path']}`" + "  " for i, r in enumerate(loaded)), "", env_table, ""]
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(loaded):
        p = r["protocol"]
        groups.setdefault(tuple(str(p.get(k)) for k in ("dataset", "order", "epochs", "seeds")), []).append(i)
    for key, members in groups.items():
        p = loaded[members[0]]["protocol"]
        sections += [f"## {p.get('dataset', '?')}, {p.get('order', '?')} order, {p.get('epochs', '?')} epochs, "
                     f"{len(p.get('seeds', [])) or '?'} seed(s)", "",
                     compare_loaded([loaded[i] for i in members], markdown=True)[0], ""]
    sections += ["## Plots", "", "![validation accuracy per epoch](val_accuracy.png)", "",
                 "![step time per variant and device](step_time.png)", ""]
    return "\n".join(sections)


def write_citable(paths: list[str], out: str | Path) -> list[Path]:
    loaded = [reports.load(p) for p in paths]
    out = Path(out)
    readme = out / "README.md"
    text = markdown(loaded)
    atomic_write(readme, lambda f: f.write(text))
    _plot_curves(loaded, out / "val_accuracy.png")
    _plot_step_times(loaded, out / "step_time.png")
    return [readme, out / "val_accuracy.png", out / "step_time.png"]
