"""Sweeps: configurations as data in one program, divergence, evaluation inside the epoch, resume,
budgets, the study report, and bad grids."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from bnbench.data import sources as data_lib
from bnbench.engine import train
from bnbench.errors import BnbenchError
from bnbench.measure import experiment, sweep
from bnbench.models import variants
from bnbench.report import reading


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "bnbench.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from data_helpers import make_idx_folder

    folder = make_idx_folder(tmp_path_factory.mktemp("idx-sweep"), train=5600)  # 600 train: 19 updates of 32
    dataset = data_lib.load("fashion_mnist", str(folder))
    return folder, dataset, train.DeviceData.from_dataset(dataset)


def grid(**changes):
    values = dict(variants=("seed_bn",), learning_rates=(0.01, 0.05), batch_sizes=(32,), bn_momenta=(),
                  epochs=2, seeds=(0, 1), target=0.5)
    return sweep.Grid(**{**values, **changes})


def sweep_report(small, g, previous=None):
    _, dataset, data = small
    written = []
    report = sweep.run_sweep(g, [variants.get(v) for v in g.variants], dataset, data, written.append,
                             previous=previous)
    return report, written


def histories(report, variant, **config):
    """Per seed, every epoch's four metrics and the test accuracy of the runs matching ``config``."""
    runs = [r for r in report["runs"] if r["variant"] == variant
            and all(r["config"][k] == v for k, v in config.items())]
    return [([[e[k] for k in experiment.METRICS] for e in r["epochs"]], r["test_accuracy"]) for r in runs]


def same(a, b):
    """The same training, bit for bit: every accuracy equal. The losses are means over a split, whose
    reduction XLA may order differently in a program of more runs per device: equal to 1e-6."""
    assert len(a) == len(b)
    for (epochs_a, test_a), (epochs_b, test_b) in zip(a, b):
        assert test_a == test_b
        np.testing.assert_array_equal(np.asarray(epochs_a)[:, [1, 3]], np.asarray(epochs_b)[:, [1, 3]])
        np.testing.assert_allclose(np.asarray(epochs_a)[:, [0, 2]], np.asarray(epochs_b)[:, [0, 2]], rtol=1e-6)
    return True


def as_run(small, variant, learning_rate=0.01, batch_size=32, epochs=2):
    _, _, data = small
    protocol = train.Protocol(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate)
    result = experiment.run_variant(variants.get(variant), protocol, data, [0, 1])
    return [([[e[k] for k in experiment.METRICS] for e in r["epochs"]], r["test_accuracy"]) for r in result["runs"]]


@pytest.mark.slow
def test_learning_rates_trained_together_train_as_runs_of_each_rate_bit_for_bit(small):
    report, _ = sweep_report(small, grid())
    for lr in (0.01, 0.05):
        assert same(histories(report, "seed_bn", learning_rate=lr), as_run(small, "seed_bn", learning_rate=lr))
    assert report["summary"]["seed_bn lr=0.01"]["runs_together"] == 4  # 2 rates x 2 seeds in one program


@pytest.mark.slow
def test_momenta_trained_together_train_as_the_momentum_as_a_field_bit_for_bit(small):
    report, _ = sweep_report(small, grid(learning_rates=(0.01,), bn_momenta=(0.9, 0.99)))
    assert same(histories(report, "seed_bn", bn_momentum=0.9), as_run(small, "seed_bn:bn_momentum=0.9"))
    assert same(histories(report, "seed_bn", bn_momentum=0.99), as_run(small, "seed_bn"))
    assert histories(report, "seed_bn", bn_momentum=0.9) != histories(report, "seed_bn", bn_momentum=0.99)


@pytest.mark.slow
def test_a_diverged_run_is_recorded_and_the_others_of_its_program_go_on_unharmed(small, tmp_path):
    report, _ = sweep_report(small, grid(variants=("seed_plain",), learning_rates=(0.01, 1e4)))
    blown = [r for r in report["runs"] if r["config"]["learning_rate"] == 1e4]
    for run in blown:
        assert run["diverged"]["epoch"] == 1 and 1 <= run["diverged"]["update"] <= 19
        assert "test_accuracy" not in run
        assert all(set(e) <= {"epoch", "time_s"} for e in run["epochs"])  # later metrics absent, not NaN
    entry = report["summary"]["seed_plain lr=10000"]
    assert entry["diverged_seeds"] == 2 and entry["val_accuracy"] is None
    assert same(histories(report, "seed_plain", learning_rate=0.01), as_run(small, "seed_plain"))
    from bnbench.record.io import write_json

    path = tmp_path / "sweep.json"
    write_json(path, report)
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in a report"))
    loaded = reading.load(path)  # valid against the sweep schema
    assert loaded["variants"]["seed_plain lr=10000"]["diverged_seeds"] == 2


