"""``bnbench report --format latex,csv``: tables for papers, beside the page.

``latex`` writes ``tables.tex``: one booktabs ``table`` per report (rows: its variants; columns:
validation and test accuracy, mean ± 95% CI half-width, and with ``--baseline`` each variant's
paired difference to the baseline variant with its 95% CI and verdict, as ``compare`` computes
them). It is a fragment to ``\\input{}`` from a document that loads booktabs; ``document`` wraps it
into one that compiles alone. ``csv`` writes ``runs.csv`` (one row per run) and ``summary.csv``
(one row per variant of each report, with the difference columns under ``--baseline``).

Every table names its report's command, commit, machine and seeds, and each report has a short
citation key derived from its content (``citation_key``). The files hold no time of writing: the
same reports give the same bytes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import unicodedata
from pathlib import Path

from bnbench.record import model, stats
from bnbench.record.io import atomic_write
from bnbench.report import reading
from bnbench.report.compare import baseline_family, is_baseline, settings_text

FORMATS = ("markdown", "latex", "csv")
LATEX_FILE, RUNS_FILE, SUMMARY_FILE = "tables.tex", "runs.csv", "summary.csv"
# The accuracies summary.csv gives (those a report lacks stay empty), and those differences are taken of;
# the LaTeX table shows validation and test accuracy.
SUMMARY_METRICS = ("train_accuracy", "train_eval_accuracy", "val_accuracy", "test_accuracy")
DIFFERENCE_METRICS = ("train_eval_accuracy", "val_accuracy", "test_accuracy")
TABLE_METRICS = ("val_accuracy", "test_accuracy")
CONFIG_FIELDS = tuple(model.Config.model_fields)
DIGITS = 4  # as compare prints them


def citation_key(report: dict) -> str:
    """``bnbench-`` and the first 8 hex digits of the SHA-256 of the report's canonical JSON (its
    fields as checked, keys sorted): the same report gives the same key, wherever its file lies."""
    canonical = json.dumps(report["report"].dump(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "bnbench-" + hashlib.sha256(canonical.encode()).hexdigest()[:8]


def write(loaded: list[dict], out: Path, formats, baselines=(), margin: float = stats.EQUIVALENCE_MARGIN
          ) -> list[Path]:
    """The table files ``formats`` ask for (markdown is the page itself: nothing here), written into ``out``."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise reading.ReportError(f"unknown format {unknown[0]!r}: choose from {', '.join(FORMATS)}")
    written = []
    if "latex" in formats:
        text = latex(loaded, baselines, margin)
        atomic_write(out / LATEX_FILE, lambda f: f.write(text))
        written.append(out / LATEX_FILE)
    if "csv" in formats:
        for name, text in ((RUNS_FILE, runs_csv(loaded)), (SUMMARY_FILE, summary_csv(loaded, baselines, margin))):
            atomic_write(out / name, lambda f, text=text: f.write(text))
            written.append(out / name)
    return written


# --- what the tables say of each report ---------------------------------------------------------

def _runs(report: dict) -> list[model.Run]:
    """The report's runs: a run's or sweep's own, or those of pytest-benchmark's accuracy benchmarks."""
    typed = report["report"]
    if isinstance(typed, model.PytestBenchmark):
        return [run for bench in typed.benchmarks if bench.tag == "accuracy" for run in bench.info.runs]
    return list(typed.runs)


def _command(report: dict) -> str | None:
    return getattr(report["report"], "command", None)


def _seeds_text(seeds) -> str:
    if not seeds:
        return "seeds not recorded"
    seeds = list(seeds)
    consecutive = seeds == list(range(seeds[0], seeds[0] + len(seeds)))
    which = f"{seeds[0]}-{seeds[-1]}" if consecutive and len(seeds) > 2 else ", ".join(map(str, seeds))
    return f"{len(seeds)} seed{'s' * (len(seeds) != 1)} ({which})"


