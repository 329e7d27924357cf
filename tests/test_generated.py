"""Documents made from the committed reports stay what their reports say: `python -m
bnbench.report.generated --check` (run by CI) fails when one was edited by hand or went stale."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bnbench.errors import BnbenchError
from bnbench.report import generated

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def checkout(tmp_path, monkeypatch) -> Path:
    """A copy of the repository's documents and reports, as the current folder."""
    for name in ("README.md",):
        shutil.copy(ROOT / name, tmp_path / name)
    for folder in ("docs", "results"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_the_committed_documents_are_up_to_date(checkout, capsys):
    assert generated.main(["--check"]) == 0, capsys.readouterr().out


@pytest.mark.slow  # every document regenerated, twice
def test_a_table_edited_by_hand_is_caught_and_regenerated(checkout, capsys, monkeypatch):
    monkeypatch.setattr(generated, "results_page", lambda root, out: [])  # the page: the test above
    monkeypatch.setattr(generated, "GENERATED_KINDS", ("docs/schema/*.json",))
    readme = checkout / "README.md"
    text = readme.read_text()
    start = text.index("<!-- generated: summary")
    block_end = text.index("<!-- end generated -->", start)
    row = text.index("| seed_bn", start)
    assert row < block_end
    readme.write_text(text[:row] + text[row:].replace("| seed_bn", "| seed_bn_edited", 1))
    assert generated.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert out.strip().splitlines() == ["out of date: README.md"]
    assert generated.main([]) == 0  # regenerated: the table is the report's again
    assert readme.read_text() == text
    assert generated.main(["--check"]) == 0


def test_a_block_fills_from_its_report_and_an_unknown_kind_is_one_line(checkout, capsys):
    report = "results/cpu-notebook-5seeds.json"
    filled = generated.fill_blocks(f"before\n<!-- generated: summary {report} -->\nstale\n<!-- end generated -->\n",
                                   checkout)
    assert "stale" not in filled and "| seed_plain" in filled and f"From `{report}`: 5 seeds" in filled
    (checkout / "docs" / "index.md").write_text(f"<!-- generated: plot {report} -->\n<!-- end generated -->\n")
    assert generated.main(["--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"bnbench: error: generated block 'plot' (for {report}): use 'summary REPORT', "
                   "'differences REPORT BASELINE' or 'sweep REPORT AXIS'"]


def test_a_sweep_block_tables_the_accuracies_along_an_axis_and_names_the_axes_there_are(checkout):
    report = "results/cpu-batch-order.json"
    filled = generated.fill_blocks(f"<!-- generated: sweep {report} batch_order -->\n<!-- end generated -->\n",
                                   checkout)
    assert "| val accuracy \\ classes per training batch" in filled and "| test accuracy \\" in filled
    assert "| seed_bn " in filled and f"From `{report}`, 5 seeds" in filled
    with pytest.raises(BnbenchError, match="ghost_batch is not an axis of that sweep; use one of batch_order"):
        generated.fill_blocks(f"<!-- generated: sweep {report} ghost_batch -->\n<!-- end generated -->\n", checkout)


def test_outside_a_checkout_it_says_where_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert generated.main(["--check"]) == 2
    assert "run this from the root of a bnbench checkout" in capsys.readouterr().err


def test_a_file_no_longer_generated_is_caught(checkout, capsys, monkeypatch):
    monkeypatch.setattr(generated, "results_page", lambda root, out: [])
    monkeypatch.setattr(generated, "GENERATED_KINDS", ("docs/schema/*.json",))
    (checkout / "docs" / "schema" / "old.json").write_text("{}")
    assert generated.main(["--check"]) == 1
    assert capsys.readouterr().out.strip().splitlines() == ["not generated any more: docs/schema/old.json"]
