"""``bnbench sweep --slice I/N`` and ``bnbench merge``: the slices of a grid, merged, are the whole
grid's report; reports that are not parts of one experiment are refused in one line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bnbench import cli
from bnbench.data import sources as data_lib
from bnbench.engine import train
from bnbench.errors import BnbenchError
from bnbench.measure import sweep
from bnbench.models import variants
from bnbench.record.io import write_json


def configs_of(programs) -> list[tuple]:
    return [(p.variant.name, c["batch_size"], c["learning_rate"], c["bn_momentum"])
            for p in programs for c in p.configs]


@pytest.mark.parametrize("count", [1, 2, 3, 5, 7, 12])
def test_slices_are_disjoint_cover_the_grid_and_differ_by_at_most_one_configuration(count):
    chosen = [variants.get("seed_bn"), variants.get("seed_plain")]
    g = sweep.Grid(variants=("seed_bn", "seed_plain"), learning_rates=(0.01, 0.03, 0.1), batch_sizes=(32, 64),
                   bn_momenta=(), epochs=1, seeds=(0,))
    whole = configs_of(sweep.programs(g, chosen, 1000))
    parts = [configs_of(sweep.programs(sweep.dataclasses.replace(g, slice=(i, count)), chosen, 1000))
             for i in range(1, count + 1)]
    assert [c for part in parts for c in part] == whole  # in order, each once
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert sweep.dataclasses.replace(g, slice=(2, count)).record()["slice"] == {"index": 2, "count": count}
    assert "slice" not in g.record()  # a whole grid's record is what it was before slices


def test_more_slices_than_configurations_is_one_line():
    g = sweep.Grid(variants=("seed_bn",), learning_rates=(0.01, 0.1), batch_sizes=(32,), bn_momenta=(), epochs=1,
                   seeds=(0, 1), slice=(3, 3))
    with pytest.raises(BnbenchError, match=r"--slice 3/3: the grid has only 2 configurations to share out; "
                                           r"choose N from 1 to 2"):
        sweep.programs(g, [variants.get("seed_bn")], 1000)


@pytest.fixture(scope="module")
def sliced_sweeps(tmp_path_factory):
    """One grid (3 learning rates x 2 seeds, 1 epoch, synthetic data): whole, and as slices 1/2 and 2/2."""
    from data_helpers import make_idx_folder

    folder = tmp_path_factory.mktemp("merge")
    dataset = data_lib.load("fashion_mnist", str(make_idx_folder(folder / "idx", train=5400)))
    data = train.DeviceData.from_dataset(dataset)
    g = sweep.Grid(variants=("seed_bn",), learning_rates=(0.01, 0.03, 0.1), batch_sizes=(32,), bn_momenta=(),
                   epochs=1, seeds=(0, 1), target=0.3)
    paths = {}
    for name, part in (("whole", None), ("1", (1, 2)), ("2", (2, 2))):
        grid = sweep.dataclasses.replace(g, slice=part)
        report = sweep.run_sweep(grid, [variants.get("seed_bn")], dataset, data, lambda r: None)
        paths[name] = write_json(folder / f"{name}.json", report) or folder / f"{name}.json"
    return paths


def load(path) -> dict:
    return json.loads(open(path).read())


def without_times(entry):
    """A summary or run as results: its times and its layout (how many runs trained beside it) left out."""
    if isinstance(entry, dict):
        return {k: without_times(v) for k, v in entry.items()
                if "time" not in k and k not in ("runs_together", "seed_devices")}
    if isinstance(entry, list):
        return [without_times(v) for v in entry]
    return entry


def assert_close(a, b, path=""):
    """Equal, numbers within float32's reordering (a loss summed in another order), the rest exactly."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and "accuracy" not in path:
        assert np.isclose(a, b, rtol=1e-5, atol=1e-6), (path, a, b)
    else:
        assert a == b, (path, a, b)