def _protocol_text(report: dict) -> str:
    p = report["protocol"]
    if "dataset" not in p:
        return "protocol not recorded"
    sizes = f"{p['train_examples']}/{p['validation_examples']}/{p['test_examples']} train/validation/test"
    if "sweep" in report:
        grid = report["sweep"]
        swept = [f"{label} {', '.join(map(str, grid[key]))}" for key, label in
                 (("learning_rate", "learning rates"), ("batch_size", "batch sizes"), ("bn_momentum", "BN momenta"),
                  ("momentum", "momenta"), ("weight_decay", "weight decays")) if grid.get(key)]
        return (f"{p['dataset']}, {sizes}, {p['optimizer']} momentum {p.get('momentum', '(swept)')}"
                f"{settings_text(p)}, a sweep over "
                f"{'; '.join(swept)}, {grid['epochs']} epochs")
    return (f"{p['dataset']}, {sizes}, batch {p['batch_size']}, {p['optimizer']} lr {p['learning_rate']} "
            f"momentum {p['momentum']}{settings_text(p)}, {p['epochs']} epoch{'s' * (p['epochs'] != 1)}")


def _entries(report: dict) -> dict[str, dict]:
    """The report's variants with accuracies summarized (not step times alone)."""
    return {name: v for name, v in report["variants"].items() if "seeds" in v}


def _differences(report: dict, baselines, margin: float) -> dict[tuple[str, str, str], dict]:
    """Per (baseline, variant, accuracy), the paired difference to the baseline variant of the same
    report with its Holm-adjusted p-value and verdict: the families ``compare --baseline`` forms (one
    per baseline, report and accuracy), so the figures are those it prints."""
    return {(baseline, name, metric): d for baseline in baselines for metric in DIFFERENCE_METRICS
            for name, d in baseline_family(report, baseline, metric, margin)}


def _is_baseline(report: dict, name: str, v: dict, baseline: str) -> bool:
    return is_baseline(report, name, v, baseline)


# --- CSV ------------------------------------------------------------------------------------------

