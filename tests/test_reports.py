import copy
import json

import pytest

from bnbench import cli, reports, runner, train, variants
from bnbench.io import write_json
from bnbench.synthetic import synthetic_dataset


@pytest.fixture(scope="module")
def report_file(tmp_path_factory):
    dataset = synthetic_dataset(train=300, validation=100, test=100)
    data = train.DeviceData.from_dataset(dataset)
    protocol = train.Protocol(epochs=2, learning_rate=0.05)
    results = {v: runner.run_variant(variants.get(v), protocol, data, [0, 1, 2], target=0.5)
               for v in ("seed_plain", "seed_bn")}
    path = tmp_path_factory.mktemp("reports") / "base.json"
    write_json(path, runner.make_report(dataset, protocol, [0, 1, 2], results))
    return path


def edited(tmp_path, source, name, edit):
    report = json.loads(source.read_text())
    edit(report)
    path = tmp_path / name
    path.write_text(json.dumps(report))
    return path


def test_compare_puts_reports_side_by_side_in_markdown(report_file, capsys):
    assert cli.main(["compare", str(report_file), str(report_file), "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| variant")
    assert out.count("| seed_bn ") == 2 and "1.00x" in out and "±" in out


def test_compare_refuses_reports_with_different_protocols(report_file, tmp_path, capsys):
    other = edited(tmp_path, report_file, "other.json", lambda r: r["protocol"].update(epochs=5))
    assert cli.main(["compare", str(report_file), str(other)]) == 2
    err = capsys.readouterr().err
    assert "not comparable" in err and "epochs 2 vs 5" in err


def slower(report, factor):
    for run in report["runs"]:
        for epoch in run["epochs"]:
            epoch["time_s"] *= factor


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


@pytest.mark.parametrize("content, message", [
    ('{"schema_version": 1, "kind": "bnbench.run", "runs": [', "not valid JSON"),
    ('{"hello": "world"}', "not a bnbench or pytest-benchmark report"),
    ('{"benchmarks": [], "machine_info": {}}', "not from bnbench's benchmarks"),
    ('{"schema_version": 1, "kind": "bnbench.run"}', "incomplete report"),
])
def test_unreadable_reports_give_one_line_naming_the_file(tmp_path, content, message, capsys):
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert cli.main(["compare", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(path) in err and message in err


def test_newer_schema_and_missing_file(report_file, tmp_path, capsys):
    newer = edited(tmp_path, report_file, "newer.json", lambda r: r.update(schema_version=99))
    with pytest.raises(reports.ReportError, match="schema_version 99, newer .*upgrade bnbench"):
        reports.load(newer)
    assert cli.main(["report", str(tmp_path / "missing.json"), "--out", str(tmp_path / "out")]) == 2
    assert "missing.json: no such file" in capsys.readouterr().err


def test_report_writes_markdown_and_plots(report_file, tmp_path):
    assert cli.main(["report", str(report_file), "--out", str(tmp_path / "cite")]) == 0
    text = (tmp_path / "cite" / "README.md").read_text()
    assert "| cpu_model" in text and "seed_bn" in text and "val_accuracy.png" in text
    for png in ("val_accuracy.png", "step_time.png"):
        assert (tmp_path / "cite" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_time_to_target_counts_updates_and_time():
    epochs = [{"epoch": 1, "val_accuracy": 0.5, "time_s": 1.0}, {"epoch": 2, "val_accuracy": 0.9, "time_s": 2.0}]
    assert runner.time_to_target(epochs, 0.8, 10) == {"epoch": 2, "time_s": 3.0, "updates": 20}
    assert runner.time_to_target(epochs, 0.95, 10) is None