@pytest.mark.slow
def test_evaluation_inside_the_epoch_changes_no_training_and_refines_time_to_target(small):
    plain, _ = sweep_report(small, grid(learning_rates=(0.05,)))
    fine, _ = sweep_report(small, grid(learning_rates=(0.05,), eval_every=5))
    assert histories(fine, "seed_bn") == histories(plain, "seed_bn")
    run = fine["runs"][0]
    assert [e["update"] for e in run["evals"]] == [5, 10, 15, 24, 29, 34]  # 3 per 19-update epoch
    assert all(0 <= e["val_accuracy"] <= 1 for e in run["evals"])
    reached = fine["summary"]["seed_bn lr=0.05"]["time_to_target"]["per_seed"][0]
    assert reached is not None and reached["updates"] in (5, 10, 15, 19, 24, 29, 34, 38)


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_with_only_what_it_lacks(small):
    g = grid(variants=("seed_plain", "seed_bn"), learning_rates=(0.01,))
    full, written = sweep_report(small, g)
    assert len(written) == 2  # the report is written after each program
    partial = written[0]  # what an interrupted sweep leaves: the first program's runs
    assert set(partial["summary"]) == {"seed_plain lr=0.01"}
    resumed, rewritten = sweep_report(small, g, previous=partial)
    assert len(rewritten) == 1 and resumed["run_id"] == partial["run_id"]
    for variant in g.variants:
        assert histories(resumed, variant) == histories(full, variant)
    _, dataset, _ = small
    with pytest.raises(BnbenchError, match=r"made with other arguments \(learning_rate differ\)"):
        sweep.check_resumable(partial, dataset, grid(variants=g.variants, learning_rates=(0.02,)))


def test_batch_size_budgets_and_linear_scaling():
    g = grid(batch_sizes=(16, 32, 128), budget="updates", lr_scaling="linear", epochs=10)
    assert [g.epochs_for(b, 55000) for b in (16, 32, 128)] == [5, 10, 40]
    assert [g.learning_rate_for(0.01, b) for b in (16, 32, 128)] == [0.005, 0.01, 0.04]
    fixed = grid(batch_sizes=(16, 128))
    assert [fixed.epochs_for(b, 55000) for b in (16, 128)] == [2, 2] and fixed.learning_rate_for(0.01, 128) == 0.01
    programs = sweep.programs(g, [variants.get("seed_bn")], 55000)
    assert [(p.protocol.batch_size, p.protocol.epochs, [c["learning_rate"] for c in p.configs])
            for p in programs] == [(16, 5, [0.005, 0.025]), (32, 10, [0.01, 0.05]), (128, 40, [0.04, 0.2])]


def test_a_last_update_that_blows_up_the_weights_is_a_divergence_at_that_update():
    """The batch loss was finite, the update made the weights NaN: only validation shows it."""
    nan, history = float("nan"), []
    for val_loss in (0.5, nan):
        history.append({"first_nonfinite": np.array([-1]), "train_loss": np.array([0.4]),
                        "train_accuracy": np.array([0.9]), "train_eval_loss": np.array([0.4]),
                        "train_eval_accuracy": np.array([0.9]), "val_loss": np.array([val_loss]),
                        "val_accuracy": np.array([0.1 if val_loss != val_loss else 0.9])})
    result = {"history": history, "epoch_times": [1.0, 1.0], "compile_time_s": 1.0,
              "test": {"loss": np.array([nan]), "accuracy": np.array([0.1])}}
    run = experiment.run_record("seed_plain", 0, 0, result, {}, 19, None, None)
    assert run["diverged"] == {"epoch": 2, "update": 38} and "test_accuracy" not in run
    assert set(run["epochs"][1]) == {"epoch", "time_s"} and run["epochs"][0]["val_loss"] == 0.5
    history[1]["val_loss"] = np.array([0.5])  # only the test loss, after the very last update
    run = experiment.run_record("seed_plain", 0, 0, result, {}, 19, None, None)
    assert run["diverged"] == {"epoch": 2, "update": 38}


@pytest.mark.slow
def test_a_variants_own_momentum_is_what_it_trains_with_unless_swept(small):
    report, _ = sweep_report(small, grid(variants=("seed_bn:bn_momentum=0.9",), learning_rates=(0.01,), bn_momenta=()))
    assert report["runs"][0]["config"]["bn_momentum"] == 0.9
    assert same(histories(report, "seed_bn:bn_momentum=0.9"), as_run(small, "seed_bn:bn_momentum=0.9"))
    swept = sweep.programs(grid(variants=("seed_bn:bn_momentum=0.9",), bn_momenta=(0.5, 0.99)),
                           [variants.get("seed_bn:bn_momentum=0.9")], 1000)
    assert [c["bn_momentum"] for c in swept[0].configs] == [0.5, 0.99, 0.5, 0.99]


def test_labels_tell_every_configuration_apart():
    g = grid(learning_rates=(0.01, 0.01000001))
    configs = sweep.programs(g, [variants.get("seed_bn")], 1000)[0].configs
    assert [sweep.label("seed_bn", c, g) for c in configs] == ["seed_bn lr=0.01", "seed_bn lr=0.01000001"]