def _cell(value) -> str:
    """A number as Python writes it back exactly (``repr``), a flag as true/false, nothing as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return " ".join(map(_cell, value))
    return str(value)


def _csv(headers: list[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, headers, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(value) for key, value in row.items()})
    return buffer.getvalue()


def _provenance(report: dict) -> dict:
    env = report["environment"]
    return {"citation_key": citation_key(report), "report": report["path"], "ref": report["ref"],
            "command": _command(report), "git_commit": env.get("git_commit"), "machine": report["label"]}


RUN_FIGURES = ("train_loss", "train_accuracy", "train_eval_loss", "train_eval_accuracy", "val_loss", "val_accuracy")


def runs_csv(loaded: list[dict]) -> str:
    """One row per run of every report: which report, variant and seed (and a sweep's configuration),
    whether and where it diverged, and its final accuracies and losses (empty where it diverged)."""
    sweep = any("sweep" in r for r in loaded)
    headers = ["citation_key", "report", "ref", "variant", "seed", *(CONFIG_FIELDS if sweep else ()),
               "epochs_recorded", "diverged", "diverged_epoch", "diverged_update", *RUN_FIGURES,
               "test_loss", "test_accuracy", "command", "git_commit", "machine"]
    rows = []
    for r in loaded:
        provenance = _provenance(r)
        for run in _runs(r):
            last = run.epochs[-1]
            config = run.config.dump() if run.config is not None else {}
            rows.append({"citation_key": provenance["citation_key"], "report": r["path"], "ref": r["ref"],
                         "variant": run.variant, "seed": run.seed,
                         **({key: config.get(key) for key in CONFIG_FIELDS} if sweep else {}),
                         "epochs_recorded": len(run.epochs), "diverged": run.diverged is not None,
                         "diverged_epoch": run.diverged.epoch if run.diverged else None,
                         "diverged_update": run.diverged.update if run.diverged else None,
                         **{key: getattr(last, key, None) for key in RUN_FIGURES},
                         "test_loss": run.test_loss, "test_accuracy": run.test_accuracy,
                         **{key: provenance[key] for key in ("command", "git_commit", "machine")}})
    return _csv(headers, rows)


DIFFERENCE_FIELDS = ("difference", "ci_low", "ci_high", "p", "p_holm", "verdict", "margin", "p_equivalence_holm",
                     "detectable", "seeds_for_margin", "test", "n")


def summary_csv(loaded: list[dict], baselines=(), margin: float = stats.EQUIVALENCE_MARGIN) -> str:
    """One row per variant (a sweep: per variant and configuration) of every report: each accuracy's
    mean, std, 95% CI and seeds as the report summarizes them, and with ``baselines`` each accuracy's
    paired difference to each baseline variant, its Holm-adjusted p-value and verdict."""
    sweep = any("sweep" in r for r in loaded)
    differences = [f"{metric}_minus_{baseline}_{field}" for baseline in baselines for metric in DIFFERENCE_METRICS
                   for field in DIFFERENCE_FIELDS]
    headers = ["citation_key", "report", "ref", "entry", "variant", *(CONFIG_FIELDS if sweep else ()), "seeds",
               "diverged_seeds",
               *[f"{metric}_{field}" for metric in SUMMARY_METRICS for field in ("mean", "std", "ci_low", "ci_high",
                                                                               "n")],
               *differences, "command", "git_commit", "machine", "seed_list"]
    rows = []
    for r in loaded:
        provenance, found = _provenance(r), _differences(r, baselines, margin)
        for name, v in _entries(r).items():
            row = {"citation_key": provenance["citation_key"], "report": r["path"], "ref": r["ref"], "entry": name,
                   "variant": v.get("variant", name), "seeds": v["seeds"], "diverged_seeds": v.get("diverged_seeds"),
                   **{key: provenance[key] for key in ("command", "git_commit", "machine")},
                   "seed_list": r["protocol"].get("seeds")}
            if sweep:
                row.update({key: v.get("config", {}).get(key) for key in CONFIG_FIELDS})
            for metric in SUMMARY_METRICS:
                s = v.get(metric) or {}
                low, high = s.get("ci95") or (None, None)
                row.update({f"{metric}_mean": s.get("mean"), f"{metric}_std": s.get("std"), f"{metric}_ci_low": low,
                            f"{metric}_ci_high": high, f"{metric}_n": s.get("n")})
            for baseline in baselines:
                for metric in DIFFERENCE_METRICS:
                    prefix = f"{metric}_minus_{baseline}_"
                    if _is_baseline(r, name, v, baseline):
                        row[prefix + "verdict"] = "baseline"
                    d = found.get((baseline, name, metric))
                    if d is None:
                        continue
                    low, high = d["ci95"] or (None, None)
                    row.update({prefix + "difference": d["difference"], prefix + "ci_low": low,
                                prefix + "ci_high": high, prefix + "p": d["p_value"], prefix + "p_holm": d["p_holm"],
                                prefix + "verdict": d["verdict"], prefix + "test": d["test"], prefix + "n": d["n"],
                                **{prefix + key: d.get(key) for key in ("margin", "p_equivalence_holm", "detectable",
                                                                        "seeds_for_margin")}})
            rows.append(row)
    return _csv(headers, rows)


# --- LaTeX ----------------------------------------------------------------------------------------

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#",
                  "%": r"\%", "_": r"\_", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}", '"': r"\textquotedbl{}"}


def escape(text) -> str:
    """``text`` as LaTeX typesets it literally: its special characters escaped, and anything beyond
    ASCII reduced to ASCII (accents dropped, the rest as ``?``), which pdflatex reads in any setup."""
    text = unicodedata.normalize("NFKD", str(text))
    text = "".join(c if ord(c) < 128 else "" if unicodedata.combining(c) else "?" for c in text)
    return "".join(_LATEX_SPECIAL.get(c, c) for c in text)


def _number(x: float, sign: bool = False) -> str:
    return f"{x:+.{DIGITS}f}" if sign else f"{x:.{DIGITS}f}"


def _accuracy_cell(v: dict, metric: str) -> str:
    s = v.get(metric)
    if not s:
        return "diverged" if v.get("diverged_seeds") else "--"
    if s["ci95"] is None:
        return f"${_number(s['mean'])}$"
    return f"${_number(s['mean'])} \\pm {_number((s['ci95'][1] - s['ci95'][0]) / 2)}$"


def _difference_cells(d: dict | None, baseline: bool) -> list[str]:
    if baseline:
        return ["baseline", "--"]
    if d is None:
        return ["--", "--"]
    if d["difference"] is None:  # every seed of a side diverged
        return ["--", "diverged"]
    text = f"${_number(d['difference'], True)}$"
    if d["ci95"] is not None:  # the interval under the difference: a column half as wide
        text = (f"\\begin{{tabular}}[t]{{@{{}}c@{{}}}}{text}\\\\"
                f"$[{_number(d['ci95'][0], True)}, {_number(d['ci95'][1], True)}]$\\end{{tabular}}")
    return [text, d["verdict"]]


def _metric_label(metric: str) -> str:
    return {"val_accuracy": "val.", "test_accuracy": "test"}[metric]


def _label_part(name: str) -> str:
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "-" for c in name)


def _latex_tables(r: dict, baselines, margin: float) -> list[str]:
    """A run's report in one table; a sweep's in one per variant (its configurations as rows), so
    that each fits on a page."""
    entries, found = _entries(r), _differences(r, baselines, margin)
    if "sweep" not in r:
        return _latex_table(r, entries, found, baselines, margin)
    lines = []
    for variant in dict.fromkeys(v["variant"] for v in entries.values()):
        rows = {name.removeprefix(f"{variant} ") or name: (name, v) for name, v in entries.items()
                if v["variant"] == variant}
        lines += _latex_table(r, rows, found, baselines, margin, variant)
    return lines


def _latex_table(r: dict, entries: dict, found: dict, baselines, margin: float, variant: str | None = None
                 ) -> list[str]:
    """One table: caption (what, over which seeds, on which machine and commit, the citation key),
    the booktabs tabular, and a note naming the command, the commit and the report in full.
    ``entries``: the rows, a run's variants by name, or one ``variant``'s configurations in a sweep
    (row label: (entry name, entry))."""
    key = citation_key(r)
    commit = r["environment"].get("git_commit")
    header = ["Variant" if variant is None else "Configuration", "Val.\\ accuracy", "Test accuracy"]
    groups, rules = [], []
    for i, baseline in enumerate(baselines):
        start = 4 + 4 * i
        groups.append(f"\\multicolumn{{4}}{{c}}{{Minus {escape(baseline)} (paired)}}")
        rules.append(f"\\cmidrule(lr){{{start}-{start + 3}}}")
        header += [text for metric in TABLE_METRICS
                   for text in (f"$\\Delta$ {_metric_label(metric)} [95\\% CI]", "Verdict")]
    rows = ["\\toprule"]
    if baselines:
        rows += [" & ".join(["", "", "", *groups]) + " \\\\", "".join(rules)]
    rows += [" & ".join(header) + " \\\\", "\\midrule"]
    for label, v in entries.items():
        name, v = v if variant is not None else (label, v)
        diverged = v.get("diverged_seeds", 0)
        cells = [escape(label) + (f" ({diverged}/{v['seeds']} diverged)" if diverged else ""),
                 *[_accuracy_cell(v, metric) for metric in TABLE_METRICS]]
        for baseline in baselines:
            is_base = _is_baseline(r, name, v, baseline)
            for metric in TABLE_METRICS:
                cells += _difference_cells(found.get((baseline, name, metric)), is_base)
        if baselines and rows[-1] != "\\midrule":
            rows.append("\\addlinespace[3pt]")  # apart: a difference's interval is a second line
        rows.append(" & ".join(cells) + " \\\\")
    rows.append("\\bottomrule")

    what = "variant" if variant is None else f"configuration of {escape(variant)}"
    short_commit = f"\\texttt{{{escape(commit[:12])}}}" if commit else "not recorded"
    caption = (f"Final accuracy per {what}: mean $\\pm$ 95\\% CI half-width over "
               f"{escape(_seeds_text(r['protocol'].get('seeds')))}; {escape(_protocol_text(r))}. "
               f"Machine: {escape(r['label'])}. Commit: {short_commit}. ")
    if baselines:
        caption += ("$\\Delta$: the variant's accuracy minus the baseline variant's, seed by seed (paired t-test, "
                    "95\\% CI). Verdict: better or worse at Holm-adjusted $p < 0.05$ (per report, baseline and "
                    f"accuracy), equivalent within $\\pm{margin:g}$ (two one-sided tests, each at 2.5\\% "
                    "after Holm's adjustment), else "
                    "inconclusive. ")
    caption += f"Citation key: \\texttt{{{escape(key)}}}."
    command, created = _command(r), getattr(r["report"], "created", None)
    note = [f"Command: \\texttt{{{escape(command)}}}." if command else "Command: not recorded.",
            f"Commit: \\texttt{{{escape(commit)}}}." if commit else "Commit: not recorded.",
            f"Report: \\texttt{{{escape(r['path'])}}}"
            + (f", run \\texttt{{{escape(r['run_id'])}}}" if r.get("run_id") else "")
            + (f", created {escape(created)}" if created else "") + "."]
    return [f"% {key}: {escape(r['path'])}", "\\begin{table}[htbp]", "\\centering", "\\footnotesize",
            "\\setlength{\\tabcolsep}{4pt}",
            f"\\caption{{{caption}}}",
            f"\\label{{tab:{key}{'' if variant is None else '-' + _label_part(variant)}}}",
            f"\\bnbenchfit{{\\begin{{tabular}}{{l{'c' * (len(header) - 1)}}}", *rows, "\\end{tabular}}",
            "\\par\\smallskip", "\\begin{minipage}{\\linewidth}\\raggedright\\footnotesize", *note,
            "\\end{minipage}", "\\end{table}", ""]


def latex(loaded: list[dict], baselines=(), margin: float = stats.EQUIVALENCE_MARGIN) -> str:
    """The fragment ``tables.tex`` holds: one booktabs table per report with accuracies (a sweep:
    per variant)."""
    lines = ["% Tables written by `bnbench report --format latex`: \\input{tables.tex} from a document",
             "% that loads booktabs (\\usepackage{booktabs}). Each table's label is tab:<its citation key>",
             "% (a sweep's: tab:<its citation key>-<variant>, a table per variant). With --baseline a table is",
             "% wider than a portrait column: to scale each to the line, define before the \\input",
             "% \\newcommand{\\bnbenchfit}[1]{\\resizebox{\\linewidth}{!}{#1}} (graphicx), or set it landscape.",
             "\\providecommand{\\bnbenchfit}[1]{#1}", ""]
    tabled = [r for r in loaded if _entries(r)]
    for r in loaded:
        if r not in tabled:
            lines += [f"% {citation_key(r)}: {escape(r['path'])} holds no accuracies (no table)", ""]
    for r in tabled:
        lines += _latex_tables(r, baselines, margin)
    return "\n".join(lines)


def document(fragment: str) -> str:
    """A standalone document around ``tables.tex``'s text, which pdflatex compiles as it is."""
    return "\n".join(["\\documentclass{article}", "\\usepackage[margin=1.5cm,landscape]{geometry}",
                      "\\usepackage{booktabs}", "\\begin{document}", fragment, "\\end{document}", ""])
