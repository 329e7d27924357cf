"""The report's plots show the effect: axes fitted to the data, diverged runs never drawn as an
accuracy, curves of a sweep against epochs and labelled with each run's own values, spread on the
scaling plots, at most four panels a figure, legends clear of the data, no colour and style twice
in a figure, an SVG beside each PNG, and the comparison's figure of paired differences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bnbench.record import stats
from bnbench.report import page, plots, reading, scaling, sweeps
from bnbench.report.compare import comparison

RESULTS = Path(__file__).resolve().parents[1] / "results"


@pytest.fixture
def drawn(monkeypatch):
    """Every figure saved, by file name, measured after its layout is final (the figure is closed)."""
    figures = {}
    real_save = page._save

    def save(plt, fig, path):
        real_save(plt, fig, path)
        figures[path.name] = fig

    monkeypatch.setattr(page, "_save", save)
    return figures


def _renderer(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    return FigureCanvasAgg(fig).get_renderer()


def _overlap(a, b) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(width, 0) * max(height, 0)


def _check_figure(name: str, fig) -> None:
    """At most four panels (a diverged row under a panel counts as one), every legend clear of every
    panel, and no two labelled lines of the figure alike in colour and style."""
    from matplotlib.colors import to_hex

    assert len(fig.axes) <= plots.MAX_PANELS, name
    renderer = _renderer(fig)
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert _overlap(box, ax.get_window_extent(renderer)) < 1, (name, legend)
    for ax in fig.axes:
        looks = [(to_hex(line.get_color()), line.get_linestyle(), line.get_marker(), line.get_label())
                 for line in ax.get_lines() if not line.get_label().startswith("_")]
        assert len({look[:3] for look in looks}) == len(looks), (name, looks)


@pytest.fixture(scope="module")
def sweeps_loaded():
    return reading.load_all([str(RESULTS / n) for n in ("cpu-sweep-lr.json", "cpu-sweep-batch.json",
                                                        "cpu-sweep-momentum.json")])


def test_styles_never_repeat_colour_and_style_and_keep_to_the_safe_palette():
    looks = plots.styles([f"v{i}" for i in range(20)])
    pairs = {(s["color"], s["linestyle"]) for s in looks.values()}
    assert len(pairs) == 20 and {s["color"] for s in looks.values()} <= set(plots.OKABE_ITO)
    assert len({s["color"] for s in list(looks.values())[:7]}) == 7  # seven names: seven colours


def test_accuracy_limits_fit_the_data_and_leave_a_far_outlier_at_the_foot():
    low, high, cut = plots.fitted_limits([0.84, 0.86, 0.87, 0.88, 0.89], [(0.83, 0.85), None, None, None, (0.88, 0.9)])
    assert high - low < 0.5 and low > 0.8 and high < 0.92 and cut < 0.83
    low, high, cut = plots.fitted_limits([0.84, 0.86, 0.87, 0.88, 0.89, 0.10])
    assert 0.10 < cut and low > 0.8  # a collapsed run does not squash the rest


def test_sweep_accuracy_is_fitted_and_diverged_runs_have_a_row_of_their_own(sweeps_loaded, drawn, tmp_path):
    lr_sweep = sweeps_loaded[0]
    plt = page._pyplot()
    path = tmp_path / "lr.png"
    sweeps.plot_accuracy(plt, lr_sweep, "learning_rate", path, page._save)
    fig = drawn["lr.png"]
    _check_figure("lr.png", fig)
    assert path.with_suffix(".svg").read_bytes().startswith(b"<?xml")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    main = [ax for ax in fig.axes if ax.get_ylabel().startswith("final")]
    strips = [ax for ax in fig.axes if ax.get_ylabel().startswith("diverged")]
    assert len(main) == 2 and len(strips) == 2
    for ax in main:
        low, high = ax.get_ylim()
        assert high - low < 0.5 and low > 0.5  # the accuracies lie between 0.82 and 0.9
        for line in ax.get_lines():  # nothing is drawn at accuracy 0
            assert not np.any(np.asarray(line.get_ydata(), dtype=float) == 0.0)
    # seed_plain diverged on every seed at lr 0.3 and 1: two x's in its row, none in the panel.
    for strip in strips:
        crosses = [line for line in strip.get_lines() if line.get_marker() == "X"]
        assert sorted(float(line.get_xdata()[0]) for line in crosses) == [0.3, 1.0]
    for ax in main:
        assert not [line for line in ax.get_lines() if line.get_marker() == "X"]


def test_momentum_is_drawn_on_a_log_memory_axis_named_by_m(sweeps_loaded, drawn, tmp_path):
    momentum = sweeps_loaded[2]
    sweeps.plot_accuracy(page._pyplot(), momentum, "bn_momentum", tmp_path / "m.png", page._save)
    ax = drawn["m.png"].axes[0]
    assert ax.get_xscale() == "log"
    assert list(ax.get_xticks()) == pytest.approx([1, 2, 10, 100, 1000])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "0.5", "0.9", "0.99", "0.999"]


def test_batch_orders_are_an_axis_of_classes_per_batch_iid_last(drawn, tmp_path):
    order = reading.load_all([str(RESULTS / "cpu-batch-order.json")])[0]
    assert "batch_order" in sweeps.swept_axes(order["sweep"])
    sweeps.plot_accuracy(page._pyplot(), order, "batch_order", tmp_path / "order.png", page._save)
    fig = drawn["order.png"]
    _check_figure("order.png", fig)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4", "iid"]
    labels = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert labels == ["seed_bn", "batch_renorm", "group_norm", "layer_norm", "plain_relu"]  # a line per variant
    header = sweeps.table(order, "batch_order").splitlines()[0]
    assert [cell.strip() for cell in header.split("|")[2:-1]] == ["classes:1", "classes:2", "classes:4", "iid"]


def test_a_field_the_variants_names_change_is_drawn_as_an_axis_a_panel_per_learning_rate(drawn, tmp_path):
    import copy

    report = copy.deepcopy(reading.load_all([str(RESULTS / "cpu-sweep-lr.json")])[0])
    assert sweeps.field_axes(report) == []  # the committed sweeps change no number in their names
    # As if plain_relu and seed_plain were one model at two depths, and seed_bn and
    # bn_before_activation another: the depth study's layout.
    renamed = {"plain_relu": "plain_relu:depth=2,width=256", "seed_plain": "plain_relu:depth=8,width=256",
               "seed_bn": "seed_bn:depth=2,width=256", "bn_before_activation": "seed_bn:depth=8,width=256"}
    for entry in report["variants"].values():
        entry["variant"] = renamed.get(entry["variant"], entry["variant"])
    assert sweeps.field_axes(report) == ["depth"]
    rates = report["sweep"]["learning_rate"]
    written = sweeps.plot_field(page._pyplot(), report, "depth", tmp_path / "depth.png", page._save)
    assert [p.name for p in written] == [plots.page_path(Path("depth.png"), i).name for i in range(len(written))]
    panels = [ax for p in written for ax in drawn[p.name].axes]
    assert [ax.get_title() for ax in panels] == [f"lr {lr:g}" for lr in sorted(rates)]
    for p in written:
        _check_figure(p.name, drawn[p.name])
    for ax in panels:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "8"]
    legend = [t.get_text() for t in drawn[written[0].name].legends[0].get_texts()]
    assert legend[:2] == ["plain_relu:width=256", "seed_bn:width=256"]  # a line per model, the depth left out
    # A value that is no number (a variant's own depth=None) is left off the axis, never a traceback;
    # a tuple's commas stay in its value.
    next(e for e in report["variants"].values() if e["variant"] == "seed_bn:depth=8,width=256")["variant"] = \
        "seed_bn:depth=None,channels=(8,16)"
    assert sweeps.field_axes(report) == ["depth"]
    sweeps.plot_field(page._pyplot(), report, "depth", tmp_path / "other.png", page._save)
    other = [t.get_text() for t in drawn["other.png"].legends[0].get_texts()]
    assert "seed_bn:channels=(8,16)" not in other and other[:2] == ["plain_relu:width=256", "seed_bn:width=256"]
    # Where every seed of a configuration diverged, its panel marks it at the foot, never as an accuracy.
    gone = [e for e in report["variants"].values() if e["variant"] in renamed.values() and not e.get("val_accuracy")]
    if gone:
        marks = [line for ax in panels for line in ax.get_lines() if line.get_marker() == "X"]
        assert len(marks) == len(gone)


def test_sweep_curves_run_against_epochs_with_each_runs_own_learning_rate(sweeps_loaded, drawn, tmp_path):
    batch = sweeps_loaded[1]
    sweeps.plot_curves(page._pyplot(), batch, tmp_path / "curves.png", page._save)
    assert set(drawn) == {"curves.png", "curves_2.png"}  # five variants: three panels, then two
    for name, fig in drawn.items():
        _check_figure(name, fig)
        assert (tmp_path / name).with_suffix(".svg").is_file()
    labels = [t.get_text() for t in drawn["curves.png"].legends[0].get_texts()]
    assert labels == ["lr 0.00125, batch 4", "lr 0.005, batch 16", "lr 0.01, batch 32", "lr 0.02, batch 64",
                      "lr 0.08, batch 256"]
    for ax in drawn["curves.png"].axes:
        assert ax.get_xlabel().startswith("epoch")
        assert max(max(line.get_xdata()) for line in ax.get_lines()) == pytest.approx(10)  # 10 epochs each
        assert ax.get_ylim()[0] > 0.5


def test_updates_to_target_marks_the_censored(sweeps_loaded, drawn, tmp_path):
    lr_sweep = sweeps_loaded[0]
    sweeps.plot_updates_to_target(page._pyplot(), lr_sweep, tmp_path / "t.png", page._save)
    fig = drawn["t.png"]
    _check_figure("t.png", fig)
    ax = fig.axes[0]
    markers = {line.get_marker() for line in ax.get_lines()}
    # Reached by the first validation (430 updates), never reached, every seed diverged.
    assert {"v", "^", "X"} <= markers
    first = [line for line in ax.get_lines() if line.get_marker() == "v"]
    assert all(float(line.get_ydata()[0]) <= 430 for line in first)


def test_scaling_points_carry_their_spread(drawn, tmp_path):
    report = reading.load_all([str(RESULTS / "cpu-data-parallel-scaling-pytest-benchmark.json")])[0]
    curves = scaling._curves(report)
    scaling._plot(page._pyplot(), report, curves, tmp_path / "s.png", page._save)
    fig = drawn["s.png"]
    _check_figure("s.png", fig)
    per_update = fig.axes[1]
    point = max((p for points in curves.values() for p in points), key=lambda p: p["epoch_s"]["iqr"])
    want = point["epoch_s"]["iqr"] * point["update_s"] * 1e3 / point["epoch_s"]["median"]
    spans = [np.ptp(line.get_ydata()) for line in per_update.get_lines() if np.ptp(line.get_xdata()) == 0]
    assert any(span == pytest.approx(want) for span in spans)  # the IQR bar of the widest point


def test_the_difference_figure_sorts_its_rows_and_draws_compares_paired_interval(drawn, tmp_path):
    loaded = reading.load_all([str(RESULTS / "cpu-mlp-variants-5seeds.json")])
    figures = plots.difference_figures(loaded, ["seed_bn"])
    rows = figures[(loaded[0]["ref"], "seed_bn")]
    variants = loaded[0]["variants"]
    for name, d in rows:
        want = comparison(variants[name], variants["seed_bn"], "val_accuracy", paired=True)
        assert d["ci95"] == want["ci95"] and d["test"] == "paired"
    assert [d["verdict"] for _, d in rows] == [d["verdict"] for d in stats.compare_family(
        [comparison(variants[name], variants["seed_bn"], "val_accuracy", paired=True) for name, _ in rows])]
    paths = plots.plot_differences_all(page._pyplot(), loaded, ["seed_bn"], stats.EQUIVALENCE_MARGIN, tmp_path,
                                       page._save)
    assert [p.name for p in paths] == [f"differences_{loaded[0]['ref']}_seed_bn.png"]
    fig = drawn[paths[0].name]
    _check_figure(paths[0].name, fig)
    ax = fig.axes[0]
    names = [t.get_text() for t in ax.get_yticklabels()]
    by_name = dict(rows)
    differences = [by_name[n]["difference"] for n in names]
    assert differences == sorted(differences) and len(names) == len(rows)  # one row each, sorted
    for y, name in enumerate(names):
        bars = [line for line in ax.get_lines() if line.get_linewidth() == 2 and list(line.get_ydata()) == [y, y]]
        assert [list(bar.get_xdata()) for bar in bars] == [list(by_name[name]["ci95"])]
    band = [p for p in ax.patches if p.get_label().startswith("equivalence")]
    assert len(band) == 1 and band[0].get_x() == pytest.approx(-stats.EQUIVALENCE_MARGIN)


@pytest.mark.slow  # seconds: kept out of the 2-minute default tier
def test_the_page_lists_its_svgs_and_pages_and_draws_the_same_bytes_twice(tmp_path):
    paths = [str(RESULTS / n) for n in ("cpu-notebook-5seeds.json", "cpu-benchmark.json")]
    first = page.write_citable(paths, tmp_path / "a", baselines=["seed_bn"])
    second = page.write_citable(paths, tmp_path / "b", baselines=["seed_bn"])
    names = [p.name for p in first]
    assert names[0] == "README.md" and names == [p.name for p in second]
    pngs = [n for n in names if n.endswith(".png")]
    assert {"val_accuracy.png", "step_time.png"} <= set(pngs)
    assert any(n.startswith("differences_") for n in pngs)
    for png in pngs:
        assert png.replace(".png", ".svg") in names
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name
    text = (tmp_path / "a" / "README.md").read_text()
    for png in pngs:
        assert f"({png})" in text  # every figure is on the page
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if not p.name.startswith(".")) == sorted(names)


def test_figures_past_four_panels_go_on_further_pages(tmp_path):
    assert [len(p) for p in plots.pages(list(range(6)))] == [3, 3]
    assert [len(p) for p in plots.pages(list(range(4)))] == [4]
    assert plots.page_path(tmp_path / "x.png", 1).name == "x_2.png"
    with pytest.raises(ValueError):
        plots.grid(page._pyplot(), 5)
    (tmp_path / "x.png").write_bytes(b"")
    (tmp_path / "x_2.png").write_bytes(b"")
    text = plots.link_pages("a\n![curves](x.png)\nb", tmp_path)
    assert "![curves](x.png)" in text and "![curves (part 2)](x_2.png)" in text


def test_curves_use_no_colour_twice_in_a_figure_and_name_the_diverged(drawn, tmp_path):
    from matplotlib.colors import to_hex

    loaded = reading.load_all([str(RESULTS / n) for n in ("cpu-mlp-variants-5seeds.json",
                                                          "cpu-convnet-3seeds.json")])
    mlp = loaded[0]["variants"]
    mlp["layer_norm"]["curves"] = mlp["layer_norm"]["curves"][1:]  # as if one seed diverged
    mlp["layer_norm"]["diverged_runs"] = 1
    mlp["group_norm"].update(curves=[], diverged_runs=5)  # and every seed of another
    page._plot_curves(loaded, tmp_path / "val.png")
    assert len(drawn) >= 2  # 14 variants on 7 colours: more than one figure
    notes = []
    for name, fig in drawn.items():
        _check_figure(name, fig)
        colours = {}
        for ax in fig.axes:
            notes.append(ax.get_xlabel())
            for line in ax.get_lines():
                colours.setdefault(to_hex(line.get_color()), set()).add(line.get_label().split(" [")[0])
        assert all(len(names) == 1 for names in colours.values()), (name, colours)
        labels = {line.get_label() for ax in fig.axes for line in ax.get_lines()}
        assert "group_norm" not in labels  # nothing drawn for it, at 0 or elsewhere
    note = " ".join(notes).replace("\n", " ")
    assert "layer_norm 1 of 5" in note and "group_norm 5 of 5" in note