@pytest.mark.parametrize("changes, message", [
    (dict(variants=("seed_bn", "seed_bn")), "--variant seed_bn is given twice"),
    (dict(eval_every=19), "--eval-every 19: an epoch has only 19 updates at batch 32"),
    (dict(learning_rates=(1e-50,)), "--learning-rate: 1e-50 is not a float32 number"),
])
def test_grids_that_cannot_mean_what_they_say_are_refused(changes, message):
    with pytest.raises(BnbenchError, match=re.escape(message)):
        grid(**changes).check(600)


@pytest.mark.slow
def test_sweeps_compare_only_with_sweeps_of_the_same_grid(small, tmp_path, capsys):
    from bnbench import cli
    from bnbench.record.io import write_json

    report, _ = sweep_report(small, grid(learning_rates=(0.01,), epochs=1))
    write_json(tmp_path / "a.json", report)
    write_json(tmp_path / "b.json", {**report, "sweep": {**report["sweep"], "epochs": 2}})
    assert cli.main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 2
    assert "sweep epochs 1 vs 2" in capsys.readouterr().err
    _, dataset, data = small
    run = experiment.make_report(dataset, train.Protocol(epochs=1), [0, 1],
                             {"seed_bn": experiment.run_variant(variants.get("seed_bn"), train.Protocol(epochs=1),
                                                            data, [0, 1])})
    write_json(tmp_path / "run.json", run)
    assert cli.main(["compare", str(tmp_path / "run.json"), str(tmp_path / "a.json")]) == 2
    assert "a sweep against a run's report" in capsys.readouterr().err
    with pytest.raises(BnbenchError, match=r"target differ"):
        sweep.check_resumable(report, dataset, grid(learning_rates=(0.01,), epochs=1, target=0.7))


def test_momentum_sweeps_need_moving_statistics():
    with pytest.raises(BnbenchError, match="layer_norm has no moving statistics"):
        sweep.programs(grid(bn_momenta=(0.9, 0.99)), [variants.get("layer_norm")], 1000)


@pytest.mark.slow  # a CLI start each, ten of them
@pytest.mark.parametrize("args, message", [
    (["--learning-rate", "1e-3,,x"], "--learning-rate '1e-3,,x': an empty item"),
    (["--learning-rate", "1e-3,x"], "--learning-rate '1e-3,x': 'x' is not a number"),
    (["--learning-rate", "-0.1"], "--learning-rate: -0.1 is not a learning rate"),
    (["--learning-rate", "-1e-3,1e-2"], "--learning-rate: -0.001 is not a learning rate"),
    (["--learning-rate", "0.1,0.1"], "a value is repeated"),
    (["--batch-size", "0"], "--batch-size: 0 is not a batch size; choose sizes of 1 or more"),
    (["--batch-size", "32,301"], "--batch-size: 301 is not a batch size for 300 training examples"),
    (["--batch-size", "3.5"], "'3.5' is not a whole number"),
    (["--bn-momentum", "1"], "--bn-momentum: 1 is not a momentum"),
    (["--variant", "plain_relu", "--bn-momentum", "0.9,0.99"], "plain_relu has no moving statistics"),
])
def test_bad_grids_are_one_line_before_any_training(idx_dir, tmp_path, args, message):
    result = run_cli("sweep", "--data-dir", idx_dir, "--out", tmp_path / "s.json", "--epochs", "1", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2  # the data line, then the one error
    assert not (tmp_path / "s.json").exists()


@pytest.mark.slow
def test_sweep_from_the_command_line_then_resume_and_report(idx_dir, tmp_path):
    out = tmp_path / "sweep.json"
    args = ["sweep", "--variant", "seed_plain", "--variant", "seed_bn", "--learning-rate", "0.01,1e4",
            "--epochs", "1", "--seeds", "2", "--data-dir", idx_dir, "--out", out, "--quiet"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert re.search(r"seed_bn lr=10000 +2 \(2 diverged\) +diverged", result.stdout)
    again = run_cli(*args)
    assert again.returncode == 2 and "exists: pass --force (or --resume to finish that sweep)" in again.stderr
    before = out.read_text()
    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0 and json.loads(out.read_text())["runs"] == json.loads(before)["runs"]
    other = run_cli(*[a if a != "0.01,1e4" else "0.02,1e4" for a in args], "--resume")
    assert other.returncode == 2 and "made with other arguments (learning_rate differ)" in other.stderr
    folder = tmp_path / "study"
    report = run_cli("report", out, "--out", folder, "--baseline", "seed_plain")
    assert report.returncode == 0, report.stderr
    page = (folder / "README.md").read_text()
    assert "## Sweep [1]" in page and "| seed_bn" in page and "diverged" in page
    assert "| seed_bn lr=0.01 | seed_plain |" in page  # the difference at the same configuration
    for name in ("sweep1_learning_rate.png", "sweep1_updates_to_target.png", "sweep1_curves.png"):
        assert (folder / name).stat().st_size > 10_000
    compared = run_cli("compare", out)
    assert compared.returncode == 0 and "seed_bn lr=10000 (2/2 diverged)" in compared.stdout
