import copy
import json
import math
import os
import stat

import numpy as np
import pytest
from report_helpers import RESULTS, as_pytest_benchmark, harness_report, made_report, set_epoch_time, write

from bnbench import cli
from bnbench.measure import experiment
from bnbench.record.io import write_json
from bnbench.record.model import protocol_value
from bnbench.record.schema import PROTOCOL_KEYS
from bnbench.record.stats import format_ci
from bnbench.report import page, reading


@pytest.fixture(scope="module")
def report_file(tmp_path_factory):
    """``bnbench run``'s report: seed_plain and seed_bn, 3 seeds, 2 epochs."""
    path = tmp_path_factory.mktemp("reports") / "base.json"
    write_json(path, made_report())
    return path


def edited(tmp_path, source, name, edit):
    report = json.loads(source.read_text())
    edit(report)
    path = tmp_path / name
    path.write_text(json.dumps(report))
    return path


def compare(*args, capsys):
    """``bnbench compare ARGS``: exit status and output."""
    status = cli.main(["compare", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_compare_puts_reports_side_by_side_in_markdown(report_file, capsys):
    assert cli.main(["compare", str(report_file), str(report_file), "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| variant")
    side_by_side, differences = out.split("Differences to [1] (unpaired: other runs):")
    assert side_by_side.count("| seed_bn ") == 2 and "1.00x" in side_by_side and "±" in side_by_side
    # One row per accuracy, each unpaired (Welch) with both sides' seeds.
    assert differences.count("| seed_bn ") == 3 and differences.count("| [2] - [1] |") == 6
    assert "| Welch, n=3+3 " in differences


def test_compare_refuses_reports_with_different_protocols(report_file, tmp_path, capsys):
    other = edited(tmp_path, report_file, "other.json", lambda r: r["protocol"].update(learning_rate=0.1))
    assert cli.main(["compare", str(report_file), str(other)]) == 2
    err = capsys.readouterr().err
    assert "not comparable" in err and "learning_rate 0.05 vs 0.1" in err


@pytest.mark.parametrize("edit, says", [
    (lambda p: p.update(optimizer="adamw", momentum=0.9), "optimizer sgd vs adamw"),
    (lambda p: p.update(weight_decay=5e-4), "weight_decay 0.0 vs 0.0005"),
    (lambda p: p.update(precision="bfloat16"), "precision float32 vs bfloat16"),
    # A report from before --weight-decay and --precision had neither: it compares with 0 and float32...
    (lambda p: [p.pop("weight_decay"), p.pop("precision")], None),
])
def test_compare_refuses_other_optimizers_and_precisions(report_file, tmp_path, capsys, edit, says):
    other = edited(tmp_path, report_file, "other.json", lambda r: edit(r["protocol"]))
    assert cli.main(["compare", str(report_file), str(other)]) == (2 if says else 0)
    err = capsys.readouterr().err
    assert (says in err and "not comparable" in err) if says else "not comparable" not in err


def test_an_older_report_is_not_comparable_with_a_bfloat16_one(report_file, tmp_path, capsys):
    """...and not with bfloat16: the missing field stands for float32, not for "anything"."""
    old = edited(tmp_path, report_file, "old.json", lambda r: [r["protocol"].pop(k) for k in ("weight_decay",
                                                                                              "precision")])
    new = edited(tmp_path, report_file, "new.json", lambda r: r["protocol"].update(precision="bfloat16"))
    assert cli.main(["compare", str(old), str(new)]) == 2
    assert "precision float32 vs bfloat16" in capsys.readouterr().err


def slower(report, factor):
    for name, summary in report["summary"].items():
        set_epoch_time(report, name, summary["epoch_time_s"]["median"] * factor, summary["epoch_time_s"]["iqr"])


def test_fail_on_regression_gates_on_step_time_beyond_noise(report_file, tmp_path):
    same = cli.main(["compare", str(report_file), str(report_file), "--fail-on-regression", "10"])
    much_slower = edited(tmp_path, report_file, "slow.json", lambda r: slower(r, 3.0))
    assert same == 0
    assert cli.main(["compare", str(report_file), str(much_slower), "--fail-on-regression", "10"]) == 1


def test_fail_on_regression_gates_on_accuracy_below_the_interval(report_file, tmp_path, capsys):
    def worse(report):
        report["summary"]["seed_bn"]["val_accuracy"]["mean"] -= 0.2
    other = edited(tmp_path, report_file, "worse.json", worse)
    assert cli.main(["compare", str(report_file), str(other), "--fail-on-regression", "50"]) == 1
    assert "seed_bn: val_accuracy" in capsys.readouterr().out


def diverged(report, variant="seed_bn"):
    """``variant`` as if every seed's loss had turned NaN in its second epoch."""
    for run in report["runs"]:
        if run["variant"] == variant:
            run["diverged"] = {"epoch": 2, "update": 2}
            run.pop("test_accuracy"), run.pop("test_loss")
            run["epochs"][1] = {"epoch": 2, "time_s": run["epochs"][1]["time_s"]}
    summary = report["summary"][variant]
    for key in ("train_accuracy", "val_accuracy", "test_accuracy", "train_loss", "val_loss", "test_loss"):
        summary[key] = None
    summary["diverged_seeds"] = summary["seeds"]


def test_a_variant_that_diverged_in_the_later_report_fails_the_gate_as_a_regression(report_file, tmp_path, capsys):
    other = edited(tmp_path, report_file, "diverged.json", diverged)
    assert cli.main(["compare", str(report_file), str(other), "--fail-on-regression", "50"]) == 1
    out = capsys.readouterr().out
    assert "regression: seed_bn: 3 of 3 seeds diverged in" in out
    assert "seed_bn (3/3 diverged)" in out and "diverged" in out.split("seed_bn (3/3 diverged)")[1].splitlines()[0]


def test_a_diverged_run_that_keeps_its_metrics_or_loses_them_too_early_is_refused(report_file, tmp_path, capsys):
    def early(report):
        diverged(report)
        report["runs"][-1]["epochs"][0].pop("val_accuracy")  # before the epoch it diverged in
    bad = edited(tmp_path, report_file, "early.json", early)
    assert cli.main(["compare", str(bad)]) == 2
    assert "runs[5].epochs[0].val_accuracy: missing; expected an accuracy" in capsys.readouterr().err
    def finished_without_test(report):
        report["runs"][0].pop("test_accuracy")
    bad = edited(tmp_path, report_file, "untested.json", finished_without_test)
    assert cli.main(["compare", str(bad)]) == 2
    assert "runs[0].test_accuracy: missing; expected an accuracy between 0 and 1 (or the run's `diverged`)" in \
        capsys.readouterr().err


# A. Step times are compared only with their own kind.

def without_lone_step(report):
    for summary in report["summary"].values():
        summary.pop("step_time_s")
    return report


def test_a_lone_step_is_never_compared_with_an_epochs_time_per_update(tmp_path, capsys):
    """The same run with and without its lone-step figure: nothing regressed (it was +46%)."""
    with_step = write(tmp_path / "with.json", harness_report(lone_over_epoch=1.46))
    without = write(tmp_path / "without.json", without_lone_step(harness_report(lone_over_epoch=1.46)))
    status, out, _ = compare(without, with_step, "--fail-on-regression", "10", capsys=capsys)
    assert status == 0, out
    assert "regression:" not in out and "1.46x" not in out
    assert "per update in epochs 1.00x" in out


def test_a_real_regression_of_the_epoch_is_caught_beside_a_lone_step(tmp_path, capsys):
    """Baseline with a lone step, later report 45% slower per epoch and without one: that passed."""
    base = write(tmp_path / "base.json", harness_report(lone_over_epoch=1.46))
    later = harness_report()
    for name in later["summary"]:
        set_epoch_time(later, name, 0.0145, 0.0002)
    later = write(tmp_path / "later.json", without_lone_step(later))
    status, out, _ = compare(base, later, "--fail-on-regression", "10", capsys=capsys)
    assert status == 1
    assert "regression: seed_bn: per update in epochs +45.0%" in out
    assert f"seed_bn: one update: the baseline has it, {later} has none" in out


def test_a_table_shows_each_kind_of_step_time_in_its_own_column(tmp_path, capsys):
    path = write(tmp_path / "h.json", harness_report(lone_over_epoch=1.46))
    status, out, _ = compare(path, capsys=capsys)
    header = out.splitlines()[0]
    assert status == 0 and "one update (median ± IQR)" in header and "per update in epochs (median ± IQR)" in header
    row = next(line for line in out.splitlines() if line.startswith("seed_bn"))
    lone_ms, epoch_ms = 0.01 / 10 * 1.46 * 1e3, 0.01 / 10 * 1e3
    assert f"{lone_ms:.3f} ±" in row and f"{epoch_ms:.3f} ±" in row and "3 runs together" in row


# B. The gate fails closed.

def test_b_a_variant_missing_from_the_later_report_fails_the_gate(report_file, tmp_path, capsys):
    def drop_seed_bn(report):
        del report["summary"]["seed_bn"]
        report["runs"] = [r for r in report["runs"] if r["variant"] != "seed_bn"]
    other = edited(tmp_path, report_file, "no_bn.json", drop_seed_bn)
    status, out, _ = compare(report_file, other, "--fail-on-regression", "10", capsys=capsys)
    assert status == 1
    assert f"seed_bn: in the baseline {report_file}, missing from {other}" in out
    assert "no regression" not in out


def test_b_one_seed_gates_its_times_and_says_its_accuracies_are_not_gated(capsys):
    """The default harness run (one seed) against itself: times gated, accuracies named, passed."""
    path = RESULTS / "cpu-benchmark.json"
    status, out, _ = compare(path, path, "--fail-on-regression", "10", capsys=capsys)
    assert status == 0, out
    assert ("not gated: seed_bn: train_accuracy, val_accuracy, test_accuracy: the baseline has no 95% interval "
            "(1 seed") in out
    assert "seed_bn (one update 1.00x the baseline's time (the same), per update in epochs 1.00x" in out


def test_b_one_seed_cannot_pass_an_accuracy_gate_asked_for(capsys):
    path = RESULTS / "cpu-benchmark.json"
    for what in ("accuracy", "all"):
        status, out, _ = compare(path, path, "--fail-on-regression", "10", "--gate", what, capsys=capsys)
        assert status == 1
        assert ("not compared, so the gate fails: seed_bn: train_accuracy, val_accuracy, test_accuracy: the baseline "
                "has no 95% interval (1 seed") in out


def scaled_times(report: dict, factor: float) -> None:
    """Every step time of a harness report ``factor`` times longer, spreads as they were."""
    for summary in report["summary"].values():
        for key in ("epoch_time_s", "step_time_s"):
            for figure in ("median", "mean", "min", "max", "q1", "q3"):
                if figure in summary.get(key, {}):
                    summary[key][figure] *= factor
        summary["median_epoch_time_s"] *= factor
        summary["median_update_time_s"] *= factor
    for run in report["runs"]:
        for epoch in run["epochs"]:
            epoch["time_s"] *= factor


def test_b_a_one_seed_step_made_30_percent_slower_fails_the_default_gate(tmp_path, capsys):
    base = RESULTS / "cpu-benchmark.json"
    slow = edited(tmp_path, base, "slow.json", lambda r: scaled_times(r, 1.3))
    status, out, _ = compare(base, slow, "--fail-on-regression", "10", capsys=capsys)
    assert status == 1, out
    assert f"regression: seed_bn: one update +30.0% in {slow}, slower" in out
    assert f"regression: seed_bn: per update in epochs +30.0% in {slow}, slower" in out
    assert "1.30x (slower)" in out


def test_b_reports_of_another_machine_are_compared_with_a_notice_and_gated_only_when_asked(tmp_path, capsys):
    base = RESULTS / "cpu-benchmark.json"
    other = edited(tmp_path, base, "other.json",
                   lambda r: r["environment"].update(cpu_model="AMD EPYC (family 25, model 17, stepping 1)"))
    status, out, _ = compare(base, other, capsys=capsys)
    assert status == 0 and "Notice: [2] ran on another machine than [1]" in out and "hardware, not code" in out
    status, out, _ = compare(base, other, "--fail-on-regression", "10", capsys=capsys)
    assert status == 1 and "ran on another machine" in out and "--across-machines" in out
    status, out, _ = compare(base, other, "--fail-on-regression", "10", "--across-machines", capsys=capsys)
    assert status == 0, out
    same_cpu_other_flags = edited(tmp_path, base, "flags.json", lambda r: r["environment"]["cpu_flags"].pop())
    status, out, _ = compare(base, same_cpu_other_flags, "--fail-on-regression", "10", capsys=capsys)
    assert status == 1 and "other CPU flags or device" in out


def test_b_the_gate_says_what_it_compared(tmp_path, capsys):
    path = write(tmp_path / "h.json", harness_report())
    status, out, _ = compare(path, path, "--fail-on-regression", "10", capsys=capsys)
    assert status == 0
    assert ("seed_bn (one update 1.00x the baseline's time (the same), per update in epochs 1.00x the baseline's "
            "time (the same), train_accuracy, val_accuracy, test_accuracy)") in out
    status, out, _ = compare(path, path, "--fail-on-regression", "10", "--gate", "time", capsys=capsys)
    assert status == 0 and "not gated: accuracies: --gate time" in out and "val_accuracy)" not in out


def test_b_a_gate_with_nothing_to_compare_against_fails(report_file, capsys):
    status, out, _ = compare(report_file, "--fail-on-regression", "10", capsys=capsys)
    assert status == 1 and "nothing to hold" in out


# E. `bnbench report` groups by the fields compare checks.

@pytest.mark.parametrize("edit", [
    lambda r: r["protocol"].update(learning_rate=0.1),
    lambda r: r["protocol"].update(batch_size=64),
    lambda r: r["protocol"].update(train_examples=600, validation_examples=200),
])
def test_e_report_shows_runs_of_other_protocols_in_sections_of_their_own(report_file, tmp_path, edit):
    other = edited(tmp_path, report_file, "other.json", edit)
    assert cli.main(["report", str(report_file), str(other), "--out", str(tmp_path / "cite")]) == 0
    text = (tmp_path / "cite" / "README.md").read_text()
    sections = [line for line in text.splitlines() if line.startswith("## synthetic")]
    assert len(sections) == 2 and sections[0] != sections[1]


def test_e_section_titles_tell_apart_every_field_reports_are_grouped_by():
    base = json.loads((RESULTS / "cpu-benchmark.json").read_text())["protocol"]
    changed = {str: lambda v: v + "x", int: lambda v: v + 1, float: lambda v: v * 2 + 1, list: lambda v: v + [99]}
    for key in PROTOCOL_KEYS:  # a key older reports lack stands for its value then (weight decay, precision)
        value = protocol_value(base, key)
        other = {**base, key: changed[type(value)](value)}
        assert page.protocol_title(other) != page.protocol_title(base), key


# F. Strict JSON, and the usual permissions.

def test_f_reports_are_written_as_strict_json(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"a": math.nan, "b": [math.inf, 1.5], "c": {"d": -math.inf}, "e": (1, 2)})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": {"d": None}, "e": [1, 2]}


def test_f_a_new_report_gets_the_usual_mode_and_a_replaced_one_keeps_its_own(tmp_path):
    old_mask = os.umask(0o022)
    try:
        write_json(tmp_path / "new.json", {})
        existing = tmp_path / "existing.json"
        existing.write_text("{}")
        existing.chmod(0o640)
        write_json(existing, {"x": 1})
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o644
    assert stat.S_IMODE(existing.stat().st_mode) == 0o640 and json.loads(existing.read_text()) == {"x": 1}


# G. Reports that read cleanly.

def test_g_a_run_given_twice_is_shown_once(tmp_path, capsys):
    """Its bnbench report and its pytest-benchmark JSON: one run (same run_id), merged."""
    report = harness_report()
    bnbench_file = write(tmp_path / "bnbench.json", report)
    pytest_file = write(tmp_path / "pytest.json", as_pytest_benchmark(report))
    status, out, _ = compare(pytest_file, bnbench_file, capsys=capsys)
    assert status == 0
    assert out.count("\nseed_bn ") == 1
    assert f"[1] {bnbench_file}" in out and f"(and {pytest_file}: the same run, by its run_id; merged" in out


def test_g_committed_reports_are_one_run_by_run_id_and_without_it_by_their_timings(tmp_path, capsys):
    status, out, _ = compare(RESULTS / "cpu-benchmark.json", RESULTS / "cpu-pytest-benchmark.json", capsys=capsys)
    assert status == 0 and out.count("\nseed_bn ") == 1 and "by its run_id" in out
    # Files written before run_id existed: the same run is recognised by its epoch timings.
    bnbench_file = json.loads((RESULTS / "cpu-benchmark.json").read_text())
    pytest_file = json.loads((RESULTS / "cpu-pytest-benchmark.json").read_text())
    del bnbench_file["run_id"], pytest_file["machine_info"]["bnbench_run_id"]
    status, out, _ = compare(write(tmp_path / "a.json", bnbench_file), write(tmp_path / "b.json", pytest_file),
                             capsys=capsys)
    assert status == 0 and out.count("\nseed_bn ") == 1 and "identical epoch timings" in out


def test_g_pytest_benchmark_json_alone_holds_the_same_figures(tmp_path, capsys):
    report = harness_report()
    a = reading.load(write(tmp_path / "bnbench.json", report))
    b = reading.load(write(tmp_path / "pytest.json", as_pytest_benchmark(report)))
    for name in ("seed_plain", "seed_bn"):
        for key in ("lone_step", "epoch_per_update", "val_accuracy", "seed_scaling", "curves"):
            assert a["variants"][name][key] == b["variants"][name][key], (name, key)


@pytest.fixture
def plotted(monkeypatch):
    """The legends of every plot written, by file name."""
    legends = {}
    real_save = page._save

    def save(plt, fig, path):
        legends[path.name] = [ax.get_legend_handles_labels()[1] for ax in fig.axes]
        real_save(plt, fig, path)

    monkeypatch.setattr(page, "_save", save)
    return legends


def test_g_no_plot_mixes_kinds_of_time_or_numbers_of_seeds(tmp_path, plotted):
    paths = [RESULTS / name for name in ("cpu-benchmark.json", "cpu-pytest-benchmark.json", "cpu-notebook-5seeds.json")]
    assert cli.main(["report", *map(str, paths), "--out", str(tmp_path / "cite")]) == 0
    loaded = reading.load_all(paths)
    assert list(page.step_panels(loaded)) == [("lone_step", 0), ("epoch_per_update", 1), ("epoch_per_update", 5)]
    curves = page.curve_panels(loaded)  # one panel per protocol, so per number of seeds
    assert [sorted({len(c) + lost for _, _, c, lost in lines}) for lines in curves.values()] == [[1], [5]]
    for labels in (labels for legends in plotted.values() for labels in legends):
        assert len(labels) == len(set(labels)), labels  # a legend names each line once
    one_seed, five_seeds = (r["label"] for r in loaded)  # the two files of one run are shown once
    assert [[label.replace("\n", " ") for label in legend] for legend in plotted["step_time.png"]] == \
        [[f"[1] {one_seed}"]] * 2 + [[f"[2] {five_seeds}"]]  # legends wrap long names


def test_g_the_page_names_the_hardware_once(report_file, tmp_path):
    other = edited(tmp_path, report_file, "other.json", lambda r: r["protocol"].update(learning_rate=0.1))
    assert cli.main(["report", str(report_file), str(other), "--out", str(tmp_path / "cite")]) == 0
    text = (tmp_path / "cite" / "README.md").read_text()
    cpu_model = json.loads(report_file.read_text())["environment"]["cpu_model"]
    assert text.count(cpu_model) == 1


def test_g_report_out_that_is_a_file_is_one_line(report_file, tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("mine")
    assert cli.main(["report", str(report_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, not a folder" in err and out.read_text() == "mine"


def test_report_writes_markdown_and_plots(report_file, tmp_path):
    assert cli.main(["report", str(report_file), "--out", str(tmp_path / "cite")]) == 0
    text = (tmp_path / "cite" / "README.md").read_text()
    assert "| cpu_model" in text and "seed_bn" in text and "val_accuracy.png" in text
    for png in ("val_accuracy.png", "step_time.png"):
        assert (tmp_path / "cite" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_committed_reports_compare_in_one_table(capsys):
    """The committed benchmark's two files are one run (the other committed reports are other protocols)."""
    paths = [RESULTS / "cpu-benchmark.json", RESULTS / "cpu-pytest-benchmark.json"]
    status, out, _ = compare(*paths, "--format", "markdown", capsys=capsys)
    assert status == 0 and out.count("| seed_plain ") == 1


def test_time_to_target_counts_updates_and_time():
    run = {"epochs": [{"epoch": 1, "val_accuracy": 0.5, "time_s": 1.0},
                      {"epoch": 2, "val_accuracy": 0.9, "time_s": 2.0}]}
    assert experiment.time_to_target(run, 0.8, 10) == {"epoch": 2, "time_s": 3.0, "updates": 20}
    assert experiment.time_to_target(run, 0.95, 10) is None


def test_time_to_target_at_the_grain_of_evaluations_inside_the_epoch():
    """Evaluations every 4 updates of 10-update epochs: the target is met at update 14, 40% into
    the second epoch's 2 seconds."""
    run = {"epochs": [{"epoch": 1, "val_accuracy": 0.5, "time_s": 1.0},
                      {"epoch": 2, "val_accuracy": 0.9, "time_s": 2.0}],
           "evals": [{"update": 4, "val_accuracy": 0.1}, {"update": 8, "val_accuracy": 0.2},
                     {"update": 14, "val_accuracy": 0.85}, {"update": 18, "val_accuracy": 0.7}]}
    assert experiment.time_to_target(run, 0.8, 10) == {"epoch": 2, "time_s": 1.8, "updates": 14}
    assert experiment.time_to_target(run, 0.4, 10) == {"epoch": 1, "time_s": 1.0, "updates": 10}


def test_a_diverged_run_stops_counting_towards_the_target():
    run = {"epochs": [{"epoch": 1, "val_accuracy": 0.5, "time_s": 1.0}, {"epoch": 2, "time_s": 2.0}],
           "diverged": {"epoch": 2, "update": 13}}
    assert experiment.time_to_target(run, 0.8, 10) is None


def test_merging_a_runs_two_files_keeps_figures_only_the_pytest_file_holds(tmp_path, capsys):
    """A variant whose accuracy benchmark did not run has its lone-step time in pytest-benchmark's
    file only; merged with the bnbench report, that figure must survive and be gated."""
    def pair(name, factor, run_id):
        report = harness_report()
        report["run_id"] = run_id
        pb = as_pytest_benchmark(report)
        for bench in pb["benchmarks"]:
            if bench["extra_info"]["variant"] == "seed_bn" and bench["extra_info"]["bnbench"] == "step":
                for key in ("median", "min", "max", "mean"):
                    bench["stats"][key] *= factor
        del report["summary"]["seed_bn"]["step_time_s"]
        return write(tmp_path / f"{name}-bn.json", report), write(tmp_path / f"{name}-pb.json", pb)

    base = pair("base", 1.0, "a" * 32)
    slower = pair("new", 3.0, "b" * 32)
    status, out, _ = compare(*base, *slower, "--fail-on-regression", "10", capsys=capsys)
    assert status == 1 and "seed_bn: one update +200.0%" in out


def test_epoch_times_of_different_seed_layouts_are_not_compared(report_file, tmp_path, capsys):
    """5 seeds vmapped on one device and 5 seeds over 5 devices are different kinds of epoch."""
    other = edited(tmp_path, report_file, "spread.json",
                   lambda r: r["summary"]["seed_plain"].update(seed_devices=3))
    status, out, _ = compare(report_file, other, "--fail-on-regression", "10", capsys=capsys)
    assert status == 1 and "seed_plain: per update in epochs: 3 seeds over 1 device in the baseline, " \
                           "3 seeds over 3 devices in" in out


# --- statistics of a comparison ---------------------------------------------------------------------

def test_difference_is_welchs_interval_and_p_value():
    from scipy import stats as scipy_stats

    from bnbench.record.stats import difference, mean_ci

    a, b = [0.86, 0.87, 0.865, 0.872, 0.861], [0.83, 0.84, 0.828, 0.835]
    d = difference(mean_ci(a), mean_ci(b))
    # Welch from the raw samples (scipy's own path), and the interval by hand.
    welch = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert d["p_value"] == pytest.approx(welch.pvalue, rel=1e-9)
    va, vb = (scipy_stats.tvar(x) / len(x) for x in (a, b))
    df = (va + vb) ** 2 / (va ** 2 / 4 + vb ** 2 / 3)
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    diff = sum(a) / 5 - sum(b) / 4
    assert d["difference"] == pytest.approx(diff)
    assert d["ci95"] == pytest.approx([diff - half, diff + half])
    assert d["df"] == pytest.approx(df)


def test_difference_says_when_there_are_too_few_seeds_or_no_spread():
    from bnbench.record.stats import difference, format_difference, mean_ci

    few = difference(mean_ci([0.8]), mean_ci([0.7, 0.72]))
    assert few["ci95"] is None and few["p_value"] is None and "1 and 2 seeds" in few["too_few"]
    assert format_difference(few) == "+0.0900 (too few seeds)"
    flat = difference(mean_ci([0.09, 0.09]), mean_ci([0.08, 0.08]))
    assert flat["ci95"] is None and flat["p_value"] is None and "no spread" in flat["too_few"]
    assert format_difference(flat) == "+0.0100 (no spread)"


def test_compare_sets_each_variant_against_a_baseline_variant(report_file, capsys):
    status, out, _ = compare(report_file, "--baseline", "seed_bn", capsys=capsys)
    assert status == 0
    assert "Differences to baseline variants (paired: the same seeds):" in out
    rows = [line for line in out.splitlines() if line.startswith("seed_plain") and " seed_bn " in line]
    assert [row.split()[3] for row in rows] == ["train", "val", "test"]
    assert all("paired, n=3" in row for row in rows)


def test_compare_gives_the_difference_of_each_variant_between_reports(report_file, tmp_path, capsys):
    def lower(r):
        for run in r["runs"]:
            run["epochs"][-1]["val_accuracy"] -= 0.01
        for s in r["summary"].values():
            s["val_accuracy"]["mean"] -= 0.01
            s["val_accuracy"]["ci95"] = [x - 0.01 for x in s["val_accuracy"]["ci95"]]

    other = edited(tmp_path, report_file, "lower.json", lower)
    status, out, _ = compare(report_file, other, capsys=capsys)
    assert status == 0 and "Differences to [1] (unpaired: other runs):" in out
    row = next(line for line in out.splitlines() if line.startswith("seed_bn") and "[2] - [1]" in line
               and " val " in line)
    assert "-0.0100" in row  # with its interval, or "(no spread)" where the seeds agree exactly


def test_a_baseline_in_no_report_is_one_line(report_file, capsys):
    status, _, err = compare(report_file, "--baseline", "layer_norm", capsys=capsys)
    assert status == 2 and "baseline variant 'layer_norm' is in none of the reports" in err


def test_report_shows_differences_to_the_baselines_and_too_few_seeds_plainly(report_file, tmp_path):
    one_seed = RESULTS / "cpu-benchmark.json"
    out = tmp_path / "page"
    assert cli.main(["report", str(report_file), str(one_seed), "--out", str(out), "--baseline", "seed_bn"]) == 0
    page = (out / "README.md").read_text()
    assert page.count("Differences to baseline variants (paired: the same seeds):") == 2  # one per section
    assert "untested: too few seeds" in page and "|\n\nToo few seeds for an interval or a p-value" in page


def test_b_the_gate_names_what_it_could_not_gate_and_fails_only_where_asked(tmp_path, capsys):
    """A baseline without accuracies (every seed diverged), or a time measured once: named, not
    gated by default; a failure, with its reason, where --gate asked for that kind."""
    def all_diverged(report):
        for key in ("train_accuracy", "val_accuracy", "test_accuracy"):
            report["summary"]["seed_bn"][key] = None
        report["summary"]["seed_bn"]["diverged_seeds"] = report["summary"]["seed_bn"]["seeds"]
        for run in report["runs"]:
            if run["variant"] == "seed_bn":
                run.pop("test_accuracy", None), run.pop("test_loss", None)
                run["diverged"] = {"epoch": len(run["epochs"]), "update": 1}
                for epoch in run["epochs"][-1:]:
                    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
                        epoch.pop(key, None)
    base = edited(tmp_path, RESULTS / "cpu-benchmark.json", "div.json", all_diverged)
    status, out, _ = compare(base, base, "--fail-on-regression", "10", capsys=capsys)
    assert status == 0 and "not gated: seed_bn: accuracies: the baseline has none (every seed diverged there)" in out
    status, out, _ = compare(base, base, "--fail-on-regression", "10", "--gate", "accuracy", capsys=capsys)
    assert status == 1 and "not compared, so the gate fails: seed_bn: accuracies: the baseline has none" in out
    once = edited(tmp_path, RESULTS / "cpu-benchmark.json", "once.json",
                  lambda r: r["summary"]["seed_bn"]["epoch_time_s"].update(n=1, iqr=0.0))
    status, out, _ = compare(once, once, "--fail-on-regression", "10", capsys=capsys)
    assert status == 0 and "seed_bn: per update in epochs: timed once in the baseline, so its noise is unknown" in out
    status, out, _ = compare(once, once, "--fail-on-regression", "10", "--gate", "time", capsys=capsys)
    assert status == 1 and "timed once in the baseline" in out


def test_b_accuracies_alone_are_gated_across_machines(tmp_path, capsys):
    base = RESULTS / "cpu-notebook-5seeds.json"
    other = RESULTS / "cpu-amd-epyc-notebook-5seeds.json"
    status, out, _ = compare(base, other, "--fail-on-regression", "10", "--gate", "accuracy", capsys=capsys)
    assert status == 0, out
    assert "seed_bn (train_accuracy, val_accuracy, test_accuracy)" in out


def test_ratios_that_round_to_one_are_the_same():
    from bnbench.report.compare import ratio_text

    assert ratio_text(0.999) == "1.00x (the same)" and ratio_text(0.994) == "0.99x (faster)"
    assert ratio_text(1.3) == "1.30x (slower)"


def test_variants_of_one_report_are_compared_seed_by_seed_as_scipy_does(capsys):
    """The committed 5-seed report: each variant minus seed_bn is scipy's paired t-test on the runs'
    final values, Holm-adjusted within each accuracy's family, with a verdict."""
    from scipy import stats as scipy_stats

    from bnbench.record import stats

    path = RESULTS / "cpu-mlp-variants-5seeds.json"
    status, out, _ = compare(path, "--baseline", "seed_bn", capsys=capsys)
    assert status == 0
    raw = json.loads(path.read_text())
    finals = {}
    for run in raw["runs"]:
        finals.setdefault(run["variant"], {})[run["seed"]] = run
    names = [n for n in raw["summary"] if n != "seed_bn"]
    for metric, column in (("val_accuracy", "val"), ("test_accuracy", "test")):
        def value(run):
            return run["epochs"][-1][metric] if metric != "test_accuracy" else run["test_accuracy"]
        tests = {}
        for name in names:
            seeds = sorted(finals[name])
            a, b = [value(finals[name][s]) for s in seeds], [value(finals["seed_bn"][s]) for s in seeds]
            tests[name] = scipy_stats.ttest_rel(a, b) if len(set(x - y for x, y in zip(a, b))) > 1 else None
        holm = dict(zip(names, stats.holm([t.pvalue if t else None for t in tests.values()])))
        for name, t in tests.items():
            row = next(line for line in out.splitlines() if line.startswith(f"{name} ") and f" {column} " in line)
            assert "paired, n=5" in row
            if t is None:
                continue
            low, high = t.confidence_interval(0.95)
            diff = float(np.mean([value(finals[name][s]) - value(finals["seed_bn"][s]) for s in sorted(finals[name])]))
            assert f"{diff:+.4f} [{low:+.4f}, {high:+.4f}]" in row
            p_text = f"{t.pvalue:.2g}" if t.pvalue >= 1e-4 else "<1e-4"
            h_text = f"{holm[name]:.2g}" if holm[name] >= 1e-4 else "<1e-4"
            assert f" {p_text} " in row and f" {h_text} " in row
    row = next(line for line in out.splitlines() if line.startswith("bn_before_activation ") and " val " in line)
    assert " 0.0033 " in row and row.rstrip().endswith("worse")  # the paired p the audit computed


def test_reports_of_different_machines_are_compared_unpaired_and_say_so(capsys):
    a, b = RESULTS / "cpu-notebook-5seeds.json", RESULTS / "cpu-amd-epyc-notebook-5seeds.json"
    status, out, _ = compare(a, b, capsys=capsys)
    assert status == 0 and "Differences to [1] (unpaired: other runs):" in out
    rows = [line for line in out.splitlines() if "[2] - [1]" in line]
    assert rows and all("Welch, n=5+5" in row for row in rows)
    assert "another machine" in out


def test_a_sweep_baseline_with_nothing_to_compare_says_so_and_diverged_rows_are_named(capsys):
    status, out, _ = compare(RESULTS / "cpu-sweep-momentum.json", "--baseline", "seed_bn", capsys=capsys)
    assert status == 0 and "Differences to baseline variants: none. Every entry of seed_bn" in out
    status, out, _ = compare(RESULTS / "cpu-sweep-lr.json", "--baseline", "plain_relu", capsys=capsys)
    row = next(line for line in out.splitlines() if line.startswith("seed_plain lr=1 ") and " val " in line)
    assert row.rstrip().endswith("diverged: every seed of this variant")


def test_the_run_summary_shows_training_accuracy_in_both_modes():
    from bnbench.report.summary import HEADERS, summary_rows

    report = made_report()
    rows = {row[0]: dict(zip(HEADERS, row)) for row in summary_rows(report)}
    for name, s in report["summary"].items():
        assert rows[name]["train acc"] == format_ci(s["train_accuracy"])
        assert rows[name]["train acc (eval)"] == format_ci(s["train_eval_accuracy"])
    del report["summary"]["seed_bn"]["train_eval_accuracy"]  # a report from before it was recorded
    assert {row[0]: row[3] for row in summary_rows(report)}["seed_bn"] == "-"


def test_a_baseline_absent_from_a_report_is_named_as_absent_not_as_a_sweep(capsys):
    from bnbench.report.compare import against_baselines

    loaded = reading.load_all([str(RESULTS / "cpu-convnet-3seeds.json")])
    text = against_baselines(loaded, ["seed_bn"])
    assert "seed_bn is not in [1], whose variants are conv_bn, conv_group_norm" in text
    assert "its own configuration" not in text


def test_a_ghost_batch_sweep_sets_each_group_size_against_the_baselines_same_size():
    from bnbench.report.compare import baseline_entry

    report = reading.load_all([str(RESULTS / "cpu-ghost-batch-mlp.json")])[0]
    entries = report["variants"].values()
    for entry in entries:
        base = baseline_entry(report, entry.get("variant"), entry, "seed_bn")
        assert base["variant"] == "seed_bn"
        # A control without batch statistics (trained once) meets the baseline's whole batch.
        expected = entry["config"].get("ghost_batch", entry["config"]["batch_size"])
        assert base["config"]["ghost_batch"] == expected
    assert {e["config"].get("ghost_batch") for e in entries} == {2, 4, 8, 16, 32, None}


def test_a_control_without_the_baselines_whole_batch_is_named_not_dropped(tmp_path):
    from bnbench.report.compare import against_baselines

    raw = json.loads((RESULTS / "cpu-ghost-batch-mlp.json").read_text())
    raw["summary"] = {k: v for k, v in raw["summary"].items() if "gb=32" not in k}
    raw["runs"] = [r for r in raw["runs"] if r["config"].get("ghost_batch") != 32]
    raw["sweep"]["ghost_batch"] = [2, 4, 8, 16]
    path = tmp_path / "no-whole-batch.json"
    path.write_text(json.dumps(raw))
    text = against_baselines(reading.load_all([str(path)]), ["seed_bn"])
    assert "batch_renorm lr=0.01 gb=2" in text
    assert text.rstrip().endswith("Not set against seed_bn: no run at their configuration was trained for "
                                  "layer_norm lr=0.01 [1], group_norm lr=0.01 [1].")


def with_variant_like(report: dict, source: str, name: str, shift: float, **fields) -> None:
    """Adds variant ``name`` to ``report``: ``source``'s runs with each accuracy ``shift`` higher
    (plus a thousandth per seed, for a spread), its model's ``fields`` changed."""
    summary = copy.deepcopy(report["summary"][source])
    summary["model"].update(fields)
    report["summary"][name] = summary
    for run in [r for r in report["runs"] if r["variant"] == source]:
        run = copy.deepcopy(run) | {"variant": name}
        bump = shift + 0.001 * run["seed"]
        run["test_accuracy"] += bump
        for epoch in run["epochs"]:
            epoch.update({k: epoch[k] + bump for k in ("train_accuracy", "val_accuracy", "train_eval_accuracy")
                          if epoch.get(k) is not None})
        report["runs"].append(run)


def test_a_baseline_by_field_sets_each_variant_against_itself_with_that_value(tmp_path, capsys):
    report = made_report()
    for source in ("seed_plain", "seed_bn"):
        with_variant_like(report, source, f"{source}:precision=bfloat16", -0.02, precision="bfloat16")
    path = tmp_path / "precision.json"
    write_json(path, report)
    status, out, _ = compare(path, "--baseline", "precision=float32", "--format", "markdown", capsys=capsys)
    assert status == 0, out
    rows = [line for line in out.splitlines() if "| precision=float32 |" in line]
    # Each bfloat16 variant against its own float32 self, never against the other model.
    assert sorted({row.split("|")[1].strip() for row in rows}) == ["seed_bn:precision=bfloat16",
                                                                  "seed_plain:precision=bfloat16"]
    val = [row for row in rows if "| val " in row]
    assert len(val) == 2 and all("-0.0190 [" in row for row in val)
    older = made_report()  # from before the field: its models do not name it, and it pairs nothing
    for summary in older["summary"].values():
        del summary["model"]["precision"]
    write_json(tmp_path / "older.json", older)
    status, out, _ = compare(path, tmp_path / "older.json", "--baseline", "precision=float32", capsys=capsys)
    assert status == 0 and out.count(" precision=float32 ") == len(rows)
    status, _, err = compare(path, "--baseline", "precision=float8", capsys=capsys)
    assert status == 2 and "no variant of the reports has precision float8; theirs are bfloat16, float32" in err
    status, _, err = compare(path, "--baseline", "colour=red", capsys=capsys)
    assert status == 2 and "colour is not a field of the reports' models or a number of their sweeps; use" in err


@pytest.mark.parametrize("report, baseline", [("cpu-ghost-batch-mlp.json", "ghost_batch=32"),
                                              ("cpu-sweep-momentum.json", "bn_momentum=0.9")])
def test_a_number_both_a_model_field_and_swept_is_read_as_trained(report, baseline, capsys):
    status, out, _ = compare(RESULTS / report, "--baseline", baseline, "--format", "markdown", capsys=capsys)
    field, value = baseline.split("=")
    rows = [line.split("|")[1].strip() for line in out.splitlines() if f"| {baseline} |" in line and "| val " in line]
    assert status == 0 and rows, out
    short = {"ghost_batch": "gb", "bn_momentum": "m"}[field]
    assert all(f"{short}={value}" not in row.split() for row in rows)  # the baseline's own runs are not set against it


def test_a_baseline_value_is_read_as_a_field_is_written():
    from bnbench.report.compare import _matches

    assert _matches([300, 100], "300,100") and _matches([300, 100], "[300, 100]") and not _matches([300, 100], "300")
    assert _matches(0.99, "0.990") and _matches(0.0, "0") and _matches("float32", "float32")
    assert _matches(None, "none") and _matches(True, "true") and not _matches(0.5, "half")


def test_a_baseline_by_a_swept_number_sets_each_run_against_its_variant_at_that_number(capsys):
    from bnbench.report.compare import baseline_entry

    path = RESULTS / "cpu-sweep-lr.json"
    report = reading.load_all([str(path)])[0]
    paired = 0
    for name, entry in report["variants"].items():
        base = baseline_entry(report, name, entry, "learning_rate=0.01")
        assert base["variant"] == entry["variant"] and base["config"]["learning_rate"] == 0.01
        assert {k: v for k, v in base["config"].items() if "learning_rate" not in k} == \
            {k: v for k, v in entry["config"].items() if "learning_rate" not in k}
        paired += base is not entry
    status, out, _ = compare(path, "--baseline", "learning_rate=0.01", "--format", "markdown", capsys=capsys)
    assert status == 0
    rows = [line for line in out.splitlines() if "| learning_rate=0.01 |" in line and "| val " in line]
    assert 0 < len(rows) <= paired and all("lr=0.01 " not in row.split("|")[1] for row in rows)


def test_a_baseline_variant_meets_each_variant_with_the_same_fields_changed(tmp_path, capsys):
    report = made_report()
    for depth in (2, 8):
        with_variant_like(report, "seed_plain", f"plain_relu:depth={depth},width=256", -0.01 * depth, depth=depth)
        with_variant_like(report, "seed_plain", f"seed_bn:depth={depth},width=256", -0.005 * depth, depth=depth)
    path = tmp_path / "depth.json"
    write_json(path, report)
    status, out, _ = compare(path, "--baseline", "plain_relu", "--format", "markdown", capsys=capsys)
    assert status == 0, out
    val = {row.split("|")[1].strip(): row for row in out.splitlines() if "| plain_relu |" in row and "| val " in row}
    # seed_bn at depth 8 against plain_relu at depth 8, and so at depth 2; the notebook's variants have no partner.
    assert sorted(val) == ["seed_bn:depth=2,width=256", "seed_bn:depth=8,width=256"]
    assert "+0.0100" in val["seed_bn:depth=2,width=256"] and "+0.0400" in val["seed_bn:depth=8,width=256"]
    # The fields as changes, not as text: written in another order they are the same model. And
    # where the baseline was never trained unchanged, its changed runs are the baseline's.
    for summary in list(report["summary"]):
        if summary in ("seed_plain", "seed_bn"):
            del report["summary"][summary]
    report["runs"] = [r for r in report["runs"] if r["variant"] not in ("seed_plain", "seed_bn")]
    for run in report["runs"]:
        if run["variant"] == "plain_relu:depth=8,width=256":
            run["variant"] = "plain_relu:width=256,depth=8"
    report["summary"]["plain_relu:width=256,depth=8"] = report["summary"].pop("plain_relu:depth=8,width=256")
    write_json(path, report)
    status, out, _ = compare(path, "--baseline", "plain_relu", "--format", "markdown", capsys=capsys)
    val = {row.split("|")[1].strip(): row for row in out.splitlines() if "| plain_relu |" in row and "| val " in row}
    assert status == 0 and sorted(val) == ["seed_bn:depth=2,width=256", "seed_bn:depth=8,width=256"], out
    assert "+0.0400" in val["seed_bn:depth=8,width=256"] and "Not set against" not in out
