"""The summary table of one report: what ``bnbench run`` prints when it finishes."""

from __future__ import annotations

from bnbench.errors import EXIT_ALL_DIVERGED
from bnbench.record.stats import format_ci
from bnbench.report.table import format_table

# "train acc" is the epoch's running figure, in training mode (BatchNorm on batch statistics, weights
# moving); "train acc (eval)" evaluates training examples as validation is, so it compares across norms.
HEADERS = ("variant", "seeds", "train acc", "train acc (eval)", "val acc", "test acc", "epoch s (median)",
           "vs floor", "compile s")


def accuracy_cell(summary: dict | None) -> str:
    """Mean ± CI half-width, or "diverged" where every seed did."""
    return format_ci(summary) if summary is not None else "diverged"


def _recorded_cell(s: dict, key: str) -> str:
    """An accuracy older reports may not have recorded ("-"), else as ``accuracy_cell``."""
    return accuracy_cell(s[key]) if key in s else "-"


def seeds_cell(s: dict) -> str:
    """The seeds, and how many of them diverged (their accuracies are left out of the means)."""
    diverged = s.get("diverged_seeds", 0)
    return f"{s['seeds']} ({diverged} diverged)" if diverged else str(s["seeds"])


def summary_rows(report: dict) -> list[list]:
    rows = []
    for name, s in report["summary"].items():
        ratio = (s.get("floor") or {}).get("median_ratio")  # no floor, or one that could not be timed
        rows.append([name, seeds_cell(s), accuracy_cell(s["train_accuracy"]), _recorded_cell(s, "train_eval_accuracy"),
                     *[accuracy_cell(s[k]) for k in ("val_accuracy", "test_accuracy")],
                     f"{s['median_epoch_time_s']:.3f}",
                     f"{ratio:.2f}x" if ratio is not None else "-", f"{s['compile_time_s']:.2f}"])
    return rows


def summary_table(report: dict, markdown: bool = False) -> str:
    """Final accuracies as mean ± 95% CI half-width over seeds, and the median epoch time; under
    it, how each batch was split, where it was."""
    table = format_table(HEADERS, summary_rows(report), markdown=markdown)
    return table + (f"\n{layout_line(report['protocol'])}" if report["protocol"].get("data_parallel", 1) > 1 else "")


def layout_line(protocol: dict) -> str:
    statistics = {"sync": "BatchNorm statistics synchronized over the whole batch",
                  "local": "BatchNorm statistics of each device's shard (local)"}[protocol.get("batch_stats", "sync")]
    batch = f" of {protocol['batch_size']}" if "batch_size" in protocol else ""  # a sweep's batch sizes vary
    return f"data-parallel: each batch{batch} split over {protocol['data_parallel']} devices; {statistics}"


def divergence_news(report: dict) -> tuple[int, str | None]:
    """What a report's divergences mean for the command that made it: every run diverged is a
    failure (EXIT_ALL_DIVERGED, and a line saying so); some did, a warning line; none, nothing."""
    runs = report["runs"]
    diverged = [r for r in runs if "diverged" in r]
    if not diverged:
        return 0, None
    where = sorted({r["variant"] for r in diverged})
    if len(diverged) == len(runs):
        return EXIT_ALL_DIVERGED, (f"bnbench: error: every run diverged (its loss became NaN or infinite): all "
                                   f"{len(runs)} of {', '.join(where)}; the report holds where each did: lower the "
                                   "learning rate")
    return 0, (f"bnbench: warning: {len(diverged)} of {len(runs)} runs diverged ({', '.join(where)}): their "
               "accuracies are left out of the means; the report holds where each diverged")
