"""C. One declared schema per report kind, checked once on load; F. strict JSON on read."""

import json

import pytest
from jsonschema import Draft202012Validator
from report_helpers import COMMITTED, RUN_ID, as_pytest_benchmark, harness_report, made_report, write

from bnbench import cli
from bnbench.errors import BnbenchError
from bnbench.record import schema
from bnbench.record.io import write_json
from bnbench.report import reading


def refused(path, capsys) -> str:
    """The one line `compare` and `report` both give for a report that fails its schema."""
    lines = []
    for args in (["compare", str(path)], ["report", str(path), "--out", str(path.parent / "cite")]):
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"bnbench: error: {path}: "), err
        lines.append(err)
    assert not (path.parent / "cite").exists()  # nothing written
    return lines[0]


@pytest.mark.parametrize("kind", list(schema.SCHEMAS))
def test_the_schemas_are_valid_draft_2020_12(kind):
    Draft202012Validator.check_schema(schema.SCHEMAS[kind])


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_the_committed_reports_are_valid(path):
    loaded = reading.load(path)
    assert loaded["variants"] or loaded["data_parallel_scaling"]  # figures, whichever kind


def with_contract_fields(report):
    """The fields being added beside these checks: run_id, CPU affinity and flags, verified data,
    a download source, a floor that could not be timed or was timed on some epochs, no seed scaling."""
    report["run_id"] = RUN_ID
    report["environment"].update(usable_cores=2, cpu_flags=["avx2", "avx512f", "amx_tile"])
    report["protocol"].update(verified=True, source="download")
    plain, bn = report["summary"]["seed_plain"], report["summary"]["seed_bn"]
    plain["floor"] = {"median_ratio": None, "unavailable": "no floor on this backend"}
    bn["floor"].update(epochs_timed=[1, 2])
    bn.pop("seed_scaling", None)
    return report


@pytest.mark.parametrize("make", [made_report, harness_report, lambda: with_contract_fields(harness_report()),
                                  lambda: as_pytest_benchmark(with_contract_fields(harness_report()))],
                         ids=["bnbench-run", "harness", "contract-fields", "pytest-benchmark"])
def test_what_bnbench_writes_is_valid(make, tmp_path):
    loaded = reading.load(write(tmp_path / "r.json", make()))
    assert set(loaded["variants"]) == {"seed_plain", "seed_bn"}


def test_a_diverged_run_is_written_as_strict_json_and_read_back(tmp_path):
    """A NaN loss (a diverged run) is written as null, which the schema accepts for losses."""
    report = made_report()
    for run in report["runs"]:
        run["test_loss"] = float("nan")
        for epoch in run["epochs"]:
            epoch.update(train_loss=float("nan"), val_loss=float("inf"))
    report["summary"]["seed_bn"]["train_loss"].update(mean=float("nan"), ci95=[float("nan"), float("nan")])
    path = tmp_path / "diverged.json"
    write_json(path, report)
    assert reading.load(path)["variants"]["seed_bn"]["val_accuracy"]["n"] == 3


def edit_summary(variant, key, value):
    def edit(report):
        report["summary"][variant][key] = value(report["summary"][variant][key]) if callable(value) else value
    return edit


def drop(*keys):
    def edit(report):
        target = report
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
    return edit


@pytest.mark.parametrize("edit, message", [
    (edit_summary("seed_bn", "val_accuracy", 0.86),
     "summary.seed_bn.val_accuracy: expected an accuracy over seeds {mean, std, ci95, n} or null, got 0.86"),
    (drop("summary", "seed_bn", "val_accuracy", "ci95"),
     "summary.seed_bn.val_accuracy.ci95: missing; expected a 95% interval [low, high] or null"),
    (drop("summary", "seed_bn", "step_time_s", "iqr"),
     "summary.seed_bn.step_time_s.iqr: missing; expected a spread in seconds from 0 to 1e+09"),
    (lambda r: r["protocol"].update(seeds=3), "protocol.seeds: expected a list of seeds (whole numbers), got 3"),
    (lambda r: r["summary"]["seed_bn"]["step_time_s"].update(median=0),
     "summary.seed_bn.step_time_s.median: expected a time in seconds from 1e-09 to 1e+09, got 0"),
    (lambda r: r["runs"][0]["epochs"].pop(), "runs[0].epochs: expected 2 epoch records (protocol.epochs), got 1"),
    (lambda r: r.update(kind="bnbench.study"),
     "kind \"bnbench.study\" is not one this bnbench reads (bnbench.run, bnbench.sweep)"),
    (lambda r: r.update(kind="bnbench.sweep"),
     "sweep: missing; expected the sweep's grid {variants, learning_rate, ...}"),
    (lambda r: r.update(schema_version=99), "schema_version 99, newer than this bnbench reads (1): upgrade bnbench"),
])
def test_a_report_that_fails_its_schema_is_one_line_naming_the_field(tmp_path, capsys, edit, message):
    report = harness_report()
    edit(report)
    err = refused(write(tmp_path / "bad.json", report), capsys)
    assert message in err


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["benchmarks"][0]["stats"].pop("iqr"), "benchmarks[0].stats.iqr: missing"),
    (lambda p: p["benchmarks"][1]["extra_info"]["summary"]["test_accuracy"].update(ci95="wide"),
     "benchmarks[1].extra_info.summary.test_accuracy.ci95: expected a 95% interval [low, high] or null, got \"wide\""),
    (lambda p: p["machine_info"]["bnbench"].pop("backend"), "machine_info.bnbench.backend: missing"),
    (lambda p: p.update(benchmarks=[]), "holds no bnbench benchmark results"),
])
def test_pytest_benchmark_json_is_checked_where_bnbench_reads_it(tmp_path, capsys, edit, message):
    data = as_pytest_benchmark(harness_report())
    edit(data)
    assert message in refused(write(tmp_path / "bad.json", data), capsys)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_in_a_file_are_refused(tmp_path, capsys, literal):
    text = json.dumps(harness_report()).replace('"ratio": 4.5', f'"ratio": {literal}', 1)
    path = tmp_path / "nan.json"
    path.write_text(text)
    assert "summary.seed_plain.seed_scaling.ratio: " in refused(path, capsys)


@pytest.mark.parametrize("content, message", [
    ('{"schema_version": 1, "kind": "bnbench.run", "runs": [', "not valid JSON"),
    ("[" * 100000, "not valid JSON"),
    ("1" * 5000, "not valid JSON"),
    ('{"hello": "world"}', "not a bnbench or pytest-benchmark report"),
    ('{"benchmarks": [], "machine_info": {}}', "not from bnbench's benchmarks"),
    ('{"schema_version": 1, "kind": "bnbench.run"}', "environment: missing"),
    ('{"kind": "bnbench.run", "bad": "\\ud800"}', "bad: not valid Unicode text"),
])
def test_unreadable_reports_give_one_line_naming_the_file(tmp_path, content, message, capsys):
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert message in refused(path, capsys)


def test_missing_file_and_the_error_type(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "missing.json"), "--out", str(tmp_path / "out")]) == 2
    assert "missing.json: no such file" in capsys.readouterr().err
    with pytest.raises(reading.ReportError) as error:
        reading.load(tmp_path / "missing.json")
    assert isinstance(error.value, BnbenchError)
