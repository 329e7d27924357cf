"""`bnbench report --format latex,csv`: tables for papers (bnbench.report.tables), on committed reports."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bnbench import cli
from bnbench.record import stats
from bnbench.record.io import MANIFEST
from bnbench.report import compare, reading, tables

RESULTS = Path(__file__).resolve().parents[1] / "results"
VARIANTS = RESULTS / "cpu-mlp-variants-5seeds.json"
SWEEP = RESULTS / "cpu-sweep-lr.json"
TABLE_FILES = ("tables.tex", "runs.csv", "summary.csv")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """`bnbench report results/cpu-mlp-variants-5seeds.json --baseline seed_bn --format latex,csv`,
    once: the folder and the paths it printed."""
    out = tmp_path_factory.mktemp("tables") / "page"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert cli.main(["report", str(VARIANTS), "--baseline", "seed_bn", "--out", str(out),
                         "--format", "latex,csv"]) == 0
    return out, buffer.getvalue().split()


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _tex_lines(text: str) -> list[str]:
    """The lines LaTeX typesets (not the comments)."""
    return [line for line in text.splitlines() if not line.startswith("%")]


def test_the_tables_are_written_listed_and_tracked(page):
    out, printed = page
    for name in TABLE_FILES:
        assert (out / name).is_file()
        assert str(out / name) in printed
    assert printed[0].endswith("README.md")
    assert set(TABLE_FILES) <= set((out / MANIFEST).read_text().split())


def test_runs_csv_has_one_row_per_run_of_the_report(page):
    out, _ = page
    raw = json.loads(VARIANTS.read_text())
    rows = _rows(out / "runs.csv")
    assert len(rows) == len(raw["runs"])
    key = tables.citation_key(reading.load_all([str(VARIANTS)])[0])
    for row, run in zip(rows, raw["runs"]):
        assert (row["variant"], int(row["seed"])) == (run["variant"], run["seed"])
        assert float(row["val_accuracy"]) == run["epochs"][-1]["val_accuracy"]
        assert float(row["test_accuracy"]) == run["test_accuracy"]
        assert row["diverged"] == "false" and int(row["epochs_recorded"]) == len(run["epochs"])
        assert row["citation_key"] == key and row["command"] == raw["command"]
        assert row["git_commit"] == raw["environment"]["git_commit"]


def test_summary_csv_holds_the_reports_summary_and_the_paired_differences(page):
    out, _ = page
    raw = json.loads(VARIANTS.read_text())
    rows = {row["entry"]: row for row in _rows(out / "summary.csv")}
    assert list(rows) == list(raw["summary"])
    for name, summary in raw["summary"].items():
        for metric in ("train_accuracy", "val_accuracy", "test_accuracy"):
            s = summary[metric]
            assert float(rows[name][f"{metric}_mean"]) == s["mean"]
            assert float(rows[name][f"{metric}_std"]) == s["std"]
            assert [float(rows[name][f"{metric}_ci_low"]), float(rows[name][f"{metric}_ci_high"])] == s["ci95"]
            assert int(rows[name][f"{metric}_n"]) == s["n"]
    assert rows["seed_bn"]["val_accuracy_minus_seed_bn_verdict"] == "baseline"
    loaded = reading.load_all([str(VARIANTS)])[0]
    names = [n for n in loaded["variants"] if n != "seed_bn"]
    for metric in ("val_accuracy", "test_accuracy"):
        family = stats.compare_family([compare.comparison(loaded["variants"][n], loaded["variants"]["seed_bn"],
                                                          metric, paired=True) for n in names])
        for name, d in zip(names, family):
            prefix = f"{metric}_minus_seed_bn_"
            assert float(rows[name][prefix + "difference"]) == d["difference"]
            assert float(rows[name][prefix + "p_holm"]) == d["p_holm"]
            assert rows[name][prefix + "verdict"] == d["verdict"]
            assert float(rows[name][prefix + "margin"]) == d["margin"]
            assert float(rows[name][prefix + "detectable"]) == d["detectable"]
            assert int(rows[name][prefix + "seeds_for_margin"]) == d["seeds_for_margin"]
            assert float(rows[name][prefix + "p_equivalence_holm"]) == d["p_equivalence_holm"]
            assert (rows[name][prefix + "test"], int(rows[name][prefix + "n"])) == ("paired", 5)


def test_latex_has_the_differences_compare_prints(page):
    out, _ = page
    tex = (out / "tables.tex").read_text()
    text, _ = compare.compare([str(VARIANTS)], baselines=["seed_bn"])
    found = re.findall(r"^(\S+)\s+seed_bn\s+\[1\]\s+(val|test)\s+paired, n=5\s+([+-]\d\.\d{4}) "
                       r"\[([+-]\d\.\d{4}), ([+-]\d\.\d{4})\]\s+\S+\s+\S+\s+(\w+)", text, re.M)
    assert len(found) == 18  # 9 variants x validation and test
    lines = {line.split(" & ")[0]: line for line in _tex_lines(tex) if " & " in line}
    for variant, metric, diff, low, high, verdict in found:
        row = lines[tables.escape(variant)]
        cells = row.split(" & ")
        at = 3 if metric == "val" else 5
        assert cells[at] == (f"\\begin{{tabular}}[t]{{@{{}}c@{{}}}}${diff}$\\\\${'['}{low}, {high}]$"
                             "\\end{tabular}")
        assert cells[at + 1].removesuffix(" \\\\") == verdict
    assert lines["seed\\_bn"].split(" & ")[3] == "baseline"


def test_latex_names_command_commit_machine_seeds_and_key(page):
    out, _ = page
    tex = (out / "tables.tex").read_text()
    raw = json.loads(VARIANTS.read_text())
    loaded = reading.load_all([str(VARIANTS)])[0]
    key = tables.citation_key(loaded)
    assert re.fullmatch(r"bnbench-[0-9a-f]{8}", key)
    caption = next(line for line in tex.splitlines() if line.startswith("\\caption{"))
    assert f"Citation key: \\texttt{{{key}}}" in caption and "5 seeds (0-4)" in caption
    assert tables.escape(loaded["label"]) in caption and raw["environment"]["git_commit"][:12] in caption
    assert f"\\label{{tab:{key}}}" in tex
    assert f"Command: \\texttt{{{tables.escape(raw['command'])}}}." in tex
    assert f"Commit: \\texttt{{{raw['environment']['git_commit']}}}." in tex


def test_latex_is_well_formed(page):
    out, _ = page
    tex = (out / "tables.tex").read_text()
    body = "\n".join(_tex_lines(tex))
    for rule in ("\\toprule", "\\midrule", "\\bottomrule", "\\cmidrule(lr){4-7}"):
        assert rule in body
    unescaped = re.sub(r"\\label\{[^}]*\}", "", body).replace("\\_", "")
    assert "_" not in unescaped  # every underscore of a variant's name, a path or a command escaped
    depth = 0
    for c in re.sub(r"\\[{}]", "", body):
        depth += {"{": 1, "}": -1}.get(c, 0)
        assert depth >= 0
    assert depth == 0
    assert body.count("\\begin{table}") == body.count("\\end{table}") == 1
    assert body.count("\\begin{tabular}") == body.count("\\end{tabular}")
    for line in _tex_lines(tex):
        if line.endswith(" \\\\") and " & " in line and "multicolumn" not in line:
            assert line.count(" & ") == 6  # variant, val, test, and difference and verdict for each


def test_tables_are_the_same_bytes_on_rerun(page, tmp_path):
    out, _ = page
    loaded = reading.load_all([str(VARIANTS)])
    tables.write(loaded, tmp_path, ["latex", "csv"], ["seed_bn"])
    for name in TABLE_FILES:
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()


def test_a_page_without_format_removes_the_tables_of_the_last(tmp_path, capsys):
    out = tmp_path / "page"
    loaded = reading.load_all([str(VARIANTS)])
    assert cli.main(["report", str(VARIANTS), "--out", str(out), "--format", "csv", "--format", "markdown"]) == 0
    assert (out / "runs.csv").is_file() and not (out / "tables.tex").exists()
    assert tables.latex(loaded).count("\\begin{table}") == 1  # without --baseline: no difference columns
    assert "Minus" not in tables.latex(loaded)
    assert cli.main(["report", str(VARIANTS), "--out", str(out)]) == 0
    assert not any((out / name).exists() for name in TABLE_FILES)


@pytest.mark.parametrize("value", ["pdf", "latex,", "latex,html"])
def test_a_bad_format_is_one_line(tmp_path, capsys, value):
    assert cli.main(["report", str(VARIANTS), "--out", str(tmp_path / "x"), "--format", value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bnbench: error: report: argument --format: ")
    assert not (tmp_path / "x").exists()


def test_a_sweep_has_a_row_per_run_and_a_table_per_variant(tmp_path):
    raw = json.loads(SWEEP.read_text())
    loaded = reading.load_all([str(SWEEP)])
    written = tables.write(loaded, tmp_path, ["latex", "csv"], ["seed_bn"])
    assert [p.name for p in written] == list(TABLE_FILES)
    runs = _rows(tmp_path / "runs.csv")
    assert len(runs) == len(raw["runs"])
    for row, run in zip(runs, raw["runs"]):
        assert float(row["learning_rate"]) == run["config"]["learning_rate"]
        assert int(row["batch_size"]) == run["config"]["batch_size"]
        assert row["diverged"] == ("true" if "diverged" in run else "false")
        if "diverged" in run:
            assert row["val_accuracy"] == "" and int(row["diverged_epoch"]) == run["diverged"]["epoch"]
    summary = _rows(tmp_path / "summary.csv")
    assert [row["entry"] for row in summary] == list(raw["summary"])
    for row in summary:
        assert float(row["learning_rate"]) == raw["summary"][row["entry"]]["config"]["learning_rate"]
    tex = (tmp_path / "tables.tex").read_text()
    key = tables.citation_key(loaded[0])
    for variant in raw["sweep"]["variants"]:
        assert f"\\label{{tab:{key}-{variant}}}" in tex
    assert tex.count("\\begin{table}") == len(raw["sweep"]["variants"])
    assert "lr=0.3 (3/3 diverged) & diverged & diverged" in tex


def test_the_citation_key_follows_the_content_not_the_path(tmp_path):
    copy = tmp_path / "copy.json"
    shutil.copy(VARIANTS, copy)
    original, same = reading.load_all([str(VARIANTS), str(copy)])
    assert tables.citation_key(original) == tables.citation_key(same)
    raw = json.loads(VARIANTS.read_text())
    raw["runs"][0]["test_accuracy"] = 0.5
    copy.write_text(json.dumps(raw, indent=1))
    assert tables.citation_key(reading.load_all([str(copy)])[0]) != tables.citation_key(original)


def test_escape_makes_every_special_character_literal():
    assert tables.escape("a_b & c%d $e# {f} ~g ^h \\i <j> |k") == (
        "a\\_b \\& c\\%d \\$e\\# \\{f\\} \\textasciitilde{}g \\textasciicircum{}h \\textbackslash{}i "
        "\\textless{}j\\textgreater{} \\textbar{}k")
    assert tables.escape("Ryzen™ café ±") == "RyzenTM cafe ?"  # pdflatex reads ASCII in any setup


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_latex_compiles_with_pdflatex(tmp_path):
    loaded = reading.load_all([str(VARIANTS), str(SWEEP)])
    fragment = tables.latex(loaded, ["seed_bn"])
    (tmp_path / "tables.tex").write_text(fragment)
    documents = {"standalone.tex": tables.document(fragment),
                 # as a paper uses it: booktabs and an \input, nothing else
                 "paper.tex": "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                              "\\input{tables.tex}\n\\end{document}\n"}
    for name, text in documents.items():
        (tmp_path / name).write_text(text)
        done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", name], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout[-2000:]
        assert (tmp_path / name.replace(".tex", ".pdf")).stat().st_size > 0
    log = (tmp_path / "standalone.log").read_text()
    assert "Overfull \\hbox" not in log and "Float too large" not in log
