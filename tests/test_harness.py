"""The benchmark harness (benchmarks/), run as a user runs it: `pytest benchmarks/ ...` in a subprocess."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # pytest benchmarks/ in subprocesses

ROOT = Path(__file__).resolve().parents[1]


def run_harness(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pytest", "benchmarks/", "-p", "no:cacheprovider", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_an_unwritable_report_path_stops_the_session_before_any_benchmark(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_harness("--quick", "--bnbench-report", blocker / "r.json")
    assert result.returncode != 0
    assert f"--bnbench-report: cannot write to {blocker / 'r.json'}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "passed" not in result.stdout  # nothing ran


def test_benchmark_disable_runs_each_benchmark_once_as_a_test(tmp_path):
    """pytest-benchmark's usual CI option: the benchmarks run as plain tests, nothing is timed."""
    report = tmp_path / "r.json"
    result = run_harness("--quick", "--benchmark-disable", "--variants", "seed_plain", "-k",
                         "test_step_time or test_accuracy", "--bnbench-report", report)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(report.read_text())["summary"]["seed_plain"]
    assert "step_time_s" not in summary  # no figure pretends to be a timing
    assert summary["train_accuracy"]["mean"] > 0


def test_harness_files_of_one_session_share_a_run_id(tmp_path):
    report, pb = tmp_path / "r.json", tmp_path / "pb.json"
    result = run_harness("--quick", "--variants", "seed_plain", "-k", "test_step_time and not scaling or test_accuracy",
                         "--bnbench-report", report, "--benchmark-json", pb)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_id = json.loads(report.read_text())["run_id"]
    assert len(run_id) == 32 and json.loads(pb.read_text())["machine_info"]["bnbench_run_id"] == run_id


def test_data_parallel_accuracy_and_scaling_benchmarks_reach_both_files_and_the_report(tmp_path):
    report, pb, page = tmp_path / "r.json", tmp_path / "pb.json", tmp_path / "page"
    result = run_harness("--quick", "--variants", "seed_bn", "--data-parallel", 2, "--scaling-devices", "1,2",
                         "-k", "test_accuracy or test_data_parallel_scaling and seed_bn-sync",
                         "--bnbench-report", report, "--benchmark-json", pb)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    written = json.loads(report.read_text())
    assert (written["protocol"]["data_parallel"], written["summary"]["seed_bn"]["data_devices"]) == (2, 2)
    points = {p["devices"]: p for p in written["data_parallel_scaling"]}
    assert sorted(points) == [1, 2] and all(p["batch_stats"] == "sync" and p["examples_per_s"] > 0
                                            for p in points.values())
    tagged = [b["extra_info"] for b in json.loads(pb.read_text())["benchmarks"]
              if b["extra_info"].get("bnbench") == "data_parallel_scaling"]
    assert sorted(p["devices"] for p in tagged) == [1, 2]
    done = subprocess.run([sys.executable, "-m", "bnbench.cli", "report", pb, "--out", page], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    text = (page / "README.md").read_text()
    assert "## Data-parallel scaling [1]" in text and "seed_bn, sync statistics | 2" in text.replace("  ", " ")
    assert (page / "data_parallel_scaling_1.png").stat().st_size > 10_000


def test_a_session_without_the_accuracy_benchmark_says_why_it_wrote_no_report(tmp_path):
    report = tmp_path / "r.json"
    result = run_harness("--quick", "--variants", "seed_plain", "-k", "test_step_time", "--bnbench-report", report)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "bnbench: no bnbench report written: the accuracy benchmark did not run" in result.stdout
    assert not report.exists()


def test_an_existing_report_stops_the_session_unless_forced(tmp_path):
    report = tmp_path / "r.json"
    report.write_text("{}")
    result = run_harness("--quick", "--variants", "seed_plain", "-k", "test_accuracy", "--bnbench-report", report)
    assert result.returncode != 0 and "exists: pass --bnbench-force to replace it" in result.stderr
    assert report.read_text() == "{}" and "passed" not in result.stdout
    result = run_harness("--quick", "--variants", "seed_plain", "-k", "test_accuracy", "--bnbench-report", report,
                         "--bnbench-force")
    assert result.returncode == 0, result.stdout[-2000:]
    assert "seed_plain" in json.loads(report.read_text())["summary"]


def test_the_benchmark_json_is_kept_unless_forced(tmp_path):
    existing = tmp_path / "pb.json"
    existing.write_text("{}")
    result = run_harness("--quick", "-k", "test_step_time", "--variants", "seed_plain", "--benchmark-json", existing,
                         "--bnbench-report", tmp_path / "r.json")
    assert result.returncode == 4 and "--benchmark-json:" in result.stderr and "exists" in result.stderr
    assert existing.read_text() == "{}"
    result = run_harness("--quick", "--fixtures", "--benchmark-json", existing)  # shows, writes nothing: no claim
    assert result.returncode == 0, result.stderr[-2000:]


def test_quick_refuses_options_it_would_ignore_and_the_report_records_the_command(tmp_path):
    refused = run_harness("--quick", "--dataset", "mnist", "--epochs", "5", "--bnbench-report", tmp_path / "no.json")
    assert refused.returncode == 4 and "passed" not in refused.stdout
    assert "--quick trains synthetic data for 1 epoch, so --dataset, --epochs would be ignored" in refused.stderr
    assert not (tmp_path / "no.json").exists()
    report = tmp_path / "r.json"
    result = run_harness("--quick", "--seeds", "2", "-k", "accuracy", "--bnbench-report", report)
    assert result.returncode == 0, result.stdout + result.stderr
    command = json.loads(report.read_text())["command"]
    assert command.startswith("pytest benchmarks/ -p no:cacheprovider --quick --seeds 2")