@pytest.mark.slow  # three sweeps trained: about 15 s on 2 shared cores
def test_slices_merged_are_the_whole_grids_report(sliced_sweeps, tmp_path, capsys):
    paths = sliced_sweeps
    one, two = load(paths["1"]), load(paths["2"])
    assert one["sweep"]["slice"] == {"index": 1, "count": 2} and len(one["runs"]) + len(two["runs"]) == 6
    assert cli.main(["merge", str(paths["2"]), str(paths["1"]), "--out", str(tmp_path / "m.json")]) == 0
    merged, whole = load(tmp_path / "m.json"), load(paths["whole"])
    assert merged["sweep"] == whole["sweep"] and merged["protocol"] == whole["protocol"]
    assert [(r["config"], r["seed"]) for r in merged["runs"]] == [(r["config"], r["seed"]) for r in whole["runs"]]
    assert_close(without_times(merged["runs"]), without_times(whole["runs"]))
    assert list(merged["summary"]) == list(whole["summary"])
    assert_close(without_times(merged["summary"]), without_times(whole["summary"]))
    assert [m["runs"] for m in merged["merged_from"]] == [len(two["runs"]), len(one["runs"])]
    assert "notices" not in merged
    # The merged report is a sweep report like any, comparable with the whole grid's.
    assert cli.main(["compare", str(paths["whole"]), str(tmp_path / "m.json")]) == 0


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bnbench: error: merge: "), err
    return err[0]


@pytest.mark.slow  # shares the three sweeps above
def test_reports_that_are_not_parts_of_one_experiment_are_refused_in_one_line(sliced_sweeps, tmp_path, capsys):
    paths = sliced_sweeps
    out = str(tmp_path / "m.json")
    assert cli.main(["merge", str(paths["1"]), str(paths["whole"]), "--out", out]) == 2
    assert "both hold the run of seed_bn at base_learning_rate 0.01" in one_line_error(capsys)
    other = load(paths["2"])
    for change, message in [
        (lambda r: r["protocol"].update(train_examples=10), "have other protocols (train_examples differ)"),
        (lambda r: r["sweep"].update(epochs=2), "are sweeps of other grids (epochs differ)"),
        (lambda r: r["environment"].update(git_commit="0" * 40), "were made by other code (git_commit"),
    ]:
        changed = json.loads(json.dumps(other))
        change(changed)
        write_json(tmp_path / "changed.json", changed)
        rc = cli.main(["merge", str(paths["1"]), str(tmp_path / "changed.json"), "--out", out])
        assert rc == 2 and message in capsys.readouterr().err, message
    assert not os.path.exists(out)
    # Another machine is a notice, recorded in the report: accuracies merge, times do not compare.
    elsewhere = json.loads(json.dumps(other))
    elsewhere["environment"]["cpu_model"] = "another CPU"
    write_json(tmp_path / "elsewhere.json", elsewhere)
    assert cli.main(["merge", str(paths["1"]), str(tmp_path / "elsewhere.json"), "--out", out]) == 0
    notices = load(out)["notices"]
    assert len(notices) == 1 and "ran in another environment" in notices[0] and "cpu_model" in notices[0]
    assert "bnbench: notice:" in capsys.readouterr().err


@pytest.mark.slow  # shares the three sweeps above, and resumes one configuration
def test_a_hole_in_the_grid_is_a_notice_and_resume_trains_only_the_hole(sliced_sweeps, tmp_path, capsys):
    paths = sliced_sweeps
    last = load(paths["2"])  # lr 0.03 and 0.1; made to look like slice 3/3 of another job array
    last["runs"] = [r for r in last["runs"] if r["config"]["base_learning_rate"] != 0.03]
    last["summary"] = {k: v for k, v in last["summary"].items() if "lr=0.03" not in k}
    last["sweep"]["slice"] = {"index": 3, "count": 3}
    write_json(tmp_path / "last.json", last)
    out = tmp_path / "holed.json"
    assert cli.main(["merge", str(paths["1"]), str(tmp_path / "last.json"), "--out", str(out)]) == 0
    notices = load(out)["notices"]
    assert len(notices) == 1 and "1 configuration of the grid has no runs (seed_bn lr=0.03)" in notices[0]
    # --resume trains that configuration alone, and the report ends in the grid's order.
    dataset = data_lib.load("fashion_mnist", str(paths["whole"].parent / "idx"))
    grid = sweep.Grid(variants=("seed_bn",), learning_rates=(0.01, 0.03, 0.1), batch_sizes=(32,), bn_momenta=(),
                      epochs=1, seeds=(0, 1), target=0.3)
    trained = []
    report = sweep.run_sweep(grid, [variants.get("seed_bn")], dataset, train.DeviceData.from_dataset(dataset),
                             lambda r: None, previous=load(out),
                             on_program=lambda program, i, total: trained.append(program.configs))
    assert [[c["base_learning_rate"] for c in configs] for configs in trained] == [[0.03]]
    whole = load(paths["whole"])
    assert list(report["summary"]) == list(whole["summary"])
    assert [(r["config"], r["seed"]) for r in report["runs"]] == [(r["config"], r["seed"]) for r in whole["runs"]]
