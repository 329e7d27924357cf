"""Summaries over seeds: mean with a Student-t 95% confidence interval, and medians."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean, sample standard deviation and the t-interval of the mean; the interval is None for one value."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "std": None, "ci95": None, "n": int(len(x))}
    std = float(x.std(ddof=1))
    from scipy import stats  # here, not at the top: it costs a second to import and only this needs it

    half = float(stats.t.ppf((1 + confidence) / 2, df=len(x) - 1)) * std / math.sqrt(len(x))
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "n": int(len(x))}


def spread(values: Sequence[float]) -> dict:
    """Median and interquartile range, the robust summary used for times on a noisy machine."""
    x = np.asarray(values, dtype=np.float64)
    q1, median, q3 = np.percentile(x, [25, 50, 75])
    return {"median": float(median), "iqr": float(q3 - q1), "min": float(x.min()), "max": float(x.max()),
            "n": int(len(x))}


def format_ci(summary: dict, digits: int = 4) -> str:
    if summary["ci95"] is None:
        return f"{summary['mean']:.{digits}f}"
    half = (summary["ci95"][1] - summary["ci95"][0]) / 2
    return f"{summary['mean']:.{digits}f} ± {half:.{digits}f}"


def difference(a: dict, b: dict, confidence: float = 0.95) -> dict:
    """``a`` minus ``b`` (two ``mean_ci`` summaries over independent seeds): the difference of the
    means, its Welch 95% interval and the two-sided Welch's t-test p-value (unequal variances,
    Welch-Satterthwaite degrees of freedom). ``too_few`` says why there is no interval when either
    side has fewer than 2 seeds; with no spread on either side (identical runs) the interval is
    nothing to test against: no interval and no p-value, and ``too_few`` says so."""
    diff = a["mean"] - b["mean"]
    if a["n"] < 2 or b["n"] < 2:
        return {"difference": diff, "ci95": None, "p_value": None, "df": None,
                "too_few": f"{a['n']} and {b['n']} seeds: an interval and a p-value need 2 or more on each side"}
    va, vb = a["std"] ** 2 / a["n"], b["std"] ** 2 / b["n"]
    if va + vb == 0:
        return {"difference": diff, "ci95": None, "p_value": None, "df": None,
                "too_few": "no spread between seeds on either side: nothing to measure the difference against"}
    from scipy import stats

    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (a["n"] - 1) + vb ** 2 / (b["n"] - 1))
    half = float(stats.t.ppf((1 + confidence) / 2, df)) * se
    p = float(stats.ttest_ind_from_stats(a["mean"], a["std"], a["n"], b["mean"], b["std"], b["n"],
                                         equal_var=False).pvalue)
    return {"difference": diff, "ci95": [diff - half, diff + half], "p_value": p, "df": df}


def format_difference(d: dict, digits: int = 4) -> str:
    """``+0.0123 [+0.0101, +0.0145] p=0.0002``, or the difference with why it has no interval."""
    if d["ci95"] is None:
        why = "no spread" if d.get("too_few", "").startswith("no spread") else "too few seeds"
        return f"{d['difference']:+.{digits}f} ({why})"
    low, high = d["ci95"]
    p = d["p_value"]
    p_text = f"p={p:.2g}" if p >= 1e-4 else "p<1e-4"
    return f"{d['difference']:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}] {p_text}"
